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
        ("NoNewPrivs", field("NoNewPrivs:")),
        ("Seccomp", field("Seccomp:")),
        ("pid", std::process::id().to_string()),
    ];
    for (key, value) in lines {
        eprintln!("PROBE {key}={value}");
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, mode] = args.as_slice() {
        if flag == "--standalone" {
            let Some(mode) = Mode::parse(mode) else { return ExitCode::FAILURE };
            return match sandbox::apply(mode, &sandbox::readable_paths(&[])) {
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
