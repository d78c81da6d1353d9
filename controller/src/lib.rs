//! The Opta-LMX controller: the HTTP API on port 1234 and the supervisor of one worker
//! process per loaded model.

pub mod admission;
pub mod api;
pub mod client;
pub mod config;
pub mod discovery;
pub mod download;
pub mod inference;
pub mod manager;
pub mod openapi;
pub mod server;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
