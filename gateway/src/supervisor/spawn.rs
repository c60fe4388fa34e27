//! Spawning worker processes from one long-lived thread.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process. tokio's
//! blocking-pool threads come and go, so every fork happens on this dedicated thread, which lives
//! as long as the gateway. Each child is reaped by its own waiter thread (no zombies).

use caldera_protocol::evidence::{Culprit, EVIDENCE_FD_ENV};
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use std::os::fd::AsRawFd;
use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use tokio::sync::oneshot;

/// What a worker process needs to be started with. Its environment is cleared first.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub binary: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, OsString)>,
    /// Give the child pipes for stdin, stdout and stderr (the resolver speaks over them);
    /// otherwise stdin is null and the rest are inherited.
    pub piped: bool,
    /// Give the child a crash-evidence pipe ([`caldera_protocol::evidence`]); its write end's
    /// number goes into the child's environment.
    pub evidence: bool,
    /// SIGKILL the child when the gateway dies; off for workers that wait for the next gateway.
    pub die_with_gateway: bool,
}

/// A running child: its pid and a receiver that resolves once it has exited and been reaped.
#[derive(Debug)]
pub struct SpawnedChild {
    pub pid: u32,
    pub exited: oneshot::Receiver<ExitStatus>,
    /// stdin, stdout, stderr when [`SpawnSpec::piped`].
    pub pipes: Option<(ChildStdin, ChildStdout, ChildStderr)>,
    /// The evidence pipe's read end (non-blocking) when [`SpawnSpec::evidence`].
    pub evidence: Option<Evidence>,
}

/// The read end of a child's crash-evidence pipe.
#[derive(Debug)]
pub struct Evidence(std::fs::File);

impl Evidence {
    /// What the child's crashing thread was working on, if it said so, once the child is gone.
    /// Anything but one well-formed record names nobody.
    pub fn culprit(&mut self) -> Option<Culprit> {
        use std::io::Read;
        let mut buf = [0u8; Culprit::LEN + 1];
        let mut len = 0;
        while len < buf.len() {
            match self.0.read(&mut buf[len..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
        }
        Culprit::decode(&buf[..len])
    }
}

impl Evidence {
    /// The read end a previous gateway handed over.
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> Self {
        Self(fd.into())
    }

    /// The read end, to hand over to the next gateway.
    pub fn into_fd(self) -> std::os::fd::OwnedFd {
        self.0.into()
    }
}

/// Watches a process this gateway did not spawn (a worker adopted from the previous gateway)
/// through a pidfd: the receiver resolves once it has exited, with an error, since its exit
/// status is its parent's to read.
pub fn watch(pid: u32) -> std::io::Result<oneshot::Receiver<ExitStatus>> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor, owned below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor pidfd_open just returned, owned by nothing else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let (tx, exited) = oneshot::channel::<ExitStatus>();
    std::thread::Builder::new().name(format!("caldera-watch-{pid}")).spawn(move || {
        let mut poll = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; a pidfd becomes readable when its process exits.
        while unsafe { libc::poll(&mut poll, 1, -1) } < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {}
        drop(tx);
    })?;
    Ok(exited)
}

struct Request {
    spec: SpawnSpec,
    reply: oneshot::Sender<std::io::Result<SpawnedChild>>,
}

/// Handle to the spawner thread. Cloneable; the thread ends when every handle is dropped.
#[derive(Clone)]
pub struct Spawner {
    tx: mpsc::Sender<Request>,
}

impl Spawner {
    pub fn start() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new().name("caldera-spawner".into()).spawn(move || {
            for req in rx {
                let _ = req.reply.send(spawn_now(&req.spec));
            }
        })?;
        Ok(Self { tx })
    }

    pub async fn spawn(&self, spec: SpawnSpec) -> std::io::Result<SpawnedChild> {
        let (reply, rx) = oneshot::channel();
        let gone = || std::io::Error::other("spawner thread has stopped");
        self.tx.send(Request { spec, reply }).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

fn spawn_now(spec: &SpawnSpec) -> std::io::Result<SpawnedChild> {
    let mut cmd = Command::new(&spec.binary);
    cmd.args(&spec.args).env_clear().envs(spec.env.iter().map(|(k, v)| (k, v)));
    if spec.piped {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    } else {
        cmd.stdin(Stdio::null()).stdout(Stdio::inherit()).stderr(Stdio::inherit());
    }
    // Both ends close on exec; the child's copy of the write end is kept open for it alone below.
    let evidence = if spec.evidence {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        cmd.env(EVIDENCE_FD_ENV, write.as_raw_fd().to_string());
        Some((read, write))
    } else {
        None
    };
    let inherited = evidence.as_ref().map(|(_, write)| write.as_raw_fd());
    let die_with_gateway = spec.die_with_gateway;
    // SAFETY: the closure runs in the forked child before exec and only makes the async-signal-safe
    // prctl(2) and fcntl(2) syscalls; it touches no locks or allocations.
    unsafe {
        cmd.pre_exec(move || {
            if die_with_gateway {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            }
            if let Some(fd) = inherited {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    // The parent's write end closes here, so the read end sees the end once the child is gone.
    let evidence = evidence.map(|(read, _write)| Evidence(read.into()));
    let pid = child.id();
    let pipes = match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
        (Some(i), Some(o), Some(e)) => Some((i, o, e)),
        _ => None,
    };
    let (tx, exited) = oneshot::channel();
    std::thread::Builder::new().name(format!("caldera-reap-{pid}")).spawn(move || {
        let status = child.wait().unwrap_or_else(|_| ExitStatus::from_raw(0));
        let _ = tx.send(status);
    })?;
    Ok(SpawnedChild { pid, exited, pipes, evidence })
}

/// Sends SIGKILL to a child that has not been reaped yet.
pub fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// Whether a process ended by its own doing: a crash signal or a non-zero exit code. SIGKILL,
/// SIGTERM and the like come from outside (an operator, the kernel's OOM killer, the gateway).
pub fn is_crash(status: &ExitStatus) -> bool {
    match (status.code(), status.signal().and_then(|s| Signal::try_from(s).ok())) {
        (Some(code), _) => code != 0,
        (None, Some(sig)) => matches!(sig, Signal::SIGABRT | Signal::SIGSEGV | Signal::SIGBUS | Signal::SIGILL | Signal::SIGFPE | Signal::SIGSYS | Signal::SIGTRAP),
        _ => false,
    }
}

/// "exit code 3" / "killed by SIGKILL" for logs.
pub fn describe(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by {s}"),
            Err(_) => format!("killed by signal {sig}"),
        },
        _ => "unknown exit".into(),
    }
}
