//! Foundation, end to end: the real gateway with real worker processes (issue: foundation).

use caldera_protocol::{frame, ToGateway, WorkerHello, MAX_FRAME_LEN};
use caldera_tests::systemd::NotifySocket;
use caldera_tests::{bin, eventually, procfs, Node, NodeOptions, PASSWORD};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

fn error_body(res: reqwest::blocking::Response, status: u16, path: &str) -> Value {
    assert_eq!(res.status().as_u16(), status);
    assert_eq!(res.headers()["lavalink-api-version"], "4");
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let body: Value = res.json().unwrap();
    assert_eq!(body["status"], status);
    assert!(body["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(body["path"], path);
    body
}

#[test]
fn http_skeleton_auth_and_error_shape() {
    let node = Node::start();
    let http = node.client();

    let res = http.get(node.url("/version")).send().unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["lavalink-api-version"], "4");
    assert_eq!(res.text().unwrap(), env!("CARGO_PKG_VERSION"));

    let res = node.get("/v4/info");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["lavalink-api-version"], "4");
    assert_eq!(res.headers()["content-type"], "application/json");
    let info: Value = res.json().unwrap();
    assert_eq!(info["version"]["semver"], env!("CARGO_PKG_VERSION"));
    for key in ["major", "minor", "patch"] {
        assert!(info["version"][key].is_u64(), "{key}");
    }
    assert!(info["version"]["preRelease"].is_null());
    assert!(info["buildTime"].is_i64());
    assert!(info["git"]["commit"].is_string() && info["git"]["branch"].is_string());
    assert!(info["jvm"].as_str().unwrap().contains("rustc"));
    assert!(info["lavaplayer"].is_string());
    assert!(info["sourceManagers"].is_array() && info["filters"].is_array());
    assert_eq!(info["plugins"], serde_json::json!([]));

    let body = error_body(http.get(node.url("/v4/info")).send().unwrap(), 401, "/v4/info");
    assert_eq!(body["error"], "Unauthorized");
    assert!(body.get("trace").is_none());
    let body = error_body(http.get(node.url("/v4/info")).header("Authorization", "nope").send().unwrap(), 403, "/v4/info");
    assert_eq!(body["error"], "Forbidden");

    let body = error_body(node.get("/v4/does-not-exist"), 404, "/v4/does-not-exist");
    assert_eq!(body["error"], "Not Found");
    assert!(body.get("trace").is_none());
    let body = error_body(node.get("/v4/does-not-exist?trace=true"), 404, "/v4/does-not-exist");
    assert!(body["trace"].is_string());
    // Unknown paths need the password too.
    error_body(http.get(node.url("/v4/does-not-exist")).send().unwrap(), 401, "/v4/does-not-exist");
    // Wrong method on a known route: still the error shape.
    error_body(http.post(node.url("/v4/info")).header("Authorization", PASSWORD).send().unwrap(), 405, "/v4/info");
}

#[test]
fn killed_worker_is_replaced_and_gateway_keeps_serving() {
    let node = Node::start_with(NodeOptions { workers: 2, ..Default::default() });
    let before = node.wait_workers(2, Duration::from_secs(20));
    let victim = before[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let t0 = Instant::now();
    // The gateway keeps answering while the worker is replaced.
    let mut answered = 0;
    let after = eventually(Duration::from_secs(10), "a replacement worker says hello", || {
        assert_eq!(node.get("/v4/info").status(), 200);
        answered += 1;
        let pids = node.worker_pids();
        let ok = pids.len() == 2
            && !pids.contains(&victim)
            && pids.iter().all(|p| node.logs.count(&format!("worker ready pid={p}")) > 0);
        ok.then_some(pids)
    });
    assert!(t0.elapsed() < Duration::from_secs(5), "replacement took {:?}", t0.elapsed());
    assert!(answered > 0);
    assert!(after.contains(&before[1]), "the other worker was untouched");
    assert!(node.logs.wait_for(&format!("pid={victim} exit=killed by SIGKILL"), Duration::from_secs(1)).is_some());
    // No zombie left behind by the gateway.
    assert!(!procfs::alive(victim));
    assert!(procfs::stat(victim).is_none(), "killed worker was not reaped");
}

#[test]
fn hung_worker_is_killed_after_missed_pings_and_replaced() {
    let node = Node::start_with(NodeOptions { workers: 1, ..Default::default() });
    let before = node.wait_workers(1, Duration::from_secs(20));
    let hung = before[0];
    // A stopped process cannot answer pings: exactly what a hang looks like from outside.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(hung as i32), Signal::SIGSTOP).unwrap();
    let t0 = Instant::now();
    assert!(
        node.logs.wait_for("worker stopped answering pings", Duration::from_secs(15)).is_some(),
        "hung worker was not detected"
    );
    let detected = t0.elapsed();
    assert!(detected >= Duration::from_secs(4), "killed too early: {detected:?}");
    // The killed worker may still be listed until it is reaped: wait for its replacement.
    eventually(Duration::from_secs(10), "a replacement for the hung worker", || {
        let pids = node.worker_pids();
        let ok = pids.len() == 1 && !pids.contains(&hung) && node.logs.count(&format!("worker ready pid={}", pids[0])) > 0;
        ok.then_some(())
    });
    eventually(Duration::from_secs(5), "the hung worker reaped", || procfs::stat(hung).is_none().then_some(()));
}

#[test]
fn killing_the_gateway_takes_its_workers_down() {
    let mut node = Node::start_with(NodeOptions { workers: 2, ..Default::default() });
    let workers = node.wait_workers(2, Duration::from_secs(20));
    node.signal(Signal::SIGKILL);
    node.wait_exit(Duration::from_secs(5)).expect("gateway did not die");
    let t0 = Instant::now();
    eventually(Duration::from_secs(2), "workers exit after the gateway died", || {
        workers.iter().all(|&p| !procfs::alive(p)).then_some(())
    });
    eprintln!("workers gone {:?} after the gateway", t0.elapsed());
}

#[test]
fn sigterm_stops_workers_and_exits_zero() {
    let mut node = Node::start_with(NodeOptions { workers: 2, ..Default::default() });
    let workers = node.wait_workers(2, Duration::from_secs(20));
    node.signal(Signal::SIGTERM);
    let status = node.wait_exit(Duration::from_secs(10)).expect("gateway did not stop on SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    assert!(workers.iter().all(|&p| !procfs::alive(p)), "workers outlived the gateway");
    assert!(node.logs.count("shutdown requested") >= 2, "workers were not asked to shut down");
    assert_eq!(node.logs.count("did not exit in time"), 0);
}

#[test]
fn stray_ipc_connections_are_rejected_without_harm() {
    let node = Node::start_with(NodeOptions { workers: 2, ..Default::default() });
    let workers = node.wait_workers(2, Duration::from_secs(20));
    let line = node.logs.wait_for("IPC socket ready", Duration::from_secs(5)).unwrap();
    let socket = line.rsplit("socket=").next().unwrap().trim().to_string();

    // The runtime directory is private to the gateway's user.
    let dir = std::path::Path::new(&socket).parent().unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);

    let closed_by_gateway = |mut s: UnixStream| {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 64];
        // The gateway never answers a stranger: the next read sees the close (0 bytes or reset).
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("gateway answered a stray peer with {n} bytes"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    };
    let forged = |token: &str| {
        let hello = ToGateway::Hello(WorkerHello {
            protocol_version: caldera_protocol::build::PROTOCOL_VERSION,
            build_id: caldera_protocol::build::BUILD_ID.into(),
            worker_id: 0,
            pid: std::process::id(),
            token: token.into(),
        });
        frame::encode(&hello, MAX_FRAME_LEN).unwrap()
    };
    let attempts: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),                 // garbage
        u32::MAX.to_le_bytes().to_vec(),                       // oversize length
        forged("0123456789abcdef0123456789abcdef"),            // a well-formed hello, wrong token
        frame::encode(&ToGateway::Pong { seq: 1 }, MAX_FRAME_LEN).unwrap(), // not a hello
    ];
    let n = attempts.len();
    for bytes in attempts {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.write_all(&bytes).unwrap();
        closed_by_gateway(s);
    }
    // Silence: dropped after the hello timeout.
    let t0 = Instant::now();
    closed_by_gateway(UnixStream::connect(&socket).unwrap());
    assert!(t0.elapsed() >= Duration::from_secs(4), "silent peer dropped after {:?}", t0.elapsed());

    assert!(node.logs.wait_count("rejected an IPC connection", n + 1, Duration::from_secs(5)));
    assert_eq!(node.get("/v4/info").status(), 200);
    assert_eq!(node.worker_pids(), workers, "workers were disturbed");
    assert_eq!(node.logs.count("worker exited"), 0);
}

#[test]
fn workers_get_a_cleared_environment() {
    let node = Node::start_with(NodeOptions {
        workers: 1,
        env: vec![
            ("CALDERA_TEST_SECRET".into(), "do-not-leak".into()),
            ("SSL_CERT_FILE".into(), "/etc/ssl/certs/ca-certificates.crt".into()),
        ],
        ..Default::default()
    });
    let pid = node.wait_workers(1, Duration::from_secs(20))[0];
    let mut keys = procfs::env_keys(pid);
    keys.sort();
    let allowed = [
        "CALDERA_EVIDENCE_FD",
        "CALDERA_GATEWAY_PID",
        "CALDERA_IPC_SOCKET",
        "CALDERA_LOCAL_DIRS",
        "CALDERA_SANDBOX",
        "CALDERA_WORKER_ID",
        "CALDERA_WORKER_TOKEN",
        "NO_COLOR",
        "RUST_BACKTRACE",
        "RUST_LOG",
        "SSL_CERT_DIR",
        "SSL_CERT_FILE",
    ];
    assert!(keys.iter().all(|k| allowed.contains(&k.as_str())), "unexpected variables: {keys:?}");
    assert!(keys.contains(&"SSL_CERT_FILE".to_string()));
    assert!(!keys.contains(&"CALDERA_TEST_SECRET".to_string()));
}

#[test]
fn crash_looping_worker_backs_off() {
    // A "worker" that dies at once: the gateway must back off, not spin.
    let node = Node::start_with(NodeOptions {
        yaml: "caldera:\n  workers: 1\n  workerBinary: /bin/false\n".into(),
        wait_listening: false,
        ..Default::default()
    });
    std::thread::sleep(Duration::from_secs(6));
    let failures = node.logs.count("worker exited before saying hello");
    // 0 s, +0.5, +1, +2, +4: about four attempts in six seconds; a spinning loop makes thousands.
    assert!((2..=6).contains(&failures), "{failures} spawns in 6 s");
    assert!(node.logs.count("respawning worker after backoff delay_ms=2000") >= 1);
}

#[test]
fn environment_overrides_the_password() {
    let node = Node::start_with(NodeOptions {
        workers: 1,
        env: vec![("LAVALINK_SERVER_PASSWORD".into(), "from-env".into())],
        ..Default::default()
    });
    let http = node.client();
    assert_eq!(http.get(node.url("/v4/info")).header("Authorization", "from-env").send().unwrap().status(), 200);
    assert_eq!(node.get("/v4/info").status(), 403);
}

#[test]
fn check_config_validates_files() {
    let dir = tempfile::tempdir().unwrap();
    let run = |yaml: &str| {
        let path = dir.path().join("application.yml");
        std::fs::write(&path, yaml).unwrap();
        let out = Command::new(bin("caldera")).args(["check-config", "--config"]).arg(&path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let (code, text) = run("server:\n  port: 99999\n");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("server.port"), "{text}");
    let (code, text) = run("caldera:\n  workers: 0\n");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("caldera.workers"), "{text}");
    let (code, text) = run("lavalink:\n  server:\n    playerUpdateInterval: soon\n");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("lavalink.server.playerUpdateInterval"), "{text}");
    let (code, text) = run("caldera:\n  worker:\n    sandbox: sometimes\n");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("caldera.worker.sandbox"), "{text}");
    let (code, text) = run("server:\n  port: 2333\nlavalink:\n  server:\n    password: x\n  mystery: 1\n");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("lavalink.mystery"), "unknown keys are reported: {text}");
    let missing = Command::new(bin("caldera")).args(["check-config", "--config", "/nonexistent.yml"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn systemd_notify_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(dir.path());
    let mut node = Node::start_with(NodeOptions {
        workers: 2,
        env: vec![notify.env(), ("WATCHDOG_USEC".into(), "200000".into())],
        wait_listening: false,
        ..Default::default()
    });
    let ready = notify.wait_for("READY=1", Duration::from_secs(30));
    // READY only once both workers said hello and the listener is up: its status line carries
    // what the gateway saw at that moment.
    assert!(ready.contains("STATUS=serving on 127.0.0.1:") && ready.contains("with 2 of 2 workers"), "{ready}");
    assert!(node.logs.wait_count("worker ready pid=", 2, Duration::from_secs(5)));
    // Watchdog pings at half of WATCHDOG_USEC (every 100 ms).
    let pings = notify.count_during("WATCHDOG=1", Duration::from_secs(1));
    assert!((6..=14).contains(&pings), "{pings} watchdog pings in 1 s");
    node.signal(Signal::SIGTERM);
    notify.wait_for("STOPPING=1", Duration::from_secs(10));
    assert!(node.wait_exit(Duration::from_secs(10)).expect("stopped").success());
}

#[test]
fn systemd_units_verify() {
    // The units name /usr/local/bin/caldera; verify them against the binary just built.
    let dir = tempfile::tempdir().unwrap();
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    for (file, as_name) in [("caldera.service", "caldera.service"), ("caldera@.service", "caldera@a.service")] {
        let text = std::fs::read_to_string(units.join(file)).unwrap().replace("/usr/local/bin/caldera", bin("caldera").to_str().unwrap());
        let path = dir.path().join(as_name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze (Debian's systemd package)");
        let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && said.trim().is_empty(), "{file}: {said}");
    }
}

#[test]
fn workers_run_sandboxed_unless_told_otherwise() {
    let status_of = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |status: &str, key: &str| status.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).unwrap_or("").to_string();
    let strict = Node::start_with(NodeOptions { workers: 1, ..Default::default() });
    let pid = strict.wait_workers(1, Duration::from_secs(20))[0];
    let s = status_of(pid);
    assert_eq!(field(&s, "NoNewPrivs:"), "1");
    assert_eq!(field(&s, "Seccomp:"), "2");
    assert!(strict.logs.wait_for("sandbox applied mode=Strict", Duration::from_secs(5)).is_some());
    // The gateway itself is not sandboxed; only the workers that parse media are.
    assert_eq!(field(&status_of(strict.pid()), "Seccomp:"), "0");
    let off = Node::start_with(NodeOptions { workers: 1, yaml: "caldera:\n  workers: 1\n  worker:\n    sandbox: off\n".into(), ..Default::default() });
    let pid = off.wait_workers(1, Duration::from_secs(20))[0];
    assert_eq!(field(&status_of(pid), "Seccomp:"), "0");
    assert!(off.logs.wait_for("SANDBOX OFF", Duration::from_secs(5)).is_some(), "off must be loud");
}
