//! Caldera's own routes beyond Lavalink: `GET /v4/caldera/connections` (every WebSocket session
//! and its traffic), `GET /v4/caldera/workers` (every worker process and how it is doing) and
//! `GET /v4/caldera/resolver` (the yt-dlp process behind platform sources).

use super::AppState;
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use std::sync::atomic::Ordering;

#[derive(Serialize)]
pub struct Connections {
    summary: Summary,
    connections: Vec<Connection>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary {
    active: i64,
    resumable: i64,
    total: u64,
    closed: u64,
    peak: u64,
    average_age_ms: i64,
    average_idle_ms: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Connection {
    session_id: String,
    client_name: String,
    user_id: String,
    remote_address: Option<String>,
    connected_at: i64,
    last_activity: i64,
    messages_sent: u64,
    bytes_sent: u64,
    messages_received: u64,
    bytes_received: u64,
    state: &'static str,
    resume_time_left_ms: Option<i64>,
    queued_messages: usize,
    players: usize,
}

pub async fn connections(State(state): State<AppState>) -> Json<Connections> {
    let node = &state.node;
    let (views, totals) = node.sessions.views();
    let players = node.players.per_session();
    let now_ms = crate::clock::unix_ms();
    let (mut ages, mut idles, mut active) = (0i64, 0i64, 0i64);
    let mut connections: Vec<Connection> = views
        .into_iter()
        .map(|v| {
            let t = &v.conn.traffic;
            let last = t.last_activity_ms.load(Ordering::Relaxed);
            if v.open {
                active += 1;
                ages += now_ms - v.conn.connected_at_ms;
                idles += now_ms - last;
            }
            Connection {
                players: players.get(&v.id).copied().unwrap_or(0),
                session_id: v.id,
                client_name: v.client_name,
                user_id: v.user_id.to_string(),
                remote_address: v.conn.remote.map(|a| a.to_string()),
                connected_at: v.conn.connected_at_ms,
                last_activity: last,
                messages_sent: t.messages_sent.load(Ordering::Relaxed),
                bytes_sent: t.bytes_sent.load(Ordering::Relaxed),
                messages_received: t.messages_received.load(Ordering::Relaxed),
                bytes_received: t.bytes_received.load(Ordering::Relaxed),
                state: if v.open { "open" } else { "resumable" },
                resume_time_left_ms: v.resume_time_left_ms,
                queued_messages: v.queued,
            }
        })
        .collect();
    connections.sort_by_key(|c| c.connected_at);
    let avg = |sum: i64| if active > 0 { sum / active } else { 0 };
    let summary = Summary {
        active,
        resumable: connections.len() as i64 - active,
        total: totals.opened,
        closed: totals.closed,
        peak: totals.peak,
        average_age_ms: avg(ages),
        average_idle_ms: avg(idles),
    };
    Json(Connections { summary, connections })
}

#[derive(Serialize)]
pub struct Workers {
    workers: Vec<Worker>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Worker {
    id: u32,
    pid: Option<u32>,
    state: &'static str,
    players: usize,
    cpu_time_ms: u64,
    rss_bytes: u64,
    threads: u32,
    uptime_ms: Option<u64>,
    restarts: u64,
    last_ping_rtt_ms: Option<f64>,
    missed_pings: u64,
    last_exit: Option<String>,
    /// The build its process runs; one of a previous build retires once empty.
    build: Option<String>,
    retiring: bool,
}

pub async fn workers(State(state): State<AppState>) -> Json<Workers> {
    let figures = state.node.players.worker_figures();
    let workers = state
        .node
        .supervisor
        .workers()
        .into_iter()
        .map(|w| {
            let r = w.resources.unwrap_or_default();
            Worker {
                id: w.worker_id,
                pid: w.pid,
                state: w.state.as_str(),
                players: figures.get(&w.worker_id).map(|f| f.players).unwrap_or(0),
                cpu_time_ms: r.cpu_time_ms,
                rss_bytes: r.rss_bytes,
                threads: r.threads,
                uptime_ms: w.ready_since.map(|t| t.elapsed().as_millis() as u64),
                restarts: w.restarts,
                last_ping_rtt_ms: w.last_ping_rtt.map(|d| d.as_secs_f64() * 1000.0),
                missed_pings: w.missed_pings,
                retiring: w.retiring(),
                build: w.build_id,
                last_exit: w.last_exit,
            }
        })
        .collect();
    Json(Workers { workers })
}

/// The resolver's state; `{"state": "disabled"}` when it is off or not installed.
pub async fn resolver(State(state): State<AppState>) -> Json<crate::supervisor::resolver::ResolverStatus> {
    Json(match state.node.supervisor.resolver() {
        Some(r) => r.status(),
        None => crate::supervisor::resolver::ResolverStatus { state: "disabled", ..Default::default() },
    })
}
