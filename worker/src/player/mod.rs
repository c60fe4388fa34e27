//! Players: one task per player, owning a songbird driver (its voice connection) and the
//! current track (decoder thread → ring → pipe → songbird). Commands come from the gateway;
//! events go back to it.

mod decoder;
mod pipe;
mod ping;
mod ring;

use caldera_protocol::{
    EndReason, ExceptionSeverity, PlayerCommand, PlayerEvent, PlayerState, ToGateway, TrackData, TrackException,
    VoiceServer,
};
use crate::routes::Routes;
use pipe::{Controls, Counters, Pipe};
use ring::{Ring, SAMPLE_RATE};
use songbird::events::{CoreEvent, Event, EventContext, EventHandler};
use songbird::id::{ChannelId, GuildId, UserId};
use songbird::input::RawAdapter;
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

/// Events from a player's own machinery (pipe, decoder, voice driver) to its task.
#[derive(Debug)]
pub enum Internal {
    Ended { track_seq: u64, reason: EndReason, error: Option<TrackException> },
    Stuck { track_seq: u64 },
    VoiceConnected,
    VoiceDisconnected { code: Option<u16>, reason: String },
    Ping(i64),
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
    routes: Arc<Routes>,
    out: mpsc::Sender<ToGateway>,
) -> PlayerHandle {
    let (commands, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(
        async move {
            let mut p = Player::new(player, guild_id, user_id, settings, routes, out);
            p.run(rx).await;
        }
        .instrument(tracing::info_span!("player", player, guild_id)),
    );
    PlayerHandle { commands, task }
}

struct Current {
    seq: u64,
    handle: TrackHandle,
    ring: Arc<Ring>,
    _decoder: std::thread::JoinHandle<()>,
}

struct Player {
    id: u64,
    guild_id: u64,
    user_id: u64,
    settings: crate::Settings,
    routes: Arc<Routes>,
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
    fn new(id: u64, guild_id: u64, user_id: u64, settings: crate::Settings, routes: Arc<Routes>, out: mpsc::Sender<ToGateway>) -> Self {
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let mut driver = Driver::new(Config::default());
        let forward = VoiceEvents { tx: internal_tx.clone() };
        for ev in [CoreEvent::DriverConnect, CoreEvent::DriverReconnect, CoreEvent::DriverDisconnect] {
            driver.add_global_event(Event::Core(ev), forward.clone());
        }
        Self {
            id,
            guild_id,
            user_id,
            settings,
            routes,
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
        self.current.as_ref().map(|c| c.ring.lock().position_frames * 1000 / SAMPLE_RATE as u64).unwrap_or(0)
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
            PlayerCommand::Seek { position_ms } => {
                if let Some(c) = &self.current {
                    c.ring.request_seek(position_ms);
                    // Report the new position right away, as Lavalink does after a seek.
                    c.ring.lock().position_frames = position_ms * SAMPLE_RATE as u64 / 1000;
                    self.send_state().await;
                }
            }
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
        self.background.spawn(async move {
            if let Err(e) = connecting.await {
                let _ = tx.send(Internal::VoiceDisconnected { code: None, reason: format!("voice connection failed: {e}") });
            }
        });
    }

    async fn play(&mut self, seq: u64, track: TrackData, start_ms: u64, end_ms: Option<u64>, paused: bool) {
        self.stop_current(Some(EndReason::Replaced)).await;
        self.controls.set_end_ms(end_ms);
        self.paused = paused;
        self.emit(PlayerEvent::TrackStart { track_seq: seq }).await;
        let ring = Arc::new(Ring::default());
        ring.lock().position_frames = start_ms * SAMPLE_RATE as u64 / 1000;
        let decoder = match decoder::spawn(track, start_ms, self.settings.clone(), self.routes.clone(), ring.clone()) {
            Ok(d) => d,
            Err(e) => {
                let error = TrackException {
                    message: "Something broke when playing the track.".into(),
                    severity: ExceptionSeverity::Fault,
                    cause: format!("cannot start a decoder thread: {e}"),
                };
                self.emit(PlayerEvent::TrackException { track_seq: seq, exception: error }).await;
                self.emit(PlayerEvent::TrackEnd { track_seq: seq, reason: EndReason::LoadFailed }).await;
                return;
            }
        };
        let pipe = Pipe::new(
            ring.clone(),
            self.controls.clone(),
            self.counters.clone(),
            self.internal_tx.clone(),
            seq,
            self.settings.track_stuck_threshold_ms,
        );
        let handle = self.driver.play_only_input(RawAdapter::new(pipe, SAMPLE_RATE, 2).into());
        if paused {
            let _ = handle.pause();
        }
        self.current = Some(Current { seq, handle, ring, _decoder: decoder });
        self.send_state().await;
    }

    /// Stops the current track; `reason` is reported unless `None`.
    async fn stop_current(&mut self, reason: Option<EndReason>) {
        if let Some(c) = self.current.take() {
            let _ = c.handle.stop();
            c.ring.stop();
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
            Internal::VoiceDisconnected { code, reason } => {
                self.connected.store(false, Ordering::Relaxed);
                self.ping_ms = -1;
                info!(?code, %reason, "voice disconnected");
                if let Some(code) = code {
                    self.emit(PlayerEvent::VoiceClosed { code, reason, by_remote: true }).await;
                }
                self.send_state().await;
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
            EventContext::DriverDisconnect(d) => {
                use songbird::events::context_data::DisconnectReason;
                let code = match d.reason {
                    Some(DisconnectReason::WsClosed(Some(code))) => Some(code as u16),
                    _ => None,
                };
                Internal::VoiceDisconnected { code, reason: format!("{:?}", d.reason) }
            }
            _ => return None,
        };
        let _ = self.tx.send(msg);
        None
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
