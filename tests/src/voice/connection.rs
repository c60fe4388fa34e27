//! Per-connection state of the voice double, shared between its tasks and the test thread.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::analysis::{Audio, Frame};
use super::rtp::Cipher;

/// The op 0 Identify payload as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identify {
    pub server_id: u64,
    pub user_id: u64,
    pub session_id: String,
    pub token: String,
    /// `max_dave_protocol_version`, if the client sent it (songbird 0.6 sends 1).
    pub max_dave_protocol_version: Option<u64>,
}

/// Commands from the test thread to the task owning a websocket.
pub(crate) enum Control {
    /// Send a close frame with this code and reason, then end the connection.
    Close { code: u16, reason: String, done: std::sync::mpsc::Sender<()> },
    /// Drop the TCP connection without a close frame.
    Abort { done: std::sync::mpsc::Sender<()> },
    /// Send this text message.
    Send(String),
    /// A DAVE request from the test.
    Dave(super::dave::Command),
}

/// The websocket currently attached to a connection (a resume attaches a new one).
pub(crate) struct WsLink {
    pub(crate) id: u64,
    pub(crate) tx: UnboundedSender<Control>,
}

pub(crate) struct State {
    pub(crate) identify: Identify,
    pub(crate) ws_path: String,
    pub(crate) mode: Option<String>,
    pub(crate) secret_key: Option<[u8; 32]>,
    pub(crate) cipher: Option<Arc<Cipher>>,
    pub(crate) selected_address: Option<(String, u16)>,
    pub(crate) client_udp: Option<SocketAddr>,
    pub(crate) packets: usize,
    pub(crate) silence_frames: usize,
    pub(crate) decrypt_errors: usize,
    pub(crate) decode_errors: usize,
    pub(crate) keepalives: usize,
    pub(crate) heartbeats: usize,
    pub(crate) resumes: usize,
    pub(crate) speaking: Vec<serde_json::Value>,
    pub(crate) other_messages: Vec<serde_json::Value>,
    pub(crate) ws: Option<WsLink>,
    pub(crate) ws_closed: Option<(u16, String)>,
    pub(crate) ws_closes: Vec<(u16, String)>,
    pub(crate) frames: VecDeque<Frame>,
    pub(crate) dropped_frames: usize,
    pub(crate) dave: DaveCounters,
}

/// What the double saw of DAVE on one connection.
#[derive(Default, Clone, Debug)]
pub struct DaveCounters {
    /// op 4 offered DAVE (protocol 1).
    pub negotiated: bool,
    /// The client is ready in the group (its op 23 for a transition to protocol 1 arrived)
    /// and no reset or downgrade was started since.
    pub joined: bool,
    /// Since when every audio frame must arrive end-to-end encrypted: the arrival of the first
    /// encrypted frame after the client joined. The client's sender is one thread sending in
    /// order, so a plain frame after that one was built after DAVE was ready. `None` before, and
    /// from the moment the double starts a reset (op 24, an invalid commit) or a downgrade.
    pub expected_since: Option<Instant>,
    /// Transitions executed (op 22 sent), as their protocol versions, in order.
    pub transitions: Vec<u16>,
    /// Audio frames that arrived end-to-end encrypted and decrypted.
    pub e2ee_frames: usize,
    /// Audio frames (not the Opus silence frame) that arrived plain while DAVE was expected.
    pub plain_frames_while_expected: usize,
    /// Frames with the DAVE marker that did not decrypt.
    pub decrypt_failures: usize,
    /// Key packages received (op 26): one per join or rejoin.
    pub key_packages: usize,
    /// op 31 received: the client refused a commit or welcome.
    pub invalid_commits: usize,
    /// The group's epoch as the other member sees it.
    pub epoch: Option<u64>,
    /// Protocol errors on the double's side (unexpected messages, failed MLS steps).
    pub errors: Vec<String>,
}

pub(crate) struct Inner {
    pub(crate) ssrc: u32,
    pub(crate) created: Instant,
    pub(crate) state: Mutex<State>,
    pub(crate) changed: Condvar,
    /// The connection's DAVE link, once negotiated (the websocket task and the decoder share it).
    pub(crate) dave: Mutex<Option<super::dave::DaveLink>>,
}

impl Inner {
    pub(crate) fn new(ssrc: u32, identify: Identify, ws_path: String, link: WsLink) -> Inner {
        Inner {
            ssrc,
            created: Instant::now(),
            state: Mutex::new(State {
                identify,
                ws_path,
                mode: None,
                secret_key: None,
                cipher: None,
                selected_address: None,
                client_udp: None,
                packets: 0,
                silence_frames: 0,
                decrypt_errors: 0,
                decode_errors: 0,
                keepalives: 0,
                heartbeats: 0,
                resumes: 0,
                speaking: Vec::new(),
                other_messages: Vec::new(),
                ws: Some(link),
                ws_closed: None,
                ws_closes: Vec::new(),
                frames: VecDeque::new(),
                dropped_frames: 0,
                dave: DaveCounters::default(),
            }),
            dave: Mutex::new(None),
            changed: Condvar::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `f` to the state and wakes waiters.
    pub(crate) fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.lock());
        self.changed.notify_all();
        out
    }

    /// Marks websocket `link_id` as ended, if it is still the attached one.
    pub(crate) fn ws_ended(&self, link_id: u64, code: u16, reason: String) {
        self.update(|s| {
            if s.ws.as_ref().is_some_and(|l| l.id == link_id) {
                s.ws = None;
                s.ws_closed = Some((code, reason.clone()));
                s.ws_closes.push((code, reason));
            }
        });
    }
}

/// A handle onto one voice connection (one Identify) of the double; its state keeps updating
/// while the connection lives. Cheap to clone.
#[derive(Clone)]
pub struct Connection {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.inner.lock();
        f.debug_struct("Connection")
            .field("guild", &s.identify.server_id)
            .field("ssrc", &self.inner.ssrc)
            .field("mode", &s.mode)
            .field("packets", &s.packets)
            .field("decrypt_errors", &s.decrypt_errors)
            .field("ws_closed", &s.ws_closed)
            .finish()
    }
}

impl Connection {
    fn with<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.inner.lock())
    }

    /// Waits until `cond` holds; false on timeout.
    fn wait_until(&self, timeout: Duration, mut cond: impl FnMut(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.inner.lock();
        loop {
            if cond(&s) {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return false };
            s = self.inner.changed.wait_timeout(s, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// The Identify payload as received.
    pub fn identify(&self) -> Identify {
        self.with(|s| s.identify.clone())
    }

    pub fn guild_id(&self) -> u64 {
        self.with(|s| s.identify.server_id)
    }

    /// The SSRC the double assigned in Ready (distinct per connection).
    pub fn ssrc(&self) -> u32 {
        self.inner.ssrc
    }

    /// When the Identify arrived.
    pub fn created(&self) -> Instant {
        self.inner.created
    }

    /// Request path of the websocket that identified (songbird: `/?v=4`).
    pub fn ws_path(&self) -> String {
        self.with(|s| s.ws_path.clone())
    }

    /// Encryption mode the client selected (op 1); empty before that.
    pub fn mode(&self) -> String {
        self.with(|s| s.mode.clone().unwrap_or_default())
    }

    /// The secret key sent in Session Description, once sent.
    pub fn secret_key(&self) -> Option<[u8; 32]> {
        self.with(|s| s.secret_key)
    }

    /// `(address, port)` the client announced in Select Protocol.
    pub fn selected_address(&self) -> Option<(String, u16)> {
        self.with(|s| s.selected_address.clone())
    }

    /// The client's UDP source address (from IP discovery or its first packet).
    pub fn client_udp_addr(&self) -> Option<SocketAddr> {
        self.with(|s| s.client_udp)
    }

    /// RTP audio packets received and decrypted (keepalives and failures excluded).
    pub fn packets(&self) -> usize {
        self.with(|s| s.packets)
    }

    /// Packets whose Opus payload is the silence frame `F8 FF FE`.
    pub fn silence_frames(&self) -> usize {
        self.with(|s| s.silence_frames)
    }

    /// RTP packets of this SSRC that failed to decrypt (or arrived before a key was sent).
    pub fn decrypt_errors(&self) -> usize {
        self.with(|s| s.decrypt_errors)
    }

    /// Decrypted packets libopus refused to decode.
    pub fn decode_errors(&self) -> usize {
        self.with(|s| s.decode_errors)
    }

    /// 4-byte UDP keepalives received.
    pub fn keepalives(&self) -> usize {
        self.with(|s| s.keepalives)
    }

    /// op 3 heartbeats received (each answered with op 6).
    pub fn heartbeats(&self) -> usize {
        self.with(|s| s.heartbeats)
    }

    /// op 7 resumes accepted for this connection.
    pub fn resumes(&self) -> usize {
        self.with(|s| s.resumes)
    }

    /// `d` of every op 5 Speaking received, in order.
    pub fn speaking_events(&self) -> Vec<serde_json::Value> {
        self.with(|s| s.speaking.clone())
    }

    /// Whole messages with ops the double does not handle (and binary messages as
    /// `{"binary": len}`), in order.
    pub fn other_messages(&self) -> Vec<serde_json::Value> {
        self.with(|s| s.other_messages.clone())
    }

    /// `Some((code, reason))` once the attached websocket ended: the code the double closed with,
    /// the client's close code, or `(1006, ..)` if the socket just dropped. Back to `None` when a
    /// resume attaches a new websocket.
    pub fn ws_closed(&self) -> Option<(u16, String)> {
        self.with(|s| s.ws_closed.clone())
    }

    /// Every websocket end of this connection, including resumed-over ones.
    pub fn ws_closes(&self) -> Vec<(u16, String)> {
        self.with(|s| s.ws_closes.clone())
    }

    /// Whether a websocket is currently attached.
    pub fn ws_open(&self) -> bool {
        self.with(|s| s.ws.is_some())
    }

    /// Audio packets dropped from the front of the stored audio because of the cap.
    pub fn dropped_frames(&self) -> usize {
        self.with(|s| s.dropped_frames)
    }

    /// Waits until at least `n` audio packets were received; false on timeout.
    pub fn wait_packets(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.packets >= n)
    }

    /// Waits until Session Description was sent (the client can now send audio).
    pub fn wait_session(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.cipher.is_some())
    }

    /// Waits until the websocket ended; returns [`Connection::ws_closed`].
    pub fn wait_closed(&self, timeout: Duration) -> Option<(u16, String)> {
        self.wait_until(timeout, |s| s.ws_closed.is_some());
        self.ws_closed()
    }

    /// Waits until at least `n` resumes happened and a websocket is attached.
    pub fn wait_resumes(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.resumes >= n && s.ws.is_some())
    }

    /// Waits until `f(self)` holds, re-checking on every state change; false on timeout.
    pub fn wait_for(&self, timeout: Duration, mut f: impl FnMut(&Connection) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if f(self) {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return false };
            let s = self.inner.lock();
            let _ = self.inner.changed.wait_timeout(s, left.min(Duration::from_millis(50)));
        }
    }

    /// What the double saw of DAVE on this connection.
    pub fn dave(&self) -> DaveCounters {
        self.with(|s| s.dave.clone())
    }

    /// Waits until DAVE is expected ([`DaveCounters::expected_since`]) and at least `frames`
    /// frames arrived end-to-end encrypted on the connection; false on timeout.
    pub fn wait_e2ee(&self, frames: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.dave.expected_since.is_some() && s.dave.e2ee_frames >= frames)
    }

    /// The audio from [`DaveCounters::expected_since`] on (empty while DAVE is not expected).
    pub fn e2ee_audio(&self) -> Audio {
        self.with(|s| match s.dave.expected_since {
            Some(t) => Audio::new(s.frames.iter().filter(|f| f.arrival >= t).cloned().collect()),
            None => Audio::new(Vec::new()),
        })
    }

    /// Waits until `f` holds of the DAVE counters; false on timeout.
    pub fn wait_dave(&self, timeout: Duration, mut f: impl FnMut(&DaveCounters) -> bool) -> bool {
        self.wait_until(timeout, |s| f(&s.dave))
    }

    /// Adds a member to the call: op 11 naming it, then op 27 with an external proposal adding
    /// its key package; the client commits (op 28), the double announces the commit (op 29),
    /// and the epoch advances. False if no websocket is attached.
    pub fn add_dave_member(&self) -> bool {
        self.dave_command(super::dave::Command::AddMember)
    }

    /// Downgrades the call to protocol 0 (op 21, then op 22 once the client is ready): audio
    /// goes on transport-encrypted only.
    pub fn downgrade_dave(&self) -> bool {
        self.dave_command(super::dave::Command::Downgrade)
    }

    /// Prepares epoch 1 (op 24): the client starts over with a new key package and is welcomed
    /// again (its stale leaf removed in the same commit).
    pub fn prepare_dave_epoch(&self) -> bool {
        self.dave_command(super::dave::Command::PrepareEpoch)
    }

    /// Announces a commit that is not MLS (op 29): the client refuses it (op 31) and starts over.
    pub fn send_invalid_commit(&self) -> bool {
        self.dave_command(super::dave::Command::InvalidCommit)
    }

    fn dave_command(&self, command: super::dave::Command) -> bool {
        self.with(|s| s.ws.as_ref().is_some_and(|l| l.tx.send(Control::Dave(command)).is_ok()))
    }

    /// Snapshot of everything decoded so far.
    pub fn audio(&self) -> Audio {
        self.with(|s| Audio::new(s.frames.iter().cloned().collect()))
    }

    /// Closes the attached websocket with `code`/`reason` (no-op if none is attached).
    /// Returns once the close frame was sent; `ws_closed()` then reports `(code, reason)`.
    pub fn close(&self, code: u16, reason: &str) {
        let (done, wait) = std::sync::mpsc::channel();
        let sent = self.with(|s| {
            s.ws.as_ref()
                .is_some_and(|l| l.tx.send(Control::Close { code, reason: reason.to_string(), done }).is_ok())
        });
        if sent {
            let _ = wait.recv_timeout(Duration::from_secs(5));
        }
    }

    /// Drops the attached websocket's TCP connection without a close frame.
    pub fn abort(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        let sent = self.with(|s| s.ws.as_ref().is_some_and(|l| l.tx.send(Control::Abort { done }).is_ok()));
        if sent {
            let _ = wait.recv_timeout(Duration::from_secs(5));
        }
    }

    /// Sends a raw JSON message (e.g. `{"op": 13, "d": {...}}`) on the attached websocket.
    /// Returns false if no websocket is attached.
    pub fn send_json(&self, msg: &serde_json::Value) -> bool {
        let text = match (msg.get("op").and_then(|o| o.as_u64()), msg.get("d")) {
            (Some(op), Some(d)) if msg.as_object().is_some_and(|o| o.len() == 2) => {
                super::server::message(op, d)
            }
            _ => msg.to_string(),
        };
        self.with(|s| s.ws.as_ref().is_some_and(|l| l.tx.send(Control::Send(text)).is_ok()))
    }
}
