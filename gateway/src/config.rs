//! Configuration: Lavalink's `application.yml` keys plus Caldera's own `caldera:` section.
//!
//! One struct holds every default (STYLE §12). Loading order: `--config PATH`, else
//! `./application.yml` if present, else the embedded defaults; then the environment overrides
//! Lavalink users know (`SERVER_PORT`, `SERVER_ADDRESS`, `LAVALINK_SERVER_PASSWORD`). Unknown keys
//! are reported (not fatal); invalid values stop startup with the key named.

use serde::Deserialize;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: `{key}`: {message}")]
    Invalid { path: String, key: String, message: String },
    #[error("{path}: not valid YAML: {message}")]
    Syntax { path: String, message: String },
}

/// Where the configuration came from, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    Defaults,
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::Defaults => f.write_str("embedded defaults"),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Config {
    pub server: ServerConfig,
    pub lavalink: LavalinkConfig,
    pub metrics: MetricsConfig,
    pub logging: LoggingConfig,
    pub caldera: CalderaConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServerConfig {
    /// 0 picks a free port; the log line "listening on ADDR" tells which.
    pub port: u16,
    pub address: IpAddr,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { port: 2333, address: IpAddr::from([0, 0, 0, 0]) }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LavalinkConfig {
    pub server: LavalinkServerConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LavalinkServerConfig {
    pub password: String,
    pub sources: SourcesConfig,
    pub filters: FiltersConfig,
    /// Seconds between playerUpdate ops.
    pub player_update_interval: u32,
    pub track_stuck_threshold_ms: u64,
    // Lavaplayer tuning keys Caldera accepts so existing files load without noise.
    pub buffer_duration_ms: Option<u64>,
    pub frame_buffer_duration_ms: Option<u64>,
    pub opus_encoding_quality: Option<u8>,
    pub resampling_quality: Option<String>,
    pub use_seek_ghosting: Option<bool>,
    pub youtube_playlist_load_limit: Option<u32>,
    pub youtube_search_enabled: Option<bool>,
    pub soundcloud_search_enabled: Option<bool>,
    pub gc_warnings: Option<bool>,
    pub non_allocating_frame_buffer: Option<bool>,
    /// The route planner; absent (or without blocks) = none.
    pub ratelimit: Option<RateLimitConfig>,
}

/// `lavalink.server.ratelimit` (lavalink-internals §2.2), checked by [`crate::routeplanner`].
#[derive(Debug, Clone, Deserialize)]
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
            gc_warnings: None,
            non_allocating_frame_buffer: None,
            ratelimit: None,
        }
    }
}

/// Lavalink's source switches. Caldera implements only some; `/v4/info` lists enabled *and*
/// implemented ones, so a bot never sees a source it cannot use.
#[derive(Debug, Clone, Deserialize)]
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
            youtube: false,
            bandcamp: true,
            soundcloud: true,
            twitch: true,
            vimeo: true,
            nico: true,
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

#[derive(Debug, Clone, Deserialize)]
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
    pub fn enabled(&self) -> Vec<&'static str> {
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
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MetricsConfig {
    pub prometheus: PrometheusConfig,
}

#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LoggingConfig {
    pub level: LogLevels,
    /// Accepted for compatibility (Lavalink's log files); Caldera logs to stderr/journald.
    pub file: Option<serde_yaml_ng::Value>,
    pub logback: Option<serde_yaml_ng::Value>,
    pub request: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LogLevels {
    /// Default level when `RUST_LOG` is not set (`INFO`, `DEBUG`, ...).
    pub root: Option<String>,
    /// Level for Caldera's own modules.
    pub lavalink: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
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
}

/// `caldera.worker`: how worker processes are confined.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WorkerProcessConfig {
    /// `strict` (default), `relaxed` (no seccomp) or `off`.
    pub sandbox: String,
    /// Data-segment ceiling per worker, e.g. `512M`, `2G` or bytes; none by default.
    pub memory_limit: Option<String>,
}

impl Default for WorkerProcessConfig {
    fn default() -> Self {
        Self { sandbox: "strict".into(), memory_limit: None }
    }
}

impl WorkerProcessConfig {
    /// The memory limit in bytes.
    pub fn memory_limit_bytes(&self) -> Option<Result<u64, String>> {
        let raw = self.memory_limit.as_deref()?.trim();
        let (num, mult) = match raw.chars().last()?.to_ascii_uppercase() {
            'K' => (&raw[..raw.len() - 1], 1u64 << 10),
            'M' => (&raw[..raw.len() - 1], 1 << 20),
            'G' => (&raw[..raw.len() - 1], 1 << 30),
            _ => (raw, 1),
        };
        Some(num.trim().parse::<u64>().map(|n| n * mult).map_err(|_| format!("`{raw}` is not a size like 512M or 2G")))
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
        }
    }
}

/// A loaded, validated configuration with what the loader noticed on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub source: ConfigSource,
    /// Keys present in the file that Caldera does not know (dotted paths).
    pub unknown_keys: Vec<String>,
    /// Environment variables that overrode file values.
    pub env_overrides: Vec<&'static str>,
}

impl Config {
    /// Loads as `caldera` does at startup: explicit path, else `./application.yml`, else defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
        Self::load_with_env(explicit, |k| std::env::var(k).ok())
    }

    pub fn load_with_env(
        explicit: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Loaded, ConfigError> {
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from("application.yml")).filter(|p| p.is_file()),
        };
        let (mut config, unknown_keys, source) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                let (config, unknown) = Self::parse(&text, &path.display().to_string())?;
                (config, unknown, ConfigSource::File(path))
            }
            None => (Config::default(), Vec::new(), ConfigSource::Defaults),
        };
        let env_overrides = config.apply_env(env)?;
        config.validate(&source.to_string())?;
        Ok(Loaded { config, source, unknown_keys, env_overrides })
    }

    /// Parses YAML text; returns the config and the unknown keys it skipped.
    pub fn parse(text: &str, origin: &str) -> Result<(Config, Vec<String>), ConfigError> {
        let mut unknown = Vec::new();
        // An empty file (or one with only comments) means "all defaults".
        if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            return Ok((Config::default(), unknown));
        }
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let mut record = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
        let de = serde_ignored::Deserializer::new(de, &mut record);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let message = e.into_inner().to_string();
            if key == "." {
                ConfigError::Syntax { path: origin.into(), message }
            } else {
                ConfigError::Invalid { path: origin.into(), key, message }
            }
        })?;
        Ok((config, unknown))
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<Vec<&'static str>, ConfigError> {
        let mut applied = Vec::new();
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: "environment".into(),
            key: key.into(),
            message,
        };
        if let Some(v) = env("SERVER_PORT") {
            self.server.port = v
                .trim()
                .parse()
                .map_err(|_| invalid("SERVER_PORT", format!("`{v}` is not a port number (0-65535)")))?;
            applied.push("SERVER_PORT");
        }
        if let Some(v) = env("SERVER_ADDRESS") {
            self.server.address = v
                .trim()
                .parse()
                .map_err(|_| invalid("SERVER_ADDRESS", format!("`{v}` is not an IP address")))?;
            applied.push("SERVER_ADDRESS");
        }
        if let Some(v) = env("LAVALINK_SERVER_PASSWORD") {
            self.lavalink.server.password = v;
            applied.push("LAVALINK_SERVER_PASSWORD");
        }
        Ok(applied)
    }

    /// Range checks serde cannot express.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let fail = |key: &str, message: String| {
            Err(ConfigError::Invalid { path: origin.into(), key: key.into(), message })
        };
        if self.caldera.workers == 0 || self.caldera.workers > 256 {
            return fail("caldera.workers", format!("must be 1-256, got {}", self.caldera.workers));
        }
        if self.caldera.players_per_worker == 0 {
            return fail("caldera.playersPerWorker", "must be at least 1".into());
        }
        if self.lavalink.server.player_update_interval == 0 {
            return fail("lavalink.server.playerUpdateInterval", "must be at least 1 second".into());
        }
        if self.lavalink.server.track_stuck_threshold_ms == 0 {
            return fail("lavalink.server.trackStuckThresholdMs", "must be at least 1 ms".into());
        }
        if !(1000..=600_000).contains(&self.caldera.load_timeout_ms) {
            return fail("caldera.loadTimeoutMs", format!("must be 1000-600000, got {}", self.caldera.load_timeout_ms));
        }
        if !["strict", "relaxed", "off"].contains(&self.caldera.worker.sandbox.to_ascii_lowercase().as_str()) {
            return fail("caldera.worker.sandbox", format!("must be strict, relaxed or off, got `{}`", self.caldera.worker.sandbox));
        }
        match self.caldera.worker.memory_limit_bytes() {
            Some(Err(message)) => return fail("caldera.worker.memoryLimit", message),
            Some(Ok(b)) if b < 64 << 20 => return fail("caldera.worker.memoryLimit", "must be at least 64M".into()),
            _ => {}
        }
        if let Err((key, message)) = crate::routeplanner::RoutePlanner::from_config(self.lavalink.server.ratelimit.as_ref()) {
            return fail(key, message);
        }
        for dir in &self.caldera.local_directories {
            if !dir.is_absolute() || !dir.is_dir() {
                return fail(
                    "caldera.localDirectories",
                    format!("`{}` is not an absolute path to an existing directory", dir.display()),
                );
            }
        }
        let endpoint = &self.metrics.prometheus.endpoint;
        if !endpoint.starts_with('/') || endpoint.len() < 2 || endpoint.starts_with("/v4/") || endpoint == "/version" {
            return fail(
                "metrics.prometheus.endpoint",
                format!("must be a path like /metrics, not under /v4/, got `{endpoint}`"),
            );
        }
        if let Some(level) = self.logging.level.root.as_deref().or(self.logging.level.lavalink.as_deref()) {
            if level_directive(level).is_none() {
                return fail("logging.level", format!("unknown level `{level}` (TRACE, DEBUG, INFO, WARN, ERROR, OFF)"));
            }
        }
        Ok(())
    }

    /// The worker binary: configured, else `caldera-worker` beside the running executable.
    pub fn worker_binary(&self) -> PathBuf {
        if let Some(p) = &self.caldera.worker_binary {
            return p.clone();
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("caldera-worker")))
            .unwrap_or_else(|| PathBuf::from("caldera-worker"))
    }

    /// The local directories, resolved (symlinks followed) as the worker compares them.
    pub fn canonical_local_directories(&self) -> Vec<String> {
        self.caldera
            .local_directories
            .iter()
            .filter_map(|d| d.canonicalize().ok())
            .map(|d| d.display().to_string())
            .collect()
    }

    /// The tracing filter used when `RUST_LOG` is not set, from `logging.level.*`.
    pub fn log_filter(&self) -> String {
        let root = self.logging.level.root.as_deref().and_then(level_directive).unwrap_or("info");
        match self.logging.level.lavalink.as_deref().and_then(level_directive) {
            Some(own) => format!("{root},caldera={own},caldera_gateway={own},caldera_worker={own}"),
            None => root.to_string(),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_match_lavalink() {
        let c = Config::default();
        assert_eq!(c.server.port, 2333);
        assert_eq!(c.lavalink.server.password, "youshallnotpass");
        assert_eq!(c.lavalink.server.player_update_interval, 5);
        assert!(!c.metrics.prometheus.enabled);
        assert!(c.caldera.workers >= 1);
        assert!(c.lavalink.server.sources.http && !c.lavalink.server.sources.local);
        assert_eq!(c.lavalink.server.filters.enabled().len(), 10);
    }

    #[test]
    fn reads_lavalink_keys_and_reports_unknown_ones() {
        let yaml = r#"
server:
  port: 2444
  address: 127.0.0.1
lavalink:
  plugins: []
  server:
    password: "hunter2"
    playerUpdateInterval: 2
    sources: { local: true, youtube: false }
    filters: { karaoke: false }
    bufferDurationMs: 400
metrics:
  prometheus: { enabled: true, endpoint: /prom }
caldera:
  workers: 3
  playersPerWorker: 20
  mystery: 1
sentry: { dsn: "" }
"#;
        let (c, unknown) = Config::parse(yaml, "t.yml").unwrap();
        assert_eq!(c.server.port, 2444);
        assert_eq!(c.server.address, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(c.lavalink.server.password, "hunter2");
        assert_eq!(c.lavalink.server.player_update_interval, 2);
        assert!(c.lavalink.server.sources.local);
        assert!(!c.lavalink.server.filters.enabled().contains(&"karaoke"));
        assert!(c.metrics.prometheus.enabled);
        assert_eq!(c.metrics.prometheus.endpoint, "/prom");
        assert_eq!(c.caldera.workers, 3);
        assert_eq!(c.caldera.players_per_worker, 20);
        assert_eq!(unknown, vec!["lavalink.plugins", "caldera.mystery", "sentry"]);
    }

    #[test]
    fn invalid_values_name_the_key() {
        let err = Config::parse("server:\n  port: 99999\n", "f.yml").unwrap_err().to_string();
        assert!(err.contains("server.port"), "{err}");
        let err = Config::parse("server:\n  address: nowhere\n", "f.yml").unwrap_err().to_string();
        assert!(err.contains("server.address"), "{err}");
        let (c, _) = Config::parse("caldera:\n  workers: 0\n", "f.yml").unwrap();
        let err = c.validate("f.yml").unwrap_err().to_string();
        assert!(err.contains("caldera.workers"), "{err}");
        let err = Config::parse("server: [unclosed", "f.yml").unwrap_err().to_string();
        assert!(err.contains("f.yml"), "{err}");
    }

    #[test]
    fn environment_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("application.yml");
        std::fs::write(&path, "server:\n  port: 1000\n").unwrap();
        let env = |k: &str| match k {
            "SERVER_PORT" => Some("4000".to_string()),
            "LAVALINK_SERVER_PASSWORD" => Some("pw".to_string()),
            _ => None,
        };
        let loaded = Config::load_with_env(Some(&path), env).unwrap();
        assert_eq!(loaded.config.server.port, 4000);
        assert_eq!(loaded.config.lavalink.server.password, "pw");
        assert_eq!(loaded.env_overrides, vec!["SERVER_PORT", "LAVALINK_SERVER_PASSWORD"]);
        let bad = Config::load_with_env(Some(&path), |k| (k == "SERVER_PORT").then(|| "x".into()));
        assert!(bad.unwrap_err().to_string().contains("SERVER_PORT"));
    }

    #[test]
    fn empty_file_and_missing_file() {
        let (c, unknown) = Config::parse("# nothing here\n", "e.yml").unwrap();
        assert_eq!(c.server.port, 2333);
        assert!(unknown.is_empty());
        let err = Config::load_with_env(Some(Path::new("/nonexistent/a.yml")), no_env).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
    }

    #[test]
    fn log_levels_map_to_filters() {
        let (c, _) = Config::parse("logging:\n  level:\n    root: WARN\n    lavalink: DEBUG\n", "l").unwrap();
        assert_eq!(c.log_filter(), "warn,caldera=debug,caldera_gateway=debug,caldera_worker=debug");
        let (c, _) = Config::parse("logging:\n  level:\n    root: LOUD\n", "l").unwrap();
        assert!(c.validate("l").unwrap_err().to_string().contains("logging.level"));
    }
}
