//! Finding models: a model id is `publisher/name`, looked up in the models folder (LM Studio's
//! layout, `<models_directory>/<publisher>/<name>/config.json`), then in the Hugging Face
//! cache (`~/.cache/huggingface/hub/models--publisher--name/snapshots/<rev>/`, offline). An
//! absolute path to a model folder also works, with the path as its id, when it lies inside
//! the models folder or `models.allow_paths` is on.

use std::path::{Path, PathBuf};

use opta_lmx_shared::model_dir::{self, GenerationConfig, ModelConfig, ModelKind};

/// A model that could be loaded.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    pub id: String,
    pub dir: PathBuf,
    pub config: ModelConfig,
    /// The model's own sampling recommendations (`generation_config.json`).
    pub generation: GenerationConfig,
    /// Bytes of the weight files, the basis of the memory estimate.
    pub weights_bytes: u64,
    /// Generation or embeddings.
    pub kind: ModelKind,
}

/// A folder that looks like a model (it has a `config.json`) but cannot be loaded, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Unloadable {
    pub id: String,
    pub dir: PathBuf,
    pub reason: String,
}

/// What an id names on this machine.
// Returned once per lookup and taken apart at once: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(ModelEntry),
    Unloadable(Unloadable),
    Missing,
}

impl ModelEntry {
    /// The model in `dir`, or why it cannot be loaded: its config or weight files are
    /// unreadable, or the worker does not run its architecture.
    fn read(id: String, dir: PathBuf) -> Result<Self, Unloadable> {
        let unloadable = |reason: String| Unloadable {
            id: id.clone(),
            dir: dir.clone(),
            reason,
        };
        let config = model_dir::read_config(&dir).map_err(|e| unloadable(e.to_string()))?;
        if let Some(reason) = model_dir::unsupported(&config) {
            return Err(unloadable(reason));
        }
        let weights_bytes = model_dir::weight_files(&dir)
            .map_err(|e| unloadable(e.to_string()))?
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum();
        Ok(ModelEntry {
            id,
            kind: ModelKind::of(&dir, &config),
            generation: GenerationConfig::read(&dir),
            dir,
            config,
            weights_bytes,
        })
    }

    /// LM Studio's `type` in `/api/v0/models`: `llm` or `embeddings`.
    pub fn lms_type(&self) -> &'static str {
        match self.kind {
            ModelKind::Generation => "llm",
            ModelKind::Embedding => "embeddings",
        }
    }

    /// LM Studio's `type` in its v1 REST API: `llm` or `embedding`.
    pub fn lms_v1_type(&self) -> &'static str {
        match self.kind {
            ModelKind::Generation => "llm",
            ModelKind::Embedding => "embedding",
        }
    }

    /// The part after the publisher, as LM Studio shows it.
    pub fn publisher(&self) -> &str {
        self.id.split_once('/').map_or("local", |(p, _)| p)
    }
}

/// Where models are looked for.
#[derive(Debug, Clone)]
pub struct Discovery {
    pub models_dir: PathBuf,
    pub hf_cache: Option<PathBuf>,
    /// Whether absolute paths outside `models_dir` may be loaded (`models.allow_paths`).
    pub allow_paths: bool,
}

impl Discovery {
    pub fn new(models_dir: PathBuf, allow_paths: bool) -> Self {
        Discovery {
            models_dir,
            hf_cache: hf_cache_dir(),
            allow_paths,
        }
    }

    /// Whether `id` is an absolute path that may not be loaded: outside the models folder
    /// (symlinks and `..` resolved) while `allow_paths` is off.
    pub fn refuses_path(&self, id: &str) -> bool {
        let path = Path::new(id);
        if !path.is_absolute() || self.allow_paths {
            return false;
        }
        match (path.canonicalize(), self.models_dir.canonicalize()) {
            (Ok(path), Ok(root)) => !path.starts_with(root),
            // A path that does not exist is simply not found.
            (Err(_), _) => false,
            (Ok(_), Err(_)) => true,
        }
    }

    /// The model `id`, or `None` when no loadable model has that id (or its path is refused).
    pub fn resolve(&self, id: &str) -> Option<ModelEntry> {
        match self.lookup(id) {
            Lookup::Found(entry) => Some(entry),
            Lookup::Unloadable(_) | Lookup::Missing => None,
        }
    }

    /// What `id` names: a model, a folder that cannot be loaded (and why), or nothing (a
    /// refused path is nothing too).
    pub fn lookup(&self, id: &str) -> Lookup {
        let found = |read: Result<ModelEntry, Unloadable>| match read {
            Ok(entry) => Lookup::Found(entry),
            Err(u) => Lookup::Unloadable(u),
        };
        let path = Path::new(id);
        if path.is_absolute() {
            if self.refuses_path(id) || !path.join("config.json").is_file() {
                return Lookup::Missing;
            }
            return found(ModelEntry::read(id.to_string(), path.to_path_buf()));
        }
        // Ids are publisher/name: refuse anything that could climb out of the folders.
        let parts: Vec<&str> = id.split('/').collect();
        if parts.len() != 2
            || parts
                .iter()
                .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\\'))
        {
            return Lookup::Missing;
        }
        let local = self.models_dir.join(parts[0]).join(parts[1]);
        if local.join("config.json").is_file() {
            return found(ModelEntry::read(id.to_string(), local));
        }
        let snapshot = self.hf_cache.as_ref().and_then(|cache| {
            hf_snapshot(&cache.join(format!("models--{}--{}", parts[0], parts[1])))
        });
        match snapshot {
            Some(dir) => found(ModelEntry::read(id.to_string(), dir)),
            None => Lookup::Missing,
        }
    }

    /// Every model that could be loaded, sorted by id.
    pub fn list(&self) -> Vec<ModelEntry> {
        self.scan().0
    }

    /// In one pass over the folders: every model that could be loaded, and every folder with
    /// a `config.json` that cannot be, with why; each sorted by id.
    pub fn scan(&self) -> (Vec<ModelEntry>, Vec<Unloadable>) {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        fn take(
            read: Result<ModelEntry, Unloadable>,
            out: &mut Vec<ModelEntry>,
            bad: &mut Vec<Unloadable>,
        ) {
            match read {
                Ok(entry) => out.push(entry),
                Err(u) => bad.push(u),
            }
        }
        for publisher in subdirs(&self.models_dir) {
            for model in subdirs(&publisher) {
                if model.join("config.json").is_file() {
                    let id = format!("{}/{}", file_name(&publisher), file_name(&model));
                    take(ModelEntry::read(id, model), &mut out, &mut bad);
                }
            }
        }
        if let Some(cache) = &self.hf_cache {
            for repo in subdirs(cache) {
                let name = file_name(&repo);
                let Some(rest) = name.strip_prefix("models--") else {
                    continue;
                };
                let Some((publisher, model)) = rest.split_once("--") else {
                    continue;
                };
                let id = format!("{publisher}/{model}");
                if out.iter().any(|e| e.id == id) || bad.iter().any(|u| u.id == id) {
                    continue;
                }
                if let Some(snap) = hf_snapshot(&repo) {
                    take(ModelEntry::read(id, snap), &mut out, &mut bad);
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        bad.sort_by(|a, b| a.id.cmp(&b.id));
        (out, bad)
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// `HF_HUB_CACHE`, `HF_HOME/hub`, or `~/.cache/huggingface/hub`.
fn hf_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(dir));
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(home).join("hub"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
}

/// The snapshot `refs/main` points at, else the newest complete one.
fn hf_snapshot(repo: &Path) -> Option<PathBuf> {
    let snapshots = repo.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs/main")) {
        let dir = snapshots.join(rev.trim());
        if dir.join("config.json").is_file() {
            return Some(dir);
        }
    }
    subdirs(&snapshots)
        .into_iter()
        .filter(|d| d.join("config.json").is_file())
        .max_by_key(|d| std::fs::metadata(d).and_then(|m| m.modified()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_model(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"model_type":"llama","hidden_size":8,"num_hidden_layers":1,"intermediate_size":8,"num_attention_heads":2,"vocab_size":10}"#,
        )
        .unwrap();
        std::fs::write(dir.join("model.safetensors"), b"12345").unwrap();
    }

    #[test]
    fn finds_lm_studio_layout_hf_cache_and_absolute_paths() {
        let root = tempfile::tempdir().unwrap();
        let models = root.path().join("models");
        write_model(&models.join("acme/tiny-4bit"));
        let cache = root.path().join("hub");
        let repo = cache.join("models--org--cached");
        write_model(&repo.join("snapshots/abc123"));
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();

        let d = Discovery {
            models_dir: models.clone(),
            hf_cache: Some(cache),
            allow_paths: false,
        };
        let local = d.resolve("acme/tiny-4bit").unwrap();
        assert_eq!(local.dir, models.join("acme/tiny-4bit"));
        assert_eq!(local.weights_bytes, 5);
        assert_eq!(local.publisher(), "acme");
        assert_eq!(
            d.resolve("org/cached").unwrap().dir,
            repo.join("snapshots/abc123")
        );
        let abs = models.join("acme/tiny-4bit");
        assert!(d.resolve(abs.to_str().unwrap()).is_some());
        // A folder outside the models folder, directly or by climbing out of it, loads only
        // with allow_paths.
        let outside = root.path().join("elsewhere/model");
        write_model(&outside);
        let climbing = models.join("acme/../../elsewhere/model");
        for path in [outside.to_str().unwrap(), climbing.to_str().unwrap()] {
            assert!(d.refuses_path(path), "{path}");
            assert!(d.resolve(path).is_none(), "{path}");
        }
        let open = Discovery {
            allow_paths: true,
            ..d.clone()
        };
        assert!(open.resolve(outside.to_str().unwrap()).is_some());
        assert!(d.resolve("acme/missing").is_none());
        assert!(d.resolve("../etc").is_none());
        assert!(d.resolve("acme/..").is_none());
        let ids: Vec<String> = d.list().into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["acme/tiny-4bit", "org/cached"]);
    }
}
