//! `--speculative-config`: which drafter proposes tokens for the target model to verify.
//!
//! JSON in the spirit of vLLM's: `{"method": "ngram", "num_speculative_tokens": 4,
//! "prompt_lookup_min": 2, "prompt_lookup_max": 5}`, `{"method": "layer_skip", "draft_layers": 8,
//! "num_speculative_tokens": 3}`, `{"method": "draft_model", "model": PATH, ...}`.

use serde::Deserialize;

/// Most draft tokens per step accepted in a config.
pub const MAX_SPECULATIVE_TOKENS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpeculativeMethod {
    /// Prompt (and output) lookup: the tokens that followed the latest earlier occurrence of
    /// the newest n-gram, longest n first.
    Ngram { prompt_lookup_min: usize, prompt_lookup_max: usize },
    /// The target's own first `draft_layers` layers, final norm and head.
    LayerSkip { draft_layers: usize },
    /// A smaller model with the same vocabulary.
    DraftModel { model: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeculativeConfig {
    pub method: SpeculativeMethod,
    /// Draft tokens proposed per step (k).
    pub num_speculative_tokens: usize,
}

#[derive(Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
enum Raw {
    Ngram { num_speculative_tokens: usize, prompt_lookup_min: Option<usize>, prompt_lookup_max: Option<usize> },
    LayerSkip { num_speculative_tokens: usize, draft_layers: usize },
    DraftModel { num_speculative_tokens: usize, model: String },
}

impl SpeculativeConfig {
    /// Parses and checks the JSON of `--speculative-config`; the error says what is wrong.
    pub fn parse(json: &str) -> Result<SpeculativeConfig, String> {
        let raw: Raw = serde_json::from_str(json).map_err(|e| format!("invalid --speculative-config: {e}"))?;
        let (method, k) = match raw {
            Raw::Ngram { num_speculative_tokens, prompt_lookup_min, prompt_lookup_max } => {
                // vLLM's defaults: one bound given sets the other; none gives 5..=5.
                let (min, max) = match (prompt_lookup_min, prompt_lookup_max) {
                    (None, None) => (5, 5),
                    (Some(a), None) => (a, a),
                    (None, Some(b)) => (b, b),
                    (Some(a), Some(b)) => (a, b),
                };
                if min == 0 || min > max {
                    return Err(format!(
                        "invalid --speculative-config: need 1 <= prompt_lookup_min <= prompt_lookup_max, got {min} and {max}"
                    ));
                }
                (SpeculativeMethod::Ngram { prompt_lookup_min: min, prompt_lookup_max: max }, num_speculative_tokens)
            }
            Raw::LayerSkip { num_speculative_tokens, draft_layers } => {
                if draft_layers == 0 {
                    return Err("invalid --speculative-config: draft_layers must be at least 1".into());
                }
                (SpeculativeMethod::LayerSkip { draft_layers }, num_speculative_tokens)
            }
            Raw::DraftModel { num_speculative_tokens, model } => {
                (SpeculativeMethod::DraftModel { model }, num_speculative_tokens)
            }
        };
        let cfg = SpeculativeConfig { method, num_speculative_tokens: k };
        cfg.check()?;
        Ok(cfg)
    }

    /// Checks the fields that do not depend on the model (configs built in code skip `parse`).
    pub fn check(&self) -> Result<(), String> {
        let k = self.num_speculative_tokens;
        if k == 0 || k > MAX_SPECULATIVE_TOKENS {
            return Err(format!(
                "invalid --speculative-config: num_speculative_tokens must be in 1..={MAX_SPECULATIVE_TOKENS}, got {k}"
            ));
        }
        Ok(())
    }

    pub fn method_name(&self) -> &'static str {
        match self.method {
            SpeculativeMethod::Ngram { .. } => "ngram",
            SpeculativeMethod::LayerSkip { .. } => "layer_skip",
            SpeculativeMethod::DraftModel { .. } => "draft_model",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_configs_parse() {
        let c = SpeculativeConfig::parse(
            r#"{"method":"ngram","num_speculative_tokens":4,"prompt_lookup_min":2,"prompt_lookup_max":5}"#,
        )
        .unwrap();
        assert_eq!(c.method, SpeculativeMethod::Ngram { prompt_lookup_min: 2, prompt_lookup_max: 5 });
        assert_eq!(c.num_speculative_tokens, 4);
        let c = SpeculativeConfig::parse(r#"{"method":"ngram","num_speculative_tokens":3}"#).unwrap();
        assert_eq!(c.method, SpeculativeMethod::Ngram { prompt_lookup_min: 5, prompt_lookup_max: 5 });
        let c =
            SpeculativeConfig::parse(r#"{"method":"layer_skip","draft_layers":8,"num_speculative_tokens":2}"#).unwrap();
        assert_eq!(c.method, SpeculativeMethod::LayerSkip { draft_layers: 8 });
        let c = SpeculativeConfig::parse(r#"{"method":"draft_model","model":"x.gguf","num_speculative_tokens":2}"#)
            .unwrap();
        assert_eq!(c.method_name(), "draft_model");
    }

    #[test]
    fn bad_configs_say_why() {
        let err = |s: &str| SpeculativeConfig::parse(s).unwrap_err();
        assert!(err(r#"{"method":"medusa","num_speculative_tokens":2}"#).contains("unknown variant `medusa`"));
        assert!(err(r#"{"method":"ngram","num_speculative_tokens":0}"#).contains("num_speculative_tokens must be"));
        assert!(err(r#"{"method":"ngram"}"#).contains("missing field `num_speculative_tokens`"));
        assert!(err(r#"{"method":"layer_skip","num_speculative_tokens":2}"#).contains("missing field `draft_layers`"));
        assert!(err(r#"{"method":"draft_model","num_speculative_tokens":2}"#).contains("missing field `model`"));
        assert!(err(r#"{"method":"ngram","num_speculative_tokens":2,"prompt_lookup_min":4,"prompt_lookup_max":2}"#)
            .contains("prompt_lookup_min"));
        assert!(err(r#"{"method":"ngram","num_speculative_tokens":2,"typo":1}"#).contains("unknown field `typo`"));
        assert!(err(r#"{"num_speculative_tokens":2}"#).contains("missing field `method`"));
        assert!(err("not json").contains("invalid --speculative-config"));
    }
}
