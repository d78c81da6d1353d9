//! OpenAI's Responses shapes: a `response` object with output items (reasoning, message,
//! function or custom tool calls), or its stream of named events, each with a
//! `sequence_number`, that always ends in `response.completed`, `response.incomplete` or
//! `response.failed`. A finished response is kept for `previous_response_id`.

use std::sync::Arc;

use opta_lmx_shared::protocol::{Delta, FinishReason as WireFinish, TokenLogprob};
use serde_json::{json, Value};

use super::{Collected, End, Renderer, Sse};
use crate::api::responses::{response_id, ResponsesRequest};
use crate::api::{sse, ApiError};
use crate::state::AppState;

/// The output item a stream is writing.
enum Open {
    Reasoning {
        text: String,
    },
    Message {
        text: String,
    },
    Call {
        call_id: String,
        name: String,
        arguments: String,
    },
}

pub struct ResponsesRenderer {
    id: String,
    model: String,
    created_at: u64,
    state: Arc<AppState>,
    /// The request's fields the response echoes.
    echo: Value,
    /// The conversation so far (without `instructions`, which a continuation gives anew),
    /// to store with the answer.
    conversation: Vec<Value>,
    store: bool,
    custom_tools: Vec<String>,
    prompt_tokens: u32,
    sequence: u64,
    /// Finished output items, in order.
    items: Vec<Value>,
    /// The item being written, with its id.
    open: Option<(String, Open)>,
}

impl ResponsesRenderer {
    pub fn new(
        req: &ResponsesRequest,
        conversation: Vec<Value>,
        model: &str,
        prompt_tokens: u32,
        state: Arc<AppState>,
        sampling: (Option<f32>, Option<f32>),
    ) -> Self {
        let echo = json!({
            "instructions": req.instructions,
            "tools": req.tools.clone().unwrap_or_default(),
            "tool_choice": req.tool_choice_echo(),
            "parallel_tool_calls": req.parallel_tool_calls.unwrap_or(true),
            "text": req.text_echo(),
            "max_output_tokens": req.max_output_tokens,
            "previous_response_id": req.previous_response_id,
            "reasoning": {"effort": req.reasoning.as_ref().and_then(|r| r.get("effort")).cloned(), "summary": null},
            "store": req.store.unwrap_or(true),
            "metadata": req.metadata.clone().unwrap_or_else(|| json!({})),
            "temperature": sampling.0,
            "top_p": sampling.1,
            "truncation": "disabled",
        });
        ResponsesRenderer {
            id: response_id(),
            model: model.to_string(),
            created_at: sse::unix_now(),
            state,
            echo,
            conversation,
            store: req.store.unwrap_or(true),
            custom_tools: req.custom_tools(),
            prompt_tokens,
            sequence: 0,
            items: Vec::new(),
            open: None,
        }
    }

    fn event(&mut self, name: &'static str, mut payload: Value) -> Sse {
        payload["type"] = json!(name);
        payload["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        Sse::Named(name, payload)
    }

    /// The response object with `status`, the items so far and, once known, usage.
    fn response(&self, status: &str, end: Option<&End>, error: Option<Value>) -> Value {
        let mut r = json!({
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": status, "model": self.model, "output": self.items,
            "error": error, "incomplete_details": null,
            "usage": end.map(|e| self.usage(e)),
        });
        if let (Value::Object(r), Value::Object(echo)) = (&mut r, &self.echo) {
            r.extend(echo.clone());
        }
        if end.is_some_and(|e| e.finish == WireFinish::Length) {
            r["incomplete_details"] = json!({"reason": "max_output_tokens"});
        }
        r
    }

    fn usage(&self, end: &End) -> Value {
        let u = &end.usage;
        json!({
            "input_tokens": self.prompt_tokens.max(u.prompt_tokens),
            "input_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "total_tokens": self.prompt_tokens.max(u.prompt_tokens) + u.completion_tokens,
        })
    }

    fn is_custom(&self, name: &str) -> bool {
        self.custom_tools.iter().any(|t| t == name)
    }

    /// The finished item for what was open.
    fn item(&self, id: &str, open: &Open) -> Value {
        match open {
            Open::Reasoning { text } => json!({"type": "reasoning", "id": id, "summary": [],
                "content": [{"type": "reasoning_text", "text": text}], "status": "completed"}),
            Open::Message { text } => json!({"type": "message", "id": id, "status": "completed",
                "role": "assistant", "content": [output_text(text)]}),
            Open::Call {
                call_id,
                name,
                arguments,
            } if self.is_custom(name) => json!({
                "type": "custom_tool_call", "id": id, "call_id": call_id, "name": name,
                "input": custom_input(arguments), "status": "completed"}),
            Open::Call {
                call_id,
                name,
                arguments,
            } => json!({"type": "function_call", "id": id,
                "call_id": call_id, "name": name, "arguments": arguments, "status": "completed"}),
        }
    }

    /// Closes the open item: its `.done` events, and `output_item.done`.
    fn close(&mut self, out: &mut Vec<Sse>) {
        let Some((id, open)) = self.open.take() else {
            return;
        };
        let index = self.items.len();
        let item = self.item(&id, &open);
        match &open {
            Open::Reasoning { text } => {
                let e = self.event(
                    "response.reasoning_text.done",
                    json!({"item_id": id,
                    "output_index": index, "content_index": 0, "text": text}),
                );
                out.push(e);
            }
            Open::Message { text } => {
                let e = self.event(
                    "response.output_text.done",
                    json!({"item_id": id,
                    "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
                );
                out.push(e);
                let e = self.event(
                    "response.content_part.done",
                    json!({"item_id": id,
                    "output_index": index, "content_index": 0, "part": output_text(text)}),
                );
                out.push(e);
            }
            Open::Call {
                name, arguments, ..
            } if !self.is_custom(name) => {
                let e = self.event(
                    "response.function_call_arguments.done",
                    json!({
                    "item_id": id, "output_index": index, "name": name, "arguments": arguments}),
                );
                out.push(e);
            }
            Open::Call { .. } => {}
        }
        let e = self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
        out.push(e);
        self.items.push(item);
    }

    /// Opens a new item (closing the open one): `output_item.added`, and for a message its
    /// content part.
    fn open(&mut self, open: Open, out: &mut Vec<Sse>) {
        self.close(out);
        let prefix = match open {
            Open::Reasoning { .. } => "rs_",
            Open::Message { .. } => "msg_",
            Open::Call { .. } => "fc_",
        };
        let id = sse::new_id(prefix);
        let index = self.items.len();
        let mut item = self.item(&id, &open);
        item["status"] = json!("in_progress");
        let kind = item["type"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "message" | "reasoning" => item["content"] = json!([]),
            "function_call" => item["arguments"] = json!(""),
            "custom_tool_call" => item["input"] = json!(""),
            _ => {}
        }
        let e = self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        );
        out.push(e);
        if matches!(open, Open::Message { .. }) {
            let e = self.event(
                "response.content_part.added",
                json!({"item_id": id,
                "output_index": index, "content_index": 0, "part": output_text("")}),
            );
            out.push(e);
        }
        self.open = Some((id, open));
    }

    /// Keeps the conversation, with this answer as the assistant's turn.
    fn remember(&self) {
        if !self.store {
            return;
        }
        let mut text = String::new();
        let mut calls = Vec::new();
        for item in &self.items {
            match item["type"].as_str() {
                Some("message") => {
                    text.push_str(item["content"][0]["text"].as_str().unwrap_or_default())
                }
                Some("function_call") => calls.push(json!({"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": serde_json::from_str::<Value>(
                        item["arguments"].as_str().unwrap_or("{}")).unwrap_or_else(|_| json!({}))}})),
                Some("custom_tool_call") => calls.push(json!({"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": {"input": item["input"]}}})),
                _ => {}
            }
        }
        let mut turn = json!({"role": "assistant", "content": text});
        if !calls.is_empty() {
            turn["tool_calls"] = Value::Array(calls);
        }
        let mut conversation = self.conversation.clone();
        conversation.push(turn);
        self.state.responses.insert(&self.id, conversation);
    }

    fn status(end: &End) -> &'static str {
        match end.finish {
            WireFinish::Length => "incomplete",
            _ => "completed",
        }
    }
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// A custom tool's input: the string its one `input` argument carries.
fn custom_input(arguments: &str) -> String {
    serde_json::from_str::<Value>(arguments)
        .ok()
        .and_then(|v| v.get("input").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| arguments.to_string())
}

impl Renderer for ResponsesRenderer {
    fn start(&mut self) -> Vec<Sse> {
        let r = self.response("in_progress", None, None);
        let created = self.event("response.created", json!({"response": r}));
        let progress = self.event("response.in_progress", json!({"response": r}));
        vec![created, progress]
    }

    fn chunk(&mut self, deltas: &[Delta], _logprobs: &[TokenLogprob]) -> Vec<Sse> {
        let mut out = Vec::new();
        for d in deltas {
            match d {
                Delta::Reasoning { text, .. } if !text.is_empty() => {
                    self.append(true, text, &mut out)
                }
                Delta::Text { text, .. } if !text.is_empty() => self.append(false, text, &mut out),
                Delta::ToolCall {
                    id: Some(call_id),
                    name,
                    arguments,
                    ..
                } => {
                    let open = Open::Call {
                        call_id: call_id.clone(),
                        name: name.clone().unwrap_or_default(),
                        arguments: String::new(),
                    };
                    self.open(open, &mut out);
                    self.call_arguments(arguments, &mut out);
                }
                Delta::ToolCall { arguments, .. } => self.call_arguments(arguments, &mut out),
                _ => {}
            }
        }
        out
    }

    fn done(&mut self, end: &End) -> Vec<Sse> {
        let mut out = Vec::new();
        self.close(&mut out);
        self.remember();
        let status = Self::status(end);
        let r = self.response(status, Some(end), None);
        let name = if status == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        out.push(self.event(name, json!({"response": r})));
        out
    }

    fn error(&mut self, err: &ApiError) -> Vec<Sse> {
        let mut out = Vec::new();
        self.close(&mut out);
        let body = err.body();
        let error = json!({
            "code": body.error.code.clone().unwrap_or_else(|| "server_error".into()),
            "message": body.error.message,
        });
        let r = self.response("failed", None, Some(error));
        out.push(self.event("response.failed", json!({"response": r})));
        out
    }

    fn body(&mut self, out: Collected, end: &End) -> Value {
        let mut sink = Vec::new();
        if !out.reasoning.is_empty() {
            self.open(
                Open::Reasoning {
                    text: out.reasoning,
                },
                &mut sink,
            );
        }
        if !out.text.is_empty() {
            self.open(Open::Message { text: out.text }, &mut sink);
        }
        for call in out.tool_calls {
            self.open(
                Open::Call {
                    call_id: call.id,
                    name: call.name,
                    arguments: call.arguments,
                },
                &mut sink,
            );
        }
        self.close(&mut sink);
        self.remember();
        self.response(Self::status(end), Some(end), None)
    }
}

impl ResponsesRenderer {
    /// More text for the open reasoning (`reasoning`) or message item, opening one if the
    /// open item is of another kind, and its delta event.
    fn append(&mut self, reasoning: bool, more: &str, out: &mut Vec<Sse>) {
        let same = matches!(
            (&self.open, reasoning),
            (Some((_, Open::Reasoning { .. })), true) | (Some((_, Open::Message { .. })), false)
        );
        if !same {
            let text = String::new();
            let open = if reasoning {
                Open::Reasoning { text }
            } else {
                Open::Message { text }
            };
            self.open(open, out);
        }
        let index = self.items.len();
        let Some((id, Open::Reasoning { text } | Open::Message { text })) = &mut self.open else {
            return;
        };
        text.push_str(more);
        let mut payload =
            json!({"item_id": id, "output_index": index, "content_index": 0, "delta": more});
        let name = if reasoning {
            "response.reasoning_text.delta"
        } else {
            payload["logprobs"] = json!([]);
            "response.output_text.delta"
        };
        let e = self.event(name, payload);
        out.push(e);
    }

    /// More arguments for the open call: streamed for a function, gathered for a custom
    /// tool (whose `input` is the string inside them).
    fn call_arguments(&mut self, more: &str, out: &mut Vec<Sse>) {
        let index = self.items.len();
        let Some((
            id,
            Open::Call {
                name, arguments, ..
            },
        )) = &mut self.open
        else {
            return;
        };
        arguments.push_str(more);
        if more.is_empty() || self.custom_tools.iter().any(|t| t == name) {
            return;
        }
        let id = id.clone();
        let e = self.event(
            "response.function_call_arguments.delta",
            json!({"item_id": id,
            "output_index": index, "delta": more}),
        );
        out.push(e);
    }
}
