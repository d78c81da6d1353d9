//! Constrained decoding with llguidance: a grammar (a JSON schema, or a tool call in the
//! model's own format) decides which tokens may come next, and the sampler only sees those.
//!
//! The token space (every token's bytes, in a trie) is built once per model from
//! `tokenizer.json`, the first time a request needs it, so that loading and unconstrained
//! requests pay nothing. Each constrained sequence then has its own [`Constraint`]: the
//! scheduler asks it for the allowed set while the forward pass runs, masks the logits, and
//! commits the token it chose.

use std::sync::Arc;

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{self, SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};

/// Largest JSON schema a request may constrain to, in bytes of JSON text.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// Deepest nesting a schema may have.
pub const MAX_SCHEMA_DEPTH: usize = 32;

/// The grammar engine's view of one model's vocabulary.
pub struct TokenSpace {
    factory: ParserFactory,
    /// Tokens the grammar knows; logits past it (padding rows) are never allowed.
    vocab: usize,
    eos_ids: Vec<u32>,
}

/// Tokenizes grammar literals with the model's own tokenizer, so forced text is spelled the
/// way the model would spell it.
struct Env {
    trie: TokTrie,
    tokenizer: tokenizers::Tokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        // Grammar literals are text; a split character (never produced by our grammars)
        // falls back to the trie's greedy spelling.
        match std::str::from_utf8(s) {
            Ok(text) => match self.tokenizer.encode(text, false) {
                Ok(enc) => enc.get_ids().to_vec(),
                Err(_) => self.trie.greedy_tokenize(s),
            },
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

impl TokenSpace {
    /// From the bytes of `tokenizer.json`, the loaded tokenizer and the model's EOS ids.
    pub fn new(
        tokenizer_json: &[u8],
        tokenizer: tokenizers::Tokenizer,
        eos_ids: &[u32],
    ) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(tokenizer_json)
            .map_err(|e| format!("tokenizer.json is not JSON: {e}"))?;
        let words = llguidance::token_bytes_from_tokenizer_json(&value)
            .map_err(|e| format!("cannot read the vocabulary for constrained decoding: {e}"))?;
        let eos = eos_ids.first().copied().unwrap_or(0);
        let info = TokRxInfo::new(words.len() as u32, eos);
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(Env { trie, tokenizer });
        Self::from_env(env, eos_ids)
    }

    /// Over any token environment (tests use llguidance's byte-level one).
    pub fn from_env(env: TokEnv, eos_ids: &[u32]) -> Result<Self, String> {
        let vocab = env.tok_trie().vocab_size();
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        // Bound what one request's grammar may cost, in time and memory.
        *factory.limits_mut() = ParserLimits {
            max_grammar_size: 200_000,
            ..ParserLimits::default()
        };
        Ok(TokenSpace {
            factory,
            vocab,
            eos_ids: eos_ids.to_vec(),
        })
    }

    /// A fresh constraint for one sequence; a grammar that does not compile is the
    /// request's fault.
    pub fn constraint(&self, grammar: TopLevelGrammar) -> Result<Constraint, String> {
        // llguidance's message goes on to quote the whole grammar; its first line says it.
        let first_line = |e: String| e.lines().next().unwrap_or_default().to_string();
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| first_line(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(e);
        }
        Ok(Constraint {
            matcher,
            vocab: self.vocab,
            eos_ids: self.eos_ids.clone(),
            mask: None,
        })
    }

    /// The token trie, for tests and for finding marker tokens.
    pub fn trie(&self) -> &TokTrie {
        self.factory.tok_env().tok_trie()
    }
}

/// One sequence's grammar state.
pub struct Constraint {
    matcher: Matcher,
    vocab: usize,
    eos_ids: Vec<u32>,
    /// The allowed set for the next token, computed ahead (while the device works).
    mask: Option<SimpleVob>,
}

impl Constraint {
    /// Computes the allowed set for the next token, if not done yet.
    pub fn prepare(&mut self) -> Result<(), String> {
        if self.mask.is_none() {
            let mask = self
                .matcher
                .compute_mask_or_eos()
                .map_err(|e| e.to_string())?;
            self.mask = Some(mask);
        }
        Ok(())
    }

    /// Sets every token the grammar forbids to -inf. When the grammar may end here, every
    /// EOS id of the model is allowed, not just the one the grammar knows.
    pub fn apply(&mut self, logits: &mut [f32]) -> Result<(), String> {
        self.prepare()?;
        let Some(mask) = &self.mask else {
            return Ok(());
        };
        let eos_ok = self.eos_ids.iter().any(|&t| mask.is_allowed(t));
        for (i, l) in logits.iter_mut().enumerate() {
            let allowed =
                i < self.vocab && mask.get(i) || eos_ok && self.eos_ids.contains(&(i as u32));
            if !allowed {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Records the chosen token. EOS ends the grammar's part.
    pub fn commit(&mut self, token: u32) -> Result<(), String> {
        self.mask = None;
        if self.eos_ids.contains(&token) {
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| format!("the constrained output went off its grammar: {e}"))
    }

    /// The grammar is complete and allows nothing more: generation should stop.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

/// The options every schema we compile carries: compact separators as models write them,
/// no free whitespace (small models can loop on it), and `lenient` unless the request
/// asked for strict adherence (then an unsupported keyword is an error, not ignored).
pub fn with_options(mut schema: Value, strict: bool) -> Value {
    close_objects(&mut schema);
    if let Value::Object(obj) = &mut schema {
        obj.insert(
            "x-guidance".into(),
            json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
                "lenient": !strict,
            }),
        );
    }
    schema
}

/// An object schema that lists its properties and says nothing of others gets
/// `additionalProperties: false`, as OpenAI's structured outputs read it: otherwise a small
/// model keeps inventing keys until it runs out of tokens.
fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(obj) => {
            if obj.contains_key("properties") && !obj.contains_key("additionalProperties") {
                obj.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (key, v) in obj.iter_mut() {
                // Enumerated and constant values are data, not schemas.
                if key != "enum" && key != "const" && key != "default" && key != "examples" {
                    close_objects(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// Refuses a schema too big or too deep to compile in reasonable time.
pub fn check_schema_bounds(schema: &Value) -> Result<(), String> {
    let bytes = schema.to_string().len();
    if bytes > MAX_SCHEMA_BYTES {
        return Err(format!(
            "the schema is {bytes} bytes, more than the {MAX_SCHEMA_BYTES} allowed"
        ));
    }
    fn depth(v: &Value) -> usize {
        match v {
            Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
            Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    let d = depth(schema);
    if d > MAX_SCHEMA_DEPTH {
        return Err(format!(
            "the schema nests {d} levels deep, more than the {MAX_SCHEMA_DEPTH} allowed"
        ));
    }
    Ok(())
}

/// A grammar accepting JSON valid against `schema`.
pub fn json_grammar(schema: Value, strict: bool) -> TopLevelGrammar {
    TopLevelGrammar::from_json_schema(with_options(schema, strict))
}

/// Lark text for a literal: a special token by id (the grammar cannot spell a special
/// token in bytes), else a quoted string.
pub fn lark_literal(trie: &TokTrie, text: &str) -> String {
    let mut marked = vec![toktrie::TokTrie::SPECIAL_TOKEN_MARKER];
    marked.extend_from_slice(text.as_bytes());
    match trie.token_id_at_bytes(&marked) {
        Some(id) => format!("<[{id}]>"),
        None => serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llguidance::toktrie::ApproximateTokEnv;

    fn space() -> TokenSpace {
        let env = ApproximateTokEnv::single_byte_env();
        let eos = env.tok_trie().eos_token();
        TokenSpace::from_env(env, &[eos]).expect("token space")
    }

    /// Feeds `text` byte by byte, checking each byte is allowed; returns the constraint.
    fn feed(
        space: &TokenSpace,
        grammar: TopLevelGrammar,
        text: &str,
    ) -> Result<Constraint, String> {
        let mut c = space.constraint(grammar)?;
        for &b in text.as_bytes() {
            let mut logits = vec![0.0f32; space.vocab];
            c.apply(&mut logits)?;
            if logits[b as usize] == f32::NEG_INFINITY {
                return Err(format!("byte {:?} refused", b as char));
            }
            c.commit(u32::from(b))?;
        }
        Ok(c)
    }

    #[test]
    fn a_schema_allows_valid_json_and_refuses_the_rest() {
        let s = space();
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}},
            "required": ["n"], "additionalProperties": false});
        let c = feed(&s, json_grammar(schema.clone(), true), r#"{"n": 42}"#).expect("valid");
        assert!(c.is_finished());
        assert!(feed(&s, json_grammar(schema.clone(), true), r#"{"n": "x"#).is_err());
        assert!(feed(&s, json_grammar(schema, true), r#"{"m"#).is_err());
    }

    #[test]
    fn eos_is_allowed_only_where_the_grammar_may_end() {
        let s = space();
        let eos = s.eos_ids[0] as usize;
        let mut c = feed(&s, json_grammar(json!({"type": "object"}), false), "{").expect("{");
        let mut logits = vec![0.0f32; s.vocab];
        c.apply(&mut logits).expect("mask");
        assert_eq!(logits[eos], f32::NEG_INFINITY, "an open object cannot end");
    }

    #[test]
    fn listed_properties_close_an_object_unless_it_says_otherwise() {
        let s = space();
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"},
            "b": {"type": "object", "properties": {}, "additionalProperties": true}}});
        assert!(feed(&s, json_grammar(schema.clone(), false), r#"{"a": 1, "c"#).is_err());
        assert!(feed(&s, json_grammar(schema, false), r#"{"b": {"x": 1}}"#).is_ok());
    }

    #[test]
    fn oversized_and_overdeep_schemas_are_refused() {
        let mut deep = json!({"type": "string"});
        for _ in 0..40 {
            deep = json!({"type": "array", "items": deep});
        }
        assert!(check_schema_bounds(&deep)
            .unwrap_err()
            .contains("levels deep"));
        let wide = json!({"enum": vec!["x".repeat(100); 1000]});
        assert!(check_schema_bounds(&wide).unwrap_err().contains("bytes"));
        assert!(check_schema_bounds(&json!({"type": "object"})).is_ok());
    }

    #[test]
    fn literals_use_special_tokens_by_id_and_quote_text() {
        let s = space();
        assert!(lark_literal(s.trie(), "<|tool|>").starts_with("<["));
        assert_eq!(lark_literal(s.trie(), "<tool_call>"), "\"<tool_call>\"");
    }
}
