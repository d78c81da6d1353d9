//! Request admission: how many requests one model may have in flight (decoding in its worker
//! or waiting), and how long a load is likely to take, for `Prefer: wait=N`.
//!
//! The worker decodes up to `models.max_concurrent_per_model` requests together and queues the
//! rest itself, so the controller only counts: a request holds a [`Permit`] from the moment
//! its model is chosen until its response ends (or its client goes away and the response is
//! dropped); beyond `max_concurrent_per_model + max_queue` permits a request gets 429 at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::config::ModelsConfig;
use crate::manager::ManagerError;

/// What a 429 asks the client to wait before retrying: requests finish at unknown times, so
/// this is only "soon".
pub const RETRY_AFTER_FULL_SECS: u64 = 1;
/// A first load's estimate: a worker's start-up plus reading the weights at this rate.
const LOAD_BASE_SECS: f64 = 2.0;
const LOAD_BYTES_PER_SEC: f64 = 500e6;
/// Longest `Retry-After` a 503 suggests, however large the model.
const MAX_RETRY_AFTER_SECS: u64 = 60;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Per-model request counts and load history.
pub struct Admission {
    max_concurrent: usize,
    max_queue: usize,
    in_flight: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    loads: Mutex<HashMap<String, LoadHistory>>,
}

#[derive(Default)]
struct LoadHistory {
    /// How long the last successful load took.
    last_secs: Option<f64>,
    /// When the background load now running began.
    started: Option<Instant>,
    /// Why the last background load failed, for the next request that asked not to wait.
    failed: Option<ManagerError>,
}

/// A model's running and waiting requests are at the limit (HTTP 429).
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "Too many requests for model `{model}`: {} are already running or waiting \
     (models.max_concurrent_per_model {max_concurrent} + models.max_queue {max_queue}). \
     Retry after the Retry-After seconds.",
    .max_concurrent + .max_queue
)]
pub struct Busy {
    pub model: String,
    pub max_concurrent: usize,
    pub max_queue: usize,
}

/// One admitted request; dropping it frees its place.
#[derive(Debug)]
pub struct Permit {
    count: Arc<AtomicUsize>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A model's request counts as `/admin/status` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Admitted and not yet answered (running, queued, or waiting for a load).
    pub in_flight: usize,
    /// Those beyond `max_concurrent_per_model`: waiting for a place in the worker's batch.
    pub queued: usize,
}

impl Admission {
    pub fn new(cfg: &ModelsConfig) -> Self {
        // Without batching the worker runs one request at a time, so one runs and the rest
        // queue.
        let max_concurrent = if cfg.use_batching {
            cfg.max_concurrent_per_model as usize
        } else {
            1
        };
        Admission {
            max_concurrent: max_concurrent.max(1),
            max_queue: cfg.max_queue as usize,
            in_flight: Mutex::new(HashMap::new()),
            loads: Mutex::new(HashMap::new()),
        }
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    pub fn max_queue(&self) -> usize {
        self.max_queue
    }

    /// Admits one request for `model`, or refuses it with 429 when running plus waiting
    /// requests are at the limit.
    pub fn admit(&self, model: &str) -> Result<Permit, Busy> {
        let count = Arc::clone(lock(&self.in_flight).entry(model.to_string()).or_default());
        let limit = self.max_concurrent + self.max_queue;
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .map_err(|_| Busy {
                model: model.to_string(),
                max_concurrent: self.max_concurrent,
                max_queue: self.max_queue,
            })?;
        Ok(Permit { count })
    }

    pub fn counts(&self, model: &str) -> Counts {
        let in_flight = lock(&self.in_flight)
            .get(model)
            .map_or(0, |c| c.load(Ordering::Acquire));
        Counts {
            in_flight,
            queued: in_flight.saturating_sub(self.max_concurrent),
        }
    }

    /// Seconds a load of `model` (with `weights_bytes` of weights) will likely still take:
    /// its last load time, or a guess from its size, less what a load in progress has run.
    pub fn load_estimate(&self, model: &str, weights_bytes: u64) -> Duration {
        let loads = lock(&self.loads);
        let history = loads.get(model);
        let total = history
            .and_then(|h| h.last_secs)
            .unwrap_or_else(|| LOAD_BASE_SECS + weights_bytes as f64 / LOAD_BYTES_PER_SEC);
        let elapsed = history
            .and_then(|h| h.started)
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        Duration::from_secs_f64((total - elapsed).max(0.0))
    }

    /// `Retry-After` for a request that did not wait for a load.
    pub fn retry_after_secs(&self, model: &str, weights_bytes: u64) -> u64 {
        let secs = self
            .load_estimate(model, weights_bytes)
            .as_secs_f64()
            .ceil() as u64;
        secs.clamp(1, MAX_RETRY_AFTER_SECS)
    }

    /// A background load of `model` began (or was joined); the first one marks its start.
    /// Only tasks that always reach `load_finished` or `background_load_failed` call this.
    pub fn load_started(&self, model: &str) {
        lock(&self.loads)
            .entry(model.to_string())
            .or_default()
            .started
            .get_or_insert_with(Instant::now);
    }

    /// A load ended; `secs`: how long it took, when it succeeded.
    pub fn load_finished(&self, model: &str, secs: Option<f64>) {
        let mut loads = lock(&self.loads);
        let h = loads.entry(model.to_string()).or_default();
        h.started = None;
        if let Some(secs) = secs {
            h.last_secs = Some(secs);
            h.failed = None;
        }
    }

    /// A load no client waited for failed: the next request that asks not to wait gets
    /// `err` (see `take_failure`) rather than another 503.
    pub fn background_load_failed(&self, model: &str, err: ManagerError) {
        let mut loads = lock(&self.loads);
        let h = loads.entry(model.to_string()).or_default();
        h.started = None;
        h.failed = Some(err);
    }

    /// The failure of the last background load of `model`, once.
    pub fn take_failure(&self, model: &str) -> Option<ManagerError> {
        lock(&self.loads).get_mut(model)?.failed.take()
    }
}

/// The `wait` preference of RFC 7240's `Prefer` header (`Prefer: wait=0`), in seconds: how
/// long the client is willing to wait. Several headers and comma-separated preferences are
/// allowed; the first `wait` wins. `None`: no preference (wait as long as it takes).
pub fn prefer_wait(headers: &axum::http::HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|pref| {
            // A preference may carry parameters after ';'; only the token=value matters here.
            let (name, value) = pref.split(';').next()?.split_once('=')?;
            (name.trim().eq_ignore_ascii_case("wait")).then_some(value)
        })
        .find_map(|value| value.trim().trim_matches('"').parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn admission(max_concurrent: u32, max_queue: u32) -> Admission {
        Admission::new(&ModelsConfig {
            max_concurrent_per_model: max_concurrent,
            max_queue,
            ..ModelsConfig::default()
        })
    }

    #[test]
    fn admits_up_to_running_plus_queue_and_frees_on_drop() {
        let a = admission(1, 1);
        let p1 = a.admit("m").unwrap();
        let p2 = a.admit("m").unwrap();
        assert_eq!(
            a.counts("m"),
            Counts {
                in_flight: 2,
                queued: 1
            }
        );
        let err = a.admit("m").unwrap_err();
        assert_eq!(
            crate::api::ApiError::from(err.clone()).status().as_u16(),
            429
        );
        assert!(err.to_string().contains("`m`") && err.to_string().contains('2'));
        // Other models have their own limit.
        let _other = a.admit("n").unwrap();
        drop(p1);
        assert_eq!(a.counts("m").in_flight, 1);
        let _p3 = a.admit("m").unwrap();
        drop(p2);
        assert_eq!(a.counts("m").queued, 0);
    }

    #[test]
    fn without_batching_one_runs_and_the_rest_queue() {
        let a = Admission::new(&ModelsConfig {
            use_batching: false,
            max_concurrent_per_model: 8,
            max_queue: 0,
            ..ModelsConfig::default()
        });
        let _p = a.admit("m").unwrap();
        assert!(a.admit("m").is_err());
    }

    #[test]
    fn load_estimate_uses_the_last_load_and_counts_down_a_load_in_progress() {
        let a = admission(1, 1);
        // Unknown: a guess from the size.
        assert_eq!(a.retry_after_secs("m", 0), 2);
        assert_eq!(a.retry_after_secs("m", 5_000_000_000), 12);
        a.load_finished("m", Some(30.0));
        assert_eq!(a.retry_after_secs("m", 0), 30);
        a.load_started("m");
        assert!(a.load_estimate("m", 0) <= Duration::from_secs(30));
        a.background_load_failed("m", ManagerError::NotLoaded("m".into()));
        assert!(a.take_failure("m").is_some());
        assert!(a.take_failure("m").is_none());
        a.background_load_failed("m", ManagerError::NotLoaded("m".into()));
        a.load_finished("m", Some(1.0));
        assert!(a.take_failure("m").is_none(), "a later success clears it");
    }

    #[test]
    fn prefer_wait_parses_rfc_7240() {
        let parse = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("prefer", HeaderValue::from_str(v).unwrap());
            }
            prefer_wait(&h)
        };
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&["wait=0"]), Some(Duration::ZERO));
        assert_eq!(
            parse(&["respond-async, Wait = 10"]),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse(&["return=minimal", "wait=5"]),
            Some(Duration::from_secs(5))
        );
        assert_eq!(parse(&["wait=\"3\""]), Some(Duration::from_secs(3)));
        assert_eq!(parse(&["wait=soon"]), None);
        assert_eq!(parse(&["handling=lenient"]), None);
    }
}
