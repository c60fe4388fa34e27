//! Isolation, end to end: hostile media that makes a worker allocate past its memory ceiling
//! (`caldera.worker.memoryLimit`, RLIMIT_DATA) aborts only that worker; the node, its sessions
//! and the players of other workers carry on. A worker binary that cannot start at all leaves a
//! node that serves, says why, and retries with backoff.

use caldera_tests::audio::sine_wav;
use caldera_tests::http_server::Route;
use caldera_tests::client::Session;
use caldera_tests::rig::{rig_configured, Rig};
use caldera_tests::{Node, NodeOptions, PASSWORD};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const CEILING: &str = "  worker:\n    memoryLimit: 128M\n";
/// What the hostile tag's frame declares: more than the whole 128M ceiling.
const DECLARED: u32 = 200 << 20;
/// What a worker prints (Rust's allocation-failure handler) before it aborts.
/// The start of Rust's out-of-memory message ("memory allocation of N bytes failed"): workers
/// and the gateway share one stderr pipe, so the rest of the line may arrive interleaved with
/// another process's output.
const ALLOCATION_FAILED: &str = "memory allocation of ";

/// An MP3 whose ID3v2.3 tag holds a `TIT2` frame declaring `declared` bytes. The tag itself is
/// a few bytes long, but the frame size (a plain u32 in v2.3, not bounded by the tag's own size)
/// is what the tag reader allocates for the frame body before it reads — and finds the tag too
/// short. Without a ceiling that allocation is lazy and the load fails cleanly; under one it
/// cannot be had, and the worker aborts.
fn id3_bomb(declared: u32) -> Vec<u8> {
    let mut frames = b"TIT2".to_vec();
    frames.extend(declared.to_be_bytes());
    frames.extend([0, 0]); // frame flags
    frames.extend(b"\x03hostile");
    let size = frames.len() as u32;
    let syncsafe = [(size >> 21) as u8 & 0x7f, (size >> 14) as u8 & 0x7f, (size >> 7) as u8 & 0x7f, size as u8 & 0x7f];
    let mut file = b"ID3\x03\x00\x00".to_vec();
    file.extend(syncsafe);
    file.extend(frames);
    // Then plain MPEG-1 layer III frames (128 kbit/s, 44.1 kHz: 417 bytes each).
    for _ in 0..200 {
        let mut frame = vec![0u8; 417];
        frame[..4].copy_from_slice(&[0xFF, 0xFB, 0x90, 0x64]);
        file.extend(frame);
    }
    file
}

fn workers(rig: &Rig) -> Vec<Value> {
    let list: Value = rig.node.get("/v4/caldera/workers").json().unwrap();
    list["workers"].as_array().unwrap().clone()
}

/// The slot's entry once its worker is back (ready after `restarts` exits).
fn wait_slot(rig: &Rig, id: u64, restarts: u64) -> Value {
    caldera_tests::eventually(Duration::from_secs(10), &format!("worker {id} ready after {restarts} restarts"), || {
        workers(rig).into_iter().find(|w| w["id"] == id && w["state"] == "ready" && w["restarts"] == restarts)
    })
}

#[test]
fn allocation_beyond_the_memory_ceiling_kills_only_its_worker() {
    // Three workers: the hostile track crashes the one it is placed on and the one it is
    // restored on (then it is quarantined); the tone player's worker is never touched.
    let rig = rig_configured(3, "", CEILING);
    rig.play(7001, "/tone.wav", sine_wav(440.0, 30.0, 48_000, 2, 0.5), json!({}));
    let tone_worker = rig.worker_of(7001);
    let tone_pid = rig.worker_pid(tone_worker);
    let tone = rig.voice.wait_audio(7001, 50, Duration::from_secs(10));

    rig.play_encoded(7002, "/bomb.mp3", id3_bomb(DECLARED), "mp3");
    assert!(rig.node.logs.wait_count(ALLOCATION_FAILED, 2, Duration::from_secs(10)), "two workers should have hit the ceiling");
    rig.session.wait_event("TrackExceptionEvent", 7002, Duration::from_secs(5)).expect("the hostile track ends in quarantine");
    // They aborted (the allocation failure), and no other worker ended.
    assert!(rig.node.logs.wait_count("exit=killed by SIGABRT", 2, Duration::from_secs(5)));
    assert_eq!(rig.node.logs.count(" exit="), 2, "only the two workers that opened the file ended");
    // Both come back and say why their predecessors ended; the tone's worker never restarted.
    for w in workers(&rig).iter().filter(|w| w["id"] != tone_worker) {
        let back = wait_slot(&rig, w["id"].as_u64().unwrap(), 1);
        assert_eq!(back["lastExit"], "killed by SIGABRT", "{back}");
    }
    let host = workers(&rig).into_iter().find(|w| w["id"] == tone_worker).unwrap();
    assert_eq!((host["pid"].as_u64(), &host["restarts"], &host["lastExit"]), (Some(tone_pid as u64), &json!(0), &Value::Null), "{host}");

    std::thread::sleep(Duration::from_millis(1500));
    // The tone played on, gap-free, on its first and only voice connection.
    let audio = tone.audio().non_silent();
    assert!(audio.max_gap() < Duration::from_millis(100), "the healthy worker's player gapped {:?}", audio.max_gap());
    assert!((audio.dominant_frequency() - 440.0).abs() < 9.0);
    assert_eq!(rig.voice.connections(7001).len(), 1, "the tone player was never re-created");
    // The node kept serving: REST, the session, the tone player's state.
    assert_eq!(rig.node.get("/v4/info").status(), 200);
    assert!(rig.session.closed().is_none());
    let (status, player) = rig.session.get_player(7001);
    assert_eq!(status, 200);
    assert!(!player["track"].is_null() && player["state"]["connected"] == true, "{player}");
}

#[test]
fn a_file_that_exhausts_the_decoders_memory_is_quarantined() {
    let rig = rig_configured(2, "", CEILING);
    rig.play_encoded(7101, "/bomb.mp3", id3_bomb(DECLARED), "mp3");
    // It crashes its worker, is restored once on the other, crashes that one too, and is
    // quarantined: exception (fault) and end (loadFailed), and never started again.
    let (_, exception) = rig.session.wait_event("TrackExceptionEvent", 7101, Duration::from_secs(10)).expect("quarantine exception");
    assert_eq!(exception["exception"]["severity"], "fault");
    assert!(exception["exception"]["message"].as_str().unwrap().contains("crashed its worker"), "{exception}");
    assert_eq!(exception["track"]["info"]["uri"], rig.media.url("/bomb.mp3"));
    let (_, end) = rig.ended(7101, Duration::from_secs(5));
    assert_eq!(end["reason"], "loadFailed");
    assert_eq!(rig.node.logs.count(ALLOCATION_FAILED), 2);
    assert!(rig.node.logs.wait_count("exit=killed by SIGABRT", 2, Duration::from_secs(5)));
    // Both slots respawn, and say why their workers ended.
    for id in [0, 1] {
        assert_eq!(wait_slot(&rig, id, 1)["lastExit"], "killed by SIGABRT");
    }
    rig.node.wait_workers(2, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rig.node.logs.count(ALLOCATION_FAILED), 2, "the quarantined track was started again");
    // As in Lavalink, a track that fails to load was started (one TrackStart); the restore did
    // not repeat it.
    let starts = rig.session.messages().iter().filter(|m| m["type"] == "TrackStartEvent").count();
    assert_eq!(starts, 1, "TrackStart repeated");
    let (_, player) = rig.session.get_player(7101);
    assert!(player["track"].is_null(), "{player}");
    assert!(rig.session.closed().is_none());

    // The node, the session and even the same player go on with a healthy track.
    rig.play(7101, "/tone.wav", sine_wav(440.0, 10.0, 48_000, 2, 0.5), json!({}));
    let tone_url = rig.media.url("/tone.wav");
    let is_tone_start = |m: &Value| m["type"] == "TrackStartEvent" && m["track"]["info"]["uri"] == tone_url.as_str();
    rig.session.wait_for(is_tone_start, Duration::from_secs(10)).expect("a healthy track starts after the quarantine");
    let conn = rig.voice.latest(7101).expect("a voice connection");
    assert!(conn.wait_packets(50, Duration::from_secs(10)), "audio after the quarantine");
    assert!((conn.audio().non_silent().dominant_frequency() - 440.0).abs() < 9.0);
}

#[test]
fn a_crashing_tracks_neighbours_are_not_quarantined() {
    // Tone players on both workers, then the hostile track: it crashes its worker, is restored
    // with that worker's tones on the other one and crashes it too. Its neighbours shared both
    // crashes, but each crashing thread named the hostile track (crash evidence): only it is
    // quarantined, and every tone plays on.
    let rig = rig_configured(2, "", CEILING);
    let tones = [7401, 7402, 7403, 7404];
    for g in tones {
        rig.play(g, &format!("/n{g}.wav"), sine_wav(440.0, 60.0, 48_000, 2, 0.5), json!({}));
        rig.voice.wait_audio(g, 10, Duration::from_secs(10));
    }
    let hosts: Vec<u64> = tones.iter().map(|g| rig.worker_of(*g)).collect();
    assert!(hosts.contains(&0) && hosts.contains(&1), "tones on both workers: {hosts:?}");
    let crashed_at = Instant::now();
    rig.play_encoded(7405, "/bomb.mp3", id3_bomb(DECLARED), "mp3");
    let (_, exception) = rig.session.wait_event("TrackExceptionEvent", 7405, Duration::from_secs(10)).expect("the hostile track is quarantined");
    assert!(exception["exception"]["message"].as_str().unwrap().contains("crashed its worker"), "{exception}");
    assert!(rig.node.logs.wait_count("exit=killed by SIGABRT", 2, Duration::from_secs(5)), "both workers crashed");
    assert_eq!(rig.node.logs.count("track quarantined"), 1);
    // Every tone comes back on a new voice connection and plays its tone.
    for g in tones {
        let conn = caldera_tests::eventually(Duration::from_secs(20), &format!("guild {g} playing again"), || {
            rig.voice.latest(g).filter(|c| c.created() > crashed_at && c.packets() >= 50)
        });
        assert!((conn.audio().non_silent().dominant_frequency() - 440.0).abs() < 9.0, "guild {g}");
        let (_, player) = rig.session.get_player(g);
        assert!(!player["track"].is_null(), "{player}");
    }
    let quarantined: Vec<Value> = rig.session.messages().iter().filter(|m| m["type"] == "TrackExceptionEvent").map(|m| m["guildId"].clone()).collect();
    assert_eq!(quarantined, [json!("7405")], "only the hostile track");
    assert_eq!(rig.node.logs.count("the worker's crashing thread named what it was working on"), 2);
}

#[test]
fn loading_a_file_that_exhausts_memory_is_a_load_error() {
    let rig = rig_configured(2, "", CEILING);
    rig.media.route("/bomb.mp3", Route::file(id3_bomb(DECLARED), "audio/mpeg"));
    let url = rig.media.url("/bomb.mp3");
    // Probing allocates the same way: the probing worker aborts and the load answers at once
    // with Lavalink's error result, not after the load timeout.
    let asked = Instant::now();
    let result = rig.node.load(&url);
    assert!(asked.elapsed() < Duration::from_secs(10), "the load took {:?}", asked.elapsed());
    assert_eq!(result["loadType"], "error", "{result}");
    assert_eq!(result["data"]["severity"], "fault");
    assert_eq!(result["data"]["message"], "The worker loading this track stopped unexpectedly.");
    assert_eq!(rig.node.logs.count(ALLOCATION_FAILED), 1);
    // Playing it by identifier loads it first: a 400 naming the failure.
    let (status, body) = rig.session.patch(7201, json!({"voice": rig.voice_state(7201), "track": {"identifier": url}}));
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("stopped unexpectedly"), "{body}");
    // The node keeps serving and loading.
    rig.node.wait_workers(2, Duration::from_secs(10));
    assert!(rig.session.closed().is_none());
    rig.media.route("/tone.wav", Route::file(sine_wav(440.0, 3.0, 48_000, 2, 0.5), "audio/wav"));
    assert_eq!(rig.node.load(&rig.media.url("/tone.wav"))["loadType"], "track");
}

#[test]
fn a_worker_that_can_never_start_leaves_the_node_serving() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken-worker");
    std::fs::write(&broken, "#!/bin/sh\necho 'broken-worker: missing something it needs' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let yaml = format!("metrics:\n  prometheus:\n    enabled: true\ncaldera:\n  workers: 2\n  workerBinary: {}\n", broken.display());
    // Once every slot has failed to start, the gateway serves without them (and keeps trying).
    let started = Instant::now();
    let node = Node::start_with(NodeOptions { workers: 2, yaml, ..Default::default() });
    assert!(started.elapsed() < Duration::from_secs(20), "serving took {:?}", started.elapsed());
    let logs = &node.logs;
    assert!(logs.wait_for("not every worker started; serving with reduced capacity", Duration::from_secs(1)).is_some());
    // The logs say why: the program's own words and its exit.
    assert!(logs.count("broken-worker: missing something it needs") > 0);
    let exited = logs.wait_for("worker exited before saying hello", Duration::from_secs(1)).unwrap();
    assert!(exited.contains("exit=exit code 3"), "{exited}");

    // REST and WebSockets work.
    assert_eq!(node.get("/v4/info").status(), 200);
    let session = Session::connect(&node);
    let list: Value = node.get("/v4/caldera/workers").json().unwrap();
    let slots = list["workers"].as_array().unwrap();
    assert_eq!(slots.len(), 2);
    for w in slots {
        assert_ne!(w["state"], "ready", "{w}");
        assert_eq!(w["lastExit"], "exit code 3", "{w}");
        assert!(w["restarts"].as_u64().unwrap() >= 1, "{w}");
    }
    let metrics = node.client().get(node.url("/metrics")).header("Authorization", PASSWORD).send().unwrap().text().unwrap();
    let gauge = |name: &str| metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok());
    assert_eq!(gauge("caldera_workers_ready"), Some(0.0), "{metrics}");
    assert_eq!(gauge("caldera_workers_configured"), Some(2.0));

    // Loads and players fail at once with Lavalink-shaped errors.
    let asked = Instant::now();
    let result = node.load("http://127.0.0.1:9/never-fetched.mp3");
    assert!(asked.elapsed() < Duration::from_secs(5), "the load took {:?}", asked.elapsed());
    assert_eq!(result["loadType"], "error", "{result}");
    assert_eq!(result["data"]["severity"], "fault");
    assert_eq!(result["data"]["message"], "No worker is available to load the track.");
    let (status, body) = session.patch(7301, json!({"volume": 50}));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], 503);
    assert_eq!(body["message"], "No worker has room for another player");
    assert_eq!(body["path"], format!("/v4/sessions/{}/players/7301", session.id));

    // Spawns back off: each slot's delay doubles (500 ms, 1 s, 2 s, 4 s, ...), so in 8 s a slot
    // starts its worker a handful of times, not hundreds.
    std::thread::sleep(Duration::from_secs(8));
    let attempts = logs.count("worker exited before saying hello");
    assert!(attempts < 2 * 8, "{attempts} attempts in about 8 s");
    let delays: Vec<u64> = {
        let list = node.logs.lines_containing("worker{id=0}");
        list.iter()
            .filter(|l| l.contains("respawning worker after backoff"))
            .filter_map(|l| l.split("delay_ms=").nth(1)?.split_whitespace().next()?.parse().ok())
            .collect()
    };
    assert!(delays.len() >= 4 && delays.windows(2).all(|d| d[1] > d[0]), "delays of slot 0: {delays:?}");
}
