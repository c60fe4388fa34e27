//! Players, end to end: Lavalink's state machine details (lavalink-internals §1, §5), checked
//! with events on the session and audio at the voice test double.

use caldera_tests::audio::sine_wav;
use caldera_tests::rig::rig;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[test]
fn end_time_stops_the_track_as_finished() {
    let rig = rig(1);
    let guild = 2001;
    rig.play(guild, "/end.wav", sine_wav(440.0, 6.0, 48_000, 2, 0.5), json!({"endTime": 1500}));
    rig.session.wait_event("TrackStartEvent", guild, Duration::from_secs(10)).unwrap();
    let conn = rig.voice.wait_connection(guild, Duration::from_secs(10));
    let (_, end) = rig.ended(guild, Duration::from_secs(10));
    assert_eq!(end["reason"], "finished");
    let heard = conn.audio().non_silent().packets();
    assert!((70..=80).contains(&heard), "{heard} packets for an end time of 1.5 s");

    // Seeking past the end time ends the track too; `endTime: null` clears the marker.
    rig.play(guild, "/end2.wav", sine_wav(440.0, 6.0, 48_000, 2, 0.5), json!({"endTime": 4000}));
    rig.session.wait_for(|m| m["type"] == "TrackStartEvent" && m["track"]["info"]["uri"].as_str().is_some_and(|u| u.ends_with("/end2.wav")), Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (status, _) = rig.session.patch(guild, json!({"position": 4500}));
    assert_eq!(status, 200);
    let seek_end = rig
        .session
        .wait_for(|m| m["type"] == "TrackEndEvent" && m["track"]["info"]["uri"].as_str().is_some_and(|u| u.ends_with("/end2.wav")), Duration::from_secs(5))
        .expect("seeking past the end time ends the track");
    assert_eq!(seek_end["reason"], "finished");

    rig.play(guild, "/end3.wav", sine_wav(440.0, 2.0, 48_000, 2, 0.5), json!({"endTime": 500}));
    let (status, player) = rig.session.patch(guild, json!({"endTime": null}));
    assert_eq!(status, 200, "{player}");
    let t0 = Instant::now();
    let end3 = rig
        .session
        .wait_for(|m| m["type"] == "TrackEndEvent" && m["track"]["info"]["uri"].as_str().is_some_and(|u| u.ends_with("/end3.wav")), Duration::from_secs(6))
        .expect("TrackEnd");
    assert_eq!(end3["reason"], "finished");
    assert!(t0.elapsed() >= Duration::from_millis(1500), "the cleared end time still cut the track at {:?}", t0.elapsed());
}

#[test]
fn no_replace_paused_and_user_data() {
    let rig = rig(1);
    let guild = 2101;
    let user_data = json!({"requester": "1234", "queue": [1, 2]});
    let player = rig.play(guild, "/a.wav", sine_wav(440.0, 5.0, 48_000, 2, 0.5), json!({"track": {"identifier": rig.media.url("/a.wav"), "userData": user_data}}));
    // play() overrides `track` with `extra`: the route was registered by play() under /a.wav.
    assert_eq!(player["track"]["userData"], user_data);
    let (_, start) = rig.session.wait_event("TrackStartEvent", guild, Duration::from_secs(10)).unwrap();
    assert_eq!(start["track"]["userData"], user_data);

    // noReplace with a track playing: nothing changes.
    rig.media.route("/b.wav", caldera_tests::http_server::Route::file(sine_wav(660.0, 5.0, 48_000, 2, 0.5), "audio/wav"));
    let (status, p) = rig.session.patch_query(guild, "?noReplace=true", json!({"track": {"identifier": rig.media.url("/b.wav")}}));
    assert_eq!(status, 200);
    assert!(p["track"]["info"]["uri"].as_str().unwrap().ends_with("/a.wav"), "{p}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(rig.session.wait_event("TrackEndEvent", guild, Duration::from_millis(10)).is_none());

    // Pause, then start a new track without `paused`: it plays (starting unpauses, §5.11).
    let (_, p) = rig.session.patch(guild, json!({"paused": true}));
    assert_eq!(p["paused"], true);
    let (_, p) = rig.session.patch(guild, json!({"track": {"identifier": rig.media.url("/b.wav")}}));
    assert_eq!(p["paused"], false);
    // With `paused: true` in the same request the new track starts paused.
    let (_, p) = rig.session.patch(guild, json!({"track": {"identifier": rig.media.url("/a.wav")}, "paused": true}));
    assert_eq!(p["paused"], true);
    let conn = rig.voice.wait_connection(guild, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(400));
    let before = conn.audio().non_silent().packets();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(conn.audio().non_silent().packets(), before, "a track started paused is playing");

    // userData alone updates the current track's.
    let (_, p) = rig.session.patch(guild, json!({"track": {"userData": {"n": 2}}}));
    assert_eq!(p["track"]["userData"], json!({"n": 2}));
    let (_, p) = rig.session.get_player(guild);
    assert_eq!(p["track"]["userData"], json!({"n": 2}));
}

#[test]
fn discord_closing_the_voice_websocket_is_reported() {
    let rig = rig(1);
    let guild = 2201;
    rig.play(guild, "/ws.wav", sine_wav(440.0, 5.0, 48_000, 2, 0.5), json!({}));
    rig.voice.wait_audio(guild, 10, Duration::from_secs(10));
    rig.voice.close(guild, 4014, "Disconnected");
    let (_, ev) = rig.session.wait_event("WebSocketClosedEvent", guild, Duration::from_secs(10)).expect("WebSocketClosedEvent");
    assert_eq!(ev["code"], 4014);
    assert_eq!(ev["byRemote"], true);
    assert!(ev["reason"].is_string());
    let update = rig.session.wait_for(|m| m["op"] == "playerUpdate" && m["guildId"] == "2201" && m["state"]["connected"] == false && m["state"]["ping"] == -1, Duration::from_secs(5));
    assert!(update.is_some(), "no playerUpdate showing the disconnect");
    // A new voice state reconnects.
    let mut v = rig.voice_state(guild);
    v["token"] = json!("new-token");
    let (status, _) = rig.session.patch(guild, json!({"voice": v}));
    assert_eq!(status, 200);
    let conns = rig.voice.wait_connections(guild, 2, Duration::from_secs(10));
    assert_eq!(conns[1].identify().token, "new-token");
}

#[test]
fn malformed_and_oversized_requests() {
    let rig = rig(1);
    let url = rig.node.url(&format!("/v4/sessions/{}/players/2301", rig.session.id));
    let http = rig.node.client();
    let send = |body: Vec<u8>| {
        http.patch(&url).header("Authorization", caldera_tests::PASSWORD).header("Content-Type", "application/json").body(body).send().unwrap()
    };
    let res = send(b"{not json".to_vec());
    assert_eq!(res.status(), 400);
    let body: Value = res.json().unwrap();
    assert_eq!(body["status"], 400);
    assert_eq!(send(b"[]".to_vec()).status(), 400);
    assert_eq!(send(br#"{"paused": "yes"}"#.to_vec()).status(), 400);
    // A huge body is refused with 413 and the node carries on.
    let huge = format!("{{\"filters\": {{\"pad\": \"{}\"}}}}", "x".repeat(3 * 1024 * 1024));
    // Its own client: the server closes a connection whose body it refused, and a pooled
    // connection of the shared client must not be the one that gets closed.
    let res = reqwest::blocking::Client::new()
        .patch(&url)
        .header("Authorization", caldera_tests::PASSWORD)
        .header("Content-Type", "application/json")
        .body(huge.into_bytes())
        .send()
        .unwrap();
    assert_eq!(res.status(), 413);
    let (status, _) = rig.session.patch(2301, json!({"volume": 80}));
    assert_eq!(status, 200);
    // A radio playlist's identifier plays its first entry, as Lavaplayer loads it.
    rig.media.route("/one.wav", caldera_tests::http_server::Route::file(sine_wav(440.0, 1.0, 48_000, 2, 0.5), "audio/wav"));
    let m3u = format!("#EXTM3U\n{}\n{}\n", rig.media.url("/one.wav"), rig.media.url("/two.wav"));
    rig.media.route("/list.m3u", caldera_tests::http_server::Route::file(m3u.into_bytes(), "audio/x-mpegurl"));
    let (status, player) = rig.session.patch(2301, json!({"track": {"identifier": rig.media.url("/list.m3u")}}));
    assert_eq!(status, 200, "{player}");
    assert_eq!(player["track"]["info"]["uri"], rig.media.url("/one.wav"));
}

#[test]
fn node_lavalink_client_connects_plays_pauses_seeks_resumes_and_destroys() {
    let rig = rig(1);
    let guild = 2401u64;
    rig.media.route("/node.wav", caldera_tests::http_server::Route::file(sine_wav(440.0, 4.0, 48_000, 2, 0.5), "audio/wav"));
    let addr = rig.node.addr.unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("node");
    let out = std::process::Command::new("node")
        .arg(dir.join("client.mjs"))
        .args([addr.ip().to_string(), addr.port().to_string(), caldera_tests::PASSWORD.into(), rig.media.url("/node.wav"), rig.voice.endpoint(), guild.to_string()])
        .current_dir(&dir)
        .output()
        .expect("node (scripts/setup.sh installs the npm packages)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "node client failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(seen["seen"][0]["event"], "trackStart", "{seen}");
    assert_eq!(seen["endReason"], "finished", "{seen}");
    assert_eq!(seen["sameSession"], true, "{seen}");
    // The library's filter calls reached the node as Lavalink filters.
    assert!(seen["filters"]["timescale"]["speed"].as_f64().is_some_and(|s| s > 1.2), "{seen}");
    assert_eq!(seen["filters"]["lowPass"]["smoothing"], 20, "{seen}");
    // The audio reached the voice server, and the player is gone afterwards.
    let conn = rig.voice.wait_connection(guild, Duration::from_secs(1));
    assert!(conn.audio().non_silent().packets() > 50);
    assert!(conn.wait_closed(Duration::from_secs(5)).is_some(), "destroy did not close the voice connection");
}

#[test]
fn deprecated_fields_and_a_request_flood() {
    let rig = rig(1);
    rig.media.route("/dep.wav", caldera_tests::http_server::Route::file(sine_wav(440.0, 1.0, 48_000, 2, 0.5), "audio/wav"));
    let track = rig.node.load(&rig.media.url("/dep.wav"))["data"]["encoded"].as_str().unwrap().to_string();
    // Deprecated top-level `encodedTrack` and `identifier` still work.
    let (status, p) = rig.session.patch(2501, json!({"voice": rig.voice_state(2501), "encodedTrack": track}));
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["track"]["encoded"], track.as_str());
    let (status, p) = rig.session.patch(2502, json!({"voice": rig.voice_state(2502), "identifier": rig.media.url("/dep.wav")}));
    assert_eq!(status, 200, "{p}");
    assert!(p["track"].is_object());
    rig.session.wait_event("TrackEndEvent", 2501, Duration::from_secs(10)).expect("deprecated encodedTrack played");
    let (status, _) = rig.session.patch(2501, json!({"encodedTrack": null}));
    assert_eq!(status, 200);

    // A flood of requests from several clients at once, some dropped mid-request.
    let url = rig.node.url(&format!("/v4/sessions/{}/players", rig.session.id));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (http, url, addr) = (rig.node.client().clone(), url.clone(), rig.node.addr.unwrap());
            std::thread::spawn(move || {
                for n in 0..50 {
                    if n % 10 == i % 10 {
                        // Send half a request and hang up.
                        use std::io::Write;
                        let mut s = std::net::TcpStream::connect(addr).unwrap();
                        let _ = s.write_all(b"PATCH /v4/sessions/x/players/1 HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"vol");
                        continue;
                    }
                    let res = http.get(&url).header("Authorization", caldera_tests::PASSWORD).send().unwrap();
                    assert_eq!(res.status(), 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(rig.node.get("/v4/info").status(), 200);
    assert_eq!(rig.session.get_player(2502).0, 200);
}
