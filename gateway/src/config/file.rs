//! The file model: Lavalink's `application.yml` keys plus Caldera's own `caldera:` section, as
//! serde reads them. Every default lives here, in one place (STYLE §12); nothing here is checked
//! beyond what serde checks — [`super::Settings`] parses and validates it once.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Config {
    pub server: ServerConfig,
    pub lavalink: LavalinkConfig,
    pub metrics: MetricsConfig,
    pub logging: LoggingConfig,
    pub caldera: CalderaConfig,
    /// Lavalink's plugin settings and error reporting: accepted, not acted on.
    pub plugins: Option<serde_yaml_ng::Value>,
    pub sentry: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServerConfig {
    /// 0 picks a free port; the log line "listening on ADDR" tells which.
    pub port: u16,
    pub address: IpAddr,
    /// Spring's HTTP/2 switch: accepted, not acted on.
    pub http2: Option<serde_yaml_ng::Value>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { port: 2333, address: IpAddr::from([0, 0, 0, 0]), http2: None }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LavalinkConfig {
    pub server: LavalinkServerConfig,
    // Lavalink's plugin loader: accepted, not acted on.
    pub plugins: Option<serde_yaml_ng::Value>,
    pub plugins_dir: Option<serde_yaml_ng::Value>,
    pub default_plugin_repository: Option<serde_yaml_ng::Value>,
    pub default_plugin_snapshot_repository: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LavalinkServerConfig {
    pub password: String,
    pub sources: SourcesConfig,
    pub filters: FiltersConfig,
    /// Seconds between playerUpdate ops.
    pub player_update_interval: u32,
    pub track_stuck_threshold_ms: u64,
    /// Lavalink's audio keys (see [`super::Settings`]).
    pub buffer_duration_ms: Option<i64>,
    pub frame_buffer_duration_ms: Option<i64>,
    pub opus_encoding_quality: Option<u8>,
    pub resampling_quality: Option<String>,
    // Lavaplayer tuning keys, accepted so existing files load (see `NOT_ACTED_ON`).
    pub use_seek_ghosting: Option<bool>,
    pub youtube_playlist_load_limit: Option<u32>,
    pub youtube_search_enabled: Option<bool>,
    pub soundcloud_search_enabled: Option<bool>,
    pub soundcloud_filter_out_preview_tracks: Option<bool>,
    pub gc_warnings: Option<bool>,
    pub non_allocating_frame_buffer: Option<bool>,
    pub youtube_config: Option<serde_yaml_ng::Value>,
    /// The route planner; no blocks = none.
    pub ratelimit: RateLimitConfig,
    /// Timeouts of outbound source requests (Lavaplayer's HTTP client settings).
    pub timeouts: TimeoutsConfig,
    /// An HTTP proxy for the http source.
    pub http_config: HttpConfig,
}

/// `lavalink.server.timeouts`, in milliseconds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TimeoutsConfig {
    pub connect_timeout_ms: u64,
    pub connection_request_timeout_ms: u64,
    pub socket_timeout_ms: u64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        // Lavaplayer's defaults, which apply when the section is absent.
        Self { connect_timeout_ms: 3000, connection_request_timeout_ms: 3000, socket_timeout_ms: 3000 }
    }
}

/// `lavalink.server.httpConfig`: a blank host means no proxy.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpConfig {
    pub proxy_host: String,
    pub proxy_port: u16,
    pub proxy_user: String,
    pub proxy_password: String,
}

/// `lavalink.server.ratelimit` (lavalink-internals §2.2), parsed into [`super::RoutePlannerSettings`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RateLimitConfig {
    /// CIDR blocks outbound source requests leave from, all IPv4 or all IPv6.
    pub ip_blocks: Vec<String>,
    pub excluded_ips: Vec<String>,
    /// RotateOnBan | LoadBalance | NanoSwitch | RotatingNanoSwitch.
    pub strategy: String,
    /// Whether a 429 answering a search marks the address failing.
    pub search_triggers_fail: bool,
    /// Retries on another address after a 429: -1 = Lavalink's default, 0 = unlimited.
    pub retry_limit: i32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            ip_blocks: Vec::new(),
            excluded_ips: Vec::new(),
            strategy: "RotateOnBan".into(),
            search_triggers_fail: true,
            retry_limit: -1,
        }
    }
}

impl Default for LavalinkServerConfig {
    fn default() -> Self {
        Self {
            password: "youshallnotpass".into(),
            sources: SourcesConfig::default(),
            filters: FiltersConfig::default(),
            player_update_interval: 5,
            track_stuck_threshold_ms: 10_000,
            buffer_duration_ms: None,
            frame_buffer_duration_ms: None,
            opus_encoding_quality: None,
            resampling_quality: None,
            use_seek_ghosting: None,
            youtube_playlist_load_limit: None,
            youtube_search_enabled: None,
            soundcloud_search_enabled: None,
            soundcloud_filter_out_preview_tracks: None,
            gc_warnings: None,
            non_allocating_frame_buffer: None,
            youtube_config: None,
            ratelimit: RateLimitConfig::default(),
            timeouts: TimeoutsConfig::default(),
            http_config: HttpConfig::default(),
        }
    }
}

/// Lavalink's source switches, with Lavalink's defaults. `/v4/info` lists the enabled ones
/// Caldera can serve right now (platform sources need a ready resolver), so a bot never sees a
/// source it cannot use.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SourcesConfig {
    pub youtube: bool,
    pub bandcamp: bool,
    pub soundcloud: bool,
    pub twitch: bool,
    pub vimeo: bool,
    pub nico: bool,
    pub http: bool,
    pub local: bool,
}

impl Default for SourcesConfig {
    fn default() -> Self {
        Self {
            youtube: true,
            bandcamp: true,
            soundcloud: true,
            twitch: true,
            vimeo: true,
            nico: false,
            http: true,
            local: false,
        }
    }
}

impl SourcesConfig {
    pub fn enabled(&self) -> Vec<&'static str> {
        [
            ("youtube", self.youtube),
            ("bandcamp", self.bandcamp),
            ("soundcloud", self.soundcloud),
            ("twitch", self.twitch),
            ("vimeo", self.vimeo),
            ("nico", self.nico),
            ("http", self.http),
            ("local", self.local),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FiltersConfig {
    pub volume: bool,
    pub equalizer: bool,
    pub karaoke: bool,
    pub timescale: bool,
    pub tremolo: bool,
    pub vibrato: bool,
    pub distortion: bool,
    pub rotation: bool,
    pub channel_mix: bool,
    pub low_pass: bool,
}

impl Default for FiltersConfig {
    fn default() -> Self {
        Self {
            volume: true,
            equalizer: true,
            karaoke: true,
            timescale: true,
            tremolo: true,
            vibrato: true,
            distortion: true,
            rotation: true,
            channel_mix: true,
            low_pass: true,
        }
    }
}

impl FiltersConfig {
    /// Every filter Lavalink knows, by its wire name, with its switch: the one list of filter names.
    pub fn list(&self) -> [(&'static str, bool); 10] {
        [
            ("volume", self.volume),
            ("equalizer", self.equalizer),
            ("karaoke", self.karaoke),
            ("timescale", self.timescale),
            ("tremolo", self.tremolo),
            ("vibrato", self.vibrato),
            ("distortion", self.distortion),
            ("rotation", self.rotation),
            ("channelMix", self.channel_mix),
            ("lowPass", self.low_pass),
        ]
    }

    /// The enabled filters' names, in Lavalink's order.
    pub fn enabled(&self) -> Vec<&'static str> {
        self.list().into_iter().filter_map(|(name, on)| on.then_some(name)).collect()
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MetricsConfig {
    pub prometheus: PrometheusConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PrometheusConfig {
    pub enabled: bool,
    pub endpoint: String,
    /// Caldera extension: `false` serves metrics without the REST password.
    pub auth: bool,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self { enabled: false, endpoint: "/metrics".into(), auth: true }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LoggingConfig {
    pub level: LogLevels,
    /// Accepted for compatibility (Lavalink's log files); Caldera logs to stderr/journald.
    pub file: Option<serde_yaml_ng::Value>,
    pub logback: Option<serde_yaml_ng::Value>,
    pub request: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LogLevels {
    /// Default level when `RUST_LOG` is not set (`INFO`, `DEBUG`, ...).
    pub root: Option<String>,
    /// Level for Caldera's own modules.
    pub lavalink: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CalderaConfig {
    /// Worker processes; default: available cores.
    pub workers: usize,
    /// Most players one worker hosts.
    pub players_per_worker: usize,
    /// Path of `caldera-worker`; default: next to the gateway executable.
    pub worker_binary: Option<PathBuf>,
    /// Directories the `local` source may read (absolute paths). Empty: no local file loads.
    pub local_directories: Vec<PathBuf>,
    /// Time allowed for loading one identifier (probing it in a worker), in milliseconds.
    pub load_timeout_ms: u64,
    pub worker: WorkerProcessConfig,
    pub resolver: ResolverConfig,
    pub outbound: OutboundConfig,
}

/// `caldera.outbound`: where source requests (workers' and the resolver's) may not go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct OutboundConfig {
    /// CIDR blocks no source request connects to, checked after name resolution and on every
    /// redirect; default: link-local and cloud metadata addresses.
    pub deny_networks: Vec<String>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self { deny_networks: vec!["169.254.0.0/16".into(), "fe80::/10".into(), "fd00:ec2::254/128".into()] }
    }
}

/// `caldera.resolver`: the process embedding yt-dlp that finds platform sources' tracks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ResolverConfig {
    /// `false` turns platform sources off without uninstalling anything.
    pub enabled: bool,
    /// The Python interpreter of the virtual environment holding yt-dlp; default: the one the
    /// setup script makes (`resolver/venv` beside the working directory or the executable).
    pub python: Option<PathBuf>,
    /// Requests the resolver works on at once (more wait their turn).
    pub concurrency: usize,
    /// Resident memory past which the resolver is restarted, e.g. `1G`.
    #[serde(deserialize_with = "string_or_number")]
    pub memory_limit: Option<String>,
    /// Web pages the http source cannot play (HTML) are given to yt-dlp's generic extractor,
    /// which finds the audio they embed (`og:audio`, `<audio>`, ...).
    pub generic_pages: bool,
    /// Lookups and playlists are given this long, in milliseconds; default: `caldera.loadTimeoutMs`.
    pub timeout_ms: Option<u64>,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self { enabled: true, python: None, concurrency: 4, memory_limit: None, generic_pages: true, timeout_ms: None }
    }
}

/// `caldera.worker`: how worker processes are confined.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WorkerProcessConfig {
    /// `strict` (default), `relaxed` (no seccomp) or `off`.
    pub sandbox: String,
    /// Data-segment ceiling per worker, e.g. `512M`, `2G` or bytes; none by default.
    #[serde(deserialize_with = "string_or_number")]
    pub memory_limit: Option<String>,
    /// How long workers whose gateway died without handing over play on, waiting for the next
    /// gateway in the same runtime directory to adopt them; 0: they die with it. Default: 30000
    /// under systemd (a runtime directory of the service's own), else 0.
    pub orphan_wait_ms: Option<u64>,
}

impl Default for WorkerProcessConfig {
    fn default() -> Self {
        Self { sandbox: "strict".into(), memory_limit: None, orphan_wait_ms: None }
    }
}

impl Default for CalderaConfig {
    fn default() -> Self {
        Self {
            workers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            players_per_worker: 500,
            worker_binary: None,
            local_directories: Vec::new(),
            load_timeout_ms: 20_000,
            worker: WorkerProcessConfig::default(),
            resolver: ResolverConfig::default(),
            outbound: OutboundConfig::default(),
        }
    }
}

/// Keys Caldera reads (so a Lavalink file loads without errors) but does not act on; each one a
/// file sets is logged once at startup.
pub const NOT_ACTED_ON: &[&str] = &[
    "server.http2",
    "plugins",
    "sentry",
    "lavalink.plugins",
    "lavalink.pluginsDir",
    "lavalink.defaultPluginRepository",
    "lavalink.defaultPluginSnapshotRepository",
    "lavalink.server.sources.nico",
    "lavalink.server.useSeekGhosting",
    "lavalink.server.soundcloudFilterOutPreviewTracks",
    "lavalink.server.gcWarnings",
    "lavalink.server.nonAllocatingFrameBuffer",
    "lavalink.server.youtubeConfig",
    "logging.file",
    "logging.request",
    "logging.logback",
];

/// A size may be written as a bare number of bytes (from YAML, or from the environment).
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Number(u64),
    }
    Ok(Option::<Raw>::deserialize(d)?.map(|r| match r {
        Raw::Text(t) => t,
        Raw::Number(n) => n.to_string(),
    }))
}
