//! The engine's per-token logprobs in the two API shapes: the legacy completions object
//! (parallel arrays) and chat's list of token objects.

use ferrollm_core::TokenLogprobs;

use crate::protocol::chat::{ChatLogprobs, ChatTokenLogprob, TopLogprob};
use crate::protocol::common::LogprobMap;
use crate::protocol::completions::CompletionLogprobs;

/// The text a token id shows as in logprobs (the model's tokenizer in the server; a table in
/// tests).
pub trait TokenText {
    fn token_text(&self, id: u32) -> String;
    /// Several tokens as one text, special tokens included (an echoed token prompt).
    fn decode_text(&self, ids: &[u32]) -> String;
}

/// JSON has no -inf; vLLM reports impossible tokens as -9999.0, and so do we.
pub fn finite(logprob: f32) -> f32 {
    if logprob.is_nan() {
        -9999.0
    } else {
        logprob.max(-9999.0)
    }
}

/// Completions logprobs for generated tokens. `offset` is the character offset of the first
/// token in the choice's text; returns the offset after the last.
pub fn completion_logprobs(
    tokens: &[TokenLogprobs],
    tt: &dyn TokenText,
    mut offset: usize,
) -> (CompletionLogprobs, usize) {
    let mut out = CompletionLogprobs::default();
    for t in tokens {
        let text = tt.token_text(t.chosen.token_id);
        let mut top: Vec<(String, f32)> =
            t.top.iter().map(|a| (tt.token_text(a.token_id), finite(a.logprob))).collect();
        // The chosen token is always listed, as in vLLM, even when outside the top k.
        if !t.top.iter().any(|a| a.token_id == t.chosen.token_id) {
            top.push((text.clone(), finite(t.chosen.logprob)));
        }
        out.text_offset.push(offset);
        offset += text.chars().count();
        out.tokens.push(text);
        out.token_logprobs.push(Some(finite(t.chosen.logprob)));
        out.top_logprobs.push(Some(LogprobMap(top)));
    }
    (out, offset)
}

/// Completions logprobs for an echoed prompt: the first token has none (`null`), and so does
/// any position the engine did not score.
pub fn prompt_logprobs(
    prompt_ids: &[u32],
    scored: &[Option<TokenLogprobs>],
    tt: &dyn TokenText,
    mut offset: usize,
) -> (CompletionLogprobs, usize) {
    let mut out = CompletionLogprobs::default();
    for (i, &id) in prompt_ids.iter().enumerate() {
        let text = tt.token_text(id);
        out.text_offset.push(offset);
        offset += text.chars().count();
        match scored.get(i).and_then(|s| s.as_ref()) {
            Some(t) => {
                let mut top: Vec<(String, f32)> =
                    t.top.iter().map(|a| (tt.token_text(a.token_id), finite(a.logprob))).collect();
                if !t.top.iter().any(|a| a.token_id == id) {
                    top.push((text.clone(), finite(t.chosen.logprob)));
                }
                out.token_logprobs.push(Some(finite(t.chosen.logprob)));
                out.top_logprobs.push(Some(LogprobMap(top)));
            }
            None => {
                out.token_logprobs.push(None);
                out.top_logprobs.push(None);
            }
        }
        out.tokens.push(text);
    }
    (out, offset)
}

/// Chat logprobs: each token with its bytes and exactly `top_n` alternatives.
pub fn chat_logprobs(tokens: &[TokenLogprobs], tt: &dyn TokenText, top_n: usize) -> ChatLogprobs {
    let content = tokens
        .iter()
        .map(|t| {
            let token = tt.token_text(t.chosen.token_id);
            ChatTokenLogprob {
                bytes: token.as_bytes().to_vec(),
                token,
                logprob: finite(t.chosen.logprob),
                top_logprobs: t
                    .top
                    .iter()
                    .take(top_n)
                    .map(|a| {
                        let token = tt.token_text(a.token_id);
                        TopLogprob { bytes: token.as_bytes().to_vec(), token, logprob: finite(a.logprob) }
                    })
                    .collect(),
            }
        })
        .collect();
    ChatLogprobs { content }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ferrollm_core::TokenLogprob;

    /// Token `i` is the string "t{i}" (ids over 100 are "é" to count characters, not bytes).
    pub struct Table;
    impl TokenText for Table {
        fn token_text(&self, id: u32) -> String {
            if id > 100 {
                "é".into()
            } else {
                format!("t{id}")
            }
        }
        fn decode_text(&self, ids: &[u32]) -> String {
            ids.iter().map(|&i| self.token_text(i)).collect()
        }
    }

    fn lp(id: u32, logprob: f32, rank: usize) -> TokenLogprob {
        TokenLogprob { token_id: id, logprob, rank }
    }

    pub fn tl(chosen: u32, top: &[u32]) -> TokenLogprobs {
        TokenLogprobs {
            chosen: lp(chosen, -0.5, 1),
            top: top.iter().enumerate().map(|(i, &t)| lp(t, -(i as f32) - 0.25, i + 1)).collect(),
        }
    }

    #[test]
    fn completion_shape_lists_chosen_and_offsets() {
        let (l, end) = completion_logprobs(&[tl(1, &[1, 2]), tl(101, &[3]), tl(4, &[])], &Table, 10);
        assert_eq!(l.tokens, vec!["t1", "é", "t4"]);
        assert_eq!(l.text_offset, vec![10, 12, 13]);
        assert_eq!(end, 15);
        assert_eq!(l.token_logprobs, vec![Some(-0.5); 3]);
        let v = serde_json::to_value(&l).unwrap();
        assert_eq!(v["top_logprobs"][0], serde_json::json!({"t1": -0.25, "t2": -1.25}));
        // Chosen outside the top k is added.
        assert_eq!(v["top_logprobs"][1], serde_json::json!({"t3": -0.25, "é": -0.5}));
        // logprobs=0: only the chosen token.
        assert_eq!(v["top_logprobs"][2], serde_json::json!({"t4": -0.5}));
    }

    #[test]
    fn prompt_first_token_is_null() {
        let (l, end) = prompt_logprobs(&[5, 6], &[None, Some(tl(6, &[7]))], &Table, 0);
        assert_eq!(l.tokens, vec!["t5", "t6"]);
        assert_eq!(l.token_logprobs, vec![None, Some(-0.5)]);
        assert_eq!(l.text_offset, vec![0, 2]);
        assert_eq!(end, 4);
        let v = serde_json::to_value(&l).unwrap();
        assert!(v["top_logprobs"][0].is_null());
    }

    #[test]
    fn chat_shape() {
        let c = chat_logprobs(&[tl(101, &[101, 2, 3])], &Table, 2);
        let v = serde_json::to_value(&c).unwrap();
        let first = &v["content"][0];
        assert_eq!(first["token"], "é");
        assert_eq!(first["bytes"], serde_json::json!([0xc3, 0xa9]));
        assert_eq!(first["logprob"], -0.5);
        assert_eq!(first["top_logprobs"].as_array().unwrap().len(), 2);
        assert_eq!(first["top_logprobs"][1]["token"], "t2");
    }

    #[test]
    fn infinities_become_finite() {
        assert_eq!(finite(f32::NEG_INFINITY), -9999.0);
        assert_eq!(finite(f32::NAN), -9999.0);
        assert_eq!(finite(-1.5), -1.5);
    }
}
