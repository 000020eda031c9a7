//! Request fields and response pieces shared by the completions and chat endpoints.

use std::collections::HashMap;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged, expecting = "a string or a list of strings")]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

impl StopSpec {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopSpec::One(s) => vec![s],
            StopSpec::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
    /// vLLM's extension: usage on every chunk.
    pub continuous_usage_stats: Option<bool>,
}

/// The sampling fields both generation endpoints accept, parsed as a separate view of the
/// body. Integers arrive signed so a negative value gets a range message naming the field
/// rather than a type error.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingRequest {
    pub n: Option<i64>,
    pub best_of: Option<i64>,
    pub use_beam_search: Option<bool>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<StopSpec>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub ignore_eos: Option<bool>,
    pub min_tokens: Option<i64>,
    pub skip_special_tokens: Option<bool>,
    pub include_stop_str_in_output: Option<bool>,
    /// ferrollm extra: opt this request out of speculative decoding.
    pub disable_speculation: Option<bool>,
    /// OpenAI's output format: `text`, `json_object` or `json_schema`.
    pub response_format: Option<Value>,
    /// vLLM's constraint object: `{json | regex | choice | grammar | json_object}`.
    pub structured_outputs: Option<Value>,
    /// vLLM's older spellings of the same constraints.
    pub guided_json: Option<Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    pub guided_grammar: Option<String>,
    /// Accepted and ignored: llguidance is the only backend.
    pub guided_decoding_backend: Option<String>,
    pub logit_bias: Option<HashMap<String, f64>>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Accepted and ignored, as OpenAI's API defines it (an end-user id for abuse tracking).
    pub user: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }
}

/// vLLM's `stop_reason`: the stop token id (a number) or the stop string that ended a choice.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum StopReason {
    Token(u32),
    Text(String),
}

impl StopReason {
    /// The engine reports both kinds as a string; a stop token's is its id in decimal.
    pub fn from_engine(reason: Option<&str>, stop_token_ids: &[u32]) -> Option<StopReason> {
        let r = reason?;
        match r.parse::<u32>() {
            Ok(id) if stop_token_ids.contains(&id) => Some(StopReason::Token(id)),
            _ => Some(StopReason::Text(r.to_string())),
        }
    }
}

/// Serializes an ordered list of (token, logprob) pairs as a JSON object, keeping the order
/// (most likely first) and the first of any duplicate keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogprobMap(pub Vec<(String, f32)>);

impl Serialize for LogprobMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut seen = std::collections::HashSet::new();
        let mut map = s.serialize_map(None)?;
        for (k, v) in &self.0 {
            if seen.insert(k.as_str()) {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_accepts_string_or_list() {
        let s: StopSpec = serde_json::from_str("\"\\n\"").unwrap();
        assert_eq!(s.into_vec(), vec!["\n"]);
        let s: StopSpec = serde_json::from_str("[\"a\", \"b\"]").unwrap();
        assert_eq!(s.into_vec(), vec!["a", "b"]);
        let e = serde_json::from_str::<StopSpec>("3").unwrap_err().to_string();
        assert!(e.contains("a string or a list of strings"), "{e}");
    }

    #[test]
    fn stop_reason_distinguishes_token_ids() {
        assert_eq!(StopReason::from_engine(Some("2"), &[2]), Some(StopReason::Token(2)));
        assert_eq!(StopReason::from_engine(Some("2"), &[]), Some(StopReason::Text("2".into())));
        assert_eq!(StopReason::from_engine(Some("\n"), &[]), Some(StopReason::Text("\n".into())));
        assert_eq!(StopReason::from_engine(None, &[]), None);
        assert_eq!(serde_json::to_string(&StopReason::Token(7)).unwrap(), "7");
    }

    #[test]
    fn logprob_map_keeps_order_and_first_duplicate() {
        let m = LogprobMap(vec![("b".into(), -0.5), ("a".into(), -1.0), ("b".into(), -2.0)]);
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"b":-0.5,"a":-1.0}"#);
    }

    #[test]
    fn usage_totals() {
        let u = Usage::new(10, 5, 8);
        let v = serde_json::to_value(u).unwrap();
        assert_eq!(v["total_tokens"], 15);
        assert_eq!(v["prompt_tokens_details"]["cached_tokens"], 8);
    }
}
