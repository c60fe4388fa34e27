//! Stats, end to end: numbers read from the real processes, players across sessions, the
//! WebSocket stats op, and (one slow test) CPU load and frameStats after a minute of playback.

use caldera_tests::audio::sine_wav;
use caldera_tests::client::Session;
use caldera_tests::rig::rig;
use caldera_tests::PASSWORD;
use serde_json::{json, Value};
use std::time::Duration;

fn rss(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok()).unwrap_or(0) * 1024
}

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
    rig.voice.wait_connection(4001, Duration::from_secs(10)).wait_packets(25, Duration::from_secs(10));
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
    let measured: u64 = pids.iter().map(|p| rss(*p)).sum();
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
    assert!(busy["cpu"]["systemLoad"].as_f64().unwrap() >= load * 0.5);
    std::thread::sleep(Duration::from_secs(32));
    // A fresh socket (resuming the session) gets a stats op right after ready, now with frames.
    rig.session.drop_connection();
    let resumed = Session::connect_with(&rig.node, &[("Session-Id", Some(&rig.session.id))]).unwrap();
    assert_eq!(resumed.ready["resumed"], true);
    let stats = resumed.wait_for(|m| m["op"] == "stats", Duration::from_secs(5)).expect("stats op");
    let fs = &stats["frameStats"];
    assert!(fs.is_object(), "frameStats after a minute of playback: {stats}");
    let (sent, nulled, deficit) = (fs["sent"].as_i64().unwrap(), fs["nulled"].as_i64().unwrap(), fs["deficit"].as_i64().unwrap());
    assert!(sent >= 2900, "{fs}");
    assert!(nulled <= 50, "{fs}");
    assert_eq!(deficit, 3000 - sent - nulled);
}
