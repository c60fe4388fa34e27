//! One worker slot: spawn → hello → serve (ping, read) → exit → backoff → spawn again.

use super::ipc::WorkerConn;
use super::spawn::{self, Evidence, SpawnedChild};
use super::{resolver, Outbound, Shared, WorkerEvent};
use crate::routeplanner::Marked;
use crate::telemetry;
use caldera_protocol::{build, ExceptionSeverity, GatewayHello, ResourceReport, Severity, ToGateway, ToWorker, TrackException};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// How long a worker may take to exit after `Shutdown` before it is killed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A worker that stayed up this long is considered healthy again: its backoff resets.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// Most messages a worker may send in one second: a generous ceiling (a full worker reports a
/// few hundred per second) past which it is flooding, and is killed.
const MAX_MESSAGES_PER_SECOND: u64 = 20_000;
/// Most bytes a worker may send in one second.
const MAX_BYTES_PER_SECOND: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Starting,
    Ready,
    /// Waiting before the next respawn.
    Backoff,
    Stopped,
}

impl WorkerState {
    /// The name `/v4/caldera/workers` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Backoff => "backoff",
            Self::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkerStatus {
    pub worker_id: u32,
    pub pid: Option<u32>,
    pub state: WorkerState,
    /// Times this slot's worker exited or was killed (not counting shutdown).
    pub restarts: u64,
    /// When the current worker said hello.
    pub ready_since: Option<Instant>,
    pub last_ping_rtt: Option<Duration>,
    /// Pings sent and not answered yet.
    pub missed_pings: u64,
    pub resources: Option<ResourceReport>,
    /// Why this slot's previous worker process ended; kept once it is respawned, so a slot with
    /// restarts tells why.
    pub last_exit: Option<String>,
    /// IPC traffic of the current worker process (reset with each spawn).
    pub ipc: Arc<IpcCounters>,
    /// The build the current worker said hello from (another one's: adopted at an upgrade).
    pub build_id: Option<String>,
}

impl WorkerStatus {
    /// A worker of another build, adopted at an upgrade: it takes no new players, and stops
    /// once its last one is gone.
    pub fn retiring(&self) -> bool {
        self.build_id.as_deref().is_some_and(|b| b != build::BUILD_ID)
    }
}

/// IPC traffic counters of one worker connection.
#[derive(Debug, Default)]
pub struct IpcCounters {
    pub messages_in: std::sync::atomic::AtomicU64,
    pub bytes_in: std::sync::atomic::AtomicU64,
    pub messages_out: std::sync::atomic::AtomicU64,
    pub bytes_out: std::sync::atomic::AtomicU64,
}

impl WorkerStatus {
    pub fn new(worker_id: u32) -> Self {
        Self {
            worker_id,
            pid: None,
            state: WorkerState::Starting,
            restarts: 0,
            ready_since: None,
            last_ping_rtt: None,
            missed_pings: 0,
            resources: None,
            last_exit: None,
            ipc: Arc::default(),
            build_id: None,
        }
    }
}

/// Exponential backoff between respawns: 500 ms doubling to a 30 s cap, reset once healthy.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const START: Duration = Duration::from_millis(500);
    const CAP: Duration = Duration::from_secs(30);

    pub fn new() -> Self {
        Self { next: Self::START }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::CAP);
        d
    }

    pub fn reset(&mut self) {
        self.next = Self::START;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

enum Outcome {
    /// The gateway is shutting down; the worker has been stopped.
    Shutdown,
    /// The worker went to the next gateway (a handover); it plays on.
    HandedOver,
    /// The worker is gone; `healthy` says whether it ran long enough to reset the backoff.
    Ended { healthy: bool },
}

/// A worker the previous gateway handed over: its pid, the token it will say hello with, and
/// its crash-evidence pipe.
#[derive(Debug)]
pub struct Adopted {
    pub pid: u32,
    pub token: String,
    pub evidence: Option<std::os::fd::OwnedFd>,
    /// The build it said hello from.
    pub build_id: String,
}

/// `adopted`: the worker the previous gateway handed over for this slot, and where its
/// connection arrives (its token is registered before any connection is accepted).
pub async fn run(shared: Arc<Shared>, id: u32, cancel: CancellationToken, mut adopted: Option<(Adopted, ConnRx)>) {
    let mut backoff = Backoff::new();
    while !cancel.is_cancelled() {
        let outcome = match adopted.take() {
            Some(a) => adopt(&shared, id, a, &cancel).await,
            None => run_once(&shared, id, &cancel).await,
        };
        match outcome {
            Outcome::Shutdown | Outcome::HandedOver => break,
            // A worker of the previous build, retired once empty: the slot ends with it.
            Outcome::Ended { .. } if shared.is_retired(id) => {
                info!("retired worker stopped; its slot ends");
                break;
            }
            Outcome::Ended { healthy } => {
                if healthy {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                shared.update(id, |s| {
                    s.state = WorkerState::Backoff;
                    s.restarts += 1;
                    s.pid = None;
                    s.ready_since = None;
                });
                info!(delay_ms = delay.as_millis() as u64, "respawning worker after backoff");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    shared.set_outbound(id, None);
    shared.update(id, |s| {
        s.state = WorkerState::Stopped;
        s.pid = None;
    });
}

/// Why the gateway ended a worker itself.
#[derive(Debug, Clone, Copy)]
enum Kill {
    MissedPings,
    Flooding,
    QueueFull,
}

impl Kill {
    /// As `lastExit` tells it.
    fn describe(self) -> &'static str {
        match self {
            Self::MissedPings => "killed: missed pings",
            Self::Flooding => "killed: flooding its IPC connection",
            Self::QueueFull => "killed: not reading its command queue",
        }
    }

    fn metric(self) -> &'static str {
        match self {
            Self::MissedPings => "missed_pings",
            Self::Flooding => "flooding",
            Self::QueueFull => "queue_full",
        }
    }
}

/// How a worker's connection ended, seen from its reader.
struct ReadEnd {
    why: String,
    kill: Option<Kill>,
    /// The worker's last frame was `HandedOver`.
    handed_over: bool,
}

async fn run_once(shared: &Arc<Shared>, id: u32, cancel: &CancellationToken) -> Outcome {
    shared.update(id, |s| s.state = WorkerState::Starting);
    let (token, conn_rx) = shared.pending.register();
    let child = match shared.spawner.spawn(shared.spawn_spec(id, &token)).await {
        Ok(c) => c,
        Err(e) => {
            shared.pending.forget(&token);
            error!(error = %e, binary = %shared.config.worker_binary.display(), "cannot start worker process");
            shared.update(id, |s| s.last_exit = Some(format!("spawn failed: {e}")));
            return Outcome::Ended { healthy: false };
        }
    };
    let SpawnedChild { pid, exited, evidence, .. } = child;
    match connect(shared, id, pid, (token, conn_rx), exited, cancel).await {
        Ok((conn, exited)) => serve(shared, id, pid, conn, (exited, evidence), cancel).await,
        Err(outcome) => outcome,
    }
}

/// Takes a worker the previous gateway handed over: it connects with the token that gateway
/// gave it; its exit is watched through a pidfd (it is not our child). One that does not come
/// is killed, and its players are restored like those of any worker that went away.
async fn adopt(shared: &Arc<Shared>, id: u32, (adopted, conn_rx): (Adopted, ConnRx), cancel: &CancellationToken) -> Outcome {
    let Adopted { pid, token, evidence, .. } = adopted;
    shared.update(id, |s| s.state = WorkerState::Starting);
    let evidence = evidence.map(Evidence::from_fd);
    let connected = match spawn::watch(pid) {
        Ok(exited) => connect(shared, id, pid, (token, conn_rx), exited, cancel).await,
        Err(e) => {
            shared.pending.forget(&token);
            warn!(pid, error = %e, "the handed-over worker is gone");
            Err(Outcome::Ended { healthy: false })
        }
    };
    match connected {
        Ok((conn, exited)) => {
            info!(pid, "adopted a worker of the previous gateway");
            serve(shared, id, pid, conn, (exited, evidence), cancel).await
        }
        Err(outcome) => {
            spawn::kill(pid);
            shared.worker_lost(id, false, None).await;
            outcome
        }
    }
}

type Exited = tokio::sync::oneshot::Receiver<std::process::ExitStatus>;
pub type ConnRx = tokio::sync::oneshot::Receiver<WorkerConn>;

/// Waits for the hello of the worker `pid` (presenting `token`), or its exit, or the stop.
async fn connect(
    shared: &Arc<Shared>,
    id: u32,
    pid: u32,
    (token, conn_rx): (String, ConnRx),
    mut exited: Exited,
    cancel: &CancellationToken,
) -> Result<(WorkerConn, Exited), Outcome> {
    shared.update(id, |s| s.pid = Some(pid));

    let conn = tokio::select! {
        r = tokio::time::timeout(shared.config.hello_timeout, conn_rx) => match r {
            Ok(Ok(conn)) => Some(conn),
            _ => {
                warn!(pid, timeout = ?shared.config.hello_timeout, "worker did not say hello in time; killing it");
                None
            }
        },
        status = &mut exited => {
            shared.pending.forget(&token);
            let why = status.map(|s| spawn::describe(&s)).unwrap_or_else(|_| "unknown exit".into());
            error!(pid, exit = %why, "worker exited before saying hello");
            shared.update(id, |s| s.last_exit = Some(why));
            return Err(Outcome::Ended { healthy: false });
        }
        _ = cancel.cancelled() => None,
    };
    shared.pending.forget(&token);
    let Some(conn) = conn else {
        spawn::kill(pid);
        let _ = exited.await;
        if cancel.is_cancelled() {
            return Err(Outcome::Shutdown);
        }
        let timeout = shared.config.hello_timeout;
        shared.update(id, |s| s.last_exit = Some(format!("killed: no hello within {timeout:?}")));
        return Err(Outcome::Ended { healthy: false });
    };
    if conn.peer_pid != Some(pid as i32) {
        // The token leaked to another process: refuse it and start over with a fresh one.
        error!(pid, peer_pid = ?conn.peer_pid, "IPC hello with this worker's token came from another process");
        spawn::kill(pid);
        let _ = exited.await;
        return Err(Outcome::Ended { healthy: false });
    }
    shared.connected(id, Some((pid, token)));
    Ok((conn, exited))
}

/// Ping bookkeeping shared between the pinger and the reader.
#[derive(Debug)]
struct PingState {
    sent_seq: u64,
    sent_at: Instant,
    answered_seq: u64,
    answered_at: Instant,
}

async fn serve(
    shared: &Arc<Shared>,
    id: u32,
    pid: u32,
    conn: WorkerConn,
    (mut exited, mut evidence): (Exited, Option<Evidence>),
    cancel: &CancellationToken,
) -> Outcome {
    let WorkerConn { hello, reader, mut writer, .. } = conn;
    let reply = ToWorker::Hello(GatewayHello {
        protocol_version: build::PROTOCOL_VERSION,
        build_id: build::BUILD_ID.into(),
        worker_id: id,
        pid: std::process::id(),
    });
    if let Err(e) = writer.send(&reply).await {
        warn!(pid, error = %e, "could not answer the worker's hello");
    }
    if let Err(e) = writer.send(&ToWorker::Configure(shared.config.settings.clone())).await {
        warn!(pid, error = %e, "could not send settings to the worker");
    }
    let started = Instant::now();
    info!(pid, worker_pid = hello.pid, "worker ready");
    let (outbound, mut rx) = Outbound::new();
    shared.set_outbound(id, Some(outbound.clone()));
    let ipc = Arc::new(IpcCounters::default());
    shared.update(id, |s| {
        s.state = WorkerState::Ready;
        s.ready_since = Some(started);
        s.missed_pings = 0;
        s.ipc = ipc.clone();
        s.build_id = Some(hello.build_id.clone());
    });
    let _ = shared.player_events.send(WorkerEvent::Ready { worker: id }).await;

    let pings = Arc::new(Mutex::new(PingState {
        sent_seq: 0,
        sent_at: started,
        answered_seq: 0,
        answered_at: started,
    }));
    // Writer and reader are their own tasks (the frame reader is not cancel-safe); both are
    // aborted when this function returns.
    let counters = ipc.clone();
    let writer_task = AbortOnDrop(tokio::spawn(async move {
        while let Some(queued) = rx.recv().await {
            if writer.send_encoded(&queued.frame).await.is_err() {
                break;
            }
            counters.messages_out.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            counters.bytes_out.fetch_add(queued.frame.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        let _ = writer.shutdown().await;
    }));
    let mut reader_task = AbortOnDrop(tokio::spawn(read_loop(shared.clone(), id, reader, pings.clone(), ipc)));

    let mut ticker = tokio::time::interval(shared.config.ping_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Why the gateway ended this worker itself, if it did (for `last_exit`).
    let mut killed_for: Option<Kill> = None;
    let mut kill = |why: Kill| {
        killed_for = Some(why);
        telemetry::record_worker_killed(why.metric());
        spawn::kill(pid);
        Outcome::Ended { healthy: false }
    };
    let outcome = loop {
        tokio::select! {
            _ = ticker.tick() => {
                let (silent_for, unanswered, seq) = {
                    let mut p = pings.lock().unwrap_or_else(|e| e.into_inner());
                    let silent_for = p.answered_at.elapsed();
                    p.sent_seq += 1;
                    p.sent_at = Instant::now();
                    (silent_for, p.sent_seq - 1 - p.answered_seq, p.sent_seq)
                };
                shared.update(id, |s| s.missed_pings = unanswered);
                if silent_for > shared.config.ping_timeout {
                    error!(pid, silent_ms = silent_for.as_millis() as u64, "worker stopped answering pings; killing it");
                    break kill(Kill::MissedPings);
                }
                // A full queue marks the worker jammed (the branch below kills it).
                let _ = outbound.try_send(&ToWorker::Ping { seq });
            }
            _ = outbound.jammed.cancelled() => {
                error!(pid, "worker stopped taking commands (its queue is full); killing it so its players are restored");
                break kill(Kill::QueueFull);
            }
            r = &mut reader_task.0 => {
                let end = r.unwrap_or_else(|e| ReadEnd { why: format!("reader task failed: {e}"), kill: None, handed_over: false });
                if end.handed_over {
                    // Everything it sent here is in; it plays on under the next gateway.
                    info!(pid, "worker handed over");
                    shared.worker_disconnected(id);
                    shared.handed_over(super::Handed { id, pid, evidence: evidence.take().map(Evidence::into_fd) });
                    return Outcome::HandedOver;
                }
                warn!(pid, reason = %end.why, "worker connection ended");
                match end.kill {
                    Some(why) => break kill(why),
                    None => break Outcome::Ended { healthy: started.elapsed() >= HEALTHY_AFTER },
                }
            }
            status = &mut exited => {
                let why = status.as_ref().map(spawn::describe).unwrap_or_else(|_| "unknown exit".into());
                error!(pid, exit = %why, "worker exited");
                shared.update(id, |s| s.last_exit = Some(why));
                shared.worker_lost(id, status.as_ref().is_ok_and(spawn::is_crash), evidence.as_mut().and_then(Evidence::culprit)).await;
                return Outcome::Ended { healthy: started.elapsed() >= HEALTHY_AFTER };
            }
            _ = cancel.cancelled() => {
                let _ = outbound.try_send(&ToWorker::Shutdown { reason: "gateway shutting down".into() });
                break Outcome::Shutdown;
            }
        }
    };
    shared.worker_disconnected(id);
    drop(outbound);
    // Give the worker its grace period to exit, then make sure it is gone and reaped. Its players
    // are restored once its exit says whether it crashed: a worker the gateway killed crashed
    // only if it flooded; one whose connection ended crashed if its exit says so.
    let grace = if matches!(outcome, Outcome::Shutdown) { SHUTDOWN_GRACE } else { Duration::from_millis(500) };
    let exit = tokio::time::timeout(grace, &mut exited).await;
    let crashed = match (killed_for, &exit) {
        (Some(kill), _) => matches!(kill, Kill::Flooding),
        (None, Ok(Ok(status))) => spawn::is_crash(status),
        (None, _) => false,
    };
    shared.worker_lost(id, crashed, evidence.as_mut().and_then(Evidence::culprit)).await;
    match exit {
        Ok(status) => {
            let why = status.map(|s| spawn::describe(&s)).unwrap_or_else(|_| "unknown exit".into());
            info!(pid, exit = %why, "worker process ended");
            if !matches!(outcome, Outcome::Shutdown) {
                shared.update(id, |s| s.last_exit = Some(killed_for.map(|k| k.describe().to_string()).unwrap_or(why)));
            }
        }
        Err(_) => {
            warn!(pid, "worker did not exit in time; killing it");
            spawn::kill(pid);
            let _ = exited.await;
            if !matches!(outcome, Outcome::Shutdown) {
                let why = killed_for.map_or("killed: lingered after its connection ended", Kill::describe);
                shared.update(id, |s| s.last_exit = Some(why.into()));
            }
        }
    }
    drop(writer_task);
    outcome
}

/// Counts what a worker sends per second, to catch a flood.
struct Budget {
    window: Instant,
    messages: u64,
    bytes: u64,
}

impl Budget {
    fn new() -> Self {
        Self { window: Instant::now(), messages: 0, bytes: 0 }
    }

    /// Counts one message of `bytes`; false once the worker is over its budget.
    fn spend(&mut self, bytes: u64) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            *self = Self::new();
        }
        self.messages += 1;
        self.bytes += bytes;
        self.messages <= MAX_MESSAGES_PER_SECOND && self.bytes <= MAX_BYTES_PER_SECOND
    }
}

/// Platform tracks one worker may have the resolver look up at once.
const MAX_RESOLVING: usize = 64;

/// Reads frames until the connection ends; returns why it ended. Player events go to the
/// registry through a bounded queue: when it is full this reader waits, so a worker that floods
/// stalls its own connection (and misses its pings) rather than growing the gateway's memory.
async fn read_loop(
    shared: Arc<Shared>,
    id: u32,
    mut reader: caldera_protocol::channel::FrameReader<ToGateway, tokio::net::unix::OwnedReadHalf>,
    pings: Arc<Mutex<PingState>>,
    ipc: Arc<IpcCounters>,
) -> ReadEnd {
    use std::sync::atomic::Ordering;
    let end = |why: &str| ReadEnd { why: why.into(), kill: None, handed_over: false };
    let mut leases = Leases::default();
    let mut budget = Budget::new();
    let resolving = Arc::new(tokio::sync::Semaphore::new(MAX_RESOLVING));
    let mut resolves = tokio::task::JoinSet::new();
    loop {
        let before = reader.bytes_received();
        let msg = match reader.recv().await {
            Ok(Some(m)) => {
                ipc.messages_in.fetch_add(1, Ordering::Relaxed);
                ipc.bytes_in.store(reader.bytes_received(), Ordering::Relaxed);
                m
            }
            Ok(None) => return end("worker closed the connection"),
            // A worker that sends a malformed frame is broken or compromised: drop it.
            Err(e) => return end(&format!("invalid frame from worker: {e}")),
        };
        if !budget.spend(reader.bytes_received() - before) {
            error!(worker = id, "worker is flooding its IPC connection");
            return ReadEnd { why: "worker flooded its IPC connection".into(), kill: Some(Kill::Flooding), handed_over: false };
        }
        match msg {
            ToGateway::Pong { seq } => {
                let rtt = {
                    let mut p = pings.lock().unwrap_or_else(|e| e.into_inner());
                    if seq > p.sent_seq || seq <= p.answered_seq {
                        None
                    } else {
                        p.answered_seq = seq;
                        p.answered_at = Instant::now();
                        (seq == p.sent_seq).then(|| p.sent_at.elapsed())
                    }
                };
                if let Some(rtt) = rtt {
                    shared.update(id, |s| {
                        s.last_ping_rtt = Some(rtt);
                        s.missed_pings = 0;
                    });
                }
            }
            ToGateway::Resources(r) => shared.update(id, |s| s.resources = Some(r)),
            ToGateway::Log { severity, message } => {
                let message: String = message.chars().take(2000).collect();
                match severity {
                    Severity::Warn => warn!(target: "caldera_worker", worker = id, "{message}"),
                    Severity::Error => error!(target: "caldera_worker", worker = id, "{message}"),
                }
            }
            ToGateway::Hello(_) => return end("worker sent a second hello"),
            // Only after a handover was asked for does the slot take this end as one.
            ToGateway::HandedOver => return ReadEnd { why: "handed over".into(), kill: None, handed_over: shared.is_handing_over() },
            ToGateway::Player { player, event } => {
                if shared.player_events.send(WorkerEvent::Player { worker: id, player, event }).await.is_err() {
                    return end("the gateway is stopping");
                }
            }
            ToGateway::Loaded { id: request, result } => {
                if !shared.answer(id, request, result) {
                    warn!(worker = id, request, "worker answered a request it was not given; ignored");
                }
            }
            ToGateway::RouteAcquire { id: request } => {
                let address = match &shared.config.route_planner {
                    Some(planner) => planner.acquire(),
                    None => Err("no route planner is configured".into()),
                };
                match &address {
                    Ok(a) => leases.grant(request, *a),
                    Err(why) => debug!(worker = id, "route planner: {why}"),
                }
                if shared.config.route_planner.is_some() {
                    telemetry::record_route_lease(address.is_ok());
                }
                let _ = shared.send(id, &ToWorker::RouteLease { id: request, address });
            }
            ToGateway::Resolve { id: request, request: track } => {
                while resolves.try_join_next().is_some() {}
                let answer = move |result| ToWorker::Resolved { id: request, result };
                let refused = |message: &str, cause: String| Err(TrackException { message: message.into(), severity: ExceptionSeverity::Common, cause });
                let family = resolver::Family::of_source(&track.source_name);
                let (Some(resolver), Some(family)) = (shared.resolver.clone(), family) else {
                    let _ = shared.send(id, &answer(refused("This track's source is not available on this node.", format!("no resolver for `{}` tracks", track.source_name))));
                    continue;
                };
                if !family.enabled(&shared.config.sources, resolver.settings().generic_pages) {
                    let _ = shared.send(id, &answer(refused("This track's source is disabled on this node.", format!("lavalink.server.sources turns `{}` off", track.source_name))));
                    continue;
                }
                let Ok(permit) = resolving.clone().try_acquire_owned() else {
                    let _ = shared.send(id, &answer(Err(TrackException { message: "The resolver is overloaded.".into(), severity: ExceptionSeverity::Fault, cause: format!("this worker has {MAX_RESOLVING} lookups waiting") })));
                    continue;
                };
                // A lease the worker names must be one it was given.
                let address = track.lease.and_then(|l| leases.get(l));
                let shared = shared.clone();
                resolves.spawn(async move {
                    let result = resolver.resolve(&track, address).await;
                    if let (Err(e), Some(address), Some(planner)) = (&result, address, &shared.config.route_planner) {
                        resolver::mark_if_rate_limited(planner, address, e, false);
                    }
                    let _ = shared.send(id, &answer(result));
                    drop(permit);
                });
            }
            ToGateway::RouteFailed { id: request, search } => {
                let (Some(planner), Some(address)) = (&shared.config.route_planner, leases.take(request)) else {
                    debug!(worker = id, request, "worker reported a failure for a lease it does not hold; ignored");
                    continue;
                };
                telemetry::record_route_failure();
                if planner.mark_failing(address, search) == Marked::New {
                    warn!(worker = id, %address, search, "route planner: address rate limited or not bindable, marked failing");
                }
            }
        }
    }
}

/// Addresses the route planner handed this worker process, by lease id, so the worker can only
/// report addresses it was given. Bounded: the oldest leases are forgotten first.
#[derive(Default)]
struct Leases(std::collections::BTreeMap<u64, std::net::IpAddr>);

impl Leases {
    const MAX: usize = 1024;

    fn grant(&mut self, id: u64, address: std::net::IpAddr) {
        self.0.insert(id, address);
        while self.0.len() > Self::MAX {
            self.0.pop_first();
        }
    }

    fn take(&mut self, id: u64) -> Option<std::net::IpAddr> {
        self.0.remove(&id)
    }

    fn get(&self, id: u64) -> Option<std::net::IpAddr> {
        self.0.get(&id).copied()
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<_> = (0..10).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }
}
