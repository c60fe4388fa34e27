//! Client WebSocket sessions and resuming (lavalink-internals §3): a session whose socket closes
//! with resuming on keeps its players, queues every outgoing message except playerUpdates, and
//! is destroyed after its timeout unless a client reconnects with its id first.
//!
//! Every queue here is bounded: a connected client's [`Outbox`] (a client that stops reading is
//! dropped, and its session follows the resume rules) and a paused session's resume queue (the
//! oldest messages go first). Sessions know nothing of players: a removed session is announced
//! through [`Sessions::removed`], and the layer above destroys its players.

mod outbox;

pub use outbox::{Next, Outbox};

use crate::clock::unix_ms;
use crate::lavalink::Op;
use crate::telemetry;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

/// The longest resume timeout a session keeps, in seconds (a year).
pub const MAX_RESUME_TIMEOUT_S: u64 = 365 * 24 * 3600;

/// Most messages queued for a disconnected session; beyond it the oldest are dropped.
const MAX_QUEUED: usize = 10_000;
/// Most bytes queued for a disconnected session; beyond it the oldest are dropped.
const MAX_QUEUED_BYTES: usize = 32 << 20;
/// How long a claimed resume may take to attach its socket.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

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
        self.last_activity_ms.store(unix_ms(), Ordering::Relaxed);
    }

    pub fn received(&self, bytes: usize) {
        self.messages_received.fetch_add(1, Ordering::Relaxed);
        self.bytes_received.fetch_add(bytes as u64, Ordering::Relaxed);
        self.last_activity_ms.store(unix_ms(), Ordering::Relaxed);
    }
}

/// Who is connected, and since when.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub remote: Option<SocketAddr>,
    pub connected_at_ms: i64,
    pub traffic: Arc<Traffic>,
}

impl ConnectionInfo {
    pub fn new(remote: Option<SocketAddr>, traffic: Arc<Traffic>) -> Self {
        let now = unix_ms();
        traffic.last_activity_ms.store(now, Ordering::Relaxed);
        Self { remote, connected_at_ms: now, traffic }
    }
}

/// A socket attached to a session: where its messages go, and the generation that identifies
/// this attachment (a stale socket cannot disconnect a session another socket resumed).
#[derive(Debug, Clone)]
pub struct Attachment {
    pub session_id: String,
    pub generation: u64,
    pub outbox: Arc<Outbox>,
}

#[derive(Debug)]
struct Session {
    user_id: u64,
    client_name: String,
    conn: ConnectionInfo,
    /// The connected socket's queue; `None` while disconnected.
    outbox: Option<Arc<Outbox>>,
    /// Messages kept for a resume while disconnected, and their bytes.
    queue: VecDeque<String>,
    queued_bytes: usize,
    resuming: bool,
    timeout_s: u64,
    /// When the socket went away (resumable sessions), for the time left.
    paused_at: Option<Instant>,
    /// Bumped on every (dis)connect and claim, so a stale timer or socket cannot act on a
    /// session that moved on: even = connected, odd = disconnected.
    generation: u64,
    /// A reconnecting client has claimed this session (the first one wins, §3.9).
    claimed: bool,
    /// A session that was not resumable, kept for one resume across a handover to the next
    /// gateway: its `resuming` flag again once it resumes.
    restore_resuming: Option<bool>,
}

impl Session {
    fn is_open(&self) -> bool {
        self.outbox.is_some()
    }

    fn enqueue(&mut self, msg: String) {
        self.queued_bytes += msg.len();
        self.queue.push_back(msg);
        while self.queue.len() > MAX_QUEUED || self.queued_bytes > MAX_QUEUED_BYTES {
            let Some(old) = self.queue.pop_front() else { break };
            self.queued_bytes -= old.len();
        }
    }
}

/// A session as `/v4/caldera/connections` and the metrics see it.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub id: String,
    pub user_id: u64,
    pub client_name: String,
    pub conn: ConnectionInfo,
    pub open: bool,
    pub resume_time_left_ms: Option<i64>,
    pub queued: usize,
}

/// A session as one gateway hands it to the next (a planned upgrade): what a resume needs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub user_id: u64,
    pub client_name: String,
    pub resuming: bool,
    pub timeout_s: u64,
    /// Messages waiting for the resume, oldest first.
    pub queue: Vec<String>,
    pub restore_resuming: Option<bool>,
}

/// Every session, and the totals, as handed over.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SessionsRecord {
    pub sessions: Vec<SessionRecord>,
    pub totals: Totals,
}

/// Totals since the gateway started.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub opened: u64,
    pub closed: u64,
    pub peak: u64,
}

#[derive(Default)]
struct Table {
    sessions: HashMap<String, Session>,
    totals: Totals,
    /// Sessions removed, whose players the layer above has not destroyed yet.
    removed: Vec<String>,
}

impl Table {
    fn active(&self) -> usize {
        self.sessions.values().filter(|s| s.is_open()).count()
    }

    fn count_open(&mut self) {
        let active = self.active() as u64;
        self.totals.opened += 1;
        self.totals.peak = self.totals.peak.max(active);
    }

    fn remove(&mut self, id: &str) {
        if self.sessions.remove(id).is_some() {
            self.removed.push(id.to_string());
        }
    }
}

pub struct Sessions {
    table: Mutex<Table>,
    /// Signalled when a session is removed.
    removed_signal: Notify,
    /// Resume timers.
    timers: TaskTracker,
    stop: CancellationToken,
    me: Weak<Sessions>,
}

impl Sessions {
    pub fn new() -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            table: Mutex::default(),
            removed_signal: Notify::new(),
            timers: TaskTracker::new(),
            stop: CancellationToken::new(),
            me: me.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn exists(&self, id: &str) -> bool {
        self.lock().sessions.contains_key(id)
    }

    pub fn user_id(&self, id: &str) -> Option<u64> {
        self.lock().sessions.get(id).map(|s| s.user_id)
    }

    /// Opens a new session; its `ready` is the first message of the outbox.
    pub fn open(&self, user_id: u64, client_name: String, conn: ConnectionInfo) -> Attachment {
        let mut t = self.lock();
        let id = loop {
            let id = new_session_id();
            if !t.sessions.contains_key(&id) {
                break id;
            }
        };
        let outbox = Arc::new(Outbox::default());
        let _ = outbox.push(Op::Ready { resumed: false, session_id: id.clone() }.to_text());
        let session = Session {
            user_id,
            client_name,
            conn,
            outbox: Some(outbox.clone()),
            queue: VecDeque::new(),
            queued_bytes: 0,
            resuming: false,
            timeout_s: 60,
            paused_at: None,
            generation: 0,
            claimed: false,
            restore_resuming: None,
        };
        t.sessions.insert(id.clone(), session);
        t.count_open();
        Attachment { session_id: id, generation: 0, outbox }
    }

    /// Claims a disconnected, resumable session for a reconnecting client (the first wins).
    /// Returns the generation to attach with.
    pub fn claim(&self, id: &str, user_id: u64) -> Option<u64> {
        let mut t = self.lock();
        let s = t.sessions.get_mut(id)?;
        // Only the bot that owns a session resumes it (its players are that bot's voice).
        if s.is_open() || s.claimed || s.user_id != user_id {
            return None;
        }
        s.claimed = true;
        // Odd generations are "disconnected"; a claim moves to the next odd one, which cancels
        // the resume timer and arms a short one in case the socket never attaches.
        s.generation += 2;
        let generation = s.generation;
        drop(t);
        self.expire_after(id.to_string(), generation, ATTACH_TIMEOUT);
        Some(generation)
    }

    /// Attaches a claimed session to its new socket: `ready {resumed: true}`, the queued
    /// messages in order, then `then` (one playerUpdate per player, §3.8).
    pub fn attach(&self, id: &str, generation: u64, conn: ConnectionInfo, then: Vec<Op>) -> Option<Attachment> {
        let mut t = self.lock();
        let s = t.sessions.get_mut(id)?;
        if s.generation != generation || s.is_open() {
            return None;
        }
        s.conn = conn;
        let replay = std::iter::once(Op::Ready { resumed: true, session_id: id.to_string() }.to_text())
            .chain(s.queue.drain(..))
            .chain(then.iter().map(Op::to_text));
        let outbox = Arc::new(Outbox::with_backlog(replay));
        s.queued_bytes = 0;
        s.outbox = Some(outbox.clone());
        s.paused_at = None;
        s.generation += 1;
        s.claimed = false;
        if let Some(resuming) = s.restore_resuming.take() {
            s.resuming = resuming;
        }
        let generation = s.generation;
        t.count_open();
        info!(session = %id, "session resumed");
        Some(Attachment { session_id: id.to_string(), generation, outbox })
    }

    /// Sends an op to a session now, or queues it while the session waits for a resume
    /// (playerUpdates are not queued, §3.5). A client too far behind is dropped here, and its
    /// session follows the resume rules.
    pub fn send(&self, id: &str, op: &Op) {
        let mut t = self.lock();
        let Some(s) = t.sessions.get_mut(id) else { return };
        let is_update = matches!(op, Op::PlayerUpdate { .. });
        match &s.outbox {
            Some(outbox) => {
                if let Err(msg) = outbox.push(op.to_text()) {
                    warn!(session = %id, "client is not reading its WebSocket; dropping it");
                    telemetry::record_ws_slow_consumer();
                    let generation = s.generation;
                    let keep = !is_update;
                    self.disconnect_locked(&mut t, id, generation, keep.then_some(msg));
                }
            }
            None if !is_update => s.enqueue(op.to_text()),
            None => {}
        }
    }

    /// The socket attached as `generation` closed: the session pauses if resumable, else it is
    /// removed (with its players).
    pub fn disconnected(&self, attachment: &Attachment) {
        let mut t = self.lock();
        self.disconnect_locked(&mut t, &attachment.session_id, attachment.generation, None);
    }

    fn disconnect_locked(&self, t: &mut Table, id: &str, generation: u64, first_queued: Option<String>) {
        let Some(s) = t.sessions.get_mut(id) else { return };
        if s.generation != generation || !s.is_open() {
            return;
        }
        if let Some(outbox) = s.outbox.take() {
            outbox.close();
        }
        t.totals.closed += 1;
        let Some(s) = t.sessions.get_mut(id) else { return };
        if !s.resuming {
            t.remove(id);
            self.removed_signal.notify_one();
            return;
        }
        s.paused_at = Some(Instant::now());
        s.generation += 1;
        s.claimed = false;
        if let Some(msg) = first_queued {
            s.enqueue(msg);
        }
        let (generation, timeout_s) = (s.generation, s.timeout_s);
        info!(session = %id, timeout_s, "session paused; waiting for a resume");
        self.expire_after(id.to_string(), generation, Duration::from_secs(timeout_s));
    }

    /// Removes the session `id` if it is still disconnected at `generation` after `after`.
    fn expire_after(&self, id: String, generation: u64, after: Duration) {
        let sessions = self.me.clone();
        let stop = self.stop.clone();
        self.timers.spawn(
            async move {
                tokio::select! {
                    _ = tokio::time::sleep(after) => {}
                    _ = stop.cancelled() => return,
                }
                let Some(sessions) = sessions.upgrade() else { return };
                let mut t = sessions.lock();
                if t.sessions.get(&id).is_some_and(|s| s.generation == generation && !s.is_open()) {
                    info!(session = %id, "resume timeout: session destroyed");
                    t.remove(&id);
                    drop(t);
                    sessions.removed_signal.notify_one();
                }
            }
            .instrument(info_span!("resume_timer")),
        );
    }

    /// Waits until sessions were removed and returns their ids (their players are to be
    /// destroyed by the caller).
    pub async fn removed(&self) -> Vec<String> {
        loop {
            let notified = self.removed_signal.notified();
            let removed = std::mem::take(&mut self.lock().removed);
            if !removed.is_empty() {
                return removed;
            }
            notified.await;
        }
    }

    /// `PATCH /v4/sessions/{id}`: returns the resulting `(resuming, timeout)`; timeouts past
    /// [`MAX_RESUME_TIMEOUT_S`] are cut to it.
    pub fn configure(&self, id: &str, resuming: Option<bool>, timeout_s: Option<u64>) -> Option<(bool, u64)> {
        let mut t = self.lock();
        let s = t.sessions.get_mut(id)?;
        if let Some(r) = resuming {
            s.resuming = r;
        }
        if let Some(timeout) = timeout_s {
            // Far beyond any use, and far inside what times and timers can add up.
            s.timeout_s = timeout.min(MAX_RESUME_TIMEOUT_S);
        }
        Some((s.resuming, s.timeout_s))
    }

    /// Every session, for `/v4/caldera/connections` and the metrics.
    pub fn views(&self) -> (Vec<SessionView>, Totals) {
        let t = self.lock();
        let views = t
            .sessions
            .iter()
            .map(|(id, s)| SessionView {
                id: id.clone(),
                user_id: s.user_id,
                client_name: s.client_name.clone(),
                conn: s.conn.clone(),
                open: s.is_open(),
                resume_time_left_ms: s
                    .paused_at
                    .filter(|_| !s.is_open())
                    .map(|at| (s.timeout_s as i64).saturating_mul(1000).saturating_sub(at.elapsed().as_millis() as i64).max(0)),
                queued: s.queue.len(),
            })
            .collect();
        (views, t.totals)
    }

    /// Before a handover: every session is kept for a resume when its socket closes, those
    /// that were not resumable for this one resume only (within their timeout).
    pub fn prepare_handover(&self) {
        for s in self.lock().sessions.values_mut() {
            if !s.resuming {
                s.resuming = true;
                s.restore_resuming = Some(false);
            }
        }
    }

    /// Every session as the next gateway takes it.
    pub fn record(&self) -> SessionsRecord {
        let t = self.lock();
        let sessions = t
            .sessions
            .iter()
            .map(|(id, s)| SessionRecord {
                id: id.clone(),
                user_id: s.user_id,
                client_name: s.client_name.clone(),
                resuming: s.resuming,
                timeout_s: s.timeout_s,
                queue: s.queue.iter().cloned().collect(),
                restore_resuming: s.restore_resuming,
            })
            .collect();
        SessionsRecord { sessions, totals: t.totals }
    }

    /// Takes the sessions the previous gateway handed over: each waits for its client's resume
    /// (or its timeout) with its queued messages.
    pub fn restore(&self, record: SessionsRecord) {
        let mut t = self.lock();
        t.totals = record.totals;
        for r in record.sessions {
            let mut session = Session {
                user_id: r.user_id,
                client_name: r.client_name,
                conn: ConnectionInfo::new(None, Arc::default()),
                outbox: None,
                queue: VecDeque::new(),
                queued_bytes: 0,
                resuming: r.resuming,
                timeout_s: r.timeout_s.min(MAX_RESUME_TIMEOUT_S),
                paused_at: Some(Instant::now()),
                generation: 1,
                claimed: false,
                restore_resuming: r.restore_resuming,
            };
            for msg in r.queue {
                session.enqueue(msg);
            }
            let timeout = Duration::from_secs(session.timeout_s);
            t.sessions.insert(r.id.clone(), session);
            self.expire_after(r.id, 1, timeout);
        }
    }

    /// Stops the resume timers and waits for them.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.timers.close();
        self.timers.wait().await;
    }
}

/// 16 characters of [a-z0-9], as Lavalink's session ids.
fn new_session_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random number generator is unavailable");
    bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> ConnectionInfo {
        ConnectionInfo::new(None, Arc::default())
    }

    fn drain(outbox: &Outbox) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(Next::Message(m)) = futures_now(outbox.next()) {
            out.push(m);
        }
        out
    }

    /// Polls a future once (the outbox answers at once when it holds a message).
    fn futures_now<F: std::future::Future>(f: F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn a_slow_client_is_dropped_and_its_resumable_session_queues() {
        let sessions = Sessions::new();
        let a = sessions.open(1, "c".into(), conn());
        sessions.configure(&a.session_id, Some(true), Some(60));
        let update = Op::PlayerUpdate { guild_id: "1".into(), state: crate::lavalink::PlayerState { time: 0, position: 0, connected: true, ping: 0 } };
        // The ready op is queued already; fill the outbox to the brim.
        for _ in 1..outbox::MAX_MESSAGES {
            sessions.send(&a.session_id, &update);
        }
        assert!(sessions.views().0[0].open);
        let stats_like = Op::Ready { resumed: false, session_id: "x".into() };
        sessions.send(&a.session_id, &stats_like);
        assert_eq!(futures_now(a.outbox.next()), Some(Next::Overflowed));
        let view = &sessions.views().0[0];
        assert!(!view.open, "the slow client was dropped");
        assert_eq!(view.queued, 1, "the message it could not take waits for the resume");
        // The old socket's own disconnect is stale now.
        sessions.disconnected(&a);
        assert_eq!(sessions.claim(&a.session_id, 2), None, "another bot cannot resume it");
        let generation = sessions.claim(&a.session_id, 1).unwrap();
        let b = sessions.attach(&a.session_id, generation, conn(), vec![update.clone()]).unwrap();
        let replay = drain(&b.outbox);
        assert_eq!(replay.len(), 3, "{replay:?}");
        assert!(replay[0].contains("\"resumed\":true") && replay[1].contains("\"sessionId\":\"x\"") && replay[2].contains("playerUpdate"));
    }

    #[tokio::test]
    async fn a_closed_session_without_resuming_is_removed_once() {
        let sessions = Sessions::new();
        let a = sessions.open(1, "c".into(), conn());
        sessions.disconnected(&a);
        sessions.disconnected(&a);
        assert_eq!(sessions.removed().await, vec![a.session_id.clone()]);
        assert!(!sessions.exists(&a.session_id));
        assert_eq!(sessions.views().1.closed, 1);
    }

    #[tokio::test]
    async fn a_handed_over_session_resumes_at_the_next_gateway_with_its_queue_and_flag() {
        let old = Sessions::new();
        let a = old.open(7, "bot".into(), conn());
        old.prepare_handover();
        old.disconnected(&a);
        assert!(old.exists(&a.session_id), "a session that was not resumable is kept for the handover");
        old.send(&a.session_id, &Op::Ready { resumed: false, session_id: "queued".into() });
        let record: SessionsRecord = serde_json::from_str(&serde_json::to_string(&old.record()).unwrap()).unwrap();

        let new = Sessions::new();
        new.restore(record);
        assert_eq!(new.claim(&a.session_id, 8), None, "only its own bot resumes it");
        let generation = new.claim(&a.session_id, 7).expect("claimed");
        let b = new.attach(&a.session_id, generation, conn(), Vec::new()).expect("attached");
        let replay = drain(&b.outbox);
        assert_eq!(replay.len(), 2, "{replay:?}");
        assert!(replay[0].contains("\"resumed\":true") && replay[1].contains("queued"), "{replay:?}");
        // Not resumable again: its next close removes it.
        new.disconnected(&b);
        assert!(!new.exists(&a.session_id));
    }

    #[test]
    fn the_resume_queue_is_bounded_in_bytes() {
        let mut t = Table::default();
        let s = Session {
            user_id: 1,
            client_name: String::new(),
            conn: conn(),
            outbox: None,
            queue: VecDeque::new(),
            queued_bytes: 0,
            resuming: true,
            timeout_s: 60,
            paused_at: None,
            generation: 1,
            claimed: false,
            restore_resuming: None,
        };
        t.sessions.insert("s".into(), s);
        let s = t.sessions.get_mut("s").unwrap();
        for i in 0..40 {
            s.enqueue(format!("{}{i}", " ".repeat(1 << 20)));
        }
        assert!(s.queued_bytes <= MAX_QUEUED_BYTES);
        assert_eq!(s.queue.len(), 31, "32 MiB hold 31 messages of a little over 1 MiB");
        assert!(s.queue.back().unwrap().ends_with("39"), "the newest are kept");
    }
}
