//! caldera-worker as a library (STYLE §5): `run(config)` is the whole worker; the binary is a thin
//! `main`. The worker connects to its gateway, proves it was spawned by it, then serves requests.

mod crash;
pub mod dsp;
mod ipc;
pub mod net;

pub use ipc::{serve_connection, IpcError};
mod player;
mod process;
mod routes;
pub mod sandbox;
pub mod sources;

use std::path::PathBuf;
use std::sync::Arc;

/// What a worker runs with: the gateway's settings (sent after the hello) and the directories the
/// local source may read (from the environment, which the sandbox needed before connecting).
#[derive(Debug, Clone)]
pub struct Settings {
    pub ipc: caldera_protocol::WorkerSettings,
    pub local_dirs: Arc<[String]>,
}

impl std::ops::Deref for Settings {
    type Target = caldera_protocol::WorkerSettings;

    fn deref(&self) -> &Self::Target {
        &self.ipc
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("environment variable {0} is missing; Hint: caldera-worker is started by the caldera gateway, not by hand")]
    MissingEnv(&'static str),
    #[error("environment variable {name} has an invalid value `{value}`")]
    InvalidEnv { name: &'static str, value: String },
    #[error("the gateway (pid {expected}) is not our parent (parent is {actual}); exiting")]
    ParentGone { expected: i32, actual: i32 },
    #[error("cannot set the parent-death signal: {0}")]
    ParentDeathSignal(nix::Error),
    #[error("cannot install the crash handlers: {0}")]
    CrashHandlers(std::io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Ipc(#[from] ipc::IpcError),
    #[error("sandbox: {0}")]
    Sandbox(#[from] sandbox::SandboxError),
}

/// What the gateway hands a worker through its (otherwise empty) environment.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub socket: PathBuf,
    pub token: String,
    pub worker_id: u32,
    pub gateway_pid: i32,
    pub sandbox: sandbox::Mode,
    /// Directories the local source reads (the sandbox lets the worker read them).
    pub local_dirs: Vec<String>,
    /// The crash-evidence pipe's write end ([`crash`]), when the gateway gave one.
    pub evidence_fd: Option<i32>,
    /// How long to play on when the gateway dies without handing over, waiting for the next
    /// one to adopt this worker; zero: die with it.
    pub orphan_wait: std::time::Duration,
}

impl WorkerConfig {
    pub fn from_env() -> Result<Self, WorkerError> {
        fn get(name: &'static str) -> Result<String, WorkerError> {
            std::env::var(name).map_err(|_| WorkerError::MissingEnv(name))
        }
        fn parse<T: std::str::FromStr>(name: &'static str) -> Result<T, WorkerError> {
            let value = get(name)?;
            value.parse().map_err(|_| WorkerError::InvalidEnv { name, value })
        }
        Ok(Self {
            socket: get("CALDERA_IPC_SOCKET")?.into(),
            token: get("CALDERA_WORKER_TOKEN")?,
            worker_id: parse("CALDERA_WORKER_ID")?,
            gateway_pid: parse("CALDERA_GATEWAY_PID")?,
            sandbox: match std::env::var("CALDERA_SANDBOX") {
                Ok(v) => sandbox::Mode::parse(&v).ok_or(WorkerError::InvalidEnv { name: "CALDERA_SANDBOX", value: v })?,
                Err(_) => sandbox::Mode::Strict,
            },
            local_dirs: std::env::var("CALDERA_LOCAL_DIRS")
                .map(|v| v.split('\n').filter(|d| !d.is_empty()).map(str::to_string).collect())
                .unwrap_or_default(),
            orphan_wait: match std::env::var("CALDERA_ORPHAN_WAIT_MS") {
                Ok(_) => std::time::Duration::from_millis(parse("CALDERA_ORPHAN_WAIT_MS")?),
                Err(_) => std::time::Duration::ZERO,
            },
            evidence_fd: match std::env::var(caldera_protocol::evidence::EVIDENCE_FD_ENV) {
                Ok(v) => Some(v.parse().map_err(|_| WorkerError::InvalidEnv { name: caldera_protocol::evidence::EVIDENCE_FD_ENV, value: v })?),
                Err(_) => None,
            },
        })
    }
}

/// Threads for blocking work: loads and track opens beyond this wait their turn.
const MAX_BLOCKING_THREADS: usize = 16;

/// Runs the worker to completion. Process-wide setup happens here, before the runtime starts any
/// thread (STYLE §6).
pub fn run(config: WorkerConfig) -> Result<(), WorkerError> {
    run_with(config, |_| {})
}

/// [`run`], calling `confined` on the main thread once the sandbox is applied and before the
/// runtime starts: the tests' probe worker uses it to try, from inside a worker the gateway
/// spawned, what the sandbox must refuse.
pub fn run_with(config: WorkerConfig, confined: impl FnOnce(&sandbox::Report)) -> Result<(), WorkerError> {
    process::check_parent(config.gateway_pid, config.orphan_wait.is_zero())?;
    process::limit_malloc_arenas();
    if let Some(fd) = config.evidence_fd {
        crash::install(fd).map_err(WorkerError::CrashHandlers)?;
    }
    let keep: Vec<i32> = config.evidence_fd.into_iter().collect();
    let report = sandbox::apply(config.sandbox, &sandbox::readable_paths(&config.local_dirs), &keep)?;
    confined(&report);
    match config.sandbox {
        sandbox::Mode::Off => tracing::warn!("SANDBOX OFF: this worker parses untrusted media without any confinement"),
        mode => tracing::info!(?mode, closed_fds = report.closed_fds, landlock = %report.landlock, no_new_privs = report.no_new_privs, seccomp = report.seccomp, "sandbox applied"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Blocking work (opening tracks, probing, name lookups) shares a bounded set of threads.
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .thread_name(format!("caldera-worker-{}", config.worker_id))
        .build()
        .map_err(WorkerError::Runtime)?;
    let span = tracing::info_span!("worker", id = config.worker_id);
    runtime.block_on(tracing::Instrument::instrument(ipc::serve(config), span))?;
    Ok(())
}
