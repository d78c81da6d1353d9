//! `/metrics` against the real daemon and worker: request, token and latency counts after
//! real generations, the lifecycle counters through a load, a crash, a restart and an
//! unload, and the gauges read at scrape time.

use std::time::{Duration, Instant};

use opta_lmx_tests::{signal, stream_events, Daemon};
use serde_json::json;

const TINY: &str = "opta/tiny-random-llama";

/// The value of the sample `name{labels}` (labels as written, in order), if present.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn scrape(d: &Daemon) -> String {
    let (code, body) = d.try_request("GET", "/metrics", None).expect("scrape");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    body
}

#[test]
fn metrics_count_requests_tokens_latency_and_worker_lifecycles() {
    let d = Daemon::start("");
    let m = format!("{{model=\"{TINY}\"}}");
    let chat = |stream: bool| {
        json!({"model": TINY, "messages": [{"role": "user", "content": "Hi"}],
               "max_tokens": 5, "temperature": 0, "stream": stream})
    };
    let (code, body) = d.post("/v1/chat/completions", &chat(false));
    assert_eq!(code, 200, "{body}");
    let completion = body["usage"]["completion_tokens"].as_f64().expect("usage");
    let (code, ended) =
        stream_events(d.port, "/v1/chat/completions", &chat(true), |_| true).expect("stream");
    assert_eq!((code, ended), (200, true));
    let (code, _) = d.post(
        "/v1/chat/completions",
        &json!({"model": "nobody/nothing", "messages": [{"role": "user", "content": "Hi"}]}),
    );
    assert_eq!(code, 404);

    let text = scrape(&d);
    let route = "opta_lmx_http_requests_total{route=\"/v1/chat/completions\"";
    assert_eq!(
        sample(&text, &format!("{route},model=\"{TINY}\",status=\"200\"}}")),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("{route},model=\"\",status=\"404\"}}")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("opta_lmx_completion_tokens_total{m}")),
        Some(2.0 * completion)
    );
    assert!(sample(&text, &format!("opta_lmx_prompt_tokens_total{m}")).is_some_and(|n| n > 0.0));
    assert_eq!(
        sample(
            &text,
            &format!("opta_lmx_time_to_first_token_seconds_count{m}")
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, &format!("opta_lmx_model_loads_total{m}")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, &format!("opta_lmx_requests_running{m}")),
        Some(0.0)
    );
    assert!(sample(&text, &format!("opta_lmx_worker_resident_bytes{m}")).is_some_and(|b| b > 1e6));
    assert_eq!(sample(&text, "opta_lmx_models_loaded"), Some(1.0));
    // The same prompt again is partly served from the prompt cache.
    let (code, _) = d.post("/v1/chat/completions", &chat(false));
    assert_eq!(code, 200);
    let text = scrape(&d);
    assert!(
        sample(&text, &format!("opta_lmx_prompt_cache_hits_total{m}")).is_some_and(|n| n >= 1.0),
        "{text}"
    );

    // A crash, the restart that follows it, then an unload.
    signal(d.worker_pid(TINY).expect("pid"), "KILL");
    let deadline = Instant::now() + Duration::from_secs(10);
    while sample(&scrape(&d), &format!("opta_lmx_worker_crashes_total{m}")) != Some(1.0) {
        assert!(Instant::now() < deadline, "no crash counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, _) = d.post("/v1/chat/completions", &chat(false));
    assert_eq!(code, 200);
    let (code, _) = d.post("/admin/models/unload", &json!({"model_id": TINY}));
    assert_eq!(code, 200);
    let text = scrape(&d);
    assert_eq!(
        sample(&text, &format!("opta_lmx_worker_restarts_total{m}")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, &format!("opta_lmx_model_loads_total{m}")),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, &format!("opta_lmx_model_unloads_total{m}")),
        Some(1.0)
    );
    // Gauges of a model no longer loaded are gone.
    assert_eq!(
        sample(&text, &format!("opta_lmx_requests_running{m}")),
        None,
        "{text}"
    );
    assert_eq!(sample(&text, "opta_lmx_models_loaded"), Some(0.0));
}
