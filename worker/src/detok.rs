//! Incremental detokenizing with stop strings: text is released only once it is final, that
//! is, once it is valid UTF-8 (byte-level BPE splits characters across tokens) and cannot be
//! the start of a stop string. A stop string is never emitted.

use crate::tokenizer::{Tokenizer, TokenizerError};

pub struct Detokenizer {
    ids: Vec<u32>,
    /// `ids[prefix..read]` is decoded already and ends on a whole character; it is decoded
    /// again as context because a tokenizer's decoding of a token can depend on its neighbour.
    prefix: usize,
    read: usize,
    /// Text decoded so far, released or not.
    text: String,
    /// Bytes of `text` already handed out.
    released: usize,
    stops: Vec<String>,
    stopped: bool,
}

impl Detokenizer {
    pub fn new(stops: Vec<String>) -> Self {
        Detokenizer {
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            text: String::new(),
            released: 0,
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            stopped: false,
        }
    }

    /// Adds one token. Returns the text that became final, and whether a stop string ended
    /// the generation (its text and anything after it is withheld).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<(String, bool), TokenizerError> {
        if self.stopped {
            return Ok((String::new(), true));
        }
        self.ids.push(id);
        let done = tok.decode(&self.ids[self.prefix..self.read])?;
        let all = tok.decode(&self.ids[self.prefix..])?;
        // An incomplete UTF-8 sequence decodes to U+FFFD: wait for the rest of the character.
        if all.len() <= done.len() || all.ends_with('\u{FFFD}') {
            return Ok((String::new(), false));
        }
        let added = match all.strip_prefix(done.as_str()) {
            Some(rest) => rest,
            None => &all[floor_char(&all, done.len())..],
        };
        self.text.push_str(added);
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(self.release(false))
    }

    /// The generation ended for another reason: release everything still held back.
    pub fn finish(&mut self) -> String {
        self.release(true).0
    }

    fn release(&mut self, at_end: bool) -> (String, bool) {
        // Search from a little before the released point: a stop string may straddle it.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let search_from = floor_char(&self.text, self.released.saturating_sub(longest));
        let found = self
            .stops
            .iter()
            .filter_map(|s| {
                self.text[search_from..]
                    .find(s.as_str())
                    .map(|i| search_from + i)
            })
            .min();
        if let Some(at) = found {
            let out = self.text[self.released..at.max(self.released)].to_string();
            self.released = self.text.len();
            self.stopped = true;
            return (out, true);
        }
        let mut end = self.text.len();
        if !at_end {
            // Hold back the longest tail that is a prefix of some stop string.
            for s in &self.stops {
                for k in (1..s.len().min(self.text.len() - self.released + 1)).rev() {
                    if s.is_char_boundary(k) && self.text.ends_with(&s[..k]) {
                        end = end.min(self.text.len() - k);
                        break;
                    }
                }
            }
        }
        let end = end.max(self.released);
        let out = self.text[self.released..end].to_string();
        self.released = end;
        (out, false)
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
