//! `/v4/routeplanner/*` (lavalink-internals §2.5): the planner's status, and freeing failing
//! addresses. Without a planner, status is 204 and the free routes are 500, as in Lavalink.

use super::error::ApiError;
use super::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::net::IpAddr;

fn disabled() -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Can't access disabled route planner")
}

pub async fn status(State(state): State<AppState>) -> Response {
    match state.node.supervisor.route_planner() {
        Some(planner) => Json(planner.status()).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

pub async fn free_address(State(state): State<AppState>, body: Bytes) -> Result<StatusCode, ApiError> {
    let planner = state.node.supervisor.route_planner().ok_or_else(disabled)?;
    #[derive(serde::Deserialize)]
    struct Body {
        address: String,
    }
    let body: Body = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("Expected {{\"address\": \"...\"}}: {e}")))?;
    let address: IpAddr = body
        .address
        .trim()
        .parse()
        .map_err(|_| ApiError::bad_request(format!("Invalid address: {}", body.address)))?;
    planner.free(address);
    Ok(StatusCode::NO_CONTENT)
}

pub async fn free_all(State(state): State<AppState>) -> Result<StatusCode, ApiError> {
    state.node.supervisor.route_planner().ok_or_else(disabled)?.free_all();
    Ok(StatusCode::NO_CONTENT)
}
