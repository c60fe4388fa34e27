//! Stats, end to end: numbers read from the real processes, players across sessions, the
//! WebSocket stats op, and (one slow test) CPU load and frameStats after a minute of playback.

use caldera_tests::audio::sine_wav;
use caldera_tests::client::Session;
use caldera_tests::rig::rig;
use caldera_tests::PASSWORD;
use serde_json::{json, Value};
use std::time::Duration;

fn mem_total() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    text.lines().find_map(|l| l.strip_prefix("MemTotal:")).and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok()).unwrap() * 1024
}

#[test]
fn stats_are_real_numbers_across_sessions() {
    let rig = rig(2);
    let other = Session::connect(&rig.node);
    // The stats op follows ready on every new socket.
    let first_two: Vec<Value> = other.messages().into_iter().take(2).collect();
    assert_eq!(first_two[0]["op"], "ready");
    let ws = rig.session.wait_for(|m| m["op"] == "stats", Duration::from_secs(5)).expect("stats op after ready");
    assert_eq!(rig.session.messages()[1]["op"], "stats");
    assert_eq!(ws["frameStats"], Value::Null, "no player has played a minute");

    let wav = sine_wav(440.0, 20.0, 48_000, 2, 0.5);
    rig.play(4001, "/s1.wav", wav.clone(), json!({}));
    rig.play(4002, "/s2.wav", wav.clone(), json!({"paused": true}));
    other.patch(4003, json!({"volume": 50}));
    rig.voice.wait_audio(4001, 25, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(2500)); // a fresh resource report from each worker

    let res = rig.node.get("/v4/stats");
    assert_eq!(res.status(), 200);
    let stats: Value = res.json().unwrap();
    assert_eq!(stats["players"], 3, "{stats}");
    assert_eq!(stats["playingPlayers"], 1, "{stats}");
    assert!(stats.get("frameStats").is_none_or(Value::is_null), "REST has no frameStats: {stats}");
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(stats["cpu"]["cores"], cores);
    for key in ["systemLoad", "lavalinkLoad"] {
        let v = stats["cpu"][key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{key} {v}");
    }
    let uptime = stats["uptime"].as_u64().unwrap();
    assert!(uptime > 1000 && uptime < 120_000, "uptime {uptime}");
    // Memory is the whole node: gateway + workers, as /proc sees them (10% slack: they move).
    let pids: Vec<u32> = std::iter::once(rig.node.pid()).chain(rig.node.worker_pids()).collect();
    let measured: u64 = pids.iter().map(|p| caldera_tests::procfs::rss_bytes(*p)).sum();
    let used = stats["memory"]["used"].as_u64().unwrap();
    assert!(used as f64 >= measured as f64 * 0.9, "used {used} < processes' RSS {measured}");
    assert_eq!(stats["memory"]["allocated"], stats["memory"]["used"]);
    assert_eq!(stats["memory"]["reservable"].as_u64().unwrap(), mem_total());
    assert!(stats["memory"]["free"].as_u64().unwrap() > 0);
    // Auth as every route.
    assert_eq!(rig.node.client().get(rig.node.url("/v4/stats")).send().unwrap().status(), 401);
    let wrong = rig.node.client().get(rig.node.url("/v4/stats")).header("Authorization", format!("{PASSWORD}x")).send().unwrap();
    assert_eq!(wrong.status(), 403);
}

/// The one slow test: a minute of playback for CPU load and frameStats.
#[test]
fn load_and_frame_stats_after_a_minute_of_playback() {
    let rig = rig(2);
    rig.session.configure(json!({"resuming": true, "timeout": 30}));
    // The first reading sets the CPU baseline and reads 0.
    let first: Value = rig.node.get("/v4/stats").json().unwrap();
    assert_eq!(first["cpu"]["lavalinkLoad"], 0.0);
    let wav = sine_wav(440.0, 90.0, 44_100, 2, 0.5);
    for guild in [4101u64, 4102] {
        rig.play(guild, &format!("/m{guild}.wav"), wav.clone(), json!({}));
    }
    std::thread::sleep(Duration::from_secs(31));
    let busy: Value = rig.node.get("/v4/stats").json().unwrap();
    let load = busy["cpu"]["lavalinkLoad"].as_f64().unwrap();
    assert!(load > 0.0, "two playing players and lavalinkLoad is {load}");
    assert!(busy["cpu"]["systemLoad"].as_f64().unwrap() > 0.0, "{busy}");
    std::thread::sleep(Duration::from_secs(32));
    // A fresh socket (resuming the session) gets a stats op right after ready, now with frames.
    rig.session.drop_and_wait_resumable();
    let resumed = Session::connect_with(&rig.node, &[("Session-Id", Some(&rig.session.id))]).unwrap();
    assert_eq!(resumed.ready["resumed"], true);
    let stats = resumed.wait_for(|m| m["op"] == "stats", Duration::from_secs(5)).expect("stats op");
    let fs = &stats["frameStats"];
    assert!(fs.is_object(), "frameStats after a minute of playback: {stats}");
    let (sent, nulled, deficit) = (fs["sent"].as_i64().unwrap(), fs["nulled"].as_i64().unwrap(), fs["deficit"].as_i64().unwrap());
    assert!(sent >= 2900, "{fs}");
    assert!(nulled <= 50, "{fs}");
    // Each field is averaged on its own (integer division, as Lavalink does): ±1 between them.
    assert!((deficit - (3000 - sent - nulled)).abs() <= 1, "{fs}");

    // A killed worker's player counts as deficit, not as missing data.
    let pid = rig.worker_pid(rig.worker_of(4101)) as i64;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    resumed.drop_and_wait_resumable();
    let again = Session::connect_with(&rig.node, &[("Session-Id", Some(&rig.session.id))]).unwrap();
    let stats = again.wait_for(|m| m["op"] == "stats", Duration::from_secs(5)).expect("stats op");
    let fs = &stats["frameStats"];
    let deficit = fs["deficit"].as_i64().unwrap();
    // Two players, one of them lost: about half of the expected frames are missing on average.
    assert!((1300..=1600).contains(&deficit), "{fs}");
}

#[test]
fn connections_and_workers_endpoints() {
    let node = caldera_tests::Node::start_with(caldera_tests::NodeOptions { workers: 2, ..Default::default() });
    let a = Session::connect(&node);
    let b = Session::connect(&node);
    a.configure(json!({"resuming": true, "timeout": 60}));
    a.send_text("hello");
    b.patch(4201, json!({"volume": 20}));
    std::thread::sleep(Duration::from_millis(200));
    let get = |path: &str| -> Value { node.get(path).json().unwrap() };
    let c = get("/v4/caldera/connections");
    assert_eq!(c["summary"]["active"], 2, "{c}");
    assert_eq!(c["summary"]["total"], 2);
    assert!(c["summary"]["peak"].as_u64().unwrap() >= 2);
    let entry = |c: &Value, id: &str| c["connections"].as_array().unwrap().iter().find(|e| e["sessionId"] == id).cloned().unwrap();
    let ea = entry(&c, &a.id);
    assert_eq!(ea["state"], "open");
    assert_eq!(ea["clientName"], "caldera-tests/1.0");
    assert_eq!(ea["userId"], caldera_tests::client::USER_ID.to_string());
    assert!(ea["remoteAddress"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(ea["messagesSent"].as_u64().unwrap() >= 2, "ready and stats: {ea}");
    assert!(ea["bytesSent"].as_u64().unwrap() > 50);
    assert_eq!(ea["messagesReceived"], 1);
    assert_eq!(ea["bytesReceived"], 5);
    assert_eq!(entry(&c, &b.id)["players"], 1);
    // a drops (resumable), b closes for good.
    b.drop_connection();
    a.drop_and_wait_resumable();
    let c = caldera_tests::eventually(Duration::from_secs(10), "both sockets seen closed", || {
        let c = get("/v4/caldera/connections");
        (c["summary"]["closed"] == 2).then_some(c)
    });
    assert_eq!(c["summary"]["active"], 0, "{c}");
    assert_eq!(c["summary"]["closed"], 2);
    assert_eq!(c["connections"].as_array().unwrap().len(), 1);
    let ea = entry(&c, &a.id);
    assert_eq!(ea["state"], "resumable");
    let left = ea["resumeTimeLeftMs"].as_i64().unwrap();
    assert!(left > 55_000 && left <= 60_000, "{left}");

    let w = get("/v4/caldera/workers");
    let workers = w["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    let pids = node.worker_pids();
    for worker in workers {
        assert!(pids.contains(&(worker["pid"].as_u64().unwrap() as u32)), "{worker}");
        assert_eq!(worker["state"], "ready");
        assert!(worker["rssBytes"].as_u64().unwrap() > 1_000_000);
        assert!(worker["lastPingRttMs"].as_f64().is_some());
        assert_eq!(worker["restarts"], 0);
    }
    assert_eq!(node.client().get(node.url("/v4/caldera/workers")).send().unwrap().status(), 401);
}

#[test]
fn shutdown_closes_websockets_with_1001() {
    let mut node = caldera_tests::Node::start_with(caldera_tests::NodeOptions { workers: 1, ..Default::default() });
    let s = Session::connect(&node);
    node.signal(nix::sys::signal::Signal::SIGTERM);
    let status = node.wait_exit(Duration::from_secs(15)).expect("node stops");
    assert!(status.success());
    let closed = s.closed().expect("socket closed");
    assert_eq!(closed.0, 1001, "{closed:?}");
}
