//! `GET /version` and `GET /v4/info` (lavalink-internals §4.5, §4.6).

use super::AppState;
use axum::extract::State;
use axum::Json;
use caldera_protocol::build;
use serde::Serialize;

/// Sources Caldera can actually load; `/v4/info` lists those of them the config enables.
pub const IMPLEMENTED_SOURCES: &[&str] = &["http", "local"];
/// Filters Caldera actually applies; `/v4/info` lists those of them the config enables.
pub const IMPLEMENTED_FILTERS: &[&str] = crate::players::filters::IMPLEMENTED;

pub async fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    version: Version,
    build_time: i64,
    git: Git,
    jvm: String,
    lavaplayer: String,
    source_managers: Vec<&'static str>,
    filters: Vec<&'static str>,
    plugins: Vec<serde_json::Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Version {
    semver: &'static str,
    major: u64,
    minor: u64,
    patch: u64,
    pre_release: Option<&'static str>,
    build: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Git {
    branch: &'static str,
    commit: &'static str,
    commit_time: i64,
}

pub async fn info(State(state): State<AppState>) -> Json<Info> {
    let semver = env!("CARGO_PKG_VERSION");
    let (core, pre) = match semver.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (semver, None),
    };
    let mut nums = core.split('.').map(|n| n.parse::<u64>().unwrap_or(0));
    let config = &state.config.lavalink.server;
    Json(Info {
        version: Version {
            semver,
            major: nums.next().unwrap_or(0),
            minor: nums.next().unwrap_or(0),
            patch: nums.next().unwrap_or(0),
            pre_release: pre,
            build: None,
        },
        build_time: build::build_time_ms(),
        git: Git { branch: build::GIT_BRANCH, commit: build::GIT_COMMIT, commit_time: build::git_commit_time_ms() },
        // Lavalink reports its JVM here; Caldera reports the Rust toolchain it was built with.
        jvm: build::RUSTC_VERSION.to_string(),
        // …and its audio engine in place of Lavaplayer.
        lavaplayer: format!("caldera-worker {semver}"),
        source_managers: config.sources.enabled().into_iter().filter(|s| IMPLEMENTED_SOURCES.contains(s)).collect(),
        filters: config.filters.enabled().into_iter().filter(|f| IMPLEMENTED_FILTERS.contains(f)).collect(),
        plugins: Vec::new(),
    })
}
