//! Loading a model folder's tensors into MLX arrays.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlx_rs::Array;
use opta_lmx_shared::model_dir::{self, ModelDirError};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    ModelDir(#[from] ModelDirError),
    #[error("{path}: cannot read safetensors: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("tensor {name} appears in both {first} and {second}")]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
}

/// Every tensor of a model folder, by name, with the file it came from.
pub struct Weights {
    pub tensors: HashMap<String, Array>,
    pub files: Vec<PathBuf>,
}

/// Loads all weight files of `dir` (single file or shards). Nothing is computed yet: MLX
/// reads the data when an array is first evaluated.
pub fn load(dir: &Path) -> Result<Weights, LoadError> {
    let files = model_dir::weight_files(dir)?;
    let mut tensors = HashMap::new();
    let mut origin: HashMap<String, PathBuf> = HashMap::new();
    for file in &files {
        let loaded = Array::load_safetensors(file).map_err(|e| LoadError::Safetensors {
            path: file.clone(),
            message: e.to_string(),
        })?;
        for (name, array) in loaded {
            // A vision-language wrapper (Gemma 3 and 4, Mistral 3, Qwen3.5): run its language model, leave
            // the vision tower and projector unloaded.
            if name.contains("vision_tower")
                || name.contains("multi_modal_projector")
                || name.starts_with("model.visual.")
                // Gemma 4's audio tower and its vision and audio embedders.
                || name.contains("audio_tower")
                || name.contains("embed_vision")
                || name.contains("embed_audio")
                || name.contains("vision_embedder")
            {
                continue;
            }
            let name = if let Some(rest) = name.strip_prefix("model.language_model.") {
                format!("model.{rest}")
            } else {
                name.strip_prefix("language_model.")
                    .map_or(name.clone(), str::to_string)
            };
            if let Some(first) = origin.insert(name.clone(), file.clone()) {
                return Err(LoadError::Duplicate {
                    name,
                    first,
                    second: file.clone(),
                });
            }
            tensors.insert(name, array);
        }
    }
    Ok(Weights { tensors, files })
}
