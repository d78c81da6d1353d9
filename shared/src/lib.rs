//! What the Opta-LMX controller and its workers share: the model-folder format they both
//! read, and (with the process issue) the wire protocol between them.

pub mod cache_size;
pub mod model_dir;

/// Tool-call syntaxes a model can be configured to use (`models.tool_call_format`), as the
/// worker's `--tool-syntax` takes them.
pub const TOOL_SYNTAXES: &[&str] = &[
    "hermes",
    "qwen3_coder",
    "llama3",
    "mistral",
    "deepseek",
    "harmony",
    "kimi_k2",
    "glm47",
    "gemma4",
];
pub mod protocol;
