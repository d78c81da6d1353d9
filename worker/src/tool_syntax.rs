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
];

impl ToolSyntax {
    /// The syntax a chat template writes tool calls in, as mlx-lm infers it from markers in
    /// the template. `None`: the template does not mention tools at all.
    pub fn infer(template: &str) -> Option<ToolSyntax> {
        if crate::harmony::is_harmony(template) {
            Some(ToolSyntax::Harmony)
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
        }
    }

    /// Markers that open a call region.
    fn openers(self) -> &'static [&'static str] {
        match self {
            ToolSyntax::Hermes | ToolSyntax::QwenXml => &[HERMES_OPEN],
            ToolSyntax::Llama3 => &[PYTHON_TAG],
            ToolSyntax::Mistral => &[MISTRAL_CALLS],
            ToolSyntax::DeepSeek => &[DS_CALL_BEGIN],
            ToolSyntax::Harmony => &[],
        }
    }

    /// The marker that closes a region; without one, a region lasts to the next opener or
    /// the end of the output.
    fn closer(self) -> Option<&'static str> {
        match self {
            ToolSyntax::Hermes | ToolSyntax::QwenXml => Some(HERMES_CLOSE),
            ToolSyntax::DeepSeek => Some(DS_CALL_END),
            ToolSyntax::Llama3 | ToolSyntax::Mistral | ToolSyntax::Harmony => None,
        }
    }

    /// Wrapper markers that carry nothing and are dropped from the text.
    fn wrappers(self) -> &'static [&'static str] {
        match self {
            ToolSyntax::DeepSeek => &[DS_CALLS_BEGIN, DS_CALLS_END],
            _ => &[],
        }
    }

    /// The calls in one region's body (the text between its markers), as far as written.
    fn parse_region(self, body: &str, types: &ParamTypes) -> Vec<PartialCall> {
        match self {
            ToolSyntax::Hermes => parse_json_calls(body, ""),
            ToolSyntax::Llama3 => parse_json_calls(body, ";"),
            ToolSyntax::QwenXml => parse_xml_call(body, types).into_iter().collect(),
            ToolSyntax::Mistral => parse_mistral(body),
            ToolSyntax::DeepSeek => parse_deepseek(body).into_iter().collect(),
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
        let mut calls = self.syntax.parse_region(&self.buf[..body_end], &self.types);
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
    let brace = args_text.find('{');
    let (arguments, complete) = match brace {
        Some(b) => {
            let args = &args_text[b..];
            let end = scan_value(args.as_bytes(), 0);
            (args[..end.unwrap_or(args.len())].to_string(), end.is_some())
        }
        None => (String::new(), false),
    };
    Some(PartialCall {
        name: Some(name),
        arguments,
        complete,
    })
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
    let sep = match syntax {
        ToolSyntax::Llama3 => "\"; \"",
        ToolSyntax::Mistral | ToolSyntax::DeepSeek | ToolSyntax::Harmony => "",
        _ => "\"\\n\"",
    };
    let start = match (syntax, parallel) {
        (ToolSyntax::DeepSeek, true) => format!(
            "start: {} one ({sep} one)* {}",
            lit(DS_CALLS_BEGIN),
            lit(DS_CALLS_END)
        ),
        (ToolSyntax::DeepSeek, false) => {
            format!("start: {} one {}", lit(DS_CALLS_BEGIN), lit(DS_CALLS_END))
        }
        (_, true) => format!("start: one ({sep} one)*"),
        (_, false) => "start: one".to_string(),
    };
    Ok(format!("{start}\none: {one}\n{}\n", rules.join("\n")))
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
        assert_eq!(ToolSyntax::infer("{{ messages }}"), None);
        for name in opta_lmx_shared::TOOL_SYNTAXES {
            assert!(ToolSyntax::from_name(name).is_some(), "{name}");
        }
    }
}
