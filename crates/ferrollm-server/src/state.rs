//! State shared by every handler.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ferrollm_engine::Engine;

use crate::config::ServerConfig;
use crate::errors::ApiError;
use crate::logprobs::TokenText;

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub engine: Engine,
    pub config: ServerConfig,
    pub models: ModelNames,
    /// Server start, reported as the model's `created`.
    pub started: u64,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(engine: Engine, config: ServerConfig) -> AppState {
        let models = ModelNames::new(&config.served_model_name, &engine.info().model_name);
        AppState(Arc::new(Inner { engine, config, models, started: unix_now() }))
    }
}

/// Seconds since the epoch, for `created` fields.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The names a request's `model` may use.
///
/// The served name always matches. So does the engine's own name for the model (its file
/// name unless overridden), and any path ending in it, so that clients that pass the model
/// path, as vLLM's default served name is, keep working.
#[derive(Debug, Clone)]
pub struct ModelNames {
    pub served: String,
    engine_name: String,
}

impl ModelNames {
    pub fn new(served: &str, engine_name: &str) -> ModelNames {
        ModelNames { served: served.to_string(), engine_name: engine_name.to_string() }
    }

    /// The model name to report: the one the client asked for, or the served name.
    pub fn resolve(&self, requested: Option<&str>) -> Result<String, ApiError> {
        let Some(name) = requested else { return Ok(self.served.clone()) };
        let file_name = Path::new(name).file_name().and_then(|f| f.to_str()).unwrap_or(name);
        let known = [self.served.as_str(), self.engine_name.as_str()];
        if known.contains(&name) || known.contains(&file_name) {
            Ok(name.to_string())
        } else {
            Err(ApiError::model_not_found(name))
        }
    }
}

impl TokenText for Engine {
    fn token_text(&self, id: u32) -> String {
        self.tokenizer().decode(&[id], false).unwrap_or_default()
    }
    fn decode_text(&self, ids: &[u32]) -> String {
        self.tokenizer().decode(ids, false).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn model_names() {
        let m = ModelNames::new("smol", "SmolLM2.gguf");
        assert_eq!(m.resolve(None).unwrap(), "smol");
        assert_eq!(m.resolve(Some("smol")).unwrap(), "smol");
        assert_eq!(m.resolve(Some("SmolLM2.gguf")).unwrap(), "SmolLM2.gguf");
        assert_eq!(m.resolve(Some("/models/SmolLM2.gguf")).unwrap(), "/models/SmolLM2.gguf");
        let e = m.resolve(Some("gpt-4")).unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.param.as_deref(), Some("model"));
        assert!(e.message.contains("gpt-4"));
        assert!(m.resolve(Some("")).is_err());
    }
}
