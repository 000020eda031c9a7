//! Errors the engine reports to its callers; the server maps them onto HTTP statuses.

use ferrollm_models::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    Config(String),
    /// A request field is invalid; `param` names it as the API does.
    #[error("{message}")]
    InvalidRequest { param: Option<&'static str>, message: String },
    #[error("{}", prompt_too_long_message(*prompt_tokens, *max_model_len, *max_tokens))]
    PromptTooLong { prompt_tokens: usize, max_model_len: usize, max_tokens: Option<usize> },
    /// Too many requests are pending.
    #[error("{0}")]
    Overloaded(String),
}

fn prompt_too_long_message(prompt: usize, max_len: usize, max_tokens: Option<usize>) -> String {
    match max_tokens {
        Some(m) => format!(
            "This model's maximum context length is {max_len} tokens. However, you requested {} tokens \
             ({prompt} in the prompt, {m} in the completion). Please reduce the prompt or max_tokens.",
            prompt + m
        ),
        None => format!(
            "This model's maximum context length is {max_len} tokens. However, your prompt has {prompt} tokens. \
             Please reduce the length of the prompt."
        ),
    }
}

impl EngineError {
    /// The request field at fault, for OpenAI-style error bodies.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            EngineError::InvalidRequest { param, .. } => *param,
            EngineError::PromptTooLong { max_tokens: Some(_), .. } => Some("max_tokens"),
            EngineError::PromptTooLong { .. } => Some("prompt"),
            _ => None,
        }
    }
}
