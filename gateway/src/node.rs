//! The node: every part of the gateway, assembled once, with the tasks that connect them and the
//! phase it is in. `lib.rs` builds it; the HTTP layer serves it.
//!
//! Every task the node starts is owned by its tracker, instrumented with a span, and awaited at
//! shutdown (STYLE §8).

use crate::config::Settings;
use crate::lavalink::{self, Op};
use crate::players::Players;
use crate::prometheus::Prometheus;
use crate::routeplanner::{self, RoutePlanner};
use crate::sessions::Sessions;
use crate::stats::Stats;
use crate::supervisor::{Adoption, Supervisor, SupervisorConfig, SupervisorError, WorkerEvent, WorkerState, EVENT_QUEUE};
use crate::systemd::Notifier;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument};

/// Where the node is in its life; logged, and told to systemd as `STATUS=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the configuration, creating the parts.
    Setup,
    /// Waiting for the workers' hellos.
    Workers,
    Serving,
    /// Stopping: no new requests, sockets closing, workers stopping.
    Draining,
    Stopped,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Setup => "setup",
            Self::Workers => "starting workers",
            Self::Serving => "serving",
            Self::Draining => "draining",
            Self::Stopped => "stopped",
        }
    }
}

pub struct Node {
    pub settings: Arc<Settings>,
    pub supervisor: Arc<Supervisor>,
    pub sessions: Arc<Sessions>,
    pub players: Arc<Players>,
    pub stats: Stats,
    /// Prometheus, when `metrics.prometheus.enabled`.
    pub prometheus: Option<Prometheus>,
    /// Cancelled when the node is to stop.
    pub stop: CancellationToken,
    /// Notified on SIGUSR2: hand over to the binary now on disk (a planned upgrade).
    pub upgrade: Notify,
    /// Cancelled when this node hands over to the next gateway: client sockets close (1001)
    /// and their sessions wait for the resume there.
    pub handing_over: CancellationToken,
    /// Cancelled once everything but the node's own tasks has stopped.
    finished: CancellationToken,
    tasks: TaskTracker,
    phase: Mutex<Phase>,
    notifier: Notifier,
}

impl Node {
    /// Builds every part and starts the tasks that connect them: the relay of worker events to
    /// the players, the reaper of removed sessions' players, the signal listener. Workers start
    /// spawning at once; see [`Self::wait_for_workers`].
    /// `adoption`: the previous gateway's IPC socket and workers (a handover).
    pub fn start(settings: Settings, adoption: Option<Adoption>) -> Result<Arc<Self>, SupervisorError> {
        let settings = Arc::new(settings);
        let planner = settings.route_planner.as_ref().map(|r| Arc::new(RoutePlanner::new(r)));
        if let Some(planner) = &planner {
            info!(class = routeplanner::class(planner.strategy()), ips = %planner.ip_count(), "route planner active");
            // Linux binds IPv6 addresses that no interface carries only with ip_nonlocal_bind.
            if planner.is_v6() && std::fs::read_to_string("/proc/sys/net/ipv6/ip_nonlocal_bind").is_ok_and(|v| v.trim() == "0") {
                warn!(
                    "route planner: net.ipv6.ip_nonlocal_bind is 0, so addresses of the block that are not configured on an interface cannot be bound; \
                     Hint: `sysctl -w net.ipv6.ip_nonlocal_bind=1` and `ip -6 route add local <block> dev lo` (see README, Route planner)"
                );
            }
        }
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let supervisor = Arc::new(Supervisor::start(SupervisorConfig::new(&settings, planner), events_tx, adoption)?);
        let sessions = Sessions::new();
        let players = Arc::new(Players::new(supervisor.clone(), sessions.clone(), &settings));
        let prometheus = settings.prometheus.as_ref().and_then(|p| match Prometheus::install() {
            Ok(m) => {
                info!(endpoint = %p.endpoint, auth = p.auth, "Prometheus metrics enabled");
                Some(m)
            }
            Err(e) => {
                error!("{e}; serving without metrics");
                None
            }
        });
        let node = Arc::new(Self {
            settings,
            supervisor,
            sessions,
            players,
            stats: Stats::new(),
            prometheus,
            stop: CancellationToken::new(),
            upgrade: Notify::new(),
            handing_over: CancellationToken::new(),
            finished: CancellationToken::new(),
            tasks: TaskTracker::new(),
            phase: Mutex::new(Phase::Setup),
            notifier: Notifier::from_env(),
        });
        node.spawn("relay", relay(node.players.clone(), events_rx));
        let (players, sessions) = (node.players.clone(), node.sessions.clone());
        node.spawn("session_reaper", async move {
            loop {
                for id in sessions.removed().await {
                    players.destroy_session(&id);
                }
            }
        });
        node.spawn("retire", retire_emptied(node.players.clone(), node.supervisor.clone()));
        // Not cancelled with `stop`: a second signal while stopping must still be heard.
        let signals = node.clone();
        node.tasks.spawn(async move { listen_for_signals(&signals).await }.instrument(info_span!("task", name = "signals")));
        Ok(node)
    }

    /// Starts a task owned by the node: instrumented, cancelled when the node stops, awaited
    /// at shutdown.
    pub fn spawn(&self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tasks.spawn(
            async move {
                tokio::select! {
                    _ = task => {}
                    _ = stop.cancelled() => {}
                }
            }
            .instrument(info_span!("task", name)),
        );
    }

    /// Moves to `phase`: logged, and told to systemd (`STOPPING=1` when draining).
    pub fn set_phase(&self, phase: Phase) {
        self.enter(phase);
        let status = format!("STATUS={}", phase.as_str());
        self.notifier.notify(&if phase == Phase::Draining { format!("STOPPING=1\n{status}") } else { status });
    }

    /// Serving on `local`: systemd hears `READY=1` now, workers up and the listener open.
    pub fn serving(&self, local: std::net::SocketAddr) {
        self.enter(Phase::Serving);
        let ready = self.supervisor.workers().iter().filter(|w| w.state == WorkerState::Ready).count();
        self.notifier.notify(&format!("READY=1\nSTATUS=serving on {local} with {ready} of {} workers", self.settings.workers));
    }

    /// Handed over to the gateway `pid`: systemd follows it as the main process from now on.
    pub fn handed_over(&self, pid: u32) {
        self.notifier.notify(&format!("MAINPID={pid}\nSTATUS=handed over to pid {pid}"));
    }

    fn enter(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
        info!(phase = phase.as_str(), "node phase");
    }

    pub fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn status_line(&self) -> String {
        let (players, playing) = self.players.counts();
        let ready = self.supervisor.workers().iter().filter(|w| w.state == WorkerState::Ready).count();
        format!("{players} players ({playing} playing), {ready} of {} workers ready", self.settings.workers)
    }

    /// Waits until every worker slot said hello or failed once (bounded). Returns how many are
    /// ready, or `None` if the node was asked to stop meanwhile.
    pub async fn wait_for_workers(&self, timeout: Duration) -> Option<usize> {
        self.set_phase(Phase::Workers);
        tokio::select! {
            n = self.supervisor.wait_ready(timeout) => Some(n),
            _ = self.stop.cancelled() => None,
        }
    }

    /// Systemd's watchdog and a status line, from the async runtime, while serving.
    pub fn start_heartbeat(self: &Arc<Self>) {
        let node = self.clone();
        self.spawn("heartbeat", async move {
            let every = node.notifier.watchdog_interval().unwrap_or(Duration::from_secs(10));
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let mut msg = format!("STATUS={}: {}", node.phase().as_str(), node.status_line());
                if node.notifier.watchdog_interval().is_some() {
                    msg.push_str("\nWATCHDOG=1");
                }
                node.notifier.notify(&msg);
                release_free_memory();
            }
        });
    }

    /// The stats op for a session: the node's figures and that session's frameStats.
    pub fn stats_op(&self, session: &str) -> Op {
        Op::Stats(self.stats.snapshot(&self.supervisor, &self.players).wire(self.players.frame_stats(session)))
    }

    /// `GET /v4/stats`: without frameStats (no session), as Lavalink.
    pub fn stats(&self) -> lavalink::Stats {
        self.stats.snapshot(&self.supervisor, &self.players).wire(None)
    }

    /// The Prometheus text, when enabled.
    pub fn render_metrics(&self) -> Option<String> {
        let prometheus = self.prometheus.as_ref()?;
        let snapshot = self.stats.snapshot(&self.supervisor, &self.players);
        Some(prometheus.render(&snapshot, &self.supervisor, &self.players, &self.sessions, self.settings.workers))
    }

    /// Stops the workers and every task, and waits for them.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.supervisor.shutdown(Supervisor::grace()).await;
        self.sessions.shutdown().await;
        self.finished.cancel();
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await.is_err() {
            warn!("some node tasks did not stop in time");
        }
        self.set_phase(Phase::Stopped);
    }
}

/// Worker events, in order, to the player registry. The queue is bounded: when the registry
/// falls behind, the workers' readers wait.
async fn relay(players: Arc<Players>, mut events: mpsc::Receiver<WorkerEvent>) {
    while let Some(event) = events.recv().await {
        match event {
            WorkerEvent::Player { worker, player, event } => players.on_event(worker, player, event),
            WorkerEvent::Lost { worker, crashed, culprit } => players.on_worker_lost(worker, crashed, culprit),
            WorkerEvent::Ready { worker } => players.on_worker_ready(worker),
            WorkerEvent::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Workers of a previous build (adopted at an upgrade) take no new players and stop once their
/// last one is gone.
async fn retire_emptied(players: Arc<Players>, supervisor: Arc<Supervisor>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let retiring: Vec<u32> = supervisor.workers().iter().filter(|w| w.retiring() && w.state == WorkerState::Ready).map(|w| w.worker_id).collect();
        if retiring.is_empty() {
            continue;
        }
        let figures = players.worker_figures();
        for id in retiring.into_iter().filter(|id| figures.get(id).is_none_or(|f| f.players == 0)) {
            supervisor.retire(id);
        }
    }
}

/// SIGTERM/SIGINT stop the node; a second one while stopping exits at once. SIGUSR2 asks for
/// a handover to the binary now on disk.
async fn listen_for_signals(node: &Node) {
    use tokio::signal::unix::{signal, SignalKind};
    let (stop, finished) = (&node.stop, &node.finished);
    let (Ok(mut term), Ok(mut int), Ok(mut usr2)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::user_defined2())) else {
        error!("cannot install signal handlers; stop the node with SIGKILL");
        return;
    };
    let which = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = usr2.recv() => {
                info!("SIGUSR2: handing over to the binary now on disk");
                node.upgrade.notify_one();
            }
            _ = finished.cancelled() => return,
        }
    };
    info!(signal = which, "stop requested");
    stop.cancel();
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
        _ = finished.cancelled() => return,
    }
    warn!("second stop signal: exiting immediately");
    std::process::exit(1);
}

/// Hands the allocator's free memory back to the system. glibc keeps freed memory for reuse:
/// after clients pushed large bodies (1 MB `userData` on 150 players took the gateway from
/// 25 to 324 MiB), it stayed at 286 MiB with no player left. Trimming on the heartbeat returns
/// it (measured in BENCHMARKS.md); the walk over free chunks takes well under a millisecond at idle.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
