//! OpenAI's chat and text completion responses, streamed (chunks, then `[DONE]`) or whole.

use opta_lmx_shared::protocol::{self as proto, answer_text, Delta, FinishReason as WireFinish};
use serde_json::Value;

use super::{Collected, End, Renderer, Sse};
use crate::api::chat::{
    AssistantMessage, ChatCompletion, ChatLogprobs, FunctionCall, FunctionCallDelta, TokenLogprob,
    ToolCall, ToolCallDelta, TopLogprob,
};
use crate::api::common::{finite_logprob, FinishReason, StreamMeta, Usage};
use crate::api::completion::{Completion, CompletionLogprobs};

fn finish_reason(end: &End) -> FinishReason {
    match end.finish {
        WireFinish::Length => FinishReason::Length,
        WireFinish::Stop if end.called_tools => FinishReason::ToolCalls,
        // A cancelled request has no client left to read this.
        WireFinish::Stop | WireFinish::Cancelled => FinishReason::Stop,
    }
}

fn usage(end: &End) -> Usage {
    Usage::with_cached(
        end.usage.prompt_tokens,
        end.usage.completion_tokens,
        end.usage.cached_prompt_tokens,
    )
    .with_reasoning(end.usage.reasoning_tokens)
}

fn chat_logprobs(lps: &[proto::TokenLogprob]) -> ChatLogprobs {
    ChatLogprobs {
        content: lps
            .iter()
            .map(|lp| {
                TokenLogprob::new(
                    lp.token.clone(),
                    lp.bytes.clone(),
                    lp.logprob,
                    lp.top
                        .iter()
                        .map(|t| TopLogprob::new(t.token.clone(), t.bytes.clone(), t.logprob))
                        .collect(),
                )
            })
            .collect(),
    }
}

/// `/v1/chat/completions`.
pub struct ChatRenderer {
    meta: StreamMeta,
    include_usage: bool,
    logprobs: bool,
}

impl ChatRenderer {
    pub fn new(model: &str, include_usage: bool, logprobs: bool) -> Self {
        ChatRenderer {
            meta: StreamMeta::chat(model),
            include_usage,
            logprobs,
        }
    }
}

impl Renderer for ChatRenderer {
    fn start(&mut self) -> Vec<Sse> {
        vec![Sse::data(&self.meta.role_chunk())]
    }

    fn chunk(&mut self, deltas: &[Delta], logprobs: &[proto::TokenLogprob]) -> Vec<Sse> {
        // The chunk's logprobs ride on its first text delta, as OpenAI sends them.
        let mut logprobs = self.logprobs.then(|| chat_logprobs(logprobs));
        let mut out = deltas
            .iter()
            .map(|d| match d {
                Delta::Text { text, .. } => {
                    Sse::data(&self.meta.content_chunk(text.clone(), logprobs.take()))
                }
                Delta::Reasoning { text, .. } => {
                    Sse::data(&self.meta.reasoning_chunk(text.clone()))
                }
                Delta::ToolCall {
                    index,
                    id,
                    name,
                    arguments,
                    ..
                } => Sse::data(&self.meta.tool_call_chunk(vec![ToolCallDelta {
                    index: *index,
                    id: id.clone(),
                    kind: id.as_ref().map(|_| "function".to_string()),
                    function: Some(FunctionCallDelta {
                        name: name.clone(),
                        arguments: Some(arguments.clone()),
                    }),
                }])),
            })
            .collect::<Vec<_>>();
        // Tokens whose text is still held back (half a character, a possible marker) keep
        // their logprobs in an empty content chunk, so none goes missing.
        if let Some(lp) = logprobs.filter(|lp| !lp.content.is_empty()) {
            out.push(Sse::data(&self.meta.content_chunk(String::new(), Some(lp))));
        }
        out
    }

    fn done(&mut self, end: &End) -> Vec<Sse> {
        let mut out = vec![Sse::data(&self.meta.finish_chunk(finish_reason(end)))];
        if self.include_usage {
            out.push(Sse::data(&self.meta.usage_chunk(usage(end))));
        }
        out.push(Sse::Done);
        out
    }

    fn body(&mut self, out: Collected, end: &End) -> Value {
        let calls: Vec<ToolCall> = out
            .tool_calls
            .into_iter()
            .map(|c| ToolCall {
                id: c.id,
                kind: "function".to_string(),
                function: FunctionCall {
                    name: c.name,
                    arguments: c.arguments,
                },
            })
            .collect();
        let mut message = if calls.is_empty() {
            AssistantMessage::text(out.text)
        } else {
            // OpenAI sends `content: null` when the model only called tools.
            AssistantMessage::tool_calls((!out.text.is_empty()).then_some(out.text), calls)
        };
        let reasoning = (!out.reasoning.is_empty()).then_some(out.reasoning);
        message.reasoning_content.clone_from(&reasoning);
        message.reasoning = reasoning;
        let body = ChatCompletion::new(
            self.meta.model.clone(),
            message,
            finish_reason(end),
            self.logprobs.then(|| chat_logprobs(&out.logprobs)),
            usage(end),
        );
        serde_json::to_value(body).unwrap_or(Value::Null)
    }
}

/// `/v1/completions`. Only text deltas mean anything to a raw completion.
pub struct CompletionRenderer {
    meta: StreamMeta,
    include_usage: bool,
    logprobs: bool,
    /// `echo`: the prompt, sent before the completion.
    echo: Option<String>,
    /// Bytes of text sent so far (the logprobs' `text_offset`).
    offset: usize,
}

impl CompletionRenderer {
    pub fn new(model: &str, include_usage: bool, logprobs: bool, echo: Option<String>) -> Self {
        CompletionRenderer {
            meta: StreamMeta::completion(model),
            include_usage,
            logprobs,
            echo,
            offset: 0,
        }
    }

    fn logprobs(&self, lps: &[proto::TokenLogprob], start_offset: usize) -> CompletionLogprobs {
        let mut out = CompletionLogprobs::default();
        let mut offset = start_offset as u32;
        for lp in lps {
            out.tokens.push(lp.token.clone());
            out.token_logprobs.push(Some(finite_logprob(lp.logprob)));
            out.top_logprobs.push(Some(
                lp.top
                    .iter()
                    .map(|t| (t.token.clone(), finite_logprob(t.logprob)))
                    .collect(),
            ));
            out.text_offset.push(offset);
            offset += lp.token.len() as u32;
        }
        out
    }
}

impl Renderer for CompletionRenderer {
    fn start(&mut self) -> Vec<Sse> {
        match &self.echo {
            Some(prompt) => {
                self.offset = prompt.len();
                vec![Sse::data(&self.meta.text_chunk(prompt.clone(), None, None))]
            }
            None => Vec::new(),
        }
    }

    fn chunk(&mut self, deltas: &[Delta], logprobs: &[proto::TokenLogprob]) -> Vec<Sse> {
        let text = answer_text(deltas);
        let lp = self.logprobs.then(|| self.logprobs(logprobs, self.offset));
        self.offset += text.len();
        vec![Sse::data(&self.meta.text_chunk(text, lp, None))]
    }

    fn done(&mut self, end: &End) -> Vec<Sse> {
        let reason = finish_reason(end);
        let mut out = vec![Sse::data(&self.meta.text_chunk(
            String::new(),
            None,
            Some(reason),
        ))];
        if self.include_usage {
            out.push(Sse::data(&self.meta.completion_usage_chunk(usage(end))));
        }
        out.push(Sse::Done);
        out
    }

    fn body(&mut self, out: Collected, end: &End) -> Value {
        let prefix = self.echo.take().unwrap_or_default();
        let logprobs = self
            .logprobs
            .then(|| self.logprobs(&out.logprobs, prefix.len()));
        let body = Completion::new(
            self.meta.model.clone(),
            format!("{prefix}{}", out.text),
            finish_reason(end),
            logprobs,
            usage(end),
        );
        serde_json::to_value(body).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opta_lmx_shared::protocol::{Timings, Usage as WireUsage};
    use serde_json::json;

    fn end(finish: WireFinish, called_tools: bool) -> End {
        End {
            finish,
            usage: WireUsage {
                prompt_tokens: 5,
                completion_tokens: 3,
                ..WireUsage::default()
            },
            timings: Timings::default(),
            called_tools,
        }
    }

    fn json_of(events: &[Sse]) -> Vec<Value> {
        events
            .iter()
            .filter_map(|e| match e {
                Sse::Data(v) => Some(v.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn chat_streams_text_reasoning_and_tool_call_deltas_in_openai_shapes() {
        let mut r = ChatRenderer::new("m", true, false);
        let start = json_of(&r.start());
        assert_eq!(start[0]["choices"][0]["delta"]["role"], "assistant");
        let deltas = [
            Delta::Reasoning {
                text: "hmm".into(),
                tokens: 1,
            },
            Delta::Text {
                text: "Hi".into(),
                tokens: 1,
            },
            Delta::ToolCall {
                index: 0,
                id: Some("call_1".into()),
                name: Some("f".into()),
                arguments: "{\"a\"".into(),
                tokens: 2,
            },
            Delta::ToolCall {
                index: 0,
                id: None,
                name: None,
                arguments: ":1}".into(),
                tokens: 1,
            },
        ];
        let chunks = json_of(&r.chunk(&deltas, &[]));
        assert_eq!(chunks[0]["choices"][0]["delta"]["reasoning_content"], "hmm");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hi");
        let first = &chunks[2]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(
            (&first["id"], &first["type"], &first["function"]["name"]),
            (&json!("call_1"), &json!("function"), &json!("f"))
        );
        let second = &chunks[3]["choices"][0]["delta"]["tool_calls"][0];
        assert!(second.get("id").is_none() && second.get("type").is_none());
        assert_eq!(second["function"]["arguments"], ":1}");

        let done = r.done(&end(WireFinish::Stop, true));
        assert_eq!(done.last(), Some(&Sse::Done));
        let done = json_of(&done);
        assert_eq!(done[0]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(done[1]["usage"]["total_tokens"], 8);
    }

    #[test]
    fn chat_body_carries_tool_calls_with_null_content_and_reasoning() {
        let mut r = ChatRenderer::new("m", false, false);
        let mut out = Collected::default();
        out.add(
            vec![
                Delta::Reasoning {
                    text: "think".into(),
                    tokens: 1,
                },
                Delta::ToolCall {
                    index: 0,
                    id: Some("c".into()),
                    name: Some("f".into()),
                    arguments: "{}".into(),
                    tokens: 1,
                },
            ],
            Vec::new(),
        );
        let body = r.body(out, &end(WireFinish::Stop, true));
        let msg = &body["choices"][0]["message"];
        assert!(msg["content"].is_null());
        assert_eq!(msg["reasoning_content"], "think");
        assert_eq!(msg["tool_calls"][0]["function"]["name"], "f");
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn completion_echo_and_finish() {
        let mut r = CompletionRenderer::new("m", false, false, Some("Once".into()));
        let start = json_of(&r.start());
        assert_eq!(start[0]["choices"][0]["text"], "Once");
        let text = Delta::Text {
            text: " upon".into(),
            tokens: 1,
        };
        let chunk = json_of(&r.chunk(&[text], &[]));
        assert_eq!(chunk[0]["choices"][0]["text"], " upon");
        let done = json_of(&r.done(&end(WireFinish::Length, false)));
        assert_eq!(done[0]["choices"][0]["finish_reason"], "length");
    }
}
