//! `/v1/completions`: the request's own fields (sampling fields are in `SamplingRequest`) and
//! the response and chunk shapes.

use serde::{Deserialize, Serialize};

use super::common::{LogprobMap, StopReason, Usage};

/// `prompt`: text, a batch of texts, token ids, or a batch of token-id lists.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged, expecting = "a string, a list of strings, a list of token ids, or a list of lists of token ids")]
pub enum PromptSpec {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenBatch(Vec<Vec<u32>>),
}

/// One prompt of a (possibly batched) request.
#[derive(Debug, Clone, PartialEq)]
pub enum SinglePrompt {
    Text(String),
    Tokens(Vec<u32>),
}

impl PromptSpec {
    /// The prompts in order; a batch yields `n` choices per prompt.
    pub fn into_prompts(self) -> Vec<SinglePrompt> {
        match self {
            PromptSpec::Text(t) => vec![SinglePrompt::Text(t)],
            PromptSpec::Texts(v) => v.into_iter().map(SinglePrompt::Text).collect(),
            PromptSpec::Tokens(t) => vec![SinglePrompt::Tokens(t)],
            PromptSpec::TokenBatch(v) => v.into_iter().map(SinglePrompt::Tokens).collect(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: PromptSpec,
    pub echo: Option<bool>,
    /// Top alternatives per token (0 returns only the chosen token's logprob).
    pub logprobs: Option<i64>,
    pub suffix: Option<String>,
    /// Whether text prompts get the tokenizer's special tokens (BOS); vLLM's default is yes.
    pub add_special_tokens: Option<bool>,
}

/// The legacy completions logprobs object; one entry per token, the prompt's first with
/// `null` logprobs when echoed.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<LogprobMap>>,
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    pub fn extend(&mut self, other: CompletionLogprobs) {
        self.tokens.extend(other.tokens);
        self.token_logprobs.extend(other.token_logprobs);
        self.top_logprobs.extend(other.top_logprobs);
        self.text_offset.extend(other.text_offset);
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<String>,
    pub stop_reason: Option<StopReason>,
}

/// The response, and also each streamed chunk (`object` "text_completion" in both, as OpenAI
/// sends it).
#[derive(Debug, Clone, Serialize)]
pub struct CompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompts(json: &str) -> Vec<SinglePrompt> {
        serde_json::from_str::<PromptSpec>(json).unwrap().into_prompts()
    }

    #[test]
    fn prompt_forms() {
        assert_eq!(prompts("\"hi\""), vec![SinglePrompt::Text("hi".into())]);
        assert_eq!(prompts("[\"a\",\"b\"]").len(), 2);
        assert_eq!(prompts("[1,2,3]"), vec![SinglePrompt::Tokens(vec![1, 2, 3])]);
        assert_eq!(prompts("[[1],[2,3]]"), vec![SinglePrompt::Tokens(vec![1]), SinglePrompt::Tokens(vec![2, 3])]);
        // An empty list parses; the route rejects it with a message.
        assert!(prompts("[]").is_empty());
    }

    #[test]
    fn bad_prompts_say_what_is_expected() {
        for bad in ["3", "[1, \"a\"]", "[-1]", "{\"a\":1}", "null"] {
            let e = serde_json::from_str::<PromptSpec>(bad).unwrap_err().to_string();
            assert!(e.contains("a list of token ids"), "{bad}: {e}");
        }
    }
}
