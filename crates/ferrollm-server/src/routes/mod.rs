//! The HTTP routes, one module per endpoint family, and the layers around them.

pub mod chat;
pub mod completions;
pub mod generation;
pub mod info;
pub mod tokenize;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::errors::ApiError;
use crate::state::AppState;

/// Largest request body: room for a full context of token ids as JSON, and then some.
pub const MAX_BODY_BYTES: usize = 32 << 20;

/// The whole API. `--api-key` guards `/v1/*` only, as in vLLM, so health checks and metrics
/// scrapers need no key.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/completions", post(completions::create_completion))
        .route("/v1/chat/completions", post(chat::create_chat_completion))
        .route("/v1/models", get(info::list_models))
        .route("/v1/models/{id}", get(info::get_model));
    let v1 = with_api_key(v1, state.config.api_key.clone());
    Router::new()
        .merge(v1)
        .route("/health", get(info::health))
        .route("/version", get(info::version))
        .route("/metrics", get(info::metrics))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Outermost, so preflights skip the API-key check and errors carry the CORS header too.
        .layer(middleware::from_fn(crate::cors::cors))
        .with_state(state)
}

/// Requires `Authorization: Bearer <key>` on every route of `router` when a key is set.
pub fn with_api_key<S: Clone + Send + Sync + 'static>(router: Router<S>, key: Option<String>) -> Router<S> {
    match key {
        Some(key) => router.route_layer(middleware::from_fn_with_state(Arc::new(key), require_api_key)),
        None => router,
    }
}

async fn require_api_key(State(key): State<Arc<String>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match given {
        Some(k) if constant_time_eq(k.as_bytes(), key.as_bytes()) => next.run(req).await,
        Some(_) => ApiError::unauthorized("Incorrect API key provided.").into_response(),
        None => ApiError::unauthorized("Missing API key: send it as `Authorization: Bearer <key>`.").into_response(),
    }
}

/// Compares without an early exit, so response time does not reveal how much of a guess was
/// right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn unknown_route(req: Request) -> ApiError {
    ApiError::not_found(format!("no route for {} {}", req.method(), req.uri().path()))
}

async fn wrong_method(req: Request) -> ApiError {
    let mut e = ApiError::not_found(format!("method {} is not allowed on {}", req.method(), req.uri().path()));
    e.status = StatusCode::METHOD_NOT_ALLOWED;
    e.code = None;
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    fn app(key: Option<&str>) -> Router {
        let v1 = Router::new().route("/v1/models", get(|| async { "ok" }));
        Router::new().merge(with_api_key(v1, key.map(str::to_string))).route("/health", get(|| async { "up" }))
    }

    async fn status(app: Router, path: &str, auth: Option<&str>) -> (StatusCode, String) {
        let mut req = axum::http::Request::builder().uri(path);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn api_key_guards_v1_only() {
        assert_eq!(status(app(None), "/v1/models", None).await.0, StatusCode::OK);
        let (s, body) = status(app(Some("k1")), "/v1/models", None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert_eq!(status(app(Some("k1")), "/v1/models", Some("Bearer k2")).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(status(app(Some("k1")), "/v1/models", Some("k1")).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(status(app(Some("k1")), "/v1/models", Some("Bearer k1")).await.0, StatusCode::OK);
        assert_eq!(status(app(Some("k1")), "/health", None).await.0, StatusCode::OK);
    }

    #[test]
    fn key_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
