//! Incremental detokenization with stop strings.
//!
//! Text is emitted only once it decodes to whole characters: a token that ends inside a
//! multi-byte UTF-8 sequence decodes to U+FFFD and waits for the next token. Text that could
//! still become the start of a stop string is held back, so a stop string never leaks into a
//! stream.

use ferrollm_models::Tokenizer;

/// Tokens decoded together with new ones so that decoders joining pieces (spaces, byte
/// fallback) see enough context.
const CONTEXT_TOKENS: usize = 6;

pub struct IncrementalDetokenizer {
    token_ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special_tokens: bool,
    /// Text decoded so far, complete characters only.
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
    stop: Vec<String>,
    include_stop_str_in_output: bool,
}

/// The result of feeding new tokens.
pub struct DetokenizerUpdate {
    /// New text safe to show.
    pub delta: String,
    /// The stop string that matched; the text is then final.
    pub stopped: Option<String>,
}

impl IncrementalDetokenizer {
    pub fn new(prompt_token_ids: &[u32], skip_special_tokens: bool, stop: Vec<String>, include_stop: bool) -> Self {
        // Seed with the prompt's tail so the first output token decodes with its context.
        let tail = &prompt_token_ids[prompt_token_ids.len().saturating_sub(CONTEXT_TOKENS)..];
        IncrementalDetokenizer {
            token_ids: tail.to_vec(),
            prefix_offset: 0,
            read_offset: tail.len(),
            skip_special_tokens,
            text: String::new(),
            emitted: 0,
            stop,
            include_stop_str_in_output: include_stop,
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Appends `new_ids`; returns the text that can be shown now.
    pub fn push(&mut self, tok: &Tokenizer, new_ids: &[u32], finished: bool) -> DetokenizerUpdate {
        let search_from = self.text.len();
        for &id in new_ids {
            self.token_ids.push(id);
            let prefix = tok.decode(&self.token_ids[self.prefix_offset..self.read_offset], self.skip_special_tokens);
            let full = tok.decode(&self.token_ids[self.prefix_offset..], self.skip_special_tokens);
            let (Ok(prefix), Ok(full)) = (prefix, full) else { continue };
            if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(&prefix) {
                self.text.push_str(&full[prefix.len()..]);
                self.prefix_offset = self.read_offset;
                self.read_offset = self.token_ids.len();
            } else if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
                // The decoder rewrote earlier text (rare); take the longest common prefix.
                let common = prefix.char_indices().zip(full.chars()).take_while(|((_, a), b)| a == b).count();
                let byte = full.char_indices().nth(common).map(|(i, _)| i).unwrap_or(full.len());
                self.text.push_str(&full[byte..]);
                self.prefix_offset = self.read_offset;
                self.read_offset = self.token_ids.len();
            }
        }
        // Keep the token window short.
        if self.prefix_offset > 64 {
            self.token_ids.drain(..self.prefix_offset);
            self.read_offset -= self.prefix_offset;
            self.prefix_offset = 0;
        }
        let mut stopped = None;
        if !self.stop.is_empty() {
            let max_stop = self.stop.iter().map(|s| s.len()).max().unwrap_or(0);
            let mut from = search_from.saturating_sub(max_stop);
            while !self.text.is_char_boundary(from) {
                from -= 1;
            }
            let hit = self
                .stop
                .iter()
                .enumerate()
                .filter_map(|(k, s)| self.text[from..].find(s.as_str()).map(|i| (from + i, k)))
                .min();
            if let Some((at, k)) = hit {
                let len = self.stop[k].len();
                let cut = if self.include_stop_str_in_output { at + len } else { at };
                self.text.truncate(cut.max(self.emitted));
                stopped = Some(self.stop[k].clone());
            }
        }
        let mut safe = self.text.len();
        if stopped.is_none() && !finished {
            // Hold back a suffix that is a prefix of some stop string.
            for s in &self.stop {
                for l in (1..s.len()).rev() {
                    if self.text.len() >= l && s.is_char_boundary(l) && self.text.ends_with(&s[..l]) {
                        safe = safe.min(self.text.len() - l);
                        break;
                    }
                }
            }
        }
        let safe = safe.max(self.emitted);
        let delta = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        DetokenizerUpdate { delta, stopped }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrollm_models::gguf::GgufFile;

    fn smollm2_tokenizer() -> Tokenizer {
        let home = std::env::var("HOME").unwrap_or_default();
        let p = std::path::PathBuf::from(home).join(".cache/ferrollm/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(p.exists(), "{} is missing: run scripts/fetch-models.sh", p.display());
        Tokenizer::from_gguf(&GgufFile::open(&p).unwrap()).unwrap()
    }

    /// Token by token, the deltas never hold a broken character and add up to the full text.
    #[test]
    fn streaming_multibyte_text_never_splits_a_character() {
        let tok = smollm2_tokenizer();
        let text = "Grüße, 世界! Emoji: 😀🚀 and naïve café — done.";
        let ids = tok.encode(text, false).unwrap();
        let mut d = IncrementalDetokenizer::new(&[], true, Vec::new(), false);
        let mut streamed = String::new();
        for (i, &id) in ids.iter().enumerate() {
            let upd = d.push(&tok, &[id], i + 1 == ids.len());
            assert!(!upd.delta.contains('\u{FFFD}'), "broken character after token {i}: {:?}", upd.delta);
            streamed.push_str(&upd.delta);
        }
        assert_eq!(streamed, text);
    }

    /// A stop string split across tokens is held back, cut, and never streamed.
    #[test]
    fn stop_string_is_held_back_and_cut() {
        let tok = smollm2_tokenizer();
        let ids = tok.encode("The answer is forty-two. Next question", false).unwrap();
        let mut d = IncrementalDetokenizer::new(&[], true, vec!["two. Next".into()], false);
        let mut streamed = String::new();
        let mut stopped = None;
        for &id in &ids {
            let upd = d.push(&tok, &[id], false);
            streamed.push_str(&upd.delta);
            if upd.stopped.is_some() {
                stopped = upd.stopped;
                break;
            }
        }
        assert_eq!(stopped.as_deref(), Some("two. Next"));
        assert_eq!(streamed, "The answer is forty-");
    }
}
