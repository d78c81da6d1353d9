//! Prometheus metrics, served at `/metrics` in the OpenMetrics text format. Counters and
//! histograms are updated where things happen (requests, generations, worker lifecycles);
//! gauges (requests running and queued, worker memory) are read from the live state at each
//! scrape. One process-wide set, as Prometheus clients usually keep it.

use std::sync::{Arc, LazyLock};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use opta_lmx_shared::protocol::{Timings, Usage};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::manager::ModelState;
use crate::state::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's path pattern (`/v1/chat/completions`, `/v1/models/{*id}`).
    route: String,
    /// The model that answered; empty when none did (a listing, or a refusal before one).
    model: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    model: String,
}

type Histograms = Family<ModelLabel, Histogram, fn() -> Histogram>;

/// Every metric, by its name without the `opta_lmx_` prefix.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    time_to_first_token: Histograms,
    time_per_output_token: Histograms,
    prompt_tokens: Family<ModelLabel, Counter>,
    completion_tokens: Family<ModelLabel, Counter>,
    cached_prompt_tokens: Family<ModelLabel, Counter>,
    prompt_cache_hits: Family<ModelLabel, Counter>,
    loads: Family<ModelLabel, Counter>,
    unloads: Family<ModelLabel, Counter>,
    crashes: Family<ModelLabel, Counter>,
    restarts: Family<ModelLabel, Counter>,
    running: Family<ModelLabel, Gauge>,
    queued: Family<ModelLabel, Gauge>,
    worker_memory: Family<ModelLabel, Gauge>,
    models_loaded: Gauge,
}

/// A worker lifecycle event, counted per model.
#[derive(Debug, Clone, Copy)]
pub enum Lifecycle {
    /// A worker became ready.
    Loaded,
    /// A worker was stopped on purpose (unload, idle TTL, eviction).
    Unloaded,
    /// A worker died on its own.
    Crashed,
    /// A load restarted a crashed model.
    Restarted,
}

/// The response extension that names the model a request was served by.
#[derive(Clone, Debug)]
pub struct ServedBy(pub String);

fn ttft_histogram() -> Histogram {
    // 10 ms to about 80 s.
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

fn tpot_histogram() -> Histogram {
    // 1 ms to about 1 s per token.
    Histogram::new(exponential_buckets(0.001, 2.0, 11))
}

impl Metrics {
    fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("opta_lmx"),
            requests: Family::default(),
            time_to_first_token: Family::new_with_constructor(ttft_histogram),
            time_per_output_token: Family::new_with_constructor(tpot_histogram),
            prompt_tokens: Family::default(),
            completion_tokens: Family::default(),
            cached_prompt_tokens: Family::default(),
            prompt_cache_hits: Family::default(),
            loads: Family::default(),
            unloads: Family::default(),
            crashes: Family::default(),
            restarts: Family::default(),
            running: Family::default(),
            queued: Family::default(),
            worker_memory: Family::default(),
            models_loaded: Gauge::default(),
        };
        // The registry holds clones: each shares its values with the field.
        let r = &mut m.registry;
        r.register(
            "http_requests",
            "HTTP requests answered, by route, model and status",
            m.requests.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "Time from the worker receiving a request to its first token",
            m.time_to_first_token.clone(),
        );
        r.register(
            "time_per_output_token_seconds",
            "Mean time per generated token after the first, one observation per request",
            m.time_per_output_token.clone(),
        );
        r.register(
            "prompt_tokens",
            "Prompt tokens processed",
            m.prompt_tokens.clone(),
        );
        r.register(
            "completion_tokens",
            "Tokens generated",
            m.completion_tokens.clone(),
        );
        r.register(
            "prompt_cache_hit_tokens",
            "Prompt tokens served from the prompt cache",
            m.cached_prompt_tokens.clone(),
        );
        r.register(
            "prompt_cache_hits",
            "Requests that reused part of their prompt from the prompt cache",
            m.prompt_cache_hits.clone(),
        );
        r.register("model_loads", "Workers that became ready", m.loads.clone());
        r.register(
            "model_unloads",
            "Workers stopped on purpose (unload, idle TTL, eviction)",
            m.unloads.clone(),
        );
        r.register(
            "worker_crashes",
            "Workers that died on their own",
            m.crashes.clone(),
        );
        r.register(
            "worker_restarts",
            "Loads that restarted a crashed model",
            m.restarts.clone(),
        );
        r.register(
            "requests_running",
            "Requests being decoded, per model",
            m.running.clone(),
        );
        r.register(
            "requests_queued",
            "Admitted requests waiting for a place in the model's batch",
            m.queued.clone(),
        );
        r.register(
            "worker_resident_bytes",
            "Resident memory of each model's worker process",
            m.worker_memory.clone(),
        );
        r.register(
            "models_loaded",
            "Models whose worker is ready",
            m.models_loaded.clone(),
        );
        m
    }

    pub fn lifecycle(&self, model: &str, event: Lifecycle) {
        let family = match event {
            Lifecycle::Loaded => &self.loads,
            Lifecycle::Unloaded => &self.unloads,
            Lifecycle::Crashed => &self.crashes,
            Lifecycle::Restarted => &self.restarts,
        };
        family.get_or_create(&label(model)).inc();
    }

    /// A generation's end: its tokens and timings.
    pub fn generated(&self, model: &str, usage: &Usage, timings: &Timings) {
        let l = label(model);
        self.prompt_tokens
            .get_or_create(&l)
            .inc_by(u64::from(usage.prompt_tokens));
        self.completion_tokens
            .get_or_create(&l)
            .inc_by(u64::from(usage.completion_tokens));
        if usage.cached_prompt_tokens > 0 {
            self.cached_prompt_tokens
                .get_or_create(&l)
                .inc_by(u64::from(usage.cached_prompt_tokens));
            self.prompt_cache_hits.get_or_create(&l).inc();
        }
        if usage.completion_tokens > 0 {
            self.time_to_first_token
                .get_or_create(&l)
                .observe(timings.time_to_first_token_ms / 1e3);
        }
        if usage.completion_tokens > 1 && timings.generation_ms > 0.0 {
            let per_token = timings.generation_ms / 1e3 / f64::from(usage.completion_tokens - 1);
            self.time_per_output_token
                .get_or_create(&l)
                .observe(per_token);
        }
    }

    /// The text exposition, with the gauges read from `state` now.
    fn render(&self, state: &AppState) -> String {
        let models = state.manager.models();
        // Models no longer loaded must not linger with their last values.
        for family in [&self.running, &self.queued, &self.worker_memory] {
            family.clear();
        }
        let mut ready = 0;
        for m in &models {
            let l = label(&m.model_id);
            let counts = state.admission.counts(&m.model_id);
            self.running
                .get_or_create(&l)
                .set(to_i64(counts.in_flight - counts.queued));
            self.queued.get_or_create(&l).set(to_i64(counts.queued));
            if let Some(bytes) = m.resident_bytes {
                self.worker_memory.get_or_create(&l).set(to_i64(bytes));
            }
            ready += i64::from(m.state == ModelState::Ready);
        }
        self.models_loaded.set(ready);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn to_i64(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

fn label(model: &str) -> ModelLabel {
    ModelLabel {
        model: model.to_string(),
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// `GET /metrics`.
pub async fn serve(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        global().render(&state),
    )
        .into_response()
}

/// Counts every answered request by its route pattern, model and status.
pub async fn count_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let response = next.run(req).await;
    let model = response
        .extensions()
        .get::<ServedBy>()
        .map(|s| s.0.clone())
        .unwrap_or_default();
    global()
        .requests
        .get_or_create(&RequestLabels {
            route,
            model,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
