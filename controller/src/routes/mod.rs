//! The handlers behind `server::app`'s routes, by what they serve.

pub mod admin;
pub mod embeddings;
pub mod generate;
pub mod lmstudio;
pub mod models;
