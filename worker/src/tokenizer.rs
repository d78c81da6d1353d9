//! Text in and out: the Hugging Face tokenizer (`tokenizer.json`), the Jinja chat template
//! (`tokenizer_config.json` or `chat_template.jinja`) and the end-of-sequence ids.

use std::collections::BTreeSet;
use std::path::Path;

use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr};
use minijinja::{Environment, Error as JinjaError, ErrorKind, State, Value as JinjaValue};
use opta_lmx_shared::model_dir::{self, ModelConfig};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: cannot load tokenizer: {message}")]
    Load { path: String, message: String },
    #[error(transparent)]
    ModelDir(#[from] model_dir::ModelDirError),
    #[error("this model has no chat template; use the completions endpoint")]
    NoChatTemplate,
    #[error("chat template: {0}")]
    Template(String),
    #[error("tokenizer: {0}")]
    Encode(String),
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Special tokens kept in decoded text: tool-call and reasoning markers, which the
    /// output parser reads (decoding drops every other special token).
    kept_specials: BTreeSet<u32>,
    /// Where `tokenizer.json` is, for building the grammar engine's token space on demand.
    path: std::path::PathBuf,
    template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    eos_ids: BTreeSet<u32>,
}

/// A token string may be given as `"<s>"` or as `{"content": "<s>", ...}`.
/// A `tokenizer.json` as the references read it: without the padding and truncation the file
/// may carry (sentence-transformers' all-MiniLM-L6-v2 ships `Fixed 128` padding). transformers
/// and sentence-transformers set both per call; a batch's padding and an input's limit are the
/// engine's business, not the file's.
pub fn read_tokenizer_file(path: &Path) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let load_error = |e: &dyn std::fmt::Display| TokenizerError::Load {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut tok = tokenizers::Tokenizer::from_file(path).map_err(|e| load_error(&e))?;
    tok.with_padding(None);
    tok.with_truncation(None).map_err(|e| load_error(&e))?;
    Ok(tok)
}

fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// `eos_token_id` may be one id or a list.
fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|n| n as u32))
            .collect(),
        _ => Vec::new(),
    }
}

impl Tokenizer {
    pub fn load(dir: &Path, config: &ModelConfig) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let inner = read_tokenizer_file(&path)?;
        let tc_path = dir.join("tokenizer_config.json");
        let tc = if tc_path.exists() {
            model_dir::read_json(&tc_path)?
        } else {
            Value::Null
        };
        // transformers 5 moves the template out of tokenizer_config.json into its own file.
        let jinja_path = dir.join("chat_template.jinja");
        let template = if jinja_path.exists() {
            Some(
                std::fs::read_to_string(&jinja_path).map_err(|e| TokenizerError::Load {
                    path: jinja_path.display().to_string(),
                    message: e.to_string(),
                })?,
            )
        } else {
            match tc.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: take "default".
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
                _ => None,
            }
        };
        let bos_token = token_string(tc.get("bos_token"));
        let eos_token = token_string(tc.get("eos_token"));

        let mut eos_ids: BTreeSet<u32> = ids(config.eos_token_id.as_ref()).into_iter().collect();
        let gen_path = dir.join("generation_config.json");
        if gen_path.exists() {
            let gen = model_dir::read_json(&gen_path)?;
            eos_ids.extend(ids(gen.get("eos_token_id")));
        }
        if let Some(id) = eos_token.as_deref().and_then(|t| inner.token_to_id(t)) {
            eos_ids.insert(id);
        }
        // gpt-oss's own files stop only at `<|return|>`; a harmony call ends at `<|call|>`, and
        // what follows it would be the model inventing the tool's answer.
        if template.as_deref().is_some_and(crate::harmony::is_harmony) {
            eos_ids.extend(inner.token_to_id(crate::harmony::CALL));
        }
        // Likewise Gemma 4 ends a turn that calls a tool with `<|tool_response>`, where the
        // tool's answer goes.
        if template
            .as_deref()
            .and_then(crate::tool_syntax::ToolSyntax::infer)
            == Some(crate::tool_syntax::ToolSyntax::Gemma4)
        {
            eos_ids.extend(inner.token_to_id(crate::tool_syntax::GEMMA_RESPONSE));
        }
        let kept_specials = crate::tool_syntax::MARKERS
            .iter()
            .chain(crate::harmony::MARKERS)
            .chain(crate::output::MARKERS)
            .filter_map(|m| inner.token_to_id(m))
            .collect();
        Ok(Tokenizer {
            inner,
            kept_specials,
            path,
            template,
            bos_token,
            eos_token,
            eos_ids,
        })
    }

    pub fn eos_ids(&self) -> &BTreeSet<u32> {
        &self.eos_ids
    }

    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// Token ids of `text`. Special-token text (`<|im_start|>`) maps to its id; nothing is
    /// added around the text, as with Hugging Face's `add_special_tokens=False`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, leaving special tokens out but for the markers the output parser
    /// reads, which stay as their text.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let plain = |ids: &[u32]| {
            self.inner
                .decode(ids, true)
                .map_err(|e| TokenizerError::Encode(e.to_string()))
        };
        if !ids.iter().any(|id| self.kept_specials.contains(id)) {
            return plain(ids);
        }
        let mut out = String::new();
        for run in ids.split_inclusive(|id| self.kept_specials.contains(id)) {
            match run.split_last() {
                Some((last, before)) if self.kept_specials.contains(last) => {
                    out.push_str(&plain(before)?);
                    out.push_str(&self.inner.id_to_token(*last).unwrap_or_default());
                }
                _ => out.push_str(&plain(run)?),
            }
        }
        Ok(out)
    }

    /// The chat template's source, if the model has one.
    pub fn template(&self) -> Option<&str> {
        self.template.as_deref()
    }

    /// The token space constrained decoding works in (slow: reads and indexes the whole
    /// vocabulary; the engine builds it once, on first use).
    pub fn token_space(&self) -> Result<crate::grammar::TokenSpace, String> {
        let bytes =
            std::fs::read(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))?;
        let eos: Vec<u32> = self.eos_ids.iter().copied().collect();
        crate::grammar::TokenSpace::new(&bytes, self.inner.clone(), &eos)
    }

    /// Whether `text` is one token of the vocabulary.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    /// The text of a single token as the vocabulary spells it, for logprobs.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.inner
            .decode(&[id], false)
            .map(String::into_bytes)
            .unwrap_or_default()
    }

    /// Renders the chat template as Hugging Face's `apply_chat_template` does (Jinja with
    /// `trim_blocks` and `lstrip_blocks`, Python string methods, `raise_exception`).
    pub fn render_chat(
        &self,
        messages: &Value,
        tools: Option<&Value>,
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.render_chat_with(messages, tools, add_generation_prompt, None)
    }

    /// [`Self::render_chat`] with extra template variables (`enable_thinking`,
    /// `reasoning_effort`, ...), as `apply_chat_template(**kwargs)` takes them.
    pub fn render_chat_with(
        &self,
        messages: &Value,
        tools: Option<&Value>,
        add_generation_prompt: bool,
        kwargs: Option<&Value>,
    ) -> Result<String, TokenizerError> {
        let source = self
            .template
            .as_deref()
            .ok_or(TokenizerError::NoChatTemplate)?;
        let template = ChatTemplate {
            source,
            bos_token: self.bos_token.as_deref().unwrap_or_default(),
            eos_token: self.eos_token.as_deref().unwrap_or_default(),
        };
        template.render(messages, tools, add_generation_prompt, kwargs)
    }
}

/// A chat template's source with the special tokens it may write.
pub struct ChatTemplate<'a> {
    pub source: &'a str,
    pub bos_token: &'a str,
    pub eos_token: &'a str,
}

impl ChatTemplate<'_> {
    /// Renders it as Hugging Face's `apply_chat_template` does (see [`Tokenizer::render_chat`]).
    pub fn render(
        &self,
        messages: &Value,
        tools: Option<&Value>,
        add_generation_prompt: bool,
        kwargs: Option<&Value>,
    ) -> Result<String, TokenizerError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<(), JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> String {
            // Templates use it for "today's date" lines; a fixed clock would mislead.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format_date(now, &fmt)
        });
        env.add_function("namespace", namespace);
        env.add_filter("tojson", tojson);
        env.add_template("chat", self.source)
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        let base = minijinja::context! {
            messages => JinjaValue::from_serialize(messages),
            tools => tools.map(JinjaValue::from_serialize),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        };
        // The fixed variables win over a kwarg of the same name.
        let ctx = match kwargs {
            Some(extra) => minijinja::context! { ..base, ..JinjaValue::from_serialize(extra) },
            None => base,
        };
        tmpl.render(ctx)
            .map_err(|e| TokenizerError::Template(e.to_string()))
    }
}

/// `namespace(...)` whose list attributes grow and shrink in place through Python's `append`
/// and `pop`, as templates written for Jinja2 expect (Kimi K2 queues its tool-call ids so);
/// minijinja's own lists are immutable.
fn namespace(defaults: Option<JinjaValue>) -> Result<JinjaValue, JinjaError> {
    let Some(defaults) = defaults else {
        return minijinja::functions::namespace(None);
    };
    let mut attrs = std::collections::BTreeMap::new();
    if let Some(pairs) = defaults.as_object().and_then(|o| o.try_iter_pairs()) {
        for (key, value) in pairs {
            let value = if value.kind() == minijinja::value::ValueKind::Seq {
                let items: Vec<JinjaValue> = value.try_iter()?.collect();
                JinjaValue::from_object(PyList(std::sync::Mutex::new(items)))
            } else {
                value
            };
            attrs.insert(key, value);
        }
    }
    minijinja::functions::namespace(Some(JinjaValue::from(attrs)))
}

/// A mutable list for [`namespace`].
#[derive(Debug)]
struct PyList(std::sync::Mutex<Vec<JinjaValue>>);

impl PyList {
    fn items(&self) -> std::sync::MutexGuard<'_, Vec<JinjaValue>> {
        // A panic while the lock was held cannot leave the list half-changed.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Object for PyList {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }

    fn get_value(self: &Arc<Self>, key: &JinjaValue) -> Option<JinjaValue> {
        let items = self.items();
        let i = py_index(i64::try_from(key.clone()).ok()?, items.len())?;
        items.get(i).cloned()
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Iter(Box::new(self.items().clone().into_iter()))
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &State<'_, '_>,
        method: &str,
        args: &[JinjaValue],
    ) -> Result<JinjaValue, JinjaError> {
        let mut items = self.items();
        match (method, args) {
            ("append", [item]) => {
                items.push(item.clone());
                Ok(JinjaValue::from(()))
            }
            ("pop", [] | [_]) => {
                let at = match args.first() {
                    Some(i) => i64::try_from(i.clone())?,
                    None => -1,
                };
                let i = py_index(at, items.len()).ok_or_else(|| {
                    JinjaError::new(ErrorKind::InvalidOperation, "pop index out of range")
                })?;
                Ok(items.remove(i))
            }
            _ => Err(JinjaError::from(ErrorKind::UnknownMethod)),
        }
    }
}

/// A Python index (negative counts from the end) into a list of `len` items.
fn py_index(at: i64, len: usize) -> Option<usize> {
    let len = i64::try_from(len).ok()?;
    let i = if at < 0 { at + len } else { at };
    (0..len).contains(&i).then_some(i as usize)
}

/// Hugging Face's `tojson`, Python's `json.dumps`: `", "` and `": "` between items, no HTML
/// escaping, and its `ensure_ascii`, `indent`, `separators` and `sort_keys` options. Tools
/// and arguments then read as the model saw them in training (minijinja's own is compact,
/// HTML-safe and refuses those options).
fn tojson(
    value: &JinjaValue,
    ensure_ascii: Option<bool>,
    indent: Option<JinjaValue>,
    kwargs: Kwargs,
) -> Result<JinjaValue, JinjaError> {
    let ensure_ascii = match ensure_ascii {
        Some(v) => v,
        None => kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<JinjaValue>>("indent")?,
    };
    let indent = match indent {
        Some(v) if v.is_none() => None,
        Some(v) => Some(match v.as_str() {
            Some(s) => s.to_string(),
            None => " ".repeat(usize::try_from(v)?),
        }),
        None => None,
    };
    let separators = match kwargs.get::<Option<Vec<String>>>("separators")? {
        Some(pair) => match <[String; 2]>::try_from(pair) {
            Ok([item, key]) => (item, key),
            Err(_) => {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    "tojson: separators must be (item_separator, key_separator)",
                ))
            }
        },
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(value).map_err(|e| {
        JinjaError::new(ErrorKind::InvalidOperation, "tojson: cannot serialize").with_source(e)
    })?;
    let dumps = PyDumps {
        ensure_ascii,
        indent,
        separators,
        sort_keys,
    };
    let mut out = String::new();
    dumps.value(&json, 0, &mut out);
    Ok(JinjaValue::from_safe_string(out))
}

/// The options of Python's `json.dumps`.
struct PyDumps {
    ensure_ascii: bool,
    indent: Option<String>,
    separators: (String, String),
    sort_keys: bool,
}

impl PyDumps {
    fn value(&self, v: &Value, level: usize, out: &mut String) {
        match v {
            Value::String(s) => self.string(s, out),
            Value::Array(items) => {
                let items: Vec<&Value> = items.iter().collect();
                self.container(('[', ']'), &items, level, out, |item, out| {
                    self.value(item, level + 1, out)
                });
            }
            Value::Object(map) => {
                let mut pairs: Vec<(&String, &Value)> = map.iter().collect();
                if self.sort_keys {
                    pairs.sort_by(|a, b| a.0.cmp(b.0));
                }
                self.container(('{', '}'), &pairs, level, out, |(k, v), out| {
                    self.string(k, out);
                    out.push_str(&self.separators.1);
                    self.value(v, level + 1, out);
                });
            }
            // null, booleans and numbers read the same in both.
            other => out.push_str(&other.to_string()),
        }
    }

    fn container<T: Copy>(
        &self,
        (open, close): (char, char),
        items: &[T],
        level: usize,
        out: &mut String,
        mut each: impl FnMut(T, &mut String),
    ) {
        out.push(open);
        if items.is_empty() {
            out.push(close);
            return;
        }
        let newline = |out: &mut String, level: usize| {
            if let Some(indent) = &self.indent {
                out.push('\n');
                out.push_str(&indent.repeat(level));
            }
        };
        for (i, &item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(&self.separators.0);
            }
            newline(out, level + 1);
            each(item, out);
        }
        newline(out, level);
        out.push(close);
    }

    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !(' '..='~').contains(&c)) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Enough of `strftime` for chat templates: `%d`, `%m`, `%Y`, `%b`, `%B` (UTC).
fn format_date(unix: u64, fmt: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = (unix / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let name = MONTHS[(month - 1) as usize];
    fmt.replace("%d", &format!("{day:02}"))
        .replace("%m", &format!("{month:02}"))
        .replace("%Y", &year.to_string())
        .replace("%B", name)
        .replace("%b", &name[..3])
}

#[cfg(test)]
mod tests {
    use super::{format_date, ChatTemplate};
    use serde_json::json;

    /// `tojson` writes what transformers' (Python's `json.dumps`) writes, and a namespace's
    /// lists change in place as in Jinja2.
    #[test]
    fn tojson_and_namespace_lists_behave_as_in_transformers() {
        let source = concat!(
            "{{ x | tojson }}|{{ x | tojson(indent=2) }}|",
            "{{ x | tojson(ensure_ascii=True, separators=(',', ':'), sort_keys=True) }}|",
            "{% set ns = namespace(q=[], n=0) %}{% set _ = ns.q.append('a') %}",
            "{% set _ = ns.q.append('b') %}{% set _ = ns.q.append('c') %}",
            "{{ ns.q.pop(0) }}{{ ns.q.pop() }}{{ ns.q | length }}{{ ns.q[-1] }}",
            "{% if ns.q %}+{% endif %}{% set _ = ns.q.pop() %}{% if not ns.q %}-{% endif %}"
        );
        let template = ChatTemplate {
            source,
            bos_token: "",
            eos_token: "",
        };
        let x = json!({"x": {"b": "\u{e9}<&\n", "a": [1, 2.5, null, true, {}]}});
        let text = template
            .render(&json!([]), None, false, Some(&x))
            .expect("renders");
        assert_eq!(
            text,
            concat!(
                "{\"b\": \"\u{e9}<&\\n\", \"a\": [1, 2.5, null, true, {}]}|",
                "{\n  \"b\": \"\u{e9}<&\\n\",\n  \"a\": [\n    1,\n    2.5,\n    null,\n",
                "    true,\n    {}\n  ]\n}|",
                "{\"a\":[1,2.5,null,true,{}],\"b\":\"\\u00e9<&\\n\"}|",
                "ac1b+-"
            )
        );
    }

    #[test]
    fn dates_format_like_strftime() {
        // 2024-02-29 12:00 UTC
        assert_eq!(format_date(1_709_208_000, "%d %b %Y"), "29 Feb 2024");
        assert_eq!(format_date(0, "%Y-%m-%d %B"), "1970-01-01 January");
    }
}
