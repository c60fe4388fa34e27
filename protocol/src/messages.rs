//! IPC messages. Both enums are append-only: never rename, reorder or remove a variant (postcard
//! encodes the variant index); a retired variant stays as `Reserved*`. Incompatible changes bump
//! [`crate::build::PROTOCOL_VERSION`].

use crate::track::TrackData;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// First frame from a worker. `token` is the one-time secret the gateway handed this spawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerHello {
    pub protocol_version: u32,
    pub build_id: String,
    pub worker_id: u32,
    pub pid: u32,
    pub token: String,
}

/// The gateway's answer once it accepted a worker's hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayHello {
    pub protocol_version: u32,
    pub build_id: String,
    pub worker_id: u32,
    pub pid: u32,
}

/// Process figures a worker reports about itself, read from `/proc/self`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceReport {
    pub rss_bytes: u64,
    /// CPU time (user + system) used since the worker started, in milliseconds.
    pub cpu_time_ms: u64,
    pub threads: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Severity {
    Warn,
    Error,
}

/// How serious a load or playback failure is (Lavalink's `severity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExceptionSeverity {
    /// The cause is known and expected (e.g. a 404, a file that does not exist).
    Common,
    /// The cause might not be exactly known, but is possibly caused by outside factors.
    Suspicious,
    /// The probable cause is an issue with the node (e.g. a worker crashed).
    Fault,
}

/// Lavalink's exception object: `{message, severity, cause}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackException {
    pub message: String,
    pub severity: ExceptionSeverity,
    pub cause: String,
}

/// What a worker should load. The gateway has already picked the source from the identifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadRequest {
    /// An http(s) URL: a media file, a stream or an M3U/PLS playlist.
    Http { url: String },
    /// An absolute path on this host, allowed only under [`WorkerSettings::local_dirs`].
    Local { path: String },
}

/// Lavalink's load result (`loadType` + `data`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadResult {
    Track(TrackData),
    Playlist { name: String, selected_track: i32, tracks: Vec<TrackData> },
    Search(Vec<TrackData>),
    Empty,
    Error(TrackException),
}

/// Settings the gateway sends every worker after the hello (always the first message after it),
/// made from the gateway's configuration. Directories the local source may read come through the
/// worker's environment instead: its sandbox needs them before it connects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSettings {
    /// Most bytes read from one source while probing it.
    pub max_probe_bytes: u64,
    /// Time allowed for one load request, in milliseconds.
    pub load_timeout_ms: u64,
    /// Most entries of an M3U/PLS playlist that are loaded.
    pub max_playlist_entries: u32,
    /// Milliseconds between player state reports while a track plays (playerUpdateInterval).
    pub player_update_interval_ms: u64,
    /// No audio for this long → TrackStuckEvent (trackStuckThresholdMs).
    pub track_stuck_threshold_ms: u64,
    /// Set when the gateway runs a route planner: every outbound source request then asks it for
    /// the local address to leave from ([`ToGateway::RouteAcquire`]).
    pub route_planner: Option<RoutePlanning>,
    /// How outbound source requests are made.
    pub http: HttpSettings,
    /// How audio is produced.
    pub audio: AudioSettings,
    /// Sources whose tracks this worker may load and play (`http`, `local`, the platforms);
    /// a track of another names a switched-off source, whatever the gateway let through.
    pub sources: Vec<String>,
}

/// Lavalink's audio keys, as the worker applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioSettings {
    /// Decoded audio kept ahead of the audio clock, in milliseconds (`bufferDurationMs`).
    pub buffer_ms: u32,
    /// Opus frames of an Opus source kept ahead of the clock, in milliseconds
    /// (`frameBufferDurationMs`).
    pub frame_buffer_ms: u32,
    /// libopus complexity, 0–10 (`opusEncodingQuality`).
    pub opus_quality: u8,
    pub resampling: ResamplingQuality,
}

/// `resamplingQuality`: how sources not at 48 kHz are converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResamplingQuality {
    Low,
    Medium,
    High,
}

/// Timeouts and proxy of outbound source requests (Lavalink's `timeouts` and `httpConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpSettings {
    /// Time allowed to connect (`connectTimeoutMs`).
    pub connect_timeout_ms: u64,
    /// Time allowed for the response head once the request is sent (`connectionRequestTimeoutMs`).
    pub response_timeout_ms: u64,
    /// Longest wait for more bytes of a response (`socketTimeoutMs`).
    pub read_timeout_ms: u64,
    /// The http source's requests go through this proxy.
    pub proxy: Option<Proxy>,
    /// Networks no source request may connect to, as `(address, prefix length)`: checked on
    /// the addresses a name resolves to, on every redirect (`caldera.outbound.denyNetworks`).
    pub deny: Vec<(IpAddr, u8)>,
}

/// Whether `ip` is in one of `networks` (`(address, prefix length)`); IPv4-mapped IPv6
/// addresses count as their IPv4 address.
pub fn in_networks(ip: IpAddr, networks: &[(IpAddr, u8)]) -> bool {
    let ip = ip.to_canonical();
    networks.iter().any(|(net, len)| match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from((*len).min(32))).unwrap_or(0);
            u32::from(a) & mask == u32::from(*n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from((*len).min(128))).unwrap_or(0);
            u128::from(a) & mask == u128::from(*n) & mask
        }
        _ => false,
    })
}

/// An HTTP proxy, with basic credentials when `user` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proxy {
    /// `http://host:port`.
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// How a worker uses the gateway's route planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutePlanning {
    /// Requests retried on another address after a 429 (or an address that cannot be bound);
    /// `None` = no limit (Lavalink's `retryLimit: 0`).
    pub retry_limit: Option<u32>,
}

/// A Discord voice server to connect a player to (from the bot's VOICE_SERVER_UPDATE and
/// VOICE_STATE_UPDATE, relayed by the Lavalink client).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoiceServer {
    pub token: String,
    pub endpoint: String,
    pub session_id: String,
    pub channel_id: u64,
}

/// Something a player should do. `track_seq` numbers the tracks a player is given, so events can
/// be matched to the track they are about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PlayerCommand {
    /// Creates the player (a voice driver for the guild). Must come first.
    Create { guild_id: u64, user_id: u64 },
    Voice(VoiceServer),
    /// Starts a track, replacing the current one.
    Play { track_seq: u64, track: TrackData, start_ms: u64, end_ms: Option<u64>, paused: bool },
    /// Stops the current track (TrackEnd `stopped`).
    Stop,
    Pause(bool),
    Seek { position_ms: u64 },
    /// 0–1000, 100 = unchanged.
    Volume(u16),
    /// Stops everything and leaves the voice channel. The player is gone afterwards.
    Destroy,
    /// Sets or clears the end marker of the current track.
    EndTime(Option<u64>),
    /// Replaces the whole filter chain (lavalink-internals §5.2).
    Filters(Filters),
}

/// Lavalink's filters, validated by the gateway (lavalink-internals §1.7). `None`/empty = off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Filters {
    pub volume: Option<f32>,
    /// (band 0–14, gain −0.25…1.0)
    pub equalizer: Vec<(u8, f32)>,
    pub karaoke: Option<Karaoke>,
    pub timescale: Option<Timescale>,
    pub tremolo: Option<Lfo>,
    pub vibrato: Option<Lfo>,
    pub distortion: Option<Distortion>,
    /// Rotation speed in Hz.
    pub rotation: Option<f64>,
    /// leftToLeft, leftToRight, rightToLeft, rightToRight.
    pub channel_mix: Option<[f32; 4]>,
    /// Smoothing factor (> 1 filters).
    pub low_pass: Option<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Karaoke {
    pub level: f32,
    pub mono_level: f32,
    pub filter_band: f32,
    pub filter_width: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Timescale {
    pub speed: f64,
    pub pitch: f64,
    pub rate: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Lfo {
    pub frequency: f32,
    pub depth: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Distortion {
    pub sin_offset: f32,
    pub sin_scale: f32,
    pub cos_offset: f32,
    pub cos_scale: f32,
    pub tan_offset: f32,
    pub tan_scale: f32,
    pub offset: f32,
    pub scale: f32,
}

/// Why a track ended (Lavalink's TrackEndEvent reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndReason {
    Finished,
    LoadFailed,
    Stopped,
    Replaced,
    Cleanup,
}

/// A player's state, reported at the player update interval and after changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerState {
    /// Unix time in milliseconds when the state was taken.
    pub time_ms: i64,
    /// Position in the current track, in milliseconds.
    pub position_ms: u64,
    pub connected: bool,
    /// Round trip to the voice server in milliseconds, -1 when not connected.
    pub ping_ms: i64,
}

/// Something that happened to a player.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PlayerEvent {
    TrackStart { track_seq: u64 },
    TrackEnd { track_seq: u64, reason: EndReason },
    TrackException { track_seq: u64, exception: TrackException },
    TrackStuck { track_seq: u64, threshold_ms: u64 },
    State(PlayerState),
    /// The voice websocket was closed (by Discord when `by_remote`).
    VoiceClosed { code: u16, reason: String, by_remote: bool },
    /// Audio frames over the last report period: sent with audio, and nulled (nothing to send).
    Frames { sent: u32, nulled: u32 },
}

/// A track of a platform source (YouTube, SoundCloud, ...) to resolve to a stream at play time:
/// media URLs expire and are bound to the address that resolved them, so a worker asks again
/// from the address it will stream from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveRequest {
    pub source_name: String,
    pub identifier: String,
    pub uri: Option<String>,
    /// The route planner lease ([`ToWorker::RouteLease`]) whose address the stream will leave from.
    pub lease: Option<u64>,
}

/// Where a resolved track's media is, and how to fetch it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedStream {
    pub url: String,
    /// Headers every request for the media must carry (the extractor's).
    pub headers: Vec<(String, String)>,
    /// An HLS playlist rather than one media file.
    pub hls: bool,
    /// Unix time in milliseconds before which the media answers 403 (a pre-roll wait).
    pub available_at_ms: Option<i64>,
    pub is_live: bool,
}

/// Gateway → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    Hello(GatewayHello),
    /// Health check; answered with [`ToGateway::Pong`] carrying the same `seq`.
    Ping { seq: u64 },
    /// Stop cleanly and exit.
    Shutdown { reason: String },
    /// Sent once after the hello, and again whenever settings change.
    Configure(WorkerSettings),
    /// Probe an identifier; answered with [`ToGateway::Loaded`] carrying the same `id`.
    Load { id: u64, request: LoadRequest },
    /// A command for the player the gateway numbered `player`.
    Player { player: u64, command: PlayerCommand },
    /// The answer to [`ToGateway::RouteAcquire`]: the local address to bind, or why there is none.
    RouteLease { id: u64, address: Result<IpAddr, String> },
    /// The answer to [`ToGateway::Resolve`] carrying the same `id`.
    Resolved { id: u64, result: Result<ResolvedStream, TrackException> },
    /// Another gateway takes over at the same socket (a planned upgrade): outlive this gateway,
    /// send [`ToGateway::HandedOver`] as the last frame of this connection, then connect again
    /// and say hello with `token`. Players keep playing meanwhile.
    Handover { token: String },
}

/// Worker → gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToGateway {
    Hello(WorkerHello),
    Pong { seq: u64 },
    Resources(ResourceReport),
    /// Something the operator should see in the gateway's log.
    Log { severity: Severity, message: String },
    Loaded { id: u64, result: LoadResult },
    Player { player: u64, event: PlayerEvent },
    /// Asks the route planner for a local address for one outbound request; answered with
    /// [`ToWorker::RouteLease`] carrying the same `id`.
    RouteAcquire { id: u64 },
    /// The request made with lease `id` was rate limited (429) or its address could not be
    /// bound. `search` says whether the request was a search (`searchTriggersFail`). Naming the
    /// lease, not an address, a worker can only report addresses the gateway handed it.
    RouteFailed { id: u64, search: bool },
    /// Asks the gateway's resolver for a platform track's stream; answered with
    /// [`ToWorker::Resolved`] carrying the same `id`.
    Resolve { id: u64, request: ResolveRequest },
    /// The last frame on a connection the gateway asked to hand over ([`ToWorker::Handover`]):
    /// everything the worker reported before it is in, the rest goes to the next gateway.
    HandedOver,
}
