//! Typed settings: the file model parsed and checked once. Every other layer reads these, never
//! the file model, so no value is validated as a string here and parsed again elsewhere.

use super::file::{Config, FiltersConfig, SourcesConfig};
use super::ConfigError;
use ipnet::IpNet;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Most bytes a worker reads from one source while probing it.
pub const MAX_PROBE_BYTES: u64 = 64 * 1024 * 1024;
/// Most entries of an M3U/PLS playlist a worker loads.
pub const MAX_PLAYLIST_ENTRIES: u32 = 100;
/// Lavaplayer's retry limit when `retryLimit` is negative.
pub const DEFAULT_RETRY_LIMIT: u32 = 4;
/// Addresses in one IPv6 /64.
pub const BLOCK64: u128 = 1 << 64;

/// Everything the node runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub password: String,
    pub sources: SourcesConfig,
    pub filters: FiltersConfig,
    pub player_update_interval: Duration,
    pub track_stuck_threshold: Duration,
    pub route_planner: Option<RoutePlannerSettings>,
    pub prometheus: Option<PrometheusSettings>,
    /// The tracing filter when `RUST_LOG` is not set, from `logging.level.*`.
    pub log_filter: String,
    pub workers: usize,
    pub players_per_worker: usize,
    pub worker_binary: PathBuf,
    /// `caldera.localDirectories`, resolved (symlinks followed) as the worker compares them.
    pub local_directories: Vec<PathBuf>,
    pub load_timeout: Duration,
    pub sandbox: SandboxMode,
    /// Data-segment ceiling per worker, in bytes.
    pub memory_limit: Option<u64>,
    /// How long workers outlive a gateway that died without handing over (zero: not at all).
    pub orphan_wait: Duration,
    /// Timeouts and proxy of outbound source requests.
    pub http: caldera_protocol::HttpSettings,
    /// Lavalink's audio keys.
    pub audio: caldera_protocol::AudioSettings,
    pub resolver: ResolverSettings,
}

/// The resolver (yt-dlp) and the platform switches that concern it.
#[derive(Debug, Clone)]
pub struct ResolverSettings {
    /// The interpreter of the environment holding yt-dlp; `None`: the resolver is off (disabled,
    /// or not installed), and so are platform sources.
    pub python: Option<PathBuf>,
    pub concurrency: usize,
    /// Resident memory (with its children) past which it is restarted.
    pub memory_limit: u64,
    pub generic_pages: bool,
    /// Time given to one lookup.
    pub timeout: Duration,
    /// `youtubeSearchEnabled`, `soundcloudSearchEnabled`.
    pub youtube_search: bool,
    pub soundcloud_search: bool,
    /// Most tracks of a playlist (`youtubePlaylistLoadLimit` pages of 100, as Lavaplayer).
    pub playlist_limit: usize,
}

/// How long workers wait for the next gateway under systemd, where a restart follows a crash.
const DEFAULT_ORPHAN_WAIT: Duration = Duration::from_secs(30);

/// Where the setup script installs the resolver's environment, relative to the repository.
const RESOLVER_VENV_PYTHON: &str = "resolver/venv/bin/python";
/// Lavaplayer's default `youtubePlaylistLoadLimit`, in pages of 100 videos.
const DEFAULT_PLAYLIST_PAGES: u32 = 6;

/// How worker processes are confined (`caldera.worker.sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    Strict,
    /// No seccomp filter.
    Relaxed,
    Off,
}

impl SandboxMode {
    /// The name the worker reads from its environment.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "strict",
            Self::Relaxed => "relaxed",
            Self::Off => "off",
        }
    }
}

/// `metrics.prometheus`, when enabled.
#[derive(Debug, Clone)]
pub struct PrometheusSettings {
    pub endpoint: String,
    /// Caldera extension: `false` serves metrics without the REST password.
    pub auth: bool,
}

/// The route planner strategies (`lavalink.server.ratelimit.strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RotateOnBan,
    LoadBalance,
    NanoSwitch,
    RotatingNanoSwitch,
}

impl Strategy {
    /// Lavalink's config values, matched case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rotateonban" => Some(Self::RotateOnBan),
            "loadbalance" => Some(Self::LoadBalance),
            "nanoswitch" => Some(Self::NanoSwitch),
            "rotatingnanoswitch" => Some(Self::RotatingNanoSwitch),
            _ => None,
        }
    }

    fn needs_v6_64(self) -> bool {
        matches!(self, Self::NanoSwitch | Self::RotatingNanoSwitch)
    }
}

/// `lavalink.server.ratelimit` with blocks (lavalink-internals §2.2), checked: the blocks are all
/// of one family, each is a countable size, and the Nano strategies have /64s.
#[derive(Debug, Clone)]
pub struct RoutePlannerSettings {
    pub strategy: Strategy,
    /// Truncated to their network address, in configuration order.
    pub blocks: Vec<IpNet>,
    pub excluded: HashSet<IpAddr>,
    pub search_triggers_fail: bool,
    /// Retries on another address after a failed attempt; `None` = no limit.
    pub retry_limit: Option<u32>,
}

impl RoutePlannerSettings {
    pub fn is_v6(&self) -> bool {
        matches!(self.blocks.first(), Some(IpNet::V6(_)))
    }
}

/// Addresses in `net` (below 2^128: checked when the settings are made).
pub fn block_size(net: &IpNet) -> u128 {
    1u128 << u32::from(net.max_prefix_len() - net.prefix_len())
}

impl Settings {
    /// Parses and checks the file model; `origin` names the file (or "environment") in errors.
    pub fn from_file(config: &Config, origin: &str) -> Result<Self, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid { path: origin.into(), key: key.into(), message };
        let server = &config.lavalink.server;
        let caldera = &config.caldera;
        if caldera.workers == 0 || caldera.workers > 256 {
            return Err(invalid("caldera.workers", format!("must be 1-256, got {}", caldera.workers)));
        }
        if caldera.players_per_worker == 0 {
            return Err(invalid("caldera.playersPerWorker", "must be at least 1".into()));
        }
        if server.player_update_interval == 0 {
            return Err(invalid("lavalink.server.playerUpdateInterval", "must be at least 1 second".into()));
        }
        if server.track_stuck_threshold_ms == 0 {
            return Err(invalid("lavalink.server.trackStuckThresholdMs", "must be at least 1 ms".into()));
        }
        if !(1000..=600_000).contains(&caldera.load_timeout_ms) {
            return Err(invalid("caldera.loadTimeoutMs", format!("must be 1000-600000, got {}", caldera.load_timeout_ms)));
        }
        let sandbox = match caldera.worker.sandbox.to_ascii_lowercase().as_str() {
            "strict" => SandboxMode::Strict,
            "relaxed" => SandboxMode::Relaxed,
            "off" => SandboxMode::Off,
            _ => return Err(invalid("caldera.worker.sandbox", format!("must be strict, relaxed or off, got `{}`", caldera.worker.sandbox))),
        };
        let memory_limit = match caldera.worker.memory_limit.as_deref() {
            None => None,
            Some(raw) => {
                let bytes = parse_size(raw).ok_or_else(|| invalid("caldera.worker.memoryLimit", format!("`{raw}` is not a size like 512M or 2G")))?;
                if bytes < 64 << 20 {
                    return Err(invalid("caldera.worker.memoryLimit", "must be at least 64M".into()));
                }
                Some(bytes)
            }
        };
        let orphan_wait = match caldera.worker.orphan_wait_ms {
            Some(ms) if ms > 600_000 => return Err(invalid("caldera.worker.orphanWaitMs", format!("must be at most 600000, got {ms}"))),
            Some(ms) => Duration::from_millis(ms),
            None if std::env::var_os("RUNTIME_DIRECTORY").is_some() => DEFAULT_ORPHAN_WAIT,
            None => Duration::ZERO,
        };
        let route_planner = match &server.ratelimit {
            r if !r.ip_blocks.is_empty() => Some(route_planner(r).map_err(|(key, message)| invalid(key, message))?),
            _ => None,
        };
        let mut local_directories = Vec::new();
        for dir in &caldera.local_directories {
            let canonical = dir.canonicalize().ok().filter(|d| dir.is_absolute() && d.is_dir()).ok_or_else(|| {
                invalid("caldera.localDirectories", format!("`{}` is not an absolute path to an existing directory", dir.display()))
            })?;
            local_directories.push(canonical);
        }
        let prometheus = &config.metrics.prometheus;
        let endpoint = &prometheus.endpoint;
        if !endpoint.starts_with('/') || endpoint.len() < 2 || endpoint.starts_with("/v4/") || endpoint == "/version" {
            return Err(invalid("metrics.prometheus.endpoint", format!("must be a path like /metrics, not under /v4/, got `{endpoint}`")));
        }
        let levels = &config.logging.level;
        let level = |name: Option<&str>| -> Result<Option<&'static str>, ConfigError> {
            name.map(|l| level_directive(l).ok_or_else(|| invalid("logging.level", format!("unknown level `{l}` (TRACE, DEBUG, INFO, WARN, ERROR, OFF)"))))
                .transpose()
        };
        let root = level(levels.root.as_deref())?.unwrap_or("info");
        let log_filter = match level(levels.lavalink.as_deref())? {
            Some(own) => format!("{root},caldera={own},caldera_gateway={own},caldera_worker={own}"),
            None => root.to_string(),
        };
        let timeouts = &server.timeouts;
        for (key, ms) in [
            ("connectTimeoutMs", timeouts.connect_timeout_ms),
            ("connectionRequestTimeoutMs", timeouts.connection_request_timeout_ms),
            ("socketTimeoutMs", timeouts.socket_timeout_ms),
        ] {
            if !(1..=600_000).contains(&ms) {
                return Err(invalid(&format!("lavalink.server.timeouts.{key}"), format!("must be 1-600000 ms, got {ms}")));
            }
        }
        let proxy = &server.http_config;
        let proxy = match proxy.proxy_host.trim() {
            "" => None,
            host if proxy.proxy_port == 0 => return Err(invalid("lavalink.server.httpConfig.proxyPort", format!("a proxy port is needed for {host}"))),
            host => {
                let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
                let blank = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
                Some(caldera_protocol::Proxy { url: format!("http://{host}:{}", proxy.proxy_port), user: blank(&proxy.proxy_user), password: blank(&proxy.proxy_password) })
            }
        };
        let deny = caldera
            .outbound
            .deny_networks
            .iter()
            .map(|n| n.trim().parse::<IpNet>().map(|n| (n.network(), n.prefix_len())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("caldera.outbound.denyNetworks", format!("{e}; use CIDR notation like 169.254.0.0/16")))?;
        let http = caldera_protocol::HttpSettings {
            connect_timeout_ms: timeouts.connect_timeout_ms,
            response_timeout_ms: timeouts.connection_request_timeout_ms,
            read_timeout_ms: timeouts.socket_timeout_ms,
            proxy,
            deny,
        };
        let opus_quality = server.opus_encoding_quality.unwrap_or(10);
        if opus_quality > 10 {
            return Err(invalid("lavalink.server.opusEncodingQuality", format!("must be 0-10, got {opus_quality}")));
        }
        let resampling = match server.resampling_quality.as_deref().map(str::to_ascii_uppercase).as_deref() {
            None | Some("LOW") => caldera_protocol::ResamplingQuality::Low,
            Some("MEDIUM") => caldera_protocol::ResamplingQuality::Medium,
            Some("HIGH") => caldera_protocol::ResamplingQuality::High,
            Some(other) => return Err(invalid("lavalink.server.resamplingQuality", format!("must be LOW, MEDIUM or HIGH, got `{other}`"))),
        };
        // Lavalink: bufferDurationMs <= 0 disables its buffer; the minimum that works is 40 ms.
        let audio = caldera_protocol::AudioSettings {
            buffer_ms: server.buffer_duration_ms.map_or(400, |ms| ms.clamp(40, 10_000)) as u32,
            frame_buffer_ms: server.frame_buffer_duration_ms.map_or(5000, |ms| ms.clamp(100, 60_000)) as u32,
            opus_quality,
            resampling,
        };
        let r = &caldera.resolver;
        if !(1..=64).contains(&r.concurrency) {
            return Err(invalid("caldera.resolver.concurrency", format!("must be 1-64, got {}", r.concurrency)));
        }
        let resolver_memory = match r.memory_limit.as_deref() {
            None => 1 << 30,
            Some(raw) => parse_size(raw)
                .filter(|b| *b >= 128 << 20)
                .ok_or_else(|| invalid("caldera.resolver.memoryLimit", format!("`{raw}` is not a size of at least 128M")))?,
        };
        let python = match &r.python {
            Some(p) if r.enabled => {
                if !p.is_absolute() || !p.exists() {
                    return Err(invalid("caldera.resolver.python", format!("`{}` is not an absolute path to an existing interpreter", p.display())));
                }
                Some(p.clone())
            }
            _ if r.enabled => default_resolver_python(),
            _ => None,
        };
        let resolver = ResolverSettings {
            python,
            concurrency: r.concurrency,
            memory_limit: resolver_memory,
            generic_pages: r.generic_pages,
            timeout: Duration::from_millis(r.timeout_ms.unwrap_or(caldera.load_timeout_ms).clamp(1000, 600_000)),
            youtube_search: server.youtube_search_enabled.unwrap_or(true),
            soundcloud_search: server.soundcloud_search_enabled.unwrap_or(true),
            playlist_limit: server.youtube_playlist_load_limit.unwrap_or(DEFAULT_PLAYLIST_PAGES).clamp(1, 100) as usize * 100,
        };
        // The youtube-source plugin's switch means YouTube is wanted (Lavalink's built-in source
        // is then turned off in the same file).
        let mut sources = server.sources.clone();
        let plugin_youtube = config.plugins.as_ref().and_then(|p| p.get("youtube")?.get("enabled")?.as_bool());
        sources.youtube |= plugin_youtube == Some(true);
        Ok(Self {
            listen: SocketAddr::new(config.server.address, config.server.port),
            password: server.password.clone(),
            sources,
            filters: server.filters.clone(),
            player_update_interval: Duration::from_secs(server.player_update_interval.into()),
            track_stuck_threshold: Duration::from_millis(server.track_stuck_threshold_ms),
            route_planner,
            prometheus: prometheus.enabled.then(|| PrometheusSettings { endpoint: endpoint.clone(), auth: prometheus.auth }),
            log_filter,
            workers: caldera.workers,
            players_per_worker: caldera.players_per_worker,
            worker_binary: caldera.worker_binary.clone().unwrap_or_else(default_worker_binary),
            local_directories,
            load_timeout: Duration::from_millis(caldera.load_timeout_ms),
            sandbox,
            memory_limit,
            orphan_wait,
            http,
            audio,
            resolver,
        })
    }

    /// Source names whose tracks may load and play: the switches that are on, and `yt-dlp`
    /// (tracks from yt-dlp's other sites) with `http`.
    pub fn enabled_sources(&self) -> Vec<String> {
        let mut names: Vec<String> = self.sources.enabled().into_iter().map(String::from).collect();
        if self.sources.http {
            names.push("yt-dlp".into());
        }
        names
    }

    /// What every worker is told after its hello.
    pub fn worker_settings(&self) -> caldera_protocol::WorkerSettings {
        caldera_protocol::WorkerSettings {
            max_probe_bytes: MAX_PROBE_BYTES,
            load_timeout_ms: self.load_timeout.as_millis() as u64,
            max_playlist_entries: MAX_PLAYLIST_ENTRIES,
            player_update_interval_ms: self.player_update_interval.as_millis() as u64,
            track_stuck_threshold_ms: self.track_stuck_threshold.as_millis() as u64,
            route_planner: self.route_planner.as_ref().map(|r| caldera_protocol::RoutePlanning { retry_limit: r.retry_limit }),
            http: self.http.clone(),
            audio: self.audio,
            sources: self.enabled_sources(),
        }
    }
}

fn route_planner(config: &super::file::RateLimitConfig) -> Result<RoutePlannerSettings, (&'static str, String)> {
    const BLOCKS: &str = "lavalink.server.ratelimit.ipBlocks";
    let mut blocks = Vec::new();
    for b in &config.ip_blocks {
        let net = b.trim().parse::<IpNet>().map_err(|_| (BLOCKS, format!("invalid IP block `{b}`, make sure to use CIDR notation")))?;
        if net.max_prefix_len() - net.prefix_len() >= 128 {
            return Err((BLOCKS, format!("{net} is too large")));
        }
        blocks.push(net.trunc());
    }
    let v6 = matches!(blocks[0], IpNet::V6(_));
    if blocks.iter().any(|n| matches!(n, IpNet::V6(_)) != v6) {
        return Err((BLOCKS, "all ip blocks must be IPv4, or all IPv6".into()));
    }
    blocks.iter().try_fold(0u128, |total, n| total.checked_add(block_size(n))).ok_or((BLOCKS, "the blocks are too large together".to_string()))?;
    let excluded = config
        .excluded_ips
        .iter()
        .map(|ip| ip.trim().parse::<IpAddr>().map_err(|_| ("lavalink.server.ratelimit.excludedIps", format!("invalid IP address `{ip}`"))))
        .collect::<Result<HashSet<_>, _>>()?;
    let strategy = Strategy::parse(&config.strategy).ok_or_else(|| {
        ("lavalink.server.ratelimit.strategy", format!("unknown strategy `{}` (RotateOnBan, LoadBalance, NanoSwitch, RotatingNanoSwitch)", config.strategy))
    })?;
    if strategy.needs_v6_64() && (!v6 || blocks.iter().any(|n| block_size(n) < BLOCK64)) {
        return Err((BLOCKS, format!("{strategy:?} needs IPv6 blocks of at least a /64 each")));
    }
    let retry_limit = match config.retry_limit {
        n if n < 0 => Some(DEFAULT_RETRY_LIMIT),
        0 => None,
        n => Some(n as u32),
    };
    Ok(RoutePlannerSettings { strategy, blocks, excluded, search_triggers_fail: config.search_triggers_fail, retry_limit })
}

/// `512M`, `2G`, `64k` or plain bytes.
fn parse_size(raw: &str) -> Option<u64> {
    let raw = raw.trim();
    let (num, shift) = match raw.chars().last()?.to_ascii_uppercase() {
        'K' => (&raw[..raw.len() - 1], 10),
        'M' => (&raw[..raw.len() - 1], 20),
        'G' => (&raw[..raw.len() - 1], 30),
        _ => (raw, 0),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// `caldera-worker` beside the running executable.
fn default_worker_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("caldera-worker")))
        .unwrap_or_else(|| PathBuf::from("caldera-worker"))
}

/// The setup script's virtual environment, beside the working directory or above the executable
/// (`target/release/caldera` in a checkout).
fn default_resolver_python() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    let above_exe = exe.iter().flat_map(|e| e.ancestors().skip(1).take(4)).map(|d| d.to_path_buf());
    cwd.into_iter().chain(above_exe).map(|d| d.join(RESOLVER_VENV_PYTHON)).find(|p| p.exists())
}

fn level_directive(level: &str) -> Option<&'static str> {
    Some(match level.to_ascii_uppercase().as_str() {
        "TRACE" => "trace",
        "DEBUG" => "debug",
        "INFO" => "info",
        "WARN" | "WARNING" => "warn",
        "ERROR" => "error",
        "OFF" => "off",
        _ => return None,
    })
}
