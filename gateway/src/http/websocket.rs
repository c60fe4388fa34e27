//! `GET /v4/websocket`: a client session. On connect: `ready`; then the session's player
//! events and updates. (Resume arrives with the players-and-sessions issue.)

use super::error::ApiError;
use super::AppState;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{info, warn};

pub async fn websocket(State(state): State<AppState>, headers: HeaderMap, ws: WebSocketUpgrade) -> Result<Response, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let user_id = header("user-id")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|id| *id != 0)
        .ok_or_else(|| ApiError::bad_request("Missing or invalid User-Id header"))?;
    let client_name = header("client-name").unwrap_or("unknown").chars().take(200).collect::<String>();
    Ok(ws.on_upgrade(move |socket| run(state, socket, user_id, client_name)))
}

async fn run(state: AppState, mut socket: WebSocket, user_id: u64, client_name: String) {
    let session_id = new_session_id();
    let (out, mut rx) = mpsc::unbounded_channel::<String>();
    state.registry.add_session(session_id.clone(), user_id, client_name.clone(), out);
    info!(session = %session_id, user_id, client = %client_name, "session opened");
    let ready = json!({"op": "ready", "resumed": false, "sessionId": session_id}).to_string();
    if socket.send(Message::Text(ready.into())).await.is_ok() {
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(text) => if socket.send(Message::Text(text.into())).await.is_err() { break },
                    None => break,
                },
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    // Lavalink v4 takes no client messages (lavalink-internals §5.9).
                    Some(Ok(Message::Text(t))) => warn!(session = %session_id, len = t.len(), "ignoring a client text message"),
                    Some(Ok(_)) => {}
                },
            }
        }
    }
    state.registry.remove_session(&session_id);
    info!(session = %session_id, "session closed");
}

/// 16 characters of [a-z0-9], as Lavalink's session ids.
fn new_session_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random number generator is unavailable");
    bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}
