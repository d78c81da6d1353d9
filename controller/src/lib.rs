//! The Opta-LMX controller: the HTTP API on port 1234 and the supervisor of one worker
//! process per loaded model.

pub mod admission;
pub mod api;
pub mod capabilities;
pub mod client;
pub mod config;
pub mod discovery;
pub mod dispatch;
pub mod download;
pub mod guard;
pub mod manager;
pub mod metrics;
pub mod openapi;
pub mod render;
pub mod request_id;
pub mod resolve;
pub mod routes;
pub mod server;
pub mod state;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
