//! Permissive CORS, as vLLM's default (`--allowed-origins '*'`), so browser-based clients can
//! call the API directly. Credentials are never allowed, so a page cannot ride on cookies; an
//! API key still has to be sent explicitly.

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Answers preflight requests and marks every response as readable from any origin.
pub async fn cors(req: Request, next: Next) -> Response {
    let preflight =
        req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let requested_headers = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned();
    let mut resp = if preflight { StatusCode::NO_CONTENT.into_response() } else { next.run(req).await };
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    if preflight {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            requested_headers.unwrap_or_else(|| HeaderValue::from_static("authorization, content-type")),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    fn app() -> Router {
        Router::new().route("/v1/x", post(|| async { "ok" })).layer(axum::middleware::from_fn(cors))
    }

    #[tokio::test]
    async fn preflight_and_simple_requests() {
        let req = axum::http::Request::builder()
            .method(Method::OPTIONS)
            .uri("/v1/x")
            .header(header::ORIGIN, "http://ui.example")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization, content-type")
            .body(Body::empty())
            .unwrap();
        let resp = app().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS], "authorization, content-type");
        let req = axum::http::Request::builder().method(Method::POST).uri("/v1/x").body(Body::empty()).unwrap();
        let resp = app().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }
}
