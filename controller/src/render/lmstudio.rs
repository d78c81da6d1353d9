//! LM Studio's `/api/v0` dialect: OpenAI's responses with `stats`, `model_info` and `runtime`
//! added to the whole body and to a stream's finishing chunk.

use opta_lmx_shared::protocol::{Delta, FinishReason as WireFinish, TokenLogprob};
use serde_json::{json, Value};

use super::{tokens_per_second, Collected, End, Renderer, Sse};
use crate::api::ApiError;
use crate::discovery::ModelEntry;

/// Wraps an OpenAI renderer with LM Studio's extra fields.
pub struct LmStudio<R> {
    inner: R,
    entry: ModelEntry,
    /// The context the worker loaded (`loaded_context_length`).
    context_length: Option<u32>,
}

impl<R: Renderer> LmStudio<R> {
    pub fn new(inner: R, entry: ModelEntry, context_length: Option<u32>) -> Self {
        LmStudio {
            inner,
            entry,
            context_length,
        }
    }

    fn extras(&self, end: &End) -> Value {
        let e = &self.entry;
        json!({
            "stats": {
                "tokens_per_second": tokens_per_second(&end.usage, &end.timings),
                "time_to_first_token": end.timings.time_to_first_token_ms / 1e3,
                "generation_time": end.timings.generation_ms / 1e3,
                "stop_reason": match end.finish {
                    WireFinish::Length => "maxPredictedTokensReached",
                    _ if end.called_tools => "toolCalls",
                    _ => "eosFound",
                },
            },
            "model_info": {
                "arch": e.config.model_type,
                "quant": e.config.quantization_label(),
                "format": "mlx",
                "context_length": self.context_length.map_or(
                    json!(e.config.max_position_embeddings),
                    |n| json!(n),
                ),
            },
            "runtime": {
                "name": "opta-lmx-mlx",
                "version": crate::VERSION,
                "supported_formats": ["safetensors"],
            },
        })
    }
}

/// `value`'s fields with those of `extra` added.
fn merge(value: &mut Value, extra: Value) {
    if let (Value::Object(extra), Value::Object(obj)) = (extra, value) {
        obj.extend(extra);
    }
}

impl<R: Renderer> Renderer for LmStudio<R> {
    fn start(&mut self) -> Vec<Sse> {
        self.inner.start()
    }

    fn chunk(&mut self, deltas: &[Delta], logprobs: &[TokenLogprob]) -> Vec<Sse> {
        self.inner.chunk(deltas, logprobs)
    }

    fn done(&mut self, end: &End) -> Vec<Sse> {
        let mut events = self.inner.done(end);
        // The finishing chunk is the first event that closes the stream.
        if let Some(Sse::Data(first)) = events.first_mut() {
            merge(first, self.extras(end));
        }
        events
    }

    fn error(&mut self, err: &ApiError) -> Vec<Sse> {
        self.inner.error(err)
    }

    fn body(&mut self, out: Collected, end: &End) -> Value {
        let mut body = self.inner.body(out, end);
        merge(&mut body, self.extras(end));
        body
    }
}
