//! The REST surface (axum): routes, authorization, Lavalink's headers and error shape.

pub(crate) mod auth;
mod caldera;
pub mod error;
mod info;
mod players;
mod routeplanner;
pub mod serve;
pub mod tracks;
mod websocket;

pub use error::ApiError;

use crate::node::Node;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{middleware, Router};
use std::sync::Arc;

/// What every handler can reach: the node, and the HTTP layer's own state.
#[derive(Clone)]
pub struct AppState {
    pub node: Arc<Node>,
    pub password: Arc<str>,
    /// Live WebSocket tasks, so shutdown can wait for their close frames.
    pub websockets: Arc<WebSockets>,
}

/// Tracks WebSocket tasks for shutdown.
#[derive(Default)]
pub struct WebSockets {
    tracker: tokio_util::task::TaskTracker,
}

impl WebSockets {
    /// A token held by a live socket task; `None` once shutdown began.
    pub fn token(&self) -> Option<tokio_util::task::task_tracker::TaskTrackerToken> {
        (!self.tracker.is_closed()).then(|| self.tracker.token())
    }

    /// Waits (bounded) for every socket to have sent its close frame.
    pub async fn wait_closed(&self, timeout: std::time::Duration) {
        self.tracker.close();
        let _ = tokio::time::timeout(timeout, self.tracker.wait()).await;
    }
}

impl AppState {
    pub fn new(node: Arc<Node>) -> Self {
        let password = node.settings.password.as_str().into();
        Self { node, password, websockets: Arc::default() }
    }
}

pub fn router(state: AppState) -> Router {
    let prometheus = state.node.settings.prometheus.as_ref().filter(|_| state.node.prometheus.is_some());
    let (metrics_open, metrics_authorized) = match prometheus {
        None => (Router::new(), Router::new()),
        // `metrics.prometheus.auth: false` serves metrics without the password (Caldera extension).
        Some(p) if !p.auth => (Router::new().route(&p.endpoint, get(metrics)), Router::new()),
        Some(p) => (Router::new(), Router::new().route(&p.endpoint, get(metrics))),
    };
    let authorized = Router::new()
        .merge(metrics_authorized)
        .route("/v4/info", get(info::info))
        .route("/v4/stats", get(stats))
        .route("/v4/caldera/connections", get(caldera::connections))
        .route("/v4/caldera/workers", get(caldera::workers))
        .route("/v4/caldera/resolver", get(caldera::resolver))
        .route("/v4/loadtracks", get(tracks::load_tracks))
        .route("/v4/decodetrack", get(tracks::decode_track))
        .route("/v4/decodetracks", post(tracks::decode_tracks))
        .route("/v4/routeplanner/status", get(routeplanner::status))
        .route("/v4/routeplanner/free/address", post(routeplanner::free_address))
        .route("/v4/routeplanner/free/all", post(routeplanner::free_all))
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
        .merge(metrics_open)
        .merge(authorized)
        .layer(middleware::from_fn(error::error_body))
        .layer(middleware::from_fn(record_request))
        .layer(middleware::map_response(api_version_header))
        .with_state(state)
}

/// `GET /v4/stats`: without frameStats, as Lavalink (no session context).
async fn stats(axum::extract::State(state): axum::extract::State<AppState>) -> axum::Json<crate::lavalink::Stats> {
    axum::Json(state.node.stats())
}

/// The Prometheus endpoint.
async fn metrics(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    use axum::response::IntoResponse;
    match state.node.render_metrics() {
        Some(text) => ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        None => ApiError::not_found("Not Found").into_response(),
    }
}

/// Counts every REST request by route (the matched pattern, not the raw path) and status.
async fn record_request(req: axum::extract::Request, next: middleware::Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    crate::telemetry::record_request(&route, res.status().as_u16(), started.elapsed());
    res
}

async fn not_found() -> ApiError {
    ApiError::not_found("Not Found")
}

async fn api_version_header(mut res: Response) -> Response {
    res.headers_mut().insert(HeaderName::from_static("lavalink-api-version"), HeaderValue::from_static("4"));
    res
}
