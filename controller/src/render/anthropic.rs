//! Anthropic's Messages shapes: a `message` with content blocks (thinking, text, tool_use),
//! or its stream of named events: `message_start`, per block `content_block_start` /
//! `content_block_delta` / `content_block_stop`, then `message_delta` and `message_stop`.

use opta_lmx_shared::protocol::{Delta, FinishReason as WireFinish, TokenLogprob};
use serde_json::{json, Value};

use super::{Collected, End, Renderer, Sse};
use crate::api::messages::{self, Usage};
use crate::api::ApiError;

/// The kind of content block open in a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Thinking,
    Text,
    ToolUse,
}

pub struct MessagesRenderer {
    id: String,
    model: String,
    prompt_tokens: u32,
    /// The open block and its index; blocks are numbered from 0 in order.
    open: Option<(Block, u32)>,
    next_index: u32,
}

impl MessagesRenderer {
    pub fn new(model: &str, prompt_tokens: u32) -> Self {
        MessagesRenderer {
            id: messages::message_id(),
            model: model.to_string(),
            prompt_tokens,
            open: None,
            next_index: 0,
        }
    }

    fn usage(&self, end: Option<&End>) -> Usage {
        Usage {
            input_tokens: self.prompt_tokens,
            output_tokens: end.map_or(0, |e| e.usage.completion_tokens),
            cache_read_input_tokens: end.map_or(0, |e| e.usage.cached_prompt_tokens),
            cache_creation_input_tokens: 0,
        }
    }

    /// Closes the open block, if any.
    fn close(&mut self, out: &mut Vec<Sse>) {
        if let Some((_, index)) = self.open.take() {
            out.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    /// Makes sure a block of `kind` is open (a tool use always opens its own), and returns
    /// its index.
    fn ensure(&mut self, kind: Block, start: Value, out: &mut Vec<Sse>) -> u32 {
        if let Some((open, index)) = self.open {
            if open == kind && kind != Block::ToolUse {
                return index;
            }
        }
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((kind, index));
        out.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": start}),
        ));
        index
    }
}

fn event(name: &'static str, value: Value) -> Sse {
    Sse::Named(name, value)
}

fn delta(index: u32, delta: Value) -> Sse {
    event(
        "content_block_delta",
        json!({"type": "content_block_delta", "index": index, "delta": delta}),
    )
}

fn stop_reason(end: &End) -> &'static str {
    match end.finish {
        WireFinish::Length => "max_tokens",
        _ if end.called_tools => "tool_use",
        WireFinish::Stop | WireFinish::Cancelled => "end_turn",
    }
}

/// A tool use's `input`: the arguments JSON as an object (an unparsable one, from a call
/// cut short, is kept as text under `_raw` rather than lost).
fn input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ if arguments.trim().is_empty() => json!({}),
        _ => json!({"_raw": arguments}),
    }
}

impl Renderer for MessagesRenderer {
    fn start(&mut self) -> Vec<Sse> {
        vec![
            event(
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": self.usage(None),
                }}),
            ),
            event("ping", json!({"type": "ping"})),
        ]
    }

    fn chunk(&mut self, deltas: &[Delta], _logprobs: &[TokenLogprob]) -> Vec<Sse> {
        let mut out = Vec::new();
        for d in deltas {
            match d {
                Delta::Reasoning { text, .. } if !text.is_empty() => {
                    let start = json!({"type": "thinking", "thinking": "", "signature": ""});
                    let i = self.ensure(Block::Thinking, start, &mut out);
                    out.push(delta(
                        i,
                        json!({"type": "thinking_delta", "thinking": text}),
                    ));
                }
                Delta::Text { text, .. } if !text.is_empty() => {
                    let i = self.ensure(Block::Text, json!({"type": "text", "text": ""}), &mut out);
                    out.push(delta(i, json!({"type": "text_delta", "text": text})));
                }
                Delta::ToolCall {
                    id: Some(id),
                    name,
                    arguments,
                    ..
                } => {
                    let start = json!({"type": "tool_use", "id": id,
                        "name": name.clone().unwrap_or_default(), "input": {}});
                    let i = self.ensure(Block::ToolUse, start, &mut out);
                    if !arguments.is_empty() {
                        out.push(delta(
                            i,
                            json!({"type": "input_json_delta", "partial_json": arguments}),
                        ));
                    }
                }
                Delta::ToolCall { arguments, .. } if !arguments.is_empty() => {
                    if let Some((Block::ToolUse, i)) = self.open {
                        out.push(delta(
                            i,
                            json!({"type": "input_json_delta", "partial_json": arguments}),
                        ));
                    }
                }
                _ => {}
            }
        }
        out
    }

    fn done(&mut self, end: &End) -> Vec<Sse> {
        let mut out = Vec::new();
        self.close(&mut out);
        out.push(event(
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": stop_reason(end), "stop_sequence": null},
                   "usage": self.usage(Some(end))}),
        ));
        out.push(event("message_stop", json!({"type": "message_stop"})));
        out
    }

    fn error(&mut self, err: &ApiError) -> Vec<Sse> {
        vec![event(
            "error",
            messages::error_body(
                err.status().as_u16(),
                &serde_json::to_value(err.body()).unwrap_or_default(),
            ),
        )]
    }

    fn keep_alive(&mut self) -> Sse {
        event("ping", json!({"type": "ping"}))
    }

    fn body(&mut self, out: Collected, end: &End) -> Value {
        let mut content = Vec::new();
        if !out.reasoning.is_empty() {
            content.push(json!({"type": "thinking", "thinking": out.reasoning, "signature": ""}));
        }
        if !out.text.is_empty() {
            content.push(json!({"type": "text", "text": out.text}));
        }
        for call in &out.tool_calls {
            content.push(json!({"type": "tool_use", "id": call.id, "name": call.name,
                                "input": input(&call.arguments)}));
        }
        json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": content, "stop_reason": stop_reason(end), "stop_sequence": null,
            "usage": self.usage(Some(end)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opta_lmx_shared::protocol::{Timings, Usage as WireUsage};

    fn end(finish: WireFinish, called_tools: bool) -> End {
        End {
            finish,
            usage: WireUsage {
                prompt_tokens: 9,
                completion_tokens: 5,
                cached_prompt_tokens: 4,
                reasoning_tokens: 1,
            },
            timings: Timings::default(),
            called_tools,
        }
    }

    fn names(events: &[Sse]) -> Vec<&'static str> {
        events
            .iter()
            .map(|e| match e {
                Sse::Named(n, _) => *n,
                _ => "?",
            })
            .collect()
    }

    #[test]
    fn a_stream_opens_and_closes_one_block_per_kind_in_order() {
        let mut r = MessagesRenderer::new("m", 9);
        let mut events = r.start();
        events.extend(r.chunk(
            &[
                Delta::Reasoning {
                    text: "hmm".into(),
                    tokens: 1,
                },
                Delta::Text {
                    text: "Hi".into(),
                    tokens: 1,
                },
                Delta::Text {
                    text: " there".into(),
                    tokens: 1,
                },
                Delta::ToolCall {
                    index: 0,
                    id: Some("call_1".into()),
                    name: Some("w".into()),
                    arguments: "{\"a\"".into(),
                    tokens: 1,
                },
                Delta::ToolCall {
                    index: 0,
                    id: None,
                    name: None,
                    arguments: ": 1}".into(),
                    tokens: 1,
                },
            ],
            &[],
        ));
        events.extend(r.done(&end(WireFinish::Stop, true)));
        assert_eq!(
            names(&events),
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        let Sse::Named(_, tool_start) = &events[9] else {
            panic!()
        };
        assert_eq!(tool_start["index"], 2);
        assert_eq!(tool_start["content_block"]["name"], "w");
        let Sse::Named(_, md) = &events[13] else {
            panic!()
        };
        assert_eq!(md["delta"]["stop_reason"], "tool_use");
        assert_eq!(md["usage"]["output_tokens"], 5);
    }

    #[test]
    fn a_body_has_thinking_text_and_tool_use_blocks() {
        let mut r = MessagesRenderer::new("m", 9);
        let out = Collected {
            text: "ok".into(),
            reasoning: "why".into(),
            tool_calls: vec![super::super::CollectedCall {
                id: "call_1".into(),
                name: "w".into(),
                arguments: "{\"a\": 1}".into(),
            }],
            logprobs: Vec::new(),
        };
        let v = r.body(out, &end(WireFinish::Length, true));
        assert_eq!(v["type"], "message");
        assert_eq!(v["content"][0]["type"], "thinking");
        assert_eq!(v["content"][2]["input"], json!({"a": 1}));
        assert_eq!(v["stop_reason"], "max_tokens");
        assert_eq!(
            v["usage"],
            json!({"input_tokens": 9, "output_tokens": 5, "cache_read_input_tokens": 4,
                   "cache_creation_input_tokens": 0})
        );
    }
}
