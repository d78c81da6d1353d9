//! LM Studio's `/api/v1/chat` shapes: a body of `output` items (`reasoning`, `message`) with
//! `stats` and `response_id`, or its stream of named events, `chat.start`,
//! `prompt_processing.*`, `reasoning.*`, `message.*` and `chat.end` carrying that body
//! (`model_load.*` come from the route, which sees the load). A finished chat is stored for
//! `previous_response_id` unless the request said `store: false`.

use std::sync::Arc;

use opta_lmx_shared::protocol::{Delta, TokenLogprob};
use serde_json::{json, Value};

use super::{tokens_per_second, Collected, End, Renderer, Sse};
use crate::api::lmstudio::lms_error;
use crate::api::responses::response_id;
use crate::api::ApiError;
use crate::state::AppState;

/// The kind of output item being streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Reasoning,
    Message,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Reasoning => "reasoning",
            Part::Message => "message",
        }
    }

    fn events(self) -> [&'static str; 3] {
        match self {
            Part::Reasoning => ["reasoning.start", "reasoning.delta", "reasoning.end"],
            Part::Message => ["message.start", "message.delta", "message.end"],
        }
    }
}

/// An event with its `type` set, as every LM Studio event's data carries it.
fn event(name: &'static str, mut data: Value) -> Sse {
    data["type"] = json!(name);
    Sse::Named(name, data)
}

pub struct LmsChatRenderer {
    model: String,
    prompt_tokens: u32,
    /// Seconds this request spent loading its model, when it loaded it.
    load_seconds: Option<f64>,
    /// Whether the route already sent `chat.start` (before a model load).
    announced: bool,
    /// The chat up to this request's user turn, to store with the answer (`None`: not kept).
    store: Option<(Arc<AppState>, Vec<Value>)>,
    response_id: Option<String>,
    prompt_done: bool,
    /// Streamed output items in order, the last one possibly still open.
    items: Vec<(Part, String)>,
    open: bool,
    output_tokens: u32,
    reasoning_tokens: u32,
}

impl LmsChatRenderer {
    pub fn new(
        model: &str,
        prompt_tokens: u32,
        load_seconds: Option<f64>,
        store: Option<(Arc<AppState>, Vec<Value>)>,
    ) -> Self {
        LmsChatRenderer {
            model: model.to_string(),
            prompt_tokens,
            load_seconds,
            announced: false,
            response_id: store.as_ref().map(|_| response_id()),
            store,
            prompt_done: false,
            items: Vec::new(),
            open: false,
            output_tokens: 0,
            reasoning_tokens: 0,
        }
    }

    /// For a stream whose `chat.start` the route has sent.
    pub fn announced(mut self) -> Self {
        self.announced = true;
        self
    }

    /// `chat.start`, as the route sends it before a load.
    pub fn chat_start(model: &str) -> Sse {
        event("chat.start", json!({"model_instance_id": model}))
    }

    /// `model_load.start`, when the request has to load its model.
    pub fn load_start(model: &str) -> Sse {
        event("model_load.start", json!({"model_instance_id": model}))
    }

    /// The events of a finished load. The worker reports no progress while it loads, so
    /// the one progress event says it is complete.
    pub fn load_end(model: &str, seconds: f64) -> [Sse; 2] {
        [
            event(
                "model_load.progress",
                json!({"model_instance_id": model, "progress": 1.0}),
            ),
            event(
                "model_load.end",
                json!({"model_instance_id": model, "load_time_seconds": seconds}),
            ),
        ]
    }

    fn stats(&self, end: Option<&End>) -> Value {
        let mut stats = match end {
            Some(end) => json!({
                "input_tokens": self.prompt_tokens.max(end.usage.prompt_tokens),
                "total_output_tokens": end.usage.completion_tokens,
                "reasoning_output_tokens": end.usage.reasoning_tokens,
                "tokens_per_second": tokens_per_second(&end.usage, &end.timings),
                "time_to_first_token_seconds": end.timings.time_to_first_token_ms / 1e3,
            }),
            // A generation that failed: what was counted on the way.
            None => json!({
                "input_tokens": self.prompt_tokens,
                "total_output_tokens": self.output_tokens,
                "reasoning_output_tokens": self.reasoning_tokens,
                "tokens_per_second": 0.0,
                "time_to_first_token_seconds": 0.0,
            }),
        };
        if let Some(secs) = self.load_seconds {
            stats["model_load_time_seconds"] = json!(secs);
        }
        stats
    }

    /// The whole response from its items; the chat is stored under its id.
    fn result(&mut self, items: &[(Part, String)], end: Option<&End>) -> Value {
        let output: Vec<Value> = items
            .iter()
            .map(|(part, text)| json!({"type": part.name(), "content": text}))
            .collect();
        let mut body = json!({
            "model_instance_id": self.model,
            "output": output,
            "stats": self.stats(end),
        });
        if let (Some((state, chat)), Some(id)) = (self.store.take(), &self.response_id) {
            state.lms_chats.insert(id, with_answer(chat, items));
            body["response_id"] = json!(id);
        }
        body
    }

    /// `prompt_processing.end`, once, before the first output or the end.
    fn end_prompt(&mut self, events: &mut Vec<Sse>) {
        if !self.prompt_done {
            self.prompt_done = true;
            events.push(event("prompt_processing.end", json!({})));
        }
    }

    fn close(&mut self, events: &mut Vec<Sse>) {
        if self.open {
            self.open = false;
            if let Some((part, _)) = self.items.last() {
                events.push(event(part.events()[2], json!({})));
            }
        }
    }

    fn write(&mut self, part: Part, text: &str, events: &mut Vec<Sse>) {
        if !(self.open && self.items.last().is_some_and(|(p, _)| *p == part)) {
            self.close(events);
            self.open = true;
            self.items.push((part, String::new()));
            events.push(event(part.events()[0], json!({})));
        }
        if let Some((_, buf)) = self.items.last_mut() {
            buf.push_str(text);
        }
        events.push(event(part.events()[1], json!({"content": text})));
    }
}

/// `chat` with the assistant's answer appended, as a template takes it back.
fn with_answer(mut chat: Vec<Value>, items: &[(Part, String)]) -> Vec<Value> {
    let joined = |want: Part| -> String {
        items
            .iter()
            .filter(|(p, _)| *p == want)
            .map(|(_, t)| t.as_str())
            .collect()
    };
    let mut answer = json!({"role": "assistant", "content": joined(Part::Message)});
    let reasoning = joined(Part::Reasoning);
    if !reasoning.is_empty() {
        // Qwen3's templates read `reasoning_content`, gpt-oss's `thinking`.
        answer["reasoning_content"] = json!(reasoning);
        answer["thinking"] = json!(reasoning);
    }
    chat.push(answer);
    chat
}

impl Renderer for LmsChatRenderer {
    fn start(&mut self) -> Vec<Sse> {
        let mut events = Vec::new();
        if !self.announced {
            events.push(Self::chat_start(&self.model));
        }
        events.push(event("prompt_processing.start", json!({})));
        events
    }

    fn progress(&mut self, done: u32, total: u32) -> Vec<Sse> {
        if self.prompt_done || total == 0 {
            return Vec::new();
        }
        let progress = (f64::from(done) / f64::from(total)).min(1.0);
        vec![event(
            "prompt_processing.progress",
            json!({"progress": progress}),
        )]
    }

    fn chunk(&mut self, deltas: &[Delta], _: &[TokenLogprob]) -> Vec<Sse> {
        let mut events = Vec::new();
        self.end_prompt(&mut events);
        for d in deltas {
            self.output_tokens += d.tokens();
            match d {
                Delta::Reasoning { text, tokens } => {
                    self.reasoning_tokens += tokens;
                    self.write(Part::Reasoning, text, &mut events);
                }
                Delta::Text { text, .. } => self.write(Part::Message, text, &mut events),
                // This route sends the model no tools, so it writes no calls to parse.
                Delta::ToolCall { .. } => {}
            }
        }
        events
    }

    fn done(&mut self, end: &End) -> Vec<Sse> {
        let mut events = Vec::new();
        self.end_prompt(&mut events);
        self.close(&mut events);
        let items = std::mem::take(&mut self.items);
        let result = self.result(&items, Some(end));
        events.push(event("chat.end", json!({"result": result})));
        events
    }

    /// LM Studio's `error` event, then `chat.end` with what was generated: its clients read
    /// the result from `chat.end` whatever happened.
    fn error(&mut self, err: &ApiError) -> Vec<Sse> {
        let mut events = Vec::new();
        self.close(&mut events);
        events.push(event("error", json!({"error": lms_error(err)})));
        // A failed chat is not kept: its answer is not one to continue from.
        self.store = None;
        self.response_id = None;
        let items = std::mem::take(&mut self.items);
        let result = self.result(&items, None);
        events.push(event("chat.end", json!({"result": result})));
        events
    }

    fn body(&mut self, out: Collected, end: &End) -> Value {
        let mut items = Vec::new();
        if !out.reasoning.is_empty() {
            items.push((Part::Reasoning, out.reasoning));
        }
        // The answer is always there, empty when the model only reasoned.
        items.push((Part::Message, out.text));
        self.result(&items, Some(end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opta_lmx_shared::protocol::{FinishReason, Timings, Usage};

    fn names(events: &[Sse]) -> Vec<&'static str> {
        events
            .iter()
            .filter_map(|e| match e {
                Sse::Named(n, _) => Some(*n),
                _ => None,
            })
            .collect()
    }

    fn end() -> End {
        End {
            finish: FinishReason::Stop,
            usage: Usage {
                prompt_tokens: 7,
                completion_tokens: 3,
                cached_prompt_tokens: 0,
                reasoning_tokens: 1,
            },
            timings: Timings {
                time_to_first_token_ms: 250.0,
                generation_ms: 100.0,
                ..Timings::default()
            },
            called_tools: false,
        }
    }

    #[test]
    fn a_stream_names_its_events_in_lm_studios_order() {
        let mut r = LmsChatRenderer::new("m", 7, Some(1.5), None);
        let mut events = r.start();
        events.extend(r.progress(4, 8));
        events.extend(r.chunk(
            &[
                Delta::Reasoning {
                    text: "hm".into(),
                    tokens: 1,
                },
                Delta::Text {
                    text: "Hi".into(),
                    tokens: 1,
                },
            ],
            &[],
        ));
        events.extend(r.chunk(
            &[Delta::Text {
                text: "!".into(),
                tokens: 1,
            }],
            &[],
        ));
        events.extend(r.done(&end()));
        assert_eq!(
            names(&events),
            [
                "chat.start",
                "prompt_processing.start",
                "prompt_processing.progress",
                "prompt_processing.end",
                "reasoning.start",
                "reasoning.delta",
                "reasoning.end",
                "message.start",
                "message.delta",
                "message.delta",
                "message.end",
                "chat.end"
            ]
        );
        let Some(Sse::Named(_, last)) = events.last() else {
            panic!("chat.end");
        };
        let result = &last["result"];
        assert_eq!(last["type"], "chat.end");
        assert_eq!(
            result["output"],
            json!([{"type": "reasoning", "content": "hm"},
                   {"type": "message", "content": "Hi!"}])
        );
        assert_eq!(result["stats"]["input_tokens"], 7);
        assert_eq!(result["stats"]["reasoning_output_tokens"], 1);
        assert_eq!(result["stats"]["time_to_first_token_seconds"], 0.25);
        assert_eq!(result["stats"]["model_load_time_seconds"], 1.5);
        assert!(result.get("response_id").is_none(), "not stored");
    }

    #[test]
    fn a_failure_is_an_error_event_then_chat_end_with_what_was_said() {
        let mut r = LmsChatRenderer::new("m", 7, None, None).announced();
        let mut events = r.start();
        events.extend(r.chunk(
            &[Delta::Text {
                text: "Hi".into(),
                tokens: 1,
            }],
            &[],
        ));
        events.extend(r.error(&ApiError::worker_crashed("gone")));
        assert_eq!(
            names(&events),
            [
                "prompt_processing.start",
                "prompt_processing.end",
                "message.start",
                "message.delta",
                "message.end",
                "error",
                "chat.end"
            ]
        );
        let Some(Sse::Named(_, last)) = events.last() else {
            panic!("chat.end");
        };
        assert_eq!(last["result"]["output"][0]["content"], "Hi");
        assert_eq!(last["result"]["stats"]["total_output_tokens"], 1);
    }

    #[test]
    fn a_whole_body_has_the_answer_and_no_load_time_when_loaded_already() {
        let mut r = LmsChatRenderer::new("m", 7, None, None);
        let out = Collected {
            text: "Hi".into(),
            ..Collected::default()
        };
        let body = r.body(out, &end());
        assert_eq!(body["model_instance_id"], "m");
        assert_eq!(
            body["output"],
            json!([{"type": "message", "content": "Hi"}])
        );
        assert!(body["stats"].get("model_load_time_seconds").is_none());
    }
}
