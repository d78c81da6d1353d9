//! Tool calls in each model family's own syntax: which syntax a chat template implies, a
//! streaming parser that turns generated text into OpenAI-style call deltas, and the grammar
//! that forces a well-formed call when the request requires one.
//!
//! The parser holds back any text that could be the start of a call marker, so a marker is
//! never leaked into `content`. A call's first delta carries its name; its arguments (a JSON
//! object) follow in fragments as they are generated. Marker tokens that the vocabulary
//! marks special reach the parser as their text (see `Tokenizer::decode`).

use serde_json::{json, Map, Value};

use crate::grammar;

/// How a model writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolSyntax {
    /// `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`: Hermes, Qwen 2.5/3, and
    /// the syntax taught to models whose template knows no tools.
    Hermes,
    /// Qwen3-Coder's XML: `<tool_call><function=NAME><parameter=P>V</parameter></function>`.
    QwenXml,
    /// Llama 3.x: `{"name": ..., "parameters": {...}}`, after `<|python_tag|>` or alone,
    /// several separated by `;`.
    Llama3,
    /// Mistral's `[TOOL_CALLS]`, followed by a JSON list of calls or by `name[ARGS]{...}`.
    Mistral,
    /// DeepSeek V3 and R1 (`function<｜tool▁sep｜>NAME` and a fenced JSON block) and V3.1
    /// (`NAME<｜tool▁sep｜>{...}`), between `<｜tool▁call▁begin｜>` and `<｜tool▁call▁end｜>`.
    DeepSeek,
    /// Kimi K2: `<|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>{...}
    /// <|tool_call_end|>`, the calls between `<|tool_calls_section_begin|>` and
    /// `<|tool_calls_section_end|>`.
    KimiK2,
    /// GLM-4.5 to 4.7 (and Laguna, Ling 3): `<tool_call>NAME<arg_key>K</arg_key>
    /// <arg_value>V</arg_value>...</tool_call>`, newlines between the parts in 4.5 and 4.6;
    /// a value is raw text for a string and JSON otherwise.
    Glm,
    /// Gemma 4: `<|tool_call>call:NAME{key:value,...}<tool_call|>`, keys bare, strings between
    /// `<|"|>` marks, everything else as in JSON.
    Gemma4,
    /// gpt-oss's harmony messages (`<|channel|>commentary to=functions.NAME …<|message|>{...}`),
    /// read by `harmony::HarmonyParser` with the rest of that format, never by `CallParser`.
    Harmony,
}

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";
const MISTRAL_CALLS: &str = "[TOOL_CALLS]";
const MISTRAL_ARGS: &str = "[ARGS]";
const DS_CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
const DS_CALLS_END: &str = "<｜tool▁calls▁end｜>";
const DS_CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
const DS_CALL_END: &str = "<｜tool▁call▁end｜>";
const DS_SEP: &str = "<｜tool▁sep｜>";
const KIMI_SECTION_BEGIN: &str = "<|tool_calls_section_begin|>";
const KIMI_SECTION_END: &str = "<|tool_calls_section_end|>";
const KIMI_CALL_BEGIN: &str = "<|tool_call_begin|>";
const KIMI_CALL_END: &str = "<|tool_call_end|>";
const KIMI_ARGS: &str = "<|tool_call_argument_begin|>";
const GLM_KEY_OPEN: &str = "<arg_key>";
const GLM_KEY_CLOSE: &str = "</arg_key>";
const GLM_VALUE_OPEN: &str = "<arg_value>";
const GLM_VALUE_CLOSE: &str = "</arg_value>";
const GEMMA_OPEN: &str = "<|tool_call>";
const GEMMA_CLOSE: &str = "<tool_call|>";
const GEMMA_QUOTE: &str = "<|\"|>";
/// Where Gemma 4's template puts the tool's answer after a call: the model's turn ends there.
pub const GEMMA_RESPONSE: &str = "<|tool_response>";

/// Every marker some syntax uses, for the tokenizer to keep in decoded text.
pub const MARKERS: &[&str] = &[
    HERMES_OPEN,
    HERMES_CLOSE,
    PYTHON_TAG,
    MISTRAL_CALLS,
    MISTRAL_ARGS,
    DS_CALLS_BEGIN,
    DS_CALLS_END,
    DS_CALL_BEGIN,
    DS_CALL_END,
    DS_SEP,
    KIMI_SECTION_BEGIN,
    KIMI_SECTION_END,
    KIMI_CALL_BEGIN,
    KIMI_CALL_END,
    KIMI_ARGS,
    GLM_KEY_OPEN,
    GLM_KEY_CLOSE,
    GLM_VALUE_OPEN,
    GLM_VALUE_CLOSE,
    GEMMA_OPEN,
    GEMMA_CLOSE,
    GEMMA_QUOTE,
];

impl ToolSyntax {
    /// The syntax a chat template writes tool calls in, as mlx-lm infers it from markers in
    /// the template. `None`: the template does not mention tools at all.
    pub fn infer(template: &str) -> Option<ToolSyntax> {
        if crate::harmony::is_harmony(template) {
            Some(ToolSyntax::Harmony)
        } else if template.contains(GEMMA_OPEN) && template.contains(GEMMA_CLOSE) {
            Some(ToolSyntax::Gemma4)
        } else if template.contains(GLM_KEY_OPEN) {
            // GLM's template writes `<tool_call>` too: it must not be taken for Hermes.
            Some(ToolSyntax::Glm)
        } else if template.contains(KIMI_SECTION_BEGIN) {
            Some(ToolSyntax::KimiK2)
        } else if template.contains("<function=") && template.contains("<parameter=") {
            Some(ToolSyntax::QwenXml)
        } else if template.contains(HERMES_OPEN) {
            Some(ToolSyntax::Hermes)
        } else if template.contains(MISTRAL_CALLS) {
            Some(ToolSyntax::Mistral)
        } else if template.contains("tool▁call▁begin") {
            Some(ToolSyntax::DeepSeek)
        } else if template.contains(PYTHON_TAG) || template.contains("\"parameters\"") {
            Some(ToolSyntax::Llama3)
        } else if template.contains("tools") {
            // Tools are rendered but the call syntax is not recognisable: Hermes is the most
            // common one and what most fine-tunes learned.
            Some(ToolSyntax::Hermes)
        } else {
            None
        }
    }

    /// The name a config file uses for this syntax.
    pub fn from_name(name: &str) -> Option<ToolSyntax> {
        Some(match name {
            "hermes" => ToolSyntax::Hermes,
            "qwen3_coder" => ToolSyntax::QwenXml,
            "llama3" => ToolSyntax::Llama3,
            "mistral" => ToolSyntax::Mistral,
            "deepseek" => ToolSyntax::DeepSeek,
            "harmony" => ToolSyntax::Harmony,
            "kimi_k2" => ToolSyntax::KimiK2,
            // mlx-lm's name, and vLLM's for the same syntax in GLM-4.5 and 4.6.
            "glm47" | "glm45" => ToolSyntax::Glm,
            "gemma4" => ToolSyntax::Gemma4,
            _ => return None,
        })
    }

    /// The name a config file uses for this syntax (the inverse of `from_name`).
    pub fn name(self) -> &'static str {
        match self {
            ToolSyntax::Hermes => "hermes",
            ToolSyntax::QwenXml => "qwen3_coder",
            ToolSyntax::Llama3 => "llama3",
            ToolSyntax::Mistral => "mistral",
            ToolSyntax::DeepSeek => "deepseek",
            ToolSyntax::Harmony => "harmony",
            ToolSyntax::KimiK2 => "kimi_k2",
            ToolSyntax::Glm => "glm47",
            ToolSyntax::Gemma4 => "gemma4",
        }
    }

    /// Markers that open a call region.
    fn openers(self) -> &'static [&'static str] {
        match self {
            ToolSyntax::Hermes | ToolSyntax::QwenXml | ToolSyntax::Glm => &[HERMES_OPEN],
            ToolSyntax::Llama3 => &[PYTHON_TAG],
            ToolSyntax::KimiK2 => &[KIMI_CALL_BEGIN],
            ToolSyntax::Gemma4 => &[GEMMA_OPEN],
            ToolSyntax::Mistral => &[MISTRAL_CALLS],
            ToolSyntax::DeepSeek => &[DS_CALL_BEGIN],
            ToolSyntax::Harmony => &[],
        }
    }

    /// The marker that closes a region; without one, a region lasts to the next opener or
    /// the end of the output.
    fn closer(self) -> Option<&'static str> {
        match self {
            ToolSyntax::Hermes | ToolSyntax::QwenXml | ToolSyntax::Glm => Some(HERMES_CLOSE),
            ToolSyntax::DeepSeek => Some(DS_CALL_END),
            ToolSyntax::KimiK2 => Some(KIMI_CALL_END),
            ToolSyntax::Gemma4 => Some(GEMMA_CLOSE),
            ToolSyntax::Llama3 | ToolSyntax::Mistral | ToolSyntax::Harmony => None,
        }
    }

    /// Wrapper markers that carry nothing and are dropped from the text.
    fn wrappers(self) -> &'static [&'static str] {
        match self {
            ToolSyntax::DeepSeek => &[DS_CALLS_BEGIN, DS_CALLS_END],
            ToolSyntax::KimiK2 => &[KIMI_SECTION_BEGIN, KIMI_SECTION_END],
            _ => &[],
        }
    }

    /// The calls in one region's body (the text between its markers), as far as written;
    /// `closed`: the region's closing marker followed it.
    fn parse_region(self, body: &str, types: &ParamTypes, closed: bool) -> Vec<PartialCall> {
        match self {
            ToolSyntax::Hermes => parse_json_calls(body, ""),
            ToolSyntax::Llama3 => parse_json_calls(body, ";"),
            ToolSyntax::QwenXml => parse_xml_call(body, types).into_iter().collect(),
            ToolSyntax::Mistral => parse_mistral(body),
            ToolSyntax::DeepSeek => parse_deepseek(body).into_iter().collect(),
            ToolSyntax::KimiK2 => parse_kimi(body).into_iter().collect(),
            ToolSyntax::Glm => parse_glm(body, types, closed),
            ToolSyntax::Gemma4 => parse_gemma(body).into_iter().collect(),
            ToolSyntax::Harmony => Vec::new(),
        }
    }
}

/// One call as far as it is written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartialCall {
    pub name: Option<String>,
    /// The arguments JSON so far; each parse extends the previous one's text.
    pub arguments: String,
    /// The call is written out completely.
    pub complete: bool,
}

/// What the parser produced from some text.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Call {
        index: u32,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    },
}

/// Per tool, its parameters that are strings: XML parameter values are raw text, and only
/// the schema says whether `42` means a number or the string "42".
#[derive(Debug, Clone, Default)]
pub struct ParamTypes(Vec<(String, Vec<String>)>);

impl ParamTypes {
    pub fn from_tools(tools: Option<&Value>) -> Self {
        let mut out = Vec::new();
        for tool in tools.and_then(Value::as_array).into_iter().flatten() {
            let f = tool.get("function").unwrap_or(tool);
            let Some(name) = f.get("name").and_then(Value::as_str) else {
                continue;
            };
            let strings = f
                .pointer("/parameters/properties")
                .and_then(Value::as_object)
                .map(|props| {
                    props
                        .iter()
                        .filter(|(_, s)| s.get("type").and_then(Value::as_str) == Some("string"))
                        .map(|(k, _)| k.clone())
                        .collect()
                })
                .unwrap_or_default();
            out.push((name.to_string(), strings));
        }
        ParamTypes(out)
    }

    fn is_string(&self, tool: &str, param: &str) -> bool {
        self.0
            .iter()
            .any(|(t, ps)| t == tool && ps.iter().any(|p| p == param))
    }
}

/// Reads tool calls out of a stream of generated text.
pub struct CallParser {
    syntax: ToolSyntax,
    types: ParamTypes,
    /// Text not yet handed out: a possible marker start, or the open region's body.
    buf: String,
    in_region: bool,
    /// Calls finished in earlier regions: the next region's first call has this index.
    base: u32,
    /// For the open region: per call, whether its name was sent and how much of its
    /// arguments.
    sent: Vec<(bool, usize)>,
    /// At most this many calls (`parallel_tool_calls: false` makes it 1).
    max_calls: u32,
    /// Only whitespace was seen so far (Llama 3 may open with a bare `{`).
    at_start: bool,
    /// Whitespace-only text, held until real text follows: around calls it is dropped.
    held_space: String,
    next_id: u32,
    id_prefix: String,
    /// The call limit was reached and the model went on to another call: the rest of the
    /// output is dropped.
    dropping: bool,
}

impl CallParser {
    pub fn new(syntax: ToolSyntax, types: ParamTypes, max_calls: u32, id_prefix: &str) -> Self {
        CallParser {
            syntax,
            types,
            buf: String::new(),
            in_region: false,
            base: 0,
            sent: Vec::new(),
            max_calls,
            at_start: true,
            held_space: String::new(),
            next_id: 0,
            id_prefix: id_prefix.to_string(),
            dropping: false,
        }
    }

    /// Nothing the model writes from now on can be shown: generation may as well stop.
    pub fn is_done(&self) -> bool {
        self.dropping
    }

    /// Calls seen so far (finished or open).
    pub fn calls(&self) -> u32 {
        self.base + self.sent.iter().filter(|s| s.0).count() as u32
    }

    /// Takes more generated text; returns what became final.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        self.drain(&mut out, false);
        out
    }

    /// The output ended: flushes what is held back, and closes an open call.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        self.drain(&mut out, true);
        if self.calls() == 0 && !self.held_space.is_empty() {
            out.push(Piece::Text(std::mem::take(&mut self.held_space)));
        }
        out
    }

    fn drain(&mut self, out: &mut Vec<Piece>, at_end: bool) {
        loop {
            if self.dropping {
                self.buf.clear();
                return;
            }
            if self.in_region {
                if !self.step_region(out, at_end) {
                    return;
                }
                continue;
            }
            if self.at_start && self.syntax == ToolSyntax::Llama3 {
                let trimmed = self.buf.trim_start();
                if trimmed.is_empty() && !at_end {
                    return;
                }
                if trimmed.starts_with('{') {
                    // A bare JSON call: the region starts at the brace.
                    let skip = self.buf.len() - trimmed.len();
                    self.buf.drain(..skip);
                    self.open_region();
                    continue;
                }
            }
            let wrappers = self.syntax.wrappers();
            let markers: Vec<&str> = self
                .syntax
                .openers()
                .iter()
                .chain(wrappers)
                .copied()
                .collect();
            match find_marker(&self.buf, &markers) {
                Found::At(pos, len) if wrappers.iter().any(|w| self.buf[pos..].starts_with(w)) => {
                    self.emit_text(out, pos);
                    self.buf.drain(..len);
                }
                Found::At(pos, len) if self.calls() < self.max_calls => {
                    self.emit_text(out, pos);
                    self.buf.drain(..len);
                    self.open_region();
                }
                Found::At(pos, _) => {
                    // No more calls allowed: what follows is dropped, not shown as text.
                    self.emit_text(out, pos);
                    self.dropping = true;
                    self.buf.clear();
                    return;
                }
                Found::Partial(pos) if !at_end => {
                    self.emit_text(out, pos);
                    return;
                }
                _ => {
                    let all = self.buf.len();
                    self.emit_text(out, all);
                    return;
                }
            }
        }
    }

    fn open_region(&mut self) {
        self.in_region = true;
        self.at_start = false;
        self.sent.clear();
    }

    fn emit_text(&mut self, out: &mut Vec<Piece>, upto: usize) {
        if upto == 0 {
            return;
        }
        let mut text: String = self.buf.drain(..upto).collect();
        if text.trim().is_empty() {
            self.held_space.push_str(&text);
            return;
        }
        self.at_start = false;
        text.insert_str(0, &std::mem::take(&mut self.held_space));
        match out.last_mut() {
            Some(Piece::Text(t)) => t.push_str(&text),
            _ => out.push(Piece::Text(text)),
        }
    }

    /// Advances the open region. Returns whether it closed (and more may follow).
    fn step_region(&mut self, out: &mut Vec<Piece>, at_end: bool) -> bool {
        let closer = self.syntax.closer();
        let (body_end, closed_at) = match closer.and_then(|c| self.buf.find(c).map(|i| (i, c))) {
            Some((i, c)) => (i, Some(i + c.len())),
            None => {
                // Without a closer, the next opener ends the region.
                match closer {
                    None => match find_marker(&self.buf, self.syntax.openers()) {
                        Found::At(i, _) => (i, Some(i)),
                        Found::Partial(i) if !at_end => (i, None),
                        _ => (self.buf.len(), None),
                    },
                    Some(c) => {
                        // Hold back a partial closer at the end of the buffer.
                        let safe = match find_marker(&self.buf, &[c]) {
                            Found::Partial(i) if !at_end => i,
                            _ => self.buf.len(),
                        };
                        (safe, None)
                    }
                }
            }
        };
        let done = closed_at.is_some() || at_end;
        let mut calls =
            self.syntax
                .parse_region(&self.buf[..body_end], &self.types, closed_at.is_some());
        let room = self.max_calls.saturating_sub(self.base) as usize;
        calls.truncate(room);
        if done {
            for c in &mut calls {
                if c.name.is_some() && !c.complete {
                    c.arguments = close_json(&c.arguments);
                }
            }
        }
        for (i, call) in calls.iter().enumerate() {
            let Some(name) = &call.name else { break };
            if self.sent.len() <= i {
                self.sent.push((false, 0));
            }
            let (name_sent, args_sent) = self.sent[i];
            let args = if done && call.arguments.is_empty() {
                "{}"
            } else {
                call.arguments.as_str()
            };
            let new_args = args.get(args_sent..).unwrap_or_default().to_string();
            if !name_sent {
                let id = format!("{}{}", self.id_prefix, self.next_id);
                self.next_id += 1;
                out.push(Piece::Call {
                    index: self.base + i as u32,
                    id: Some(id),
                    name: Some(name.clone()),
                    arguments: new_args,
                });
            } else if !new_args.is_empty() {
                out.push(Piece::Call {
                    index: self.base + i as u32,
                    id: None,
                    name: None,
                    arguments: new_args,
                });
            }
            self.sent[i] = (true, args.len());
        }
        if !done {
            return false;
        }
        let named = self.sent.len() as u32;
        if named == 0 {
            // Not a call after all: nothing was sent for it, so it goes out as text.
            let end = closed_at.unwrap_or(self.buf.len());
            let opener = self.syntax.openers()[0];
            let raw: String = self.buf.drain(..end).collect();
            let text = if self.syntax == ToolSyntax::Llama3 && raw.trim_start().starts_with('{') {
                raw
            } else {
                format!("{opener}{raw}")
            };
            let text = std::mem::take(&mut self.held_space) + &text;
            self.at_start = false;
            match out.last_mut() {
                Some(Piece::Text(t)) => t.push_str(&text),
                _ => out.push(Piece::Text(text)),
            }
        } else {
            let end = closed_at.unwrap_or(self.buf.len());
            self.buf.drain(..end);
            self.held_space.clear();
        }
        self.base += named;
        self.sent.clear();
        self.in_region = false;
        !at_end || !self.buf.is_empty()
    }
}

enum Found {
    /// A whole marker at this byte offset, this long.
    At(usize, usize),
    /// No marker, but the text from this offset could begin one.
    Partial(usize),
    None,
}

/// The first of `markers` in `text`, or where a marker might be starting at its end.
fn find_marker(text: &str, markers: &[&str]) -> Found {
    let first = markers
        .iter()
        .filter_map(|m| text.find(m).map(|i| (i, m.len())))
        .min();
    if let Some((i, len)) = first {
        return Found::At(i, len);
    }
    let mut cut = text.len();
    for m in markers {
        for k in (1..m.len().min(text.len() + 1)).rev() {
            if m.is_char_boundary(k) && text.ends_with(&m[..k]) {
                cut = cut.min(text.len() - k);
                break;
            }
        }
    }
    if cut < text.len() {
        Found::Partial(cut)
    } else {
        Found::None
    }
}

/// Hermes and Llama bodies: JSON call objects, `sep`-separated (or just whitespace).
fn parse_json_calls(body: &str, sep: &str) -> Vec<PartialCall> {
    let mut calls = Vec::new();
    let mut rest = body.trim_start();
    // A list of calls is accepted too (some fine-tunes write one).
    if let Some(inner) = rest.strip_prefix('[') {
        rest = inner.trim_start();
    }
    while rest.starts_with('{') {
        let (call, used) = parse_call_object(rest);
        calls.push(call);
        let Some(used) = used else { break };
        rest = rest[used..].trim_start();
        for s in [sep, ",", "]"] {
            if !s.is_empty() {
                if let Some(r) = rest.strip_prefix(s) {
                    rest = r.trim_start();
                }
            }
        }
    }
    calls
}

/// A `{"name": ..., "arguments": ...}` object (`parameters` is Llama's name for the
/// arguments). Returns the call and, once the object is closed, the bytes it took.
fn parse_call_object(s: &str) -> (PartialCall, Option<usize>) {
    let mut call = PartialCall::default();
    let b = s.as_bytes();
    let mut i = 1; // past '{'
    loop {
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b'}') => {
                call.complete = true;
                return (call, Some(i + 1));
            }
            Some(b',') => {
                i += 1;
                continue;
            }
            Some(b'"') => {}
            _ => return (call, None),
        }
        let Some(key_end) = scan_value(b, i) else {
            return (call, None);
        };
        let key: String = serde_json::from_str(&s[i..key_end]).unwrap_or_default();
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return (call, None);
        }
        let start = skip_ws(b, i + 1);
        let end = scan_value(b, start);
        match key.as_str() {
            "name" => match end {
                Some(e) => call.name = serde_json::from_str::<String>(&s[start..e]).ok(),
                None => return (call, None),
            },
            "arguments" | "parameters" => {
                let raw = &s[start..end.unwrap_or(s.len())];
                if raw.starts_with('"') {
                    // Arguments encoded as a JSON string: usable only once complete.
                    if let Some(e) = end {
                        call.arguments = serde_json::from_str(&s[start..e]).unwrap_or_default();
                    }
                } else {
                    call.arguments = raw.to_string();
                }
            }
            _ => {}
        }
        match end {
            Some(e) => i = e,
            None => return (call, None),
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// The end (exclusive) of the JSON value starting at `i`, if it is complete.
fn scan_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => {
            let mut j = i + 1;
            while j < b.len() {
                match b[j] {
                    b'\\' => j += 2,
                    b'"' => return Some(j + 1),
                    _ => j += 1,
                }
            }
            None
        }
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = scan_value(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            // A number, true, false or null: ends at a delimiter.
            let j = (i..b.len()).find(|&j| {
                matches!(b[j], b',' | b'}' | b']' | b';') || b[j].is_ascii_whitespace()
            })?;
            Some(j)
        }
    }
}

/// Closes what an unfinished JSON text left open, so a call cut short still has arguments
/// that parse where possible (the model ran out of tokens mid-call).
fn close_json(partial: &str) -> String {
    if partial.trim().is_empty() {
        return "{}".into();
    }
    let mut stack = Vec::new();
    let mut in_str = false;
    let mut esc = false;
    for c in partial.chars() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' => stack.push('}'),
            '[' => stack.push(']'),
            '}' | ']' => {
                stack.pop();
            }
            _ => {}
        }
    }
    let mut out = partial.to_string();
    if in_str {
        out.push('"');
    }
    while let Some(c) = stack.pop() {
        out.push(c);
    }
    out
}

/// Qwen3-Coder's XML call: `<function=NAME>` and `<parameter=P>VALUE</parameter>` pairs.
/// The arguments JSON grows by one whole parameter at a time.
fn parse_xml_call(body: &str, types: &ParamTypes) -> Option<PartialCall> {
    let start = body.find("<function=")? + "<function=".len();
    let name_end = body[start..].find('>')? + start;
    let name = body[start..name_end].trim().to_string();
    let mut call = PartialCall {
        name: Some(name.clone()),
        arguments: String::new(),
        complete: false,
    };
    let mut rest = &body[name_end + 1..];
    let mut params = Map::new();
    let mut parts = Vec::new();
    while let Some(p) = rest.find("<parameter=") {
        let after = &rest[p + "<parameter=".len()..];
        let Some(pn_end) = after.find('>') else { break };
        let pname = after[..pn_end].trim().to_string();
        let value_text = &after[pn_end + 1..];
        let Some(v_end) = value_text.find("</parameter>") else {
            break;
        };
        let raw = value_text[..v_end]
            .strip_prefix('\n')
            .unwrap_or(&value_text[..v_end]);
        let raw = raw.strip_suffix('\n').unwrap_or(raw);
        let value = if types.is_string(&name, &pname) {
            Value::String(raw.to_string())
        } else {
            serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
        };
        parts.push(format!("{}: {}", Value::String(pname.clone()), value));
        params.insert(pname, value);
        rest = &value_text[v_end + "</parameter>".len()..];
    }
    if !parts.is_empty() {
        call.arguments = format!("{{{}", parts.join(", "));
    }
    if rest.contains("</function>") {
        call.arguments = if parts.is_empty() {
            "{}".into()
        } else {
            format!("{}}}", call.arguments)
        };
        call.complete = true;
    }
    Some(call)
}

/// Mistral: after `[TOOL_CALLS]`, either a JSON list of call objects or `name[ARGS]{...}`
/// (or `name{...}`).
fn parse_mistral(body: &str) -> Vec<PartialCall> {
    let trimmed = body.trim_start();
    if trimmed.starts_with('[') || trimmed.starts_with('{') {
        return parse_json_calls(trimmed, "");
    }
    let Some(brace) = trimmed.find('{') else {
        return Vec::new();
    };
    let name = trimmed[..brace]
        .trim()
        .trim_end_matches(MISTRAL_ARGS)
        .trim()
        .to_string();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Vec::new();
    }
    let args = &trimmed[brace..];
    let end = scan_value(args.as_bytes(), 0);
    vec![PartialCall {
        name: Some(name),
        arguments: args[..end.unwrap_or(args.len())].to_string(),
        complete: end.is_some(),
    }]
}

/// DeepSeek: `function<｜tool▁sep｜>NAME\n```json\n{...}\n```` (V3, R1) or
/// `NAME<｜tool▁sep｜>{...}` (V3.1).
fn parse_deepseek(body: &str) -> Option<PartialCall> {
    let (head, tail) = body.split_once(DS_SEP)?;
    let (name, args_text) = if head.trim() == "function" {
        let (name, rest) = tail.split_once('\n')?;
        (name.trim().to_string(), rest)
    } else {
        (head.trim().to_string(), tail)
    };
    let (arguments, complete) = json_object_from(args_text);
    Some(PartialCall {
        name: Some(name),
        arguments,
        complete,
    })
}

/// The JSON object starting at the first `{` of `text`, as far as written, and whether it
/// is complete.
fn json_object_from(text: &str) -> (String, bool) {
    match text.find('{') {
        Some(b) => {
            let args = &text[b..];
            let end = scan_value(args.as_bytes(), 0);
            (args[..end.unwrap_or(args.len())].to_string(), end.is_some())
        }
        None => (String::new(), false),
    }
}

/// Kimi K2: `functions.NAME:IDX<|tool_call_argument_begin|>{...}`. The name is known once
/// the argument marker follows it.
fn parse_kimi(body: &str) -> Option<PartialCall> {
    let (id, args_text) = body.split_once(KIMI_ARGS)?;
    let id = id.trim();
    let id = id.strip_prefix("functions.").unwrap_or(id);
    // The index after the colon counts calls over the conversation; it is not the name's.
    let name = match id.rsplit_once(':') {
        Some((name, index)) if index.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => id,
    };
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    let (arguments, complete) = json_object_from(args_text);
    Some(PartialCall {
        name: Some(name.to_string()),
        arguments,
        complete,
    })
}

/// GLM: `NAME` then `<arg_key>K</arg_key><arg_value>V</arg_value>` pairs, whitespace allowed
/// between the parts. A value is raw text where the schema says string, JSON otherwise (raw
/// text again if it does not parse). The arguments JSON grows by one whole pair at a time.
fn parse_glm(body: &str, types: &ParamTypes, closed: bool) -> Vec<PartialCall> {
    let body = body.trim_start();
    if body.starts_with('{') {
        // A Hermes JSON call inside GLM's tags, which GLM models sometimes write.
        return parse_json_calls(body, "");
    }
    // The name ends at the line's end or the first tag; with neither, only the closing tag
    // says it is whole.
    let name_end = match body.find(['\n', '<']) {
        Some(i) => i,
        None if closed => body.len(),
        None => return Vec::new(),
    };
    let name = body[..name_end].trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Vec::new();
    }
    let mut rest = &body[name_end..];
    let mut parts = Vec::new();
    while let Some(key_text) = rest.trim_start().strip_prefix(GLM_KEY_OPEN) {
        let Some((key, after_key)) = key_text.split_once(GLM_KEY_CLOSE) else {
            break;
        };
        let Some(value_text) = after_key.trim_start().strip_prefix(GLM_VALUE_OPEN) else {
            break;
        };
        let Some((raw, after_value)) = value_text.split_once(GLM_VALUE_CLOSE) else {
            break;
        };
        let key = key.trim();
        let value = if types.is_string(name, key) {
            Value::String(raw.to_string())
        } else {
            serde_json::from_str(raw.trim()).unwrap_or_else(|_| Value::String(raw.to_string()))
        };
        parts.push(format!("{}: {value}", Value::String(key.to_string())));
        rest = after_value;
    }
    let arguments = match (parts.is_empty(), closed) {
        (true, true) => "{}".to_string(),
        (true, false) => String::new(),
        (false, true) => format!("{{{}}}", parts.join(", ")),
        (false, false) => format!("{{{}", parts.join(", ")),
    };
    vec![PartialCall {
        name: Some(name.to_string()),
        arguments,
        complete: closed,
    }]
}

/// Gemma 4: `call:NAME{key:value,...}`. The arguments JSON grows by one whole top-level
/// pair at a time.
fn parse_gemma(body: &str) -> Option<PartialCall> {
    let rest = body.trim_start().strip_prefix("call:")?;
    let brace = rest.find('{')?;
    let name = rest[..brace].trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    let object = &rest[brace..];
    let mut parts = Vec::new();
    let mut complete = false;
    let mut i = 1; // past '{'
    loop {
        i = skip_ws(object.as_bytes(), i);
        let tail = &object[i..];
        if tail.starts_with('}') {
            complete = true;
            break;
        }
        if tail.starts_with(',') {
            i += 1;
            continue;
        }
        let Some((key, after_key)) = gemma_key(object, i) else {
            break;
        };
        let Some((value, end)) = gemma_value(object, after_key) else {
            break;
        };
        parts.push(format!("{}: {value}", Value::String(key)));
        i = end;
    }
    let arguments = match (parts.is_empty(), complete) {
        (true, true) => "{}".to_string(),
        (true, false) => String::new(),
        (false, true) => format!("{{{}}}", parts.join(", ")),
        (false, false) => format!("{{{}", parts.join(", ")),
    };
    Some(PartialCall {
        name: Some(name.to_string()),
        arguments,
        complete,
    })
}

/// A Gemma 4 key at `i` (bare, or between `<|"|>` marks) and where its value starts, past
/// the colon.
fn gemma_key(s: &str, i: usize) -> Option<(String, usize)> {
    let i = skip_ws(s.as_bytes(), i);
    let (key, end) = match s[i..].strip_prefix(GEMMA_QUOTE) {
        Some(quoted) => {
            let len = quoted.find(GEMMA_QUOTE)?;
            (quoted[..len].to_string(), i + 2 * GEMMA_QUOTE.len() + len)
        }
        None => {
            let len = s[i..].find(':')?;
            (s[i..i + len].trim().to_string(), i + len)
        }
    };
    let colon = skip_ws(s.as_bytes(), end);
    (s[colon..].starts_with(':') && !key.is_empty()).then_some((key, colon + 1))
}

/// The Gemma 4 value at `i` as JSON, and where it ends; `None` while it is not complete (a
/// bare number or word ends only at the delimiter after it).
fn gemma_value(s: &str, i: usize) -> Option<(Value, usize)> {
    let i = skip_ws(s.as_bytes(), i);
    let tail = &s[i..];
    if let Some(quoted) = tail.strip_prefix(GEMMA_QUOTE) {
        let len = quoted.find(GEMMA_QUOTE)?;
        let end = i + 2 * GEMMA_QUOTE.len() + len;
        return Some((Value::String(quoted[..len].to_string()), end));
    }
    match tail.as_bytes().first()? {
        b'{' => {
            let mut map = Map::new();
            let mut j = i + 1;
            loop {
                j = skip_ws(s.as_bytes(), j);
                match s.as_bytes().get(j)? {
                    b'}' => return Some((Value::Object(map), j + 1)),
                    b',' => j += 1,
                    _ => {
                        let (key, at) = gemma_key(s, j)?;
                        let (value, end) = gemma_value(s, at)?;
                        map.insert(key, value);
                        j = end;
                    }
                }
            }
        }
        b'[' => {
            let mut list = Vec::new();
            let mut j = i + 1;
            loop {
                j = skip_ws(s.as_bytes(), j);
                match s.as_bytes().get(j)? {
                    b']' => return Some((Value::Array(list), j + 1)),
                    b',' => j += 1,
                    _ => {
                        let (value, end) = gemma_value(s, j)?;
                        list.push(value);
                        j = end;
                    }
                }
            }
        }
        _ => {
            let len = tail.find([',', '}', ']'])?;
            let word = tail[..len].trim();
            let value = match word {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                // Python writes None; minijinja, none.
                "null" | "None" | "none" => Value::Null,
                _ => serde_json::from_str::<serde_json::Number>(word)
                    .map(Value::Number)
                    .unwrap_or_else(|_| Value::String(word.to_string())),
            };
            Some((value, i + len))
        }
    }
}

/// The tools a forced call may use: all of them, or the one `tool_choice` names.
fn chosen_tools<'a>(tools: &'a [Value], only: Option<&str>) -> Vec<(&'a str, Value)> {
    tools
        .iter()
        .filter_map(|t| {
            let f = t.get("function").unwrap_or(t);
            let name = f.get("name")?.as_str()?;
            if only.is_some_and(|o| o != name) {
                return None;
            }
            let params = f
                .get("parameters")
                .cloned()
                .filter(Value::is_object)
                .unwrap_or_else(|| json!({"type": "object"}));
            Some((name, params))
        })
        .collect()
}

/// A lark grammar forcing one call (or, with `parallel`, one or more) of `tools` in
/// `syntax`, each call's arguments valid against its tool's schema. The server asks for one:
/// a grammar that allows more lets a small model repeat its call until it runs out of
/// tokens.
pub fn forced_call_grammar(
    syntax: ToolSyntax,
    tools: &[Value],
    only: Option<&str>,
    parallel: bool,
    trie: &llguidance::toktrie::TokTrie,
) -> Result<String, String> {
    let chosen = chosen_tools(tools, only);
    if chosen.is_empty() {
        return Err("no tool to call".into());
    }
    for (_, params) in &chosen {
        grammar::check_schema_bounds(params)?;
    }
    let lit = |s: &str| grammar::lark_literal(trie, s);
    let schema = |v: Value| {
        serde_json::to_string(&grammar::with_options(v, false)).unwrap_or_else(|_| "{}".into())
    };
    let mut rules = Vec::new();
    let mut alts = Vec::new();
    // Some Gemma 4 value is not typed by its schema: the rules for any value are needed.
    let mut gemma_any = false;
    for (i, (name, params)) in chosen.iter().enumerate() {
        let quoted_name = serde_json::to_string(name).unwrap_or_default();
        let rule = match syntax {
            ToolSyntax::Hermes | ToolSyntax::Llama3 => {
                let key = if syntax == ToolSyntax::Llama3 {
                    "parameters"
                } else {
                    "arguments"
                };
                let call = json!({
                    "type": "object",
                    "properties": {"name": {"const": name}, key: params},
                    "required": ["name", key],
                    "additionalProperties": false,
                });
                format!("call{i}: %json {}", schema(call))
            }
            ToolSyntax::Mistral => {
                rules.push(format!("args{i}: %json {}", schema(params.clone())));
                format!(
                    "call{i}: {} {quoted_name} {} args{i}",
                    lit(MISTRAL_CALLS),
                    lit(MISTRAL_ARGS)
                )
            }
            ToolSyntax::DeepSeek => {
                rules.push(format!("args{i}: %json {}", schema(params.clone())));
                format!(
                    "call{i}: {} \"function\" {} {quoted_name} \"\\n```json\\n\" args{i} \"\\n```\" {}",
                    lit(DS_CALL_BEGIN),
                    lit(DS_SEP),
                    lit(DS_CALL_END)
                )
            }
            ToolSyntax::Harmony => {
                rules.push(format!("args{i}: %json {}", schema(params.clone())));
                format!(
                    "call{i}: {}",
                    crate::harmony::call_rule(trie, name, &format!("args{i}"))
                )
            }
            ToolSyntax::KimiK2 => {
                rules.push(format!("args{i}: %json {}", schema(params.clone())));
                let id = serde_json::to_string(&format!("functions.{name}:")).unwrap_or_default();
                // The index counts calls over the conversation: the model writes its own.
                format!(
                    "call{i}: {} {id} /[0-9]{{1,3}}/ {} args{i} {}",
                    lit(KIMI_CALL_BEGIN),
                    lit(KIMI_ARGS),
                    lit(KIMI_CALL_END)
                )
            }
            ToolSyntax::Glm => {
                let pairs = glm_pairs(i, params, &lit, &schema, &mut rules);
                // 4.5 and 4.6 put newlines between the parts, 4.7 does not: either is fine.
                format!(
                    "call{i}: {} {quoted_name} (\"\\n\")? {pairs} {}",
                    lit(HERMES_OPEN),
                    lit(HERMES_CLOSE)
                )
            }
            ToolSyntax::Gemma4 => {
                let quote = lit(GEMMA_QUOTE);
                let mut gemma = GemmaRules {
                    quote: &quote,
                    rules: &mut rules,
                    count: 0,
                    any: false,
                };
                let object = gemma.object(&format!("g{i}"), params);
                gemma_any |= gemma.any;
                let head = serde_json::to_string(&format!("call:{name}")).unwrap_or_default();
                format!(
                    "call{i}: {} {head} {object} {}",
                    lit(GEMMA_OPEN),
                    lit(GEMMA_CLOSE)
                )
            }
            ToolSyntax::QwenXml => {
                let names: Vec<String> = params
                    .get("properties")
                    .and_then(Value::as_object)
                    .map(|p| {
                        p.keys()
                            .map(|k| serde_json::to_string(k).unwrap_or_default())
                            .collect()
                    })
                    .unwrap_or_default();
                let pname = if names.is_empty() {
                    "/[a-zA-Z0-9_]+/".to_string()
                } else {
                    format!("({})", names.join(" | "))
                };
                // The value and its closing tag are one lexeme: the lexer is greedy, and a
                // value may hold newlines, so only one regex can tell where the value ends.
                rules.push(format!(
                    "param{i}: \"<parameter=\" {pname} \">\\n\" /[^<]*\\n<\\/parameter>\\n/"
                ));
                format!(
                    "call{i}: {} \"\\n<function=\" {quoted_name} \">\\n\" param{i}* \"</function>\\n\" {}",
                    lit(HERMES_OPEN),
                    lit(HERMES_CLOSE)
                )
            }
        };
        rules.push(rule);
        alts.push(format!("call{i}"));
    }
    let one = match syntax {
        ToolSyntax::Hermes => format!(
            "{} \"\\n\" ({}) \"\\n\" {}",
            lit(HERMES_OPEN),
            alts.join(" | "),
            lit(HERMES_CLOSE)
        ),
        _ => format!("({})", alts.join(" | ")),
    };
    if gemma_any {
        rules.extend(gemma_any_rules(&lit(GEMMA_QUOTE)));
    }
    let sep = match syntax {
        ToolSyntax::Llama3 => "\"; \"",
        ToolSyntax::Mistral
        | ToolSyntax::DeepSeek
        | ToolSyntax::Harmony
        | ToolSyntax::KimiK2
        | ToolSyntax::Gemma4 => "",
        ToolSyntax::Glm => "(\"\\n\")?",
        _ => "\"\\n\"",
    };
    let calls = if parallel {
        format!("one ({sep} one)*")
    } else {
        "one".to_string()
    };
    let start = match syntax {
        ToolSyntax::DeepSeek => format!("{} {calls} {}", lit(DS_CALLS_BEGIN), lit(DS_CALLS_END)),
        ToolSyntax::KimiK2 => format!(
            "{} {calls} {}",
            lit(KIMI_SECTION_BEGIN),
            lit(KIMI_SECTION_END)
        ),
        _ => calls,
    };
    let start = format!("start: {start}");
    Ok(format!("{start}\none: {one}\n{}\n", rules.join("\n")))
}

/// The `(pair, required)` items of an object's properties written in order, `sep` between
/// two: the required ones always, the optional ones or not. Adds the rules it needs (named
/// from `prefix`) and returns the expression, `None` if there are no pairs.
fn pair_sequence(
    prefix: &str,
    pairs: &[(String, bool)],
    sep: &str,
    rules: &mut Vec<String>,
) -> Option<String> {
    let n = pairs.len();
    // What may follow once some pair is written, from pair `k` on.
    let after = |k: usize| -> String {
        pairs[k..]
            .iter()
            .map(|(p, required)| {
                if *required {
                    format!("{sep} {p}")
                } else {
                    format!("({sep} {p})?")
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    // `{prefix}_s{k}`: one pair or more from pair `k` on, none written before.
    for k in (0..n).rev() {
        let (pair, required) = &pairs[k];
        let mut alts = format!("{pair} {}", after(k + 1));
        if !required && k + 1 < n {
            alts = format!("{alts} | {prefix}_s{}", k + 1);
        }
        rules.push(format!("{prefix}_s{k}: {alts}"));
    }
    if n == 0 {
        None
    } else if pairs.iter().all(|(_, required)| !required) {
        Some(format!("({prefix}_s0)?"))
    } else {
        Some(format!("{prefix}_s0"))
    }
}

/// Whether `schema` requires `key`.
fn is_required(schema: &Value, key: &str) -> bool {
    schema
        .get("required")
        .and_then(Value::as_array)
        .is_some_and(|r| r.iter().any(|k| k == key))
}

/// Raw text of a string with the schema's length bounds, as a lark expression that never
/// needs an empty lexeme. `<` is left out: it would start the closing marker.
fn raw_string(schema: &Value) -> String {
    let bound = |k: &str| schema.get(k).and_then(Value::as_u64);
    let min = bound("minLength").unwrap_or(0).max(1);
    let max = bound("maxLength")
        .map(|m| m.to_string())
        .unwrap_or_default();
    let text = if min == 1 && max.is_empty() {
        "/[^<]+/".to_string()
    } else {
        format!("/[^<]{{{min},{max}}}/")
    };
    if bound("minLength").unwrap_or(0) == 0 {
        format!("({text})?")
    } else {
        text
    }
}

/// A string schema's `enum` as lark alternatives of its raw texts, if it has one.
fn string_enum(schema: &Value, quote: &str) -> Option<String> {
    let values: Vec<String> = schema
        .get("enum")?
        .as_array()?
        .iter()
        .map(|v| {
            Some(format!(
                "{quote} {} {quote}",
                serde_json::to_string(v.as_str()?).ok()?
            ))
        })
        .collect::<Option<_>>()?;
    (!values.is_empty()).then(|| format!("({})", values.join(" | ")))
}

/// GLM's `<arg_key>K</arg_key><arg_value>V</arg_value>` pairs for call `i`'s schema, in the
/// schema's order: string values as raw text, others as JSON valid against their schema.
fn glm_pairs(
    i: usize,
    params: &Value,
    lit: &dyn Fn(&str) -> String,
    schema: &dyn Fn(Value) -> String,
    rules: &mut Vec<String>,
) -> String {
    let nl = "(\"\\n\")?";
    let pair = |key: &str, value: &str| {
        format!(
            "{} {key} {} {nl} {} {value} {} {nl}",
            lit(GLM_KEY_OPEN),
            lit(GLM_KEY_CLOSE),
            lit(GLM_VALUE_OPEN),
            lit(GLM_VALUE_CLOSE)
        )
    };
    let Some(props) = params.get("properties").and_then(Value::as_object) else {
        // No schema for the arguments: any keys, any values.
        rules.push(format!(
            "glm{i}_any: {}",
            pair("/[A-Za-z0-9_.-]+/", "(/[^<]+/)?")
        ));
        return format!("glm{i}_any*");
    };
    let mut pairs = Vec::new();
    for (j, (key, prop)) in props.iter().enumerate() {
        let value = if prop.get("type").and_then(Value::as_str) == Some("string") {
            string_enum(prop, "").unwrap_or_else(|| raw_string(prop))
        } else {
            rules.push(format!("glm{i}_v{j}: %json {}", schema(prop.clone())));
            format!("glm{i}_v{j}")
        };
        let quoted_key = serde_json::to_string(key).unwrap_or_default();
        rules.push(format!("glm{i}_p{j}: {}", pair(&quoted_key, &value)));
        pairs.push((format!("glm{i}_p{j}"), is_required(params, key)));
    }
    pair_sequence(&format!("glm{i}"), &pairs, "", rules).unwrap_or_default()
}

/// Lark rules for Gemma 4's argument syntax, driven by the tool's schema where it says a
/// plain type, any value where it does not.
struct GemmaRules<'a> {
    /// Gemma's string mark, as a lark literal.
    quote: &'a str,
    rules: &'a mut Vec<String>,
    /// Rules made so far, for unique names.
    count: usize,
    /// `gemma_any` is used: its rules must be added.
    any: bool,
}

impl GemmaRules<'_> {
    /// The expression for one value of `schema`.
    fn value(&mut self, prefix: &str, schema: &Value) -> String {
        let q = self.quote;
        if let Some(alts) = string_enum(schema, q) {
            return alts;
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("string") => format!("{q} {} {q}", raw_string(schema)),
            Some("integer") => "/-?(0|[1-9][0-9]*)/".into(),
            Some("number") => "/-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?/".into(),
            Some("boolean") => "(\"true\" | \"false\")".into(),
            Some("null") => "\"null\"".into(),
            Some("object") if schema.get("properties").is_some() => {
                self.count += 1;
                let name = format!("{prefix}_o{}", self.count);
                let object = self.object(&name, schema);
                self.rules.push(format!("{name}: {object}"));
                name
            }
            Some("array") => {
                self.count += 1;
                let name = format!("{prefix}_a{}", self.count);
                let item = match schema.get("items") {
                    Some(items) if items.is_object() => self.value(&name, items),
                    _ => self.any(),
                };
                self.rules.push(format!("{name}_i: {item}"));
                self.rules
                    .push(format!("{name}: \"[\" ({name}_i (\",\" {name}_i)*)? \"]\""));
                name
            }
            _ => self.any(),
        }
    }

    /// `{key:value,...}` for an object schema: its properties in the template's order
    /// (`dictsort`, which ignores case), keys bare.
    fn object(&mut self, prefix: &str, schema: &Value) -> String {
        let Some(props) = schema.get("properties").and_then(Value::as_object) else {
            self.any = true;
            return "gemma_object".into();
        };
        let mut keys: Vec<(&String, &Value)> = props.iter().collect();
        keys.sort_by_key(|(k, _)| k.to_lowercase());
        let mut pairs = Vec::new();
        for (j, (key, prop)) in keys.into_iter().enumerate() {
            let value = self.value(&format!("{prefix}_{j}"), prop);
            let head = serde_json::to_string(&format!("{key}:")).unwrap_or_default();
            self.rules.push(format!("{prefix}_p{j}: {head} {value}"));
            pairs.push((format!("{prefix}_p{j}"), is_required(schema, key)));
        }
        let inner = pair_sequence(prefix, &pairs, "\",\"", self.rules).unwrap_or_default();
        format!("\"{{\" {inner} \"}}\"")
    }

    fn any(&mut self) -> String {
        self.any = true;
        "gemma_any".into()
    }
}

/// Any Gemma 4 value: the rules behind `gemma_any` and `gemma_object`.
fn gemma_any_rules(quote: &str) -> Vec<String> {
    vec![
        format!(
            "gemma_any: {quote} (/[^<]+/)? {quote} | /-?[0-9]+(\\.[0-9]+)?([eE][+-]?[0-9]+)?/ \
             | \"true\" | \"false\" | \"null\" | gemma_object \
             | \"[\" (gemma_any (\",\" gemma_any)*)? \"]\""
        ),
        "gemma_object: \"{\" (gemma_pair (\",\" gemma_pair)*)? \"}\"".into(),
        "gemma_pair: /[A-Za-z_][A-Za-z0-9_]*/ \":\" gemma_any".into(),
    ]
}

/// The system prompt that teaches tools to a model whose template knows none, in the
/// Hermes syntax the parser then reads.
pub fn tool_system_prompt(tools: &Value) -> String {
    let mut listed = String::new();
    for tool in tools.as_array().into_iter().flatten() {
        listed.push_str(&tool.get("function").unwrap_or(tool).to_string());
        listed.push('\n');
    }
    format!(
        "You can call these tools (JSON Schema signatures):\n<tools>\n{listed}</tools>\n\
         To call a tool, answer with a JSON object inside <tool_call></tool_call> tags:\n\
         <tool_call>\n{{\"name\": \"tool name\", \"arguments\": {{...}}}}\n</tool_call>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` in pieces of `step` characters; returns the joined text and the calls
    /// as (name, arguments), checking every call's first delta carries id and name.
    fn run(syntax: ToolSyntax, text: &str, step: usize) -> (String, Vec<(String, String)>) {
        run_with(syntax, ParamTypes::default(), text, step, u32::MAX)
    }

    fn run_with(
        syntax: ToolSyntax,
        types: ParamTypes,
        text: &str,
        step: usize,
        max: u32,
    ) -> (String, Vec<(String, String)>) {
        let mut p = CallParser::new(syntax, types, max, "call_");
        let chars: Vec<char> = text.chars().collect();
        let mut pieces = Vec::new();
        for chunk in chars.chunks(step) {
            pieces.extend(p.push(&chunk.iter().collect::<String>()));
        }
        pieces.extend(p.finish());
        collect(pieces)
    }

    /// The joined text and the calls of `pieces`, checking every call's first delta carries
    /// id and name.
    fn collect(pieces: Vec<Piece>) -> (String, Vec<(String, String)>) {
        let mut content = String::new();
        let mut calls: Vec<(String, String)> = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Text(t) => content.push_str(&t),
                Piece::Call {
                    index,
                    id,
                    name,
                    arguments,
                } => {
                    let i = index as usize;
                    if i == calls.len() {
                        assert!(id.is_some(), "first delta of call {i} has its id");
                        calls.push((name.expect("first delta has the name"), arguments));
                    } else {
                        assert!(
                            id.is_none() && name.is_none(),
                            "later deltas only add arguments"
                        );
                        calls[i].1.push_str(&arguments);
                    }
                }
            }
        }
        (content, calls)
    }

    fn args(calls: &[(String, String)], i: usize) -> Value {
        serde_json::from_str(&calls[i].1).expect("arguments are JSON")
    }

    #[test]
    fn hermes_calls_split_anywhere_with_text_before() {
        let text = "Let me check.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": [1, 2]}}\n</tool_call>\n<tool_call>\n{\"name\": \"time\", \"arguments\": {}}\n</tool_call>";
        for step in [1, 2, 3, 7, 1000] {
            let (content, calls) = run(ToolSyntax::Hermes, text, step);
            assert_eq!(content.trim(), "Let me check.", "step {step}");
            assert_eq!(calls.len(), 2, "step {step}");
            assert_eq!(calls[0].0, "get_weather");
            assert_eq!(args(&calls, 0), json!({"city": "Paris", "days": [1, 2]}));
            assert_eq!((calls[1].0.as_str(), args(&calls, 1)), ("time", json!({})));
        }
    }

    #[test]
    fn arguments_stream_in_fragments_and_markers_never_leak() {
        let mut p = CallParser::new(ToolSyntax::Hermes, ParamTypes::default(), 8, "c");
        assert_eq!(p.push("Hi <tool_"), vec![Piece::Text("Hi ".into())]);
        assert_eq!(p.push("call>{\"name\": \"f"), vec![]);
        assert_eq!(
            p.push("\", \"argu"),
            vec![Piece::Call {
                index: 0,
                id: Some("c0".into()),
                name: Some("f".into()),
                arguments: String::new()
            }],
            "the name goes out as soon as it is complete"
        );
        assert_eq!(
            p.push("ments\": {\"q\": \"ab"),
            vec![Piece::Call {
                index: 0,
                id: None,
                name: None,
                arguments: "{\"q\": \"ab".into()
            }]
        );
        let more = p.push("c\"}}</tool_call>");
        assert_eq!(
            more,
            vec![Piece::Call {
                index: 0,
                id: None,
                name: None,
                arguments: "c\"}".into()
            }]
        );
        assert_eq!(p.finish(), vec![]);
    }

    #[test]
    fn text_that_only_looks_like_a_marker_is_released() {
        let (content, calls) = run(ToolSyntax::Hermes, "a <tool b> c <tool_call", 1);
        assert!(calls.is_empty());
        assert_eq!(content, "a <tool b> c <tool_call");
        let (content, calls) = run(ToolSyntax::Hermes, "x <tool_call>not json</tool_call> y", 2);
        assert!(calls.is_empty());
        assert_eq!(content, "x <tool_call>not json</tool_call> y");
    }

    #[test]
    fn one_call_only_when_parallel_calls_are_off() {
        let text = "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call><tool_call>{\"name\": \"b\", \"arguments\": {}}</tool_call>";
        let (_, calls) = run_with(ToolSyntax::Hermes, ParamTypes::default(), text, 3, 1);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, "a");
    }

    #[test]
    fn a_call_cut_short_still_closes_its_arguments() {
        let (_, calls) = run(
            ToolSyntax::Hermes,
            "<tool_call>{\"name\": \"f\", \"arguments\": {\"q\": [1, \"x",
            4,
        );
        assert_eq!(args(&calls, 0), json!({"q": [1, "x"]}));
    }

    #[test]
    fn qwen_xml_calls_with_typed_parameters() {
        let text = "Sure.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n<parameter=zip>\n75001\n</parameter>\n</function>\n</tool_call>";
        let types = ParamTypes::from_tools(Some(&json!([{"type": "function", "function": {
            "name": "get_weather", "parameters": {"properties": {
                "city": {"type": "string"}, "days": {"type": "integer"}, "zip": {"type": "string"}}}}}])));
        for step in [1, 5, 1000] {
            let (content, calls) = run_with(ToolSyntax::QwenXml, types.clone(), text, step, 8);
            assert_eq!(content.trim(), "Sure.");
            assert_eq!(calls[0].0, "get_weather");
            assert_eq!(
                args(&calls, 0),
                json!({"city": "Paris", "days": 3, "zip": "75001"})
            );
        }
    }

    #[test]
    fn llama3_json_with_and_without_python_tag() {
        for text in [
            "{\"name\": \"f\", \"parameters\": {\"x\": 1}}; {\"name\": \"g\", \"parameters\": {}}",
            "<|python_tag|>{\"name\": \"f\", \"parameters\": {\"x\": 1}}; {\"name\": \"g\", \"parameters\": {}}",
        ] {
            for step in [1, 4, 1000] {
                let (content, calls) = run(ToolSyntax::Llama3, text, step);
                assert_eq!(content.trim(), "", "{text} / {step}");
                assert_eq!(calls.len(), 2, "{text} / {step}");
                assert_eq!((calls[0].0.as_str(), args(&calls, 0)), ("f", json!({"x": 1})));
                assert_eq!(calls[1].0, "g");
            }
        }
        let (content, calls) = run(ToolSyntax::Llama3, "The answer is {1}.", 2);
        assert!(calls.is_empty());
        assert_eq!(content, "The answer is {1}.");
    }

    #[test]
    fn mistral_list_and_name_forms() {
        let list = "[TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {\"a\": 1}}, {\"name\": \"g\", \"arguments\": {\"b\": 2}}]";
        let named = "[TOOL_CALLS]f[ARGS]{\"a\": 1}[TOOL_CALLS]g{\"b\": 2}";
        for text in [list, named] {
            for step in [1, 3, 1000] {
                let (content, calls) = run(ToolSyntax::Mistral, text, step);
                assert_eq!(content.trim(), "", "{text} / {step}");
                assert_eq!(calls.len(), 2, "{text} / {step}");
                assert_eq!(
                    (calls[0].0.as_str(), args(&calls, 0)),
                    ("f", json!({"a": 1}))
                );
                assert_eq!(
                    (calls[1].0.as_str(), args(&calls, 1)),
                    ("g", json!({"b": 2}))
                );
            }
        }
    }

    #[test]
    fn deepseek_v3_and_v31_forms() {
        let v3 = "Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{\"a\": 1}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>g\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
        let v31 = "Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f<｜tool▁sep｜>{\"a\": 1}<｜tool▁call▁end｜><｜tool▁call▁begin｜>g<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
        for text in [v3, v31] {
            for step in [1, 2, 1000] {
                let (content, calls) = run(ToolSyntax::DeepSeek, text, step);
                assert_eq!(content.trim(), "Checking.", "{step}");
                assert_eq!(calls.len(), 2);
                assert_eq!(
                    (calls[0].0.as_str(), args(&calls, 0)),
                    ("f", json!({"a": 1}))
                );
                assert_eq!((calls[1].0.as_str(), args(&calls, 1)), ("g", json!({})));
            }
        }
    }

    /// Each syntax's forced-call grammar accepts the call the parser reads back, byte by
    /// byte, and refuses arguments that break the schema.
    #[test]
    fn forced_call_grammars_accept_what_the_parsers_read() {
        use crate::grammar::TokenSpace;
        use llguidance::api::TopLevelGrammar;
        use llguidance::toktrie::ApproximateTokEnv;

        let env = ApproximateTokEnv::single_byte_env();
        let eos = env.tok_trie().eos_token();
        let space = TokenSpace::from_env(env, &[eos]).expect("space");
        let tools = vec![
            json!({"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}),
        ];
        let ds = format!(
            "{DS_CALLS_BEGIN}{DS_CALL_BEGIN}function{DS_SEP}f\n```json\n{{\"a\": 1}}\n```{DS_CALL_END}{DS_CALLS_END}"
        );
        let cases = [
            (ToolSyntax::Hermes, "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>".to_string()),
            (ToolSyntax::Llama3, "{\"name\": \"f\", \"parameters\": {\"a\": 1}}".to_string()),
            (ToolSyntax::Mistral, "[TOOL_CALLS]f[ARGS]{\"a\": 1}".to_string()),
            (ToolSyntax::DeepSeek, ds),
            (ToolSyntax::QwenXml, "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n</function>\n</tool_call>".to_string()),
            (ToolSyntax::Harmony, "<|channel|>commentary to=functions.f <|constrain|>json<|message|>{\"a\": 1}".to_string()),
            (ToolSyntax::KimiK2, format!("{KIMI_SECTION_BEGIN}{KIMI_CALL_BEGIN}functions.f:0{KIMI_ARGS}{{\"a\": 1}}{KIMI_CALL_END}{KIMI_SECTION_END}")),
            (ToolSyntax::Glm, "<tool_call>f<arg_key>a</arg_key><arg_value>1</arg_value></tool_call>".to_string()),
            (ToolSyntax::Gemma4, "<|tool_call>call:f{a:1}<tool_call|>".to_string()),
        ];
        for (syntax, text) in cases {
            let lark = forced_call_grammar(syntax, &tools, None, false, space.trie())
                .unwrap_or_else(|e| panic!("{syntax:?}: {e}"));
            let feed = |text: &str| -> Result<bool, String> {
                let mut c = space.constraint(TopLevelGrammar::from_lark(lark.clone()))?;
                for (at, &b) in text.as_bytes().iter().enumerate() {
                    let mut logits = vec![0.0f32; space.trie().vocab_size()];
                    c.apply(&mut logits)?;
                    if logits[b as usize] == f32::NEG_INFINITY {
                        return Err(format!("{:?} refused after {:?}", b as char, &text[..at]));
                    }
                    c.commit(u32::from(b))?;
                }
                Ok(c.is_finished())
            };
            assert_eq!(feed(&text), Ok(true), "{syntax:?}: {lark}");
            if syntax != ToolSyntax::QwenXml {
                // XML parameter values are raw text; the JSON syntaxes check the schema.
                assert!(feed(&text.replace('1', "\"x\"")).is_err(), "{syntax:?}");
            }
            let (_, calls) = if syntax == ToolSyntax::Harmony {
                harmony_calls(&text)
            } else {
                run(syntax, &text, 3)
            };
            assert_eq!(calls.len(), 1, "{syntax:?}");
            assert_eq!(
                (calls[0].0.as_str(), args(&calls, 0)),
                ("f", json!({"a": 1})),
                "{syntax:?}"
            );
        }
    }

    /// The calls `harmony::HarmonyParser` reads from `text`, as `run` returns them.
    fn harmony_calls(text: &str) -> (String, Vec<(String, String)>) {
        use opta_lmx_shared::protocol::Delta;
        let mut p = crate::harmony::HarmonyParser::new(true, 1, "c");
        let mut calls: Vec<(String, String)> = Vec::new();
        for d in p.push(text, true) {
            if let Delta::ToolCall {
                name, arguments, ..
            } = d
            {
                match name {
                    Some(n) => calls.push((n, arguments)),
                    None => calls.last_mut().expect("call").1.push_str(&arguments),
                }
            }
        }
        (String::new(), calls)
    }

    /// The calls read from `text` pushed in two pieces split at every character boundary,
    /// and in pieces of one character; each reading must equal the first.
    fn every_split(
        syntax: ToolSyntax,
        types: &ParamTypes,
        text: &str,
    ) -> (String, Vec<(String, String)>) {
        let whole = run_with(syntax, types.clone(), text, usize::MAX, u32::MAX);
        // Whitespace around calls may go either way, depending on where the pieces end.
        let one_by_one = run_with(syntax, types.clone(), text, 1, u32::MAX);
        assert_eq!(
            (one_by_one.0.trim(), &one_by_one.1),
            (whole.0.trim(), &whole.1),
            "{syntax:?}: pieces of one character"
        );
        for (at, _) in text.char_indices().skip(1) {
            let mut p = CallParser::new(syntax, types.clone(), u32::MAX, "call_");
            let mut pieces = p.push(&text[..at]);
            pieces.extend(p.push(&text[at..]));
            pieces.extend(p.finish());
            let (content, calls) = collect(pieces);
            assert_eq!(
                (content.trim(), &calls),
                (whole.0.trim(), &whole.1),
                "{syntax:?}: split after {:?}",
                &text[..at]
            );
        }
        whole
    }

    fn weather_types() -> ParamTypes {
        ParamTypes::from_tools(Some(&json!([{"type": "function", "function": {
            "name": "get_weather", "parameters": {"type": "object", "properties": {
                "city": {"type": "string"}, "days": {"type": "integer"},
                "zip": {"type": "string"}, "where": {"type": "object"}}}}}])))
    }

    #[test]
    fn kimi_k2_sections_split_anywhere() {
        let text = "Checking both.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{\"city\": \"Paris\", \"days\": [1, 2]}<|tool_call_end|><|tool_call_begin|>functions.time:1<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>";
        let (content, calls) = every_split(ToolSyntax::KimiK2, &ParamTypes::default(), text);
        assert_eq!(content.trim(), "Checking both.");
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].0.as_str(), args(&calls, 0)),
            ("get_weather", json!({"city": "Paris", "days": [1, 2]}))
        );
        assert_eq!((calls[1].0.as_str(), args(&calls, 1)), ("time", json!({})));
        // Names with a colon of their own keep it; only the trailing index goes.
        let (_, calls) = run(
            ToolSyntax::KimiK2,
            "<|tool_call_begin|>functions.ns:f:12<|tool_call_argument_begin|>{}<|tool_call_end|>",
            3,
        );
        assert_eq!(calls[0].0, "ns:f");
    }

    #[test]
    fn glm_calls_in_45_and_47_layouts_split_anywhere() {
        let glm46 = "Let me look.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris, 3e</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n<arg_key>zip</arg_key>\n<arg_value>75001</arg_value>\n<arg_key>where</arg_key>\n<arg_value>{\"lat\": 48.8, \"tags\": [\"a <b>\"]}</arg_value>\n</tool_call>\n<tool_call>time\n</tool_call>";
        let glm47 = "Let me look.<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris, 3e</arg_value><arg_key>days</arg_key><arg_value>3</arg_value><arg_key>zip</arg_key><arg_value>75001</arg_value><arg_key>where</arg_key><arg_value>{\"lat\": 48.8, \"tags\": [\"a <b>\"]}</arg_value></tool_call><tool_call>time</tool_call>";
        for text in [glm46, glm47] {
            let (content, calls) = every_split(ToolSyntax::Glm, &weather_types(), text);
            assert_eq!(content.trim(), "Let me look.");
            assert_eq!(calls.len(), 2, "{text}");
            assert_eq!(calls[0].0, "get_weather");
            assert_eq!(
                args(&calls, 0),
                json!({"city": "Paris, 3e", "days": 3, "zip": "75001",
                    "where": {"lat": 48.8, "tags": ["a <b>"]}}),
                "a string parameter stays a string; the rest is JSON"
            );
            assert_eq!((calls[1].0.as_str(), args(&calls, 1)), ("time", json!({})));
        }
        // Prose after the tag is not a call; a Hermes JSON call in GLM's tags is.
        let (content, calls) = run(ToolSyntax::Glm, "<tool_call>I would call it</tool_call>", 2);
        assert!(calls.is_empty());
        assert_eq!(content, "<tool_call>I would call it</tool_call>");
        let (_, calls) = run(
            ToolSyntax::Glm,
            "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_call>",
            2,
        );
        assert_eq!(
            (calls[0].0.as_str(), args(&calls, 0)),
            ("f", json!({"a": 1}))
        );
    }

    #[test]
    fn gemma4_calls_split_anywhere() {
        let text = "On it.<|tool_call>call:get_weather{city:<|\"|>Paris, {3e}<|\"|>,days:3,detailed:true,hours:[6,12.5],where:{lat:-48.8,note:<|\"|>a <b><|\"|>,none:null}}<tool_call|><|tool_call>call:time{}<tool_call|>";
        let (content, calls) = every_split(ToolSyntax::Gemma4, &ParamTypes::default(), text);
        assert_eq!(content.trim(), "On it.");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].0, "get_weather");
        assert_eq!(
            args(&calls, 0),
            json!({"city": "Paris, {3e}", "days": 3, "detailed": true, "hours": [6, 12.5],
                "where": {"lat": -48.8, "note": "a <b>", "none": null}})
        );
        assert_eq!((calls[1].0.as_str(), args(&calls, 1)), ("time", json!({})));
    }

    /// The new syntaxes' grammars follow the schema: required keys, optional ones in order,
    /// string lengths and types.
    #[test]
    fn glm_and_gemma4_grammars_follow_the_schema() {
        use crate::grammar::TokenSpace;
        use llguidance::api::TopLevelGrammar;
        use llguidance::toktrie::ApproximateTokEnv;

        let env = ApproximateTokEnv::single_byte_env();
        let eos = env.tok_trie().eos_token();
        let space = TokenSpace::from_env(env, &[eos]).expect("space");
        let tools = vec![
            json!({"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {
                "b": {"type": "string", "maxLength": 3},
                "a": {"type": "integer"},
                "c": {"type": "boolean"},
                "d": {"type": "array", "items": {"type": "string", "enum": ["x", "y"]}}},
            "required": ["a"]}}}),
        ];
        let accepts = |syntax: ToolSyntax, text: &str| -> bool {
            let lark = forced_call_grammar(syntax, &tools, None, false, space.trie())
                .unwrap_or_else(|e| panic!("{syntax:?}: {e}"));
            let Ok(mut c) = space.constraint(TopLevelGrammar::from_lark(lark.clone())) else {
                panic!("{syntax:?}: {lark}");
            };
            for &b in text.as_bytes() {
                let mut logits = vec![0.0f32; space.trie().vocab_size()];
                if c.apply(&mut logits).is_err() || logits[b as usize] == f32::NEG_INFINITY {
                    return false;
                }
                if c.commit(u32::from(b)).is_err() {
                    return false;
                }
            }
            c.is_finished()
        };
        let glm = |pairs: &str| format!("<tool_call>f{pairs}</tool_call>");
        let kv = |k: &str, v: &str| format!("<arg_key>{k}</arg_key><arg_value>{v}</arg_value>");
        for (pairs, ok) in [
            (kv("a", "1"), true),
            (kv("b", "abc") + &kv("a", "-2") + &kv("c", "true"), true),
            (
                kv("b", "") + &kv("a", "1") + &kv("d", "[\"x\", \"y\"]"),
                true,
            ),
            (kv("b", "abcd") + &kv("a", "1"), false),
            (kv("b", "a"), false),
            (kv("a", "1") + &kv("b", "a"), false),
            (kv("a", "x"), false),
        ] {
            assert_eq!(accepts(ToolSyntax::Glm, &glm(&pairs)), ok, "{pairs}");
        }
        // GLM-4.6's newlines are allowed too.
        assert!(accepts(
            ToolSyntax::Glm,
            "<tool_call>f\n<arg_key>a</arg_key>\n<arg_value>1</arg_value>\n</tool_call>"
        ));
        let gemma = |object: &str| format!("<|tool_call>call:f{{{object}}}<tool_call|>");
        for (object, ok) in [
            ("a:1", true),
            ("a:-2,b:<|\"|>abc<|\"|>,c:false", true),
            ("a:1,b:<|\"|><|\"|>,d:[<|\"|>y<|\"|>]", true),
            ("a:1,b:<|\"|>abcd<|\"|>", false),
            ("b:<|\"|>a<|\"|>,a:1", false),
            ("c:true", false),
            ("a:1,d:[<|\"|>z<|\"|>]", false),
        ] {
            assert_eq!(accepts(ToolSyntax::Gemma4, &gemma(object)), ok, "{object}");
        }
    }

    #[test]
    fn templates_name_their_syntax() {
        assert_eq!(
            ToolSyntax::infer("<|start|>assistant<|channel|>final<|message|>{{ tools }}"),
            Some(ToolSyntax::Harmony)
        );
        assert_eq!(
            ToolSyntax::infer("{{ '<tool_call>' }} tools"),
            Some(ToolSyntax::Hermes)
        );
        assert_eq!(
            ToolSyntax::infer("<tool_call><function=x><parameter=y>"),
            Some(ToolSyntax::QwenXml)
        );
        assert_eq!(ToolSyntax::infer("[TOOL_CALLS]"), Some(ToolSyntax::Mistral));
        assert_eq!(
            ToolSyntax::infer("<|python_tag|>"),
            Some(ToolSyntax::Llama3)
        );
        assert_eq!(
            ToolSyntax::infer("<｜tool▁call▁begin｜>"),
            Some(ToolSyntax::DeepSeek)
        );
        assert_eq!(
            ToolSyntax::infer("<|tool_calls_section_begin|>"),
            Some(ToolSyntax::KimiK2)
        );
        assert_eq!(
            ToolSyntax::infer("<tool_call>{{ name }}<arg_key>"),
            Some(ToolSyntax::Glm)
        );
        assert_eq!(
            ToolSyntax::infer("<|tool_call>call:{{ name }}<tool_call|>"),
            Some(ToolSyntax::Gemma4)
        );
        assert_eq!(ToolSyntax::infer("{{ messages }}"), None);
        for name in opta_lmx_shared::TOOL_SYNTAXES {
            assert!(ToolSyntax::from_name(name).is_some(), "{name}");
        }
    }
}

/// The models' real chat templates (`tests/data/templates`, copied from a package registry;
/// see the README there): they render a conversation with tools, calls and their results
/// exactly as transformers does; the syntax is inferred from them; and the calls each writes
/// into the history read back, through the reasoning split and the call parser, as the calls
/// that went in.
#[cfg(test)]
mod real_templates {
    use super::*;
    use crate::output::{prompt_opens_thinking, OutputParser};
    use crate::tokenizer::ChatTemplate;
    use opta_lmx_shared::protocol::{answer_text, Delta};

    macro_rules! data {
        ($file:literal) => {
            include_str!(concat!("../../tests/data/templates/", $file))
        };
    }

    /// A template, what the reference renderer made of `conversation.json` with it, and
    /// whether it keeps reasoning sent back with a call (the reference leaves it out where not).
    struct Case {
        source: &'static str,
        rendered: &'static str,
        syntax: ToolSyntax,
        /// What opens an assistant turn.
        header: &'static str,
        /// What the template writes after the model's own text (its stop token).
        turn_end: &'static str,
        reasoning: bool,
    }

    fn round_trip(case: &Case) {
        let Case {
            source,
            syntax,
            header,
            turn_end,
            reasoning,
            ..
        } = *case;
        assert_eq!(ToolSyntax::infer(source), Some(syntax));
        let conversation: Value =
            serde_json::from_str(data!("conversation.json")).expect("conversation.json");
        let tools = &conversation["tools"];
        let mut messages = conversation["messages"].clone();
        if !reasoning {
            if let Some(call) = messages[1].as_object_mut() {
                call.remove("reasoning_content");
            }
        }
        let template = ChatTemplate {
            source,
            bos_token: "<bos>",
            eos_token: "<eos>",
        };
        let render = |upto: usize, generation_prompt: bool| {
            let head = Value::Array(messages.as_array().expect("messages")[..upto].to_vec());
            template
                .render(&head, Some(tools), generation_prompt, None)
                .unwrap_or_else(|e| panic!("{syntax:?}: {e}"))
        };
        assert_eq!(render(4, true), case.rendered, "{syntax:?}");

        // What the model was asked to continue, and what the template writes for its turn.
        let prompt = render(1, true);
        let history = render(2, false);
        let turn = history
            .rsplit_once(header)
            .map(|(_, turn)| turn)
            .unwrap_or_else(|| panic!("{header:?} in {history}"));
        let turn = turn.trim_end();
        let turn = turn.strip_suffix(turn_end).unwrap_or(turn);
        // A prompt that opened a block already wrote its opening marker.
        let opened = prompt.rsplit_once(header).map_or("", |(_, t)| t);
        let output = turn.strip_prefix(opened).unwrap_or(turn);
        let thinking = prompt_opens_thinking(&prompt);

        let sent = &messages[1]["tool_calls"];
        for step in [1, 3, usize::MAX] {
            let calls = CallParser::new(syntax, ParamTypes::from_tools(Some(tools)), 8, "c");
            let mut parser = OutputParser::new(Some(thinking), Some(calls));
            let chars: Vec<char> = output.chars().collect();
            let mut deltas = Vec::new();
            for piece in chars.chunks(step) {
                deltas.extend(parser.push(&piece.iter().collect::<String>(), 1, false));
            }
            deltas.extend(parser.push("", 0, true));
            let said: String = deltas
                .iter()
                .filter_map(|d| match d {
                    Delta::Reasoning { text, .. } => Some(text.as_str()),
                    _ => None,
                })
                .collect();
            let mut read: Vec<Value> = Vec::new();
            let mut texts: Vec<String> = Vec::new();
            for d in &deltas {
                if let Delta::ToolCall {
                    name, arguments, ..
                } = d
                {
                    match name {
                        Some(n) => {
                            read.push(json!({"name": n}));
                            texts.push(arguments.clone());
                        }
                        None => texts.last_mut().expect("a call").push_str(arguments),
                    }
                }
            }
            for (call, text) in read.iter_mut().zip(&texts) {
                call["arguments"] = serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("{syntax:?}: arguments {text:?}: {e}"));
            }
            let context = format!("{syntax:?}, step {step}: {output:?}");
            assert_eq!(answer_text(&deltas).trim(), "", "{context}");
            if reasoning {
                assert_eq!(said.trim(), messages[1]["reasoning_content"], "{context}");
            }
            let expected: Vec<&Value> = sent
                .as_array()
                .expect("tool_calls")
                .iter()
                .map(|c| &c["function"])
                .collect();
            assert_eq!(read.iter().collect::<Vec<_>>(), expected, "{context}");
        }
    }

    #[test]
    fn kimi_k2() {
        let header = "<|im_assistant|>assistant<|im_middle|>";
        round_trip(&Case {
            source: data!("Kimi-K2-Instruct.jinja"),
            rendered: data!("rendered/Kimi-K2-Instruct.txt"),
            syntax: ToolSyntax::KimiK2,
            header,
            turn_end: "<|im_end|>",
            reasoning: false,
        });
        round_trip(&Case {
            source: data!("Kimi-K2-Thinking.jinja"),
            rendered: data!("rendered/Kimi-K2-Thinking.txt"),
            syntax: ToolSyntax::KimiK2,
            header,
            turn_end: "<|im_end|>",
            reasoning: true,
        });
    }

    #[test]
    fn glm_46_and_47() {
        round_trip(&Case {
            source: data!("GLM-4.6.jinja"),
            rendered: data!("rendered/GLM-4.6.txt"),
            syntax: ToolSyntax::Glm,
            header: "<|assistant|>",
            turn_end: "",
            reasoning: true,
        });
        round_trip(&Case {
            source: data!("GLM-4.7-Flash.jinja"),
            rendered: data!("rendered/GLM-4.7-Flash.txt"),
            syntax: ToolSyntax::Glm,
            header: "<|assistant|>",
            turn_end: "",
            reasoning: true,
        });
    }

    #[test]
    fn gemma_4() {
        round_trip(&Case {
            source: data!("google-gemma-4-31B-it.jinja"),
            rendered: data!("rendered/google-gemma-4-31B-it.txt"),
            syntax: ToolSyntax::Gemma4,
            header: "<|turn>model\n",
            turn_end: GEMMA_RESPONSE,
            reasoning: false,
        });
    }
}
