//! Handing the node over to the binary now on disk (SIGUSR2, `systemctl reload`): the workers
//! hold the audio, so the gateway can be replaced while they play (ARCHITECTURE: Hand-over).
//!
//! The old gateway starts the new one with one end of a socket pair in `CALDERA_HANDOVER_FD`.
//! The new one reads its configuration and says it is ready (`R`): a binary that cannot start
//! costs nothing, the old one goes on serving. From then on the old one stops accepting clients,
//! closes their sockets (1001; every session waits for its resume), hands its workers over (each
//! reconnects to the same IPC socket with a fresh token and plays on), waits until every event
//! they sent before is in the registry, and sends the snapshot: the two listeners and the
//! workers' crash-evidence pipes as descriptors (SCM_RIGHTS), the rest as JSON — sessions with
//! their queued messages, players, worker pids and tokens. The new one adopts all of it, serves
//! on the same listener, says so (`S`), and the old one exits.

use crate::node::Node;
use crate::players::PlayersRecord;
use crate::sessions::SessionsRecord;
use crate::supervisor::{Adopted, Adoption, HandedWorker};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing::{info, warn};

/// The environment variable naming the new gateway's end of the socket pair.
pub const HANDOVER_FD_ENV: &str = "CALDERA_HANDOVER_FD";
const READY: u8 = b'R';
const SERVING: u8 = b'S';
/// How long the new gateway may take to read its configuration and say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the workers get to hand over.
const WORKERS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the new gateway may take from the snapshot to serving.
const SERVING_TIMEOUT: Duration = Duration::from_secs(30);
/// Most descriptors a snapshot carries: two listeners and a pipe per worker.
const MAX_FDS: usize = 2 + 256;
/// The largest snapshot taken (resume queues are bounded far below this).
const MAX_SNAPSHOT: u64 = 1 << 32;

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("the binary this gateway was started from is unknown")]
    NoBinary,
    #[error("cannot start the new gateway: {0}")]
    Spawn(std::io::Error),
    #[error("the new gateway did not get ready: {0}; Hint: run `caldera check-config` with the new binary")]
    NotReady(std::io::Error),
    #[error("the handover channel failed: {0}")]
    Channel(std::io::Error),
    #[error("the snapshot is malformed: {0}")]
    Snapshot(String),
}

static BINARY: OnceLock<PathBuf> = OnceLock::new();

/// Notes the path this binary was started from, before an upgrade replaces the file there.
pub fn remember_binary() {
    if let Ok(path) = std::env::current_exe() {
        let _ = BINARY.set(path);
    }
}

/// What one gateway hands the next besides descriptors.
#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    from_pid: u32,
    runtime_dir: PathBuf,
    workers: Vec<WorkerRecord>,
    sessions: SessionsRecord,
    players: PlayersRecord,
    /// The route planner's failing addresses and when they were marked.
    #[serde(default)]
    failing: Vec<(std::net::IpAddr, u64)>,
    /// The node's uptime at the handover (0 in the state file: a crash restarts the node).
    #[serde(default)]
    uptime_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct WorkerRecord {
    id: u32,
    pid: u32,
    token: String,
    /// Its crash-evidence pipe's place among the descriptors sent.
    evidence: Option<usize>,
    /// The build it runs.
    #[serde(default)]
    build_id: String,
}

impl Snapshot {
    /// The node as the next gateway takes it, with these workers (the state file gives no
    /// uptime: a crash restarts the node).
    fn of(node: &Node, workers: Vec<WorkerRecord>, uptime_ms: u64) -> Self {
        Self {
            from_pid: std::process::id(),
            runtime_dir: node.supervisor.ipc_endpoint().0.to_path_buf(),
            workers,
            sessions: node.sessions.record(),
            players: node.players.record(),
            failing: node.supervisor.route_planner().map(|p| p.failing_marks()).unwrap_or_default(),
            uptime_ms,
        }
    }
}

impl WorkerRecord {
    /// `worker`, its evidence pipe (if any) being descriptor `evidence` of those sent.
    fn of(HandedWorker { id, adopted }: HandedWorker, evidence: Option<usize>) -> Self {
        Self { id, pid: adopted.pid, token: adopted.token, evidence, build_id: adopted.build_id }
    }

    /// The worker to adopt, with its evidence pipe as received.
    fn adopt(self, evidence: Option<OwnedFd>) -> HandedWorker {
        HandedWorker { id: self.id, adopted: Adopted { pid: self.pid, token: self.token, evidence, build_id: self.build_id } }
    }
}

/// Descriptors sent before the workers' pipes.
const TCP_FD: usize = 0;
const IPC_FD: usize = 1;

/// Hands the node over to the binary now on disk. `close_clients` (awaited only once the new
/// gateway is ready) stops accepting HTTP and closes the client sockets (the HTTP layer's part).
/// Returns the new gateway's pid once it serves; the caller then exits. An error comes with
/// whether it came after the new gateway was ready: before, nothing changed and this node serves
/// on; after, the workers have moved on, and the caller exits all the same.
pub async fn hand_over(node: &Arc<Node>, tcp: &OwnedFd, close_clients: impl Future<Output = ()>) -> Result<u32, (HandoverError, bool)> {
    let successor = tokio::task::spawn_blocking(Successor::start)
        .await
        .map_err(|e| (HandoverError::Spawn(std::io::Error::other(e)), false))?
        .map_err(|e| (e, false))?;
    let pid = successor.child.id();
    info!(pid, "the new gateway is ready; handing over");
    node.sessions.prepare_handover();
    node.handing_over.cancel();
    close_clients.await;
    let handed = node.supervisor.hand_over(WORKERS_TIMEOUT).await;
    node.supervisor.barrier().await;
    let mut fds: Vec<OwnedFd> = Vec::with_capacity(2 + handed.len());
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| (HandoverError::Channel(e), true));
    fds.push(dup(tcp)?);
    fds.push(dup(node.supervisor.ipc_endpoint().1)?);
    let workers = handed
        .into_iter()
        .map(|mut worker| {
            // Past the descriptors one message carries, a worker goes without its pipe.
            let evidence = worker.adopted.evidence.take().filter(|_| fds.len() < MAX_FDS).map(|fd| {
                fds.push(fd);
                fds.len() - 1
            });
            WorkerRecord::of(worker, evidence)
        })
        .collect();
    let snapshot = Snapshot::of(node, workers, node.stats.uptime_ms());
    info!(workers = snapshot.workers.len(), sessions = snapshot.sessions.sessions.len(), players = snapshot.players.players.len(), "sending the snapshot");
    tokio::task::spawn_blocking(move || successor.finish(&snapshot, &fds))
        .await
        .map_err(|e| (HandoverError::Channel(std::io::Error::other(e)), true))?
        .map_err(|e| (e, true))?;
    Ok(pid)
}

/// The new gateway, started by the old one.
struct Successor {
    child: Child,
    channel: UnixStream,
}

impl Successor {
    /// Starts the binary now on disk with this process's arguments and waits for its `R`.
    fn start() -> Result<Self, HandoverError> {
        let binary = BINARY.get().ok_or(HandoverError::NoBinary)?;
        let (ours, theirs) = UnixStream::pair().map_err(HandoverError::Spawn)?;
        let inherited = theirs.as_raw_fd();
        let mut cmd = Command::new(binary);
        cmd.args(std::env::args_os().skip(1))
            .env(HANDOVER_FD_ENV, inherited.to_string())
            // The watchdog is the new process's once systemd hears its pid.
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null());
        // SAFETY: runs in the forked child before exec and makes one async-signal-safe fcntl(2).
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(inherited, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(HandoverError::Spawn)?;
        drop(theirs);
        let mut successor = Self { child, channel: ours };
        match successor.expect(READY, READY_TIMEOUT) {
            Ok(()) => Ok(successor),
            Err(e) => {
                let _ = successor.child.kill();
                let _ = successor.child.wait();
                Err(HandoverError::NotReady(e))
            }
        }
    }

    fn expect(&mut self, what: u8, timeout: Duration) -> std::io::Result<()> {
        self.channel.set_read_timeout(Some(timeout))?;
        let mut byte = [0u8];
        self.channel.read_exact(&mut byte)?;
        if byte[0] != what {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("expected {:?}, got {:?}", what as char, byte[0] as char)));
        }
        Ok(())
    }

    /// Sends the snapshot and waits until the new gateway serves.
    fn finish(mut self, snapshot: &Snapshot, fds: &[OwnedFd]) -> Result<(), HandoverError> {
        let json = serde_json::to_vec(snapshot).map_err(|e| HandoverError::Snapshot(e.to_string()))?;
        let mut header = [0u8; 16];
        header[..8].copy_from_slice(&(json.len() as u64).to_le_bytes());
        header[8..].copy_from_slice(&(fds.len() as u64).to_le_bytes());
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let sent = sendmsg::<()>(self.channel.as_raw_fd(), &[IoSlice::new(&header)], &[ControlMessage::ScmRights(&raw)], MsgFlags::empty(), None)
            .map_err(|e| HandoverError::Channel(e.into()))?;
        if sent != header.len() {
            self.channel.write_all(&header[sent..]).map_err(HandoverError::Channel)?;
        }
        self.channel.write_all(&json).map_err(HandoverError::Channel)?;
        self.expect(SERVING, SERVING_TIMEOUT).map_err(HandoverError::Channel)
    }
}

/// What the new gateway takes over.
pub struct Inheritance {
    pub adoption: Adoption,
    pub sessions: SessionsRecord,
    pub players: PlayersRecord,
    /// The route planner's failing marks.
    pub failing: Vec<(std::net::IpAddr, u64)>,
    /// The node's uptime so far.
    pub uptime_ms: u64,
    /// The gateway that handed over; none when taking over from one that died.
    pub predecessor: Option<Predecessor>,
}

/// The gateway that handed over, waiting to hear that this one serves.
pub struct Predecessor {
    pub pid: u32,
    /// Its HTTP listener, now this gateway's.
    pub listener: std::net::TcpListener,
    channel: UnixStream,
}

impl Inheritance {
    /// When started by a gateway handing over: says ready, and takes what it sends. `None`
    /// when this is a plain start.
    pub fn receive() -> Result<Option<Self>, HandoverError> {
        let Ok(value) = std::env::var(HANDOVER_FD_ENV) else { return Ok(None) };
        let fd: RawFd = value.parse().map_err(|_| HandoverError::Snapshot(format!("{HANDOVER_FD_ENV}={value} is not a descriptor")))?;
        // SAFETY: the previous gateway passed this descriptor for us alone; the flag below keeps
        // it from the processes this one starts.
        let mut channel = unsafe { UnixStream::from_raw_fd(fd) };
        nix::fcntl::fcntl(&channel, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)).map_err(|e| HandoverError::Channel(e.into()))?;
        channel.write_all(&[READY]).map_err(HandoverError::Channel)?;
        channel.set_read_timeout(Some(SERVING_TIMEOUT)).map_err(HandoverError::Channel)?;
        let (header, fds) = receive_header(&channel)?;
        let len = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let count = u64::from_le_bytes(header[8..].try_into().expect("8 bytes"));
        if len > MAX_SNAPSHOT || count != fds.len() as u64 || fds.len() < 2 {
            return Err(HandoverError::Snapshot(format!("{len} bytes with {} of {count} descriptors", fds.len())));
        }
        let mut json = Vec::new();
        (&mut channel).take(len).read_to_end(&mut json).map_err(HandoverError::Channel)?;
        let snapshot: Snapshot = serde_json::from_slice(&json).map_err(|e| HandoverError::Snapshot(e.to_string()))?;
        let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
        let mut take = |i: usize| fds.get_mut(i).and_then(Option::take).ok_or_else(|| HandoverError::Snapshot(format!("no descriptor {i}")));
        let listener = std::net::TcpListener::from(take(TCP_FD)?);
        let ipc = take(IPC_FD)?;
        let mut workers = Vec::with_capacity(snapshot.workers.len());
        for w in snapshot.workers {
            let evidence = w.evidence.map(&mut take).transpose()?;
            workers.push(w.adopt(evidence));
        }
        info!(from = snapshot.from_pid, workers = workers.len(), sessions = snapshot.sessions.sessions.len(), players = snapshot.players.players.len(), "taking over from the previous gateway");
        Ok(Some(Self {
            adoption: Adoption { runtime_dir: snapshot.runtime_dir, listener: ipc, workers },
            sessions: snapshot.sessions,
            players: snapshot.players,
            failing: snapshot.failing,
            uptime_ms: snapshot.uptime_ms,
            predecessor: Some(Predecessor { pid: snapshot.from_pid, listener, channel }),
        }))
    }
}

impl Predecessor {
    /// Tells the previous gateway this one serves (it exits then).
    pub fn serving(mut self) {
        if let Err(e) = self.channel.write_all(&[SERVING]) {
            warn!(error = %e, "cannot tell the previous gateway we serve");
        }
    }
}

/// The 16-byte header and the descriptors that came with it.
fn receive_header(channel: &UnixStream) -> Result<([u8; 16], Vec<OwnedFd>), HandoverError> {
    let mut header = [0u8; 16];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (got, fds) = {
        let mut iov = [IoSliceMut::new(&mut header)];
        let msg = recvmsg::<()>(channel.as_fd().as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|e| HandoverError::Channel(e.into()))?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs().map_err(|e| HandoverError::Channel(e.into()))? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: descriptors the kernel just installed in this process for us.
                fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        (msg.bytes, fds)
    };
    if got < header.len() {
        (&*channel).read_exact(&mut header[got..]).map_err(HandoverError::Channel)?;
    }
    Ok((header, fds))
}

/// Where a gateway whose workers may outlive it keeps what the next one needs, should it die
/// without handing over: in its runtime directory, rewritten as it changes.
const STATE_FILE: &str = "state.json";
/// How often the state file is brought up to date.
const PERSIST_EVERY: Duration = Duration::from_secs(1);

/// Keeps the state file up to date (every [`PERSIST_EVERY`], when something changed): workers
/// with their tokens, sessions with their queues, players. Written whole and renamed into place.
pub async fn persist(node: Arc<Node>) {
    let (dir, _) = node.supervisor.ipc_endpoint();
    let (path, temp) = (dir.join(STATE_FILE), dir.join(format!("{STATE_FILE}.{}", std::process::id())));
    let mut last = Vec::new();
    let mut tick = tokio::time::interval(PERSIST_EVERY);
    loop {
        tick.tick().await;
        let workers = node.supervisor.adoptable().into_iter().map(|w| WorkerRecord::of(w, None)).collect();
        let snapshot = Snapshot::of(&node, workers, 0);
        let Ok(json) = serde_json::to_vec(&snapshot) else { continue };
        if json == last {
            continue;
        }
        let written = std::fs::write(&temp, &json).and_then(|()| std::fs::rename(&temp, &path));
        match written {
            Ok(()) => last = json,
            Err(e) => warn!(error = %e, path = %path.display(), "cannot keep the state for the next gateway"),
        }
    }
}

/// Takes over from a gateway that died without handing over (SIGKILL, a crash), when workers
/// may outlive their gateway: the newest runtime directory of ours whose gateway is gone and
/// whose state file names workers still alive. They reconnect to the socket bound anew at the
/// same path; sessions wait for their clients' resumes (those that were not resumable, for this
/// one resume), players stay on the workers that came along, the others are restored.
pub fn recover(base: &std::path::Path) -> Option<Inheritance> {
    let mut candidates: Vec<(std::time::SystemTime, PathBuf)> = crate::supervisor::RuntimeDir::orphans(base)
        .into_iter()
        .filter_map(|dir| Some((std::fs::metadata(dir.join(STATE_FILE)).ok()?.modified().ok()?, dir)))
        .collect();
    candidates.sort();
    let (_, dir) = candidates.pop()?;
    let snapshot: Snapshot = match std::fs::read(dir.join(STATE_FILE)).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())) {
        Ok(s) => s,
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "the state a dead gateway left is unreadable; starting afresh");
            return None;
        }
    };
    let workers: Vec<HandedWorker> = snapshot
        .workers
        .into_iter()
        .filter(|w| is_worker(w.pid))
        .map(|w| w.adopt(None))
        .collect();
    if workers.is_empty() {
        return None;
    }
    let socket = dir.join("ipc.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = match std::os::unix::net::UnixListener::bind(&socket) {
        Ok(l) => OwnedFd::from(l),
        Err(e) => {
            warn!(socket = %socket.display(), error = %e, "cannot listen where the dead gateway's workers wait; starting afresh");
            return None;
        }
    };
    let mut sessions = snapshot.sessions;
    for s in &mut sessions.sessions {
        if !s.resuming {
            s.resuming = true;
            s.restore_resuming = Some(false);
        }
    }
    info!(from = snapshot.from_pid, dir = %dir.display(), workers = workers.len(), sessions = sessions.sessions.len(), players = snapshot.players.players.len(), "taking over the workers of a gateway that died");
    Some(Inheritance { adoption: Adoption { runtime_dir: dir, listener, workers }, sessions, players: snapshot.players, failing: snapshot.failing, uptime_ms: 0, predecessor: None })
}

/// Whether `pid` is a live worker process of ours.
fn is_worker(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            Some(comm == "caldera-worker" && !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}
