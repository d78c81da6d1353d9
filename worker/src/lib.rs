//! The Opta-LMX worker: one process per loaded model, running MLX through mlx-rs.

pub mod batch;
pub mod bench;
pub mod cache;
pub mod detok;
pub mod generate;
pub mod inspect;
pub mod model;
pub mod prefix_cache;
pub mod process;
pub mod sampling;
pub mod serve;
pub mod tokenizer;
pub mod weights;
