//! Which model a request means: the id it names (found on this machine, or downloaded when
//! allowed), else the configured default model, else the one loaded model (as LM Studio does).

use std::path::PathBuf;

use crate::discovery::{Lookup, ModelEntry};
use crate::download::{self, DownloadError};
use crate::manager::ModelState;
use crate::state::AppState;

/// Why no model could be chosen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    #[error("The model `{0}` does not exist.")]
    NotFound(String),
    #[error(
        "The model `{0}` is a path outside the models directory; set `models.allow_paths: \
         true` in the configuration to load models from anywhere on this machine."
    )]
    PathRefused(String),
    /// The request names no model, none is configured, and not exactly one is loaded.
    #[error("you must provide a model parameter")]
    NoModel,
    #[error(
        "The model `{model}` is not in {} or in the Hugging Face cache, and downloading is \
         off: set `models.allow_download: true` in the configuration to download it from \
         Hugging Face.",
        .models_dir.display()
    )]
    DownloadOff { model: String, models_dir: PathBuf },
    #[error("The model `{model}` is not on this machine and cannot be downloaded: {why}.")]
    NotOnHub { model: String, why: String },
    #[error("Downloading the model `{model}` failed: {why}.")]
    DownloadFailed { model: String, why: String },
    #[error(
        "The model `{0}` was downloaded, but its files do not form a model that can be loaded."
    )]
    NotAModel(String),
    /// The folder is there, but no worker can run it.
    #[error("The model `{model}` in {} cannot be loaded: {reason}.", .dir.display())]
    Unloadable {
        model: String,
        dir: PathBuf,
        reason: String,
    },
}

impl ResolveError {
    /// Whether the model named is simply not available (so a default model may stand in).
    fn is_missing(&self) -> bool {
        matches!(
            self,
            ResolveError::NotFound(_)
                | ResolveError::DownloadOff { .. }
                | ResolveError::NotOnHub { .. }
        )
    }
}

/// The model `id`: found on this machine, else, when `may_download` and `models.allow_download`
/// allow it, downloaded from the Hub into the Hugging Face cache and found there.
pub async fn find(
    state: &AppState,
    id: &str,
    may_download: bool,
) -> Result<ModelEntry, ResolveError> {
    match state.discovery.lookup(id) {
        Lookup::Found(entry) => return Ok(entry),
        Lookup::Unloadable(u) => {
            return Err(ResolveError::Unloadable {
                model: u.id,
                dir: u.dir,
                reason: u.reason,
            })
        }
        Lookup::Missing => {}
    }
    if state.discovery.refuses_path(id) {
        return Err(ResolveError::PathRefused(id.to_string()));
    }
    if !may_download || !download::is_repo_id(id) {
        return Err(ResolveError::NotFound(id.to_string()));
    }
    if !state.config.models.allow_download {
        return Err(ResolveError::DownloadOff {
            model: id.to_string(),
            models_dir: state.discovery.models_dir.clone(),
        });
    }
    let present = || state.discovery.resolve(id).is_some();
    match state.downloader.fetch(id, present).await {
        Ok(()) => {}
        Err(DownloadError::NotFound(why)) => {
            return Err(ResolveError::NotOnHub {
                model: id.to_string(),
                why,
            })
        }
        Err(DownloadError::Failed(why)) => {
            tracing::warn!(model = %id, error = %why, "download failed");
            return Err(ResolveError::DownloadFailed {
                model: id.to_string(),
                why,
            });
        }
    }
    state
        .discovery
        .resolve(id)
        .ok_or_else(|| ResolveError::NotAModel(id.to_string()))
}

/// The model id `name` is an alias of: an exact key, else the longest `prefix*` key it
/// begins with.
pub fn alias<'a>(
    aliases: &'a std::collections::BTreeMap<String, String>,
    name: &str,
) -> Option<&'a str> {
    if let Some(target) = aliases.get(name) {
        return Some(target);
    }
    aliases
        .iter()
        .filter_map(|(k, v)| Some((k.strip_suffix('*')?, v)))
        .filter(|(prefix, _)| name.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, v)| v.as_str())
}

/// The model a generation request means. With JIT loading a model missing locally may be
/// downloaded (`models.allow_download`); one that exists nowhere falls back to the default
/// model; no model at all means the default, else the one loaded model.
pub async fn model_for_request(
    state: &AppState,
    requested: Option<&str>,
) -> Result<ModelEntry, ResolveError> {
    let requested = requested.map(str::trim).filter(|m| !m.is_empty());
    let requested = match requested {
        Some(name) => match alias(&state.config.models.aliases, name) {
            Some(target) => Some(target),
            // Claude Code names Anthropic's models; here they mean the model at hand.
            None if name.starts_with("claude-") && state.discovery.resolve(name).is_none() => None,
            None => Some(name),
        },
        None => None,
    };
    let default = state.config.models.default_model.as_deref();
    let jit = state.config.models.jit_loading;
    match requested {
        Some(name) => match find(state, name, jit).await {
            Err(e) if e.is_missing() => default.and_then(|d| state.discovery.resolve(d)).ok_or(e),
            other => other,
        },
        None => match default {
            Some(d) => find(state, d, jit).await,
            None => {
                let ready: Vec<String> = state
                    .manager
                    .models()
                    .into_iter()
                    .filter(|m| m.state == ModelState::Ready)
                    .map(|m| m.model_id)
                    .collect();
                match ready.as_slice() {
                    [one] => state
                        .discovery
                        .resolve(one)
                        .ok_or_else(|| ResolveError::NotFound(one.clone())),
                    _ => Err(ResolveError::NoModel),
                }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::alias;

    #[test]
    fn aliases_match_exactly_then_by_the_longest_prefix() {
        let map = [("claude-*", "a"), ("claude-opus-*", "b"), ("gpt-4o", "c")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(alias(&map, "gpt-4o"), Some("c"));
        assert_eq!(alias(&map, "gpt-4o-mini"), None);
        assert_eq!(alias(&map, "claude-opus-4-1"), Some("b"));
        assert_eq!(alias(&map, "claude-sonnet-4-5"), Some("a"));
        assert_eq!(alias(&map, "llama"), None);
    }
}
