//! Request parsing and validation, and the response shapes, of the OpenAI APIs.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::chat::*;
use super::common::*;
use super::completion::*;
use super::error::parse_json;
use super::models::*;
use super::{ApiError, Generation};
use crate::config::SamplingDefaults;

fn chat(v: Value) -> Generation<ChatCompletionRequest> {
    Generation::parse(v.to_string().as_bytes()).unwrap()
}

fn base() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
}

fn with(field: &str, value: Value) -> Value {
    let mut v = base();
    v[field] = value;
    v
}

fn param_of(err: ApiError) -> String {
    err.param().unwrap_or("<none>").to_string()
}

#[test]
fn parses_typical_openai_sdk_request_ignoring_unknown_fields() {
    let req = chat(json!({
        "model": "qwen2.5-7b-instruct",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello", "name": "alice"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
        ],
        "temperature": 0.7, "top_p": 0.9, "max_tokens": 256, "stream": true,
        "stream_options": {"include_usage": true, "future_option": 1},
        "seed": 42, "presence_penalty": 0.5, "frequency_penalty": -0.5,
        "logit_bias": {"50256": -100}, "logprobs": true, "top_logprobs": 3, "n": 1,
        "response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {"name": "get_weather",
                   "description": "d", "parameters": {"type": "object"}}}],
        "tool_choice": "auto", "parallel_tool_calls": false, "user": "u1",
        "reasoning_effort": "low", "metadata": {"a": "b"}, "store": false,
        "extra_body_thing": [1, 2, 3]
    }));
    req.validate().unwrap();
    assert_eq!(req.shared.model.as_deref(), Some("qwen2.5-7b-instruct"));
    assert_eq!(req.messages.len(), 4);
    assert_eq!(req.messages[0].role, Role::System);
    assert_eq!(req.messages[1].name.as_deref(), Some("alice"));
    assert_eq!(req.messages[2].content, None);
    let call = &req.messages[2].tool_calls.as_ref().unwrap()[0];
    assert_eq!(call.function.name, "get_weather");
    assert_eq!(call.function.arguments, "{\"city\":\"Oslo\"}");
    assert_eq!(req.messages[3].tool_call_id.as_deref(), Some("call_1"));
    assert!(req.is_stream());
    assert!(req.include_usage());
    assert_eq!(req.max_new_tokens(), Some(256));
    assert_eq!(
        req.sampling
            .to_params(&SamplingDefaults::default())
            .logit_bias,
        vec![(50256, -100.0)]
    );
    assert_eq!(req.logprobs_top_n(), Some(3));
    assert_eq!(req.response_format, Some(ResponseFormat::JsonObject));
    assert_eq!(req.tool_choice, Some(ToolChoice::Auto));
}

#[test]
fn minimal_request_and_nulls_are_absent() {
    let req = chat(json!({"messages": [{"role": "user", "content": "x"}],
                          "temperature": null, "stop": null, "stream": null}));
    req.validate().unwrap();
    assert_eq!(req.shared.model, None);
    assert!(!req.is_stream());
    assert!(!req.include_usage());
    assert_eq!(req.max_new_tokens(), None);
    assert!(req.stop_sequences().is_empty());
    assert_eq!(req.logprobs_top_n(), None);
}

#[test]
fn content_parts_are_joined() {
    let req = chat(json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "first"},
        {"type": "text", "text": "second", "cache_control": {"type": "ephemeral"}}
    ]}]}));
    assert_eq!(req.messages[0].text(), "first\nsecond");
    let req = chat(json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "only"}]}]}));
    assert_eq!(req.messages[0].text(), "only");
    let req = chat(json!({"messages": [{"role": "user", "content": "plain"}]}));
    assert_eq!(req.messages[0].text(), "plain");
}

#[test]
fn non_text_content_part_is_refused_with_clear_message() {
    let body = json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:..."}}]}]});
    let err = parse_json::<ChatCompletionRequest>(body.to_string().as_bytes()).unwrap_err();
    assert_eq!(err.status().as_u16(), 400);
    assert_eq!(param_of(err.clone()), "messages[0].content[1]");
    assert!(
        err.to_string().contains("\"image_url\" is not supported"),
        "{err}"
    );
}

#[test]
fn stop_as_string_and_list() {
    assert_eq!(
        chat(with("stop", json!("\n\n"))).stop_sequences(),
        ["\n\n".to_string()]
    );
    assert_eq!(
        chat(with("stop", json!(["a", "", "b"]))).stop_sequences(),
        ["a".to_string(), "b".to_string()]
    );
    assert!(chat(with("stop", json!(""))).stop_sequences().is_empty());
    let err =
        Generation::<ChatCompletionRequest>::parse(with("stop", json!(3)).to_string().as_bytes())
            .unwrap_err();
    assert_eq!(param_of(err), "stop");
    // Counted as sent, as the document's maxItems counts them, empty ones included.
    let mut too_many: Vec<String> = (0..16).map(|i| format!("s{i}")).collect();
    too_many.push(String::new());
    let err = Generation::<ChatCompletionRequest>::parse(
        with("stop", json!(too_many)).to_string().as_bytes(),
    )
    .unwrap_err();
    assert_eq!(param_of(err), "stop");
}

#[test]
fn repetition_penalty_alias_and_max_tokens_rules() {
    let req = chat(with("repetition_penalty", json!(1.1)));
    assert_eq!(req.sampling.repeat_penalty(), Some(1.1));
    let req = chat(with("max_tokens", json!(-1)));
    req.validate().unwrap();
    assert_eq!(req.max_new_tokens(), None);
    let mut v = with("max_tokens", json!(10));
    v["max_completion_tokens"] = json!(20);
    assert_eq!(chat(v).max_new_tokens(), Some(20));
}

/// Both names are documented, so a body may carry both: `repeat_penalty` wins.
#[test]
fn repeat_penalty_wins_over_its_alias_when_both_are_sent() {
    let mut v = with("repeat_penalty", json!(1.3));
    v["repetition_penalty"] = json!(1.1);
    let req = chat(v);
    req.validate().unwrap();
    assert_eq!(req.sampling.repeat_penalty(), Some(1.3));
    let params = req.sampling.to_params(&SamplingDefaults::default());
    assert_eq!(params.repetition_penalty, 1.3);
    let mut v = with("repetition_penalty", json!(0));
    v["repeat_penalty"] = json!(1.1);
    assert_eq!(
        param_of(chat(v).validate().unwrap_err()),
        "repetition_penalty"
    );
}

#[test]
fn each_validation_failure_names_its_field() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("temperature", json!(2.5), "temperature"),
        ("temperature", json!(-0.1), "temperature"),
        ("top_p", json!(1.5), "top_p"),
        ("min_p", json!(-1), "min_p"),
        ("top_k", json!(-5), "top_k"),
        ("presence_penalty", json!(3), "presence_penalty"),
        ("frequency_penalty", json!(-2.5), "frequency_penalty"),
        ("repeat_penalty", json!(0), "repeat_penalty"),
        ("max_tokens", json!(0), "max_tokens"),
        ("max_tokens", json!(-7), "max_tokens"),
        ("max_completion_tokens", json!(0), "max_completion_tokens"),
        ("logit_bias", json!({"abc": 1}), "logit_bias"),
        ("logit_bias", json!({"12": 101}), "logit_bias"),
        ("top_logprobs", json!(21), "top_logprobs"),
        ("n", json!(2), "n"),
        ("n", json!(0), "n"),
        ("ttl", json!(0), "ttl"),
        ("messages", json!([]), "messages"),
        ("tool_choice", json!("required"), "tool_choice"),
        (
            "tool_choice",
            json!({"type": "function", "function": {"name": "nope"}}),
            "tool_choice",
        ),
        (
            "tools",
            json!([{"type": "retrieval", "function": {"name": "x"}}]),
            "tools[0].type",
        ),
        (
            "tools",
            json!([{"type": "function", "function": {"name": ""}}]),
            "tools[0].function.name",
        ),
    ];
    for (field, value, param) in cases {
        let req = chat(with(field, value.clone()));
        let err = req
            .validate()
            .expect_err(&format!("{field}={value} should fail"));
        assert_eq!(err.status().as_u16(), 400, "{field}={value}");
        assert_eq!(err.error_type(), "invalid_request_error");
        assert_eq!(param_of(err.clone()), param, "{field}={value}: {err}");
        assert!(err.to_string().contains(param), "{err}");
    }
}

#[test]
fn type_errors_name_their_field() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("temperature", json!("hot"), "temperature"),
        ("n", json!(-1), "n"),
        ("tool_choice", json!("sometimes"), "tool_choice"),
        (
            "response_format",
            json!({"type": "xml"}),
            "response_format.type",
        ),
        ("logprobs", json!(5), "logprobs"),
    ];
    for (field, value, param) in cases {
        let err =
            Generation::<ChatCompletionRequest>::parse(with(field, value).to_string().as_bytes())
                .unwrap_err();
        assert_eq!(param_of(err), param, "{field}");
    }
}

#[test]
fn tool_choice_and_response_format_round_trip() {
    let named = json!({"type": "function", "function": {"name": "f"}});
    let tc: ToolChoice = serde_json::from_value(named.clone()).unwrap();
    assert_eq!(tc, ToolChoice::Function { name: "f".into() });
    assert_eq!(serde_json::to_value(&tc).unwrap(), named);
    assert_eq!(
        serde_json::to_value(ToolChoice::Required).unwrap(),
        json!("required")
    );
    let rf: ResponseFormat = serde_json::from_value(json!({"type": "json_schema",
        "json_schema": {"name": "r", "schema": {"type": "object"}, "strict": true}}))
    .unwrap();
    match rf {
        ResponseFormat::JsonSchema { json_schema } => {
            assert_eq!(json_schema.schema, Some(json!({"type": "object"})));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn tool_call_arguments_object_is_reencoded() {
    let call: ToolCall = serde_json::from_value(json!(
        {"function": {"name": "f", "arguments": {"a": 1}}}))
    .unwrap();
    assert_eq!(call.function.arguments, "{\"a\":1}");
    assert_eq!(call.kind, "function");
}

fn completion(v: Value) -> Generation<CompletionRequest> {
    Generation::parse(v.to_string().as_bytes()).unwrap()
}

#[test]
fn completion_prompt_shapes() {
    let req = completion(json!({"model": "m", "prompt": "Once", "logprobs": 2, "echo": true}));
    req.validate().unwrap();
    assert_eq!(req.prompt.single(), Some(PromptInput::Text("Once")));
    let req = completion(json!({"prompt": ["Once"]}));
    req.validate().unwrap();
    assert_eq!(req.prompt.single(), Some(PromptInput::Text("Once")));
    let req = completion(json!({"prompt": [1, 2, 3]}));
    assert_eq!(req.prompt.single(), Some(PromptInput::Tokens(&[1, 2, 3])));
    let req = completion(json!({"prompt": [[4, 5]]}));
    assert_eq!(req.prompt.single(), Some(PromptInput::Tokens(&[4, 5])));
    let req = completion(json!({"prompt": ["a", "b"]}));
    assert_eq!(param_of(req.validate().unwrap_err()), "prompt");
    let req = completion(json!({"prompt": []}));
    assert_eq!(param_of(req.validate().unwrap_err()), "prompt");
    let err = parse_json::<CompletionRequest>(br#"{"prompt": [1, "a"]}"#).unwrap_err();
    assert_eq!(param_of(err), "prompt");
    let err = parse_json::<CompletionRequest>(br#"{"model": "m"}"#).unwrap_err();
    assert_eq!(param_of(err), "prompt");
}

#[test]
fn completion_validation_names_fields() {
    let cases: Vec<(&str, Value)> = vec![
        ("logprobs", json!(6)),
        ("best_of", json!(3)),
        ("n", json!(4)),
        ("temperature", json!(9)),
        ("max_tokens", json!(0)),
    ];
    for (field, value) in cases {
        let mut v = json!({"prompt": "p"});
        v[field] = value;
        let err = completion(v).validate().unwrap_err();
        assert_eq!(param_of(err), field);
    }
    let req = completion(json!({"prompt": "p", "max_tokens": 5, "stop": "x",
                                "repetition_penalty": 1.2, "stream": true,
                                "stream_options": {"include_usage": true}}));
    req.validate().unwrap();
    assert_eq!(req.max_new_tokens(), Some(5));
    assert_eq!(req.stop_sequences(), ["x".to_string()]);
    assert!(req.is_stream() && req.include_usage());
}

#[test]
fn chat_completion_serializes_openai_shape() {
    let resp = ChatCompletion::new(
        "m",
        AssistantMessage::text("Hello!"),
        FinishReason::Stop,
        None,
        Usage::new(5, 2),
    );
    let v = serde_json::to_value(&resp).unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
                "finish_reason": "stop", "logprobs": null}])
    );
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
               "prompt_tokens_details": {"cached_tokens": 0},
               "completion_tokens_details": {"reasoning_tokens": 0}})
    );
    assert!(v.get("system_fingerprint").is_none());

    let calls = vec![ToolCall {
        id: "call_1".into(),
        kind: "function".into(),
        function: FunctionCall {
            name: "f".into(),
            arguments: "{}".into(),
        },
    }];
    let resp = ChatCompletion::new(
        "m",
        AssistantMessage::tool_calls(None, calls),
        FinishReason::ToolCalls,
        None,
        Usage::new(1, 1),
    );
    let v = serde_json::to_value(&resp).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0],
        json!({"id": "call_1", "type": "function",
               "function": {"name": "f", "arguments": "{}"}})
    );
}

#[test]
fn chunks_keep_null_finish_reason_and_omit_usage() {
    let meta = StreamMeta::chat("m");
    let v = serde_json::to_value(meta.role_chunk()).unwrap();
    assert_eq!(v["object"], "chat.completion.chunk");
    let choice = v["choices"][0].as_object().unwrap();
    assert_eq!(choice["finish_reason"], Value::Null);
    assert!(choice.contains_key("finish_reason"));
    assert!(choice.contains_key("logprobs"));
    assert_eq!(choice["delta"]["role"], "assistant");
    assert!(v.get("usage").is_none());

    let v = serde_json::to_value(meta.content_chunk("Hi", None)).unwrap();
    assert_eq!(v["choices"][0]["delta"], json!({"content": "Hi"}));
    assert!(v["choices"][0]
        .as_object()
        .unwrap()
        .contains_key("finish_reason"));

    let v = serde_json::to_value(meta.finish_chunk(FinishReason::Length)).unwrap();
    assert_eq!(v["choices"][0]["delta"], json!({}));
    assert_eq!(v["choices"][0]["finish_reason"], "length");

    let v = serde_json::to_value(meta.usage_chunk(Usage::new(3, 4))).unwrap();
    assert_eq!(v["choices"], json!([]));
    assert_eq!(v["usage"]["total_tokens"], 7);
    assert_eq!(v["id"], meta.id.as_str());
}

#[test]
fn tool_call_deltas_follow_openai_stream_shape() {
    let meta = StreamMeta::chat("m");
    let v =
        serde_json::to_value(meta.tool_call_chunk(vec![ToolCallDelta::start(0, "call_9", "get")]))
            .unwrap();
    assert_eq!(
        v["choices"][0]["delta"],
        json!({"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                               "function": {"name": "get", "arguments": ""}}]})
    );
    let v = serde_json::to_value(meta.tool_call_chunk(vec![ToolCallDelta::arguments(0, "{\"a\"")]))
        .unwrap();
    assert_eq!(
        v["choices"][0]["delta"],
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\""}}]})
    );
}

#[test]
fn completion_response_and_chunk_shapes() {
    let mut top = BTreeMap::new();
    top.insert(" world".to_string(), -0.5);
    let lp = CompletionLogprobs {
        tokens: vec![" world".into()],
        token_logprobs: vec![Some(-0.5)],
        top_logprobs: vec![Some(top)],
        text_offset: vec![5],
    };
    let resp = Completion::new(
        "m",
        " world",
        FinishReason::Stop,
        Some(lp),
        Usage::new(1, 1),
    );
    let v = serde_json::to_value(&resp).unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["object"], "text_completion");
    assert_eq!(
        v["choices"][0],
        json!({"text": " world", "index": 0, "finish_reason": "stop",
               "logprobs": {"tokens": [" world"], "token_logprobs": [-0.5],
                            "top_logprobs": [{" world": -0.5}], "text_offset": [5]}})
    );
    assert_eq!(v["usage"]["total_tokens"], 2);

    let meta = StreamMeta::completion("m");
    let v = serde_json::to_value(meta.text_chunk("x", None, None)).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], Value::Null);
    assert_eq!(v["choices"][0]["logprobs"], Value::Null);
    assert!(v.get("usage").is_none());
}

#[test]
fn chat_logprobs_shape_and_infinite_logprob() {
    let lp = ChatLogprobs {
        content: vec![TokenLogprob::new(
            "Hi",
            b"Hi".to_vec(),
            f32::NEG_INFINITY,
            vec![TopLogprob::new("Hi", b"Hi".to_vec(), -0.25)],
        )],
    };
    let v = serde_json::to_value(&lp).unwrap();
    assert_eq!(
        v,
        json!({"content": [{"token": "Hi", "logprob": -9999.0, "bytes": [72, 105],
               "top_logprobs": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105]}]}]})
    );
}

#[test]
fn model_list_shape() {
    let list = ModelList::new(vec![ModelObject::new("qwen", 1_700_000_000, "opta-lmx")]);
    assert_eq!(
        serde_json::to_value(&list).unwrap(),
        json!({"object": "list", "data": [{"id": "qwen", "object": "model",
               "created": 1_700_000_000u64, "owned_by": "opta-lmx"}]})
    );
}
