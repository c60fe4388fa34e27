//! The supervisor: spawns the worker processes, admits only its own, pings them, kills the ones
//! that hang, respawns the ones that die (with backoff), and stops them at shutdown.

mod ipc;
pub mod resolver;
mod slot;
pub mod sources;
mod spawn;

pub use ipc::{HandshakeError, RuntimeDir, HELLO_TIMEOUT};
pub use slot::{Adopted, Backoff, WorkerState, WorkerStatus};

use crate::config::{ResolverSettings, SandboxMode, Settings, SourcesConfig};
use crate::routeplanner::RoutePlanner;
use caldera_protocol::evidence::Culprit;
use caldera_protocol::{Encoded, ExceptionSeverity, LoadRequest, LoadResult, PlayerEvent, ToWorker, TrackException, WorkerSettings, MAX_FRAME_LEN};
use spawn::{SpawnSpec, Spawner};
use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("worker binary {0} does not exist or is not executable; Hint: build it (`cargo build --release`) or set caldera.workerBinary")]
    WorkerBinary(PathBuf),
    #[error("cannot create the IPC runtime directory: {0}; Hint: set RUNTIME_DIRECTORY or XDG_RUNTIME_DIR to a writable directory")]
    RuntimeDir(std::io::Error),
    #[error("cannot listen on the IPC socket {path}: {source}")]
    Listen { path: PathBuf, source: std::io::Error },
    #[error("cannot start the spawner thread: {0}")]
    Spawner(std::io::Error),
    #[error("cannot prepare the resolver's directory: {0}")]
    Resolver(std::io::Error),
}

#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    pub workers: usize,
    pub worker_binary: PathBuf,
    pub ping_interval: Duration,
    /// A worker that has not answered a ping for this long is killed.
    pub ping_timeout: Duration,
    /// How long a spawned worker may take to connect and say hello.
    pub hello_timeout: Duration,
    /// Sent to every worker after its hello.
    pub settings: WorkerSettings,
    /// Extra environment for worker processes (sandbox mode, memory limit, local directories).
    pub worker_env: Vec<(String, OsString)>,
    /// Hands out the local addresses of workers' outbound source requests, when configured.
    pub route_planner: Option<Arc<RoutePlanner>>,
    /// The resolver, when enabled and installed.
    pub resolver: Option<ResolverSettings>,
    pub sandbox: SandboxMode,
    /// Which sources may be played (a worker's resolve request is checked against them).
    pub sources: SourcesConfig,
    /// How long workers outlive this gateway if it dies without handing over (zero: they die
    /// with it).
    pub orphan_wait: Duration,
}

impl SupervisorConfig {
    pub fn new(settings: &Settings, route_planner: Option<Arc<RoutePlanner>>) -> Self {
        let local_dirs: Vec<String> = settings.local_directories.iter().map(|d| d.display().to_string()).collect();
        let mut worker_env: Vec<(String, OsString)> = vec![
            ("CALDERA_SANDBOX".into(), settings.sandbox.as_str().into()),
            ("CALDERA_LOCAL_DIRS".into(), local_dirs.join("\n").into()),
        ];
        if let Some(bytes) = settings.memory_limit {
            worker_env.push(("CALDERA_WORKER_MEMORY_LIMIT".into(), bytes.to_string().into()));
        }
        if !settings.orphan_wait.is_zero() {
            worker_env.push(("CALDERA_ORPHAN_WAIT_MS".into(), settings.orphan_wait.as_millis().to_string().into()));
        }
        Self {
            workers: settings.workers,
            worker_binary: settings.worker_binary.clone(),
            ping_interval: Duration::from_secs(1),
            ping_timeout: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(10),
            settings: settings.worker_settings(),
            worker_env,
            route_planner,
            resolver: settings.resolver.python.is_some().then(|| settings.resolver.clone()),
            sandbox: settings.sandbox,
            sources: settings.sources.clone(),
            orphan_wait: settings.orphan_wait,
        }
    }
}

/// Most messages queued for one worker; a worker that lets this many pile up is not reading.
const OUTBOUND_MESSAGES: usize = 4096;
/// Most bytes queued for one worker.
const OUTBOUND_BYTES: usize = 8 << 20;
/// Worker events queued for the player registry. A full queue stalls the workers' readers (so a
/// flooding worker stops being read and misses its pings), never the gateway's memory.
pub const EVENT_QUEUE: usize = 4096;

/// A message for a worker, with its share of the queue's byte budget.
pub(crate) struct Queued {
    pub frame: Encoded<ToWorker>,
    _bytes: OwnedSemaphorePermit,
}

/// The queue to one connected worker: bounded in messages (the channel) and in bytes (the
/// permits each message holds until it is written). `jammed` asks the slot to kill the worker
/// once it stops taking messages.
#[derive(Clone)]
pub(crate) struct Outbound {
    tx: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    pub jammed: CancellationToken,
}

impl Outbound {
    pub fn new() -> (Self, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(OUTBOUND_MESSAGES);
        (Self { tx, bytes: Arc::new(Semaphore::new(OUTBOUND_BYTES)), jammed: CancellationToken::new() }, rx)
    }

    fn permit(&self, frame: &Encoded<ToWorker>) -> Result<OwnedSemaphorePermit, SendError> {
        match self.bytes.clone().try_acquire_many_owned(frame.len().min(OUTBOUND_BYTES) as u32) {
            Ok(p) => Ok(p),
            Err(TryAcquireError::NoPermits) => Err(SendError::Full),
            Err(TryAcquireError::Closed) => Err(SendError::NotConnected),
        }
    }

    /// Queues without waiting. A full queue means the worker stopped reading: it is marked
    /// jammed, and its slot kills it (its players are then restored from the registry).
    pub fn try_send(&self, msg: &ToWorker) -> Result<(), SendError> {
        let frame = Encoded::new(msg, MAX_FRAME_LEN).map_err(|e| SendError::Encode(e.to_string()))?;
        let result = self.permit(&frame).and_then(|permit| {
            self.tx.try_send(Queued { frame, _bytes: permit }).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SendError::Full,
                mpsc::error::TrySendError::Closed(_) => SendError::NotConnected,
            })
        });
        if matches!(result, Err(SendError::Full)) {
            self.jammed.cancel();
        }
        result
    }

    /// Queues, waiting for room.
    pub async fn send(&self, msg: &ToWorker) -> Result<(), SendError> {
        let frame = Encoded::new(msg, MAX_FRAME_LEN).map_err(|e| SendError::Encode(e.to_string()))?;
        let permit = self
            .bytes
            .clone()
            .acquire_many_owned(frame.len().min(OUTBOUND_BYTES) as u32)
            .await
            .map_err(|_| SendError::NotConnected)?;
        self.tx.send(Queued { frame, _bytes: permit }).await.map_err(|_| SendError::NotConnected)
    }
}

/// Why a message could not be queued for a worker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the worker is not connected")]
    NotConnected,
    #[error("the worker's queue is full; it is being killed and its players restored")]
    Full,
    #[error("the message cannot be encoded: {0}")]
    Encode(String),
}

/// State shared by the slots and readers of worker status.
pub(crate) struct Shared {
    pub config: SupervisorConfig,
    pub spawner: Spawner,
    pub pending: ipc::PendingSpawns,
    pub socket_path: PathBuf,
    pub status: Mutex<Vec<WorkerStatus>>,
    pub outbound: Mutex<Vec<Option<Outbound>>>,
    pub changed: watch::Sender<u64>,
    /// Requests sent to a worker and not answered yet: id → (worker, reply).
    pub requests: Mutex<HashMap<u64, (u32, oneshot::Sender<LoadResult>)>>,
    pub next_request: AtomicU64,
    /// Player events from workers, and word of workers that went away.
    pub player_events: mpsc::Sender<WorkerEvent>,
    pub resolver: Option<Arc<resolver::Resolver>>,
    /// A handover to the next gateway is under way: a worker's `HandedOver` ends its slot.
    handing_over: AtomicBool,
    /// Workers that went to the next gateway.
    handed: Mutex<Vec<Handed>>,
    /// Each connected worker's pid and the token it would say hello with to the next gateway,
    /// should this one die without handing over.
    tokens: Mutex<HashMap<u32, (u32, String)>>,
    /// Slots whose worker (of a previous build) was retired: they end with it.
    retired: Mutex<std::collections::HashSet<u32>>,
}

/// A worker whose slot ended with its handover: its pid and crash-evidence pipe.
#[derive(Debug)]
pub(crate) struct Handed {
    pub id: u32,
    pub pid: u32,
    pub evidence: Option<OwnedFd>,
}

/// A worker handed over to the next gateway, as that gateway adopts it: its slot and what it
/// will present.
#[derive(Debug)]
pub struct HandedWorker {
    pub id: u32,
    pub adopted: Adopted,
}

/// What a gateway taking over receives from the previous one: the runtime directory and the
/// IPC listener in it (workers reconnect at the same path), and the workers handed over.
#[derive(Debug)]
pub struct Adoption {
    pub runtime_dir: PathBuf,
    pub listener: OwnedFd,
    pub workers: Vec<HandedWorker>,
}

/// What the supervisor tells the player registry.
#[derive(Debug)]
pub enum WorkerEvent {
    Player { worker: u32, player: u64, event: PlayerEvent },
    /// The worker's process is gone, with every player it hosted. `crashed`: by its own doing
    /// (a crash signal, a non-zero exit, flooding), which is evidence against what it played;
    /// `culprit`: what its crashing thread said it was working on, narrowing that evidence.
    Lost { worker: u32, crashed: bool, culprit: Option<Culprit> },
    /// The worker said hello and takes players (stranded ones may be restored on it).
    Ready { worker: u32 },
    /// Answered once every event queued before it was handled.
    Barrier(oneshot::Sender<()>),
}

impl Shared {
    pub fn is_retired(&self, id: u32) -> bool {
        self.retired.lock().unwrap_or_else(|e| e.into_inner()).contains(&id)
    }

    fn build_of(&self, id: u32) -> String {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).get(id as usize).and_then(|s| s.build_id.clone()).unwrap_or_default()
    }

    pub fn is_handing_over(&self) -> bool {
        self.handing_over.load(Ordering::Acquire)
    }

    /// The worker in slot `id` connected with `token` (or went away: `None`).
    pub fn connected(&self, id: u32, worker: Option<(u32, String)>) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        match worker {
            Some(w) => tokens.insert(id, w),
            None => tokens.remove(&id),
        };
    }

    pub fn handed_over(&self, handed: Handed) {
        self.handed.lock().unwrap_or_else(|e| e.into_inner()).push(handed);
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn update(&self, worker_id: u32, f: impl FnOnce(&mut WorkerStatus)) {
        {
            let mut all = self.status.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = all.get_mut(worker_id as usize) {
                f(s);
            }
        }
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn set_outbound(&self, worker_id: u32, tx: Option<Outbound>) {
        let mut all = self.outbound.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = all.get_mut(worker_id as usize) {
            *slot = tx;
        }
    }

    fn outbound(&self, worker_id: u32) -> Option<Outbound> {
        self.outbound.lock().unwrap_or_else(|e| e.into_inner()).get(worker_id as usize).cloned().flatten()
    }

    /// Queues a message for a worker without waiting (see [`Outbound::try_send`]).
    pub fn send(&self, worker_id: u32, msg: &ToWorker) -> Result<(), SendError> {
        self.outbound(worker_id).ok_or(SendError::NotConnected)?.try_send(msg)
    }

    /// Delivers a worker's answer, if that worker was really asked (its frames are hostile).
    pub fn answer(&self, worker_id: u32, id: u64, result: LoadResult) -> bool {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        match requests.get(&id) {
            Some((asked, _)) if *asked == worker_id => {
                if let Some((_, reply)) = requests.remove(&id) {
                    let _ = reply.send(result);
                }
                true
            }
            _ => false,
        }
    }

    /// A worker's connection ended: nothing more is sent to it, and its pending requests fail
    /// (their callers see a fault).
    pub fn worker_disconnected(&self, worker_id: u32) {
        self.set_outbound(worker_id, None);
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, (w, _)| *w != worker_id);
    }

    /// The registry hears that a worker's players are gone, whether it crashed and, if its
    /// crashing thread said so, what it was working on.
    pub async fn worker_lost(&self, worker_id: u32, crashed: bool, culprit: Option<Culprit>) {
        self.worker_disconnected(worker_id);
        self.connected(worker_id, None);
        // Only a crash handler writes the record: it is evidence of a crash where the exit
        // status is not ours to read (a worker adopted from the previous gateway).
        let crashed = crashed || culprit.is_some();
        if let Some(culprit) = culprit.filter(|_| crashed) {
            info!(worker = worker_id, ?culprit, "the worker's crashing thread named what it was working on");
        }
        let _ = self.player_events.send(WorkerEvent::Lost { worker: worker_id, crashed, culprit }).await;
    }

    fn in_flight(&self, worker_id: u32) -> usize {
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).values().filter(|(w, _)| *w == worker_id).count()
    }

    /// The environment a worker gets; everything else is cleared.
    pub fn spawn_spec(&self, worker_id: u32, token: &str) -> SpawnSpec {
        let mut env: Vec<(String, OsString)> = vec![
            ("CALDERA_IPC_SOCKET".into(), self.socket_path.clone().into_os_string()),
            ("CALDERA_WORKER_TOKEN".into(), token.into()),
            ("CALDERA_WORKER_ID".into(), worker_id.to_string().into()),
            ("CALDERA_GATEWAY_PID".into(), std::process::id().to_string().into()),
        ];
        env.extend(self.config.worker_env.iter().cloned());
        for key in ["RUST_LOG", "RUST_BACKTRACE", "SSL_CERT_FILE", "SSL_CERT_DIR", "NO_COLOR"] {
            if let Some(v) = std::env::var_os(key) {
                env.push((key.into(), v));
            }
        }
        SpawnSpec {
            binary: self.config.worker_binary.clone(),
            args: Vec::new(),
            env,
            piped: false,
            evidence: true,
            die_with_gateway: self.config.orphan_wait.is_zero(),
        }
    }
}

pub struct Supervisor {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    /// Stops accepting worker connections (a handover: the next gateway answers them).
    accepting: CancellationToken,
    tasks: TaskTracker,
    runtime_dir: RuntimeDir,
    /// The IPC listener, to hand over.
    listener: OwnedFd,
}

impl Supervisor {
    /// Creates the IPC socket (or takes the previous gateway's, with the workers it handed over)
    /// and starts one slot per worker. Returns at once; see [`Self::wait_ready`].
    pub fn start(config: SupervisorConfig, player_events: mpsc::Sender<WorkerEvent>, adoption: Option<Adoption>) -> Result<Self, SupervisorError> {
        if !is_executable(&config.worker_binary) {
            return Err(SupervisorError::WorkerBinary(config.worker_binary.clone()));
        }
        let (runtime_dir, listener, mut adopted) = match adoption {
            Some(a) => {
                let dir = RuntimeDir::adopt(a.runtime_dir).map_err(SupervisorError::RuntimeDir)?;
                let listen = || -> std::io::Result<UnixListener> {
                    let listener = std::os::unix::net::UnixListener::from(a.listener);
                    listener.set_nonblocking(true)?;
                    UnixListener::from_std(listener)
                };
                let listener = listen().map_err(|source| SupervisorError::Listen { path: dir.socket_path(), source })?;
                let workers: HashMap<u32, Adopted> = a.workers.into_iter().map(|w| (w.id, w.adopted)).collect();
                (dir, listener, workers)
            }
            None => {
                let dir = RuntimeDir::create().map_err(SupervisorError::RuntimeDir)?;
                let path = dir.socket_path();
                let listener = UnixListener::bind(&path).map_err(|source| SupervisorError::Listen { path, source })?;
                (dir, listener, HashMap::new())
            }
        };
        let socket_path = runtime_dir.socket_path();
        let listener_fd = listener
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| SupervisorError::Listen { path: socket_path.clone(), source })?;
        info!(adopting = adopted.len(), socket = %socket_path.display(), "IPC socket ready");
        let spawner = Spawner::start().map_err(SupervisorError::Spawner)?;
        let resolver = match (&config.resolver, &config.resolver.as_ref().and_then(|r| r.python.clone())) {
            (Some(settings), Some(python)) => Some(
                resolver::Resolver::new(resolver::ResolverConfig {
                    settings: settings.clone(),
                    python: python.clone(),
                    launcher: config.worker_binary.clone(),
                    sandbox: config.sandbox,
                    dir: runtime_dir.path().join("resolver"),
                    deny: config.settings.http.deny.clone(),
                })
                .map_err(SupervisorError::Resolver)?,
            ),
            _ => None,
        };
        // Slots for every worker handed over, even past a smaller `workers` read anew, and one
        // more for each of another build: it retires once empty, and its slot with it.
        let older = adopted.values().filter(|a| a.build_id != caldera_protocol::build::BUILD_ID).count();
        let n = config.workers.max(adopted.keys().map(|id| *id as usize + 1).max().unwrap_or(0)) + older;
        let shared = Arc::new(Shared {
            config,
            spawner,
            pending: ipc::PendingSpawns::default(),
            socket_path,
            status: Mutex::new((0..n as u32).map(WorkerStatus::new).collect()),
            outbound: Mutex::new(vec![None; n]),
            changed: watch::Sender::new(0),
            requests: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            player_events,
            resolver: resolver.clone(),
            handing_over: AtomicBool::new(false),
            handed: Mutex::new(Vec::new()),
            tokens: Mutex::new(HashMap::new()),
            retired: Mutex::new(std::collections::HashSet::new()),
        });
        // Handed-over workers reconnect at once: their tokens are known before the first accept.
        let mut adopting: HashMap<u32, (Adopted, slot::ConnRx)> = adopted
            .drain()
            .map(|(id, a)| {
                let conn = shared.pending.expect(a.token.clone(), true);
                (id, (a, conn))
            })
            .collect();
        let cancel = CancellationToken::new();
        let accepting = cancel.child_token();
        let tasks = TaskTracker::new();
        tasks.spawn(
            ipc::accept_loop(listener, shared.pending.clone(), accepting.clone())
                .instrument(info_span!("ipc_accept")),
        );
        for id in 0..n as u32 {
            tasks.spawn(
                slot::run(shared.clone(), id, cancel.child_token(), adopting.remove(&id)).instrument(info_span!("worker", id)),
            );
        }
        match &resolver {
            Some(r) => {
                tasks.spawn(r.clone().run(shared.spawner.clone(), cancel.child_token()).instrument(info_span!("resolver")));
            }
            None => info!("platform sources (YouTube, SoundCloud, Bandcamp, Twitch, Vimeo, search) are off: the resolver is disabled or not installed; Hint: run ./scripts/setup.sh or set caldera.resolver.python"),
        }
        tasks.close();
        Ok(Self { shared, cancel, accepting, tasks, runtime_dir, listener: listener_fd })
    }

    /// Hands the ready workers over to the next gateway: no connection is accepted here any
    /// more (the next gateway answers them at the same socket), each worker is told to outlive
    /// this gateway and reconnect with a fresh token, and its slot ends once its `HandedOver`
    /// came in — so every event it sent before is with the registry's relay. Workers that are
    /// not ready, or do not answer within `timeout`, are stopped (their players are restored
    /// by the next gateway). Returns the workers handed over.
    pub async fn hand_over(&self, timeout: Duration) -> Vec<HandedWorker> {
        self.shared.handing_over.store(true, Ordering::Release);
        self.accepting.cancel();
        let mut tokens: HashMap<u32, String> = HashMap::new();
        for id in self.ready_workers() {
            let token = ipc::random_hex(32);
            if self.shared.send(id, &ToWorker::Handover { token: token.clone() }).is_ok() {
                tokens.insert(id, token);
            }
        }
        let mut changed = self.shared.changed.subscribe();
        let all_in = || {
            let handed = self.shared.handed.lock().unwrap_or_else(|e| e.into_inner());
            tokens.keys().all(|id| handed.iter().any(|h| h.id == *id))
        };
        let _ = tokio::time::timeout(timeout, async {
            while !all_in() {
                if changed.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        // The rest stop as at shutdown.
        self.cancel.cancel();
        let handed = std::mem::take(&mut *self.shared.handed.lock().unwrap_or_else(|e| e.into_inner()));
        handed
            .into_iter()
            .filter_map(|h| {
                let token = tokens.remove(&h.id)?;
                let build_id = self.shared.build_of(h.id);
                Some(HandedWorker { id: h.id, adopted: Adopted { pid: h.pid, token, evidence: h.evidence, build_id } })
            })
            .collect()
    }

    /// The connected workers as the next gateway would adopt them, had this one died: slot,
    /// pid and token.
    pub fn adoptable(&self) -> Vec<HandedWorker> {
        let tokens = self.shared.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let mut workers: Vec<HandedWorker> = tokens
            .iter()
            .map(|(id, (pid, token))| HandedWorker {
                id: *id,
                adopted: Adopted { pid: *pid, token: token.clone(), evidence: None, build_id: self.shared.build_of(*id) },
            })
            .collect();
        workers.sort_by_key(|w| w.id);
        workers
    }

    /// Returns once the registry has handled every worker event queued so far.
    pub async fn barrier(&self) {
        let (tx, rx) = oneshot::channel();
        if self.shared.player_events.send(WorkerEvent::Barrier(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The runtime directory and the IPC listener, for the next gateway.
    pub fn ipc_endpoint(&self) -> (&Path, &OwnedFd) {
        (self.runtime_dir.path(), &self.listener)
    }

    /// Waits until every worker slot has either said hello or failed at least once (the node then
    /// serves with the workers it has; the others keep being respawned), or `timeout`. Returns
    /// how many are ready.
    pub async fn wait_ready(&self, timeout: Duration) -> usize {
        let mut rx = self.shared.changed.subscribe();
        let ready = || self.workers().iter().filter(|w| w.state == WorkerState::Ready).count();
        let settled = || self.workers().iter().all(|w| w.state == WorkerState::Ready || w.restarts > 0);
        let _ = tokio::time::timeout(timeout, async {
            while !settled() {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        ready()
    }

    /// A snapshot of every worker slot.
    pub fn workers(&self) -> Vec<WorkerStatus> {
        self.shared.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loads an identifier in the least busy ready worker (media bytes are never parsed here).
    /// A worker that dies meanwhile yields a `fault` error; the node carries on.
    pub async fn load(&self, request: LoadRequest, timeout: Duration) -> LoadResult {
        let failed = |message: &str, severity, cause: String| {
            LoadResult::Error(TrackException { message: message.into(), severity, cause })
        };
        let candidates: Vec<(u32, Outbound)> = {
            let outbound = self.shared.outbound.lock().unwrap_or_else(|e| e.into_inner());
            outbound.iter().enumerate().filter_map(|(i, tx)| Some((i as u32, tx.clone()?))).collect()
        };
        let id = self.shared.next_request.fetch_add(1, Ordering::Relaxed);
        // Fewest requests in flight; the rotating start spreads ties.
        let start = id as usize % candidates.len().max(1);
        let chosen = candidates
            .iter()
            .cycle()
            .skip(start)
            .take(candidates.len())
            .min_by_key(|(w, _)| self.shared.in_flight(*w))
            .cloned();
        let Some((worker_id, tx)) = chosen else {
            return failed("No worker is available to load the track.", ExceptionSeverity::Fault, "all workers are down".into());
        };
        let (reply, answer) = oneshot::channel();
        self.shared.requests.lock().unwrap_or_else(|e| e.into_inner()).insert(id, (worker_id, reply));
        if tx.send(&ToWorker::Load { id, request }).await.is_err() {
            self.shared.requests.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return failed("No worker is available to load the track.", ExceptionSeverity::Fault, "worker went away".into());
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => failed(
                "The worker loading this track stopped unexpectedly.",
                ExceptionSeverity::Fault,
                format!("worker {worker_id} exited while probing"),
            ),
            Err(_) => {
                self.shared.requests.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                failed("Loading the track timed out.", ExceptionSeverity::Common, format!("no answer within {timeout:?}"))
            }
        }
    }

    /// Queues a message for a worker without waiting. A full queue gets the worker killed (it is
    /// not reading) and its players restored from the registry, so nothing recorded is lost.
    pub fn send(&self, worker_id: u32, msg: &ToWorker) -> Result<(), SendError> {
        self.shared.send(worker_id, msg)
    }

    /// The settings every worker gets.
    pub fn settings(&self) -> &WorkerSettings {
        &self.shared.config.settings
    }

    /// The resolver (yt-dlp), when enabled and installed.
    pub fn resolver(&self) -> Option<&Arc<resolver::Resolver>> {
        self.shared.resolver.as_ref()
    }

    /// The route planner, when `lavalink.server.ratelimit` configures one.
    pub fn route_planner(&self) -> Option<&Arc<RoutePlanner>> {
        self.shared.config.route_planner.as_ref()
    }

    /// Where new players go: ready workers of this build, or, while there is none, any ready
    /// one.
    pub fn placeable_workers(&self) -> Vec<u32> {
        let ready = self.ready_workers();
        let status = self.workers();
        let current: Vec<u32> = ready.iter().copied().filter(|id| status.get(*id as usize).is_some_and(|s| !s.retiring())).collect();
        if current.is_empty() { ready } else { current }
    }

    /// Stops a worker of a previous build that has no player left; its slot ends with it.
    pub fn retire(&self, id: u32) {
        if self.shared.retired.lock().unwrap_or_else(|e| e.into_inner()).insert(id) {
            info!(worker = id, "retiring a worker of the previous build: its last player is gone");
            let _ = self.shared.send(id, &ToWorker::Shutdown { reason: "retired: the gateway runs a newer build".into() });
        }
    }

    /// Ready workers (connected and accepting messages).
    pub fn ready_workers(&self) -> Vec<u32> {
        let outbound = self.shared.outbound.lock().unwrap_or_else(|e| e.into_inner());
        outbound.iter().enumerate().filter(|(_, tx)| tx.is_some()).map(|(i, _)| i as u32).collect()
    }

    pub fn socket_path(&self) -> &Path {
        &self.shared.socket_path
    }

    /// Asks every worker to stop, waits up to `grace`, then kills what is left.
    pub async fn shutdown(&self, grace: Duration) {
        info!("stopping workers");
        self.cancel.cancel();
        // Slots send Shutdown and wait `grace` themselves before killing; allow a little more.
        if tokio::time::timeout(grace + Duration::from_secs(2), self.tasks.wait()).await.is_err() {
            warn!("some worker slots did not stop in time");
        }
    }

    pub(crate) fn grace() -> Duration {
        slot::SHUTDOWN_GRACE
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}
