//! The Opta-LMX worker: one process per loaded model, running MLX through mlx-rs.

pub mod bench;
pub mod cache;
pub mod detok;
pub mod disk_cache;
pub mod distributed;
pub mod embed;
pub mod engine;
pub mod grammar;
pub mod harmony;
pub mod inspect;
pub mod mirror;
pub mod model;
pub mod output;
pub mod prefix_cache;
pub mod prepare;
pub mod process;
pub mod request;
pub mod sampling;
pub mod scheduler;
pub mod serve;
pub mod tokenizer;
pub mod tool_syntax;
pub mod weights;
