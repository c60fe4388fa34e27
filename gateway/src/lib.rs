//! Caldera's gateway: the process Lavalink clients talk to. It owns everything a client can see
//! and supervises the worker processes that own the audio (ARCHITECTURE: Processes).
//!
//! Layers, each importing only from those listed before it (a test keeps it so):
//! `config`, `clock`, `systemd`, `telemetry`, `lavalink` (Lavalink's wire types) →
//! `routeplanner` → `supervisor` → `sessions` → `players` → `stats` → `prometheus` → `node`
//! → `handover` → `http`. Nothing imports `http`; this file assembles the node and serves it.

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
pub mod handover;
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
    #[error("taking over from the previous gateway failed: {0}")]
    Handover(#[from] handover::HandoverError),
}

/// Runs the node until SIGTERM/SIGINT: workers first, then the listener, then a clean stop.
/// Started by a gateway handing over, it takes that one's listeners, workers, sessions and
/// players instead; on SIGUSR2 it hands over to the binary now on disk itself.
pub async fn run(settings: Settings) -> Result<(), GatewayError> {
    handover::remember_binary();
    let inherited = tokio::task::spawn_blocking(handover::Inheritance::receive)
        .await
        .map_err(|e| GatewayError::Handover(handover::HandoverError::Channel(std::io::Error::other(e))))??;
    // Workers that outlive their gateway wait for the next one in the same runtime directory.
    let outlive = !settings.orphan_wait.is_zero();
    let inherited = match inherited {
        None if outlive => handover::recover(&supervisor::RuntimeDir::base()),
        i => i,
    };
    let (node, predecessor) = match inherited {
        Some(handover::Inheritance { adoption, sessions, players, failing, uptime_ms, predecessor }) => {
            let adopted: Vec<u32> = adoption.workers.iter().map(|w| w.id).collect();
            let node = Node::start(settings, Some(adoption))?;
            node.sessions.restore(sessions);
            node.players.restore(players, &adopted);
            if let Some(planner) = node.supervisor.route_planner() {
                planner.restore_failing(failing);
            }
            node.stats.carry_uptime(uptime_ms);
            (node, predecessor)
        }
        None => (Node::start(settings, None)?, None),
    };
    if outlive {
        node.spawn("persist", handover::persist(node.clone()));
    }
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
    let listener = match predecessor.as_ref().map(|p| p.listener.try_clone()) {
        Some(l) => l.and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        }),
        None => tokio::net::TcpListener::bind(addr).await,
    };
    let listener = match listener {
        Ok(l) => l,
        Err(source) => {
            node.shutdown().await;
            return Err(GatewayError::Bind { addr, source });
        }
    };
    let local = listener.local_addr().map_err(GatewayError::Serve)?;
    // Kept to hand over: the listener itself moves into the server.
    let tcp = std::os::fd::AsFd::as_fd(&listener).try_clone_to_owned().map_err(GatewayError::Serve)?;
    // Tests and operators read this line to learn the port (server.port 0 picks one).
    info!("listening on {local}");
    let state = http::AppState::new(node.clone());
    let websockets = state.websockets.clone();
    let app = http::router(state);
    node.serving(local);
    node.start_heartbeat();
    if let Some(p) = predecessor {
        info!(from = p.pid, "took over from the previous gateway");
        p.serving();
    }
    let accepting = node.stop.child_token();
    let mut server = tokio::spawn(http::serve::serve(listener, app, accepting.clone()));
    loop {
        tokio::select! {
            _ = &mut server => break,
            _ = node.upgrade.notified() => {
                let close_clients = async {
                    accepting.cancel();
                    let _ = (&mut server).await;
                    websockets.wait_closed(Duration::from_secs(3)).await;
                };
                match handover::hand_over(&node, &tcp, close_clients).await {
                    Ok(pid) => {
                        node.handed_over(pid);
                        info!(pid, "handed over to the new gateway; exiting");
                        std::process::exit(0);
                    }
                    Err((e, false)) => error!("handover failed, serving on: {e}"),
                    Err((e, true)) => {
                        error!("handover failed after the workers moved on: {e}; exiting");
                        std::process::exit(1);
                    }
                }
            }
        }
    }

    // Close WebSockets (1001), stop workers and tasks, exit.
    node.set_phase(Phase::Draining);
    websockets.wait_closed(Duration::from_secs(3)).await;
    node.shutdown().await;
    info!("stopped");
    Ok(())
}
