//! One request's grammar state: an llguidance matcher behind the scheduler's interface.

use ferrollm_core::{StructuredOutputGrammar, TokenBitmask};
use llguidance::Matcher;

pub struct LlgGrammar {
    matcher: Matcher,
    /// Words of the bitmask: the model's vocabulary / 32, rounded up.
    words: usize,
    eos: Vec<u32>,
}

impl LlgGrammar {
    pub fn new(matcher: Matcher, vocab_size: usize, eos: Vec<u32>) -> LlgGrammar {
        LlgGrammar { matcher, words: vocab_size.div_ceil(32), eos }
    }

    fn eos_only(&self) -> TokenBitmask {
        let mut m = TokenBitmask(vec![0; self.words]);
        for &t in &self.eos {
            m.allow(t);
        }
        m
    }
}

impl StructuredOutputGrammar for LlgGrammar {
    fn allowed_tokens(&mut self) -> TokenBitmask {
        match self.matcher.compute_mask_or_eos() {
            Ok(v) => {
                let mut words = v.as_slice().to_vec();
                words.resize(self.words, 0);
                TokenBitmask(words)
            }
            // A failed matcher lets the request end rather than run unconstrained.
            Err(_) => self.eos_only(),
        }
    }

    fn accept_tokens(&mut self, tokens: &[u32]) -> bool {
        if self.matcher.is_stopped() {
            // After the grammar has finished only end-of-sequence can follow.
            return tokens.iter().all(|t| self.eos.contains(t));
        }
        self.matcher.consume_tokens(tokens).is_ok()
    }

    fn validate_tokens(&mut self, tokens: &[u32]) -> usize {
        if self.matcher.is_stopped() {
            return 0;
        }
        self.matcher.validate_tokens(tokens).unwrap_or(0)
    }

    fn rollback(&mut self, num_tokens: usize) {
        let _ = self.matcher.rollback(num_tokens);
    }

    fn jump_forward(&mut self) -> Vec<u32> {
        if self.matcher.is_stopped() {
            return Vec::new();
        }
        self.matcher.consume_ff_tokens()
    }

    fn is_terminated(&self) -> bool {
        self.matcher.is_stopped()
    }
}
