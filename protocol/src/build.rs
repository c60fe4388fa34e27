//! Build identity, stamped by `build.rs`. Both processes compare these at the hello.

/// Bumped whenever a message changes incompatibly. Enums are append-only, so most additions do not
/// need a bump; a gateway and worker of different versions refuse each other.
pub const PROTOCOL_VERSION: u32 = 6;

/// Crate version and git commit of this build, e.g. `0.1.0+3f2a9c1e0b7d`.
pub const BUILD_ID: &str = concat!(env!("CARGO_PKG_VERSION"), "+", env!("CALDERA_GIT_COMMIT"));

/// The compiler that built this binary, e.g. `rustc 1.95.0 (59807616e 2026-04-14)`.
pub const RUSTC_VERSION: &str = env!("CALDERA_RUSTC_VERSION");

pub const GIT_COMMIT: &str = env!("CALDERA_GIT_COMMIT");
pub const GIT_BRANCH: &str = env!("CALDERA_GIT_BRANCH");

/// Milliseconds since the Unix epoch (0 when unknown).
pub fn git_commit_time_ms() -> i64 {
    env!("CALDERA_GIT_COMMIT_TIME").parse().unwrap_or(0)
}

/// Milliseconds since the Unix epoch when this crate was built.
pub fn build_time_ms() -> i64 {
    env!("CALDERA_BUILD_TIME").parse().unwrap_or(0)
}
