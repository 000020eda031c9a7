//! What the scheduler needs from a grammar to constrain a request's output.
//!
//! The grammar engine itself (llguidance) lives in the engine crate; the scheduler only
//! drives this interface: it asks for the allowed tokens at each position it schedules for
//! sampling, advances the grammar with the tokens that were accepted, checks draft tokens
//! before they are verified, and appends the tokens a grammar forces (jump-forward).

use serde::{Deserialize, Serialize};

/// A constraint on a request's output, in vLLM's `StructuredOutputsParams` shape: exactly one
/// of the fields is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StructuredOutputsParams {
    /// A JSON schema the output must satisfy.
    pub json: Option<serde_json::Value>,
    /// A regular expression the whole output must match.
    pub regex: Option<String>,
    /// The output is exactly one of these strings.
    pub choice: Option<Vec<String>>,
    /// A context-free grammar: Lark-style EBNF as llguidance reads it (GBNF rules with `::=`
    /// are read too).
    pub grammar: Option<String>,
    /// Any JSON object.
    pub json_object: bool,
}

impl StructuredOutputsParams {
    /// How many constraint kinds are set (valid requests set exactly one).
    pub fn num_kinds(&self) -> usize {
        [self.json.is_some(), self.regex.is_some(), self.choice.is_some(), self.grammar.is_some(), self.json_object]
            .into_iter()
            .filter(|&b| b)
            .count()
    }

    /// A message naming what is wrong, if anything.
    pub fn check(&self) -> Result<(), String> {
        match self.num_kinds() {
            0 => return Err("set one of json, regex, choice, grammar or json_object".into()),
            1 => {}
            _ => return Err("only one of json, regex, choice, grammar and json_object may be set".into()),
        }
        if let Some(c) = &self.choice {
            if c.is_empty() {
                return Err("choice must list at least one string".into());
            }
        }
        if let Some(g) = &self.grammar {
            if g.trim().is_empty() {
                return Err("grammar is empty".into());
            }
        }
        if let Some(r) = &self.regex {
            if r.is_empty() {
                return Err("regex is empty".into());
            }
        }
        Ok(())
    }
}

/// Allowed next tokens: bit `t % 32` of word `t / 32` is set when token `t` is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBitmask(pub Vec<u32>);

impl TokenBitmask {
    /// Nothing allowed, for a vocabulary of `vocab_size` tokens.
    pub fn empty(vocab_size: usize) -> TokenBitmask {
        TokenBitmask(vec![0; vocab_size.div_ceil(32)])
    }

    pub fn allow(&mut self, token: u32) {
        if let Some(w) = self.0.get_mut(token as usize / 32) {
            *w |= 1 << (token % 32);
        }
    }

    pub fn is_allowed(&self, token: u32) -> bool {
        self.0.get(token as usize / 32).is_some_and(|w| w >> (token % 32) & 1 == 1)
    }

    pub fn num_allowed(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Sets every disallowed token's logit to minus infinity.
    pub fn apply(&self, logits: &mut [f32]) {
        for (w, chunk) in self.0.iter().zip(logits.chunks_mut(32)) {
            if *w == u32::MAX {
                continue;
            }
            for (i, l) in chunk.iter_mut().enumerate() {
                if w >> i & 1 == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        // Logits past the mask's words (a padded vocabulary) are never allowed.
        for l in logits.iter_mut().skip(self.0.len() * 32) {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// A request's grammar state, advanced token by token.
pub trait StructuredOutputGrammar: Send {
    /// Tokens allowed next. Once the grammar has finished (or failed), only end-of-sequence.
    fn allowed_tokens(&mut self) -> TokenBitmask;
    /// Advances past `tokens`; false when one of them was not allowed.
    fn accept_tokens(&mut self, tokens: &[u32]) -> bool;
    /// How many leading `tokens` the grammar would accept, without advancing.
    fn validate_tokens(&mut self, tokens: &[u32]) -> usize;
    /// Undoes the last `num_tokens` accepted tokens.
    fn rollback(&mut self, num_tokens: usize);
    /// Tokens the grammar forces from here, whatever the model would say; accepts them.
    fn jump_forward(&mut self) -> Vec<u32>;
    /// Whether the grammar has finished (end-of-sequence accepted) or failed.
    fn is_terminated(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmask_masks_exactly_the_disallowed_tokens() {
        let mut m = TokenBitmask::empty(70);
        for t in [0, 31, 32, 69] {
            m.allow(t);
        }
        assert_eq!(m.num_allowed(), 4);
        let mut logits = vec![1.0f32; 72];
        m.apply(&mut logits);
        let allowed: Vec<usize> = (0..72).filter(|&i| logits[i].is_finite()).collect();
        assert_eq!(allowed, vec![0, 31, 32, 69]);
        assert!(m.is_allowed(69) && !m.is_allowed(68) && !m.is_allowed(1000));
    }

    #[test]
    fn exactly_one_kind_is_required() {
        assert!(StructuredOutputsParams::default().check().is_err());
        let p = StructuredOutputsParams { regex: Some("a+".into()), json_object: true, ..Default::default() };
        assert!(p.check().unwrap_err().contains("only one"));
        let p = StructuredOutputsParams { choice: Some(vec![]), ..Default::default() };
        assert!(p.check().unwrap_err().contains("choice"));
        let p = StructuredOutputsParams { choice: Some(vec!["yes".into()]), ..Default::default() };
        assert!(p.check().is_ok());
    }
}
