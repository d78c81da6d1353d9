//! What the Opta-LMX controller and its workers share: the model-folder format they both
//! read, and (with the process issue) the wire protocol between them.

pub mod model_dir;
pub mod protocol;
