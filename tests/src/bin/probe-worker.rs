//! A `caldera-worker` that, once confined, tries what the sandbox must refuse — exec a shell,
//! write a file, read `/etc/shadow`, open a packet socket — and what it must allow (read
//! `/etc/hosts`), prints one `PROBE key=value` line per attempt to stderr, then serves as a
//! normal worker. Tests point `caldera.workerBinary` at it to probe the sandbox from inside a
//! worker the gateway spawned. `probe-worker --standalone MODE` applies the sandbox itself, with
//! no gateway, probes and exits.

use caldera_worker::sandbox::{self, Mode, Report};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use std::process::{Command, ExitCode};

fn probe(report: &Report) {
    let outcome = |r: std::io::Result<()>| match r {
        Ok(()) => "allowed".to_string(),
        Err(e) => format!("refused:{}", e.raw_os_error().unwrap_or(0)),
    };
    let exec = Command::new("/bin/sh").arg("-c").arg("true").status().map(|_| ());
    let write = std::fs::write(std::env::temp_dir().join(format!("caldera-sandbox-{}", std::process::id())), b"x");
    let shadow = std::fs::read("/etc/shadow").map(|_| ());
    let hosts = std::fs::read("/etc/hosts").map(|_| ());
    let packet = socket(AddressFamily::Packet, SockType::Raw, SockFlag::empty(), None).map(drop).map_err(std::io::Error::from);
    // Signals (0: permission is checked, nothing is delivered): itself, its parent (the gateway),
    // everyone, and through a pidfd.
    let signal = |pid: i32| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).map_err(std::io::Error::from);
    let kill_self = signal(std::process::id() as i32);
    let kill_parent = signal(nix::unistd::getppid().as_raw());
    let kill_all = signal(-1);
    let kill_init = signal(1);
    // A sibling: another child of the same parent (another worker, when the gateway runs two).
    let parent = nix::unistd::getppid().as_raw();
    let sibling = std::fs::read_dir("/proc").into_iter().flatten().flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let ppid: i32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent && pid != std::process::id() as i32).then_some(pid)
    });
    let kill_sibling = sibling.map(signal);
    // SAFETY: raw syscalls with integer arguments; the descriptor returned is closed.
    let pidfd = unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, nix::unistd::getppid().as_raw(), 0);
        if fd < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            let sent = libc::syscall(libc::SYS_pidfd_send_signal, fd, 0, std::ptr::null::<libc::siginfo_t>(), 0);
            let result = if sent < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
            libc::close(fd as i32);
            result
        }
    };
    // An abstract Unix socket the test listens on outside the sandbox, when it names one.
    let abstract_socket = std::env::var("CALDERA_PROBE_ABSTRACT").ok().map(|name| {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|addr| std::os::unix::net::UnixStream::connect_addr(&addr))
            .map(drop)
    });
    // The sandbox is per thread (inherited by threads started later): this one's status counts.
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    let field = |key: &str| status.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).unwrap_or("?").to_string();
    let lines = [
        ("landlock", report.landlock.clone()),
        ("exec", outcome(exec)),
        ("write", outcome(write)),
        ("shadow", outcome(shadow)),
        ("hosts", outcome(hosts)),
        ("packet_socket", outcome(packet)),
        ("kill_self", outcome(kill_self)),
        ("kill_parent", outcome(kill_parent)),
        ("kill_all", outcome(kill_all)),
        ("kill_init", outcome(kill_init)),
        ("kill_sibling", kill_sibling.map_or("untried".into(), outcome)),
        ("pidfd_signal", outcome(pidfd)),
        ("abstract_socket", abstract_socket.map_or("untried".into(), outcome)),
        ("NoNewPrivs", field("NoNewPrivs:")),
        ("Seccomp", field("Seccomp:")),
        ("pid", std::process::id().to_string()),
    ];
    // One write per line: two workers probing at once share the gateway's stderr, and a line
    // written in pieces interleaves with the other's.
    for (key, value) in lines {
        let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("PROBE {key}={value}\n").as_bytes());
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, mode] = args.as_slice() {
        if flag == "--standalone" {
            let Some(mode) = Mode::parse(mode) else { return ExitCode::FAILURE };
            return match sandbox::apply(mode, &sandbox::readable_paths(&[]), &[]) {
                Ok(report) => {
                    probe(&report);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sandbox: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).init();
    match caldera_worker::WorkerConfig::from_env().and_then(|config| caldera_worker::run_with(config, probe)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("probe-worker: {e}");
            ExitCode::FAILURE
        }
    }
}
