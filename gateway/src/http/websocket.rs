//! `GET /v4/websocket` and `PATCH /v4/sessions/{sessionId}`: client sessions, resumable as in
//! Lavalink (lavalink-internals §3).
//!
//! Each socket's messages come from its session's bounded outbox. A client that stops reading is
//! dropped, either when its outbox overflows or when one send takes longer than [`SEND_TIMEOUT`].

use super::auth;
use super::error::ApiError;
use super::AppState;
use crate::lavalink::SessionSettings;
use crate::sessions::{Attachment, ConnectionInfo, Next, Traffic};
use crate::telemetry;
use axum::body::Bytes;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

const STATS_INTERVAL: Duration = Duration::from_secs(60);
/// Longest one message may take to go out before the client counts as not reading.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

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
    // A Session-Id of a resumable session of this User-Id resumes it; anything else opens a new
    // session.
    let claim = text("session-id").and_then(|id| state.node.sessions.claim(id, user_id).map(|generation| (id.to_string(), generation)));
    let resumed = claim.is_some();
    // Lavalink v4 reads nothing a client sends: whatever comes is held only up to a small size.
    let ws = ws.max_message_size(MAX_CLIENT_MESSAGE).max_frame_size(MAX_CLIENT_MESSAGE);
    let mut res = ws.on_upgrade(move |socket| run(state, socket, remote, user_id, client_name, claim));
    res.headers_mut().insert("session-resumed", HeaderValue::from_static(if resumed { "true" } else { "false" }));
    Ok(res)
}

/// The largest message or frame a client may send (it is read only to be dropped).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

async fn run(state: AppState, mut socket: WebSocket, remote: SocketAddr, user_id: u64, client_name: String, claim: Option<(String, u64)>) {
    // Graceful shutdown waits for this task (it closes the socket with 1001).
    let Some(_running) = state.websockets.token() else { return };
    let node = &state.node;
    let traffic = Arc::new(Traffic::default());
    let conn = || ConnectionInfo::new(Some(remote), traffic.clone());
    let resumed = claim.and_then(|(id, generation)| {
        let updates = node.players.resume_updates(&id);
        node.sessions.attach(&id, generation, conn(), updates)
    });
    let attachment: Attachment = match resumed {
        Some(a) => a,
        None => node.sessions.open(user_id, client_name.clone(), conn()),
    };
    let session_id = attachment.session_id.clone();
    info!(session = %session_id, user_id, client = %client_name, %remote, "session connected");
    telemetry::record_ws_opened();
    // Stats right after ready (queued behind it), then every minute (lavalink-internals §4.1).
    node.sessions.send(&session_id, &node.stats_op(&session_id));
    let mut every_minute = tokio::time::interval_at(tokio::time::Instant::now() + STATS_INTERVAL, STATS_INTERVAL);
    // How the socket ended: the client's close code, 1001 at shutdown, 1006 when it just dropped.
    let mut close = close_code::ABNORMAL;
    let mut ignored = 0u64;
    loop {
        let text = tokio::select! {
            // A handover: the session waits for the client's resume at the next gateway.
            _ = node.handing_over.cancelled() => {
                let frame = CloseFrame { code: close_code::AWAY, reason: "Server is restarting; resume the session".into() };
                let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(Message::Close(Some(frame)))).await;
                close = close_code::AWAY;
                break;
            }
            _ = node.stop.cancelled() => {
                let frame = CloseFrame { code: close_code::AWAY, reason: "Server is shutting down".into() };
                let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(Message::Close(Some(frame)))).await;
                close = close_code::AWAY;
                break;
            }
            _ = every_minute.tick() => {
                node.sessions.send(&session_id, &node.stats_op(&session_id));
                continue;
            }
            next = attachment.outbox.next() => match next {
                Next::Message(text) => text,
                Next::Closed => break,
                Next::Overflowed => {
                    close = close_code::POLICY;
                    break;
                }
            },
            incoming = socket.recv() => {
                match incoming {
                    Some(Ok(Message::Close(frame))) => {
                        close = frame.map(|f| f.code).unwrap_or(close_code::STATUS);
                        break;
                    }
                    // A message past the limit: tell the client why before the socket goes.
                    Some(Err(e)) if e.to_string().contains("Space limit exceeded") => {
                        let frame = CloseFrame { code: close_code::SIZE, reason: format!("messages are limited to {MAX_CLIENT_MESSAGE} bytes").into() };
                        let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(Message::Close(Some(frame)))).await;
                        close = close_code::SIZE;
                        break;
                    }
                    None | Some(Err(_)) => break,
                    // Lavalink v4 takes no client messages (lavalink-internals §5.9).
                    Some(Ok(Message::Text(t))) => {
                        traffic.received(t.len());
                        telemetry::record_ws_message(false, t.len());
                        // Logged at 1, 2, 4, 8, ... messages: a chatty client cannot flood the log.
                        ignored += 1;
                        if ignored.is_power_of_two() {
                            warn!(session = %session_id, len = t.len(), ignored, "ignoring client text messages (Lavalink v4 reads none)");
                        }
                    }
                    // Pings are answered by the websocket layer.
                    Some(Ok(m)) => {
                        let len = m.into_data().len();
                        traffic.received(len);
                        telemetry::record_ws_message(false, len);
                    }
                }
                continue;
            }
        };
        traffic.sent(text.len());
        telemetry::record_ws_message(true, text.len());
        match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                warn!(session = %session_id, "client did not take a message in {SEND_TIMEOUT:?}; dropping it");
                telemetry::record_ws_slow_consumer();
                close = close_code::POLICY;
                break;
            }
        }
    }
    node.sessions.disconnected(&attachment);
    telemetry::record_ws_closed(close);
    info!(session = %session_id, close, "session disconnected");
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionUpdate {
    resuming: Option<bool>,
    timeout: Option<i64>,
}

pub async fn update_session(State(state): State<AppState>, Path(id): Path<String>, body: Bytes) -> Result<Json<SessionSettings>, ApiError> {
    let update: SessionUpdate = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("Invalid session update: {e}")))?;
    if let Some(t) = update.timeout {
        if t < 0 {
            return Err(ApiError::bad_request(format!("Timeout must not be negative, got {t}")));
        }
    }
    let (resuming, timeout) = state
        .node
        .sessions
        .configure(&id, update.resuming, update.timeout.map(|t| t as u64))
        .ok_or_else(|| ApiError::not_found("Session not found"))?;
    Ok(Json(SessionSettings { resuming, timeout }))
}
