//! `GET /v4/websocket` and `PATCH /v4/sessions/{sessionId}`: client sessions, resumable as in
//! Lavalink (lavalink-internals §3).

use super::auth;
use super::error::ApiError;
use super::AppState;
use axum::body::Bytes;
use crate::players::{ConnectionInfo, Traffic};
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

const STATS_INTERVAL: Duration = Duration::from_secs(60);

pub async fn websocket(
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // The websocket answers 401 for a missing *or* wrong password (Lavalink's handshake).
    auth::check(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()), &state.password)
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.message))?;
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let user_id = text("user-id")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|id| *id != 0)
        .ok_or_else(|| ApiError::bad_request("Missing or invalid User-Id header"))?;
    let client_name = text("client-name").unwrap_or("unknown").chars().take(200).collect::<String>();
    // A Session-Id of a resumable session resumes it; anything else opens a new session.
    let claim = text("session-id").and_then(|id| state.registry.claim(id).map(|generation| (id.to_string(), generation)));
    let resumed = claim.is_some();
    let mut res = ws.on_upgrade(move |socket| run(state, socket, remote, user_id, client_name, claim));
    res.headers_mut().insert("session-resumed", HeaderValue::from_static(if resumed { "true" } else { "false" }));
    Ok(res)
}

async fn run(state: AppState, mut socket: WebSocket, remote: SocketAddr, user_id: u64, client_name: String, claim: Option<(String, u64)>) {
    // Graceful shutdown waits for this task (it closes the socket with 1001).
    let Some(_running) = state.websockets.token() else { return };
    let traffic = Arc::new(Traffic::default());
    let conn = || ConnectionInfo::new(Some(remote), traffic.clone());
    let (out, mut rx) = mpsc::unbounded_channel::<String>();
    let session_id = match claim {
        Some((id, generation)) if state.registry.attach(&id, generation, conn(), out.clone()) => id,
        _ => state.registry.open_session(user_id, client_name.clone(), conn(), out.clone()),
    };
    info!(session = %session_id, user_id, client = %client_name, %remote, "session connected");
    crate::metrics::record_ws_opened();
    // Stats right after ready (queued behind it), then every minute (lavalink-internals §4.1).
    let stats = |state: &AppState| {
        let mut v = state.stats.json(&state.supervisor, &state.registry, state.registry.frame_stats(&session_id));
        v["op"] = json!("stats");
        v.to_string()
    };
    let _ = out.send(stats(&state));
    drop(out);
    let mut every_minute = tokio::time::interval_at(tokio::time::Instant::now() + STATS_INTERVAL, STATS_INTERVAL);
    let stopping = state.stopping.clone();
    // How the socket ended: the client's close code, 1001 at shutdown, 1006 when it just dropped.
    let mut close = close_code::ABNORMAL;
    loop {
        let text = tokio::select! {
            _ = stopping.cancelled() => {
                let frame = CloseFrame { code: close_code::AWAY, reason: "Server is shutting down".into() };
                let _ = socket.send(Message::Close(Some(frame))).await;
                close = close_code::AWAY;
                break;
            }
            _ = every_minute.tick() => stats(&state),
            msg = rx.recv() => match msg {
                Some(text) => text,
                None => break,
            },
            incoming = socket.recv() => {
                match incoming {
                    Some(Ok(Message::Close(frame))) => {
                        close = frame.map(|f| f.code).unwrap_or(close_code::STATUS);
                        break;
                    }
                    None | Some(Err(_)) => break,
                    // Lavalink v4 takes no client messages (lavalink-internals §5.9).
                    Some(Ok(Message::Text(t))) => {
                        traffic.received(t.len());
                        crate::metrics::record_ws_message(false, t.len());
                        warn!(session = %session_id, len = t.len(), "ignoring a client text message");
                    }
                    // Pings are answered by the websocket layer.
                    Some(Ok(m)) => {
                        let len = m.into_data().len();
                        traffic.received(len);
                        crate::metrics::record_ws_message(false, len);
                    }
                }
                continue;
            }
        };
        traffic.sent(text.len());
        crate::metrics::record_ws_message(true, text.len());
        if socket.send(Message::Text(text.into())).await.is_err() {
            break;
        }
    }
    state.registry.disconnected(&session_id);
    crate::metrics::record_ws_closed(close);
    info!(session = %session_id, close, "session disconnected");
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionUpdate {
    resuming: Option<bool>,
    timeout: Option<i64>,
}

pub async fn update_session(State(state): State<AppState>, Path(id): Path<String>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let update: SessionUpdate = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("Invalid session update: {e}")))?;
    if let Some(t) = update.timeout {
        if t < 0 {
            return Err(ApiError::bad_request(format!("Timeout must not be negative, got {t}")));
        }
    }
    let (resuming, timeout) = state
        .registry
        .configure_session(&id, update.resuming, update.timeout.map(|t| t as u64))
        .ok_or_else(|| ApiError::not_found("Session not found"))?;
    Ok(Json(json!({"resuming": resuming, "timeout": timeout})))
}

/// `GET /v4/caldera/connections`.
pub async fn connections(State(state): State<AppState>) -> Json<Value> {
    Json(state.registry.connections_json())
}
