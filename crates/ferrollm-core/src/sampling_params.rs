//! Per-request sampling parameters, with vLLM's names, defaults and validation.

use serde::{Deserialize, Serialize};

use crate::StructuredOutputsParams;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Completions returned for the prompt.
    pub n: usize,
    pub temperature: f32,
    pub top_p: f32,
    /// 0 or -1 disables top-k.
    pub top_k: i32,
    pub min_p: f32,
    /// Seeds the request's own generator, so its samples do not depend on the rest of the batch.
    pub seed: Option<u64>,
    /// `None`: up to the model's context length.
    pub max_tokens: Option<usize>,
    pub min_tokens: usize,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub repetition_penalty: f32,
    /// Top log-probabilities to return per generated token (the chosen token is always included).
    pub logprobs: Option<usize>,
    pub prompt_logprobs: Option<usize>,
    pub skip_special_tokens: bool,
    pub include_stop_str_in_output: bool,
    /// Opt this request out of speculative decoding (when the engine runs with a
    /// `--speculative-config`); its output distribution is the same either way.
    pub disable_speculation: bool,
    /// Constrains the output to a JSON schema, regex, choice or grammar.
    pub structured_outputs: Option<StructuredOutputsParams>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            n: 1,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            max_tokens: Some(16),
            min_tokens: 0,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logprobs: None,
            prompt_logprobs: None,
            skip_special_tokens: true,
            include_stop_str_in_output: false,
            disable_speculation: false,
            structured_outputs: None,
        }
    }
}

/// A parameter outside its valid range; `field` names it as the API does.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ParamError {
    pub field: &'static str,
    pub message: String,
}

/// Largest `logprobs` / `prompt_logprobs` accepted, as in vLLM's default.
pub const MAX_LOGPROBS: usize = 20;

impl SamplingParams {
    /// Greedy decoding: exact argmax, temperature 0.
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams { temperature: 0.0, max_tokens: Some(max_tokens), ..Default::default() }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature < 1e-5
    }

    /// Checks every field's range, naming the first bad one.
    pub fn validate(&self) -> Result<(), ParamError> {
        fn err(field: &'static str, message: impl Into<String>) -> Result<(), ParamError> {
            Err(ParamError { field, message: message.into() })
        }
        if self.n < 1 {
            return err("n", format!("must be at least 1, got {}", self.n));
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return err("temperature", format!("must be non-negative, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return err("top_p", format!("must be in (0, 1], got {}", self.top_p));
        }
        if self.top_k < -1 {
            return err("top_k", format!("must be -1 (disable), 0 (disable) or positive, got {}", self.top_k));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return err("min_p", format!("must be in [0, 1], got {}", self.min_p));
        }
        if let Some(m) = self.max_tokens {
            if m < 1 {
                return err("max_tokens", format!("must be at least 1, got {m}"));
            }
            if self.min_tokens > m {
                return err("min_tokens", format!("must be at most max_tokens={m}, got {}", self.min_tokens));
            }
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return err("presence_penalty", format!("must be in [-2, 2], got {}", self.presence_penalty));
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return err("frequency_penalty", format!("must be in [-2, 2], got {}", self.frequency_penalty));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty <= 2.0) {
            return err("repetition_penalty", format!("must be in (0, 2], got {}", self.repetition_penalty));
        }
        if let Some(k) = self.logprobs {
            if k > MAX_LOGPROBS {
                return err("logprobs", format!("must be at most {MAX_LOGPROBS}, got {k}"));
            }
        }
        if let Some(k) = self.prompt_logprobs {
            if k > MAX_LOGPROBS {
                return err("prompt_logprobs", format!("must be at most {MAX_LOGPROBS}, got {k}"));
            }
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return err("stop", "stop strings must not be empty");
        }
        if let Some(so) = &self.structured_outputs {
            if let Err(m) = so.check() {
                return err("structured_outputs", m);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_fields_are_named() {
        assert!(SamplingParams::default().validate().is_ok());
        let bad = SamplingParams { temperature: -1.0, ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().field, "temperature");
        let bad = SamplingParams { top_p: 0.0, ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().field, "top_p");
        let bad = SamplingParams { max_tokens: Some(0), ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().field, "max_tokens");
        let bad = SamplingParams { logprobs: Some(50), ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().field, "logprobs");
        let bad = SamplingParams { n: 0, ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().field, "n");
    }
}
