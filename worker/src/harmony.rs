//! gpt-oss's harmony format. The model answers in messages, each a header and a body:
//! `<|channel|>analysis<|message|>…<|end|><|start|>assistant<|channel|>final<|message|>…<|return|>`.
//! The `analysis` channel is reasoning, `final` (and `commentary` without a recipient) is the
//! answer, and a header naming a recipient (`to=functions.NAME`) opens a tool call whose body is
//! its JSON arguments, ended by `<|call|>`. This reads that stream into reasoning, text and
//! call deltas (`tokens` left 0 for the caller to fill); headers are never shown.

use opta_lmx_shared::protocol::Delta;

use crate::grammar;

pub const START: &str = "<|start|>";
pub const CHANNEL: &str = "<|channel|>";
pub const MESSAGE: &str = "<|message|>";
pub const CONSTRAIN: &str = "<|constrain|>";
pub const END: &str = "<|end|>";
pub const RETURN: &str = "<|return|>";
pub const CALL: &str = "<|call|>";

/// The markers the tokenizer must keep in decoded text (the last two are end-of-generation
/// tokens too, and usually never decoded).
pub const MARKERS: &[&str] = &[START, CHANNEL, MESSAGE, CONSTRAIN, END, RETURN, CALL];

/// Where a body ends: the end of a message, of the answer, or of a call.
const BODY_ENDS: &[&str] = &[END, RETURN, CALL, START];

/// A header that runs this long without `<|message|>` is not one: the model is not writing
/// harmony, and its text is shown as it is.
const MAX_HEADER: usize = 256;

/// Whether a chat template speaks harmony.
pub fn is_harmony(template: &str) -> bool {
    template.contains(CHANNEL) && template.contains(MESSAGE)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Body {
    Reasoning,
    Text,
    Call,
}

enum State {
    Header,
    Body(Body),
    /// Not harmony after all: everything is text.
    Raw,
}

pub struct HarmonyParser {
    state: State,
    buf: String,
    /// Tool calls are read (the request had tools); otherwise a call's body is text.
    tools: bool,
    calls: u32,
    max_calls: u32,
    id_prefix: String,
    /// The call limit was reached and the model went on to another call.
    dropping: bool,
}

impl HarmonyParser {
    /// `tools`: read calls (at most `max_calls`, ids from `id_prefix`).
    pub fn new(tools: bool, max_calls: u32, id_prefix: &str) -> Self {
        HarmonyParser {
            state: State::Header,
            buf: String::new(),
            tools,
            calls: 0,
            max_calls,
            id_prefix: id_prefix.to_string(),
            dropping: false,
        }
    }

    /// Nothing the model writes from now on can be shown.
    pub fn is_done(&self) -> bool {
        self.dropping
    }

    /// Inside the reasoning channel.
    pub fn is_reasoning(&self) -> bool {
        matches!(self.state, State::Body(Body::Reasoning))
    }

    /// More generated text; `at_end`: the output ended. Returns what became final.
    pub fn push(&mut self, text: &str, at_end: bool) -> Vec<Delta> {
        let mut out = Vec::new();
        if self.dropping {
            return out;
        }
        self.buf.push_str(text);
        loop {
            match self.state {
                State::Raw => {
                    let t = std::mem::take(&mut self.buf);
                    emit(&mut out, Body::Text, t, self.calls);
                    return out;
                }
                State::Header => {
                    if let Some(i) = self.buf.find(MESSAGE) {
                        let header: String = self.buf.drain(..i + MESSAGE.len()).collect();
                        self.open(&header[..i], &mut out);
                        if self.dropping {
                            return out;
                        }
                        continue;
                    }
                    let harmony = self.buf.contains(CHANNEL) || self.buf.starts_with(START);
                    if self.buf.len() > MAX_HEADER || (at_end && !harmony) {
                        self.state = State::Raw;
                        continue;
                    }
                    // A header cut off by the end of the output shows nothing.
                    return out;
                }
                State::Body(kind) => {
                    let found = BODY_ENDS
                        .iter()
                        .filter_map(|m| self.buf.find(m).map(|i| (i, *m)))
                        .min();
                    if let Some((i, marker)) = found {
                        let body: String = self.buf.drain(..i).collect();
                        emit(&mut out, kind, body, self.calls);
                        // `<|start|>` begins the next header; the other markers end this one.
                        if marker != START {
                            self.buf.drain(..marker.len());
                        }
                        self.close(kind);
                        continue;
                    }
                    let keep = if at_end { 0 } else { held_back(&self.buf) };
                    let body: String = self.buf.drain(..self.buf.len() - keep).collect();
                    emit(&mut out, kind, body, self.calls);
                    if at_end {
                        self.close(kind);
                    }
                    return out;
                }
            }
        }
    }

    /// A header was read: decide what its body is.
    fn open(&mut self, header: &str, out: &mut Vec<Delta>) {
        let (channel, recipient) = read_header(header);
        let kind = match (recipient, channel.as_deref()) {
            (Some(to), _) if self.tools => {
                if self.calls >= self.max_calls {
                    self.dropping = true;
                    return;
                }
                let name = to.strip_prefix("functions.").unwrap_or(&to).to_string();
                out.push(Delta::ToolCall {
                    index: self.calls,
                    id: Some(format!("{}{}", self.id_prefix, self.calls)),
                    name: Some(name),
                    arguments: String::new(),
                    tokens: 0,
                });
                Body::Call
            }
            (_, Some("analysis")) => Body::Reasoning,
            _ => Body::Text,
        };
        self.state = State::Body(kind);
    }

    fn close(&mut self, kind: Body) {
        if kind == Body::Call {
            self.calls += 1;
        }
        self.state = State::Header;
    }
}

/// A header's channel and recipient: `assistant to=functions.f<|channel|>commentary json` or
/// `<|channel|>commentary to=functions.f <|constrain|>json`.
fn read_header(header: &str) -> (Option<String>, Option<String>) {
    let word = |s: &str| -> String {
        s.split(|c: char| c.is_whitespace() || c == '<')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let channel = header
        .find(CHANNEL)
        .map(|i| word(&header[i + CHANNEL.len()..]))
        .filter(|c| !c.is_empty());
    let recipient = header
        .find("to=")
        .map(|i| word(&header[i + 3..]))
        .filter(|r| !r.is_empty());
    (channel, recipient)
}

fn emit(out: &mut Vec<Delta>, kind: Body, text: String, index: u32) {
    if text.is_empty() {
        return;
    }
    out.push(match kind {
        Body::Reasoning => Delta::Reasoning { text, tokens: 0 },
        Body::Text => Delta::Text { text, tokens: 0 },
        Body::Call => Delta::ToolCall {
            index,
            id: None,
            name: None,
            arguments: text,
            tokens: 0,
        },
    });
}

/// How many bytes at the end of `buf` could begin a marker, and are held back.
fn held_back(buf: &str) -> usize {
    BODY_ENDS
        .iter()
        .filter_map(|m| {
            (1..m.len().min(buf.len() + 1))
                .rev()
                .find(|&k| buf.ends_with(&m[..k]))
        })
        .max()
        .unwrap_or(0)
}

/// The lark rule of one forced harmony call to `name`: its header in the commentary channel,
/// then `args` (a rule the caller defines).
pub fn call_rule(trie: &llguidance::toktrie::TokTrie, name: &str, args: &str) -> String {
    let lit = |s: &str| grammar::lark_literal(trie, s);
    let header =
        serde_json::to_string(&format!("commentary to=functions.{name} ")).unwrap_or_default();
    format!(
        "{} {header} {} \"json\" {} {args}",
        lit(CHANNEL),
        lit(CONSTRAIN),
        lit(MESSAGE)
    )
}

/// The header that puts a constrained answer in the final channel.
pub fn final_header(trie: &llguidance::toktrie::TokTrie) -> String {
    let lit = |s: &str| grammar::lark_literal(trie, s);
    format!("{} \"final\" {}", lit(CHANNEL), lit(MESSAGE))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` in pieces of `step` bytes (on char boundaries); returns reasoning, text
    /// and the calls as (name, arguments), checking each call's first part has an id.
    fn run(
        tools: bool,
        max_calls: u32,
        text: &str,
        step: usize,
    ) -> (String, String, Vec<(String, String)>) {
        let mut p = HarmonyParser::new(tools, max_calls, "call_");
        let mut parts = Vec::new();
        let chars: Vec<char> = text.chars().collect();
        for chunk in chars.chunks(step) {
            parts.extend(p.push(&chunk.iter().collect::<String>(), false));
        }
        parts.extend(p.push("", true));
        let (mut reasoning, mut answer, mut calls) = (String::new(), String::new(), Vec::new());
        for part in parts {
            match part {
                Delta::Reasoning { text, .. } => reasoning.push_str(&text),
                Delta::Text { text, .. } => answer.push_str(&text),
                Delta::ToolCall {
                    index,
                    id,
                    name,
                    arguments,
                    ..
                } => {
                    if let Some(name) = name {
                        assert_eq!(id, Some(format!("call_{index}")));
                        assert_eq!(index as usize, calls.len());
                        calls.push((name, arguments));
                    } else {
                        let last: &mut (String, String) = calls.last_mut().expect("a call");
                        last.1.push_str(&arguments);
                    }
                }
            }
        }
        (reasoning, answer, calls)
    }

    #[test]
    fn reasoning_then_answer_split_anywhere() {
        let text = "<|channel|>analysis<|message|>User greets. Reply.<|end|>\
                    <|start|>assistant<|channel|>final<|message|>Hello! <3 <|a|>";
        for step in [1, 2, 3, 7, 100] {
            let (r, a, c) = run(false, 1, text, step);
            assert_eq!(r, "User greets. Reply.", "step {step}");
            assert_eq!(a, "Hello! <3 <|a|>", "step {step}");
            assert!(c.is_empty());
        }
    }

    #[test]
    fn calls_in_either_header_form() {
        let text = "<|channel|>analysis<|message|>Need weather.<|end|>\
                    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json\
                    <|message|>{\"city\": \"Paris\"}<|call|>";
        for step in [1, 5, 100] {
            let (r, a, c) = run(true, 1, text, step);
            assert_eq!(r, "Need weather.");
            assert_eq!(a, "");
            assert_eq!(
                c,
                vec![("get_weather".into(), "{\"city\": \"Paris\"}".into())]
            );
        }
        let other =
            "<|start|>assistant to=functions.f<|channel|>commentary json<|message|>{}<|call|>";
        assert_eq!(run(true, 1, other, 3).2, vec![("f".into(), "{}".into())]);
        // Without tools in the request, a call's body is only text.
        assert_eq!(run(false, 1, other, 3).1, "{}");
    }

    #[test]
    fn a_second_call_beyond_the_limit_stops_the_output() {
        let text = "<|channel|>commentary to=functions.a<|message|>{}<|call|>\
                    <|start|>assistant<|channel|>commentary to=functions.b<|message|>{}<|call|>";
        assert_eq!(run(true, 1, text, 4).2.len(), 1);
        assert_eq!(run(true, 2, text, 4).2.len(), 2);
        let mut p = HarmonyParser::new(true, 1, "c");
        p.push(text, false);
        assert!(p.is_done());
    }

    #[test]
    fn text_that_is_not_harmony_is_shown_as_it_is() {
        assert_eq!(run(false, 1, "just words", 3).1, "just words");
        let long = "x".repeat(MAX_HEADER + 10);
        assert_eq!(run(false, 1, &long, 50).1, long);
        // A preamble in commentary is for the user; an output cut inside a header shows nothing.
        let pre = "<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant<|chan";
        assert_eq!(run(true, 1, pre, 2).1, "Checking.");
    }

    #[test]
    fn headers_name_their_channel_and_recipient() {
        assert_eq!(
            read_header("<|channel|>commentary to=functions.x <|constrain|>json"),
            (Some("commentary".into()), Some("functions.x".into()))
        );
        assert_eq!(
            read_header("<|start|>assistant<|channel|>final"),
            (Some("final".into()), None)
        );
        assert!(is_harmony("<|start|>{{ m }}<|channel|>final<|message|>"));
        assert!(!is_harmony("<|im_start|>"));
    }
}
