//! Players: one task per player, owning a songbird driver (its voice connection) and the
//! current track: the decoder (opened off the clock, then run in turns on the worker's decode
//! pool) fills the track's buffer, and the feed (on songbird's clock) turns it into Opus frames.
//! Commands come from the gateway; events go back to it.

mod buffer;
mod decoder;
mod feed;
mod ping;
pub mod pool;

use caldera_protocol::evidence::Culprit;
use caldera_protocol::{
    EndReason, ExceptionSeverity, PlayerCommand, PlayerEvent, PlayerState, ToGateway, TrackData, TrackException,
    VoiceServer,
};
use buffer::{TrackBuffer, SAMPLE_RATE};
use decoder::{Decoding, TrackDecoder};
use feed::{Controls, Counters, Feed, FeedParts};
use songbird::events::{CoreEvent, Event, EventContext, EventHandler};
use songbird::id::{ChannelId, GuildId, UserId};
use songbird::tracks::TrackHandle;
use songbird::{Config, ConnectionInfo, Driver};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

/// How often frame counters are reported (lavalink-internals §4.4 counts per minute).
const FRAMES_REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// Events from a player's own machinery (feed, decoder, voice driver) to its task.
#[derive(Debug)]
pub enum Internal {
    Ended { track_seq: u64, reason: EndReason, error: Option<TrackException> },
    Stuck { track_seq: u64 },
    VoiceConnected,
    /// The voice connection ended or could not be made; `closed` is the WebSocketClosedEvent to
    /// send (none when we left ourselves).
    VoiceDisconnected { closed: Option<VoiceClosed> },
    Ping(i64),
    /// The decoder finished a seek of `track_seq` (its position is in the buffer).
    Seeked { track_seq: u64 },
}

/// A closed voice connection as Lavalink reports it: Discord's close code and reason, or 1006
/// with a readable reason when the connection dropped or never opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoiceClosed {
    pub code: u16,
    pub reason: String,
    pub by_remote: bool,
}

/// What every player of a worker shares: outbound HTTP, the decode pool, and songbird's thread
/// that drops finished tracks (songbird starts one per driver unless given one).
#[derive(Clone)]
pub struct Services {
    pub net: crate::net::Net,
    pub pool: pool::DecodePool,
    pub disposer: songbird::driver::DisposalThread,
}

/// The handle the IPC loop keeps for each player.
pub struct PlayerHandle {
    pub commands: mpsc::UnboundedSender<PlayerCommand>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for PlayerHandle {
    fn drop(&mut self) {
        // A dropped JoinHandle does not cancel its task (ARCHITECTURE: Rust clones' pitfall).
        self.task.abort();
    }
}

/// Starts a player task. `out` carries its events to the gateway.
pub fn spawn(
    player: u64,
    guild_id: u64,
    user_id: u64,
    settings: crate::Settings,
    services: Services,
    out: mpsc::Sender<ToGateway>,
) -> PlayerHandle {
    let (commands, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(
        async move {
            let mut p = Player::new(player, guild_id, user_id, settings, services, out);
            p.run(rx).await;
        }
        .instrument(tracing::info_span!("player", player, guild_id)),
    );
    PlayerHandle { commands, task }
}

struct Current {
    seq: u64,
    info: caldera_protocol::TrackInfo,
    handle: TrackHandle,
    buffer: Arc<TrackBuffer>,
    /// The decoder's place in the pool: a seek asks it to run.
    ticket: pool::Ticket,
}

struct Player {
    id: u64,
    guild_id: u64,
    user_id: u64,
    settings: crate::Settings,
    services: Services,
    out: mpsc::Sender<ToGateway>,
    driver: Driver,
    voice: Option<VoiceServer>,
    connected: Arc<AtomicBool>,
    /// Last measured round trip to the voice server (ms), -1 when unknown.
    ping_ms: i64,
    current: Option<Current>,
    paused: bool,
    controls: Arc<Controls>,
    counters: Arc<Counters>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    /// Voice connection attempts and ping measurements; aborted with the player.
    background: tokio::task::JoinSet<()>,
}

impl Player {
    fn new(id: u64, guild_id: u64, user_id: u64, settings: crate::Settings, services: Services, out: mpsc::Sender<ToGateway>) -> Self {
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        // One retry, then the client hears of the failure (Lavalink's koe does not retry at all;
        // songbird's default keeps trying for a minute).
        let retry = songbird::driver::retry::Retry {
            strategy: songbird::driver::retry::Strategy::Every(Duration::from_secs(1).into()),
            retry_limit: std::num::NonZeroU8::new(1),
        };
        let config = Config::default().driver_timeout(Some(Duration::from_secs(5))).driver_retry(retry).disposer(services.disposer.clone());
        let mut driver = Driver::new(config);
        let forward = VoiceEvents { tx: internal_tx.clone() };
        for ev in [CoreEvent::DriverConnect, CoreEvent::DriverReconnect, CoreEvent::DriverDisconnect] {
            driver.add_global_event(Event::Core(ev), forward.clone());
        }
        Self {
            id,
            guild_id,
            user_id,
            settings,
            services,
            out,
            driver,
            voice: None,
            connected: Arc::new(AtomicBool::new(false)),
            ping_ms: -1,
            current: None,
            paused: false,
            controls: Arc::new(Controls::new(100)),
            counters: Arc::new(Counters::default()),
            internal_tx,
            internal_rx,
            background: tokio::task::JoinSet::new(),
        }
    }

    async fn run(&mut self, mut commands: mpsc::UnboundedReceiver<PlayerCommand>) {
        let mut updates = tokio::time::interval(Duration::from_millis(self.settings.player_update_interval_ms.max(100)));
        updates.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut frames = tokio::time::interval(FRAMES_REPORT_INTERVAL);
        frames.tick().await;
        loop {
            while self.background.try_join_next().is_some() {}
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(PlayerCommand::Destroy) | None => break,
                    Some(cmd) => self.command(cmd).await,
                },
                Some(ev) = self.internal_rx.recv() => self.internal(ev).await,
                _ = updates.tick() => {
                    self.measure_ping();
                    if self.current.is_some() {
                        self.send_state().await;
                    }
                }
                _ = frames.tick() => {
                    let sent = self.counters.sent.swap(0, Ordering::Relaxed);
                    let nulled = self.counters.nulled.swap(0, Ordering::Relaxed);
                    self.emit(PlayerEvent::Frames { sent, nulled }).await;
                }
            }
        }
        self.stop_current(None).await;
        self.driver.leave();
        debug!("player destroyed");
    }

    /// Measures the round trip to the voice server in the background (see `ping`).
    fn measure_ping(&mut self) {
        let (Some(v), true) = (&self.voice, self.connected.load(Ordering::Relaxed)) else { return };
        let endpoint = v.endpoint.clone();
        let tx = self.internal_tx.clone();
        self.background.spawn(async move {
            let _ = tx.send(Internal::Ping(ping::measure(&endpoint).await));
        });
    }

    async fn emit(&self, event: PlayerEvent) {
        let _ = self.out.send(ToGateway::Player { player: self.id, event }).await;
    }

    fn position_ms(&self) -> u64 {
        self.current.as_ref().map(|c| c.buffer.position_ms()).unwrap_or(0)
    }

    async fn send_state(&self) {
        let connected = self.connected.load(Ordering::Relaxed);
        let state = PlayerState {
            time_ms: now_ms(),
            position_ms: self.position_ms(),
            connected,
            ping_ms: if connected { self.ping_ms } else { -1 },
        };
        self.emit(PlayerEvent::State(state)).await;
    }

    async fn command(&mut self, cmd: PlayerCommand) {
        match cmd {
            PlayerCommand::Create { .. } => {}
            PlayerCommand::Voice(v) => self.connect(v).await,
            PlayerCommand::Play { track_seq, track, start_ms, end_ms, paused } => {
                self.play(track_seq, track, start_ms, end_ms, paused).await
            }
            PlayerCommand::Stop => self.stop_current(Some(EndReason::Stopped)).await,
            PlayerCommand::Pause(p) => {
                self.paused = p;
                if let Some(c) = &self.current {
                    let _ = if p { c.handle.pause() } else { c.handle.play() };
                }
                self.send_state().await;
            }
            PlayerCommand::Seek { position_ms } => self.seek(position_ms).await,
            PlayerCommand::Volume(v) => self.controls.volume.store(v.min(1000) as u32, Ordering::Relaxed),
            PlayerCommand::EndTime(end) => self.controls.set_end_ms(end),
            PlayerCommand::Filters(f) => self.controls.set_filters(f),
            PlayerCommand::Destroy => {}
        }
    }

    async fn connect(&mut self, v: VoiceServer) {
        // Reuse the connection when nothing that identifies it changed (lavalink-internals §5.10).
        let same = self.voice.as_ref().is_some_and(|old| {
            old.endpoint == v.endpoint && old.token == v.token && old.session_id == v.session_id && old.channel_id == v.channel_id
        });
        if same && self.connected.load(Ordering::Relaxed) {
            return;
        }
        let (Some(channel), Some(guild), Some(user)) =
            (NonZeroU64::new(v.channel_id), NonZeroU64::new(self.guild_id), NonZeroU64::new(self.user_id))
        else {
            warn!("voice update with a zero id ignored");
            return;
        };
        let info = ConnectionInfo {
            channel_id: ChannelId(channel),
            endpoint: v.endpoint.clone(),
            guild_id: GuildId(guild),
            session_id: v.session_id.clone(),
            token: v.token.clone(),
            user_id: UserId(user),
        };
        self.voice = Some(v);
        self.connected.store(false, Ordering::Relaxed);
        let connecting = self.driver.connect(info);
        let tx = self.internal_tx.clone();
        // A failed connection is reported by the driver's disconnect event (after its retries).
        let _ = tx;
        self.background.spawn(async move {
            if let Err(e) = connecting.await {
                debug!(error = %e, "voice connection failed");
            }
        });
    }

    async fn play(&mut self, seq: u64, track: TrackData, start_ms: u64, end_ms: Option<u64>, paused: bool) {
        self.stop_current(Some(EndReason::Replaced)).await;
        self.controls.set_end_ms(end_ms);
        self.paused = paused;
        self.emit(PlayerEvent::TrackStart { track_seq: seq }).await;
        let audio = self.settings.audio;
        let buffer = Arc::new(TrackBuffer::new(audio.buffer_ms as usize * SAMPLE_RATE as usize / 1000, start_ms));
        let culprit = Culprit::Track { player: self.id, track_seq: seq };
        let decoder = Arc::new(TrackDecoder::new(buffer.clone(), (self.internal_tx.clone(), seq), culprit));
        let ticket = pool::Ticket::new(&self.services.pool, decoder.clone());
        // Opening (network, probing) happens off the pool; then the pool decodes in turns.
        let (settings, net, opening, ready) = (self.settings.clone(), self.services.net.clone(), buffer.clone(), ticket.clone());
        let info = track.info.clone();
        self.background.spawn_blocking(move || match crate::crash::working_on(culprit, || Decoding::open(&track, &settings, &net)) {
            Ok(decoding) => {
                let frames_ms = if decoding.passes_opus() { audio.frame_buffer_ms } else { audio.buffer_ms };
                decoder.opened(decoding, frames_ms as usize * SAMPLE_RATE as usize / 1000);
                if start_ms > 0 {
                    opening.request_seek(start_ms);
                }
                ready.request();
            }
            Err(f) => opening.end(Some(TrackException { message: f.message, severity: f.severity, cause: f.cause })),
        });
        let feed = Feed::new(FeedParts {
            buffer: buffer.clone(),
            ticket: ticket.clone(),
            controls: self.controls.clone(),
            counters: self.counters.clone(),
            events: self.internal_tx.clone(),
            track_seq: seq,
            culprit,
            stuck_threshold_ms: self.settings.track_stuck_threshold_ms,
            opus_quality: audio.opus_quality,
        });
        let input = match feed::songbird_input(feed) {
            Ok(input) => input,
            Err(e) => {
                buffer.stop();
                let error = TrackException {
                    message: "Something broke when playing the track.".into(),
                    severity: ExceptionSeverity::Fault,
                    cause: format!("cannot create the track's input: {e}"),
                };
                self.emit(PlayerEvent::TrackException { track_seq: seq, exception: error }).await;
                self.emit(PlayerEvent::TrackEnd { track_seq: seq, reason: EndReason::LoadFailed }).await;
                return;
            }
        };
        let handle = self.driver.play_only_input(input);
        if paused {
            let _ = handle.pause();
        }
        self.current = Some(Current { seq, info, handle, buffer, ticket });
        self.send_state().await;
    }

    /// Seeks the current track as Lavaplayer does: a track that cannot seek (a stream) ignores
    /// it; a seek past the end ends the track (`finished`). The position is reported once the
    /// decoder has landed (where it landed, or where it still is if the seek failed).
    async fn seek(&mut self, position_ms: u64) {
        let Some(c) = &self.current else { return };
        if c.info.is_stream {
            debug!("seek on a stream ignored");
            return;
        }
        if position_ms >= c.info.length {
            let seq = c.seq;
            self.stop_current(None).await;
            self.emit(PlayerEvent::TrackEnd { track_seq: seq, reason: EndReason::Finished }).await;
            return;
        }
        c.buffer.request_seek(position_ms);
        c.ticket.request();
    }

    /// Stops the current track; `reason` is reported unless `None`.
    async fn stop_current(&mut self, reason: Option<EndReason>) {
        if let Some(c) = self.current.take() {
            let _ = c.handle.stop();
            c.buffer.stop();
            if let Some(reason) = reason {
                self.emit(PlayerEvent::TrackEnd { track_seq: c.seq, reason }).await;
            }
        }
    }

    async fn internal(&mut self, ev: Internal) {
        match ev {
            Internal::Ended { track_seq, reason, error } => {
                // Only the current track's end counts; a replaced track already reported its own.
                if self.current.as_ref().is_some_and(|c| c.seq == track_seq) {
                    self.current = None;
                    if let Some(exception) = error {
                        self.emit(PlayerEvent::TrackException { track_seq, exception }).await;
                    }
                    self.emit(PlayerEvent::TrackEnd { track_seq, reason }).await;
                }
            }
            Internal::Stuck { track_seq } => {
                if self.current.as_ref().is_some_and(|c| c.seq == track_seq) {
                    let threshold_ms = self.settings.track_stuck_threshold_ms;
                    self.emit(PlayerEvent::TrackStuck { track_seq, threshold_ms }).await;
                }
            }
            Internal::VoiceConnected => {
                self.connected.store(true, Ordering::Relaxed);
                info!("voice connected");
                self.measure_ping();
                self.send_state().await;
            }
            Internal::Ping(ms) => {
                let first = self.ping_ms < 0 && ms >= 0;
                self.ping_ms = ms;
                // The first measurement after connecting is reported at once.
                if first {
                    self.send_state().await;
                }
            }
            Internal::VoiceDisconnected { closed } => {
                self.connected.store(false, Ordering::Relaxed);
                self.ping_ms = -1;
                info!(?closed, "voice disconnected");
                if let Some(VoiceClosed { code, reason, by_remote }) = closed {
                    self.emit(PlayerEvent::VoiceClosed { code, reason, by_remote }).await;
                }
                self.send_state().await;
            }
            Internal::Seeked { track_seq } => {
                if self.current.as_ref().is_some_and(|c| c.seq == track_seq) {
                    self.send_state().await;
                }
            }
        }
    }
}

/// Forwards songbird's driver events into the player task.
#[derive(Clone)]
struct VoiceEvents {
    tx: mpsc::UnboundedSender<Internal>,
}

#[async_trait::async_trait]
impl EventHandler for VoiceEvents {
    async fn act(&self, ctx: &EventContext<'_>) -> Option<Event> {
        let msg = match ctx {
            EventContext::DriverConnect(_) | EventContext::DriverReconnect(_) => Internal::VoiceConnected,
            EventContext::DriverDisconnect(d) => Internal::VoiceDisconnected { closed: d.reason.and_then(voice_closed) },
            _ => return None,
        };
        let _ = self.tx.send(msg);
        None
    }
}

/// What a driver disconnect tells the client. Leaving (ours) and an attempt replaced by a newer
/// one tell nothing.
fn voice_closed(reason: songbird::events::context_data::DisconnectReason) -> Option<VoiceClosed> {
    use songbird::events::context_data::DisconnectReason as Why;
    let dropped = |reason: &str| Some(VoiceClosed { code: 1006, reason: reason.into(), by_remote: false });
    match reason {
        Why::Requested | Why::AttemptDiscarded => None,
        Why::WsClosed(Some(code)) => {
            let code = code as u16;
            Some(VoiceClosed { code, reason: discord_close_reason(code).into(), by_remote: true })
        }
        Why::WsClosed(None) => dropped("The voice WebSocket closed abnormally"),
        Why::TimedOut => dropped("The voice connection timed out"),
        Why::Io => dropped("The voice server could not be reached"),
        Why::ProtocolViolation => dropped("The voice server broke the voice protocol"),
        _ => dropped("The voice connection failed"),
    }
}

/// Discord's descriptions of its voice close codes.
fn discord_close_reason(code: u16) -> &'static str {
    match code {
        4001 => "Unknown opcode",
        4002 => "Failed to decode payload",
        4003 => "Not authenticated",
        4004 => "Authentication failed",
        4005 => "Already authenticated",
        4006 => "Session no longer valid",
        4009 => "Session timeout",
        4011 => "Server not found",
        4012 => "Unknown protocol",
        4014 => "Disconnected",
        4015 => "Voice server crashed",
        4016 => "Unknown encryption mode",
        4017 => "E2EE/DAVE protocol required",
        4020 => "Bad request",
        4021 => "Disconnected: Rate Limited",
        4022 => "Disconnected: Call Terminated",
        _ => "Closed by Discord",
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
