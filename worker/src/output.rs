//! From generated text to what it means: reasoning split from the answer, tool calls read
//! out of it, each delta carrying the generated tokens behind it.

use opta_lmx_shared::protocol::Delta;

use crate::harmony::HarmonyParser;
use crate::tool_syntax::{CallParser, Piece};

pub const THINK_OPEN: &str = "<think>";
pub const THINK_CLOSE: &str = "</think>";

/// The markers around a reasoning block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThinkMarkers {
    pub open: &'static str,
    pub close: &'static str,
}

/// `<think>…</think>`: Qwen3, DeepSeek-R1, GLM, Kimi K2 Thinking and most others.
pub const THINK: ThinkMarkers = ThinkMarkers {
    open: THINK_OPEN,
    close: THINK_CLOSE,
};

/// Gemma 4's thought channel, as its template writes one back into history.
pub const GEMMA4_THOUGHT: ThinkMarkers = ThinkMarkers {
    open: "<|channel>thought\n",
    close: "<channel|>",
};

/// Reasoning tokens whose text must survive decoding (they are special in the vocabularies).
pub const MARKERS: &[&str] = &[THINK_OPEN, THINK_CLOSE, "<|channel>", "<channel|>"];

impl ThinkMarkers {
    /// The markers a chat template writes reasoning between.
    pub fn of_template(template: &str) -> ThinkMarkers {
        if template.contains("<|channel>thought") {
            GEMMA4_THOUGHT
        } else {
            THINK
        }
    }

    /// Whether a rendered prompt leaves the model inside a reasoning block.
    pub fn opened_by(&self, prompt: &str) -> bool {
        let tail = prompt.trim_end();
        let open = self.open.trim_end();
        match (tail.rfind(open), tail.rfind(self.close)) {
            (Some(open), Some(close)) => open > close,
            (Some(_), None) => tail.ends_with(open),
            _ => false,
        }
    }
}

/// Splits reasoning blocks (`<think>...</think>` or another pair of markers) out of a text
/// stream, holding back partial markers.
pub struct ThinkSplitter {
    markers: ThinkMarkers,
    thinking: bool,
    buf: String,
    /// Just left a reasoning block: whitespace before the answer is dropped.
    trim: bool,
}

impl ThinkSplitter {
    /// `thinking`: the prompt already opened a `<think>` block (Qwen3, DeepSeek-R1).
    pub fn new(thinking: bool) -> Self {
        ThinkSplitter {
            markers: THINK,
            thinking,
            buf: String::new(),
            trim: false,
        }
    }

    pub fn is_thinking(&self) -> bool {
        self.thinking
    }

    /// More text; returns `(is_reasoning, text)` runs that became final.
    pub fn push(&mut self, text: &str, at_end: bool) -> Vec<(bool, String)> {
        self.buf.push_str(text);
        let mut out: Vec<(bool, String)> = Vec::new();
        let mut emit = |reasoning: bool, t: String| {
            if !t.is_empty() {
                out.push((reasoning, t));
            }
        };
        loop {
            if self.trim {
                // The answer usually starts after a blank line; it is not part of it.
                let skip = self.buf.len() - self.buf.trim_start().len();
                self.buf.drain(..skip);
                self.trim = self.buf.is_empty();
            }
            let marker = if self.thinking {
                self.markers.close
            } else {
                self.markers.open
            };
            if let Some(i) = self.buf.find(marker) {
                let before: String = self.buf.drain(..i).collect();
                self.buf.drain(..marker.len());
                emit(self.thinking, before);
                self.thinking = !self.thinking;
                self.trim = !self.thinking;
                continue;
            }
            let keep = if at_end {
                0
            } else {
                (1..marker.len().min(self.buf.len() + 1))
                    .rev()
                    .find(|&k| marker.is_char_boundary(k) && self.buf.ends_with(&marker[..k]))
                    .unwrap_or(0)
            };
            let upto = self.buf.len() - keep;
            let t: String = self.buf.drain(..upto).collect();
            emit(self.thinking, t);
            return out;
        }
    }
}

/// Everything that reads one request's output.
pub struct OutputParser {
    think: Option<ThinkSplitter>,
    calls: Option<CallParser>,
    /// gpt-oss: channels and calls both come from the harmony parser.
    harmony: Option<HarmonyParser>,
    /// Tokens generated since the last delta went out.
    pending_tokens: u32,
    pub reasoning_tokens: u32,
}

impl OutputParser {
    /// `think`: split reasoning (and whether the prompt opened it); `calls`: read tool calls.
    pub fn new(think: Option<bool>, calls: Option<CallParser>) -> Self {
        OutputParser {
            think: think.map(ThinkSplitter::new),
            calls,
            harmony: None,
            pending_tokens: 0,
            reasoning_tokens: 0,
        }
    }

    /// Reasoning between `markers` rather than `<think>` tags (Gemma 4).
    pub fn reasoning_in(mut self, markers: ThinkMarkers) -> Self {
        if let Some(t) = &mut self.think {
            t.markers = markers;
        }
        self
    }

    /// A harmony model's output (gpt-oss).
    pub fn harmony(parser: HarmonyParser) -> Self {
        OutputParser {
            harmony: Some(parser),
            ..Self::plain()
        }
    }

    /// Plain text: every delta is answer text.
    pub fn plain() -> Self {
        Self::new(None, None)
    }

    /// Whether nothing more the model writes can be used (a tool-call limit was reached).
    pub fn is_done(&self) -> bool {
        self.calls.as_ref().is_some_and(CallParser::is_done)
            || self.harmony.as_ref().is_some_and(HarmonyParser::is_done)
    }

    /// Text that `tokens` new tokens produced; `at_end`: the output ended.
    pub fn push(&mut self, text: &str, tokens: u32, at_end: bool) -> Vec<Delta> {
        let reasoning = match &self.harmony {
            Some(h) => h.is_reasoning(),
            None => self.think.as_ref().is_some_and(ThinkSplitter::is_thinking),
        };
        if reasoning {
            self.reasoning_tokens += tokens;
        }
        self.pending_tokens += tokens;
        if let Some(h) = &mut self.harmony {
            let deltas = h.push(text, at_end);
            return self.with_tokens(deltas);
        }
        let runs = match &mut self.think {
            Some(t) => t.push(text, at_end),
            None => vec![(false, text.to_string())],
        };
        let mut deltas = Vec::new();
        for (reasoning, run) in runs {
            if reasoning {
                deltas.push(Delta::Reasoning {
                    text: run,
                    tokens: 0,
                });
            } else {
                self.answer(&run, false, &mut deltas);
            }
        }
        if at_end {
            self.answer("", true, &mut deltas);
        }
        self.with_tokens(deltas)
    }

    /// The tokens behind this text go with its first delta.
    fn with_tokens(&mut self, mut deltas: Vec<Delta>) -> Vec<Delta> {
        if let Some(first) = deltas.first_mut() {
            let n = std::mem::take(&mut self.pending_tokens);
            match first {
                Delta::Text { tokens, .. }
                | Delta::Reasoning { tokens, .. }
                | Delta::ToolCall { tokens, .. } => *tokens = n,
            }
        }
        deltas
    }

    fn answer(&mut self, text: &str, at_end: bool, deltas: &mut Vec<Delta>) {
        let Some(calls) = &mut self.calls else {
            if !text.is_empty() {
                deltas.push(Delta::Text {
                    text: text.to_string(),
                    tokens: 0,
                });
            }
            return;
        };
        let mut pieces = calls.push(text);
        if at_end {
            pieces.extend(calls.finish());
        }
        for piece in pieces {
            deltas.push(match piece {
                Piece::Text(text) => Delta::Text { text, tokens: 0 },
                Piece::Call {
                    index,
                    id,
                    name,
                    arguments,
                } => Delta::ToolCall {
                    index,
                    id,
                    name,
                    arguments,
                    tokens: 0,
                },
            });
        }
    }
}

/// Whether a rendered prompt leaves the model inside a reasoning block.
pub fn prompt_opens_thinking(prompt: &str) -> bool {
    THINK.opened_by(prompt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool_syntax::{ParamTypes, ToolSyntax};
    use opta_lmx_shared::protocol::answer_text;

    fn reasoning(deltas: &[Delta]) -> String {
        deltas
            .iter()
            .filter_map(|d| match d {
                Delta::Reasoning { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    fn feed(p: &mut OutputParser, text: &str, step: usize) -> Vec<Delta> {
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        for c in chars.chunks(step) {
            out.extend(p.push(&c.iter().collect::<String>(), 1, false));
        }
        out.extend(p.push("", 0, true));
        out
    }

    #[test]
    fn think_blocks_split_at_any_boundary() {
        for step in [1, 2, 5, 100] {
            let mut p = OutputParser::new(Some(false), None);
            let d = feed(&mut p, "<think>a < b</think>\n\nThe answer.", step);
            assert_eq!(reasoning(&d), "a < b", "step {step}");
            assert_eq!(answer_text(&d), "The answer.");
            let total: u32 = d.iter().map(Delta::tokens).sum();
            assert_eq!(
                total as usize,
                "<think>a < b</think>\n\nThe answer."
                    .chars()
                    .count()
                    .div_ceil(step)
            );
        }
    }

    /// Gemma 4 thinks in its thought channel; its real template says so.
    #[test]
    fn gemma4_thoughts_split_at_any_boundary() {
        let template = include_str!("../../tests/data/templates/google-gemma-4-31B-it.jinja");
        let markers = ThinkMarkers::of_template(template);
        assert_eq!(markers, GEMMA4_THOUGHT);
        assert_eq!(ThinkMarkers::of_template("{{ '<think>' }}"), THINK);
        // With thinking off, the template closes an empty channel in the prompt.
        assert!(!markers.opened_by("<|turn>model\n<|channel>thought\n<channel|>"));
        assert!(markers.opened_by("<|turn>model\n<|channel>thought\n"));
        let text = "<|channel>thought\nIt is 1 < 2.<channel|>The answer.";
        for step in 1..text.len() {
            let mut p = OutputParser::new(Some(false), None).reasoning_in(markers);
            let d = feed(&mut p, text, step);
            assert_eq!(reasoning(&d), "It is 1 < 2.", "step {step}");
            assert_eq!(answer_text(&d), "The answer.", "step {step}");
        }
    }

    #[test]
    fn a_prompt_that_opened_thinking_starts_in_reasoning() {
        let mut p = OutputParser::new(Some(true), None);
        let d = feed(&mut p, "hmm</think>ok", 3);
        assert_eq!(
            (reasoning(&d).as_str(), answer_text(&d).as_str()),
            ("hmm", "ok")
        );
        assert!(p.reasoning_tokens > 0);
        assert!(prompt_opens_thinking("<|im_start|>assistant\n<think>\n"));
        assert!(!prompt_opens_thinking("<think>\n\n</think>\n\n"));
        assert!(!prompt_opens_thinking("<|im_start|>assistant\n"));
    }

    #[test]
    fn reasoning_then_a_tool_call() {
        let calls = CallParser::new(ToolSyntax::Hermes, ParamTypes::default(), 4, "c");
        let mut p = OutputParser::new(Some(true), Some(calls));
        let d = feed(
            &mut p,
            "I should call f.</think>\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>",
            2,
        );
        assert_eq!(reasoning(&d), "I should call f.");
        assert_eq!(answer_text(&d).trim(), "");
        assert!(d
            .iter()
            .any(|x| matches!(x, Delta::ToolCall { name: Some(n), .. } if n == "f")));
    }
}
