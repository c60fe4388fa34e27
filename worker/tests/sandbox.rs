//! The sandbox, applied for real in a child process (this test binary re-run), then probed: what
//! it must refuse is refused, what the worker needs still works.

use caldera_worker::sandbox::{apply, readable_paths, Mode};
use std::process::Command;

const CHILD: &str = "CALDERA_SANDBOX_PROBE_CHILD";

/// Runs in the child only: sandbox, then one line per probe.
#[test]
fn child_probe() {
    let Ok(mode) = std::env::var(CHILD) else { return };
    let report = apply(Mode::parse(&mode).unwrap(), &readable_paths(&[])).expect("sandbox applies");
    let outcome = |r: std::io::Result<()>| match r {
        Ok(()) => "allowed".to_string(),
        Err(e) => format!("refused:{}", e.raw_os_error().unwrap_or(0)),
    };
    let exec = Command::new("/bin/sh").arg("-c").arg("true").status().map(|_| ());
    let write = std::fs::write(std::env::temp_dir().join(format!("caldera-sandbox-{}", std::process::id())), b"x");
    let shadow = std::fs::read("/etc/shadow").map(|_| ());
    let hosts = std::fs::read("/etc/hosts").map(|_| ());
    // SAFETY: plain socket(2) call with constant arguments; the descriptor is closed right away.
    let packet = unsafe { libc_socket(17, 3, 0) };
    println!("PROBE landlock={}", report.landlock);
    println!("PROBE exec={}", outcome(exec));
    println!("PROBE write={}", outcome(write));
    println!("PROBE shadow={}", outcome(shadow));
    println!("PROBE hosts={}", outcome(hosts));
    println!("PROBE packet_socket={}", if packet < 0 { format!("refused:{}", std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) } else { "allowed".into() });
    // The test harness runs this on its own thread: the sandbox is per thread (and inherited by
    // threads started later, as in the worker), so read this thread's status.
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    for key in ["NoNewPrivs:", "Seccomp:"] {
        let v = status.lines().find(|l| l.starts_with(key)).unwrap().split_whitespace().nth(1).unwrap().to_string();
        println!("PROBE {}={v}", key.trim_end_matches(':'));
    }
}

unsafe extern "C" {
    #[link_name = "socket"]
    fn libc_socket(domain: i32, ty: i32, protocol: i32) -> i32;
}

fn probe(mode: &str) -> std::collections::HashMap<String, String> {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_probe", "--nocapture", "--test-threads=1"])
        .env(CHILD, mode)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    text.lines()
        // The harness may print "test child_probe ... " on the same line.
        .filter_map(|l| l.split_once("PROBE ").map(|(_, rest)| rest))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn strict_refuses_exec_writes_secrets_and_raw_sockets() {
    let p = probe("strict");
    assert_eq!(p["exec"], "refused:1", "exec /bin/sh: {p:?}"); // EPERM from seccomp
    assert!(p["write"].starts_with("refused:"), "writing a file: {p:?}");
    assert!(p["shadow"].starts_with("refused:"), "reading /etc/shadow: {p:?}");
    assert_eq!(p["hosts"], "allowed", "the resolver's files stay readable: {p:?}");
    assert_eq!(p["packet_socket"], "refused:1", "{p:?}");
    assert_eq!(p["NoNewPrivs"], "1");
    assert_eq!(p["Seccomp"], "2");
    assert_eq!(p["landlock"], "FullyEnforced", "this kernel supports landlock; a degraded one would say so");
}

#[test]
fn relaxed_keeps_landlock_without_seccomp_and_off_is_off() {
    let p = probe("relaxed");
    assert_eq!(p["Seccomp"], "0");
    assert_eq!(p["NoNewPrivs"], "1");
    assert!(p["shadow"].starts_with("refused:"));
    let p = probe("off");
    assert_eq!(p["NoNewPrivs"], "0");
    assert_eq!(p["Seccomp"], "0");
}
