//! Server-sent events as OpenAI streams them (`data: <json>\n\n`, then `data: [DONE]\n\n`),
//! plus the ids that name completions.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The stream's terminator; the OpenAI SDKs stop reading at it.
pub const DONE: &str = "data: [DONE]\n\n";

/// An SSE comment, which clients ignore; sent while nothing else is ready.
pub const KEEP_ALIVE: &str = ": keep-alive\n\n";

/// Content type of a streamed response.
pub const CONTENT_TYPE: &str = "text/event-stream";

/// One SSE event carrying `value` as JSON.
pub fn event<T: Serialize + ?Sized>(value: &T) -> String {
    match serde_json::to_string(value) {
        Ok(json) => format!("data: {json}\n\n"),
        // Our types always serialize; if one ever does not, the client still gets JSON.
        Err(e) => format!(
            "data: {}\n\n",
            serde_json::json!({"error": {
                "message": format!("failed to serialize stream event: {e}"),
                "type": "server_error", "param": null, "code": "internal_error"}})
        ),
    }
}

/// One SSE event with an event name (`event: <name>`), as the Anthropic and Responses
/// streams send them.
pub fn named_event<T: Serialize + ?Sized>(name: &str, value: &T) -> String {
    format!("event: {name}\n{}", event(value))
}

/// Seconds since the Unix epoch, for `created`.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `chatcmpl-` and 24 random-looking characters, like OpenAI's.
pub fn chat_completion_id() -> String {
    new_id("chatcmpl-")
}

/// `cmpl-` and 24 characters, for `/v1/completions`.
pub fn completion_id() -> String {
    new_id("cmpl-")
}

/// `prefix` followed by 24 base-62 characters.
pub fn new_id(prefix: &str) -> String {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SEED: OnceLock<u64> = OnceLock::new();
    // `RandomState` is randomly keyed per process, which avoids a dependency on `rand`; the
    // counter keeps ids distinct within the process.
    let seed = *SEED.get_or_init(|| {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        h.finish()
    });
    let mut state = seed ^ COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(GOLDEN);
    let mut id = String::with_capacity(prefix.len() + 24);
    id.push_str(prefix);
    for _ in 0..3 {
        let mut word = splitmix64(&mut state);
        for _ in 0..8 {
            id.push(ALPHABET[(word % 62) as usize] as char);
            word /= 62;
        }
    }
    id
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GOLDEN);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn event_formats_data_line() {
        assert_eq!(event(&serde_json::json!({"a": 1})), "data: {\"a\":1}\n\n");
        assert_eq!(DONE, "data: [DONE]\n\n");
        assert_eq!(
            named_event("ping", &serde_json::json!({})),
            "event: ping\ndata: {}\n\n"
        );
    }

    #[test]
    fn ids_have_prefix_length_and_are_unique() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let id = chat_completion_id();
            let rest = id.strip_prefix("chatcmpl-").unwrap();
            assert_eq!(rest.len(), 24);
            assert!(rest.chars().all(|c| c.is_ascii_alphanumeric()));
            assert!(seen.insert(id));
        }
        let id = completion_id();
        assert!(id.starts_with("cmpl-"));
        assert_eq!(id.len(), "cmpl-".len() + 24);
    }

    #[test]
    fn created_is_recent() {
        assert!(unix_now() > 1_700_000_000);
    }
}
