//! What the completions and chat endpoints share: submitting prompts to the engine, reading
//! their streams, and counting usage.

use ferrollm_core::SamplingParams;
use ferrollm_engine::{CompletionOutput, Engine, EngineError, PromptInput, RequestOutput, RequestStream};
use futures::stream::{self, BoxStream, StreamExt};

use crate::errors::ApiError;
use crate::protocol::common::Usage;

/// `prefix` plus 32 random hex digits, like OpenAI's ids.
pub fn random_id(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

/// Prepares prompts and submits one engine request per prompt, on a blocking thread: chat
/// templates and tokenizing a long prompt take real CPU time that must not stall the async
/// workers serving other clients. If any prompt fails, the ones already submitted are
/// dropped, which aborts them.
pub async fn submit<P>(
    engine: &Engine,
    request_id: &str,
    params: SamplingParams,
    prepare: P,
) -> Result<Vec<RequestStream>, ApiError>
where
    P: FnOnce(&Engine) -> Result<Vec<PromptInput>, ApiError> + Send + 'static,
{
    let engine = engine.clone();
    let request_id = request_id.to_string();
    let task = tokio::task::spawn_blocking(move || {
        let prompts = prepare(&engine)?;
        if prompts.is_empty() {
            return Err(ApiError::invalid_param("prompt", "at least one prompt is required"));
        }
        let single = prompts.len() == 1;
        let mut streams = Vec::with_capacity(prompts.len());
        for (i, prompt) in prompts.into_iter().enumerate() {
            let id = if single { request_id.clone() } else { format!("{request_id}-{i}") };
            streams.push(engine.add_request(id, prompt, params.clone()).map_err(ApiError::from)?);
        }
        Ok(streams)
    });
    task.await.map_err(|e| ApiError::internal(format!("request preparation failed: {e}")))?
}

/// Every prompt's deltas as they come, tagged with the prompt's position.
pub fn merged(streams: Vec<RequestStream>) -> BoxStream<'static, (usize, RequestOutput)> {
    let tagged = streams.into_iter().enumerate().map(|(i, rs)| {
        stream::unfold(rs, move |mut rs| async move { rs.next().await.map(|out| ((i, out), rs)) }).boxed()
    });
    stream::select_all(tagged).boxed()
}

/// Prompt logprobs arrive once per completion of a prompt; only the first completion's are
/// kept, so `n > 1` does not repeat them.
pub fn keep_first_prompt_logprobs(delta: &mut RequestOutput) {
    if delta.outputs.first().is_some_and(|o| o.index != 0) {
        delta.prompt_logprobs = None;
    }
}

/// Waits for every request and returns each whole output, in prompt order.
pub async fn collect(streams: Vec<RequestStream>) -> Vec<RequestOutput> {
    let mut outs = Vec::with_capacity(streams.len());
    for mut rs in streams {
        let mut acc: Option<RequestOutput> = None;
        while let Some(mut delta) = rs.next().await {
            keep_first_prompt_logprobs(&mut delta);
            match &mut acc {
                Some(a) => a.merge_delta(delta),
                None => acc = Some(delta),
            }
        }
        outs.push(acc.unwrap_or_default());
    }
    outs
}

/// A request the engine core refused after admitting it (it can never fit) finishes as
/// "abort" with the reason in `stop_reason`; the client gets that as an error.
pub fn check_rejected(c: &CompletionOutput) -> Result<(), ApiError> {
    match (c.finish_reason.as_deref(), &c.stop_reason) {
        (Some("abort"), Some(reason)) => Err(ApiError::from(EngineError::InvalidRequest {
            param: Some("prompt"),
            message: format!("the request was refused: {reason}"),
        })),
        _ => Ok(()),
    }
}

/// Usage over the prompts of one API request: prompt tokens count once per prompt, however
/// many completions it has.
#[derive(Debug, Clone, Default)]
pub struct UsageTracker {
    prompt_tokens: Vec<usize>,
    cached_tokens: Vec<usize>,
    completion_tokens: usize,
}

impl UsageTracker {
    pub fn new(num_prompts: usize) -> UsageTracker {
        UsageTracker { prompt_tokens: vec![0; num_prompts], cached_tokens: vec![0; num_prompts], completion_tokens: 0 }
    }

    /// Counts a delta (or a whole output) of prompt `prompt`.
    pub fn observe(&mut self, prompt: usize, out: &RequestOutput) {
        if prompt >= self.prompt_tokens.len() {
            self.prompt_tokens.resize(prompt + 1, 0);
            self.cached_tokens.resize(prompt + 1, 0);
        }
        if !out.prompt_token_ids.is_empty() {
            self.prompt_tokens[prompt] = out.prompt_token_ids.len();
        }
        self.cached_tokens[prompt] = self.cached_tokens[prompt].max(out.num_cached_tokens);
        self.completion_tokens += out.outputs.iter().map(|o| o.token_ids.len()).sum::<usize>();
    }

    pub fn usage(&self) -> Usage {
        Usage::new(self.prompt_tokens.iter().sum(), self.completion_tokens, self.cached_tokens.iter().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(prompt_ids: Vec<u32>, index: usize, tokens: Vec<u32>, cached: usize) -> RequestOutput {
        RequestOutput {
            prompt_token_ids: prompt_ids,
            outputs: vec![CompletionOutput { index, token_ids: tokens, ..Default::default() }],
            num_cached_tokens: cached,
            ..Default::default()
        }
    }

    #[test]
    fn usage_counts_prompts_once_and_all_completions() {
        let mut u = UsageTracker::new(2);
        u.observe(0, &delta(vec![1, 2, 3], 0, vec![], 0));
        u.observe(0, &delta(vec![], 0, vec![7, 8], 2));
        u.observe(0, &delta(vec![], 1, vec![9], 2));
        u.observe(1, &delta(vec![4, 5], 0, vec![6], 0));
        let usage = u.usage();
        assert_eq!(usage.prompt_tokens, 5);
        assert_eq!(usage.completion_tokens, 4);
        assert_eq!(usage.total_tokens, 9);
        assert_eq!(usage.prompt_tokens_details.cached_tokens, 2);
    }

    #[test]
    fn rejection_becomes_an_error() {
        let ok = CompletionOutput { finish_reason: Some("abort".into()), ..Default::default() };
        assert!(check_rejected(&ok).is_ok());
        let bad = CompletionOutput {
            finish_reason: Some("abort".into()),
            stop_reason: Some("request needs 9000 tokens".into()),
            ..Default::default()
        };
        let e = check_rejected(&bad).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        assert!(e.message.contains("9000"));
    }

    #[test]
    fn ids_are_prefixed_hex() {
        let id = random_id("cmpl-");
        assert!(id.starts_with("cmpl-"));
        assert_eq!(id.len(), 5 + 32);
        assert_ne!(random_id("x"), random_id("x"));
    }

    #[test]
    fn later_completions_drop_prompt_logprobs() {
        let mut d = delta(vec![], 1, vec![3], 0);
        d.prompt_logprobs = Some(vec![None]);
        keep_first_prompt_logprobs(&mut d);
        assert!(d.prompt_logprobs.is_none());
        let mut d = delta(vec![], 0, vec![3], 0);
        d.prompt_logprobs = Some(vec![None]);
        keep_first_prompt_logprobs(&mut d);
        assert!(d.prompt_logprobs.is_some());
    }
}
