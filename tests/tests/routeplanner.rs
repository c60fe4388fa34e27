//! The route planner over IPv4 loopback: the block 127.0.0.0/28 is local on every Linux host, so
//! the node can bind each of its addresses, and the media server sees which one each request
//! came from and answers 429 to the ones a test picks.

use caldera_tests::audio::sine_wav;
use caldera_tests::http_server::{Route, TestServer};
use caldera_tests::rig::{assert_clean_tone, rig_with};
use caldera_tests::{bin, Node, NodeOptions};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `lavalink.server.ratelimit` over 127.0.0.0/28 without 127.0.0.1, indented for `rig_with`.
fn ratelimit(strategy: &str, extra: &str) -> String {
    format!("    ratelimit:\n      ipBlocks: [\"127.0.0.0/28\"]\n      excludedIps: [\"127.0.0.1\"]\n      strategy: {strategy}\n{extra}")
}

fn node_with(ratelimit_yaml: &str) -> Node {
    let yaml = format!("lavalink:\n  server:\n{ratelimit_yaml}metrics:\n  prometheus:\n    enabled: true\n");
    Node::start_with(NodeOptions { yaml, workers: 1, ..Default::default() })
}

/// One sample of the node's Prometheus metrics, by its full name with labels.
fn metric(node: &Node, series: &str) -> Option<f64> {
    let text = node.get("/metrics").text().unwrap();
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

fn status(node: &Node) -> Value {
    let res = node.get("/v4/routeplanner/status");
    assert_eq!(res.status(), 200);
    res.json().unwrap()
}

fn failing(status: &Value) -> BTreeSet<String> {
    status["details"]["failingAddresses"].as_array().unwrap().iter().map(|f| f["failingAddress"].as_str().unwrap().to_string()).collect()
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn rotate_on_ban_moves_off_rate_limited_addresses_for_loads_and_playback() {
    let rig = rig_with(1, &ratelimit("RotateOnBan", ""));
    let limited = [ip("127.0.0.0"), ip("127.0.0.2")];
    rig.media.rate_limit(move |peer| limited.contains(&peer));
    let wav = sine_wav(440.0, 4.0, 48_000, 2, 0.5);
    rig.media.route("/a.wav", Route::file(wav.clone(), "audio/wav"));
    let before = unix_ms();
    let loaded = rig.node.load(&rig.media.url("/a.wav"));
    assert_eq!(loaded["loadType"], "track", "{loaded}");
    // 127.0.0.0 is rate limited, 127.0.0.1 excluded, 127.0.0.2 rate limited: the probe got
    // through from 127.0.0.3, and stays there.
    let seen = rig.media.peers("/a.wav");
    assert_eq!(seen[..3], [ip("127.0.0.0"), ip("127.0.0.2"), ip("127.0.0.3")], "{seen:?}");
    assert!(seen[3..].iter().all(|p| *p == ip("127.0.0.3")), "{seen:?}");

    let s = status(&rig.node);
    assert_eq!(s["class"], "RotatingIpRoutePlanner");
    let d = &s["details"];
    assert_eq!(d["ipBlock"], json!({"type": "Inet4Address", "size": "16"}));
    assert_eq!((&d["rotateIndex"], &d["ipIndex"], &d["currentAddress"]), (&json!("2"), &json!("3"), &json!("/127.0.0.3")));
    assert_eq!(failing(&s), BTreeSet::from(["/127.0.0.0".to_string(), "/127.0.0.2".to_string()]));
    for f in d["failingAddresses"].as_array().unwrap() {
        let at = f["failingTimestamp"].as_u64().unwrap();
        assert!((before..=unix_ms()).contains(&at), "{f}");
        assert!(f["failingTime"].as_str().unwrap().contains(" UTC "), "{f}");
    }

    // Playback: the stream is fetched from the planner's address too, and it plays.
    let hits_before = rig.media.hits("/a.wav").len();
    rig.play(7001, "/a.wav", wav, json!({}));
    let conn = rig.voice.wait_audio(7001, 100, Duration::from_secs(10));
    assert_clean_tone(&conn.audio(), 440.0, 100, "played through the route planner");
    let stream_peers = rig.media.peers("/a.wav");
    assert!(stream_peers.len() > hits_before, "playback fetched the file");
    assert!(stream_peers[hits_before..].iter().all(|p| *p == ip("127.0.0.3")), "{stream_peers:?}");

    // Freeing: one address, then all.
    assert_eq!(rig.node.post("/v4/routeplanner/free/address", &json!({"address": "127.0.0.0"})).status(), 204);
    assert_eq!(failing(&status(&rig.node)), BTreeSet::from(["/127.0.0.2".to_string()]));
    let bad = rig.node.post("/v4/routeplanner/free/address", &json!({"address": "not-an-address"}));
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().unwrap();
    assert_eq!((body["status"].as_u64(), body["path"].as_str()), (Some(400), Some("/v4/routeplanner/free/address")));
    assert!(body["message"].as_str().unwrap().contains("Invalid address"), "{body}");
    assert_eq!(rig.node.post("/v4/routeplanner/free/all", &json!({})).status(), 204);
    assert!(failing(&status(&rig.node)).is_empty());

    // Everything rate limited: a load gives up after Lavalink's default 4 retries (5 attempts,
    // each from a new address) and says why; so does playback, as a TrackException.
    rig.media.rate_limit(|_| true);
    rig.media.route("/b.wav", Route::file(sine_wav(440.0, 1.0, 48_000, 2, 0.5), "audio/wav"));
    let refused = rig.node.load(&rig.media.url("/b.wav"));
    assert_eq!(refused["loadType"], "error", "{refused}");
    assert_eq!(refused["data"]["message"], "Retry aborted, too many retries on ratelimit.");
    let tried = rig.media.peers("/b.wav");
    assert_eq!(tried.len(), 5, "{tried:?}");
    assert_eq!(tried.iter().collect::<BTreeSet<_>>().len(), 5, "each attempt from another address: {tried:?}");
    assert!(!tried.contains(&ip("127.0.0.1")));
    assert_eq!(failing(&status(&rig.node)).len(), 5);

    let (_, player) = rig.session.patch(7002, json!({"voice": rig.voice_state(7002), "track": {"encoded": loaded["data"]["encoded"]}}));
    assert_eq!(player["track"]["info"]["uri"], rig.media.url("/a.wav"), "{player}");
    let (_, exception) = rig.session.wait_event("TrackExceptionEvent", 7002, Duration::from_secs(15)).expect("TrackException");
    assert_eq!(exception["exception"]["message"], "Retry aborted, too many retries on ratelimit.", "{exception}");
    let (_, end) = rig.ended(7002, Duration::from_secs(5));
    assert_eq!(end["reason"], "loadFailed");
    assert_eq!(failing(&status(&rig.node)).len(), 10);
}

#[test]
fn load_balance_spreads_requests_and_skips_failing_addresses() {
    let node = node_with(&ratelimit("LoadBalance", ""));
    let media = TestServer::start();
    media.route("/t.wav", Route::file(sine_wav(440.0, 0.5, 48_000, 2, 0.5), "audio/wav"));
    for _ in 0..60 {
        assert_eq!(node.load(&media.url("/t.wav"))["loadType"], "track");
    }
    let mut spread: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for p in media.peers("/t.wav") {
        *spread.entry(p).or_default() += 1;
    }
    let block: ipnet::IpNet = "127.0.0.0/28".parse().unwrap();
    assert!(spread.keys().all(|a| block.contains(a) && *a != ip("127.0.0.1")), "{spread:?}");
    // 60 requests over 15 addresses: about 4 each.
    assert!(spread.len() >= 12, "only {} addresses used: {spread:?}", spread.len());
    assert!(spread.values().all(|&n| n <= 16), "uneven: {spread:?}");

    // A rate-limited address is used once, marked failing, and never again.
    media.rate_limit(|p| p == ip("127.0.0.5"));
    let mut limited_hits = 0;
    for _ in 0..200 {
        assert_eq!(node.load(&media.url("/t.wav"))["loadType"], "track");
        limited_hits = media.peers("/t.wav").iter().filter(|p| **p == ip("127.0.0.5")).count() - spread.get(&ip("127.0.0.5")).copied().unwrap_or(0);
        if limited_hits > 0 {
            break;
        }
    }
    assert_eq!(limited_hits, 1);
    let before = media.peers("/t.wav").len();
    for _ in 0..100 {
        assert_eq!(node.load(&media.url("/t.wav"))["loadType"], "track");
    }
    assert!(!media.peers("/t.wav")[before..].contains(&ip("127.0.0.5")));
    let s = status(&node);
    assert_eq!(s["class"], "BalancingIpRoutePlanner");
    assert_eq!(s["details"].as_object().unwrap().keys().collect::<Vec<_>>(), ["failingAddresses", "ipBlock"]);
    assert_eq!(failing(&s), BTreeSet::from(["/127.0.0.5".to_string()]));
}

#[test]
fn retry_limits_bound_the_attempts() {
    let media = TestServer::start();
    media.route("/t.wav", Route::file(sine_wav(440.0, 0.5, 48_000, 2, 0.5), "audio/wav"));
    media.rate_limit(|_| true);
    // retryLimit 2: the first attempt and two retries.
    let node = node_with(&ratelimit("RotateOnBan", "      retryLimit: 2\n"));
    let result = node.load(&media.url("/t.wav"));
    assert_eq!(result["data"]["message"], "Retry aborted, too many retries on ratelimit.", "{result}");
    assert_eq!(media.peers("/t.wav").len(), 3);
    drop(node);

    // retryLimit 0 (unlimited): every usable address is tried once, then the block is exhausted.
    let media = TestServer::start();
    media.rate_limit(|_| true);
    let node = node_with(&ratelimit("RotateOnBan", "      retryLimit: 0\n"));
    let result = node.load(&media.url("/t.wav"));
    assert_eq!(result["loadType"], "error", "{result}");
    assert_eq!(result["data"]["message"], "No outbound address is free to make the request from.", "{result}");
    let tried = media.peers("/t.wav");
    assert_eq!(tried.len(), 15, "{tried:?}");
    assert_eq!(tried.iter().collect::<BTreeSet<_>>().len(), 15);
    assert_eq!(failing(&status(&node)).len(), 15);
    assert_eq!(metric(&node, "caldera_routeplanner_failing_addresses"), Some(15.0));
    assert_eq!(metric(&node, "caldera_routeplanner_failures_total"), Some(15.0));
    assert_eq!(metric(&node, "caldera_routeplanner_leases_total{result=\"granted\"}"), Some(15.0));
    assert_eq!(metric(&node, "caldera_routeplanner_leases_total{result=\"exhausted\"}"), Some(1.0));
    // Freed, the addresses work again.
    media.rate_limit(|_| false);
    media.route("/t.wav", Route::file(sine_wav(440.0, 0.5, 48_000, 2, 0.5), "audio/wav"));
    assert_eq!(node.post("/v4/routeplanner/free/all", &json!({})).status(), 204);
    assert_eq!(node.load(&media.url("/t.wav"))["loadType"], "track");
}

#[test]
fn without_a_planner_status_is_204_and_freeing_is_500() {
    let node = Node::start_with(NodeOptions { workers: 1, ..Default::default() });
    let res = node.get("/v4/routeplanner/status");
    assert_eq!(res.status(), 204);
    assert!(res.text().unwrap().is_empty());
    for (path, body) in [("/v4/routeplanner/free/address", json!({"address": "127.0.0.1"})), ("/v4/routeplanner/free/all", json!({}))] {
        let res = node.post(path, &body);
        assert_eq!(res.status(), 500, "{path}");
        let body: Value = res.json().unwrap();
        assert_eq!(body["message"], "Can't access disabled route planner", "{body}");
        assert_eq!(body["error"], "Internal Server Error");
    }
    // Loads go out unbound, from the usual loopback address.
    let media = TestServer::start();
    media.route("/t.wav", Route::file(sine_wav(440.0, 0.5, 48_000, 2, 0.5), "audio/wav"));
    assert_eq!(node.load(&media.url("/t.wav"))["loadType"], "track");
    assert_eq!(media.peers("/t.wav")[0], ip("127.0.0.1"));
}

#[test]
fn invalid_planner_config_is_a_startup_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let check = |ratelimit: &str| {
        let path = dir.path().join("application.yml");
        std::fs::write(&path, format!("lavalink:\n  server:\n    ratelimit:\n{ratelimit}")).unwrap();
        let out = Command::new(bin("caldera")).args(["check-config", "--config"]).arg(&path).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    for (yaml, key) in [
        ("      ipBlocks: [\"10.0.0.0/33\"]\n", "lavalink.server.ratelimit.ipBlocks"),
        ("      ipBlocks: [\"10.0.0.0/24\", \"2001:db8::/64\"]\n", "lavalink.server.ratelimit.ipBlocks"),
        ("      ipBlocks: [\"10.0.0.0/24\"]\n      strategy: Sideways\n", "lavalink.server.ratelimit.strategy"),
        ("      ipBlocks: [\"10.0.0.0/24\"]\n      strategy: NanoSwitch\n", "lavalink.server.ratelimit.ipBlocks"),
        ("      ipBlocks: [\"10.0.0.0/24\"]\n      excludedIps: [\"10.0.0.x\"]\n", "lavalink.server.ratelimit.excludedIps"),
    ] {
        let (code, text) = check(yaml);
        assert_eq!(code, Some(1), "{yaml}: {text}");
        assert!(text.contains(key), "{yaml}: {text}");
    }
    let (code, text) = check("      ipBlocks: [\"2001:db8::/48\"]\n      strategy: rotatingnanoswitch\n      retryLimit: 0\n");
    assert_eq!(code, Some(0), "{text}");
}

#[test]
fn python_lavalink_client_reads_and_frees_the_planner() {
    let node = node_with(&ratelimit("RotateOnBan", ""));
    let media = TestServer::start();
    media.route("/t.wav", Route::file(sine_wav(440.0, 0.5, 48_000, 2, 0.5), "audio/wav"));
    media.rate_limit(|p| p == ip("127.0.0.0") || p == ip("127.0.0.2"));
    let seen = node.python("routeplanner.py", &[&media.url("/t.wav"), "127.0.0.0"]);
    assert!(seen["load_type"].as_str().unwrap().to_lowercase().contains("track"), "{seen}");
    assert_eq!(seen["before"]["class"], "RotatingIpRoutePlanner", "{seen}");
    assert_eq!(failing(&seen["before"]), BTreeSet::from(["/127.0.0.0".to_string(), "/127.0.0.2".to_string()]));
    assert_eq!(seen["freed_one"], true);
    assert_eq!(failing(&seen["after_one"]), BTreeSet::from(["/127.0.0.2".to_string()]));
    assert_eq!(seen["freed_all"], true);
    assert!(failing(&seen["after_all"]).is_empty(), "{seen}");
}
