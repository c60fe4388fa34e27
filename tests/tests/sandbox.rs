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

fn standalone(mode: &str) -> HashMap<String, String> {
    let out = Command::new(bin("probe-worker")).args(["--standalone", mode]).output().unwrap();
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
    let media = TestServer::start();
    media.route("/t.wav", Route::file(sine_wav(440.0, 0.5, 48_000, 2, 0.5), "audio/wav"));
    assert_eq!(node.load(&media.url("/t.wav"))["loadType"], "track");
}

#[test]
fn strict_relaxed_and_off() {
    assert_strict(&standalone("strict"));
    let p = standalone("relaxed");
    assert_eq!(p["Seccomp"], "0");
    assert_eq!(p["NoNewPrivs"], "1");
    assert!(p["shadow"].starts_with("refused:"), "landlock stays on: {p:?}");
    assert_eq!(p["hosts"], "allowed");
    let p = standalone("off");
    assert_eq!(p["NoNewPrivs"], "0");
    assert_eq!(p["Seccomp"], "0");
}
