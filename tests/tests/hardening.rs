//! Findings of the adversarial run against the release build (the hardening issue), each
//! reproduced: it failed before its fix.

use caldera_tests::audio::sine_wav;
use caldera_tests::client::Session;
use caldera_tests::http_server::{Route, TestServer};
use caldera_tests::rig::{encoded_track, encoded_track_with, rig_configured, rig_with};
use caldera_tests::{resolver_python, Node, NodeOptions};
use serde_json::{json, Value};
use std::time::Duration;

/// Finding 2: with `http` and `local` off, loads answer `empty` — and a track encoded elsewhere
/// (by another node, or forged) is refused too, instead of making the worker fetch its URL or
/// read its file.
#[test]
fn switched_off_sources_cannot_come_back_through_an_encoded_track() {
    let rig = rig_with(1, "    sources:\n      http: false\n      local: false\n");
    rig.media.route("/t.wav", Route::file(sine_wav(440.0, 2.0, 48_000, 2, 0.5), "audio/wav"));
    assert_eq!(rig.node.load(&rig.media.url("/t.wav"))["loadType"], "empty");
    let http = encoded_track(&rig, "/t.wav", "wav");
    let local = encoded_track_with(&rig, "/t.wav", "wav", |i| {
        i.source_name = "local".into();
        i.identifier = "/etc/hostname".into();
        i.uri = Some("/etc/hostname".into());
    });
    for (source, encoded) in [("http", http), ("local", local)] {
        let (status, body) = rig.session.patch(9601, json!({"voice": rig.voice_state(9601), "track": {"encoded": encoded}}));
        assert_eq!(status, 400, "{source}: {body}");
        assert_eq!(body["message"], format!("The track's source `{source}` is disabled on this node"), "{body}");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(rig.media.hits("/t.wav").is_empty(), "nothing was fetched: {:?}", rig.media.hits("/t.wav"));
    assert!(rig.voice.connections(9601).iter().all(|c| c.packets() == 0), "nothing played");
}

/// Finding 7: a resume timeout of i64::MAX overflowed (`resumeTimeLeftMs` 0, never expiring);
/// it is cut to a year and counts down.
#[test]
fn a_huge_resume_timeout_is_cut_to_a_year_and_counts_down() {
    let node = Node::start();
    let session = Session::connect(&node);
    let (status, body) = session.configure(json!({"resuming": true, "timeout": i64::MAX}));
    assert_eq!((status, body["timeout"].as_u64()), (200, Some(YEAR_S)), "{body}");
    session.drop_and_wait_resumable();
    let c: Value = node.get("/v4/caldera/connections").json().unwrap();
    let left = c["connections"].as_array().unwrap().iter().find(|e| e["sessionId"] == session.id.as_str()).unwrap()["resumeTimeLeftMs"].as_i64().unwrap();
    assert!(left > (YEAR_S as i64 - 60) * 1000 && left <= YEAR_S as i64 * 1000, "{left}");
}

const YEAR_S: u64 = 365 * 24 * 3600;

/// Finding 7: a 1 MB identifier was echoed three times in one error body.
#[test]
fn a_huge_identifier_is_refused_without_being_echoed() {
    let node = Node::start();
    let session = Session::connect(&node);
    let huge = format!("http://127.0.0.1:9/{}", "a".repeat(1 << 20));
    let (status, body) = session.patch(9701, json!({"track": {"identifier": huge}}));
    assert_eq!(status, 400, "{}", &body.to_string()[..200.min(body.to_string().len())]);
    assert!(body.to_string().len() < 2000, "the error body is {} bytes", body.to_string().len());
    assert_eq!(body["message"], "The identifier is too long.");
    let long = format!("http://127.0.0.1:9/{}", "a".repeat(20_000));
    let res = node.load(&long);
    assert_eq!((res["loadType"].as_str(), res["data"]["message"].as_str()), (Some("error"), Some("The identifier is too long.")));
    assert!(res.to_string().len() < 2000, "{} bytes", res.to_string().len());
}

/// Finding 7: a resume with another User-Id was accepted (another bot took over the session's
/// players); it opens a new session instead and the first stays resumable for its owner.
#[test]
fn only_the_bot_that_owns_a_session_resumes_it() {
    let node = Node::start();
    let session = Session::connect(&node);
    session.configure(json!({"resuming": true, "timeout": 60}));
    session.drop_and_wait_resumable();
    let other = Session::connect_with(&node, &[("Session-Id", Some(&session.id)), ("User-Id", Some("424242"))]).unwrap();
    assert_eq!(other.ready["resumed"], false);
    assert_ne!(other.id, session.id);
    let owner = Session::connect_with(&node, &[("Session-Id", Some(&session.id))]).unwrap();
    assert_eq!((owner.ready["resumed"].as_bool(), owner.id.as_str()), (Some(true), session.id.as_str()));
}

/// Finding 7: a gateway killed by SIGKILL left its runtime directory behind; the next one
/// started there removes it.
#[test]
fn a_killed_gateways_runtime_directory_is_removed_by_the_next() {
    let base = tempfile::tempdir().unwrap();
    let env = vec![("RUNTIME_DIRECTORY".to_string(), base.path().display().to_string())];
    let mut first = Node::start_with(NodeOptions { env: env.clone(), ..Default::default() });
    let dirs = || std::fs::read_dir(base.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect::<Vec<_>>();
    let left = dirs();
    assert_eq!(left.len(), 1, "{left:?}");
    first.signal(nix::sys::signal::Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(10)).expect("the gateway died");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(dirs(), left, "SIGKILL leaves it behind");
    let second = Node::start_with(NodeOptions { env, ..Default::default() });
    let now = dirs();
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(!now.contains(&left[0]), "the stale directory is gone: {now:?}");
    assert!(second.logs.count("removed the runtime directory of a gateway that is gone") == 1);
}

/// Finding 5: client WebSocket messages up to 64 MB were buffered, and 20,000 one-byte messages
/// wrote 20,000 WARN lines. Messages past 64 KiB end the connection (1009); ignored messages
/// are logged at 1, 2, 4, 8, ...
#[test]
fn client_messages_are_small_and_their_logging_bounded() {
    let node = Node::start();
    let chatty = Session::connect(&node);
    for _ in 0..20_000 {
        chatty.send_text("x");
    }
    caldera_tests::eventually(Duration::from_secs(10), "the messages to be read", || {
        let c: Value = node.get("/v4/caldera/connections").json().ok()?;
        let me = c["connections"].as_array()?.iter().find(|e| e["sessionId"] == chatty.id.as_str())?.clone();
        (me["messagesReceived"].as_u64()? >= 20_000).then_some(())
    });
    let lines = node.logs.count("ignoring client text messages");
    assert!((10..=20).contains(&lines), "{lines} log lines for 20,000 messages");
    let big = Session::connect(&node);
    big.send_text(&"y".repeat(1 << 20));
    let closed = caldera_tests::eventually(Duration::from_secs(10), "the oversized client to be dropped", || big.closed());
    assert_eq!(closed.0, 1009, "{closed:?}");
    assert!(chatty.closed().is_none(), "the other client is untouched");
}

/// Finding 4: idle connections were never closed, and 60 silent connections on a node with 64
/// descriptors made `/version` time out and a worker respawn fail. A connection that sends no
/// request head within 10 s is closed; past the connection cap new ones are closed at once; the
/// node keeps serving.
#[test]
fn silent_connections_are_closed_and_capped() {
    use std::io::Read;
    use std::net::TcpStream;
    let node = Node::start_with(NodeOptions { workers: 1, ..Default::default() });
    let addr = node.addr.unwrap();
    // A silent connection is closed after the header timeout.
    let mut silent = TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = silent.read(&mut buf).unwrap_or(0);
    let waited = started.elapsed();
    assert_eq!(n, 0, "closed without an answer");
    assert!(waited >= Duration::from_secs(9) && waited < Duration::from_secs(15), "closed after {waited:?}");
    // A kept-alive connection that goes quiet after a request is closed the same way.
    let mut kept = TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(&mut kept, b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut answer = Vec::new();
    let started = std::time::Instant::now();
    let _ = kept.read_to_end(&mut answer);
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    assert!(started.elapsed() < Duration::from_secs(15), "the idle kept-alive connection was closed");
    assert_eq!(node.get("/version").status(), 200);
}

/// Source requests never reach denied networks (`caldera.outbound.denyNetworks`, by default
/// link-local and cloud metadata addresses): not by address, not through a redirect from an
/// allowed host, not through yt-dlp.
#[test]
fn denied_networks_are_unreachable_directly_by_redirect_or_through_yt_dlp() {
    let inner = TestServer::start_on("127.0.0.2:0");
    inner.route("/t.wav", Route::file(sine_wav(440.0, 1.0, 48_000, 2, 0.5), "audio/wav"));
    let caldera = format!("  outbound:\n    denyNetworks: [\"127.0.0.2/32\", \"169.254.0.0/16\"]\n  resolver:\n    python: {}\n", resolver_python().display());
    let rig = rig_configured(1, "", &caldera);
    let refused = |identifier: &str| {
        let res = rig.node.load(identifier);
        assert_eq!(res["loadType"], "error", "{identifier}: {res}");
        res["data"]["cause"].as_str().unwrap_or_default().to_string()
    };
    assert!(refused(&inner.url("/t.wav")).contains("denied networks"));
    rig.media.route("/hop", Route::Redirect(inner.url("/t.wav")));
    assert!(refused(&rig.media.url("/hop")).contains("denied networks"));
    assert!(refused("http://169.254.169.254/latest/meta-data/").contains("denied networks"));
    caldera_tests::eventually(Duration::from_secs(30), "the resolver", || {
        let s: Value = rig.node.get("/v4/caldera/resolver").json().ok()?;
        (s["state"] == "ready").then_some(())
    });
    assert!(refused(&format!("ytdlp:{}", inner.url("/t.wav"))).contains("denied networks"));
    assert!(inner.hits("/t.wav").is_empty(), "nothing reached the denied address: {:?}", inner.hits("/t.wav"));
    // An allowed address still plays.
    rig.media.route("/ok.wav", Route::file(sine_wav(440.0, 1.0, 48_000, 2, 0.5), "audio/wav"));
    assert_eq!(rig.node.load(&rig.media.url("/ok.wav"))["loadType"], "track");
}

/// Finding 3: a load the gateway stopped waiting for kept running (the probe thread and its
/// connection lived on; a 1 byte/s server was never cut off). A load's deadline bounds the whole
/// load: its connection is closed and nothing is left running.
#[test]
fn a_timed_out_load_releases_its_connection() {
    let rig = rig_configured(1, "", "  loadTimeoutMs: 2000\n");
    rig.media.route(
        "/slow.mp3",
        Route::Cut { body: std::sync::Arc::new(vec![0xFF; 1 << 20]), content_type: "audio/mpeg".into(), after: 100, hold: Duration::from_secs(60) },
    );
    let pid = rig.worker_pid(0);
    let sockets = || {
        std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten().filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))).count()
    };
    let baseline = sockets();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let res = rig.node.load(&rig.media.url("/slow.mp3"));
        assert_eq!(res["loadType"], "error", "{res}");
        assert!(started.elapsed() < Duration::from_secs(5), "answered within the load timeout: {:?}", started.elapsed());
    }
    caldera_tests::eventually(Duration::from_secs(5), "the stalled connections to be closed", || (sockets() <= baseline).then_some(()));
    assert_eq!(rig.media.hits("/slow.mp3").len(), 5, "one request per load, none left retrying");
}
