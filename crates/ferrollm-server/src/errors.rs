//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
//!
//! Every failure a client can cause ends here, so clients written against OpenAI (which read
//! `error.message` and `error.param`) report it properly instead of a bare status line.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use ferrollm_engine::EngineError;
use serde::Serialize;

/// An error response: status plus the fields of OpenAI's error object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: "invalid_request_error", "server_error", ...
    pub kind: &'static str,
    /// The request field at fault, as the client spelled it.
    pub param: Option<String>,
    /// A stable machine-readable code, where OpenAI has one.
    pub code: Option<&'static str>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    /// 400 for a bad field, naming it.
    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: Some("invalid_value"),
        }
    }

    /// 400 for a request that is wrong as a whole (bad JSON, wrong content type).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    pub fn model_not_found(model: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{model}` does not exist."),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// Replaces the `param` name, for fields the client spelled differently from the engine
    /// (`max_completion_tokens` arrives at the engine as `max_tokens`).
    pub fn with_param(mut self, param: impl Into<String>) -> ApiError {
        self.param = Some(param.into());
        self
    }

    /// The JSON body alone, for SSE error events once a stream has begun with status 200.
    pub fn body_json(&self) -> String {
        let body = ErrorBody {
            error: ErrorObject {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        };
        serde_json::to_string(&body).unwrap_or_else(|_| r#"{"error":{"message":"internal error"}}"#.into())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let message = e.to_string();
        match &e {
            EngineError::InvalidRequest { .. } => ApiError {
                status: StatusCode::BAD_REQUEST,
                message,
                kind: "invalid_request_error",
                param: e.param().map(str::to_string),
                code: Some("invalid_value"),
            },
            EngineError::PromptTooLong { .. } => ApiError {
                status: StatusCode::BAD_REQUEST,
                message,
                kind: "invalid_request_error",
                param: e.param().map(str::to_string),
                code: Some("context_length_exceeded"),
            },
            // A full queue is the server's state, not the request's fault: retry later.
            EngineError::Overloaded(_) => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message,
                kind: "server_error",
                param: None,
                code: Some("overloaded"),
            },
            // Tokenizer or configuration failures mid-request are ours, not the client's.
            _ => ApiError::internal(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, "{}", self.message);
        }
        (self.status, [(header::CONTENT_TYPE, "application/json")], self.body_json()).into_response()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(e: &ApiError) -> serde_json::Value {
        serde_json::from_str(&e.body_json()).unwrap()
    }

    #[test]
    fn body_has_openai_shape() {
        let v = json(&ApiError::invalid_param("temperature", "must be non-negative"));
        let err = &v["error"];
        assert_eq!(err["message"], "must be non-negative");
        assert_eq!(err["type"], "invalid_request_error");
        assert_eq!(err["param"], "temperature");
        assert_eq!(err["code"], "invalid_value");
        let v = json(&ApiError::bad_request("bad"));
        assert!(v["error"]["param"].is_null());
        assert!(v["error"]["code"].is_null());
    }

    #[test]
    fn invalid_request_maps_to_400_with_param() {
        let e: ApiError =
            EngineError::InvalidRequest { param: Some("top_p"), message: "must be in (0, 1]".into() }.into();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("top_p"));
    }

    #[test]
    fn prompt_too_long_names_both_lengths() {
        let e: ApiError =
            EngineError::PromptTooLong { prompt_tokens: 9000, max_model_len: 8192, max_tokens: None }.into();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("prompt"));
        assert_eq!(e.code, Some("context_length_exceeded"));
        assert!(e.message.contains("9000") && e.message.contains("8192"), "{}", e.message);
        let e: ApiError =
            EngineError::PromptTooLong { prompt_tokens: 100, max_model_len: 128, max_tokens: Some(50) }.into();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
    }

    #[test]
    fn overload_is_503_and_config_is_500() {
        let e: ApiError = EngineError::Overloaded("full".into()).into();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        let e: ApiError = EngineError::Config("boom".into()).into();
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.kind, "server_error");
    }

    #[test]
    fn with_param_renames() {
        let e = ApiError::invalid_param("max_tokens", "x").with_param("max_completion_tokens");
        assert_eq!(e.param.as_deref(), Some("max_completion_tokens"));
    }
}
