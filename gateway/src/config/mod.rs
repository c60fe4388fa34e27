//! Configuration: Lavalink's `application.yml` keys plus Caldera's own `caldera:` section.
//!
//! [`file`] is the model serde reads, with every default in one place (STYLE §12); [`Settings`]
//! is that model parsed and checked once, and what the rest of the node reads. Loading order:
//! `--config PATH`, else `./application.yml` if present, else the embedded defaults; then the
//! environment overrides Lavalink users know (`SERVER_PORT`, `SERVER_ADDRESS`,
//! `LAVALINK_SERVER_PASSWORD`). Unknown keys are reported (not fatal); invalid values stop
//! startup with the key named.

pub mod file;
mod settings;

pub use file::{Config, FiltersConfig, SourcesConfig};
pub use settings::*;

use std::fmt;
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

/// A loaded, validated configuration with what the loader noticed on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub settings: Settings,
    pub source: ConfigSource,
    /// Keys present in the file that Caldera does not know (dotted paths).
    pub unknown_keys: Vec<String>,
    /// Environment variables that overrode file values.
    pub env_overrides: Vec<&'static str>,
}

impl Loaded {
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
                let (config, unknown) = parse(&text, &path.display().to_string())?;
                (config, unknown, ConfigSource::File(path))
            }
            None => (Config::default(), Vec::new(), ConfigSource::Defaults),
        };
        let env_overrides = apply_env(&mut config, env)?;
        let settings = Settings::from_file(&config, &source.to_string())?;
        Ok(Loaded { settings, source, unknown_keys, env_overrides })
    }
}

/// Parses YAML text into the file model; returns it and the unknown keys it skipped.
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

fn apply_env(config: &mut Config, env: impl Fn(&str) -> Option<String>) -> Result<Vec<&'static str>, ConfigError> {
    let mut applied = Vec::new();
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: "environment".into(),
        key: key.into(),
        message,
    };
    if let Some(v) = env("SERVER_PORT") {
        config.server.port = v
            .trim()
            .parse()
            .map_err(|_| invalid("SERVER_PORT", format!("`{v}` is not a port number (0-65535)")))?;
        applied.push("SERVER_PORT");
    }
    if let Some(v) = env("SERVER_ADDRESS") {
        config.server.address = v
            .trim()
            .parse()
            .map_err(|_| invalid("SERVER_ADDRESS", format!("`{v}` is not an IP address")))?;
        applied.push("SERVER_ADDRESS");
    }
    if let Some(v) = env("LAVALINK_SERVER_PASSWORD") {
        config.lavalink.server.password = v;
        applied.push("LAVALINK_SERVER_PASSWORD");
    }
    Ok(applied)
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
        let (c, unknown) = parse(yaml, "t.yml").unwrap();
        assert_eq!(c.server.port, 2444);
        assert_eq!(c.server.address, "127.0.0.1".parse::<std::net::IpAddr>().unwrap());
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
        let err = parse("server:\n  port: 99999\n", "f.yml").unwrap_err().to_string();
        assert!(err.contains("server.port"), "{err}");
        let err = parse("server:\n  address: nowhere\n", "f.yml").unwrap_err().to_string();
        assert!(err.contains("server.address"), "{err}");
        let (c, _) = parse("caldera:\n  workers: 0\n", "f.yml").unwrap();
        let err = Settings::from_file(&c, "f.yml").unwrap_err().to_string();
        assert!(err.contains("caldera.workers"), "{err}");
        let err = parse("server: [unclosed", "f.yml").unwrap_err().to_string();
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
        let loaded = Loaded::load_with_env(Some(&path), env).unwrap();
        assert_eq!(loaded.settings.listen.port(), 4000);
        assert_eq!(loaded.settings.password, "pw");
        assert_eq!(loaded.env_overrides, vec!["SERVER_PORT", "LAVALINK_SERVER_PASSWORD"]);
        let bad = Loaded::load_with_env(Some(&path), |k| (k == "SERVER_PORT").then(|| "x".into()));
        assert!(bad.unwrap_err().to_string().contains("SERVER_PORT"));
    }

    #[test]
    fn empty_file_and_missing_file() {
        let (c, unknown) = parse("# nothing here\n", "e.yml").unwrap();
        assert_eq!(c.server.port, 2333);
        assert!(unknown.is_empty());
        let err = Loaded::load_with_env(Some(Path::new("/nonexistent/a.yml")), no_env).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
    }

    #[test]
    fn log_levels_map_to_filters() {
        let (c, _) = parse("logging:\n  level:\n    root: WARN\n    lavalink: DEBUG\n", "l").unwrap();
        assert_eq!(Settings::from_file(&c, "l").unwrap().log_filter, "warn,caldera=debug,caldera_gateway=debug,caldera_worker=debug");
        let (c, _) = parse("logging:\n  level:\n    root: LOUD\n", "l").unwrap();
        assert!(Settings::from_file(&c, "l").unwrap_err().to_string().contains("logging.level"));
    }

    #[test]
    fn values_are_parsed_into_types_once() {
        let settings = |yaml: &str| parse(yaml, "t").and_then(|(c, _)| Settings::from_file(&c, "t"));
        let s = settings("caldera:\n  worker:\n    sandbox: Relaxed\n    memoryLimit: 512M\n").unwrap();
        assert_eq!(s.sandbox, SandboxMode::Relaxed);
        assert_eq!(s.memory_limit, Some(512 << 20));
        let err = settings("caldera:\n  worker:\n    memoryLimit: 12X\n").unwrap_err().to_string();
        assert!(err.contains("caldera.worker.memoryLimit"), "{err}");
        let err = settings("caldera:\n  worker:\n    memoryLimit: 1M\n").unwrap_err().to_string();
        assert!(err.contains("at least 64M"), "{err}");
        let err = settings("caldera:\n  worker:\n    sandbox: loose\n").unwrap_err().to_string();
        assert!(err.contains("caldera.worker.sandbox"), "{err}");

        let planner = |body: &str| settings(&format!("lavalink:\n  server:\n    ratelimit:\n{body}"));
        let r = planner("      ipBlocks: [\"10.0.0.1/30\"]\n      retryLimit: -1\n      strategy: loadbalance\n").unwrap().route_planner.unwrap();
        assert_eq!((r.strategy, r.retry_limit, r.blocks[0].to_string().as_str()), (Strategy::LoadBalance, Some(DEFAULT_RETRY_LIMIT), "10.0.0.0/30"));
        assert_eq!(planner("      ipBlocks: [\"10.0.0.0/30\"]\n      retryLimit: 0\n").unwrap().route_planner.unwrap().retry_limit, None);
        assert!(planner("      ipBlocks: []\n").unwrap().route_planner.is_none());
        for (body, key) in [
            ("      ipBlocks: [\"10.0.0.0/33\"]\n", "ipBlocks"),
            ("      ipBlocks: [\"10.0.0.0/30\", \"2001:db8::/64\"]\n", "ipBlocks"),
            ("      ipBlocks: [\"10.0.0.0/30\"]\n      strategy: NanoSwitch\n", "ipBlocks"),
            ("      ipBlocks: [\"2001:db8::/96\"]\n      strategy: RotatingNanoSwitch\n", "ipBlocks"),
            ("      ipBlocks: [\"::/0\"]\n", "ipBlocks"),
            ("      ipBlocks: [\"10.0.0.0/30\"]\n      excludedIps: [\"x\"]\n", "excludedIps"),
            ("      ipBlocks: [\"10.0.0.0/30\"]\n      strategy: Random\n", "strategy"),
        ] {
            let err = planner(body).unwrap_err().to_string();
            assert!(err.contains(&format!("lavalink.server.ratelimit.{key}")), "{body}: {err}");
        }
    }
}
