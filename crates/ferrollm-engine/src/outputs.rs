//! What the library API and the server receive, in vLLM's shape.

use ferrollm_core::TokenLogprobs;

/// One of the `n` completions of a request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompletionOutput {
    pub index: usize,
    /// In a stream, the new text of this delta; in a final output, the whole text.
    pub text: String,
    pub token_ids: Vec<u32>,
    pub cumulative_logprob: Option<f64>,
    pub logprobs: Option<Vec<TokenLogprobs>>,
    /// "stop", "length" or "abort" once finished.
    pub finish_reason: Option<String>,
    /// The stop string or stop token that ended it, if any.
    pub stop_reason: Option<String>,
}

impl CompletionOutput {
    pub fn finished(&self) -> bool {
        self.finish_reason.is_some()
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestOutput {
    pub request_id: String,
    pub prompt: Option<String>,
    pub prompt_token_ids: Vec<u32>,
    /// `None` at position 0, as in vLLM.
    pub prompt_logprobs: Option<Vec<Option<TokenLogprobs>>>,
    pub outputs: Vec<CompletionOutput>,
    /// All completions are done.
    pub finished: bool,
    /// Prompt tokens served from the prefix cache.
    pub num_cached_tokens: usize,
}

impl RequestOutput {
    /// Merges a streamed delta into an accumulated output.
    pub fn merge_delta(&mut self, delta: RequestOutput) {
        self.finished = delta.finished;
        self.num_cached_tokens = self.num_cached_tokens.max(delta.num_cached_tokens);
        if let Some(p) = delta.prompt_logprobs {
            self.prompt_logprobs.get_or_insert_with(Vec::new).extend(p);
        }
        for d in delta.outputs {
            let slot = match self.outputs.iter_mut().find(|o| o.index == d.index) {
                Some(s) => s,
                None => {
                    self.outputs.push(CompletionOutput { index: d.index, ..Default::default() });
                    self.outputs.sort_by_key(|o| o.index);
                    self.outputs.iter_mut().find(|o| o.index == d.index).expect("just inserted")
                }
            };
            slot.text.push_str(&d.text);
            slot.token_ids.extend(d.token_ids);
            if d.cumulative_logprob.is_some() {
                slot.cumulative_logprob = d.cumulative_logprob;
            }
            if let Some(l) = d.logprobs {
                slot.logprobs.get_or_insert_with(Vec::new).extend(l);
            }
            if d.finish_reason.is_some() {
                slot.finish_reason = d.finish_reason;
                slot.stop_reason = d.stop_reason;
            }
        }
    }
}
