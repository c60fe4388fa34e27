//! Caldera's gateway: the process Lavalink clients talk to. It owns everything a client can see
//! and supervises the worker processes that own the audio (ARCHITECTURE: Processes).
//!
//! Layers, each importing only from those listed before it (a test keeps it so):
//! `config`, `clock`, `systemd`, `telemetry`, `lavalink` (Lavalink's wire types) →
//! `routeplanner` → `supervisor` → `sessions` → `players` → `stats` → `prometheus` → `node`
//! → `http`. Nothing imports `http`; this file assembles the node and serves it.

pub mod config;
pub mod clock;
pub mod systemd;
pub mod telemetry;
pub mod lavalink;
pub mod routeplanner;
pub mod supervisor;
pub mod sessions;
pub mod players;
pub mod stats;
pub mod prometheus;
pub mod node;
pub mod http;

use config::Settings;
use node::{Node, Phase};
use std::net::SocketAddr;
use std::time::Duration;
use tracing::{error, info};

/// How long startup waits for every worker's hello before serving with those it has.
const WORKERS_READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Supervisor(#[from] supervisor::SupervisorError),
    #[error("cannot listen on {addr}: {source}; Hint: is another node using the port? set server.port or SERVER_PORT")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Runs the node until SIGTERM/SIGINT: workers first, then the listener, then a clean stop.
pub async fn run(settings: Settings) -> Result<(), GatewayError> {
    let node = Node::start(settings)?;
    let workers = node.settings.workers;
    let Some(ready) = node.wait_for_workers(WORKERS_READY_TIMEOUT).await else {
        node.set_phase(Phase::Draining);
        node.shutdown().await;
        return Ok(());
    };
    let pids: Vec<String> = node.supervisor.workers().iter().filter_map(|w| w.pid).map(|p| p.to_string()).collect();
    if ready < workers {
        error!(ready, wanted = workers, "not every worker started; serving with reduced capacity");
    }
    info!(workers = ready, pids = %pids.join(","), "workers ready");

    let addr = node.settings.listen;
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(source) => {
            node.shutdown().await;
            return Err(GatewayError::Bind { addr, source });
        }
    };
    let local = listener.local_addr().map_err(GatewayError::Serve)?;
    // Tests and operators read this line to learn the port (server.port 0 picks one).
    info!("listening on {local}");
    let state = http::AppState::new(node.clone());
    let websockets = state.websockets.clone();
    let app = http::router(state);
    node.serving(local);
    node.start_heartbeat();
    http::serve::serve(listener, app, node.stop.clone()).await;

    // Close WebSockets (1001), stop workers and tasks, exit.
    node.set_phase(Phase::Draining);
    websockets.wait_closed(Duration::from_secs(3)).await;
    node.shutdown().await;
    info!("stopped");
    Ok(())
}
