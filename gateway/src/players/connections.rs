//! Connection tracking beyond Lavalink: every WebSocket session's client, address, traffic and
//! state, for `GET /v4/caldera/connections`.

use super::Registry;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

/// Traffic counters of one socket, shared with its WebSocket task.
#[derive(Debug, Default)]
pub struct Traffic {
    pub messages_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub messages_received: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Unix ms of the last message either way.
    pub last_activity_ms: AtomicI64,
}

impl Traffic {
    pub fn sent(&self, bytes: usize) {
        self.messages_sent.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
        self.last_activity_ms.store(crate::http::error::now_ms(), Ordering::Relaxed);
    }

    pub fn received(&self, bytes: usize) {
        self.messages_received.fetch_add(1, Ordering::Relaxed);
        self.bytes_received.fetch_add(bytes as u64, Ordering::Relaxed);
        self.last_activity_ms.store(crate::http::error::now_ms(), Ordering::Relaxed);
    }
}

/// Who is connected, and since when.
#[derive(Debug)]
pub struct ConnectionInfo {
    pub remote: Option<SocketAddr>,
    pub connected_at_ms: i64,
    pub connected_at: Instant,
    pub traffic: std::sync::Arc<Traffic>,
    /// When the socket went away (resumable sessions), for the time left.
    pub paused_at: Option<Instant>,
}

impl ConnectionInfo {
    pub fn new(remote: Option<SocketAddr>, traffic: std::sync::Arc<Traffic>) -> Self {
        let now = crate::http::error::now_ms();
        traffic.last_activity_ms.store(now, Ordering::Relaxed);
        Self { remote, connected_at_ms: now, connected_at: Instant::now(), traffic, paused_at: None }
    }
}

pub struct ConnectionFigures {
    pub active: usize,
    pub resumable: usize,
    pub peak: u64,
    pub queued: usize,
}

/// Totals since the gateway started.
#[derive(Debug, Default)]
pub struct Totals {
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    pub peak: AtomicU64,
}

impl Registry {
    /// `GET /v4/caldera/connections`: a summary and one entry per session.
    pub fn connections_json(&self) -> Value {
        let st = self.lock();
        let now_ms = crate::http::error::now_ms();
        let mut list = Vec::new();
        let (mut ages, mut idles, mut active) = (0i64, 0i64, 0i64);
        for (id, s) in &st.sessions {
            let c = &s.conn;
            let t = &c.traffic;
            let last = t.last_activity_ms.load(Ordering::Relaxed);
            let open = s.link.is_open();
            if open {
                active += 1;
                ages += now_ms - c.connected_at_ms;
                idles += now_ms - last;
            }
            let time_left = c.paused_at.filter(|_| !open).map(|at| (s.link.timeout_s as i64 * 1000 - at.elapsed().as_millis() as i64).max(0));
            list.push(json!({
                "sessionId": id,
                "clientName": s.client_name,
                "userId": s.user_id.to_string(),
                "remoteAddress": c.remote.map(|a| a.to_string()),
                "connectedAt": c.connected_at_ms,
                "lastActivity": last,
                "messagesSent": t.messages_sent.load(Ordering::Relaxed),
                "bytesSent": t.bytes_sent.load(Ordering::Relaxed),
                "messagesReceived": t.messages_received.load(Ordering::Relaxed),
                "bytesReceived": t.bytes_received.load(Ordering::Relaxed),
                "state": if open { "open" } else { "resumable" },
                "resumeTimeLeftMs": time_left,
                "queuedMessages": s.link.queued(),
                "players": s.players.len(),
            }));
        }
        list.sort_by_key(|c| c["connectedAt"].as_i64());
        let avg = |sum: i64| if active > 0 { sum / active } else { 0 };
        json!({
            "summary": {
                "active": active,
                "resumable": st.sessions.len() as i64 - active,
                "total": self.totals.opened.load(Ordering::Relaxed),
                "closed": self.totals.closed.load(Ordering::Relaxed),
                "peak": self.totals.peak.load(Ordering::Relaxed),
                "averageAgeMs": avg(ages),
                "averageIdleMs": avg(idles),
            },
            "connections": list,
        })
    }

    /// Connection figures for the metrics.
    pub fn connection_figures(&self) -> ConnectionFigures {
        let st = self.lock();
        let active = st.sessions.values().filter(|s| s.link.is_open()).count();
        ConnectionFigures {
            active,
            resumable: st.sessions.len() - active,
            peak: self.totals.peak.load(Ordering::Relaxed),
            queued: st.sessions.values().map(|s| s.link.queued()).sum(),
        }
    }

    pub(super) fn totals_closed(&self) {
        self.totals.closed.fetch_add(1, Ordering::Relaxed);
    }

    /// Records an opened socket and updates the peak.
    pub(super) fn count_open(&self, active_now: usize) {
        self.totals.opened.fetch_add(1, Ordering::Relaxed);
        self.totals.peak.fetch_max(active_now as u64, Ordering::Relaxed);
    }
}
