//! The YAML configuration (`config/default-config.yaml` documents every key). Every key has a
//! default; unknown keys and wrong types are refused with the key and line named.

use std::path::{Path, PathBuf};

use opta_lmx_shared::model_dir::GenerationConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub models: ModelsConfig,
    pub memory: MemoryConfig,
    pub logging: LoggingConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub timeout_sec: u64,
    /// Seconds a model's worker may take to load (`None`: `timeout_sec`).
    pub load_timeout_sec: Option<u64>,
    /// Past `/v1/responses` answers kept in memory for `previous_response_id` (0: none).
    pub response_store_size: usize,
    /// Keys a request must present (`Authorization: Bearer` or `x-api-key`); empty: none.
    pub api_keys: Vec<ApiKey>,
    /// Host names, besides `localhost` and IP addresses, that requests may address the server
    /// by (the `Host` header); `"*"` allows any. Others are refused (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Web page origins allowed to call the server from a browser (CORS); `"*"` allows any.
    /// Empty: requests that carry any other `Origin` are refused.
    pub cors_origins: Vec<String>,
    /// Seconds running requests may take to finish after SIGTERM before workers are stopped.
    pub shutdown_grace_sec: u64,
}

/// What an API key may do, as LM Studio 0.4's token permissions split it.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Generation, embeddings and model listings.
    Inference,
    /// Loading and unloading models, status, memory and metrics.
    Admin,
}

/// One API key: a bare string has every permission.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ApiKey {
    Any(String),
    Scoped {
        key: String,
        permissions: Vec<Permission>,
    },
}

impl ApiKey {
    pub fn key(&self) -> &str {
        match self {
            ApiKey::Any(key) | ApiKey::Scoped { key, .. } => key,
        }
    }

    pub fn allows(&self, permission: Permission) -> bool {
        match self {
            ApiKey::Any(_) => true,
            ApiKey::Scoped { permissions, .. } => permissions.contains(&permission),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    pub default_model: Option<String>,
    pub models_directory: PathBuf,
    pub auto_load: Vec<String>,
    pub jit_loading: bool,
    /// Download a `publisher/name` model found neither in `models_directory` nor in the
    /// Hugging Face cache from the Hub (off by default: nothing is pulled implicitly).
    pub allow_download: bool,
    /// Seconds a JIT-loaded model may sit idle before it is unloaded (`None`: never).
    pub idle_ttl_sec: Option<u64>,
    pub use_batching: bool,
    /// Requests one worker decodes together (its `--max-batch`; 1 without batching).
    pub max_concurrent_per_model: u32,
    /// Requests per model that may wait beyond the running ones; more get 429.
    pub max_queue: u32,
    /// The worker's prompt (prefix) cache, in MiB; 0 turns it off.
    pub prompt_cache_mb: u64,
    /// The prompt cache's disk tier, in MiB (0: memory only), and its folder (`None`:
    /// `$XDG_CACHE_HOME/opta-lmx/prompt-cache`, or `~/.cache/opta-lmx/prompt-cache`).
    pub prompt_cache_disk_mb: u64,
    pub prompt_cache_dir: Option<PathBuf>,
    /// Sampling for fields a request leaves out, where the model's `generation_config.json`
    /// gives no value.
    pub defaults: SamplingDefaults,
    /// Per model id, the tool-call syntax to use instead of the one its chat template
    /// implies (one of `hermes`, `qwen3_coder`, `llama3`, `mistral`, `deepseek`, `harmony`,
    /// `kimi_k2`, `glm47`, `gemma4`).
    pub tool_call_format: std::collections::BTreeMap<String, String>,
    /// Per model id, its split over ranks of MLX's distributed engine: `{ranks: N}` on this
    /// machine, or `{hostfile: PATH, backend: ring|jaccl|...}` across machines.
    pub tensor_parallel: std::collections::BTreeMap<String, crate::manager::TensorParallel>,
    /// Model names clients send mapped to model ids here (`claude-sonnet-4-5: qwen/...`); a
    /// name ending in `*` matches every name it begins. Without a match, a `claude-*` name
    /// (Claude Code's) means the default model, else the one loaded.
    pub aliases: std::collections::BTreeMap<String, String>,
    /// Whether a model id may be an absolute path outside `models_directory` (any folder on
    /// the machine would then be loadable by whoever can reach the server).
    pub allow_paths: bool,
    /// Prompt tokens a worker reads per forward pass (mlx-lm's prefill step size); it reports
    /// progress after each, so a long prefill is never taken for a frozen worker.
    pub prefill_step_size: u32,
    /// How long an answer may get, in tokens, per model (LM Studio's "limit response
    /// length").
    pub max_output_tokens: OutputLimits,
}

/// Answer-length limits: `default` for a request that sets none, `max` for every request;
/// `per_model` overrides either for one model id. `None` everywhere: no limit.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutputLimits {
    pub default: Option<u32>,
    pub max: Option<u32>,
    pub per_model: std::collections::BTreeMap<String, OutputLimit>,
}

/// One model's answer-length limits; a missing key takes the general one.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutputLimit {
    pub default: Option<u32>,
    pub max: Option<u32>,
}

impl OutputLimits {
    /// The token limit for a request to `model` that asked for `requested`.
    pub fn apply(&self, model: &str, requested: Option<u32>) -> Option<u32> {
        let own = self.per_model.get(model).copied().unwrap_or_default();
        let default = own.default.or(self.default);
        let max = own.max.or(self.max);
        match (requested.or(default), max) {
            (Some(n), Some(max)) => Some(n.min(max)),
            (None, Some(max)) => Some(max),
            (n, None) => n,
        }
    }

    fn check(&self) -> Result<(), String> {
        let general = (
            "models.max_output_tokens".to_string(),
            self.default,
            self.max,
        );
        let each = self.per_model.iter().map(|(id, l)| {
            (
                format!("models.max_output_tokens.per_model.{id}"),
                l.default,
                l.max,
            )
        });
        for (key, default, max) in std::iter::once(general).chain(each) {
            if default == Some(0) || max == Some(0) {
                return Err(format!(
                    "{key}: a limit must be at least 1 token (null: no limit)"
                ));
            }
        }
        Ok(())
    }
}

/// The sampling settings a request gets for the fields it leaves out. Precedence, per field:
/// the request, then the model's `generation_config.json`, then `models.defaults` in the
/// config, whose own defaults are LM Studio's.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingDefaults {
    #[serde(serialize_with = "decimal_f32")]
    pub temperature: f32,
    /// 0 or -1 disables it.
    pub top_k: i32,
    #[serde(serialize_with = "decimal_f32")]
    pub top_p: f32,
    #[serde(serialize_with = "decimal_f32")]
    pub min_p: f32,
    /// Applies to sampled requests only: a request that asks for `temperature: 0` gets plain
    /// greedy decoding (as OpenAI and mlx-lm do) unless it sends a penalty itself.
    #[serde(serialize_with = "decimal_f32")]
    pub repeat_penalty: f32,
}

/// An f32 as the decimal it was written as (0.05, not 0.05000000074505806): through
/// `serde_json::Value` an f32 is widened to f64 digit for digit.
fn decimal_f32<S: serde::Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(v.to_string().parse().unwrap_or(f64::from(*v)))
}

impl Default for SamplingDefaults {
    /// LM Studio's defaults.
    fn default() -> Self {
        SamplingDefaults {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.1,
        }
    }
}

impl SamplingDefaults {
    /// These defaults with the model's own recommendations (`generation_config.json`) on top.
    pub fn for_model(&self, generation: &GenerationConfig) -> SamplingDefaults {
        SamplingDefaults {
            temperature: generation.temperature.unwrap_or(self.temperature),
            top_k: generation.top_k.unwrap_or(self.top_k),
            top_p: generation.top_p.unwrap_or(self.top_p),
            min_p: generation.min_p.unwrap_or(self.min_p),
            repeat_penalty: generation.repetition_penalty.unwrap_or(self.repeat_penalty),
        }
    }

    /// Checks the ranges a request's own values must respect.
    fn validate(&self) -> Result<(), String> {
        let d = self;
        let checks = [
            ("temperature", d.temperature, 0.0, 2.0),
            ("top_p", d.top_p, 0.0, 1.0),
            ("min_p", d.min_p, 0.0, 1.0),
            (
                "repeat_penalty",
                d.repeat_penalty,
                f32::MIN_POSITIVE,
                f32::MAX,
            ),
            ("top_k", d.top_k as f32, -1.0, f32::MAX),
        ];
        for (key, value, min, max) in checks {
            if !(min..=max).contains(&value) {
                return Err(format!(
                    "models.defaults.{key} is out of range (got {value})"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    pub max_memory_percent: u8,
    pub auto_evict_lru: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    pub level: String,
    pub format: LogFormat,
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Structured,
    Text,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1234,
            timeout_sec: 300,
            load_timeout_sec: None,
            response_store_size: 512,
            api_keys: Vec::new(),
            allowed_hosts: Vec::new(),
            cors_origins: Vec::new(),
            shutdown_grace_sec: 30,
        }
    }
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            default_model: None,
            models_directory: PathBuf::from("~/.cache/opta-lmx/models"),
            auto_load: Vec::new(),
            jit_loading: true,
            allow_download: false,
            idle_ttl_sec: Some(3600),
            use_batching: true,
            max_concurrent_per_model: 8,
            max_queue: 32,
            prompt_cache_mb: 512,
            prompt_cache_disk_mb: 4096,
            prompt_cache_dir: None,
            defaults: SamplingDefaults::default(),
            tool_call_format: Default::default(),
            tensor_parallel: Default::default(),
            aliases: Default::default(),
            allow_paths: false,
            prefill_step_size: 2048,
            max_output_tokens: OutputLimits::default(),
        }
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_memory_percent: 90,
            auto_evict_lru: true,
        }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
            file: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Parses YAML text; `path` only names the source in errors.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        // An empty file is a valid config of defaults.
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?
        };
        if !(1..=100).contains(&config.memory.max_memory_percent) {
            return Err(invalid(format!(
                "memory.max_memory_percent must be between 1 and 100 (got {})",
                config.memory.max_memory_percent
            )));
        }
        // The unsigned types already refuse negative numbers, naming the key.
        if config.models.max_concurrent_per_model == 0 {
            return Err(invalid(
                "models.max_concurrent_per_model must be at least 1 (got 0)".to_string(),
            ));
        }
        if config.models.prefill_step_size == 0 {
            return Err(invalid(
                "models.prefill_step_size must be at least 1 (got 0)".to_string(),
            ));
        }
        config.models.max_output_tokens.check().map_err(invalid)?;
        config.models.defaults.validate().map_err(invalid)?;
        for (model, format) in &config.models.tool_call_format {
            if !opta_lmx_shared::TOOL_SYNTAXES.contains(&format.as_str()) {
                return Err(invalid(format!(
                    "models.tool_call_format.{model} must be one of {} (got {format:?})",
                    opta_lmx_shared::TOOL_SYNTAXES.join(", ")
                )));
            }
        }
        for (model, tp) in &config.models.tensor_parallel {
            tp.check()
                .map_err(|e| invalid(format!("models.tensor_parallel.{model}: {e}")))?;
        }
        for (i, key) in config.server.api_keys.iter().enumerate() {
            if key.key().trim().is_empty() {
                return Err(invalid(format!("server.api_keys[{i}] is empty")));
            }
        }
        if !["trace", "debug", "info", "warn", "error"]
            .contains(&config.logging.level.to_ascii_lowercase().as_str())
        {
            return Err(invalid(format!(
                "logging.level must be one of trace, debug, info, warn, error (got {:?})",
                config.logging.level
            )));
        }
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text, path)
    }

    /// The prompt cache's disk folder: `models.prompt_cache_dir` with `~` expanded, else the
    /// user's cache folder; `None` when the disk tier is off or no folder is known.
    pub fn prompt_cache_dir(&self) -> Option<PathBuf> {
        if self.models.prompt_cache_disk_mb == 0 {
            return None;
        }
        if let Some(dir) = &self.models.prompt_cache_dir {
            return Some(expand_home(dir));
        }
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(cache.join("opta-lmx/prompt-cache"))
    }

    /// `models.models_directory` with a leading `~` expanded.
    pub fn models_directory(&self) -> PathBuf {
        expand_home(&self.models.models_directory)
    }
}

fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(text, Path::new("test.yaml"))
    }

    #[test]
    fn shipped_default_config_equals_the_built_in_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/default-config.yaml");
        assert_eq!(Config::load(&path).unwrap(), Config::default());
    }

    #[test]
    fn missing_keys_take_defaults() {
        let c = parse("server:\n  port: 4321\n").unwrap();
        assert_eq!(c.server.port, 4321);
        assert_eq!(c.server.host, "127.0.0.1");
        assert_eq!(c.memory.max_memory_percent, 90);
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let e = parse("server:\n  port: 1234\n  prot: 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("prot") && e.contains("line 3"), "{e}");
        let e = parse("models:\n  jit_loading: maybe\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("jit_loading") || e.contains("line 2"), "{e}");
        let e = parse("memory:\n  max_memory_percent: 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("memory.max_memory_percent"), "{e}");
        let e = parse("logging:\n  format: xml\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn allow_download_is_off_unless_set() {
        assert!(!Config::default().models.allow_download);
        let c = parse("models:\n  allow_download: true\n").unwrap();
        assert!(c.models.allow_download);
        let e = parse("models:\n  allow_download: sometimes\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("allow_download") || e.contains("line 2"), "{e}");
    }

    #[test]
    fn answer_limits_apply_per_model_over_the_general_ones() {
        let none = parse("").unwrap().models.max_output_tokens;
        assert_eq!(none.apply("m", None), None, "no limit unless set");
        assert_eq!(none.apply("m", Some(32000)), Some(32000));
        let c = parse(
            "models:\n  max_output_tokens:\n    default: 100\n    per_model:\n      \
             a: {max: 10}\n      b: {default: 5}\n",
        )
        .unwrap();
        let l = &c.models.max_output_tokens;
        assert_eq!(
            l.apply("other", None),
            Some(100),
            "the default, when none is asked"
        );
        assert_eq!(
            l.apply("other", Some(32000)),
            Some(32000),
            "no max: the request's"
        );
        assert_eq!(l.apply("a", None), Some(10), "a max caps the default");
        assert_eq!(
            l.apply("a", Some(32000)),
            Some(10),
            "and what a request asks"
        );
        assert_eq!(l.apply("a", Some(3)), Some(3));
        assert_eq!(l.apply("b", None), Some(5));
        for bad in [
            "models:\n  max_output_tokens: {max: 0}\n",
            "models:\n  max_output_tokens: {per_model: {x: {default: 0}}}\n",
            "models:\n  prefill_step_size: 0\n",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("at least 1"), "{bad}: {e}");
        }
        let e = parse("models:\n  max_output_tokens: {maximum: 3}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("maximum"), "{e}");
    }

    #[test]
    fn admission_keys_are_checked() {
        let c =
            parse("models:\n  max_concurrent_per_model: 2\n  max_queue: 0\n  prompt_cache_mb: 0\n")
                .unwrap();
        assert_eq!(
            (
                c.models.max_concurrent_per_model,
                c.models.max_queue,
                c.models.prompt_cache_mb
            ),
            (2, 0, 0)
        );
        // The disk tier: a folder with `~` expanded, and off at 0 MiB.
        let c = parse("models:\n  prompt_cache_dir: ~/pc\n").unwrap();
        let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
        assert_eq!(c.prompt_cache_dir(), home.map(|h| h.join("pc")));
        let c = parse("models:\n  prompt_cache_dir: /pc\n  prompt_cache_disk_mb: 0\n").unwrap();
        assert_eq!(c.prompt_cache_dir(), None);
        let e = parse("models:\n  max_concurrent_per_model: 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("models.max_concurrent_per_model must be at least 1"),
            "{e}"
        );
        for bad in [
            "models:\n  max_queue: -1\n",
            "models:\n  prompt_cache_mb: -5\n",
            "models:\n  max_concurrent_per_model: many\n",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            let key = bad
                .trim()
                .split_once(':')
                .unwrap()
                .1
                .trim()
                .split(':')
                .next()
                .unwrap();
            assert!(e.contains(key) && e.contains("line 2"), "{bad}: {e}");
        }
    }
}
