//! The Opta-LMX worker: one process per loaded model, running MLX through mlx-rs.

pub mod inspect;
pub mod weights;
