//! The JSON body extractor.
//!
//! axum's own `Json` answers a wrong content type with 415 and a shape error with 422, both as
//! plain text; OpenAI clients expect 400 with an error object naming the field. This extractor
//! checks the content type, parses the body, and reports type errors with the JSON path of the
//! field at fault as `param`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::errors::ApiError;

/// A request body parsed as `T` (use `Value` to parse the same body into several views).
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        check_content_type(req.headers())?;
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            let status = e.status();
            let mut err = ApiError::bad_request(format!("could not read the request body: {}", e.body_text()));
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                err.status = status;
            }
            err
        })?;
        let value = parse_body(&bytes)?;
        Ok(ApiJson(from_value(&value)?))
    }
}

/// Accepts `application/json` and `application/*+json`, with or without parameters.
pub fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let is_json = essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json {
        Ok(())
    } else if ct.is_empty() {
        Err(ApiError::bad_request("missing Content-Type header; send the body as application/json"))
    } else {
        Err(ApiError::bad_request(format!("unsupported Content-Type `{ct}`; send the body as application/json")))
    }
}

/// Parses a body into a JSON object, refusing anything else at the top level.
pub fn parse_body(bytes: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("could not parse the JSON body of the request: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    }
    Ok(value)
}

/// Deserializes one view of a parsed body, naming the offending field in `param`.
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // A missing field is reported at its parent; name the field itself.
        let param = match missing_field(&inner) {
            Some(field) if path == "." => field.to_string(),
            Some(field) => format!("{path}.{field}"),
            None => path,
        };
        ApiError::invalid_param(param.clone(), format!("invalid value for `{param}`: {inner}"))
    })
}

fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde::Deserialize;

    fn headers(ct: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        h
    }

    #[test]
    fn content_types() {
        assert!(check_content_type(&headers(Some("application/json"))).is_ok());
        assert!(check_content_type(&headers(Some("application/json; charset=utf-8"))).is_ok());
        assert!(check_content_type(&headers(Some("Application/JSON"))).is_ok());
        assert!(check_content_type(&headers(Some("application/merge-patch+json"))).is_ok());
        let e = check_content_type(&headers(Some("text/plain"))).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("text/plain"));
        let e = check_content_type(&headers(Some("application/x-www-form-urlencoded"))).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(check_content_type(&headers(None)).unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn malformed_json_and_non_objects_are_400() {
        assert_eq!(parse_body(b"{\"prompt\": ").unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(parse_body(b"").unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(parse_body(b"[1,2]").unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(parse_body(b"\xff\xfe").unwrap_err().status, StatusCode::BAD_REQUEST);
        assert!(parse_body(b"{\"a\": 1}").is_ok());
    }

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Inner {
        content: String,
    }

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Outer {
        temperature: Option<f64>,
        messages: Vec<Inner>,
    }

    #[test]
    fn type_errors_name_the_field() {
        let v = serde_json::json!({"temperature": "hot", "messages": []});
        let e = from_value::<Outer>(&v).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let v = serde_json::json!({"messages": [{"content": 3}]});
        let e = from_value::<Outer>(&v).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
    }

    /// Through axum: rejections come back as JSON 400s, never axum's plain-text 415/422.
    #[tokio::test]
    async fn rejections_are_json_400s() {
        use axum::body::Body;
        use axum::routing::post;
        use tower::ServiceExt;

        let app = axum::Router::new().route("/", post(|ApiJson(v): ApiJson<Outer>| async move { format!("{v:?}") }));
        let send = |ct: Option<&'static str>, body: &'static str| {
            let app = app.clone();
            async move {
                let mut req = axum::http::Request::builder().method("POST").uri("/");
                if let Some(ct) = ct {
                    req = req.header(header::CONTENT_TYPE, ct);
                }
                let resp = app.oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
                let status = resp.status();
                let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
                (status, serde_json::from_slice::<Value>(&bytes).ok())
            }
        };
        let ok = send(Some("application/json"), r#"{"messages": []}"#).await;
        assert_eq!(ok.0, StatusCode::OK);
        for (ct, body, param) in [
            (Some("text/plain"), r#"{"messages": []}"#, None),
            (None, r#"{"messages": []}"#, None),
            (Some("application/json"), r#"{"messages": ["#, None),
            (Some("application/json"), r#"{"messages": [], "temperature": true}"#, Some("temperature")),
        ] {
            let (status, body) = send(ct, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            let err = &body.expect("a JSON error body")["error"];
            assert_eq!(err["param"].as_str(), param);
        }
    }

    #[test]
    fn missing_fields_are_named() {
        let e = from_value::<Outer>(&serde_json::json!({})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = from_value::<Outer>(&serde_json::json!({"messages": [{}]})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
    }
}
