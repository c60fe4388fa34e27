//! REST/WS authorization as Lavalink does it: the `Authorization` header must equal the password.
//! Missing → 401, wrong → 403. Compared in constant time.

use super::error::ApiError;
use super::AppState;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

pub async fn require_password(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match check(req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes()), &state.password) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

pub fn check(presented: Option<&[u8]>, password: &str) -> Result<(), ApiError> {
    match presented {
        None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "Missing Authorization header")),
        Some(p) if bool::from(p.ct_eq(password.as_bytes())) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::FORBIDDEN, "Invalid Authorization header")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_wrong_right() {
        assert_eq!(check(None, "pw").unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert_eq!(check(Some(b"pW"), "pw").unwrap_err().status, StatusCode::FORBIDDEN);
        assert_eq!(check(Some(b"pw "), "pw").unwrap_err().status, StatusCode::FORBIDDEN);
        assert_eq!(check(Some(b""), "pw").unwrap_err().status, StatusCode::FORBIDDEN);
        assert!(check(Some(b"pw"), "pw").is_ok());
    }
}
