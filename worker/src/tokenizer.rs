//! Text in and out: the Hugging Face tokenizer (`tokenizer.json`), the Jinja chat template
//! (`tokenizer_config.json` or `chat_template.jinja`) and the end-of-sequence ids.

use std::collections::BTreeSet;
use std::path::Path;

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value as JinjaValue};
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
        let kept_specials = crate::tool_syntax::MARKERS
            .iter()
            .chain(crate::harmony::MARKERS)
            .chain([&crate::output::THINK_OPEN, &crate::output::THINK_CLOSE])
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
        env.add_template("chat", source)
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        let base = minijinja::context! {
            messages => JinjaValue::from_serialize(messages),
            tools => tools.map(JinjaValue::from_serialize),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
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
    use super::format_date;

    #[test]
    fn dates_format_like_strftime() {
        // 2024-02-29 12:00 UTC
        assert_eq!(format_date(1_709_208_000, "%d %b %Y"), "29 Feb 2024");
        assert_eq!(format_date(0, "%Y-%m-%d %B"), "1970-01-01 January");
    }
}
