//! The worker's sandbox (STYLE §6), applied at start before the runtime starts any thread, in
//! this order: stray file descriptors closed, rlimits, landlock (read-only access to what the
//! worker needs, writes nowhere; signals and abstract sockets scoped to the worker where the kernel
//! has landlock ABI 6), `PR_SET_NO_NEW_PRIVS`, seccomp last (a deny-list: exec, ptrace, mounts,
//! bpf, kexec, kernel modules, the setuid family, raw and packet sockets, signals to any process
//! but itself, pidfds).
//! What could be enforced is logged; where the kernel lacks a feature the worker degrades and
//! says so. Modes (`caldera.worker.sandbox`): `strict` (all), `relaxed` (no seccomp), `off`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Strict,
    Relaxed,
    Off,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "strict" => Some(Mode::Strict),
            "relaxed" => Some(Mode::Relaxed),
            "off" => Some(Mode::Off),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot set resource limit {0}: {1}")]
    Rlimit(&'static str, nix::Error),
    #[error("cannot build the landlock ruleset: {0}")]
    Landlock(String),
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(nix::Error),
    #[error("cannot build or load the seccomp filter: {0}")]
    Seccomp(String),
    #[error("cannot start the sandboxed program: {0}")]
    Exec(String),
}

/// What was enforced, for the log.
#[derive(Debug, Default)]
pub struct Report {
    pub closed_fds: usize,
    pub landlock: String,
    pub no_new_privs: bool,
    pub seccomp: bool,
}

/// Files and directories a worker may read: system libraries (for the resolver's NSS modules),
/// TLS roots, resolver configuration, /proc and /sys (its own figures, CPU topology), random
/// devices, and the local-source directories.
pub fn readable_paths(local_dirs: &[String]) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = [
        "/usr", "/lib", "/lib64", "/etc/ssl", "/etc/ca-certificates", "/etc/pki", "/etc/resolv.conf", "/etc/hosts",
        "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/host.conf", "/etc/localtime", "/proc", "/sys", "/dev/urandom", "/dev/random",
        "/dev/null",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    for var in ["SSL_CERT_FILE", "SSL_CERT_DIR"] {
        if let Some(v) = std::env::var_os(var) {
            paths.push(PathBuf::from(v));
        }
    }
    paths.extend(local_dirs.iter().map(PathBuf::from));
    paths.into_iter().filter(|p| p.exists()).collect()
}

/// Applies the sandbox to the calling (only) thread and everything it starts later.
/// Inherited descriptors are closed, but for `keep`.
pub fn apply(mode: Mode, readable: &[PathBuf], keep: &[i32]) -> Result<Report, SandboxError> {
    let mut report = Report::default();
    if mode == Mode::Off {
        return Ok(report);
    }
    report.closed_fds = close_stray_fds(keep);
    rlimits()?;
    report.landlock = landlock(&Access { read: readable, ..Access::default() })?;
    nix::sys::prctl::set_no_new_privs().map_err(SandboxError::NoNewPrivs)?;
    report.no_new_privs = true;
    if mode == Mode::Strict {
        seccomp(false)?;
        report.seccomp = true;
    }
    Ok(report)
}

/// What a confined process may touch beyond nothing.
#[derive(Debug, Default)]
pub struct Access<'a> {
    /// Files and directories it may read.
    pub read: &'a [PathBuf],
    /// Files it may execute (and the dynamic loader they need).
    pub exec: &'a [PathBuf],
    /// Directories it may write beneath.
    pub write: &'a [PathBuf],
}

/// `caldera-worker --exec-sandboxed PROGRAM ARGS...`: the gateway's resolver (a Python program
/// embedding yt-dlp) is started through this, so it runs confined like a worker: inherited
/// descriptors past stdio closed, no core dumps, landlock (reads where `CALDERA_SANDBOX_READ`
/// says, writes only under `CALDERA_SANDBOX_WRITE`, exec only of `CALDERA_SANDBOX_EXEC`),
/// no_new_privs, and in strict mode the workers' seccomp deny-list minus exec. Returns only on
/// failure.
pub fn exec_sandboxed(args: &[std::ffi::OsString]) -> SandboxError {
    use std::os::unix::process::CommandExt;
    let list = |var: &str| -> Vec<PathBuf> {
        std::env::var_os(var)
            .map(|v| v.to_string_lossy().lines().filter(|l| !l.is_empty()).map(PathBuf::from).collect())
            .unwrap_or_default()
    };
    let mode = std::env::var("CALDERA_SANDBOX").ok().and_then(|m| Mode::parse(&m)).unwrap_or(Mode::Strict);
    let Some((program, rest)) = args.split_first() else {
        return SandboxError::Landlock("--exec-sandboxed needs a program to run".into());
    };
    if mode != Mode::Off {
        close_stray_fds(&[]);
        if let Err(e) = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0) {
            return SandboxError::Rlimit("RLIMIT_CORE", e);
        }
        let mut read = readable_paths(&[]);
        read.extend(list("CALDERA_SANDBOX_READ").into_iter().filter(|p| p.exists()));
        let mut exec: Vec<PathBuf> = list("CALDERA_SANDBOX_EXEC");
        // Every dynamically linked program is started through the loader, which the kernel
        // opens for execution too.
        exec.extend(["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"].iter().map(PathBuf::from));
        let exec: Vec<PathBuf> = exec.into_iter().filter_map(|p| p.canonicalize().ok()).collect();
        let write: Vec<PathBuf> = list("CALDERA_SANDBOX_WRITE").into_iter().filter(|p| p.is_dir()).collect();
        if let Err(e) = landlock(&Access { read: &read, exec: &exec, write: &write }) {
            return e;
        }
        if let Err(e) = nix::sys::prctl::set_no_new_privs() {
            return SandboxError::NoNewPrivs(e);
        }
        if mode == Mode::Strict {
            if let Err(e) = seccomp(true) {
                return e;
            }
        }
    }
    let e = std::process::Command::new(program).args(rest).exec();
    SandboxError::Exec(e.to_string())
}

/// Closes every inherited descriptor above stderr but `keep`.
fn close_stray_fds(keep: &[i32]) -> usize {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    let mut closed = 0;
    for fd in fds.into_iter().filter(|fd| *fd > 2 && !keep.contains(fd)) {
        // The directory handle used for the listing is already closed; EBADF is fine.
        if nix::unistd::close(fd).is_ok() {
            closed += 1;
        }
    }
    closed
}

fn rlimits() -> Result<(), SandboxError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| SandboxError::Rlimit("RLIMIT_CORE", e))?;
    // Sockets for many players, never unbounded.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| SandboxError::Rlimit("RLIMIT_NOFILE", e))?;
    let soft = hard.min(16_384);
    setrlimit(Resource::RLIMIT_NOFILE, soft, soft).map_err(|e| SandboxError::Rlimit("RLIMIT_NOFILE", e))?;
    if let Some(bytes) = std::env::var("CALDERA_WORKER_MEMORY_LIMIT").ok().and_then(|v| v.parse::<u64>().ok()).filter(|b| *b > 0) {
        setrlimit(Resource::RLIMIT_DATA, bytes, bytes).map_err(|e| SandboxError::Rlimit("RLIMIT_DATA", e))?;
    }
    Ok(())
}

fn landlock(allowed: &Access) -> Result<String, SandboxError> {
    use landlock::{Access as _, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, Scope, ABI};
    let abi = ABI::V3;
    let err = |e: &dyn std::fmt::Display| SandboxError::Landlock(e.to_string());
    // Where the kernel has ABI 6: no signals to processes outside this sandbox (the gateway,
    // sibling workers) and no abstract Unix sockets outside it. Older kernels skip it.
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(|e| err(&e))?
        .scope(Scope::Signal | Scope::AbstractUnixSocket)
        .map_err(|e| err(&e))?
        .create()
        .map_err(|e| err(&e))?;
    let read = AccessFs::from_read(abi) & !AccessFs::Execute;
    let rules = allowed
        .read
        .iter()
        .map(|p| (p, read))
        .chain(allowed.exec.iter().map(|p| (p, AccessFs::Execute | AccessFs::ReadFile)))
        .chain(allowed.write.iter().map(|p| (p, AccessFs::from_all(abi) & !AccessFs::Execute)));
    for (path, access) in rules {
        let Ok(fd) = PathFd::new(path) else { continue };
        // A file gets file rights only; a directory everything allowed beneath it.
        let access = if Path::new(path).is_dir() { access } else { access & AccessFs::from_file(abi) };
        ruleset = ruleset.add_rule(PathBeneath::new(fd, access)).map_err(|e| err(&e))?;
    }
    let status = ruleset.restrict_self().map_err(|e| err(&e))?;
    Ok(format!("{:?}", status.ruleset))
}

// Syscall numbers are `c_long`: i64 here, i32 on 32-bit targets, hence the conversions.
#[allow(clippy::useless_conversion)]
fn seccomp(allow_exec: bool) -> Result<(), SandboxError> {
    use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch};
    let err = |e: &dyn std::fmt::Display| SandboxError::Seccomp(e.to_string());
    let denied = [
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_bpf,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_setuid,
        libc::SYS_setgid,
        libc::SYS_setreuid,
        libc::SYS_setregid,
        libc::SYS_setresuid,
        libc::SYS_setresgid,
        libc::SYS_setgroups,
        libc::SYS_setfsuid,
        libc::SYS_setfsgid,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_perf_event_open,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_keyctl,
    ];
    let exec = [i64::from(libc::SYS_execve), i64::from(libc::SYS_execveat)];
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        denied.iter().map(|nr| i64::from(*nr)).filter(|nr| !(allow_exec && exec.contains(nr))).map(|nr| (nr, Vec::new())).collect();
    if !allow_exec {
        // A worker signals only itself (its threads included): kill, tgkill and the sigqueue
        // calls are refused for any other target (a group, -1, the gateway, a sibling); tkill
        // (any thread id) and pidfds are refused outright. A program that runs children (the
        // resolver) relies on landlock's signal scope instead.
        let own = std::process::id();
        let not_own = SeccompRule::new(vec![SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, u64::from(own)).map_err(|e| err(&e))?]).map_err(|e| err(&e))?;
        for nr in [libc::SYS_kill, libc::SYS_tgkill, libc::SYS_rt_sigqueueinfo, libc::SYS_rt_tgsigqueueinfo] {
            rules.insert(i64::from(nr), vec![not_own.clone()]);
        }
        for nr in [libc::SYS_tkill, libc::SYS_pidfd_open, libc::SYS_pidfd_send_signal, libc::SYS_pidfd_getfd] {
            rules.insert(i64::from(nr), Vec::new());
        }
    }
    // socket(AF_PACKET, ..) and socket(.., SOCK_RAW | flags, ..)
    let packet = SeccompRule::new(vec![SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 17).map_err(|e| err(&e))?]).map_err(|e| err(&e))?;
    let raw = SeccompRule::new(vec![SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(0xf), 3).map_err(|e| err(&e))?]).map_err(|e| err(&e))?;
    rules.insert(i64::from(libc::SYS_socket), vec![packet, raw]);
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| err(&e))?;
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(1 /* EPERM */), arch).map_err(|e| err(&e))?;
    let program: seccompiler::BpfProgram = filter.try_into().map_err(|e: seccompiler::BackendError| err(&e))?;
    seccompiler::apply_filter(&program).map_err(|e| err(&e))
}
