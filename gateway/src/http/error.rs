//! Lavalink's error body `{timestamp, status, error, message, path}` (+ `trace` with `?trace=true`).
//!
//! Handlers return [`ApiError`]; it only records status and message. [`error_body`] (outermost
//! middleware) knows the request path and writes the body — for our errors and for every other
//! error response (axum's own rejections, 404 fallback, 405), so clients see one shape.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// An error a route returns; rendered by [`error_body`].
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Extra detail for `?trace=true` (the cause chain).
    pub trace: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), trace: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn with_trace(mut self, trace: impl Into<String>) -> Self {
        self.trace = Some(trace.into());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = self.status.into_response();
        res.extensions_mut().insert(self);
        res
    }
}

/// Writes the error body for every 4xx/5xx response that does not carry a JSON body already.
pub async fn error_body(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let want_trace = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv.eq_ignore_ascii_case("trace=true")));
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let (message, trace) = match parts.extensions.remove::<ApiError>() {
        Some(e) => (e.message, e.trace),
        None => {
            // axum rejections carry a plain-text explanation; keep it as the message.
            let text = axum::body::to_bytes(body, 16 * 1024).await.unwrap_or_default();
            let text = String::from_utf8_lossy(&text).trim().to_string();
            let message = if text.is_empty() { default_message(status) } else { text };
            (message, None)
        }
    };
    let body = crate::lavalink::Error {
        timestamp: crate::clock::unix_ms(),
        status: status.as_u16(),
        error: status.canonical_reason().unwrap_or("Error"),
        trace: if want_trace { Some(trace.unwrap_or_else(|| message.clone())) } else { None },
        message,
        path: &path,
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

fn default_message(status: StatusCode) -> String {
    match status {
        StatusCode::NOT_FOUND => "Not Found".into(),
        StatusCode::METHOD_NOT_ALLOWED => "Method Not Allowed".into(),
        s => s.canonical_reason().unwrap_or("Error").into(),
    }
}
