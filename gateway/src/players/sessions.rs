//! WebSocket sessions and resuming (lavalink-internals §3): a session whose socket closes with
//! resuming on keeps its players, queues every outgoing message except playerUpdates, and is
//! destroyed after its timeout unless a client reconnects with its id first.

use super::{state_json, ConnectionInfo, Registry, Session};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::info;

/// Most messages queued for a disconnected session; beyond it the oldest are dropped.
const MAX_QUEUED: usize = 10_000;
/// How long a claimed resume may take to attach its socket.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a session's messages go.
#[derive(Debug)]
pub struct SessionLink {
    out: Option<mpsc::UnboundedSender<String>>,
    queue: VecDeque<String>,
    pub resuming: bool,
    pub timeout_s: u64,
    /// Bumped on every (dis)connect and claim, so a stale timer cannot destroy a resumed
    /// session: even = connected, odd = disconnected.
    generation: u64,
    /// A reconnecting client has claimed this session (the first one wins, §3.9).
    claimed: bool,
}

impl SessionLink {
    fn open(out: mpsc::UnboundedSender<String>) -> Self {
        Self { out: Some(out), queue: VecDeque::new(), resuming: false, timeout_s: 60, generation: 0, claimed: false }
    }

    /// Sends now, or queues while disconnected; player updates are not queued (§3.5).
    pub fn send(&mut self, msg: String, is_player_update: bool) {
        match &self.out {
            Some(out) => {
                let _ = out.send(msg);
            }
            None if !is_player_update => {
                if self.queue.len() >= MAX_QUEUED {
                    self.queue.pop_front();
                }
                self.queue.push_back(msg);
            }
            None => {}
        }
    }

    pub fn is_open(&self) -> bool {
        self.out.is_some()
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

impl Registry {
    /// Opens a new session and queues its `ready`.
    pub fn open_session(&self, user_id: u64, client_name: String, conn: ConnectionInfo, out: mpsc::UnboundedSender<String>) -> String {
        let mut st = self.lock();
        let id = loop {
            let id = new_session_id();
            if !st.sessions.contains_key(&id) {
                break id;
            }
        };
        let _ = out.send(json!({"op": "ready", "resumed": false, "sessionId": id}).to_string());
        st.sessions.insert(id.clone(), Session { user_id, client_name, conn, link: SessionLink::open(out), players: HashMap::new() });
        let active = st.sessions.values().filter(|s| s.link.is_open()).count();
        drop(st);
        self.count_open(active);
        id
    }

    /// Claims a disconnected, resumable session for a reconnecting client (the first wins).
    /// Returns the generation to attach with.
    pub fn claim(self: &Arc<Self>, id: &str) -> Option<u64> {
        let mut st = self.lock();
        let s = st.sessions.get_mut(id)?;
        if s.link.is_open() || s.link.claimed {
            return None;
        }
        s.link.claimed = true;
        // Odd generations are "disconnected"; a claim moves to the next odd one, which cancels
        // the resume timer and arms a short one in case the socket never attaches.
        s.link.generation += 2;
        let generation = s.link.generation;
        drop(st);
        self.expire_after(id.to_string(), generation, ATTACH_TIMEOUT);
        Some(generation)
    }

    /// Attaches a claimed session to its new socket: `ready {resumed: true}`, the queued
    /// messages in order, then one playerUpdate per player (§3.8).
    pub fn attach(&self, id: &str, generation: u64, conn: ConnectionInfo, out: mpsc::UnboundedSender<String>) -> bool {
        let mut st = self.lock();
        let Some(s) = st.sessions.get_mut(id) else { return false };
        if s.link.generation != generation || s.link.is_open() {
            return false;
        }
        s.conn = conn;
        let _ = out.send(json!({"op": "ready", "resumed": true, "sessionId": id}).to_string());
        for msg in s.link.queue.drain(..) {
            let _ = out.send(msg);
        }
        let mut players: Vec<_> = s.players.values().collect();
        players.sort_by_key(|p| p.guild_id);
        for p in players {
            let _ = out.send(json!({"op": "playerUpdate", "guildId": p.guild_id.to_string(), "state": state_json(&p.state)}).to_string());
        }
        s.link.out = Some(out);
        s.link.generation += 1;
        s.link.claimed = false;
        let active = st.sessions.values().filter(|s| s.link.is_open()).count();
        drop(st);
        self.count_open(active);
        info!(session = %id, "session resumed");
        true
    }

    /// The socket of session `id` closed: pause it if resumable, else destroy it.
    pub fn disconnected(self: &Arc<Self>, id: &str) {
        self.totals_closed();
        let paused = {
            let mut st = self.lock();
            match st.sessions.get_mut(id) {
                Some(s) if s.link.resuming => {
                    s.link.out = None;
                    s.conn.paused_at = Some(std::time::Instant::now());
                    s.link.generation += 1;
                    s.link.claimed = false;
                    Some((s.link.generation, s.link.timeout_s))
                }
                _ => None,
            }
        };
        match paused {
            Some((generation, timeout_s)) => {
                info!(session = %id, timeout_s, "session paused; waiting for a resume");
                self.expire_after(id.to_string(), generation, Duration::from_secs(timeout_s));
            }
            None => self.remove_session(id),
        }
    }

    fn expire_after(self: &Arc<Self>, id: String, generation: u64, after: Duration) {
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let Some(registry) = registry.upgrade() else { return };
            let expired = registry.lock().sessions.get(&id).is_some_and(|s| s.link.generation == generation && !s.link.is_open());
            if expired {
                info!(session = %id, "resume timeout: session destroyed");
                registry.remove_session(&id);
            }
        });
    }

    /// `PATCH /v4/sessions/{id}`: returns the resulting `{resuming, timeout}`.
    pub fn configure_session(&self, id: &str, resuming: Option<bool>, timeout_s: Option<u64>) -> Option<(bool, u64)> {
        let mut st = self.lock();
        let s = st.sessions.get_mut(id)?;
        if let Some(r) = resuming {
            s.link.resuming = r;
        }
        if let Some(t) = timeout_s {
            s.link.timeout_s = t;
        }
        Some((s.link.resuming, s.link.timeout_s))
    }
}

/// 16 characters of [a-z0-9], as Lavalink's session ids.
fn new_session_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random number generator is unavailable");
    bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}
