//! The gateway's bounded queues, end to end: a worker that floods its connection, a client that
//! never reads its WebSocket, and a worker that stops taking commands each cost the node a
//! bounded amount, and nobody else's audio or events.

use caldera_tests::audio::sine_wav;
use caldera_tests::http_server::Route;
use caldera_tests::rig::{encoded_track_with, rig, rig_configured, Rig};
use caldera_tests::{bin, eventually, procfs, PASSWORD};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// An encoded http track of `path` on the rig's media server, titled `title`, with `padding`
/// (if any) in every other free-text field.
fn encoded(rig: &Rig, path: &str, title: &str, padding: Option<&str>) -> String {
    encoded_track_with(rig, path, "wav", |info| {
        info.title = title.into();
        if let Some(p) = padding {
            info.author = p.into();
            info.identifier = p.into();
            info.artwork_url = Some(p.into());
            info.isrc = Some(p.into());
        }
    })
}

fn last_exit(rig: &Rig, slot: u64) -> Option<String> {
    let workers: Value = rig.node.get("/v4/caldera/workers").json().ok()?;
    workers["workers"].as_array()?.iter().find(|w| w["id"] == slot)?["lastExit"].as_str().map(str::to_string)
}

#[test]
fn a_worker_flooding_its_connection_is_killed_and_its_players_come_back_elsewhere() {
    let flood_worker = bin("flood-worker");
    let rig = rig_configured(2, "", &format!("  workerBinary: {}\n", flood_worker.display()));
    let gateway = rig.node.pid();
    let baseline = procfs::rss_bytes(gateway);
    // The first player goes to slot 0, whose worker starts flooding once it is given one.
    rig.play(7001, "/flood.wav", sine_wav(440.0, 30.0, 48_000, 2, 0.5), json!({}));
    let sampler = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(6);
        let mut peak = 0;
        while Instant::now() < until {
            peak = peak.max(procfs::rss_bytes(gateway));
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    });
    assert!(rig.node.logs.wait_for("worker is flooding its IPC connection", Duration::from_secs(10)).is_some());
    let exit = eventually(Duration::from_secs(5), "slot 0's lastExit", || last_exit(&rig, 0));
    assert_eq!(exit, "killed: flooding its IPC connection");
    // Its player plays on slot 1 now, heard at the voice double on a new connection.
    let conns = rig.voice.wait_connections(7001, 2, Duration::from_secs(10));
    assert!(conns[1].wait_packets(50, Duration::from_secs(10)), "no audio after the restore");
    let tone = conns[1].audio().non_silent().dominant_frequency();
    assert!((tone - 440.0).abs() < 9.0, "{tone} Hz");
    assert!(rig.node.logs.wait_for("player restored on another worker", Duration::from_secs(1)).unwrap().contains("to=1"));
    let peak = sampler.join().unwrap();
    eprintln!("gateway RSS: {} MiB before the flood, {} MiB at most during it", baseline >> 20, peak >> 20);
    assert!(peak < baseline + (64 << 20), "the flood grew the gateway from {baseline} to {peak} bytes");
    assert!(rig.session.closed().is_none(), "the client's session is untouched");
}

/// A WebSocket client that completes the handshake, reads its `ready`, and never reads again,
/// with a small receive buffer. Returns the socket and its session id.
fn silent_client(rig: &Rig) -> (TcpStream, String) {
    let addr = rig.node.addr.unwrap();
    let stream = TcpStream::connect(addr).unwrap();
    nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::RcvBuf, &4096).unwrap();
    let request = format!(
        "GET /v4/websocket HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: {PASSWORD}\r\nUser-Id: 170000000000000009\r\n\r\n"
    );
    (&stream).write_all(request.as_bytes()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The 101 answer, then the first frame (ready) — read byte by byte, nothing more.
    let mut seen = Vec::new();
    let mut byte = [0u8];
    while !seen.ends_with(b"\r\n\r\n") {
        (&stream).read_exact(&mut byte).unwrap();
        seen.push(byte[0]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&seen));
    let mut header = [0u8; 2];
    (&stream).read_exact(&mut header).unwrap();
    let len = match header[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            (&stream).read_exact(&mut ext).unwrap();
            u16::from_be_bytes(ext) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    (&stream).read_exact(&mut payload).unwrap();
    let ready: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(ready["op"], "ready");
    (stream, ready["sessionId"].as_str().unwrap().to_string())
}

#[test]
fn a_websocket_client_that_never_reads_is_dropped_and_others_keep_their_events() {
    let rig = rig(1);
    rig.media.route("/quiet.wav", Route::file(sine_wav(440.0, 30.0, 48_000, 2, 0.1), "audio/wav"));
    let (_socket, silent) = silent_client(&rig);
    let base = rig.node.url(&format!("/v4/sessions/{silent}/players/7101"));
    // Every new track makes two events (TrackStart, and TrackEnd of the one it replaced), each
    // carrying this user data: the silent client's queue fills fast.
    let user_data = json!({"blob": "x".repeat(200_000)});
    let mut dropped_after = None;
    for i in 0..400 {
        let body = json!({"track": {"encoded": encoded(&rig, "/quiet.wav", &format!("t{i}"), None), "userData": user_data}});
        let res = rig.node.client().patch(&base).header("Authorization", PASSWORD).json(&body).send().unwrap();
        if res.status() == 404 {
            dropped_after = Some(i);
            break;
        }
        assert_eq!(res.status(), 200);
        std::thread::sleep(Duration::from_millis(5));
    }
    let dropped_after = dropped_after.expect("the silent client's session was never dropped");
    eprintln!("the silent client was dropped after {dropped_after} track changes");
    assert!(rig.node.logs.wait_for("client is not reading its WebSocket; dropping it", Duration::from_secs(1)).is_some());
    // Its session (not resumable) went with its players; the reading client's goes on.
    let connections: Value = rig.node.get("/v4/caldera/connections").json().unwrap();
    let ids: Vec<&str> = connections["connections"].as_array().unwrap().iter().filter_map(|c| c["sessionId"].as_str()).collect();
    assert_eq!(ids, [rig.session.id.as_str()]);
    let (status, _) = rig.session.patch(7102, json!({"track": {"encoded": encoded(&rig, "/quiet.wav", "after", None)}}));
    assert_eq!(status, 200);
    assert!(rig.session.wait_event("TrackStartEvent", 7102, Duration::from_secs(5)).is_some());
    assert!(rig.session.closed().is_none());
    let rss = procfs::rss_bytes(rig.node.pid());
    eprintln!("gateway RSS after dropping the silent client: {} MiB", rss >> 20);
}

#[test]
fn a_worker_that_stops_taking_commands_is_replaced_and_the_command_is_not_lost() {
    let rig = rig(2);
    rig.play(7201, "/before.wav", sine_wav(440.0, 30.0, 48_000, 2, 0.5), json!({}));
    rig.voice.wait_audio(7201, 25, Duration::from_secs(10));
    let slot = rig.worker_of(7201);
    let pid = rig.worker_pid(slot);
    rig.media.route("/after.wav", Route::file(sine_wav(880.0, 30.0, 48_000, 2, 0.5), "audio/wav"));
    // Tracks with 60 kB in each of five text fields: each command is that large, so the
    // worker's queue (bounded in bytes) fills after a few dozen, long before its missed pings
    // would get it killed.
    let title = "t".repeat(60_000);
    let padding = "a".repeat(60_000);
    let tracks: Vec<String> = (0..80).map(|i| encoded(&rig, "/after.wav", &format!("{title}{i}"), Some(&padding))).collect();
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    let mut sent = 0;
    for track in &tracks {
        if last_exit(&rig, slot).is_some() || stopped.elapsed() > Duration::from_secs(4) {
            break;
        }
        let (status, _) = rig.session.patch(7201, json!({"track": {"encoded": track}}));
        assert_eq!(status, 200);
        sent += 1;
    }
    let exit = eventually(Duration::from_secs(10), "the jammed worker's lastExit", || last_exit(&rig, slot));
    eprintln!("the worker was killed after {sent} commands, {:?} after it stopped", stopped.elapsed());
    assert_eq!(exit, "killed: not reading its command queue");
    // The player comes back on the other worker with what the last update asked for.
    let conns = rig.voice.wait_connections(7201, 2, Duration::from_secs(10));
    assert!(conns[1].wait_packets(50, Duration::from_secs(10)), "no audio after the restore");
    let tone = conns[1].audio().non_silent().dominant_frequency();
    assert!((tone - 880.0).abs() < 18.0, "{tone} Hz: the restored player does not play the last track");
    let (_, player) = rig.session.get_player(7201);
    assert!(player["track"]["info"]["title"].as_str().unwrap().starts_with(&title));
}
