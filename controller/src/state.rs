//! What every handler shares: the configuration, where models are found, the workers, and
//! request admission. Built once by `opta-lmx serve` (or a test) and handed to the router.

use std::sync::Arc;
use std::time::Instant;

use crate::admission::Admission;
use crate::api::responses::ResponseStore;
use crate::config::{Config, SamplingDefaults};
use crate::discovery::{Discovery, ModelEntry};
use crate::download::Downloader;
use crate::manager::ModelManager;

pub struct AppState {
    pub config: Config,
    pub discovery: Discovery,
    /// Fetches models missing locally from the Hub (`models.allow_download`).
    pub downloader: Downloader,
    pub manager: Arc<ModelManager>,
    /// Per-model request counts (429 past running + queued) and load-time history.
    pub admission: Admission,
    /// Past Responses API answers, for `previous_response_id`.
    pub responses: ResponseStore,
    /// LM Studio's stored chats (`/api/v1/chat`), for its `previous_response_id`.
    pub lms_chats: ResponseStore,
    pub started: Instant,
}

impl AppState {
    /// The sampling defaults in force for `entry`: its `generation_config.json` over the
    /// configuration's `models.defaults`.
    pub fn sampling_defaults(&self, entry: &ModelEntry) -> SamplingDefaults {
        self.config.models.defaults.for_model(&entry.generation)
    }
}
