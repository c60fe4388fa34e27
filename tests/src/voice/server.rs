//! The fake voice gateway (TLS websocket) and the shared UDP media socket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::analysis::{FRAME_SAMPLES, zero_pcm, Frame, SILENCE_FRAME};
use super::connection::{Connection, Control, Identify, Inner, WsLink};
use super::dave::{self, DaveLink, Effect, Out};
use super::rtp::{self, Cipher, MODE_AES256_GCM, MODE_XCHACHA20};
use super::tls;

/// Heartbeat interval announced in Hello, in milliseconds.
pub const HEARTBEAT_INTERVAL_MS: u64 = 1000;
/// Default cap of stored audio per connection (older packets are dropped first).
pub const DEFAULT_AUDIO_CAP: Duration = Duration::from_secs(600);
const RTP_PAYLOAD_TYPE_OPUS: u8 = 0x78;

type Ws = WebSocketStream<tokio_rustls::server::TlsStream<TcpStream>>;

/// Encodes a gateway message with `op` first (songbird parses either order, Discord sends this).
pub(crate) fn message(op: u64, d: &serde_json::Value) -> String {
    format!(r#"{{"op":{op},"d":{d}}}"#)
}

struct Datagram {
    arrival: Instant,
    from: SocketAddr,
    data: Vec<u8>,
}

struct Route {
    conn: Arc<Inner>,
    tx: mpsc::UnboundedSender<Datagram>,
}

pub(crate) struct Shared {
    udp_port: u16,
    conns: Mutex<Vec<Connection>>,
    conns_changed: Condvar,
    routes: Mutex<HashMap<u32, Route>>,
    next_ssrc: AtomicU32,
    next_link: AtomicU64,
    audio_cap_frames: AtomicUsize,
    /// Whether received Opus is decoded (benchmarks at scale turn it off: arrival is enough).
    decode: std::sync::atomic::AtomicBool,
    /// The channel id whose calls negotiate DAVE (0: none do).
    dave_channel: AtomicU64,
    tcp_accepted: AtomicUsize,
    tls_failures: AtomicUsize,
    ws_failures: AtomicUsize,
    unknown_packets: AtomicUsize,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn routes(&self) -> MutexGuard<'_, HashMap<u32, Route>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A fake Discord voice server (gateway v4 + UDP media) on loopback, running on its own
/// background tokio runtime. Stops (dropping every connection) when dropped.
pub struct VoiceServer {
    runtime: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    ws_addr: SocketAddr,
    udp_addr: SocketAddr,
}

impl VoiceServer {
    /// Binds the TLS websocket and the UDP socket on `127.0.0.1:0` and starts serving.
    /// Takes a few milliseconds (the test CA is created once per process).
    pub fn start() -> VoiceServer {
        let pki = tls::pki();
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 4);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("voice-double")
            .enable_all()
            .build()
            .expect("voice double runtime");

        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind voice websocket");
        tcp.set_nonblocking(true).expect("nonblocking");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind voice UDP");
        udp.set_nonblocking(true).expect("nonblocking");
        let ws_addr = tcp.local_addr().expect("local addr");
        let udp_addr = udp.local_addr().expect("local addr");

        let shared = Arc::new(Shared {
            udp_port: udp_addr.port(),
            conns: Mutex::new(Vec::new()),
            conns_changed: Condvar::new(),
            routes: Mutex::new(HashMap::new()),
            next_ssrc: AtomicU32::new(0x0000_1001),
            next_link: AtomicU64::new(1),
            audio_cap_frames: AtomicUsize::new(frames_for(DEFAULT_AUDIO_CAP)),
            decode: std::sync::atomic::AtomicBool::new(true),
            dave_channel: AtomicU64::new(0),
            tcp_accepted: AtomicUsize::new(0),
            tls_failures: AtomicUsize::new(0),
            ws_failures: AtomicUsize::new(0),
            unknown_packets: AtomicUsize::new(0),
        });

        {
            let _guard = runtime.enter();
            let tcp = TcpListener::from_std(tcp).expect("tokio listener");
            let udp = UdpSocket::from_std(udp).expect("tokio UDP socket");
            let acceptor = TlsAcceptor::from(pki.server_config.clone());
            runtime.spawn(accept_loop(tcp, acceptor, shared.clone()));
            runtime.spawn(udp_loop(udp, shared.clone()));
        }

        VoiceServer { runtime: Some(runtime), shared, ws_addr, udp_addr }
    }

    /// `localhost:<port>`: what goes into a Lavalink `voice.endpoint` (songbird connects to
    /// `wss://{endpoint}/?v=4`).
    pub fn endpoint(&self) -> String {
        format!("localhost:{}", self.ws_addr.port())
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// The UDP media socket advertised in Ready.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// PEM of the test CA that issued the server certificate. Same file for every server of
    /// this process; it exists as long as the process does.
    pub fn ca_file(&self) -> PathBuf {
        tls::pki().ca_file.clone()
    }

    /// `("SSL_CERT_FILE", <ca_file>)`, ready for `Command::env` / `NodeOptions::env`.
    pub fn ssl_cert_env(&self) -> (String, String) {
        ("SSL_CERT_FILE".to_string(), self.ca_file().display().to_string())
    }

    /// Sets `SSL_CERT_FILE` of this (test) process to the CA file, for clients running in
    /// process (e.g. a songbird `Driver`). Safe to call from parallel tests: the file is
    /// the same for every server of the process.
    pub fn trust_in_this_process(&self) {
        std::env::set_var("SSL_CERT_FILE", self.ca_file());
    }

    /// Caps the audio stored per connection (applies from the next packet on).
    /// Turns decoding of received Opus off (on by default): frames then keep their arrival,
    /// sequence and payload, with silent PCM. For benchmarks, where the double's decoding would
    /// compete with the node for the same cores.
    pub fn set_decoding(&self, on: bool) {
        self.shared.decode.store(on, Ordering::Relaxed);
    }

    /// Negotiates DAVE (protocol 1) with clients that support it, for calls in `channel_id`
    /// (the MLS group id: Discord's server knows the channel, the double is told). Applies to
    /// sessions described from now on.
    pub fn enable_dave(&self, channel_id: u64) {
        self.shared.dave_channel.store(channel_id, Ordering::Relaxed);
    }

    pub fn set_audio_cap(&self, cap: Duration) {
        self.shared.audio_cap_frames.store(frames_for(cap), Ordering::Relaxed);
    }

    /// The first connection whose Identify has `server_id == guild_id`, waiting up to
    /// `timeout` for it. Panics with a diagnosis on timeout.
    pub fn wait_connection(&self, guild_id: u64, timeout: Duration) -> Connection {
        self.wait_connections(guild_id, 1, timeout).remove(0)
    }

    /// [`Self::wait_connection`], then at least `packets` audio packets on it within 10 s.
    /// Panics when either does not come.
    pub fn wait_audio(&self, guild_id: u64, packets: usize, connect_within: Duration) -> Connection {
        let conn = self.wait_connection(guild_id, connect_within);
        assert!(conn.wait_packets(packets, Duration::from_secs(10)), "guild {guild_id}: only {} of {packets} packets", conn.packets());
        conn
    }

    /// Waits until at least `n` connections identified for the guild; returns all of them,
    /// oldest first. Panics with a diagnosis on timeout.
    pub fn wait_connections(&self, guild_id: u64, n: usize, timeout: Duration) -> Vec<Connection> {
        let deadline = Instant::now() + timeout;
        let mut conns = self.shared.conns();
        loop {
            let found: Vec<Connection> = conns.iter().filter(|c| c.guild_id() == guild_id).cloned().collect();
            if found.len() >= n {
                return found;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                let guilds: Vec<u64> = conns.iter().map(|c| c.guild_id()).collect();
                drop(conns);
                panic!(
                    "voice double: expected {n} connection(s) for guild {guild_id} within {timeout:?}, \
                     have {}. {}; identified guilds: {guilds:?}",
                    found.len(),
                    self.diagnostics()
                );
            };
            conns = self.shared.conns_changed.wait_timeout(conns, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// All connections ever made for the guild, oldest first.
    pub fn connections(&self, guild_id: u64) -> Vec<Connection> {
        self.shared.conns().iter().filter(|c| c.guild_id() == guild_id).cloned().collect()
    }

    /// The newest connection of the guild, if any.
    pub fn latest(&self, guild_id: u64) -> Option<Connection> {
        self.connections(guild_id).pop()
    }

    /// Every connection of every guild, oldest first.
    pub fn all_connections(&self) -> Vec<Connection> {
        self.shared.conns().clone()
    }

    /// Closes the latest websocket of the guild with this close code (returns once the close
    /// frame is sent). Panics if the guild never connected.
    pub fn close(&self, guild_id: u64, code: u16, reason: &str) {
        self.latest(guild_id)
            .unwrap_or_else(|| panic!("voice double: close({guild_id}): guild never connected"))
            .close(code, reason);
    }

    /// Drops the latest websocket of the guild without a close frame (client sees an abnormal
    /// closure). Panics if the guild never connected.
    pub fn abort(&self, guild_id: u64) {
        self.latest(guild_id)
            .unwrap_or_else(|| panic!("voice double: abort({guild_id}): guild never connected"))
            .abort();
    }

    /// UDP packets that belonged to no connection (unknown SSRC or not RTP audio).
    pub fn unknown_packets(&self) -> usize {
        self.shared.unknown_packets.load(Ordering::Relaxed)
    }

    /// TLS handshakes that failed (typically: the client does not trust the test CA).
    pub fn tls_failures(&self) -> usize {
        self.shared.tls_failures.load(Ordering::Relaxed)
    }

    /// A one-line summary of what reached the server, for assertion messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "TCP connections accepted: {}, TLS handshakes failed: {}{}, websocket upgrades failed: {}",
            self.shared.tcp_accepted.load(Ordering::Relaxed),
            self.tls_failures(),
            if self.tls_failures() > 0 {
                " (does the connecting process have SSL_CERT_FILE set to the test CA?)"
            } else {
                ""
            },
            self.shared.ws_failures.load(Ordering::Relaxed),
        )
    }
}

impl Drop for VoiceServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn frames_for(cap: Duration) -> usize {
    ((cap.as_millis() / 20) as usize).max(1)
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                shared.tcp_accepted.fetch_add(1, Ordering::Relaxed);
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve_ws(shared.clone(), acceptor.clone(), tcp));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Why a websocket ends from the server's side.
enum End {
    /// Send a close frame with this code and reason.
    Close(u16, String),
    /// The socket failed or the peer went away; record this.
    Gone(u16, String),
}

struct WsCtx {
    shared: Arc<Shared>,
    link_id: u64,
    ctl_tx: mpsc::UnboundedSender<Control>,
    path: String,
    conn: Option<Arc<Inner>>,
}

impl WsCtx {
    fn link(&self) -> WsLink {
        WsLink { id: self.link_id, tx: self.ctl_tx.clone() }
    }
}

async fn serve_ws(shared: Arc<Shared>, acceptor: TlsAcceptor, tcp: TcpStream) {
    let tls = match acceptor.accept(tcp).await {
        Ok(tls) => tls,
        Err(e) => {
            shared.tls_failures.fetch_add(1, Ordering::Relaxed);
            eprintln!("[voice double] TLS handshake failed: {e}");
            return;
        }
    };
    let mut path = String::new();
    #[allow(clippy::result_large_err)] // the signature tungstenite's callback requires
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        path = req.uri().to_string();
        Ok(resp)
    };
    let mut ws = match tokio_tungstenite::accept_hdr_async(tls, callback).await {
        Ok(ws) => ws,
        Err(e) => {
            shared.ws_failures.fetch_add(1, Ordering::Relaxed);
            eprintln!("[voice double] websocket upgrade failed: {e}");
            return;
        }
    };

    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel();
    let link_id = shared.next_link.fetch_add(1, Ordering::Relaxed);
    let mut ctx = WsCtx { shared, link_id, ctl_tx, path, conn: None };

    let end = loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if let Err(end) = handle_text(&mut ctx, &mut ws, text.as_str()).await {
                        break end;
                    }
                }
                Some(Ok(Message::Binary(bytes))) => {
                    if let Some(c) = ctx.conn.clone() {
                        let handled = match bytes.split_first() {
                            Some((op, payload)) => dave_step(&c, |link| Some(link.on_binary(*op, payload))),
                            None => None,
                        };
                        match handled {
                            Some(out) => {
                                if let Err(end) = send_dave(&mut ws, out).await {
                                    break end;
                                }
                            }
                            None => {
                                let len = bytes.len();
                                c.update(|s| s.other_messages.push(serde_json::json!({ "binary": len })));
                            }
                        }
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    break End::Gone(code, reason);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break End::Gone(1006, format!("websocket error: {e}")),
                None => break End::Gone(1006, "connection dropped".to_string()),
            },
            Some(ctl) = ctl_rx.recv() => match ctl {
                Control::Close { code, reason, done } => {
                    if let Some(c) = &ctx.conn {
                        c.ws_ended(link_id, code, reason.clone());
                    }
                    send_close(&mut ws, code, &reason).await;
                    let _ = done.send(());
                    drain(&mut ws).await;
                    return;
                }
                Control::Abort { done } => {
                    if let Some(c) = &ctx.conn {
                        c.ws_ended(link_id, 1006, "aborted by the test".to_string());
                    }
                    drop(ws);
                    let _ = done.send(());
                    return;
                }
                Control::Send(text) => {
                    if let Err(e) = ws.send(Message::text(text)).await {
                        break End::Gone(1006, format!("send failed: {e}"));
                    }
                }
                Control::Dave(command) => {
                    let out = ctx.conn.clone().and_then(|c| dave_step(&c, |link| Some(link.command(command))));
                    if let Err(end) = send_dave(&mut ws, out.unwrap_or_default()).await {
                        break end;
                    }
                }
            }
        }
    };

    match end {
        End::Close(code, reason) => {
            if let Some(c) = &ctx.conn {
                c.ws_ended(link_id, code, reason.clone());
            }
            send_close(&mut ws, code, &reason).await;
            drain(&mut ws).await;
        }
        End::Gone(code, reason) => {
            if let Some(c) = &ctx.conn {
                c.ws_ended(link_id, code, reason);
            }
            // Lets tungstenite flush its reply to a client close frame.
            drain(&mut ws).await;
        }
    }
}

async fn send_close(ws: &mut Ws, code: u16, reason: &str) {
    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.to_string().into() };
    let _ = ws.send(Message::Close(Some(frame))).await;
}

/// Reads until the peer finishes the close handshake (bounded).
async fn drain(ws: &mut Ws) {
    let _ =
        tokio::time::timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = ws.next().await {} })
            .await;
}

async fn send(ws: &mut Ws, op: u64, d: serde_json::Value) -> Result<(), End> {
    ws.send(Message::text(message(op, &d))).await.map_err(|e| End::Gone(1006, format!("send failed: {e}")))
}

fn snowflake(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn parse_identify(d: &serde_json::Value) -> Option<Identify> {
    Some(Identify {
        server_id: snowflake(&d["server_id"])?,
        user_id: snowflake(&d["user_id"])?,
        session_id: d["session_id"].as_str()?.to_string(),
        token: d["token"].as_str()?.to_string(),
        max_dave_protocol_version: d["max_dave_protocol_version"].as_u64(),
    })
}

async fn handle_text(ctx: &mut WsCtx, ws: &mut Ws, text: &str) -> Result<(), End> {
    let Ok(msg) = serde_json::from_str::<serde_json::Value>(text) else {
        return Err(End::Close(4002, "Failed to decode payload".into()));
    };
    let Some(op) = msg["op"].as_u64() else {
        return Err(End::Close(4001, "Unknown opcode".into()));
    };
    let d = msg["d"].clone();
    match op {
        // Identify
        0 => {
            if ctx.conn.is_some() {
                return Err(End::Close(4005, "Already authenticated".into()));
            }
            let Some(identify) = parse_identify(&d) else {
                return Err(End::Close(4002, "Failed to decode payload".into()));
            };
            let ssrc = ctx.shared.next_ssrc.fetch_add(1, Ordering::Relaxed);
            let inner = Arc::new(Inner::new(ssrc, identify, ctx.path.clone(), ctx.link()));
            let (tx, rx) = mpsc::unbounded_channel();
            ctx.shared.routes().insert(ssrc, Route { conn: inner.clone(), tx });
            tokio::spawn(decode_loop(inner.clone(), rx, ctx.shared.clone()));
            ctx.conn = Some(inner.clone());
            ctx.shared.conns().push(Connection { inner });
            ctx.shared.conns_changed.notify_all();
            send(ws, 8, serde_json::json!({ "heartbeat_interval": HEARTBEAT_INTERVAL_MS })).await?;
            send(
                ws,
                2,
                serde_json::json!({
                    "ssrc": ssrc,
                    "ip": "127.0.0.1",
                    "port": ctx.shared.udp_port,
                    "modes": [MODE_AES256_GCM, MODE_XCHACHA20],
                }),
            )
            .await?;
        }
        // Select Protocol
        1 => {
            let Some(conn) = ctx.conn.clone() else {
                return Err(End::Close(4003, "Not authenticated".into()));
            };
            let data = &d["data"];
            let mode = data["mode"].as_str().unwrap_or_default().to_string();
            let mut key = [0u8; 32];
            OsRng.fill_bytes(&mut key);
            let Some(cipher) = Cipher::new(&mode, &key) else {
                return Err(End::Close(4016, "Unknown encryption mode".into()));
            };
            let address = data["address"].as_str().map(str::to_string);
            let port = data["port"].as_u64().and_then(|p| u16::try_from(p).ok());
            // DAVE when the test asked for it and the client supports it.
            let identify = conn.lock().identify.clone();
            let channel = ctx.shared.dave_channel.load(Ordering::Relaxed);
            let dave = if channel != 0 && identify.max_dave_protocol_version.unwrap_or(0) >= 1 {
                match DaveLink::start(channel, identify.user_id) {
                    Ok((link, out)) => Some((link, out)),
                    Err(e) => {
                        conn.update(|s| s.dave.errors.push(format!("cannot start DAVE: {e}")));
                        None
                    }
                }
            } else {
                None
            };
            let version = u64::from(dave.is_some());
            conn.update(|s| {
                s.mode = Some(mode.clone());
                s.secret_key = Some(key);
                s.cipher = Some(Arc::new(cipher));
                s.selected_address = address.zip(port);
            });
            send(
                ws,
                4,
                serde_json::json!({
                    "mode": mode,
                    "secret_key": key.to_vec(),
                    "dave_protocol_version": version,
                }),
            )
            .await?;
            if let Some((link, out)) = dave {
                *conn.dave.lock().unwrap_or_else(|e| e.into_inner()) = Some(link);
                conn.update(|s| s.dave.negotiated = true);
                send_dave(ws, out).await?;
            }
        }
        // Heartbeat
        3 => {
            if let Some(c) = &ctx.conn {
                c.update(|s| s.heartbeats += 1);
            }
            send(ws, 6, d).await?;
        }
        // Speaking
        5 => {
            if let Some(c) = &ctx.conn {
                c.update(|s| s.speaking.push(d));
            }
        }
        // Resume
        7 => {
            let guild = snowflake(&d["server_id"]);
            let session = d["session_id"].as_str().map(str::to_string);
            let found = ctx
                .shared
                .conns()
                .iter()
                .rev()
                .find(|c| {
                    let id = c.identify();
                    Some(id.server_id) == guild && Some(&id.session_id) == session.as_ref()
                })
                .cloned();
            let Some(found) = found else {
                return Err(End::Close(4006, "Session no longer valid".into()));
            };
            let link = ctx.link();
            found.inner.update(|s| {
                s.ws = Some(link);
                s.ws_closed = None;
                s.resumes += 1;
            });
            ctx.conn = Some(found.inner.clone());
            send(ws, 8, serde_json::json!({ "heartbeat_interval": HEARTBEAT_INTERVAL_MS })).await?;
            send(ws, 9, serde_json::Value::Null).await?;
        }
        _ => {
            let Some(c) = ctx.conn.clone() else { return Ok(()) };
            match dave_step(&c, |link| link.on_json(op, &d)) {
                Some(out) => send_dave(ws, out).await?,
                None => c.update(|s| s.other_messages.push(msg)),
            }
        }
    }
    Ok(())
}

/// Runs one step of the connection's DAVE link (if it has one and `f` handles the message) and
/// books its effect; returns what to send.
fn dave_step(conn: &Inner, f: impl FnOnce(&mut DaveLink) -> Option<Effect>) -> Option<Vec<Out>> {
    let (effect, epoch) = {
        let mut link = conn.dave.lock().unwrap_or_else(|e| e.into_inner());
        let link = link.as_mut()?;
        let effect = f(link)?;
        (effect, link.epoch())
    };
    conn.update(|s| {
        let d = &mut s.dave;
        d.key_packages += effect.key_packages;
        d.invalid_commits += effect.invalid_commits;
        d.errors.extend(effect.errors);
        d.epoch = epoch;
        if let Some(version) = effect.executed {
            d.transitions.push(version);
            d.joined = version != 0;
        }
        if effect.leaving {
            d.joined = false;
            d.expected_since = None;
        }
    });
    Some(effect.out)
}

async fn send_dave(ws: &mut Ws, out: Vec<Out>) -> Result<(), End> {
    for o in out {
        let msg = match o {
            Out::Json(op, d) => Message::text(message(op, &d)),
            Out::Binary(op, payload) => Message::binary([[op].as_slice(), &payload].concat()),
        };
        ws.send(msg).await.map_err(|e| End::Gone(1006, format!("send failed: {e}")))?;
    }
    Ok(())
}

async fn udp_loop(sock: UdpSocket, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, from)) = sock.recv_from(&mut buf).await else { continue };
        let arrival = Instant::now();
        let pkt = &buf[..len];

        // IP discovery request: type 1, length 70, SSRC, 64-byte address, port.
        if len == 74 && pkt[0..2] == [0, 1] {
            let ssrc = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
            let mut resp = [0u8; 74];
            resp[0..2].copy_from_slice(&2u16.to_be_bytes());
            resp[2..4].copy_from_slice(&70u16.to_be_bytes());
            resp[4..8].copy_from_slice(&ssrc.to_be_bytes());
            let ip = from.ip().to_string();
            resp[8..8 + ip.len()].copy_from_slice(ip.as_bytes());
            resp[72..74].copy_from_slice(&from.port().to_be_bytes());
            let _ = sock.send_to(&resp, from).await;
            let conn = shared.routes().get(&ssrc).map(|r| r.conn.clone());
            if let Some(conn) = conn {
                conn.update(|s| s.client_udp = Some(from));
            }
            continue;
        }

        // Keepalive: the sender's SSRC. Echoed, as Discord does.
        if len == 4 {
            let ssrc = u32::from_be_bytes([pkt[0], pkt[1], pkt[2], pkt[3]]);
            let conn = shared.routes().get(&ssrc).map(|r| r.conn.clone());
            match conn {
                Some(conn) => conn.update(|s| s.keepalives += 1),
                None => {
                    shared.unknown_packets.fetch_add(1, Ordering::Relaxed);
                }
            }
            let _ = sock.send_to(pkt, from).await;
            continue;
        }

        let routed =
            rtp::parse_header(pkt).filter(|h| h.payload_type == RTP_PAYLOAD_TYPE_OPUS).and_then(|h| {
                let routes = shared.routes();
                let route = routes.get(&h.ssrc)?;
                route.tx.send(Datagram { arrival, from, data: pkt.to_vec() }).ok()
            });
        if routed.is_none() {
            shared.unknown_packets.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Decrypts and decodes one connection's packets in arrival order.
async fn decode_loop(conn: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Datagram>, shared: Arc<Shared>) {
    let mut decoder = opus2::Decoder::new(48_000, opus2::Channels::Stereo).expect("create Opus decoder");
    let mut pcm = vec![0i16; 5760 * 2];
    while let Some(dg) = rx.recv().await {
        let Some(header) = rtp::parse_header(&dg.data) else { continue };
        let cipher = conn.lock().cipher.clone();
        let Some(payload) = cipher.and_then(|c| rtp::decrypt(&c, &dg.data)) else {
            conn.update(|s| {
                s.decrypt_errors += 1;
                s.client_udp.get_or_insert(dg.from);
            });
            continue;
        };
        // End-to-end encrypted (the marker), or plain: the silence frame is never encrypted,
        // anything else plain while DAVE is expected is counted.
        let e2ee = dave::is_e2ee(&payload);
        let opus = if e2ee {
            let decrypted = match conn.dave.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                Some(link) => link.decrypt(&payload),
                None => Err("a DAVE frame on a connection without DAVE".into()),
            };
            match decrypted {
                Ok(opus) => opus,
                Err(why) => {
                    // Like a transport decryption failure, not counted among the packets.
                    conn.update(|s| {
                        s.dave.decrypt_failures += 1;
                        if s.dave.errors.len() < 20 {
                            s.dave.errors.push(format!("decrypt: {why}"));
                        }
                    });
                    continue;
                }
            }
        } else {
            payload
        };
        let decoded = if opus.is_empty() {
            None
        } else if shared.decode.load(Ordering::Relaxed) {
            decoder.decode(&opus, &mut pcm, false).ok()
        } else {
            pcm[..FRAME_SAMPLES * 2].fill(0);
            Some(FRAME_SAMPLES)
        };
        let frame = decoded.map(|n| {
            let samples = &pcm[..n * 2];
            let pcm =
                if samples.iter().all(|&s| s == 0) { zero_pcm(samples.len()) } else { Arc::from(samples) };
            Frame {
                arrival: dg.arrival,
                seq: header.seq,
                timestamp: header.timestamp,
                opus: Arc::from(opus.as_slice()),
                pcm,
                e2ee,
            }
        });
        let cap = shared.audio_cap_frames.load(Ordering::Relaxed);
        conn.update(|s| {
            s.client_udp.get_or_insert(dg.from);
            s.packets += 1;
            if opus == SILENCE_FRAME {
                s.silence_frames += 1;
            }
            if e2ee {
                s.dave.e2ee_frames += 1;
                if s.dave.joined && s.dave.expected_since.is_none() {
                    s.dave.expected_since = Some(dg.arrival);
                }
            } else if opus != SILENCE_FRAME && s.dave.expected_since.is_some() {
                s.dave.plain_frames_while_expected += 1;
            }
            match frame {
                Some(frame) => {
                    s.frames.push_back(frame);
                    while s.frames.len() > cap {
                        s.frames.pop_front();
                        s.dropped_frames += 1;
                    }
                }
                None => s.decode_errors += 1,
            }
        });
    }
}
