//! Voice, end to end: real gateway and workers, real songbird voice connections to the voice test
//! double, and the audio that arrives there decoded and measured.

use caldera_tests::audio::{fixture_bytes, sine_wav};
use caldera_tests::http_server::Route;
use caldera_tests::rig::{assert_clean_tone, rig, rig_with, CHANNEL};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[test]
fn mp3_and_ogg_arrive_as_440_hz_and_finish_on_time() {
    let rig = rig(2);
    for (guild, path, fixture) in [(111u64, "/tone.mp3", "sine440.mp3"), (222, "/tone.ogg", "sine440.ogg")] {
        let player = rig.play(guild, path, fixture_bytes(fixture), json!({}));
        assert_eq!(player["track"]["info"]["title"], "Sine 440");
        assert_eq!(player["paused"], false);
        let length = player["track"]["info"]["length"].as_u64().unwrap();
        let start = rig.session.wait_event("TrackStartEvent", guild, Duration::from_secs(10)).expect("TrackStartEvent");
        assert_eq!(start.1["track"]["info"]["title"], "Sine 440");
        let conn = rig.voice.wait_connection(guild, Duration::from_secs(15));
        assert_eq!(conn.identify().token, format!("token-{guild}"));
        let (ended_at, end) = rig.ended(guild, Duration::from_secs(15));
        assert_eq!(end["reason"], "finished", "{end}");
        std::thread::sleep(Duration::from_millis(200));
        let audio = conn.audio();
        assert_eq!(conn.decrypt_errors(), 0);
        assert_clean_tone(&audio, 440.0, (length / 20) as usize, fixture);
        // TrackEnd comes when the audio has been played out, not when decoding finished.
        let first = audio.non_silent().first_arrival().unwrap();
        let took = ended_at.duration_since(first).as_millis() as i64;
        assert!((took - length as i64).abs() <= 500, "{fixture}: TrackEnd {took} ms after the first audio, track is {length} ms");
    }
}

#[test]
fn volume_50_is_6_db_quieter() {
    let rig = rig(2);
    let wav = sine_wav(440.0, 3.0, 48_000, 2, 0.5);
    rig.play(301, "/loud.wav", wav.clone(), json!({"volume": 100}));
    rig.play(302, "/quiet.wav", wav, json!({"volume": 50}));
    rig.ended(301, Duration::from_secs(15));
    rig.ended(302, Duration::from_secs(15));
    let level = |guild| {
        let tone = rig.voice.wait_connection(guild, Duration::from_secs(1)).audio().non_silent();
        // The steady middle of the track.
        let mid = tone.slice(Duration::from_millis(500), Duration::from_millis(2500));
        (mid.rms_dbfs(0), mid.rms_dbfs(1))
    };
    let (l100, r100) = level(301);
    let (l50, r50) = level(302);
    for (loud, quiet) in [(l100, l50), (r100, r50)] {
        let diff = quiet - loud;
        assert!((diff + 6.02).abs() <= 1.0, "volume 50 vs 100: {diff:.2} dB ({quiet:.2} vs {loud:.2})");
    }
}

#[test]
fn pause_resume_and_seek() {
    let rig = rig(1);
    let guild = 401;
    rig.play(guild, "/long.wav", sine_wav(440.0, 6.0, 44_100, 2, 0.5), json!({}));
    let conn = rig.voice.wait_audio(guild, 50, Duration::from_secs(15));
    let (status, player) = rig.session.patch(guild, json!({"paused": true}));
    assert_eq!(status, 200);
    assert_eq!(player["paused"], true);
    let paused_at = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let (_, p1) = rig.session.get_player(guild);
    let packets_then = conn.audio().non_silent().packets();
    std::thread::sleep(Duration::from_millis(1000));
    let (_, p2) = rig.session.get_player(guild);
    assert_eq!(conn.audio().non_silent().packets(), packets_then, "audio kept coming while paused");
    let pos1 = p1["state"]["position"].as_u64().unwrap();
    let pos2 = p2["state"]["position"].as_u64().unwrap();
    assert!(pos2.abs_diff(pos1) <= 40, "position moved while paused: {pos1} → {pos2}");
    assert!(pos1 >= 900, "position {pos1} after ~1 s of audio");

    let (_, player) = rig.session.patch(guild, json!({"paused": false}));
    assert_eq!(player["paused"], false);
    assert!(conn.wait_packets(packets_then + 50, Duration::from_secs(5)), "audio did not resume");
    std::thread::sleep(Duration::from_millis(500));
    let (_, p3) = rig.session.get_player(guild);
    let pos3 = p3["state"]["position"].as_u64().unwrap();
    assert!(pos3 > pos2 + 200 && pos3 < pos2 + 1500, "resumed from {pos2}, now {pos3} ({:?} since pause)", paused_at.elapsed());

    // Seek to 5 s of 6: the track ends about 1 s later.
    let (status, player) = rig.session.patch(guild, json!({"position": 5000}));
    assert_eq!(status, 200);
    assert_eq!(player["state"]["position"], 5000);
    let seeked = Instant::now();
    let (ended_at, end) = rig.ended(guild, Duration::from_secs(10));
    assert_eq!(end["reason"], "finished");
    let took = ended_at.duration_since(seeked).as_millis();
    assert!((500..=1700).contains(&took), "ended {took} ms after seeking to 1 s before the end");
}

#[test]
fn two_guilds_on_two_workers_hear_their_own_tone() {
    let rig = rig(2);
    rig.play(501, "/a.wav", sine_wav(440.0, 3.0, 48_000, 2, 0.5), json!({}));
    rig.play(502, "/b.wav", sine_wav(880.0, 3.0, 48_000, 2, 0.5), json!({}));
    rig.ended(501, Duration::from_secs(15));
    rig.ended(502, Duration::from_secs(15));
    for (guild, freq) in [(501, 440.0), (502, 880.0)] {
        let audio = rig.voice.wait_connection(guild, Duration::from_secs(1)).audio();
        assert_clean_tone(&audio, freq, 150, &format!("guild {guild}"));
    }
    // Placed on different workers: each worker logs its own players' voice connections.
    assert_ne!(rig.worker_of(501), rig.worker_of(502));
}

#[test]
fn stop_replace_destroy_and_events() {
    let rig = rig(1);
    let guild = 601;
    rig.play(guild, "/first.wav", sine_wav(440.0, 5.0, 48_000, 2, 0.5), json!({}));
    rig.session.wait_event("TrackStartEvent", guild, Duration::from_secs(10)).unwrap();
    let conn = rig.voice.wait_audio(guild, 20, Duration::from_secs(15));
    // Replacing: TrackEnd(replaced) for the old track, then TrackStart for the new one.
    rig.play(guild, "/second.wav", sine_wav(660.0, 5.0, 48_000, 2, 0.5), json!({}));
    let (end_at, end) = rig.ended(guild, Duration::from_secs(5));
    assert_eq!(end["reason"], "replaced");
    assert!(end["track"]["info"]["uri"].as_str().unwrap().ends_with("/first.wav"));
    let (start_at, start) = rig
        .session
        .wait_for_at(|m| m["type"] == "TrackStartEvent" && m["track"]["info"]["uri"].as_str().is_some_and(|u| u.ends_with("/second.wav")), Duration::from_secs(5))
        .unwrap();
    assert!(start_at >= end_at, "TrackStart of the new track came before TrackEnd of the old: {start}");
    // The voice connection was reused, not reopened.
    assert_eq!(rig.voice.connections(guild).len(), 1);
    // Stop: encoded null → TrackEnd stopped, track null.
    let (_, player) = rig.session.patch(guild, json!({"track": {"encoded": null}}));
    assert_eq!(player["track"], Value::Null);
    let stopped = rig.session.wait_for(|m| m["type"] == "TrackEndEvent" && m["reason"] == "stopped", Duration::from_secs(5)).expect("TrackEnd stopped");
    assert!(stopped["track"]["info"]["uri"].as_str().unwrap().ends_with("/second.wav"));
    // playerUpdate ops arrive with connected state.
    let update = rig.session.wait_for(|m| m["op"] == "playerUpdate" && m["state"]["connected"] == true, Duration::from_secs(5)).expect("playerUpdate");
    assert!(update["state"]["time"].as_i64().unwrap() > 0);
    // Destroy: 204, the voice connection closes, the player is gone.
    assert_eq!(rig.session.delete_player(guild), 204);
    assert_eq!(rig.session.delete_player(guild), 204);
    assert_eq!(rig.session.get_player(guild).0, 404);
    assert!(conn.wait_closed(Duration::from_secs(5)).is_some(), "voice websocket still open after destroy");
}

#[test]
fn player_validation_and_unknown_session() {
    let rig = rig(1);
    let bad = [
        json!({"voice": {"token": "t", "endpoint": "e", "sessionId": "", "channelId": CHANNEL}}),
        json!({"voice": {"token": "t", "endpoint": "e", "sessionId": "s"}}),
        json!({"volume": 1001}),
        json!({"volume": -1}),
        json!({"track": {"encoded": "abc", "identifier": "x"}}),
        json!({"track": {"encoded": "abc"}, "encodedTrack": "abc"}),
        json!({"track": {"encoded": "not a track"}}),
        json!({"track": {"identifier": "ytsearch:nothing"}}),
        json!({"position": -5}),
        json!({"endTime": 0}),
        json!({"volume": "loud"}),
    ];
    for body in bad {
        let (status, err) = rig.session.patch(700, body.clone());
        assert_eq!(status, 400, "{body} → {err}");
        assert!(err["message"].is_string(), "{err}");
    }
    let res = rig
        .node
        .client()
        .patch(rig.node.url("/v4/sessions/nosuchsession0000/players/1"))
        .header("Authorization", caldera_tests::PASSWORD)
        .json(&json!({"volume": 10}))
        .send()
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<Value>().unwrap()["message"], "Session not found");
    let ready = &rig.session.ready;
    assert_eq!(ready["resumed"], false);
    let id = ready["sessionId"].as_str().unwrap();
    assert_eq!(id.len(), 16);
    assert!(id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
}

#[test]
fn python_lavalink_client_plays_a_track() {
    let rig = rig(1);
    let guild = 801u64;
    rig.media.route("/py.mp3", Route::file(fixture_bytes("sine440.mp3"), "audio/mpeg"));
    let seen = rig.node.python("play.py", &[&rig.media.url("/py.mp3"), &rig.voice.endpoint(), &guild.to_string()]);
    let events = seen["events"].as_array().unwrap();
    assert_eq!(events[0]["type"], "TrackStartEvent", "{seen}");
    assert_eq!(events[0]["title"], "Sine 440");
    let end = events.iter().find(|e| e["type"] == "TrackEndEvent").expect("TrackEndEvent");
    assert!(end["reason"].as_str().unwrap().to_lowercase().contains("finished"), "{seen}");
    // And the audio really went to the voice server.
    let audio = rig.voice.wait_connection(guild, Duration::from_secs(1)).audio();
    assert_clean_tone(&audio, 440.0, 150, "python client");
}

#[test]
fn failures_during_playback_are_track_exceptions_not_crashes() {
    let rig = rig(1);
    let worker = rig.node.wait_workers(1, Duration::from_secs(10))[0];

    // A download cut after a third: TrackStart, then TrackException + TrackEnd(loadFailed).
    let wav = sine_wav(440.0, 6.0, 48_000, 2, 0.5);
    let cut_at = wav.len() / 3;
    rig.media.route("/cut.wav", Route::Cut { body: wav.into(), content_type: "audio/wav".into(), after: cut_at, hold: Duration::from_millis(200) });
    // Played as a client that holds the track plays it (probing would read the end of the file).
    let track = caldera_tests::rig::encoded_track(&rig, "/cut.wav", "wav");
    let (status, body) = rig.session.patch(901, json!({"voice": rig.voice_state(901), "track": {"encoded": track}}));
    assert_eq!(status, 200, "{body}");
    let (_, exception) = rig.session.wait_event("TrackExceptionEvent", 901, Duration::from_secs(15)).expect("TrackExceptionEvent");
    assert!(exception["exception"]["message"].is_string(), "{exception}");
    assert_eq!(exception["exception"]["severity"], "suspicious");
    let (_, end) = rig.ended(901, Duration::from_secs(5));
    assert_eq!(end["reason"], "loadFailed");
    // Part of the track was heard before the cut.
    let heard = rig.voice.wait_connection(901, Duration::from_secs(1)).audio().non_silent().packets();
    assert!(heard >= 20, "only {heard} packets before the cut");

    // A track from a source this node does not have (Lavalink's docs example, youtube).
    let youtube = "QAAAjQIAJVJpY2sgQXN0bGV5IC0gTmV2ZXIgR29ubmEgR2l2ZSBZb3UgVXAADlJpY2tBc3RsZXlWRVZPAAAAAAADPCAAC2RRdzR3OVdnWGNRAAEAK2h0dHBzOi8vd3d3LnlvdXR1YmUuY29tL3dhdGNoP3Y9ZFF3NHc5V2dYY1EAB3lvdXR1YmUAAAAAAAAAAA==";
    let (status, body) = rig.session.patch(902, json!({"voice": rig.voice_state(902), "track": {"encoded": youtube}}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["track"]["info"]["sourceName"], "youtube");
    let (_, exception) = rig.session.wait_event("TrackExceptionEvent", 902, Duration::from_secs(10)).expect("TrackExceptionEvent");
    assert_eq!(exception["exception"]["severity"], "common");
    assert_eq!(rig.ended(902, Duration::from_secs(5)).1["reason"], "loadFailed");

    // The worker is the same process throughout: nothing crashed.
    assert_eq!(rig.node.worker_pids(), vec![worker]);
    assert_eq!(rig.node.logs.count("worker exited"), 0);
}

#[test]
fn ping_is_measured_once_connected() {
    let rig = rig(1);
    let guild = 951;
    let (_, before) = rig.session.patch(guild, json!({"volume": 100}));
    assert_eq!(before["state"]["connected"], false);
    assert_eq!(before["state"]["ping"], -1);
    rig.play(guild, "/ping.wav", sine_wav(440.0, 4.0, 48_000, 2, 0.5), json!({}));
    let update = rig
        .session
        .wait_for(|m| m["op"] == "playerUpdate" && m["state"]["connected"] == true && m["state"]["ping"].as_i64().is_some_and(|p| p >= 0), Duration::from_secs(10))
        .expect("a playerUpdate with a measured ping");
    // Loopback: well under a second.
    assert!(update["state"]["ping"].as_i64().unwrap() < 1000, "{update}");
}

#[test]
fn a_stalled_source_is_silence_on_the_clock_and_a_track_stuck_event() {
    let rig = rig_with(1, "    trackStuckThresholdMs: 1000\n");
    let guild = 961;
    let wav = sine_wav(440.0, 6.0, 48_000, 2, 0.5);
    // About 1.5 s of audio, then the server goes quiet (connection held open).
    let after = 44 + 48_000 * 4 * 3 / 2;
    rig.media.route("/stall.wav", Route::Cut { body: wav.into(), content_type: "audio/wav".into(), after, hold: Duration::from_secs(20) });
    let track = caldera_tests::rig::encoded_track(&rig, "/stall.wav", "wav");
    let (status, body) = rig.session.patch(guild, json!({"voice": rig.voice_state(guild), "track": {"encoded": track}}));
    assert_eq!(status, 200, "{body}");
    let (_, stuck) = rig.session.wait_event("TrackStuckEvent", guild, Duration::from_secs(15)).expect("TrackStuckEvent");
    assert_eq!(stuck["thresholdMs"], 1000);
    assert!(stuck["track"]["info"]["uri"].as_str().unwrap().ends_with("/stall.wav"));
    // The track is not stopped by being stuck.
    std::thread::sleep(Duration::from_millis(300));
    let (_, player) = rig.session.get_player(guild);
    assert!(player["track"].is_object(), "stuck track was dropped: {player}");
    assert!(rig.session.wait_event("TrackEndEvent", guild, Duration::from_millis(10)).is_none());
    // The audio clock kept running: packets (silent) kept arriving at the voice server.
    let conn = rig.voice.wait_connection(guild, Duration::from_secs(1));
    let audio = conn.audio();
    let tone = audio.non_silent();
    assert!(tone.packets() >= 60 && tone.packets() <= 90, "{} tone packets from 1.5 s of audio", tone.packets());
    let after_tone = audio.slice(tone.last_arrival().unwrap() - audio.first_arrival().unwrap(), Duration::from_secs(60));
    assert!(after_tone.packets() >= 40, "the clock stalled with the source: {} packets after the tone", after_tone.packets());
    assert!(after_tone.max_gap() < Duration::from_millis(100));
}
