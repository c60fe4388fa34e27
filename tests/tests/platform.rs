//! Platform sources through the resolver (yt-dlp embedded in a supervised Python process), offline:
//! yt-dlp's generic extractor against pages and media on the loopback test server, heard at the
//! voice double; the route planner's address seen by the server; resolvers that crash, hang,
//! write garbage, answer late or grow; YouTube without a network; the mapping of synthetic
//! YouTube/SoundCloud/Bandcamp results (resolver/test_resolver.py).

use caldera_tests::http_server::Route;
use caldera_tests::media;
use caldera_tests::rig::{rig_configured, Rig};
use caldera_tests::{bin, eventually, resolver_python, Node, NodeOptions};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Lavalink's own example track (its REST docs): a YouTube track it encoded.
const LAVALINK_YOUTUBE_TRACK: &str = "QAAAjQIAJVJpY2sgQXN0bGV5IC0gTmV2ZXIgR29ubmEgR2l2ZSBZb3UgVXAADlJpY2tBc3RsZXlWRVZPAAAAAAADPCAAC2RRdzR3OVdnWGNRAAEAK2h0dHBzOi8vd3d3LnlvdXR1YmUuY29tL3dhdGNoP3Y9ZFF3NHc5V2dYY1EAB3lvdXR1YmUAAAAAAAAAAA==";

fn resolver_yaml(extra: &str) -> String {
    format!("  resolver:\n    python: {}\n{extra}", resolver_python().display())
}

fn platform_rig(lavalink_server_yaml: &str) -> Rig {
    let rig = rig_configured(1, lavalink_server_yaml, &resolver_yaml(""));
    wait_resolver_ready(&rig.node);
    rig
}

fn resolver_status(node: &Node) -> Value {
    node.get("/v4/caldera/resolver").json().unwrap()
}

fn wait_resolver_ready(node: &Node) -> Value {
    eventually(Duration::from_secs(30), "the resolver to be ready", || Some(resolver_status(node)).filter(|s| s["state"] == "ready"))
}

fn page(title: &str, body: &str) -> Vec<u8> {
    format!("<!DOCTYPE html><html><head><title>{title}</title>{body}</html>").into_bytes()
}

fn play_encoded(rig: &Rig, guild: u64, encoded: &str) {
    let (status, body) = rig.session.patch(guild, json!({"voice": rig.voice_state(guild), "track": {"encoded": encoded}}));
    assert_eq!(status, 200, "{body}");
}

fn assert_heard(rig: &Rig, guild: u64, freq: f64, what: &str) {
    let conn = rig.voice.wait_audio(guild, 25, Duration::from_secs(20));
    // Two seconds of audible audio (the first packets may be silence while the player starts).
    let tone = eventually(Duration::from_secs(20), &format!("{what}: 100 audible packets"), || Some(conn.audio().non_silent()).filter(|t| t.packets() >= 100));
    let f = tone.dominant_frequency();
    assert!((f - freq).abs() < freq * 0.02, "{what}: {f:.1} Hz, expected {freq}");
}

#[test]
fn pages_and_media_found_by_yt_dlp_load_play_and_are_heard() {
    let rig = platform_rig("");
    let info = rig.node.get("/v4/info").json::<Value>().unwrap();
    for source in ["youtube", "soundcloud", "bandcamp", "twitch", "vimeo", "http"] {
        assert!(info["sourceManagers"].as_array().unwrap().iter().any(|s| s == source), "{source} is listed: {info}");
    }
    let status = resolver_status(&rig.node);
    assert!(status["ytDlp"].as_str().is_some_and(|v| v.starts_with("20")), "{status}");
    assert!(status["jsRuntime"].as_str().is_some_and(|v| v.starts_with("deno")), "deno runs inside the sandbox: {status}");

    rig.media.route("/og.mp3", Route::file(media::tone("platform_440.mp3", 440, 8, &["-c:a", "libmp3lame", "-b:a", "128k"]), "audio/mpeg"));
    rig.media.route("/tag.ogg", Route::file(media::tone("platform_660.opus", 660, 8, &["-c:a", "libopus", "-b:a", "96k"]), "audio/ogg"));
    rig.media.route("/direct.m4a", Route::file(media::tone("platform_880.m4a", 880, 8, &["-c:a", "aac", "-b:a", "128k"]), "audio/mp4"));
    let og = r#"<meta property="og:title" content="A Song From Its Page"><meta property="og:audio" content="/og.mp3"><meta property="og:image" content="/cover.jpg"></head><body>"#;
    rig.media.route("/og.html", Route::file(page("Page", og), "text/html"));
    rig.media.route("/tag.html", Route::file(page("An audio tag", r#"</head><body><audio controls src="/tag.ogg"></audio></body>"#), "text/html"));

    // A web page the http source cannot play goes to yt-dlp's generic extractor.
    let og_url = rig.media.url("/og.html");
    let loaded = rig.node.load(&og_url);
    assert_eq!(loaded["loadType"], "track", "{loaded}");
    let t = &loaded["data"]["info"];
    assert_eq!((t["sourceName"].as_str(), t["title"].as_str(), t["uri"].as_str()), (Some("yt-dlp"), Some("A Song From Its Page"), Some(og_url.as_str())), "{t}");
    assert_eq!(t["artworkUrl"], rig.media.url("/cover.jpg"), "relative artwork resolved against the page");
    let tag = rig.node.load(&rig.media.url("/tag.html"));
    assert_eq!(tag["loadType"], "track", "{tag}");
    // Any yt-dlp site by Caldera's prefix; here a direct media URL.
    let direct = rig.node.load(&format!("ytdlp:{}", rig.media.url("/direct.m4a")));
    assert_eq!(direct["loadType"], "track", "{direct}");
    assert_eq!(direct["data"]["info"]["sourceName"], "yt-dlp");
    // A page with nothing to play keeps the http source's answer.
    rig.media.route("/nothing.html", Route::file(page("Nothing", "</head><body>no media here</body>"), "text/html"));
    let nothing = rig.node.load(&rig.media.url("/nothing.html"));
    assert_eq!((nothing["loadType"].as_str(), nothing["data"]["message"].as_str()), (Some("error"), Some("Unknown file format.")), "{nothing}");

    // Playing resolves each track again, in the worker, and streams what yt-dlp found.
    for (guild, track, freq) in [(9101, &loaded, 440.0), (9102, &tag, 660.0), (9103, &direct, 880.0)] {
        play_encoded(&rig, guild, track["data"]["encoded"].as_str().unwrap());
        assert_heard(&rig, guild, freq, track["data"]["info"]["uri"].as_str().unwrap());
    }
    for guild in [9101, 9102, 9103] {
        let (_, end) = rig.ended(guild, Duration::from_secs(30));
        assert_eq!(end["reason"], "finished", "{guild}: {end}");
    }
    // The media was fetched with the extractor's headers (its Referer: the page), in bounded ranges.
    let media_hits = rig.media.hits("/og.mp3");
    let worker_hit = media_hits.iter().find(|h| h.range.is_some()).expect("a ranged request for the media");
    assert_eq!(worker_hit.range.as_deref(), Some("bytes=0-10485759"), "{media_hits:?}");
    assert_eq!(worker_hit.referer.as_deref(), Some(og_url.as_str()), "{media_hits:?}");
    assert!(worker_hit.user_agent.as_deref().is_some_and(|ua| ua.starts_with("Mozilla/")), "{media_hits:?}");
    assert!(rig.session.messages().iter().all(|m| m["type"] != "TrackExceptionEvent"), "no exceptions");
}

#[test]
fn an_expired_media_address_is_resolved_again_and_playback_continues() {
    let rig = platform_rig("");
    // Ogg seeks by bisecting the file: a seek far ahead asks the source for a new range. The
    // renewed address serves the same media, as a platform's does.
    let media = media::tone("expire_440.opus", 440, 60, &["-c:a", "libopus", "-b:a", "96k"]);
    rig.media.route("/first.ogg", Route::file(media.clone(), "audio/ogg"));
    rig.media.route("/second.ogg", Route::file(media, "audio/ogg"));
    let og = |media: &str| page("Expiring", &format!(r#"</head><body><audio src="{media}"></audio></body>"#));
    rig.media.route("/expiring.html", Route::file(og("/first.ogg"), "text/html"));
    let loaded = rig.node.load(&rig.media.url("/expiring.html"));
    assert_eq!(loaded["loadType"], "track", "{loaded}");
    play_encoded(&rig, 9201, loaded["data"]["encoded"].as_str().unwrap());
    assert_heard(&rig, 9201, 440.0, "before expiry");
    // The address expires (403) and the page now names another one.
    rig.media.route("/first.ogg", Route::Status(403));
    rig.media.route("/expiring.html", Route::file(og("/second.ogg"), "text/html"));
    let conn = rig.voice.latest(9201).unwrap();
    let before = conn.packets();
    let (status, body) = rig.session.patch(9201, json!({"position": 40_000}));
    assert_eq!(status, 200, "{body}");
    assert!(conn.wait_packets(before + 150, Duration::from_secs(20)), "audio continues after the expiry");
    let last_second = || {
        let audio = conn.audio();
        let end = audio.duration();
        audio.slice(end.saturating_sub(Duration::from_secs(1)), end).non_silent().dominant_frequency()
    };
    eventually(Duration::from_secs(15), "the renewed address to be streamed", || (!rig.media.hits("/second.ogg").is_empty()).then_some(()));
    assert!(conn.wait_packets(conn.packets() + 100, Duration::from_secs(10)), "audio continues from the renewed address");
    let f = last_second();
    assert!((f - 440.0).abs() < 10.0, "the track plays on: {f:.1} Hz");
    assert_eq!(rig.node.logs.count("resolving the track again"), 1);
    let hit = rig.media.hits("/second.ogg").into_iter().find(|h| h.range.is_some()).expect("a ranged request");
    let from: u64 = hit.range.unwrap().trim_start_matches("bytes=").split('-').next().unwrap().parse().unwrap();
    assert!(from > 300_000, "it resumed where the seek led (byte {from}), not from the start");
    assert!(rig.session.messages().iter().all(|m| m["type"] != "TrackExceptionEvent"), "no exception");
}

#[test]
fn lookups_leave_from_the_address_the_route_planner_leased() {
    let rig = platform_rig("    ratelimit:\n      ipBlocks: [\"127.0.0.0/28\"]\n      excludedIps: [\"127.0.0.1\"]\n      strategy: RotateOnBan\n");
    rig.media.route("/rp.mp3", Route::file(media::tone("platform_rp.mp3", 500, 6, &["-c:a", "libmp3lame", "-b:a", "128k"]), "audio/mpeg"));
    rig.media.route("/rp.html", Route::file(page("RP", r#"<meta property="og:audio" content="/rp.mp3"></head>"#), "text/html"));
    let loaded = rig.node.load(&rig.media.url("/rp.html"));
    assert_eq!(loaded["loadType"], "track", "{loaded}");
    play_encoded(&rig, 9301, loaded["data"]["encoded"].as_str().unwrap());
    assert_heard(&rig, 9301, 500.0, "route planner");
    let peers: Vec<IpAddr> = rig.media.peers("/rp.html").into_iter().chain(rig.media.peers("/rp.mp3")).collect();
    assert!(peers.len() >= 3, "the page (load and resolve) and the media were fetched: {peers:?}");
    let block = |ip: &IpAddr| matches!(ip, IpAddr::V4(v4) if v4.octets()[..3] == [127, 0, 0] && v4.octets()[3] < 16 && v4.octets()[3] != 1);
    assert!(peers.iter().all(block), "every request left from the block, never from the excluded address: {peers:?}");
    let played: Vec<IpAddr> = rig.media.peers("/rp.mp3");
    let resolved_from = *rig.media.peers("/rp.html").last().unwrap();
    assert!(played.iter().all(|p| *p == resolved_from), "the media is streamed from the address that resolved it: {resolved_from} vs {played:?}");
}

#[test]
fn youtube_offline_fails_cleanly_and_a_lavalink_youtube_track_ends_load_failed() {
    let rig = platform_rig("");
    for identifier in ["ytsearch:never gonna give you up", "ytmsearch:never gonna give you up", "https://www.youtube.com/watch?v=dQw4w9WgXcQ", "scsearch:song"] {
        let started = Instant::now();
        let res = rig.node.load(identifier);
        assert_eq!(res["loadType"], "error", "{identifier}: {res}");
        assert!(res["data"]["cause"].as_str().is_some_and(|c| !c.is_empty()), "{identifier}: yt-dlp's message is the cause: {res}");
        assert!(started.elapsed() < Duration::from_secs(25), "{identifier}: answered within the load timeout");
    }
    let decoded: Value = rig.node.get(&format!("/v4/decodetrack?encodedTrack={LAVALINK_YOUTUBE_TRACK}")).json().unwrap();
    assert_eq!((decoded["info"]["sourceName"].as_str(), decoded["info"]["identifier"].as_str()), (Some("youtube"), Some("dQw4w9WgXcQ")), "{decoded}");
    play_encoded(&rig, 9401, LAVALINK_YOUTUBE_TRACK);
    let (_, exception) = rig.session.wait_event("TrackExceptionEvent", 9401, Duration::from_secs(30)).expect("a TrackExceptionEvent");
    assert!(exception["exception"]["cause"].as_str().is_some_and(|c| c.contains("youtube")), "{exception}");
    let (_, end) = rig.ended(9401, Duration::from_secs(10));
    assert_eq!(end["reason"], "loadFailed", "{end}");
    assert_eq!(rig.node.get("/version").status(), 200, "the node serves on");
}

#[test]
fn switched_off_platforms_neither_load_nor_play() {
    let rig = platform_rig("    sources:\n      youtube: false\n    soundcloudSearchEnabled: false\n");
    let info = rig.node.get("/v4/info").json::<Value>().unwrap();
    assert!(!info["sourceManagers"].as_array().unwrap().iter().any(|s| s == "youtube"), "{info}");
    for identifier in ["ytsearch:x", "scsearch:x"] {
        assert_eq!(rig.node.load(identifier)["loadType"], "empty", "{identifier}");
    }
    // A track encoded elsewhere does not bring the source back.
    let (status, body) = rig.session.patch(9501, json!({"voice": rig.voice_state(9501), "track": {"encoded": LAVALINK_YOUTUBE_TRACK}}));
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("`youtube` is disabled")), "{body}");
}

/// A node whose resolver is the misbehaving `fake-resolver` in `mode`.
fn node_with_fake_resolver(mode: &str, extra: &str) -> (Node, tempfile::TempDir) {
    node_with_fake_resolver_and("", mode, extra)
}

/// [`node_with_fake_resolver`] with `lavalink.server` lines.
fn node_with_fake_resolver_and(lavalink_server_yaml: &str, mode: &str, extra: &str) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let python = dir.path().join(format!("fake-resolver-{mode}"));
    std::os::unix::fs::symlink(bin("fake-resolver"), &python).unwrap();
    let yaml = format!(
        "lavalink:\n  server:\n{lavalink_server_yaml}caldera:\n  workers: 1\n  resolver:\n    python: {}\n    timeoutMs: 2000\n{extra}",
        python.display()
    );
    (Node::start_with(NodeOptions { workers: 1, yaml, ..Default::default() }), dir)
}

#[test]
fn resolvers_that_crash_hang_babble_dawdle_or_bloat_cost_only_their_lookups() {
    let cases: [(&str, &str, &str); 5] = [
        ("crash", "The resolver stopped while looking up the track.", "exit code 3"),
        ("hang", "Loading the track timed out.", "did not answer pings"),
        ("garbage", "The resolver stopped while looking up the track.", "garbage"),
        ("late", "Loading the track timed out.", ""),
        ("hog", "", "over its limit"),
    ];
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(mode, message, exit)| {
            std::thread::spawn(move || {
                let extra = if mode == "hog" { "    memoryLimit: 128M\n" } else { "" };
                let (node, _dir) = node_with_fake_resolver(mode, extra);
                let status = wait_resolver_ready(&node);
                assert_eq!(status["ytDlp"], format!("fake-{mode}"), "{status}");
                if !message.is_empty() {
                    let started = Instant::now();
                    let res = node.load("ytsearch:anything");
                    let took = started.elapsed();
                    assert_eq!((res["loadType"].as_str(), res["data"]["message"].as_str()), (Some("error"), Some(message)), "{mode}: {res}");
                    assert!(took < Duration::from_secs(5), "{mode}: answered within its deadline ({took:?})");
                }
                assert_eq!(node.get("/version").status(), 200, "{mode}: the node serves on");
                if exit.is_empty() {
                    // A late answer is dropped; one stuck lookup does not cost the process.
                    std::thread::sleep(Duration::from_secs(4));
                    let status = resolver_status(&node);
                    assert_eq!((status["restarts"].as_u64(), status["timeouts"].as_u64()), (Some(0), Some(1)), "{mode}: {status}");
                } else {
                    let status = eventually(Duration::from_secs(30), "the resolver to be restarted", || {
                        Some(resolver_status(&node)).filter(|s| s["restarts"].as_u64() >= Some(1))
                    });
                    assert!(status["lastExit"].as_str().is_some_and(|e| e.contains(exit)), "{mode}: {status}");
                    wait_resolver_ready(&node);
                }
                assert!(node.logs.count("panicked") == 0, "{mode}: no panic");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn synthetic_platform_results_map_to_lavalink_tracks() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../resolver/test_resolver.py");
    let out = std::process::Command::new(resolver_python()).arg(&script).output().expect("run the resolver's tests");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "resolver/test_resolver.py failed:\n{report}");
    assert!(report.contains("Ran 8 tests") && report.contains("OK"), "{report}");
}

#[test]
fn a_platform_that_rate_limits_an_address_gets_it_marked_failing() {
    let planner = "    ratelimit:\n      ipBlocks: [\"127.0.0.0/28\"]\n      excludedIps: [\"127.0.0.1\"]\n      strategy: RotateOnBan\n";
    let (node, _dir) = node_with_fake_resolver_and(planner, "ratelimited", "");
    wait_resolver_ready(&node);
    let res = node.load("https://www.youtube.com/watch?v=dQw4w9WgXcQ");
    assert_eq!(res["loadType"], "error", "{res}");
    let status: Value = node.get("/v4/routeplanner/status").json().unwrap();
    let failing = status["details"]["failingAddresses"].as_array().unwrap();
    assert_eq!(failing.len(), 1, "{status}");
    assert!(failing[0]["failingAddress"].as_str().unwrap().starts_with("/127.0.0."), "{status}");
}
