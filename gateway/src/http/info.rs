//! `GET /version` and `GET /v4/info` (lavalink-internals §4.5, §4.6).

use super::AppState;
use crate::lavalink::{Git, Info, Version};
use axum::extract::State;
use axum::Json;
use caldera_protocol::build;

/// Sources Caldera loads itself; the platform sources come with a ready resolver (yt-dlp).
/// `/v4/info` lists those of them the config enables.
pub const IMPLEMENTED_SOURCES: &[&str] = &["http", "local"];
const PLATFORM_SOURCES: &[&str] = &["youtube", "soundcloud", "bandcamp", "twitch", "vimeo"];

pub async fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

pub async fn info(State(state): State<AppState>) -> Json<Info> {
    let semver = env!("CARGO_PKG_VERSION");
    let (core, pre) = match semver.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (semver, None),
    };
    let mut nums = core.split('.').map(|n| n.parse::<u64>().unwrap_or(0));
    let settings = &state.node.settings;
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
        source_managers: {
            let platforms = state.node.supervisor.resolver().is_some_and(|r| r.is_ready());
            let available = |s: &&str| IMPLEMENTED_SOURCES.contains(s) || (platforms && PLATFORM_SOURCES.contains(s));
            settings.sources.enabled().into_iter().filter(available).collect()
        },
        filters: settings.filters.enabled(),
        plugins: Vec::new(),
    })
}
