//! `POST /tokenize` and `POST /detokenize`, in vLLM's shapes.

use axum::extract::State;
use axum::Json;

use crate::errors::ApiError;
use crate::extract::ApiJson;
use crate::logprobs::TokenText;
use crate::protocol::chat::to_chat_messages;
use crate::protocol::tokenize::{DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse};
use crate::state::AppState;

/// Runs tokenizer work off the async workers: a multi-megabyte prompt takes a while.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))?
}

pub async fn tokenize(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    state.models.resolve(req.model.as_deref())?;
    let engine = state.engine.clone();
    let tokens = match (req.prompt, req.messages) {
        (Some(prompt), None) => {
            let add_special = req.add_special_tokens.unwrap_or(true);
            blocking(move || Ok(engine.tokenize(&prompt, add_special)?)).await?
        }
        (None, Some(messages)) => {
            let messages = to_chat_messages(messages)?;
            let add_generation_prompt = req.add_generation_prompt.unwrap_or(true);
            let add_special = req.add_special_tokens.unwrap_or(false);
            blocking(move || {
                let text = engine.apply_chat_template(&messages, add_generation_prompt)?;
                Ok(engine.tokenize(&text, add_special)?)
            })
            .await?
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_param("prompt", "give either `prompt` or `messages`, not both"))
        }
        (None, None) => return Err(ApiError::invalid_param("prompt", "`prompt` or `messages` is required")),
    };
    let token_strs =
        req.return_token_strs.unwrap_or(false).then(|| tokens.iter().map(|&t| state.engine.token_text(t)).collect());
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        max_model_len: state.engine.info().max_model_len,
        tokens,
        token_strs,
    }))
}

pub async fn detokenize(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    state.models.resolve(req.model.as_deref())?;
    let vocab = state.engine.info().vocab_size;
    if let Some((i, bad)) = req.tokens.iter().enumerate().find(|(_, &t)| t as usize >= vocab) {
        return Err(ApiError::invalid_param(
            format!("tokens[{i}]"),
            format!("token id {bad} is out of vocabulary (size {vocab})"),
        ));
    }
    let engine = state.engine.clone();
    let tokens = req.tokens;
    let prompt = blocking(move || {
        engine.tokenizer().decode(&tokens, false).map_err(|e| ApiError::internal(format!("cannot decode tokens: {e}")))
    })
    .await?;
    Ok(Json(DetokenizeResponse { prompt }))
}
