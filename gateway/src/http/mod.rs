//! The REST surface (axum): routes, authorization, Lavalink's headers and error shape.

pub(crate) mod auth;
pub mod error;
mod info;
mod players;
pub mod tracks;
mod websocket;

pub use error::ApiError;

use crate::config::Config;
use crate::players::Registry;
use crate::supervisor::Supervisor;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{middleware, Router};
use std::sync::Arc;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub password: Arc<str>,
    pub supervisor: Arc<Supervisor>,
    pub registry: Arc<Registry>,
    pub stats: Arc<crate::stats::Stats>,
}

impl AppState {
    pub fn new(config: Arc<Config>, supervisor: Arc<Supervisor>, registry: Arc<Registry>, stats: Arc<crate::stats::Stats>) -> Self {
        let password = config.lavalink.server.password.as_str().into();
        Self { config, password, supervisor, registry, stats }
    }
}

pub fn router(state: AppState) -> Router {
    let authorized = Router::new()
        .route("/v4/info", get(info::info))
        .route("/v4/stats", get(stats))
        .route("/v4/loadtracks", get(tracks::load_tracks))
        .route("/v4/decodetrack", get(tracks::decode_track))
        .route("/v4/decodetracks", post(tracks::decode_tracks))
        .route("/v4/sessions/{session}", axum::routing::patch(websocket::update_session))
        .route("/v4/sessions/{session}/players", get(players::get_players))
        .route(
            "/v4/sessions/{session}/players/{guild}",
            get(players::get_player).patch(players::update_player).delete(players::delete_player),
        )
        .fallback(not_found)
        // `layer` (not `route_layer`) so unknown paths need the password too, as in Lavalink.
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_password));
    Router::new()
        .route("/version", get(info::version))
        // The websocket checks the password itself: its handshake answers 401 for both cases.
        .route("/v4/websocket", get(websocket::websocket))
        .merge(authorized)
        .layer(middleware::from_fn(error::error_body))
        .layer(middleware::map_response(api_version_header))
        .with_state(state)
}

/// `GET /v4/stats`: without frameStats, as Lavalink (no session context).
async fn stats(axum::extract::State(state): axum::extract::State<AppState>) -> axum::Json<serde_json::Value> {
    axum::Json(state.stats.json(&state.supervisor, &state.registry, None))
}

async fn not_found() -> ApiError {
    ApiError::not_found("Not Found")
}

async fn api_version_header(mut res: Response) -> Response {
    res.headers_mut().insert(HeaderName::from_static("lavalink-api-version"), HeaderValue::from_static("4"));
    res
}
