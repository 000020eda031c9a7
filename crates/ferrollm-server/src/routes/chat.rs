//! `POST /v1/chat/completions`.
//!
//! Messages are rendered with the model's chat template and tokenized without special tokens
//! (the template writes BOS and turn markers itself), then submitted as token ids. As with
//! completions, one assembler serves both streaming and non-streaming responses.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferrollm_engine::{PromptInput, RequestOutput};
use futures::StreamExt;
use serde_json::Value;

use super::generation::{check_rejected, merged, random_id, submit, UsageTracker};
use crate::errors::ApiError;
use crate::extract::{from_value, ApiJson};
use crate::logprobs::{chat_logprobs, TokenText};
use crate::params::{logprobs_count, sampling_spec};
use crate::protocol::chat::{
    to_chat_messages, AssistantMessage, ChatChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse,
    ChatLogprobs, ChunkChoice, Delta,
};
use crate::protocol::common::{SamplingRequest, StopReason, Usage};
use crate::sse::{sse_response, ChunkFormatter};
use crate::state::{unix_now, AppState};

/// Checks the chat-only fields we do not implement, so they fail loudly instead of being
/// silently ignored.
fn check_unsupported(req: &ChatCompletionRequest) -> Result<(), ApiError> {
    let tool_choice_none = matches!(&req.tool_choice, Some(Value::String(s)) if s == "none");
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) && !tool_choice_none {
        return Err(ApiError::invalid_param("tools", "tool calling is not supported"));
    }
    if req.continue_final_message == Some(true) {
        return Err(ApiError::invalid_param("continue_final_message", "`continue_final_message` is not supported"));
    }
    if req.chat_template.is_some() {
        return Err(ApiError::invalid_param(
            "chat_template",
            "per-request chat templates are not supported; start the server with --chat-template",
        ));
    }
    Ok(())
}

/// Resolves `logprobs` / `top_logprobs` into the engine's count of alternatives.
fn chat_logprobs_count(req: &ChatCompletionRequest) -> Result<Option<usize>, ApiError> {
    let top = logprobs_count("top_logprobs", req.top_logprobs)?;
    match (req.logprobs.unwrap_or(false), top) {
        (true, top) => Ok(Some(top.unwrap_or(0))),
        (false, Some(k)) if k > 0 => {
            Err(ApiError::invalid_param("top_logprobs", "`top_logprobs` requires `logprobs` to be true"))
        }
        (false, _) => Ok(None),
    }
}

pub async fn create_chat_completion(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let req: ChatCompletionRequest = from_value(&body)?;
    let sampling: SamplingRequest = from_value(&body)?;
    let model = state.models.resolve(req.model.as_deref())?;
    check_unsupported(&req)?;
    let top_logprobs = chat_logprobs_count(&req)?;
    let spec = sampling_spec(&sampling, None, top_logprobs)?;
    let add_generation_prompt = req.add_generation_prompt.unwrap_or(true);
    let messages = to_chat_messages(req.messages)?;
    let id = random_id("chatcmpl-");
    let streams = submit(&state.engine, &id, spec.params.clone(), move |engine| {
        let text = engine.apply_chat_template(&messages, add_generation_prompt)?;
        Ok(vec![PromptInput::Tokens(engine.tokenize(&text, false)?)])
    })
    .await
    .map_err(|e| spec.rename_params(e))?;

    let assembler = ChatAssembler {
        n: spec.params.n,
        top_logprobs,
        stop_token_ids: spec.params.stop_token_ids.clone(),
        tt: state.engine.clone(),
        usage: UsageTracker::new(1),
    };
    let created = unix_now();
    let mut outputs = merged(streams);
    if spec.stream {
        let formatter = ChatChunks {
            id,
            created,
            model,
            assembler,
            include_usage: spec.include_usage,
            continuous_usage: spec.continuous_usage,
            sent_roles: false,
        };
        return Ok(sse_response(outputs, formatter));
    }
    let mut assembler = assembler;
    let mut choices: BTreeMap<usize, ChatChoice> = BTreeMap::new();
    while let Some((p, out)) = outputs.next().await {
        for piece in assembler.on_delta(p, out)? {
            fold(&mut choices, piece);
        }
    }
    let response = ChatCompletionResponse {
        id,
        object: "chat.completion",
        created,
        model,
        choices: choices.into_values().collect(),
        usage: assembler.usage.usage(),
        system_fingerprint: None,
    };
    Ok(Json(response).into_response())
}

fn fold(choices: &mut BTreeMap<usize, ChatChoice>, piece: ChunkChoice) {
    let c = choices.entry(piece.index).or_insert_with(|| ChatChoice {
        index: piece.index,
        message: AssistantMessage { role: "assistant", content: String::new() },
        logprobs: None,
        finish_reason: None,
        stop_reason: None,
    });
    if let Some(text) = piece.delta.content {
        c.message.content.push_str(&text);
    }
    if let Some(l) = piece.logprobs {
        c.logprobs.get_or_insert_with(ChatLogprobs::default).content.extend(l.content);
    }
    if piece.finish_reason.is_some() {
        c.finish_reason = piece.finish_reason;
        c.stop_reason = piece.stop_reason;
    }
}

/// Turns engine deltas into chunk choices.
struct ChatAssembler<T> {
    n: usize,
    top_logprobs: Option<usize>,
    stop_token_ids: Vec<u32>,
    tt: T,
    usage: UsageTracker,
}

impl<T: TokenText> ChatAssembler<T> {
    fn on_delta(&mut self, p: usize, out: RequestOutput) -> Result<Vec<ChunkChoice>, ApiError> {
        self.usage.observe(p, &out);
        let mut pieces = Vec::new();
        for c in out.outputs {
            check_rejected(&c)?;
            let logprobs =
                self.top_logprobs.map(|k| chat_logprobs(c.logprobs.as_deref().unwrap_or_default(), &self.tt, k));
            let has_tokens = logprobs.as_ref().is_some_and(|l| !l.content.is_empty());
            if c.text.is_empty() && c.finish_reason.is_none() && !has_tokens {
                continue;
            }
            pieces.push(ChunkChoice {
                index: p * self.n + c.index,
                delta: Delta { role: None, content: Some(c.text) },
                logprobs,
                stop_reason: StopReason::from_engine(c.stop_reason.as_deref(), &self.stop_token_ids),
                finish_reason: c.finish_reason,
            });
        }
        Ok(pieces)
    }
}

/// Streaming: a role chunk per choice first (as OpenAI sends), then content chunks.
struct ChatChunks<T> {
    id: String,
    created: u64,
    model: String,
    assembler: ChatAssembler<T>,
    include_usage: bool,
    continuous_usage: bool,
    sent_roles: bool,
}

impl<T> ChatChunks<T> {
    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> String {
        let c = ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
            system_fingerprint: None,
        };
        serde_json::to_string(&c).unwrap_or_default()
    }
}

impl<T: TokenText + Send + 'static> ChunkFormatter for ChatChunks<T> {
    fn on_output(&mut self, prompt: usize, out: RequestOutput) -> Result<Vec<String>, ApiError> {
        let pieces = self.assembler.on_delta(prompt, out)?;
        let usage = self.continuous_usage.then(|| self.assembler.usage.usage());
        let mut chunks = Vec::new();
        if !self.sent_roles {
            self.sent_roles = true;
            for index in 0..self.assembler.n {
                let role = ChunkChoice {
                    index,
                    delta: Delta { role: Some("assistant"), content: Some(String::new()) },
                    logprobs: None,
                    finish_reason: None,
                    stop_reason: None,
                };
                chunks.push(self.chunk(vec![role], usage));
            }
        }
        chunks.extend(pieces.into_iter().map(|p| self.chunk(vec![p], usage)));
        Ok(chunks)
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
    use serde_json::json;

    fn chunks(n: usize, top: Option<usize>) -> ChatChunks<Table> {
        ChatChunks {
            id: "chatcmpl-1".into(),
            created: 1,
            model: "m".into(),
            assembler: ChatAssembler {
                n,
                top_logprobs: top,
                stop_token_ids: vec![],
                tt: Table,
                usage: UsageTracker::new(1),
            },
            include_usage: true,
            continuous_usage: false,
            sent_roles: false,
        }
    }

    fn out(index: usize, text: &str, ids: Vec<u32>, finish: Option<&str>) -> RequestOutput {
        RequestOutput {
            outputs: vec![CompletionOutput {
                index,
                text: text.into(),
                logprobs: Some(ids.iter().map(|&i| tl(i, &[i, 50])).collect()),
                token_ids: ids,
                finish_reason: finish.map(str::to_string),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn parse(s: &[String]) -> Vec<Value> {
        s.iter().map(|c| serde_json::from_str(c).unwrap()).collect()
    }

    #[test]
    fn role_chunks_then_content() {
        let mut f = chunks(2, None);
        let first = RequestOutput { prompt_token_ids: vec![1, 2, 3], ..Default::default() };
        let c = parse(&f.on_output(0, first).unwrap());
        assert_eq!(c.len(), 2);
        assert_eq!(c[1]["choices"][0]["index"], 1);
        assert_eq!(c[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        assert_eq!(c[0]["object"], "chat.completion.chunk");
        let c = parse(&f.on_output(0, out(1, "Hi", vec![4], Some("stop"))).unwrap());
        assert_eq!(c[0]["choices"][0]["delta"], json!({"content": "Hi"}));
        assert_eq!(c[0]["choices"][0]["finish_reason"], "stop");
        assert!(c[0]["choices"][0]["logprobs"].is_null());
        let end = parse(&f.on_end());
        assert_eq!(end[0]["usage"]["prompt_tokens"], 3);
        assert_eq!(end[0]["usage"]["completion_tokens"], 1);
    }

    #[test]
    fn non_stream_fold_matches_stream_text() {
        let mut a = chunks(1, Some(1)).assembler;
        let mut all = BTreeMap::new();
        for d in [out(0, "Hel", vec![1, 2], None), out(0, "", vec![3], None), out(0, "lo", vec![4], Some("length"))] {
            for p in a.on_delta(0, d).unwrap() {
                fold(&mut all, p);
            }
        }
        let c = &all[&0];
        assert_eq!(c.message.content, "Hello");
        assert_eq!(c.finish_reason.as_deref(), Some("length"));
        let l = c.logprobs.as_ref().unwrap();
        assert_eq!(l.content.len(), 4);
        assert_eq!(l.content[0].top_logprobs.len(), 1);
    }

    fn req(v: Value) -> ChatCompletionRequest {
        from_value(&v).unwrap()
    }

    #[test]
    fn logprob_flags() {
        let m = json!([{"role": "user", "content": "x"}]);
        assert_eq!(chat_logprobs_count(&req(json!({"messages": m}))).unwrap(), None);
        assert_eq!(chat_logprobs_count(&req(json!({"messages": m, "logprobs": true}))).unwrap(), Some(0));
        assert_eq!(
            chat_logprobs_count(&req(json!({"messages": m, "logprobs": true, "top_logprobs": 3}))).unwrap(),
            Some(3)
        );
        let e = chat_logprobs_count(&req(json!({"messages": m, "top_logprobs": 3}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("top_logprobs"));
        let e = chat_logprobs_count(&req(json!({"messages": m, "logprobs": true, "top_logprobs": 30}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("top_logprobs"));
    }

    #[test]
    fn unsupported_fields_are_refused() {
        let m = json!([{"role": "user", "content": "x"}]);
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        assert_eq!(
            check_unsupported(&req(json!({"messages": m, "tools": tools}))).unwrap_err().param.as_deref(),
            Some("tools")
        );
        assert!(check_unsupported(&req(json!({"messages": m, "tools": tools, "tool_choice": "none"}))).is_ok());
        // Output formats are structured outputs now (see `structured.rs`), not refused here.
        assert!(check_unsupported(&req(json!({"messages": m, "response_format": {"type": "json_object"}}))).is_ok());
    }
}
