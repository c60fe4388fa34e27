//! Lavalink parity, end to end: player behaviour as Lavalink's server has it (endTime per track,
//! live positions, noReplace, seeks, events), and configuration as operators write it (relaxed
//! keys, the environment, timeouts, the proxy).

use caldera_tests::audio::{fixture_bytes, sine_wav};
use caldera_tests::http_proxy::TestProxy;
use caldera_tests::http_server::{Route, TestServer};
use caldera_tests::rig::{rig, rig_with, CHANNEL};
use caldera_tests::{Node, NodeOptions};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[test]
fn end_time_belongs_to_the_track_it_was_sent_with() {
    let rig = rig(1);
    let guild = 8001;
    rig.play(guild, "/clipped.wav", sine_wav(440.0, 4.0, 48_000, 2, 0.5), json!({"endTime": 500}));
    let (_, end) = rig.ended(guild, Duration::from_secs(5));
    assert_eq!(end["reason"], "finished");
    let started = Instant::now();
    rig.play(guild, "/whole.wav", sine_wav(660.0, 4.0, 48_000, 2, 0.5), json!({}));
    let (at, end) = rig.session.wait_for_at(|m| m["type"] == "TrackEndEvent" && m["track"]["info"]["uri"].as_str().is_some_and(|u| u.ends_with("/whole.wav")), Duration::from_secs(10)).expect("the second track's end");
    assert_eq!(end["reason"], "finished");
    let played = at - started;
    assert!(played > Duration::from_millis(3_500), "the 4 s track ended after {played:?}: the earlier endTime was carried over");
    let audio = rig.voice.wait_connection(guild, Duration::from_secs(1)).audio();
    let second = audio.slice(started.saturating_duration_since(audio.first_arrival().unwrap()), Duration::from_secs(600)).non_silent();
    assert!(second.packets() >= 170, "{} packets of the second track", second.packets());
    assert!((second.dominant_frequency() - 660.0).abs() < 13.0, "{} Hz", second.dominant_frequency());
}

#[test]
fn rest_positions_are_live_between_reports_and_after_a_worker_crash() {
    let rig = rig_with(2, "");
    let guild = 8011;
    rig.play(guild, "/long.wav", sine_wav(440.0, 30.0, 48_000, 2, 0.5), json!({}));
    rig.voice.wait_audio(guild, 50, Duration::from_secs(10));
    let position = |p: &Value| p["state"]["position"].as_u64().unwrap();
    let (_, a) = rig.session.get_player(guild);
    std::thread::sleep(Duration::from_millis(400));
    let (_, b) = rig.session.get_player(guild);
    let advanced = position(&b) as i64 - position(&a) as i64;
    assert!((250..=600).contains(&advanced), "position advanced {advanced} ms in 400 ms: {a} → {b}");
    assert_eq!(b["track"]["info"]["position"], b["state"]["position"], "the track's position is the live one too");
    let now = caldera_tests::unix_ms();
    assert!((now - b["state"]["time"].as_i64().unwrap()).abs() < 500, "state.time is now");
    // Paused, it stands still (once the worker has said where it paused).
    rig.session.patch(guild, json!({"paused": true}));
    std::thread::sleep(Duration::from_millis(200));
    let (_, c) = rig.session.get_player(guild);
    std::thread::sleep(Duration::from_millis(300));
    let (_, d) = rig.session.get_player(guild);
    assert_eq!(position(&c), position(&d), "a paused player's position moved");
    rig.session.patch(guild, json!({"paused": false}));
    // A worker dies: the position carries on, not stuck at the last report.
    let pid = rig.worker_pid(rig.worker_of(guild));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    rig.voice.wait_connections(guild, 2, Duration::from_secs(10));
    let (_, e) = rig.session.get_player(guild);
    std::thread::sleep(Duration::from_millis(400));
    let (_, f) = rig.session.get_player(guild);
    let advanced = position(&f) as i64 - position(&e) as i64;
    assert!((250..=600).contains(&advanced), "after the crash the position advanced {advanced} ms in 400 ms: {e} → {f}");
    assert!(position(&e) >= position(&d));
}

#[test]
fn no_replace_skips_the_whole_track_part_before_loading() {
    let rig = rig(1);
    let guild = 8021;
    rig.play(guild, "/keep.wav", sine_wav(440.0, 20.0, 48_000, 2, 0.5), json!({}));
    rig.voice.wait_audio(guild, 25, Duration::from_secs(10));
    let (status, p) = rig.session.patch_query(guild, "?noReplace=true", json!({"track": {"encoded": null}, "volume": 90}));
    assert_eq!(status, 200, "{p}");
    assert!(p["track"].is_object(), "encoded: null stopped the track despite noReplace: {p}");
    assert_eq!(p["volume"], 90, "the rest of the request still applies");
    // An identifier that would fail to load is not even loaded.
    let (status, p) = rig.session.patch_query(guild, "?noReplace=true", json!({"track": {"identifier": rig.media.url("/missing.wav")}, "paused": true}));
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["paused"], false, "paused went with the skipped track");
    assert!(rig.media.hits("/missing.wav").is_empty(), "the skipped identifier was loaded");
    std::thread::sleep(Duration::from_millis(300));
    assert!(rig.session.wait_event("TrackEndEvent", guild, Duration::from_millis(10)).is_none());
}

#[test]
fn a_stream_ignores_seeks_and_a_seek_past_the_end_finishes_the_track() {
    let rig = rig(1);
    let guild = 8031;
    // An endless MP3 stream.
    let mp3 = fixture_bytes("untagged.mp3");
    rig.media.route("/radio", Route::Stream { chunk: mp3[mp3.len() / 4..].to_vec().into(), content_type: "audio/mpeg".into(), icy: None });
    let (status, p) = rig.session.patch(guild, json!({"voice": rig.voice_state(guild), "track": {"identifier": rig.media.url("/radio")}}));
    assert_eq!(status, 200, "{p}");
    let conn = rig.voice.wait_audio(guild, 50, Duration::from_secs(10));
    let seek_at = Instant::now();
    let (status, p) = rig.session.patch(guild, json!({"position": 60_000}));
    assert_eq!(status, 200);
    assert!(p["state"]["position"].as_u64().unwrap() < 30_000, "a stream's position jumped to the seek target: {p}");
    std::thread::sleep(Duration::from_millis(1500));
    let audio = conn.audio();
    let around = audio.slice(seek_at - audio.first_arrival().unwrap() - Duration::from_millis(500), Duration::from_secs(600));
    assert!(around.packets() > 50, "{} packets after the seek", around.packets());
    assert_eq!((around.seq_gaps(), around.silence_frames()), (0, 0), "frames lost after the ignored seek");
    assert!(around.max_gap() < Duration::from_millis(100), "a pause of {:?} after the ignored seek", around.max_gap());
    assert!(rig.session.wait_event("TrackEndEvent", guild, Duration::from_millis(10)).is_none());

    // A file: a seek past its end ends it as finished.
    let guild = 8032;
    rig.play(guild, "/short.wav", sine_wav(440.0, 5.0, 48_000, 2, 0.5), json!({}));
    rig.voice.wait_audio(guild, 25, Duration::from_secs(10));
    rig.session.patch(guild, json!({"position": 9_000}));
    let (_, end) = rig.ended(guild, Duration::from_secs(3));
    assert_eq!(end["reason"], "finished");
}

#[test]
fn deleting_a_playing_player_ends_its_track_stopped() {
    let rig = rig(1);
    let guild = 8041;
    rig.play(guild, "/delete.wav", sine_wav(440.0, 20.0, 48_000, 2, 0.5), json!({}));
    rig.voice.wait_audio(guild, 25, Duration::from_secs(10));
    assert_eq!(rig.session.delete_player(guild), 204);
    let (_, end) = rig.ended(guild, Duration::from_secs(2));
    assert_eq!(end["reason"], "stopped");
    assert!(end["track"]["info"]["uri"].as_str().unwrap().ends_with("/delete.wav"));
}

#[test]
fn voice_closes_and_failures_become_websocket_closed_events() {
    let rig = rig(1);
    // Discord closes with 4014 (disconnected): its code and reason, by the remote.
    let guild = 8051;
    rig.play(guild, "/voice.wav", sine_wav(440.0, 20.0, 48_000, 2, 0.5), json!({}));
    rig.voice.wait_audio(guild, 10, Duration::from_secs(10));
    rig.voice.close(guild, 4014, "Disconnected");
    let (_, closed) = rig.session.wait_event("WebSocketClosedEvent", guild, Duration::from_secs(5)).expect("WebSocketClosedEvent");
    assert_eq!((closed["code"].as_u64(), closed["reason"].as_str(), closed["byRemote"].as_bool()), (Some(4014), Some("Disconnected"), Some(true)), "{closed}");
    caldera_tests::eventually(Duration::from_secs(3), "connected: false", || (rig.session.get_player(guild).1["state"]["connected"] == false).then_some(()));

    // A voice server that accepts and never answers: 1006, a readable reason, not by the remote.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().take(8).flatten().collect();
        std::thread::sleep(Duration::from_secs(60));
        drop(held);
    });
    let guild = 8052;
    let voice = json!({"token": "t", "endpoint": format!("localhost:{port}"), "sessionId": "s", "channelId": CHANNEL});
    let (status, _) = rig.session.patch(guild, json!({"voice": voice}));
    assert_eq!(status, 200);
    let (_, closed) = rig.session.wait_event("WebSocketClosedEvent", guild, Duration::from_secs(30)).expect("WebSocketClosedEvent for a silent server");
    assert_eq!(closed["code"], 1006, "{closed}");
    assert_eq!(closed["byRemote"], false, "{closed}");
    assert!(closed["reason"].as_str().is_some_and(|r| r.len() > 5), "{closed}");
    assert_eq!(rig.session.get_player(guild).1["state"]["connected"], false);
}

#[test]
fn a_source_that_never_yields_audio_is_reported_stuck() {
    let rig = rig_with(1, "    trackStuckThresholdMs: 1000\n");
    let guild = 8061;
    rig.media.route("/never", Route::Hang);
    let t = caldera_tests::rig::encoded_track(&rig, "/never", "wav");
    let started = Instant::now();
    let (status, _) = rig.session.patch(guild, json!({"voice": rig.voice_state(guild), "track": {"encoded": t}}));
    assert_eq!(status, 200);
    let (at, stuck) = rig.session.wait_event("TrackStuckEvent", guild, Duration::from_secs(10)).expect("TrackStuckEvent");
    assert_eq!(stuck["thresholdMs"], 1000);
    assert!(at - started < Duration::from_secs(4), "stuck reported after {:?}", at - started);
}

#[test]
fn relaxed_keys_and_the_environment_take_effect() {
    let node = Node::start_with(NodeOptions {
        yaml: "lavalink:\n  server:\n    player-update-interval: 1\n    sources:\n      local: false\n".into(),
        env: vec![
            ("LAVALINK_SERVER_FILTERS_KARAOKE".into(), "false".into()),
            ("LAVALINK_SERVER_SOURCES_LOCAL".into(), "true".into()),
            ("METRICS_PROMETHEUS_ENABLED".into(), "true".into()),
        ],
        ..Default::default()
    });
    let info: Value = node.get("/v4/info").json().unwrap();
    let listed = |key: &str| info[key].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert!(!listed("filters").contains(&"karaoke".to_string()), "{info}");
    assert!(listed("sourceManagers").contains(&"local".to_string()), "{info}");
    assert_eq!(node.get("/metrics").status(), 200, "METRICS_PROMETHEUS_ENABLED did not enable metrics");
    assert!(node.logs.wait_for("variable=LAVALINK_SERVER_FILTERS_KARAOKE", Duration::from_secs(1)).is_some());
    assert_eq!(node.logs.count("unknown configuration key"), 0);
}

#[test]
fn the_proxy_sees_the_probe_and_the_stream_with_credentials() {
    let proxy = TestProxy::start("bot", "s3cret");
    let rig = rig_with(
        1,
        &format!("    httpConfig:\n      proxyHost: 127.0.0.1\n      proxyPort: {}\n      proxyUser: bot\n      proxyPassword: s3cret\n", proxy.addr.port()),
    );
    let guild = 8071;
    rig.play(guild, "/proxied.wav", sine_wav(440.0, 3.0, 48_000, 2, 0.5), json!({}));
    let audio = rig.voice.wait_audio(guild, 50, Duration::from_secs(10)).audio();
    assert!((audio.non_silent().dominant_frequency() - 440.0).abs() < 9.0);
    let seen = proxy.seen();
    let url = rig.media.url("/proxied.wav");
    assert!(seen.iter().filter(|r| r.url == url).count() >= 2, "the probe and the stream go through the proxy: {seen:?}");
    assert!(seen.iter().all(|r| r.authorized), "{seen:?}");
    // Nothing reached the media server but through the proxy (every hit is from the proxy's relay).
    assert_eq!(rig.media.hits("/proxied.wav").len(), seen.iter().filter(|r| r.url == url).count());
}

#[test]
fn timeouts_take_effect() {
    let server = TestServer::start();
    server.route("/hang", Route::Hang);
    // Headers and 64 kB, then silence: the socket timeout cuts the probe, and a resume is refused.
    let wav = sine_wav(440.0, 5.0, 48_000, 2, 0.5);
    server.route("/stall", Route::Cut { body: wav.into(), content_type: "audio/wav".into(), after: 1000, hold: Duration::from_secs(30) });
    let node = Node::start_with(NodeOptions {
        yaml: "lavalink:\n  server:\n    timeouts:\n      connectTimeoutMs: 500\n      connectionRequestTimeoutMs: 500\n      socketTimeoutMs: 700\n".into(),
        ..Default::default()
    });
    for (path, within) in [("/hang", Duration::from_millis(2500)), ("/stall", Duration::from_millis(3000))] {
        let started = Instant::now();
        let result = node.load(&server.url(path));
        let took = started.elapsed();
        assert_eq!(result["loadType"], "error", "{path}: {result}");
        assert!(took < within, "{path}: the load failed after {took:?}, the timeouts did not apply");
    }
}

#[test]
fn a_transfer_that_breaks_is_resumed_where_it_stopped() {
    let rig = rig(1);
    let guild = 8081;
    let wav = sine_wav(440.0, 4.0, 48_000, 2, 0.5);
    let after = wav.len() / 3;
    rig.media.route("/flaky.wav", Route::Flaky { body: wav.into(), content_type: "audio/wav".into(), after });
    let t = caldera_tests::rig::encoded_track(&rig, "/flaky.wav", "wav");
    rig.session.patch(guild, json!({"voice": rig.voice_state(guild), "track": {"encoded": t}}));
    let (_, end) = rig.ended(guild, Duration::from_secs(10));
    assert_eq!(end["reason"], "finished", "{:#?}", rig.session.messages());
    let audio = rig.voice.wait_connection(guild, Duration::from_secs(1)).audio();
    caldera_tests::rig::assert_clean_tone(&audio, 440.0, 190, "a resumed transfer");
    assert!(rig.media.hits("/flaky.wav").iter().any(|h| h.range.is_some()), "no range request resumed the transfer");
}
