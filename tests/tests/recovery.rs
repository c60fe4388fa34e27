//! Crash recovery, end to end: a worker killed mid-playback; its players come back on another
//! worker, audible at the voice double, while the other worker's players never gap.

use caldera_tests::audio::sine_wav;
use caldera_tests::rig::rig;
use nix::sys::signal::Signal;
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn players_of_a_killed_worker_are_restored_elsewhere() {
    let rig = rig(2);
    let wav = sine_wav(440.0, 20.0, 48_000, 2, 0.5);
    rig.play(6001, "/r1.wav", wav.clone(), json!({"volume": 80, "filters": {"volume": 0.9}}));
    rig.play(6002, "/r2.wav", wav, json!({}));
    let (a, b) = (rig.worker_of(6001), rig.worker_of(6002));
    assert_ne!(a, b, "the two players should be on different workers");
    let conn_b = rig.voice.wait_connection(6002, Duration::from_secs(10));
    rig.voice.wait_audio(6001, 100, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1200)); // a playerUpdate with a position
    let pid = rig.worker_pid(a);
    let (_, before) = rig.session.get_player(6001);
    let position_before = before["state"]["position"].as_u64().unwrap();

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    // A second voice connection for the restored player, and audio on it within a second.
    let conns = rig.voice.wait_connections(6001, 2, Duration::from_secs(5));
    let restored = &conns[1];
    // The first packets on a new connection may be silence: wait for the first audible one.
    let first_audio = caldera_tests::eventually(Duration::from_secs(3), "restored audio", || restored.audio().non_silent().first_arrival());
    let took = first_audio.duration_since(killed);
    assert!(took < Duration::from_millis(1000), "audio back after {took:?}");
    let restored_audio = restored.audio();
    assert!((restored_audio.non_silent().dominant_frequency() - 440.0).abs() < 9.0);

    std::thread::sleep(Duration::from_millis(1500));
    // The other worker's player never gapped.
    let other = conn_b.audio().non_silent();
    assert!(other.max_gap() < Duration::from_millis(100), "player on the healthy worker gapped {:?}", other.max_gap());
    // Same session, same player, resumed near where it was, on the other worker, volume and
    // filters kept; no second TrackStart.
    let (status, after) = rig.session.get_player(6001);
    assert_eq!(status, 200);
    assert_eq!(after["volume"], 80);
    assert_eq!(after["filters"], json!({"volume": 0.9}));
    let position_after = after["state"]["position"].as_u64().unwrap();
    assert!(position_after >= position_before, "{position_before} → {position_after}");
    let starts = rig.session.messages().iter().filter(|m| m["type"] == "TrackStartEvent" && m["guildId"] == "6001").count();
    assert_eq!(starts, 1, "TrackStart repeated after the restore");
    assert!(rig.session.closed().is_none());
    let moved = rig.node.logs.wait_for("player restored on another worker", Duration::from_secs(1)).unwrap();
    assert!(moved.contains(&format!("to={b}")), "{moved}");
    // Restored where it was when the worker died: the last report plus the time since (the
    // report interval is 1 s here), not back at the last report.
    let restored_at: u64 = moved.split("position_ms=").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse().ok()).expect("position in the log");
    assert!((position_before..=position_before + 2500).contains(&restored_at), "{position_before} → {restored_at}");
    // The killed worker's slot is back and still says why its predecessor ended.
    let slot = caldera_tests::eventually(Duration::from_secs(10), "the killed worker's replacement", || {
        let workers: serde_json::Value = rig.node.get("/v4/caldera/workers").json().ok()?;
        workers["workers"].as_array()?.iter().find(|w| w["id"] == a && w["state"] == "ready").cloned()
    });
    assert_eq!((&slot["restarts"], &slot["lastExit"]), (&json!(1), &json!("killed by SIGKILL")), "{slot}");
}

#[test]
fn a_track_that_crashes_two_workers_is_quarantined() {
    // SIGABRT stands for a crash (a failed allocation, a panic that aborts): evidence against the
    // track, unlike SIGKILL from outside (see the next test).
    let rig = rig(2);
    rig.play(6101, "/q.wav", sine_wav(440.0, 30.0, 48_000, 2, 0.5), json!({}));
    rig.voice.wait_audio(6101, 25, Duration::from_secs(10));
    let kill_host = || {
        let workers: serde_json::Value = rig.node.get("/v4/caldera/workers").json().unwrap();
        let players: Vec<&serde_json::Value> = workers["workers"].as_array().unwrap().iter().filter(|w| w["players"] == 1).collect();
        assert_eq!(players.len(), 1, "{workers}");
        let pid = players[0]["pid"].as_i64().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGABRT).unwrap();
    };
    kill_host();
    let conns = rig.voice.wait_connections(6101, 2, Duration::from_secs(5));
    assert!(conns[1].wait_packets(10, Duration::from_secs(5)), "restored after the first crash");
    // Wait until the killed worker is back, so the second crash has somewhere to go too.
    rig.node.wait_workers(2, Duration::from_secs(10));
    kill_host();
    let (_, exception) = rig.session.wait_event("TrackExceptionEvent", 6101, Duration::from_secs(5)).expect("quarantine exception");
    assert_eq!(exception["exception"]["severity"], "fault");
    assert!(exception["exception"]["message"].as_str().unwrap().contains("crashed its worker"));
    let (_, end) = rig.ended(6101, Duration::from_secs(5));
    assert_eq!(end["reason"], "loadFailed");
    let (_, player) = rig.session.get_player(6101);
    assert!(player["track"].is_null(), "{player}");
}

#[test]
fn losses_from_outside_do_not_quarantine_healthy_tracks() {
    // The adversarial run's reproduction: kill -9 of one worker moves its players to the other;
    // a SIGSTOP of that one (then killed for missed pings) must not convict them.
    let rig = rig(2);
    let guilds = [6301, 6302, 6303];
    for g in guilds {
        rig.play(g, &format!("/o{g}.wav"), sine_wav(440.0, 60.0, 48_000, 2, 0.5), json!({}));
        rig.voice.wait_audio(g, 25, Duration::from_secs(10));
    }
    let pid_of = |id: u64| rig.worker_pid(id) as i32;
    // The worker a guild's player is on now: the last to connect its voice.
    let worker_of = |g: u64| -> u64 {
        let lines = rig.node.logs.lines_containing(&format!("guild_id={g}}}: caldera_worker::player: voice connected"));
        let line = lines.last().expect("voice connected log");
        line.split("worker{id=").nth(1).and_then(|r| r.split('}').next()).and_then(|id| id.parse().ok()).unwrap()
    };
    let first = worker_of(guilds[0]);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid_of(first)), Signal::SIGKILL).unwrap();
    for g in guilds {
        caldera_tests::eventually(Duration::from_secs(10), "every player on the other worker", || (worker_of(g) != first).then_some(()));
    }
    rig.node.wait_workers(2, Duration::from_secs(10));
    let second = worker_of(guilds[0]);
    // Every player is on that worker now.
    let stopped_at = std::time::Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid_of(second)), Signal::SIGSTOP).unwrap();
    assert!(rig.node.logs.wait_for("worker stopped answering pings", Duration::from_secs(15)).is_some());
    for g in guilds {
        caldera_tests::eventually(Duration::from_secs(20), "the player to play again on a new connection", || {
            rig.voice.latest(g).filter(|c| c.created() > stopped_at && c.packets() >= 25)
        });
    }
    assert!(rig.session.messages().iter().all(|m| m["type"] != "TrackExceptionEvent"), "nobody was quarantined");
    assert_eq!(rig.node.logs.count("track quarantined"), 0);
}

#[test]
fn players_of_the_only_worker_come_back_with_its_replacement() {
    // No healthy worker to move to: the players wait for the respawned worker.
    let rig = rig(1);
    rig.play(6201, "/solo.wav", sine_wav(440.0, 30.0, 48_000, 2, 0.5), json!({"volume": 70}));
    rig.voice.wait_audio(6201, 50, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1200)); // a playerUpdate with a position
    let (_, before) = rig.session.get_player(6201);
    let position_before = before["state"]["position"].as_u64().unwrap();
    let pid = rig.worker_pid(0);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();

    let conns = rig.voice.wait_connections(6201, 2, Duration::from_secs(10));
    assert!(conns[1].wait_packets(25, Duration::from_secs(10)), "no audio from the respawned worker");
    assert!((conns[1].audio().non_silent().dominant_frequency() - 440.0).abs() < 9.0);
    assert!(rig.node.logs.wait_for("stranded player restored", Duration::from_secs(1)).is_some());
    assert_ne!(rig.worker_pid(0), pid);
    let (_, after) = rig.session.get_player(6201);
    assert_eq!(after["volume"], 70);
    assert!(after["state"]["position"].as_u64().unwrap() >= position_before, "{after}");
    let starts = rig.session.messages().iter().filter(|m| m["type"] == "TrackStartEvent").count();
    assert_eq!(starts, 1, "TrackStart repeated after the restore");
}

#[test]
fn a_track_replaced_while_its_player_waits_for_a_worker_ends_as_replaced() {
    let rig = rig(1);
    rig.media.route("/b.wav", caldera_tests::http_server::Route::file(sine_wav(880.0, 30.0, 48_000, 2, 0.5), "audio/wav"));
    let next = rig.node.load(&rig.media.url("/b.wav"));
    rig.play(6301, "/a.wav", sine_wav(440.0, 30.0, 48_000, 2, 0.5), json!({}));
    rig.voice.wait_audio(6301, 25, Duration::from_secs(10));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(rig.worker_pid(0) as i32), Signal::SIGKILL).unwrap();
    // The only worker is gone; before its replacement is up, the client replaces the track.
    assert!(rig.node.logs.wait_for("no healthy worker to restore the player on", Duration::from_secs(5)).is_some());
    let (status, player) = rig.session.patch(6301, json!({"track": {"encoded": next["data"]["encoded"]}}));
    assert_eq!(status, 200, "{player}");
    let (_, end) = rig.session.wait_event("TrackEndEvent", 6301, Duration::from_secs(5)).expect("the replaced track's end");
    assert_eq!(end["reason"], "replaced");
    assert_eq!(end["track"]["info"]["uri"], rig.media.url("/a.wav"));
    let conns = rig.voice.wait_connections(6301, 2, Duration::from_secs(10));
    assert!(conns[1].wait_packets(50, Duration::from_secs(10)));
    assert!((conns[1].audio().non_silent().dominant_frequency() - 880.0).abs() < 9.0, "the new track plays on the new worker");
    let starts: Vec<_> = rig.session.messages().into_iter().filter(|m| m["type"] == "TrackStartEvent").map(|m| m["track"]["info"]["uri"].clone()).collect();
    assert_eq!(starts, [json!(rig.media.url("/a.wav")), json!(rig.media.url("/b.wav"))]);
}
