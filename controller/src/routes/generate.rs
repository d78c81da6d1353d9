//! The generation routes: each API's request adapter turns its body into a dispatch
//! [`Job`], and its renderer answers. OpenAI's chat and text completions, and LM Studio's
//! `/api/v0` twins (the same with `stats`, `model_info` and `runtime`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use opta_lmx_shared::protocol::{OutputSpec, Prompt};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::admission;
use crate::api::chat::ChatCompletionRequest;
use crate::api::completion::{CompletionRequest, PromptInput};
use crate::api::messages::{CountTokensRequest, MessagesRequest};
use crate::api::responses::{self, ResponsesRequest};
use crate::api::sampling::token_limit;
use crate::api::{ApiError, Generation, Validate};
use crate::dispatch::{self, Job};
use crate::render::{
    self, ChatRenderer, CompletionRenderer, MessagesRenderer, Renderer, ResponsesRenderer,
};
use crate::state::AppState;

/// One generation API: its body, its request adapter and its renderer. A route is
/// [`handle`] with an API and a [`Flavour`].
pub trait GenerationApi: Send + 'static {
    type Body: DeserializeOwned + Validate + Send + Sync + 'static;
    type Renderer: Renderer;
    /// The request field a prompt too long for the context is reported against.
    const PROMPT_FIELD: &'static str;
    /// The request adapter.
    fn job(req: &Generation<Self::Body>, headers: &HeaderMap) -> Job;
    /// The adapter where the request needs the server's state (a stored conversation).
    fn job_with(
        req: &Generation<Self::Body>,
        headers: &HeaderMap,
        _state: &AppState,
    ) -> Result<Job, ApiError> {
        Ok(Self::job(req, headers))
    }
    /// The renderer for a generation of `model` from a prompt of `prompt_tokens`.
    fn renderer(
        req: &Generation<Self::Body>,
        model: &str,
        prompt_tokens: u32,
        state: &Arc<AppState>,
    ) -> Self::Renderer;
}

/// Which response dialect to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// The API's own shapes (OpenAI's on `/v1`, Anthropic's on `/v1/messages`).
    Native,
    /// LM Studio's `/api/v0`: OpenAI's plus `stats`, `model_info` and `runtime`.
    LmStudio,
}

/// A route's dialect, as a type so that [`handle`] can be named per route.
pub trait Flavour: Send + 'static {
    const DIALECT: Dialect;
}

/// The API's own shapes.
pub struct Native;
/// LM Studio's `/api/v0` shapes.
pub struct LmStudio;

impl Flavour for Native {
    const DIALECT: Dialect = Dialect::Native;
}
impl Flavour for LmStudio {
    const DIALECT: Dialect = Dialect::LmStudio;
}

/// Every generation route: adapt the body, dispatch, render in the route's dialect.
pub async fn handle<A: GenerationApi, F: Flavour>(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    req: Generation<A::Body>,
) -> Result<Response, ApiError> {
    let started = dispatch::start(&state, A::job_with(&req, &headers, &state)?)
        .await
        .map_err(|e| ApiError::from(e).for_prompt_field(A::PROMPT_FIELD))?;
    let renderer = A::renderer(&req, &started.entry.id, started.prompt_tokens, &state);
    let stream = req.is_stream();
    match F::DIALECT {
        Dialect::Native => render::respond(started, renderer, stream).await,
        Dialect::LmStudio => {
            let context = state.manager.context_length(&started.entry.id);
            let renderer = render::LmStudio::new(renderer, started.entry.clone(), context);
            render::respond(started, renderer, stream).await
        }
    }
}

/// The `messages` array as chat templates take it: `name`, `tool_call_id` and `tool_calls`
/// only when set, since templates test for their presence; content parts joined to text.
fn template_messages(req: &ChatCompletionRequest) -> Value {
    Value::Array(
        req.messages
            .iter()
            .map(|m| {
                let mut obj = serde_json::Map::new();
                obj.insert("role".into(), json!(m.role));
                obj.insert("content".into(), json!(m.text()));
                if let Some(name) = &m.name {
                    obj.insert("name".into(), json!(name));
                }
                if let Some(id) = &m.tool_call_id {
                    obj.insert("tool_call_id".into(), json!(id));
                }
                // Qwen3's templates read `reasoning_content`, gpt-oss's `thinking`.
                if let Some(r) = m.reasoning_content.as_ref().or(m.reasoning.as_ref()) {
                    obj.insert("reasoning_content".into(), json!(r));
                    obj.insert("thinking".into(), json!(r));
                }
                if let Some(calls) = &m.tool_calls {
                    // Templates index the arguments as a mapping (`arguments | tojson`, or
                    // `arguments.items()`), as transformers passes them.
                    let calls: Vec<Value> = calls
                        .iter()
                        .map(|c| {
                            let mut v = json!(c);
                            if let Ok(args) = serde_json::from_str::<Value>(&c.function.arguments) {
                                v["function"]["arguments"] = args;
                            }
                            v
                        })
                        .collect();
                    obj.insert("tool_calls".into(), Value::Array(calls));
                }
                Value::Object(obj)
            })
            .collect(),
    )
}

/// A chat prompt for the worker's template: the messages, the tools (none: no `tools`
/// variable at all, as templates test for it), extra template variables.
fn chat_prompt(messages: Value, tools: Vec<Value>, kwargs: Option<String>) -> Prompt {
    Prompt::Chat {
        messages_json: messages.to_string(),
        tools_json: (!tools.is_empty()).then(|| Value::Array(tools).to_string()),
        add_generation_prompt: true,
        template_kwargs_json: kwargs,
    }
}

/// A job from what every API shares; the adapter gives the prompt, the cap and logprobs.
fn job<T>(
    req: &Generation<T>,
    headers: &HeaderMap,
    prompt: Prompt,
    max_tokens: Option<u32>,
    logprobs: Option<u32>,
) -> Job {
    Job {
        model: req.shared.model.clone(),
        ttl: req.shared.ttl,
        prompt,
        sampling: req.sampling.clone(),
        max_tokens,
        stop: req.stop_sequences().to_vec(),
        logprobs,
        output: OutputSpec::default(),
        wait: admission::prefer_wait(headers),
    }
}

/// OpenAI's chat completions.
pub struct Chat;

impl GenerationApi for Chat {
    type Body = ChatCompletionRequest;
    type Renderer = ChatRenderer;
    const PROMPT_FIELD: &'static str = "messages";

    fn job(req: &Generation<ChatCompletionRequest>, headers: &HeaderMap) -> Job {
        let tools = req.tools.iter().flatten().map(|t| json!(t)).collect();
        let prompt = chat_prompt(template_messages(req), tools, req.template_kwargs());
        let mut job = job(
            req,
            headers,
            prompt,
            req.max_new_tokens(),
            req.logprobs_top_n(),
        );
        job.output = req.output_spec();
        job
    }

    fn renderer(
        req: &Generation<ChatCompletionRequest>,
        model: &str,
        _: u32,
        _: &Arc<AppState>,
    ) -> ChatRenderer {
        ChatRenderer::new(model, req.include_usage(), req.logprobs_top_n().is_some())
    }
}

/// Anthropic's Messages API.
pub struct Messages;

impl GenerationApi for Messages {
    type Body = MessagesRequest;
    type Renderer = MessagesRenderer;
    const PROMPT_FIELD: &'static str = "messages";

    fn job(req: &Generation<MessagesRequest>, headers: &HeaderMap) -> Job {
        messages_job(req, &req.body, headers)
    }

    fn renderer(
        _: &Generation<MessagesRequest>,
        model: &str,
        prompt_tokens: u32,
        _: &Arc<AppState>,
    ) -> MessagesRenderer {
        MessagesRenderer::new(model, prompt_tokens)
    }
}

/// A Messages request's job; `body` is `req`'s Messages fields.
fn messages_job<T>(req: &Generation<T>, body: &MessagesRequest, headers: &HeaderMap) -> Job {
    let prompt = chat_prompt(
        body.template_messages(),
        body.function_tools(),
        body.template_kwargs(),
    );
    let mut job = job(
        req,
        headers,
        prompt,
        token_limit(req.shared.max_tokens),
        None,
    );
    job.stop = body.stop_sequences.clone().unwrap_or_default();
    job.output = body.output_spec();
    job
}

/// `POST /v1/messages/count_tokens`: the prompt's length as the model's template and
/// tokenizer make it, from a generation of no tokens (so the worker templates and counts it).
pub async fn count_tokens(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    req: Generation<CountTokensRequest>,
) -> Result<Response, ApiError> {
    let mut job = messages_job(&req, &req.body.0, &headers);
    job.max_tokens = Some(0);
    let started = dispatch::start(&state, job)
        .await
        .map_err(|e| ApiError::from(e).for_prompt_field("messages"))?;
    Ok(axum::Json(json!({"input_tokens": started.prompt_tokens})).into_response())
}

/// OpenAI's Responses API.
pub struct Responses;

impl Responses {
    fn job_from(req: &Generation<ResponsesRequest>, headers: &HeaderMap, history: &[Value]) -> Job {
        let prompt = chat_prompt(
            Value::Array(req.template_messages(history)),
            req.function_tools(),
            req.template_kwargs(),
        );
        let mut job = job(
            req,
            headers,
            prompt,
            token_limit(req.max_output_tokens),
            None,
        );
        job.output = req.output_spec();
        job
    }
}

impl GenerationApi for Responses {
    type Body = ResponsesRequest;
    type Renderer = ResponsesRenderer;
    const PROMPT_FIELD: &'static str = "input";

    fn job(req: &Generation<ResponsesRequest>, headers: &HeaderMap) -> Job {
        Self::job_from(req, headers, &[])
    }

    fn job_with(
        req: &Generation<ResponsesRequest>,
        headers: &HeaderMap,
        state: &AppState,
    ) -> Result<Job, ApiError> {
        let history = responses::history(&state.responses, req)?;
        Ok(Self::job_from(req, headers, &history))
    }

    fn renderer(
        req: &Generation<ResponsesRequest>,
        model: &str,
        prompt_tokens: u32,
        state: &Arc<AppState>,
    ) -> ResponsesRenderer {
        // Known to exist: the job was built from it a moment ago (or it has just been
        // dropped from the store, and the answer is simply not continued from).
        let history = responses::history(&state.responses, req).unwrap_or_default();
        ResponsesRenderer::new(
            req,
            req.conversation(&history),
            model,
            prompt_tokens,
            state.clone(),
            (req.sampling.temperature, req.sampling.top_p),
        )
    }
}

/// OpenAI's (legacy) text completions.
pub struct Completions;

impl GenerationApi for Completions {
    type Body = CompletionRequest;
    type Renderer = CompletionRenderer;
    const PROMPT_FIELD: &'static str = "prompt";

    fn job(req: &Generation<CompletionRequest>, headers: &HeaderMap) -> Job {
        let prompt = match req.prompt.single() {
            Some(PromptInput::Tokens(t)) => Prompt::Tokens(t.to_vec()),
            Some(PromptInput::Text(t)) => Prompt::Text(t.to_string()),
            // `validate` refused batches before this.
            None => Prompt::Text(String::new()),
        };
        job(req, headers, prompt, req.max_new_tokens(), req.logprobs)
    }

    fn renderer(
        req: &Generation<CompletionRequest>,
        model: &str,
        _: u32,
        _: &Arc<AppState>,
    ) -> CompletionRenderer {
        let echo = match (req.echo, req.prompt.single()) {
            (Some(true), Some(PromptInput::Text(t))) => Some(t.to_string()),
            _ => None,
        };
        CompletionRenderer::new(model, req.include_usage(), req.logprobs.is_some(), echo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::completion::COMPLETIONS_DEFAULT_MAX_TOKENS;
    use opta_lmx_shared::protocol::{AnswerFormat, ToolChoice as WireToolChoice};

    fn chat(body: Value) -> Generation<ChatCompletionRequest> {
        Generation::parse(body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn template_messages_carry_only_the_fields_that_are_set() {
        let req = chat(json!({"messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "content": "42", "name": "f", "tool_call_id": "c1"},
        ]}));
        let v = template_messages(&req);
        assert_eq!(v[0], json!({"role": "user", "content": "hi"}));
        assert_eq!(v[1]["content"], "");
        assert_eq!(v[1]["tool_calls"][0]["function"]["name"], "f");
        assert_eq!(
            v[1]["tool_calls"][0]["function"]["arguments"],
            json!({}),
            "arguments reach the template as a mapping"
        );
        assert_eq!(
            v[2],
            json!({"role": "tool", "content": "42", "name": "f", "tool_call_id": "c1"})
        );
        // Reasoning sent back reaches the template under both names templates use.
        let req = chat(json!({"messages": [
            {"role": "assistant", "content": "a", "reasoning": "r"}]}));
        let v = template_messages(&req);
        assert_eq!(
            (&v[0]["reasoning_content"], &v[0]["thinking"]),
            (&json!("r"), &json!("r"))
        );
    }

    #[test]
    fn chat_requests_carry_their_answer_shape_and_template_variables() {
        let headers = HeaderMap::new();
        let req = chat(json!({"messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "parallel_tool_calls": false,
            "response_format": {"type": "json_schema",
                "json_schema": {"name": "s", "schema": {"type": "object"}, "strict": true}},
            "chat_template_kwargs": {"enable_thinking": false}, "reasoning_effort": "low"}));
        let job = Chat::job(&req, &headers);
        assert_eq!(job.output.tool_choice, WireToolChoice::Function("f".into()));
        assert!(!job.output.parallel_tool_calls);
        assert_eq!(
            job.output.format,
            AnswerFormat::JsonSchema {
                schema_json: r#"{"type":"object"}"#.into(),
                strict: true
            }
        );
        let Prompt::Chat {
            template_kwargs_json,
            ..
        } = job.prompt
        else {
            panic!("a chat prompt");
        };
        let kwargs: Value = serde_json::from_str(&template_kwargs_json.unwrap()).unwrap();
        assert_eq!(
            kwargs,
            json!({"enable_thinking": false, "reasoning_effort": "low"})
        );
        let none = chat(json!({"messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"}));
        assert_eq!(
            Chat::job(&none, &headers).output.tool_choice,
            WireToolChoice::None
        );
    }

    #[test]
    fn adapters_carry_limits_stops_logprobs_and_the_default_completion_length() {
        let headers = HeaderMap::new();
        let req = chat(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "max_completion_tokens": 9, "stop": "END", "logprobs": true, "top_logprobs": 2,
            "tools": [], "temperature": 0.5, "ttl": 60}),
        );
        let job = Chat::job(&req, &headers);
        assert_eq!(job.model.as_deref(), Some("m"));
        assert_eq!(
            (job.max_tokens, job.logprobs, job.ttl),
            (Some(9), Some(2), Some(60))
        );
        assert_eq!(job.stop, ["END"]);
        assert_eq!(job.sampling.temperature, Some(0.5));
        assert_eq!(
            job.output.tool_choice,
            WireToolChoice::None,
            "no tools, no calls"
        );
        match job.prompt {
            Prompt::Chat { tools_json, .. } => assert_eq!(tools_json, None, "empty tools"),
            other => panic!("{other:?}"),
        }

        let req: Generation<CompletionRequest> =
            Generation::parse(br#"{"prompt": [1, 2, 3]}"#).unwrap();
        let job = Completions::job(&req, &headers);
        assert_eq!(job.max_tokens, Some(COMPLETIONS_DEFAULT_MAX_TOKENS));
        assert_eq!(job.prompt, Prompt::Tokens(vec![1, 2, 3]));
        assert_eq!(job.logprobs, None);
    }
}
