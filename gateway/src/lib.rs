//! Caldera's gateway: the process Lavalink clients talk to. It owns everything a client can see
//! and supervises the worker processes that own the audio (ARCHITECTURE: Processes).

pub mod config;
pub mod http;
pub mod metrics;
pub mod players;
pub mod routeplanner;
pub mod stats;
pub mod supervisor;
pub mod systemd;

use config::Loaded;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use supervisor::{Supervisor, SupervisorConfig};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

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
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs the node until SIGTERM/SIGINT: workers first, then the listener, then a clean stop.
pub async fn run(loaded: Loaded) -> Result<(), GatewayError> {
    let config = Arc::new(loaded.config);
    // Uptime counts from here (lavalink-internals §4.1).
    let stats = Arc::new(stats::Stats::new());
    let stop = CancellationToken::new();
    spawn_signal_listener(stop.clone())?;

    // Phase 1: workers. The listener opens only once they said hello.
    let workers = config.caldera.workers;
    let mut supervisor_config = SupervisorConfig::new(workers, config.worker_binary());
    supervisor_config.settings = caldera_protocol::WorkerSettings {
        local_dirs: config.canonical_local_directories(),
        load_timeout_ms: config.caldera.load_timeout_ms,
        player_update_interval_ms: config.lavalink.server.player_update_interval as u64 * 1000,
        track_stuck_threshold_ms: config.lavalink.server.track_stuck_threshold_ms,
        ..Default::default()
    };
    // The config was validated at load, so building the planner cannot fail here.
    if let Ok(Some(planner)) = routeplanner::RoutePlanner::from_config(config.lavalink.server.ratelimit.as_ref()) {
        info!(class = planner.strategy().class(), ips = %planner.ip_count(), "route planner active");
        // Linux binds IPv6 addresses that no interface carries only with ip_nonlocal_bind.
        if planner.is_v6() && std::fs::read_to_string("/proc/sys/net/ipv6/ip_nonlocal_bind").is_ok_and(|v| v.trim() == "0") {
            warn!(
                "route planner: net.ipv6.ip_nonlocal_bind is 0, so addresses of the block that are not configured on an interface cannot be bound; \
                 Hint: `sysctl -w net.ipv6.ip_nonlocal_bind=1` and `ip -6 route add local <block> dev lo` (see README, Route planner)"
            );
        }
        supervisor_config.settings.route_planner = Some(caldera_protocol::RoutePlanning { retry_limit: planner.retry_limit() });
        supervisor_config.route_planner = Some(Arc::new(planner));
    }
    supervisor_config.worker_env = vec![
        ("CALDERA_SANDBOX".into(), config.caldera.worker.sandbox.to_ascii_lowercase().into()),
        ("CALDERA_LOCAL_DIRS".into(), config.canonical_local_directories().join("\n").into()),
    ];
    if let Some(Ok(bytes)) = config.caldera.worker.memory_limit_bytes() {
        supervisor_config.worker_env.push(("CALDERA_WORKER_MEMORY_LIMIT".into(), bytes.to_string().into()));
    }
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let supervisor = Arc::new(Supervisor::start(supervisor_config, events_tx)?);
    let registry = Arc::new(players::Registry::new(supervisor.clone(), config.caldera.players_per_worker));
    let relay = {
        let registry = registry.clone();
        tokio::spawn(async move {
            while let Some(event) = events_rx.recv().await {
                match event {
                    supervisor::WorkerEvent::Player { worker, player, event } => registry.on_event(worker, player, event),
                    supervisor::WorkerEvent::Lost { worker } => registry.on_worker_lost(worker),
                    supervisor::WorkerEvent::Ready { worker } => registry.on_worker_ready(worker),
                }
            }
        })
    };
    let ready = tokio::select! {
        n = supervisor.wait_ready(WORKERS_READY_TIMEOUT) => n,
        _ = stop.cancelled() => {
            supervisor.shutdown(Supervisor::grace()).await;
            return Ok(());
        }
    };
    let pids: Vec<String> = supervisor.workers().iter().filter_map(|w| w.pid).map(|p| p.to_string()).collect();
    if ready < workers {
        error!(ready, wanted = workers, "not every worker started; serving with reduced capacity");
    }
    info!(workers = ready, pids = %pids.join(","), "workers ready");

    // Phase 2: serve.
    let addr = SocketAddr::new(config.server.address, config.server.port);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| GatewayError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(GatewayError::Serve)?;
    // Tests and operators read this line to learn the port (server.port 0 picks one).
    info!("listening on {local}");
    let metrics = if config.metrics.prometheus.enabled {
        match metrics::Metrics::install() {
            Ok(m) => {
                info!(endpoint = %config.metrics.prometheus.endpoint, auth = config.metrics.prometheus.auth, "Prometheus metrics enabled");
                Some(Arc::new(m))
            }
            Err(e) => {
                error!("{e}; serving without metrics");
                None
            }
        }
    } else {
        None
    };
    let state = http::AppState::new(config.clone(), supervisor.clone(), registry.clone(), stats, stop.clone(), metrics);
    let websockets = state.websockets.clone();
    let app = http::router(state);
    // Tell systemd: ready now (workers up, listener open), then watchdog pings and status.
    let notifier = Arc::new(systemd::Notifier::from_env());
    notifier.notify(&format!("READY=1\nSTATUS=serving on {local} with {ready} of {workers} workers"));
    let heartbeat = {
        let (notifier, registry, supervisor) = (notifier.clone(), registry.clone(), supervisor.clone());
        tokio::spawn(async move {
            let every = notifier.watchdog_interval().unwrap_or(Duration::from_secs(10));
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let (players, playing) = registry.player_counts();
                let up = supervisor.workers().iter().filter(|w| w.state == supervisor::WorkerState::Ready).count();
                let mut msg = format!("STATUS={players} players ({playing} playing), {up} workers ready");
                if notifier.watchdog_interval().is_some() {
                    msg.push_str("\nWATCHDOG=1");
                }
                notifier.notify(&msg);
            }
        })
    };
    let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .await;

    // Phase 3: close WebSockets (1001), stop workers, exit.
    info!("shutting down");
    heartbeat.abort();
    notifier.notify("STOPPING=1\nSTATUS=stopping");
    websockets.wait_closed(Duration::from_secs(3)).await;
    supervisor.shutdown(Supervisor::grace()).await;
    relay.abort();
    served.map_err(GatewayError::Serve)?;
    info!("stopped");
    Ok(())
}

fn spawn_signal_listener(stop: CancellationToken) -> Result<(), GatewayError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(GatewayError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(GatewayError::Signals)?;
    tokio::spawn(async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(signal = which, "stop requested");
        stop.cancel();
        // A second signal while stopping means "now".
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        warn!("second stop signal: exiting immediately");
        std::process::exit(1);
    });
    Ok(())
}
