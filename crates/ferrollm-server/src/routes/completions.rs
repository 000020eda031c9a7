//! `POST /v1/completions`.
//!
//! Streaming and non-streaming responses are built by the same assembler from the same engine
//! deltas (the non-streaming one folds the pieces), so for a given seed both return the same
//! text.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferrollm_core::TokenLogprobs;
use ferrollm_engine::{PromptInput, RequestOutput};
use futures::StreamExt;
use serde_json::Value;

use super::generation::{check_rejected, keep_first_prompt_logprobs, merged, random_id, submit, UsageTracker};
use crate::errors::ApiError;
use crate::extract::{from_value, ApiJson};
use crate::logprobs::{completion_logprobs, prompt_logprobs, TokenText};
use crate::params::{logprobs_count, sampling_spec};
use crate::protocol::common::{SamplingRequest, StopReason, Usage};
use crate::protocol::completions::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, SinglePrompt,
};
use crate::sse::{sse_response, ChunkFormatter};
use crate::state::{unix_now, AppState};

/// The completions endpoint's default output length, as OpenAI's and vLLM's.
const DEFAULT_MAX_TOKENS: usize = 16;

pub async fn create_completion(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = from_value(&body)?;
    let sampling: SamplingRequest = from_value(&body)?;
    let model = state.models.resolve(req.model.as_deref())?;
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid_param("suffix", "`suffix` is not supported"));
    }
    let logprobs = logprobs_count("logprobs", req.logprobs)?;
    let mut spec = sampling_spec(&sampling, Some(DEFAULT_MAX_TOKENS), logprobs)?;
    let echo = req.echo.unwrap_or(false);
    if echo && logprobs.is_some() {
        spec.params.prompt_logprobs = logprobs;
    }
    let prompts = req.prompt.into_prompts();
    if prompts.is_empty() {
        return Err(ApiError::invalid_param("prompt", "`prompt` must not be an empty list"));
    }
    let num_prompts = prompts.len();
    let add_special = req.add_special_tokens.unwrap_or(true);
    let id = random_id("cmpl-");
    let streams = submit(&state.engine, &id, spec.params.clone(), move |engine| {
        prompts
            .into_iter()
            .map(|p| match p {
                SinglePrompt::Text(t) if add_special => Ok(PromptInput::Text(t)),
                SinglePrompt::Text(t) => Ok(PromptInput::Tokens(engine.tokenize(&t, false)?)),
                SinglePrompt::Tokens(ids) => Ok(PromptInput::Tokens(ids)),
            })
            .collect()
    })
    .await
    .map_err(|e| spec.rename_params(e))?;

    let assembler = CompletionAssembler {
        n: spec.params.n,
        echo,
        logprobs: logprobs.is_some(),
        stop_token_ids: spec.params.stop_token_ids.clone(),
        tt: state.engine.clone(),
        prompts: vec![PromptState::default(); num_prompts],
        choices: BTreeMap::new(),
        usage: UsageTracker::new(num_prompts),
    };
    let created = unix_now();
    let mut outputs = merged(streams);
    if spec.stream {
        let formatter = CompletionChunks {
            id,
            created,
            model,
            assembler,
            include_usage: spec.include_usage,
            continuous_usage: spec.continuous_usage,
        };
        return Ok(sse_response(outputs, formatter));
    }
    let mut assembler = assembler;
    let mut choices: BTreeMap<usize, CompletionChoice> = BTreeMap::new();
    while let Some((p, out)) = outputs.next().await {
        for piece in assembler.on_delta(p, out)? {
            fold(&mut choices, piece);
        }
    }
    let response = CompletionResponse {
        id,
        object: "text_completion",
        created,
        model,
        choices: choices.into_values().collect(),
        usage: Some(assembler.usage.usage()),
        system_fingerprint: None,
    };
    Ok(Json(response).into_response())
}

/// Adds a streamed piece to the whole choice.
fn fold(choices: &mut BTreeMap<usize, CompletionChoice>, piece: CompletionChoice) {
    match choices.get_mut(&piece.index) {
        None => {
            choices.insert(piece.index, piece);
        }
        Some(c) => {
            c.text.push_str(&piece.text);
            if let Some(l) = piece.logprobs {
                c.logprobs.get_or_insert_with(Default::default).extend(l);
            }
            if piece.finish_reason.is_some() {
                c.finish_reason = piece.finish_reason;
                c.stop_reason = piece.stop_reason;
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
struct PromptState {
    text: Option<String>,
    ids: Vec<u32>,
    logprobs: Vec<Option<TokenLogprobs>>,
}

#[derive(Debug, Clone, Default)]
struct ChoiceState {
    echoed: bool,
    /// Character offset of the next token in the choice's text.
    offset: usize,
}

/// Turns engine deltas into choice pieces: the echoed prompt first, then text and logprobs.
struct CompletionAssembler<T> {
    n: usize,
    echo: bool,
    logprobs: bool,
    stop_token_ids: Vec<u32>,
    tt: T,
    prompts: Vec<PromptState>,
    /// Keyed by the choice's index in the response: prompt * n + completion.
    choices: BTreeMap<usize, ChoiceState>,
    usage: UsageTracker,
}

impl<T: TokenText> CompletionAssembler<T> {
    fn on_delta(&mut self, p: usize, mut out: RequestOutput) -> Result<Vec<CompletionChoice>, ApiError> {
        keep_first_prompt_logprobs(&mut out);
        self.usage.observe(p, &out);
        if p >= self.prompts.len() {
            self.prompts.resize(p + 1, PromptState::default());
        }
        let prompt = &mut self.prompts[p];
        if !out.prompt_token_ids.is_empty() {
            prompt.text = out.prompt.take();
            prompt.ids = std::mem::take(&mut out.prompt_token_ids);
        }
        if let Some(l) = out.prompt_logprobs.take() {
            prompt.logprobs.extend(l);
        }
        let mut pieces = Vec::new();
        for c in out.outputs {
            check_rejected(&c)?;
            let index = p * self.n + c.index;
            let choice = self.choices.entry(index).or_default();
            let prompt = &self.prompts[p];
            let mut text = String::new();
            let mut logprobs = self.logprobs.then(CompletionLogprobs::default);
            if self.echo && !choice.echoed {
                let prompt_text = prompt.text.clone().unwrap_or_else(|| self.tt.decode_text(&prompt.ids));
                if let Some(l) = &mut logprobs {
                    l.extend(prompt_logprobs(&prompt.ids, &prompt.logprobs, &self.tt, 0).0);
                }
                choice.offset = prompt_text.chars().count();
                choice.echoed = true;
                text.push_str(&prompt_text);
            }
            text.push_str(&c.text);
            if let Some(l) = &mut logprobs {
                let (generated, end) =
                    completion_logprobs(c.logprobs.as_deref().unwrap_or_default(), &self.tt, choice.offset);
                choice.offset = end;
                l.extend(generated);
            }
            let has_tokens = logprobs.as_ref().is_some_and(|l| !l.tokens.is_empty());
            if text.is_empty() && c.finish_reason.is_none() && !has_tokens {
                continue;
            }
            pieces.push(CompletionChoice {
                index,
                text,
                logprobs,
                stop_reason: StopReason::from_engine(c.stop_reason.as_deref(), &self.stop_token_ids),
                finish_reason: c.finish_reason,
            });
        }
        Ok(pieces)
    }
}

/// Streaming: each piece as a `text_completion` chunk.
struct CompletionChunks<T> {
    id: String,
    created: u64,
    model: String,
    assembler: CompletionAssembler<T>,
    include_usage: bool,
    continuous_usage: bool,
}

impl<T> CompletionChunks<T> {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> String {
        let c = CompletionResponse {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
            system_fingerprint: None,
        };
        serde_json::to_string(&c).unwrap_or_default()
    }
}

impl<T: TokenText + Send + 'static> ChunkFormatter for CompletionChunks<T> {
    fn on_output(&mut self, prompt: usize, out: RequestOutput) -> Result<Vec<String>, ApiError> {
        let pieces = self.assembler.on_delta(prompt, out)?;
        let usage = self.continuous_usage.then(|| self.assembler.usage.usage());
        Ok(pieces.into_iter().map(|p| self.chunk(vec![p], usage)).collect())
    }

    fn on_end(&mut self) -> Vec<String> {
        if self.include_usage {
            vec![self.chunk(Vec::new(), Some(self.assembler.usage.usage()))]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logprobs::tests::{tl, Table};
    use ferrollm_engine::CompletionOutput;

    fn assembler(n: usize, echo: bool, logprobs: bool) -> CompletionAssembler<Table> {
        CompletionAssembler {
            n,
            echo,
            logprobs,
            stop_token_ids: vec![9],
            tt: Table,
            prompts: vec![PromptState::default()],
            choices: BTreeMap::new(),
            usage: UsageTracker::new(1),
        }
    }

    fn prompt_delta(text: &str, ids: Vec<u32>) -> RequestOutput {
        RequestOutput { prompt: Some(text.into()), prompt_token_ids: ids, ..Default::default() }
    }

    fn out(index: usize, text: &str, ids: Vec<u32>, finish: Option<&str>, stop: Option<&str>) -> RequestOutput {
        let logprobs = Some(ids.iter().map(|&i| tl(i, &[i])).collect());
        RequestOutput {
            outputs: vec![CompletionOutput {
                index,
                text: text.into(),
                token_ids: ids,
                logprobs,
                finish_reason: finish.map(str::to_string),
                stop_reason: stop.map(str::to_string),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn run(a: &mut CompletionAssembler<Table>, deltas: Vec<(usize, RequestOutput)>) -> Vec<CompletionChoice> {
        let mut all = BTreeMap::new();
        for (p, d) in deltas {
            for piece in a.on_delta(p, d).unwrap() {
                fold(&mut all, piece);
            }
        }
        all.into_values().collect()
    }

    #[test]
    fn folds_text_and_finish() {
        let mut a = assembler(2, false, false);
        let choices = run(
            &mut a,
            vec![
                (0, prompt_delta("Hi", vec![1, 2])),
                (0, out(0, " a", vec![3], None, None)),
                (0, out(1, " b", vec![4], None, None)),
                (0, out(0, "", vec![5], Some("length"), None)),
                (0, out(1, "c", vec![9], Some("stop"), Some("9"))),
            ],
        );
        assert_eq!(choices.len(), 2);
        assert_eq!((choices[0].text.as_str(), choices[0].finish_reason.as_deref()), (" a", Some("length")));
        assert_eq!(choices[1].text, " bc");
        assert_eq!(choices[1].stop_reason, Some(StopReason::Token(9)));
        assert!(choices[0].logprobs.is_none());
        let u = a.usage.usage();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (2, 4));
    }

    #[test]
    fn echo_prepends_prompt_and_its_logprobs() {
        let mut a = assembler(1, true, true);
        let mut first = out(0, " x", vec![3], None, None);
        first.prompt_logprobs = Some(vec![None, Some(tl(2, &[2]))]);
        let choices = run(
            &mut a,
            vec![(0, prompt_delta("ab", vec![1, 2])), (0, first), (0, out(0, "y", vec![4], Some("length"), None))],
        );
        assert_eq!(choices[0].text, "ab xy");
        let l = choices[0].logprobs.as_ref().unwrap();
        assert_eq!(l.tokens, vec!["t1", "t2", "t3", "t4"]);
        assert_eq!(l.token_logprobs[0], None);
        assert!(l.token_logprobs[1].is_some());
        // Generated tokens start after the prompt's characters.
        assert_eq!(l.text_offset, vec![0, 2, 2, 4]);
    }

    #[test]
    fn batched_prompts_number_choices_by_prompt() {
        let mut a = assembler(1, false, false);
        a.prompts = vec![PromptState::default(); 2];
        let choices = run(
            &mut a,
            vec![
                (1, prompt_delta("q", vec![7])),
                (0, prompt_delta("p", vec![8, 9])),
                (1, out(0, "B", vec![3], Some("length"), None)),
                (0, out(0, "A", vec![4], Some("length"), None)),
            ],
        );
        assert_eq!(choices.iter().map(|c| (c.index, c.text.as_str())).collect::<Vec<_>>(), vec![(0, "A"), (1, "B")]);
        assert_eq!(a.usage.usage().prompt_tokens, 3);
    }

    #[test]
    fn refused_requests_are_errors() {
        let mut a = assembler(1, false, false);
        let e = a.on_delta(0, out(0, "", vec![], Some("abort"), Some("too large"))).unwrap_err();
        assert!(e.message.contains("too large"));
    }

    #[test]
    fn chunks_and_usage_chunk() {
        let mut f = CompletionChunks {
            id: "cmpl-1".into(),
            created: 1,
            model: "m".into(),
            assembler: assembler(1, false, false),
            include_usage: true,
            continuous_usage: false,
        };
        assert!(f.on_output(0, prompt_delta("p", vec![1])).unwrap().is_empty());
        let chunks = f.on_output(0, out(0, "hi", vec![2], Some("length"), None)).unwrap();
        let v: Value = serde_json::from_str(&chunks[0]).unwrap();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], "hi");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert!(v.get("usage").is_none());
        let end: Value = serde_json::from_str(&f.on_end()[0]).unwrap();
        assert_eq!(end["choices"], serde_json::json!([]));
        assert_eq!(end["usage"]["total_tokens"], 2);
    }
}
