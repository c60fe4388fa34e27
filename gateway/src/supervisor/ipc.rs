//! The IPC endpoint workers connect to: a Unix socket in a private (0700) runtime directory.
//!
//! Only processes this gateway spawned can join: each spawn gets a one-time token in its
//! environment, the first frame must be a `Hello` carrying it, and the slot that spawned the
//! child then checks the socket's peer pid (SO_PEERCRED) against the pid it forked. Anything else
//! — a stray connection, silence, garbage, an oversize frame, a wrong version — is logged and
//! dropped. Every frame is hostile input (ARCHITECTURE: IPC protocol).

use caldera_protocol::channel::{FrameReader, FrameWriter};
use caldera_protocol::{build, FrameError, ToGateway, ToWorker, WorkerHello, HELLO_MAX_FRAME_LEN, MAX_FRAME_LEN};
use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How long an unauthenticated connection may take to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Unauthenticated connections handled at once; more wait in the kernel's backlog.
const MAX_PENDING_HANDSHAKES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("no hello within {0:?}")]
    Timeout(Duration),
    #[error("closed before saying hello")]
    Closed,
    #[error("bad first frame: {0}")]
    Frame(#[from] FrameError),
    #[error("first message was not a hello")]
    NotHello,
    #[error("protocol version {theirs} does not match ours ({ours}); Hint: gateway and worker binaries come from different builds")]
    Version { ours: u32, theirs: u32 },
    #[error("build id `{theirs}` does not match ours (`{ours}`); Hint: install gateway and worker from the same build")]
    Build { ours: &'static str, theirs: String },
    #[error("token does not belong to any spawned worker")]
    UnknownToken,
    #[error("cannot read the peer's credentials: {0}")]
    PeerCred(std::io::Error),
}

/// A connected, hello-checked worker, handed to the slot that spawned it.
pub struct WorkerConn {
    pub hello: WorkerHello,
    /// The connecting process as the kernel reports it (SO_PEERCRED).
    pub peer_pid: Option<i32>,
    pub reader: FrameReader<ToGateway, OwnedReadHalf>,
    pub writer: FrameWriter<ToWorker, OwnedWriteHalf>,
}

/// Tokens of spawns that have not said hello yet → where to deliver their connection.
#[derive(Default, Clone)]
pub struct PendingSpawns {
    inner: Arc<Mutex<HashMap<String, Pending>>>,
}

struct Pending {
    deliver: oneshot::Sender<WorkerConn>,
    /// A worker of the previous gateway (a handover): it may be of another build, as long as
    /// it speaks our protocol.
    adopting: bool,
}

impl PendingSpawns {
    /// Registers a fresh one-time token; the receiver gets the connection that presents it.
    pub fn register(&self) -> (String, oneshot::Receiver<WorkerConn>) {
        let token = random_hex(32);
        let rx = self.expect(token.clone(), false);
        (token, rx)
    }

    /// Registers the token a worker handed over by the previous gateway will present.
    pub fn expect(&self, token: String, adopting: bool) -> oneshot::Receiver<WorkerConn> {
        let (deliver, rx) = oneshot::channel();
        self.lock().insert(token, Pending { deliver, adopting });
        rx
    }

    pub fn forget(&self, token: &str) {
        self.lock().remove(token);
    }

    fn take(&self, token: &str) -> Option<Pending> {
        self.lock().remove(token)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        // A panic while holding this lock cannot leave the map inconsistent: keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The file naming the gateway that owns a runtime directory now (its name tells the first).
const OWNER_FILE: &str = "gateway.pid";

/// The private directory holding the socket; removed when dropped.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    /// A fresh `caldera-<pid>-<random>` directory with mode 0700 in [`Self::base`]. Directories
    /// a killed gateway of ours left there (its pid gone) are removed first.
    pub fn create() -> std::io::Result<Self> {
        let base = Self::base();
        for dir in Self::orphans(&base) {
            if std::fs::remove_dir_all(&dir).is_ok() {
                tracing::info!(dir = %dir.display(), "removed the runtime directory of a gateway that is gone");
            }
        }
        let path = base.join(format!("caldera-{}-{}", std::process::id(), random_hex(4)));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Self::adopt(path)
    }

    /// Takes over the directory of the gateway this one replaces (a handover): the socket's
    /// path stays, and the owner file names this process, so the directory is not stale.
    pub fn adopt(path: PathBuf) -> std::io::Result<Self> {
        std::fs::write(path.join(OWNER_FILE), std::process::id().to_string())?;
        Ok(Self { path })
    }

    /// Where runtime directories go: `$RUNTIME_DIRECTORY` (systemd), else `$XDG_RUNTIME_DIR`,
    /// else the temp dir.
    pub fn base() -> PathBuf {
        ["RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"]
            .iter()
            .filter_map(std::env::var_os)
            .map(PathBuf::from)
            .find(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir)
    }

    /// `caldera-<pid>-<hex>` directories of this user in `base` whose gateway is gone (SIGKILL
    /// leaves them behind; nothing else does). The owner file, where there is one, names the
    /// gateway.
    pub fn orphans(base: &Path) -> Vec<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let uid = nix::unistd::getuid().as_raw();
        let Ok(entries) = std::fs::read_dir(base) else { return Vec::new() };
        entries
            .flatten()
            .filter(|entry| {
                let name = entry.file_name();
                let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("caldera-")).and_then(|n| n.split_once('-')).and_then(|(pid, _)| pid.parse::<u32>().ok()) else {
                    return false;
                };
                let owner = std::fs::read_to_string(entry.path().join(OWNER_FILE)).ok().and_then(|p| p.trim().parse::<u32>().ok());
                let ours = entry.metadata().is_ok_and(|m| m.is_dir() && m.uid() == uid);
                ours && !Path::new(&format!("/proc/{}", owner.unwrap_or(pid))).exists()
            })
            .map(|entry| entry.path())
            .collect()
    }

    pub fn socket_path(&self) -> PathBuf {
        self.path.join("ipc.sock")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}


impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Accepts connections until cancelled; each one gets a bounded handshake.
pub async fn accept_loop(listener: UnixListener, pending: PendingSpawns, cancel: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let mut handshakes = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "IPC accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let pending = pending.clone();
        handshakes.spawn(async move {
            let _permit = permit;
            if let Err(e) = handshake(stream, &pending).await {
                warn!(error = %e, "rejected an IPC connection");
            }
        });
        // Reap finished handshakes so the set does not grow.
        while handshakes.try_join_next().is_some() {}
    }
    handshakes.shutdown().await;
}

async fn handshake(stream: UnixStream, pending: &PendingSpawns) -> Result<(), HandshakeError> {
    let peer_pid = stream.peer_cred().map_err(HandshakeError::PeerCred)?.pid();
    let (read, write) = stream.into_split();
    let mut reader = FrameReader::<ToGateway, _>::new(read, HELLO_MAX_FRAME_LEN);
    let first = tokio::time::timeout(HELLO_TIMEOUT, reader.recv())
        .await
        .map_err(|_| HandshakeError::Timeout(HELLO_TIMEOUT))??;
    let hello = match first {
        None => return Err(HandshakeError::Closed),
        Some(ToGateway::Hello(h)) => h,
        Some(_) => return Err(HandshakeError::NotHello),
    };
    // The token is one-time: whatever else is wrong, it is spent now.
    let Pending { deliver, adopting } = pending.take(&hello.token).ok_or(HandshakeError::UnknownToken)?;
    if hello.protocol_version != build::PROTOCOL_VERSION {
        return Err(HandshakeError::Version { ours: build::PROTOCOL_VERSION, theirs: hello.protocol_version });
    }
    if hello.build_id != build::BUILD_ID && !adopting {
        return Err(HandshakeError::Build { ours: build::BUILD_ID, theirs: hello.build_id });
    }
    debug!(worker_id = hello.worker_id, pid = hello.pid, ?peer_pid, "worker hello accepted");
    reader.set_max(MAX_FRAME_LEN);
    let writer = FrameWriter::new(write, MAX_FRAME_LEN);
    // The slot may have given up on this spawn already; then the connection just closes.
    let _ = deliver.send(WorkerConn { hello, peer_pid, reader, writer });
    Ok(())
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the OS random number generator is unavailable");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
