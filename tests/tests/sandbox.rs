//! The sandbox, probed for real by `probe-worker` (tests/src/bin): once confined it tries what
//! must be refused — exec a shell, write a file, read `/etc/shadow`, open a packet socket — and
//! what must keep working (read `/etc/hosts`), and prints what happened. Probed inside a worker
//! the gateway spawned (its real environment and configuration), and standalone for each mode.

use caldera_tests::audio::sine_wav;
use caldera_tests::http_server::{Route, TestServer};
use caldera_tests::{bin, Node, NodeOptions};
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

/// The `PROBE key=value` lines in `lines`.
fn probes<S: AsRef<str>>(lines: &[S]) -> HashMap<String, String> {
    lines
        .iter()
        .filter_map(|l| l.as_ref().split_once("PROBE ").map(|(_, rest)| rest.to_string()))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.trim().to_string())))
        .collect()
}

/// Probes in a process of its own; it may try to reach an abstract socket this test listens on.
fn standalone(mode: &str) -> HashMap<String, String> {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("caldera-probe-{}-{mode}", std::process::id());
    let _listener = std::os::unix::net::UnixListener::bind_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let out = Command::new(bin("probe-worker")).args(["--standalone", mode]).env("CALDERA_PROBE_ABSTRACT", &name).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "probe-worker failed: {text}");
    probes(&text.lines().collect::<Vec<_>>())
}

fn assert_strict(p: &HashMap<String, String>) {
    assert_eq!(p["exec"], "refused:1", "exec /bin/sh: {p:?}"); // EPERM from seccomp
    assert!(p["write"].starts_with("refused:"), "writing a file: {p:?}");
    assert!(p["shadow"].starts_with("refused:"), "reading /etc/shadow: {p:?}");
    assert_eq!(p["hosts"], "allowed", "the resolver's files stay readable: {p:?}");
    assert_eq!(p["packet_socket"], "refused:1", "{p:?}");
    assert_eq!(p["NoNewPrivs"], "1");
    assert_eq!(p["Seccomp"], "2");
    assert_eq!(p["landlock"], "FullyEnforced", "this kernel supports landlock; a degraded one would say so");
    assert_signals_contained(p);
    // kill(-1) is refused by seccomp itself (landlock alone makes every target fail, which
    // kill(2) reports as success for -1).
    assert_eq!(p["kill_all"], "refused:1", "{p:?}");
}

/// A worker signals only itself: not its parent (the gateway), not init, not through a pidfd
/// (seccomp refuses with EPERM, and landlock's scope on kernels with ABI 6).
fn assert_signals_contained(p: &HashMap<String, String>) {
    assert_eq!(p["kill_self"], "allowed", "{p:?}");
    for probe in ["kill_parent", "kill_init", "pidfd_signal"] {
        assert!(p[probe].starts_with("refused:"), "{probe}: {p:?}");
    }
}

#[test]
fn inside_a_worker_the_gateway_spawned_exec_writes_and_secrets_are_refused() {
    let yaml = format!("caldera:\n  workers: 1\n  workerBinary: {}\n", bin("probe-worker").display());
    let node = Node::start_with(NodeOptions { workers: 1, yaml, ..Default::default() });
    let ready = node.logs.wait_for("worker ready pid=", Duration::from_secs(20)).expect("the probe worker said hello");
    let pid = ready.split("worker ready pid=").nth(1).and_then(|r| r.split_whitespace().next()).unwrap().to_string();
    assert!(node.logs.wait_for("PROBE pid=", Duration::from_secs(5)).is_some());
    let p = probes(&node.logs.lines_containing("PROBE "));
    assert_eq!(p["pid"], pid, "the probes ran in the worker the gateway spawned");
    assert_strict(&p);
    // It is a real worker, confined as it probed: it loads a track.
    assert_eq!(node.get("/version").status(), 200, "the gateway is unaffected");
    let media = TestServer::start();
    media.route("/t.wav", Route::file(sine_wav(440.0, 0.5, 48_000, 2, 0.5), "audio/wav"));
    assert_eq!(node.load(&media.url("/t.wav"))["loadType"], "track");
}

#[test]
fn strict_relaxed_and_off() {
    let p = standalone("strict");
    assert_strict(&p);
    assert!(p["abstract_socket"].starts_with("refused:"), "{p:?}");
    let p = standalone("relaxed");
    assert_eq!(p["Seccomp"], "0");
    assert_eq!(p["NoNewPrivs"], "1");
    assert!(p["shadow"].starts_with("refused:"), "landlock stays on: {p:?}");
    assert_eq!(p["hosts"], "allowed");
    // Without seccomp, landlock's scope (this kernel has ABI 6) still contains signals and
    // abstract sockets.
    assert_signals_contained(&p);
    assert!(p["abstract_socket"].starts_with("refused:"), "{p:?}");
    let p = standalone("off");
    assert_eq!((p["kill_parent"].as_str(), p["abstract_socket"].as_str()), ("allowed", "allowed"), "off confines nothing: {p:?}");
    assert_eq!(p["NoNewPrivs"], "0");
    assert_eq!(p["Seccomp"], "0");
}

#[test]
fn workers_cannot_signal_their_siblings() {
    let yaml = format!("caldera:\n  workers: 2\n  workerBinary: {}\n", bin("probe-worker").display());
    let node = Node::start_with(NodeOptions { workers: 2, yaml, ..Default::default() });
    assert!(node.logs.wait_for("workers ready workers=2", Duration::from_secs(20)).is_some());
    let pids = caldera_tests::procfs::live_children(node.pid(), "probe-worker");
    assert_eq!(pids.len(), 2);
    // The second worker to start probes the first (a live sibling): refused.
    assert!(node.logs.wait_count("PROBE kill_sibling=", 2, Duration::from_secs(10)));
    let tried: Vec<String> = node.logs.lines_containing("PROBE kill_sibling=").into_iter().filter(|l| !l.contains("untried")).collect();
    assert!(!tried.is_empty(), "a worker found its sibling");
    assert!(tried.iter().all(|l| l.contains("refused:1")), "{tried:?}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(caldera_tests::procfs::live_children(node.pid(), "probe-worker"), pids, "both workers live on");
    assert_eq!(node.get("/version").status(), 200);
}
