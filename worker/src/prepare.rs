//! Turning one request into what the scheduler runs: the prompt's token ids (chat through
//! the model's template, with its tools and template variables), the grammar that
//! constrains the answer, and the parser that reads reasoning and tool calls out of it.

use llguidance::api::TopLevelGrammar;
use opta_lmx_shared::protocol::{AnswerFormat, OutputSpec, Prompt, ToolChoice};
use serde_json::{json, Value};

use crate::engine::Engine;
use crate::grammar::{self, Constraint};
use crate::harmony::{self, HarmonyParser};
use crate::output::{self, OutputParser};
use crate::request::GenerateError;
use crate::tool_syntax::{self, CallParser, ParamTypes, ToolSyntax};

/// How one sequence's output is constrained and read.
pub struct Output {
    pub constraint: Option<Constraint>,
    pub parser: OutputParser,
}

impl Output {
    /// Unconstrained plain text.
    pub fn plain() -> Self {
        Output {
            constraint: None,
            parser: OutputParser::plain(),
        }
    }
}

/// A request ready to run.
pub struct Prepared {
    pub ids: Vec<u32>,
    pub output: Output,
}

/// Prepares a request: prompt ids checked to fit the model, and its output handling. Every
/// problem the request itself causes is an `InvalidRequest` naming the field.
pub fn prepare(
    engine: &Engine,
    prompt: Prompt,
    spec: &OutputSpec,
    request_id: u64,
) -> Result<Prepared, GenerateError> {
    let (ids, chat) = match prompt {
        Prompt::Chat {
            messages_json,
            tools_json,
            add_generation_prompt,
            template_kwargs_json,
        } => {
            let messages = parse_json("messages_json", &messages_json)?;
            let tools = match tools_json {
                Some(text) => Some(parse_json("tools_json", &text)?),
                None => None,
            };
            let kwargs = match template_kwargs_json {
                Some(text) => Some(parse_json("chat_template_kwargs", &text)?),
                None => None,
            };
            // `tool_choice: "none"`: the model is not shown the tools at all.
            let tools = tools.filter(|_| spec.tool_choice != ToolChoice::None);
            let syntax = tools.as_ref().map(|_| tool_syntax_for(engine));
            // A harmony model writes channels with or without tools: its parser reads both.
            let syntax = if speaks_harmony(engine) {
                Some(ToolSyntax::Harmony)
            } else {
                syntax
            };
            let text = render(
                engine,
                &messages,
                tools.as_ref(),
                add_generation_prompt,
                kwargs.as_ref(),
            )?;
            let ids = engine.tokenizer.encode(&text)?;
            (ids, Some((text, tools, syntax)))
        }
        Prompt::Text(text) => (engine.tokenizer.encode(&text)?, None),
        Prompt::Tokens(ids) => (ids, None),
    };
    engine.check_prompt(&ids)?;

    let (thinking, tools, syntax) = match &chat {
        Some((text, tools, syntax)) => (
            reasons(engine).then(|| think_markers(engine).opened_by(text)),
            tools.clone(),
            *syntax,
        ),
        None => (None, None, None),
    };
    let max_calls = if spec.parallel_tool_calls {
        u32::MAX
    } else {
        1
    };
    let id_prefix = format!("call_{request_id:x}{:x}_", std::process::id());
    let harmony = (syntax == Some(ToolSyntax::Harmony))
        .then(|| HarmonyParser::new(tools.is_some(), max_calls, &id_prefix));
    let calls = match (&tools, syntax) {
        (_, Some(ToolSyntax::Harmony)) => None,
        (Some(tools), Some(syntax)) => Some(CallParser::new(
            syntax,
            ParamTypes::from_tools(Some(tools)),
            max_calls,
            &id_prefix,
        )),
        _ => None,
    };
    let lark = constraint_lark(engine, spec, tools.as_ref(), syntax)?;
    let constraint = match lark {
        Some(lark) => {
            // A prompt that opened a reasoning block gets it closed first: the constrained
            // answer follows it.
            let forced_call = matches!(
                spec.tool_choice,
                ToolChoice::Required | ToolChoice::Function(_)
            ) && tools.is_some();
            let lark = if harmony.is_some() && !forced_call {
                // A constrained answer goes in the final channel (a forced call writes its
                // own header).
                let header = harmony::final_header(engine.token_space()?.trie());
                format!(
                    "start: {header} answer\n{}",
                    lark.replacen("start:", "answer:", 1)
                )
            } else if thinking == Some(true) {
                let close = grammar::lark_literal(
                    engine.token_space()?.trie(),
                    think_markers(engine).close,
                );
                format!(
                    "start: {close} \"\\n\\n\" answer\n{}",
                    lark.replacen("start:", "answer:", 1)
                )
            } else {
                lark
            };
            let space = engine.token_space()?;
            Some(
                space
                    .constraint(TopLevelGrammar::from_lark(lark))
                    .map_err(|e| invalid_format(spec, &e))?,
            )
        }
        None => None,
    };
    Ok(Prepared {
        ids,
        output: Output {
            constraint,
            parser: match harmony {
                Some(h) => OutputParser::harmony(h),
                None => OutputParser::new(thinking, calls).reasoning_in(think_markers(engine)),
            },
        },
    })
}

/// The lark grammar the answer must follow, if any: a forced tool call wins over a
/// response format.
fn constraint_lark(
    engine: &Engine,
    spec: &OutputSpec,
    tools: Option<&Value>,
    syntax: Option<ToolSyntax>,
) -> Result<Option<String>, GenerateError> {
    let only = match &spec.tool_choice {
        ToolChoice::Required => Some(None),
        ToolChoice::Function(name) => Some(Some(name.as_str())),
        ToolChoice::Auto | ToolChoice::None => None,
    };
    if let (Some(only), Some(tools), Some(syntax)) = (only, tools, syntax) {
        let list = tools.as_array().cloned().unwrap_or_default();
        let space = engine.token_space()?;
        let lark = tool_syntax::forced_call_grammar(syntax, &list, only, false, space.trie())
            .map_err(|e| GenerateError::InvalidRequest(format!("tools: {e}")))?;
        return Ok(Some(lark));
    }
    let schema = match &spec.format {
        AnswerFormat::Text => return Ok(None),
        AnswerFormat::JsonObject => (json!({"type": "object"}), false),
        AnswerFormat::JsonSchema {
            schema_json,
            strict,
        } => {
            let schema: Value = serde_json::from_str(schema_json).map_err(|e| {
                GenerateError::InvalidRequest(format!(
                    "response_format.json_schema.schema is not valid JSON: {e}"
                ))
            })?;
            grammar::check_schema_bounds(&schema).map_err(|e| invalid_format(spec, &e))?;
            (schema, *strict)
        }
    };
    let text = serde_json::to_string(&grammar::with_options(schema.0, schema.1))
        .map_err(|e| GenerateError::Engine(e.to_string()))?;
    Ok(Some(format!("start: json\njson: %json {text}\n")))
}

fn invalid_format(spec: &OutputSpec, e: &str) -> GenerateError {
    let field = match (&spec.tool_choice, &spec.format) {
        (ToolChoice::Required | ToolChoice::Function(_), _) => "tools",
        _ => "response_format",
    };
    GenerateError::InvalidRequest(format!("{field}: unsupported or invalid schema: {e}"))
}

/// The template, with tools taught through a system message when the template has no
/// place for them.
///
/// The conversation goes as sent first. Some templates refuse a `system` message past the
/// first (Gemma's, Mistral's: roles must alternate) or leave it out without a word; those get
/// the system messages merged into the first, in order, so nothing is dropped. Some refuse
/// reasoning sent back in certain turns (gpt-oss's, next to content in a tool-call turn):
/// the conversation without it is still the conversation.
fn render(
    engine: &Engine,
    messages: &Value,
    tools: Option<&Value>,
    add_generation_prompt: bool,
    kwargs: Option<&Value>,
) -> Result<String, GenerateError> {
    let tok = &engine.tokenizer;
    let native = tok.template().is_some_and(|t| t.contains("tools"));
    // Built only when the one before did not render: the usual request renders as sent and
    // copies nothing.
    let merged = || with_system_merged(messages);
    let alternatives: [&dyn Fn() -> Option<Value>; 3] =
        [&merged, &|| without_reasoning(messages), &|| {
            merged().as_ref().and_then(without_reasoning)
        }];
    let mut first_error = None;
    let mut next = 0;
    let mut owned;
    let mut candidate = messages;
    loop {
        let taught;
        let (conversation, tools) = match tools {
            Some(tools) if !native => {
                taught = with_taught_tools(candidate, tools);
                (&taught, None)
            }
            _ => (candidate, tools),
        };
        match tok.render_chat_with(conversation, tools, add_generation_prompt, kwargs) {
            Ok(text) if keeps_system_messages(candidate, &text) => return Ok(text),
            Ok(_) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        let Some(alternative) = alternatives[next..].iter().find_map(|make| {
            next += 1;
            make()
        }) else {
            break;
        };
        owned = alternative;
        candidate = &owned;
    }
    match first_error {
        Some(e) => Err(e.into()),
        // Only a template that drops later system messages even when they are merged into
        // the first can get here, which the merged candidate rules out; kept total anyway.
        None => Err(GenerateError::InvalidRequest(
            "messages: the chat template leaves out the system messages".into(),
        )),
    }
}

/// Whether a message is a system message (`developer` is OpenAI's newer name for it).
fn is_system(m: &Value) -> bool {
    matches!(
        m.get("role").and_then(Value::as_str),
        Some("system" | "developer")
    )
}

/// `messages` with every system message merged into the first one (made first when the
/// conversation starts otherwise), in order; `None` if no system message stands past the
/// first place.
fn with_system_merged(messages: &Value) -> Option<Value> {
    let list = messages.as_array()?;
    if !list.iter().skip(1).any(is_system) {
        return None;
    }
    let texts: Vec<&str> = list
        .iter()
        .filter(|m| is_system(m))
        .filter_map(|m| m.get("content").and_then(Value::as_str))
        .filter(|t| !t.trim().is_empty())
        .collect();
    let mut out = vec![json!({"role": "system", "content": texts.join("\n\n")})];
    out.extend(list.iter().filter(|m| !is_system(m)).cloned());
    Some(Value::Array(out))
}

/// Whether `text`, rendered from `messages`, holds every system message past the first:
/// some templates skip them silently.
fn keeps_system_messages(messages: &Value, text: &str) -> bool {
    messages.as_array().is_none_or(|list| {
        list.iter()
            .skip(1)
            .filter(|m| is_system(m))
            .filter_map(|m| m.get("content").and_then(Value::as_str))
            .all(|content| text.contains(content.trim()))
    })
}

/// `messages` without the reasoning of earlier turns, or `None` if they had none.
fn without_reasoning(messages: &Value) -> Option<Value> {
    let mut out = messages.clone();
    let mut removed = false;
    for m in out
        .as_array_mut()?
        .iter_mut()
        .filter_map(Value::as_object_mut)
    {
        for key in ["thinking", "reasoning_content"] {
            removed |= m.remove(key).is_some();
        }
    }
    removed.then_some(out)
}

/// For a template without tools: the tool list goes into the system message, and earlier
/// tool calls are written back into the assistant turns in the syntax taught.
fn with_taught_tools(messages: &Value, tools: &Value) -> Value {
    let teach = tool_syntax::tool_system_prompt(tools);
    let mut out: Vec<Value> = Vec::new();
    let list = messages.as_array().cloned().unwrap_or_default();
    let has_system = list
        .first()
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        .is_some_and(|r| r == "system" || r == "developer");
    if !has_system {
        out.push(json!({"role": "system", "content": teach}));
    }
    for (i, mut m) in list.into_iter().enumerate() {
        if i == 0 && has_system {
            let content = m.get("content").and_then(Value::as_str).unwrap_or_default();
            m["content"] = json!(format!("{content}\n\n{teach}"));
            m["role"] = json!("system");
        }
        if let Some(calls) = m.get("tool_calls").and_then(Value::as_array).cloned() {
            let mut content = m
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            for call in calls {
                let f = call.get("function").unwrap_or(&call);
                let written = json!({"name": f.get("name"), "arguments": f.get("arguments")});
                content.push_str(&format!("<tool_call>\n{written}\n</tool_call>"));
            }
            m["content"] = json!(content);
            if let Some(obj) = m.as_object_mut() {
                obj.remove("tool_calls");
            }
        }
        out.push(m);
    }
    Value::Array(out)
}

/// The tool syntax the model's template implies; Hermes when the template has none (the
/// system prompt then teaches it).
fn tool_syntax_for(engine: &Engine) -> ToolSyntax {
    engine
        .tool_syntax
        .or_else(|| engine.tokenizer.template().and_then(ToolSyntax::infer))
        .unwrap_or(ToolSyntax::Hermes)
}

/// Whether the model's template is in gpt-oss's harmony format.
fn speaks_harmony(engine: &Engine) -> bool {
    engine.tool_syntax == Some(ToolSyntax::Harmony)
        || engine.tokenizer.template().is_some_and(harmony::is_harmony)
}

/// The markers the model's template writes reasoning between.
fn think_markers(engine: &Engine) -> output::ThinkMarkers {
    engine
        .tokenizer
        .template()
        .map_or(output::THINK, output::ThinkMarkers::of_template)
}

/// Whether the model writes reasoning blocks: its template or vocabulary knows the closing
/// marker.
fn reasons(engine: &Engine) -> bool {
    let close = think_markers(engine).close;
    engine
        .tokenizer
        .template()
        .is_some_and(|t| t.contains(close))
        || engine.tokenizer.token_id(close).is_some()
}

fn parse_json(what: &str, text: &str) -> Result<Value, GenerateError> {
    serde_json::from_str(text)
        .map_err(|e| GenerateError::InvalidRequest(format!("{what} is not valid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_json_is_an_invalid_request_naming_the_field() {
        let e = parse_json("messages_json", "[{").unwrap_err();
        assert!(matches!(e, GenerateError::InvalidRequest(_)));
        assert!(e.to_string().contains("messages_json"), "{e}");
        let v = parse_json("messages_json", r#"[{"role":"user","content":"hi"}]"#).unwrap();
        assert_eq!(v[0]["content"], "hi");
    }

    #[test]
    fn later_system_messages_merge_into_the_first_in_order() {
        let claude_code = json!([
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "Agents: general"},
            {"role": "assistant", "content": "hello"},
            {"role": "developer", "content": "Be brief."},
        ]);
        let merged = with_system_merged(&claude_code).unwrap();
        assert_eq!(
            merged,
            json!([
                {"role": "system", "content": "Agents: general\n\nBe brief."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ])
        );
        let led = json!([
            {"role": "system", "content": "You are Codex."},
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "Sandbox: read-only."},
        ]);
        assert_eq!(
            with_system_merged(&led).unwrap()[0]["content"],
            "You are Codex.\n\nSandbox: read-only."
        );
        let plain = json!([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]);
        assert_eq!(with_system_merged(&plain), None, "nothing to merge");

        assert!(keeps_system_messages(
            &led,
            "You are Codex. hi Sandbox: read-only."
        ));
        assert!(
            !keeps_system_messages(&led, "You are Codex. hi"),
            "a template that skipped the later one"
        );
        assert!(
            keeps_system_messages(&plain, "u"),
            "the first place is the template's own business"
        );
    }

    #[test]
    fn taught_tools_join_the_system_message_and_replay_calls_as_text() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let messages = json!([
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]},
            {"role": "tool", "content": "42", "tool_call_id": "c"},
        ]);
        let out = with_taught_tools(&messages, &tools);
        assert_eq!(out[0]["role"], "system");
        assert!(out[0]["content"]
            .as_str()
            .unwrap()
            .contains("\"name\":\"f\""));
        let replay = out[2]["content"].as_str().unwrap();
        assert!(
            replay.starts_with("<tool_call>") && replay.contains("\"a\":1"),
            "{replay}"
        );
        assert!(out[2].get("tool_calls").is_none());
        let with_system = with_taught_tools(
            &json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}]),
            &tools,
        );
        assert_eq!(with_system.as_array().unwrap().len(), 2);
        assert!(with_system[0]["content"]
            .as_str()
            .unwrap()
            .starts_with("Be brief."));
    }
}
