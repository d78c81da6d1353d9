//! Fetching a model that is not on this machine from the Hugging Face Hub (hf-hub), when
//! `models.allow_download` is on. Files go into the standard Hugging Face cache (`HF_HUB_CACHE`,
//! `HF_HOME/hub` or `~/.cache/huggingface/hub`, the folder discovery reads), so discovery finds
//! the model afterwards and mlx-lm shares the files. `HF_ENDPOINT` and `HF_TOKEN` are honoured.
//!
//! Only what a model needs is fetched (config, tokenizer files, `model*.safetensors` and their
//! index), all from one commit, and `config.json` last: discovery only sees a snapshot that has a
//! `config.json`, so a download that stops half-way leaves nothing that would load as a broken
//! model, and the next try resumes it.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use hf_hub::api::tokio::{ApiBuilder, ApiError as HubError, Progress};
use hf_hub::{Cache, Repo, RepoType};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// A download that receives nothing for this long is abandoned: hf-hub sets no timeouts, and a
/// dead connection would otherwise hold every request waiting for the model.
const STALL: Duration = Duration::from_secs(60);

/// Text files a model folder may need besides its weights.
const MODEL_FILES: [&str; 7] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownloadError {
    /// The Hub has no such repository (or it is private or gated), or it holds no MLX model.
    #[error("{0}")]
    NotFound(String),
    /// Network, server or disk failure.
    #[error("{0}")]
    Failed(String),
}

type InFlight = Shared<BoxFuture<'static, Result<(), DownloadError>>>;

/// Downloads models into the Hugging Face cache, one download per model at a time.
pub struct Downloader {
    endpoint: String,
    cache: Option<PathBuf>,
    token: Option<String>,
    /// Downloads under way by model id; later callers wait for the same one.
    in_flight: Arc<Mutex<HashMap<String, InFlight>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether `id` can name a Hub repository: `publisher/name` of letters, digits, `-`, `_`, `.`
/// (and no `--`, which would make its cache folder `models--a--b` ambiguous).
pub fn is_repo_id(id: &str) -> bool {
    let mut parts = id.split('/');
    let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    [a, b].iter().all(|p| {
        !p.is_empty()
            && p.len() <= 96
            && !p.starts_with('.')
            && !p.contains("--")
            && !p.contains("..")
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    })
}

/// The files of a repository to download, `config.json` last; `Err` says why the repository
/// holds no model Opta-LMX can run.
pub fn select_files<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Vec<String>, String> {
    // Top-level files only: subfolders hold other formats (`original/`, `onnx/`).
    let names: Vec<&str> = names.into_iter().filter(|n| !n.contains('/')).collect();
    if !names.contains(&"config.json") {
        return Err("it has no config.json".into());
    }
    let safetensors = |n: &&str| n.ends_with(".safetensors");
    // mlx-lm's pattern: other .safetensors files (Mistral's `consolidated.safetensors`) would
    // be loaded as extra weights when there is no index.
    let mut weights: Vec<&str> = names
        .iter()
        .copied()
        .filter(safetensors)
        .filter(|n| n.starts_with("model"))
        .collect();
    if weights.is_empty() {
        weights = names.iter().copied().filter(safetensors).collect();
    }
    if weights.is_empty() {
        return Err(
            "it has no .safetensors weights (Opta-LMX runs MLX safetensors models, \
                    such as mlx-community's)"
                .into(),
        );
    }
    weights.sort_unstable();
    let mut files: Vec<String> = MODEL_FILES[1..]
        .iter()
        .chain(["model.safetensors.index.json"].iter())
        .filter(|f| names.contains(f))
        .map(|f| f.to_string())
        .collect();
    files.extend(weights.into_iter().map(str::to_string));
    files.push("config.json".into());
    Ok(files)
}

impl Downloader {
    /// A downloader into `cache` (discovery's Hugging Face cache folder), with the endpoint
    /// and token from `HF_ENDPOINT` and `HF_TOKEN` (or the token file `huggingface-cli login`
    /// writes).
    pub fn from_env(cache: Option<PathBuf>) -> Self {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Downloader {
            endpoint,
            cache,
            token: token_from_env(),
            in_flight: Arc::default(),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Downloads the model `repo` into the cache, or waits for the download of it already under
    /// way. `present` says whether the model is in the cache now: checked under the lock a
    /// finished download releases, so a caller that looked just before it finished does not
    /// start a second one.
    pub async fn fetch(&self, repo: &str, present: impl Fn() -> bool) -> Result<(), DownloadError> {
        let download = {
            let mut in_flight = lock(&self.in_flight);
            if let Some(running) = in_flight.get(repo) {
                tracing::info!(model = %repo, "waiting for the download already under way");
                running.clone()
            } else if present() {
                return Ok(());
            } else {
                let job = Job {
                    repo: repo.to_string(),
                    endpoint: self.endpoint.clone(),
                    cache: self.cache.clone(),
                    token: self.token.clone(),
                };
                let map = Arc::clone(&self.in_flight);
                let id = repo.to_string();
                // Its own task, so the download goes on for the others waiting (and for next
                // time) when the request that started it goes away. It forgets itself once the
                // files are in place (or it failed), so a later call sees the cache or retries.
                let task = tokio::spawn(async move {
                    // Dropped on return and on a panic alike: a failed download never sticks.
                    let _forget = Forget { map, id };
                    job.run().await
                });
                let shared = async move {
                    task.await.unwrap_or_else(|e| {
                        Err(DownloadError::Failed(format!(
                            "the download task failed: {e}"
                        )))
                    })
                }
                .boxed()
                .shared();
                in_flight.insert(repo.to_string(), shared.clone());
                shared
            }
        };
        download.await
    }
}

/// Removes a download from the in-flight map when its task ends.
struct Forget {
    map: Arc<Mutex<HashMap<String, InFlight>>>,
    id: String,
}

impl Drop for Forget {
    fn drop(&mut self) {
        lock(&self.map).remove(&self.id);
    }
}

/// `HF_TOKEN`, else the file at `HF_TOKEN_PATH`, `HF_HOME/token` or
/// `~/.cache/huggingface/token`, as huggingface_hub reads them.
fn token_from_env() -> Option<String> {
    if let Some(t) = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Some(t.trim().to_string());
    }
    let path = std::env::var_os("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|h| PathBuf::from(h).join("token")))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/token"))
        })?;
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// The time of the last byte received, shared with hf-hub's progress callbacks.
#[derive(Clone)]
struct Activity {
    base: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

impl Progress for Activity {
    async fn init(&mut self, _size: usize, _filename: &str) {
        self.touch();
    }
    async fn update(&mut self, _size: usize) {
        self.touch();
    }
    async fn finish(&mut self) {
        self.touch();
    }
}

/// One model's download.
struct Job {
    repo: String,
    endpoint: String,
    cache: Option<PathBuf>,
    token: Option<String>,
}

impl Job {
    async fn run(self) -> Result<(), DownloadError> {
        let started = Instant::now();
        let cache = self.cache.clone().ok_or_else(|| {
            DownloadError::Failed(
                "there is no Hugging Face cache folder to download into (set HF_HOME)".into(),
            )
        })?;
        let api = ApiBuilder::from_cache(Cache::new(cache.clone()))
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(false)
            .build()
            .map_err(|e| DownloadError::Failed(chain(&e)))?;
        tracing::info!(model = %self.repo, endpoint = %self.endpoint, cache = %cache.display(), "downloading from Hugging Face");
        let activity = Activity {
            base: Instant::now(),
            last_ms: Arc::default(),
        };
        let info = self
            .watched(api.model(self.repo.clone()).info(), &activity, None)
            .await?;
        // The commit names cache folders: refuse anything that is not a plain id.
        if info.sha.is_empty() || !info.sha.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(DownloadError::Failed(format!(
                "{} answered an invalid commit id {:?} for {}",
                self.endpoint, info.sha, self.repo
            )));
        }
        let files =
            select_files(info.siblings.iter().map(|s| s.rfilename.as_str())).map_err(|why| {
                DownloadError::NotFound(format!(
                    "{} on {} is not a model Opta-LMX can load: {why}",
                    self.repo, self.endpoint
                ))
            })?;
        // Every file from the commit the listing describes, even if the branch moves meanwhile.
        let pinned = api.repo(Repo::with_revision(
            self.repo.clone(),
            RepoType::Model,
            info.sha.clone(),
        ));
        let mut total = 0u64;
        let mut snapshot = None;
        let folder = cache.join(Repo::model(self.repo.clone()).folder_name());
        for file in &files {
            // Left by an earlier, interrupted try (or by mlx-lm): hf-hub would fetch it again.
            let cached = folder.join("snapshots").join(&info.sha).join(file);
            if cached.is_file() {
                tracing::info!(model = %self.repo, file = %file, "already in the cache");
                snapshot = cached.parent().map(Path::to_path_buf);
                continue;
            }
            let t = Instant::now();
            let path = self
                .watched(
                    pinned.download_with_progress(file, activity.clone()),
                    &activity,
                    Some(file),
                )
                .await?;
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            total += bytes;
            tracing::info!(model = %self.repo, file = %file, bytes, secs = format!("{:.1}", t.elapsed().as_secs_f64()), "downloaded");
            snapshot = path.parent().map(Path::to_path_buf);
        }
        // `refs/main` as huggingface_hub writes it, so discovery and mlx-lm pick this snapshot;
        // hf-hub wrote `refs/<sha>` for the pinned revision, which nothing else reads.
        let commit = snapshot
            .as_deref()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or(info.sha.clone());
        let repo_cache = Cache::new(cache.clone()).repo(Repo::model(self.repo.clone()));
        repo_cache.create_ref(&commit).map_err(|e| {
            DownloadError::Failed(format!("cannot write the cache's refs/main: {e}"))
        })?;
        let _ = std::fs::remove_file(folder.join("refs").join(&info.sha));
        tracing::info!(
            model = %self.repo,
            files = files.len(),
            bytes = total,
            secs = format!("{:.1}", started.elapsed().as_secs_f64()),
            "download done"
        );
        Ok(())
    }

    /// Runs one hf-hub call, failing it when no byte arrives for [`STALL`]; `file` is `None`
    /// for the repository listing.
    async fn watched<T>(
        &self,
        call: impl Future<Output = Result<T, HubError>>,
        activity: &Activity,
        file: Option<&str>,
    ) -> Result<T, DownloadError> {
        activity.touch();
        tokio::pin!(call);
        loop {
            tokio::select! {
                result = &mut call => return result.map_err(|e| self.classify(&e, file)),
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    if activity.idle() > STALL {
                        return Err(DownloadError::Failed(format!(
                            "{} sent nothing for {} s{}",
                            self.endpoint,
                            STALL.as_secs(),
                            file.map(|f| format!(" while downloading {f}")).unwrap_or_default()
                        )));
                    }
                }
            }
        }
    }

    /// What a failed hf-hub call means to the client: a repository that is not there is a
    /// 404, anything else (network, server, disk) a failed download.
    fn classify(&self, e: &HubError, file: Option<&str>) -> DownloadError {
        let status = match e {
            HubError::RequestError(r) => r.status().map(|s| s.as_u16()),
            _ => None,
        };
        let what = match file {
            Some(f) => format!("{f} of {}", self.repo),
            None => self.repo.clone(),
        };
        match (status, file) {
            // The Hub answers 401 for a repository that does not exist as well as for a
            // private one, when no token is sent.
            (Some(404), None) => {
                DownloadError::NotFound(format!("{} has no model {}", self.endpoint, self.repo))
            }
            (Some(401 | 403), None) => DownloadError::NotFound(format!(
                "{} has no model {} that this machine may read (HTTP {}: it does not exist, or \
                 it is private or gated and needs HF_TOKEN)",
                self.endpoint,
                self.repo,
                status.unwrap_or_default()
            )),
            (Some(code @ (401 | 403)), Some(_)) => DownloadError::Failed(format!(
                "{} refused {what} (HTTP {code}): the model is gated or private; accept its terms \
                 on the Hub and set HF_TOKEN",
                self.endpoint
            )),
            (Some(code), _) => {
                DownloadError::Failed(format!("{} answered HTTP {code} for {what}", self.endpoint))
            }
            (None, _) => DownloadError::Failed(format!(
                "fetching {what} from {} failed: {}",
                self.endpoint,
                chain(e)
            )),
        }
    }
}

/// An error with its causes, `a: b: c`: reqwest's own message hides the reason (refused,
/// DNS, reset).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        for ok in ["mlx-community/Qwen3-0.6B-4bit", "a/b", "org_1/m.v2"] {
            assert!(is_repo_id(ok), "{ok}");
        }
        for bad in [
            "a",
            "a/b/c",
            "/abs/path",
            "a/",
            "../x",
            "a/..",
            "a/.hidden",
            "a--b/c",
            "a/b c",
            "a/b\\c",
        ] {
            assert!(!is_repo_id(bad), "{bad}");
        }
    }

    #[test]
    fn selects_what_a_model_needs_config_last() {
        let files = select_files([
            "README.md",
            ".gitattributes",
            "config.json",
            "model-00002-of-00002.safetensors",
            "model-00001-of-00002.safetensors",
            "model.safetensors.index.json",
            "consolidated.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "chat_template.jinja",
            "original/model.safetensors",
            "pytorch_model.bin",
        ])
        .unwrap();
        assert_eq!(
            files,
            [
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "chat_template.jinja",
                "model.safetensors.index.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "config.json",
            ]
        );
        // Without model*.safetensors any top-level safetensors file is the weights.
        assert_eq!(
            select_files(["config.json", "weights.safetensors"]).unwrap(),
            ["weights.safetensors", "config.json"]
        );
        assert!(select_files(["config.json", "pytorch_model.bin"])
            .unwrap_err()
            .contains("safetensors"));
        assert!(select_files(["model.safetensors"])
            .unwrap_err()
            .contains("config.json"));
    }
}
