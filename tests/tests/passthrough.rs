//! Opus passthrough, heard at the voice double: an Opus source's frames arrive byte for byte as
//! the source has them while nothing changes the sound; a filter or a volume change moves the
//! player to the PCM path on the next frames (no gap), and clearing it moves it back.

use caldera_tests::media::{packets, tone};
use caldera_tests::rig::{encoded_track, rig, Rig};
use caldera_tests::voice::{Audio, Connection};
use caldera_tests::http_server::Route;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A 12 s Ogg Opus tone (stereo, 20 ms frames) and its packets.
fn ogg_opus(freq: u32) -> (Vec<u8>, Vec<Vec<u8>>) {
    let bytes = tone(&format!("tone{freq}.opus"), freq, 12, &["-c:a", "libopus", "-b:a", "96k", "-frame_duration", "20", "-f", "ogg"]);
    let list = packets(&bytes, "ogg");
    (bytes, list)
}

/// Where each source packet is in the source (payload → index).
fn index(list: &[Vec<u8>]) -> HashMap<&[u8], usize> {
    list.iter().enumerate().map(|(i, p)| (p.as_slice(), i)).collect()
}

/// How many of the audible frames are source packets, untouched.
fn untouched(audio: &Audio, source: &HashMap<&[u8], usize>) -> (usize, usize) {
    let heard = audio.non_silent();
    let same = heard.frames().iter().filter(|f| source.contains_key(&*f.opus)).count();
    (same, heard.packets())
}

fn play(rig: &Rig, guild: u64, path: &str, bytes: Vec<u8>) -> Connection {
    rig.media.route(path, Route::file(bytes, "audio/ogg"));
    let track = encoded_track(rig, path, "ogg");
    let (status, body) = rig.session.patch(guild, json!({"voice": rig.voice_state(guild), "track": {"encoded": track}}));
    assert_eq!(status, 200, "{body}");
    rig.voice.wait_audio(guild, 50, Duration::from_secs(10))
}

/// The audio that arrived between `from` and `to` (wall clock).
fn between(conn: &Connection, from: Instant, to: Instant) -> Audio {
    let audio = conn.audio();
    let first = audio.first_arrival().unwrap();
    audio.slice(from.saturating_duration_since(first), to.saturating_duration_since(first))
}

#[test]
fn ogg_and_webm_opus_frames_arrive_as_the_source_has_them() {
    let rig = rig(1);
    let (ogg, ogg_packets) = ogg_opus(440);
    let conn = play(&rig, 9001, "/tone.opus", ogg);
    assert!(conn.wait_packets(150, Duration::from_secs(10)));
    let (same, heard) = untouched(&conn.audio(), &index(&ogg_packets));
    assert!(heard >= 140 && same == heard, "{same} of {heard} audible frames were the source's own");
    assert!((conn.audio().non_silent().dominant_frequency() - 440.0).abs() < 9.0);

    let webm = tone("tone.webm", 660, 12, &["-c:a", "libopus", "-b:a", "96k", "-frame_duration", "20", "-f", "webm"]);
    let webm_packets = packets(&webm, "webm");
    rig.media.route("/tone.webm", Route::file(webm, "audio/webm"));
    let track = encoded_track(&rig, "/tone.webm", "matroska/webm");
    rig.session.patch(9002, json!({"voice": rig.voice_state(9002), "track": {"encoded": track}}));
    let conn = rig.voice.wait_audio(9002, 150, Duration::from_secs(10));
    let (same, heard) = untouched(&conn.audio(), &index(&webm_packets));
    assert!(heard >= 140 && same == heard, "{same} of {heard} audible WebM frames were the source's own");
    assert!((conn.audio().non_silent().dominant_frequency() - 660.0).abs() < 13.0);
}

#[test]
fn a_filter_or_a_volume_change_moves_to_pcm_on_the_next_frames_and_back() {
    let rig = rig(1);
    let (ogg, list) = ogg_opus(440);
    let source = index(&list);
    let guild = 9011;
    let conn = play(&rig, guild, "/toggle.opus", ogg);
    std::thread::sleep(Duration::from_millis(500));
    let before = between(&conn, Instant::now() - Duration::from_millis(400), Instant::now());
    assert_eq!(untouched(&before, &source).0, before.non_silent().packets(), "not passthrough at first");

    // A filter (pitch ×2) is heard at once, re-encoded.
    let on = Instant::now();
    rig.session.patch(guild, json!({"filters": {"timescale": {"pitch": 2.0}}}));
    std::thread::sleep(Duration::from_millis(1000));
    let filtered = between(&conn, on + Duration::from_millis(150), Instant::now());
    let (same, heard) = untouched(&filtered, &source);
    // About 42 frames in the window; a loaded machine delivers a few of them late.
    assert!(heard >= 30 && same == 0, "{same} of {heard} frames passed through while a filter was on");
    assert!((filtered.non_silent().dominant_frequency() - 880.0).abs() < 18.0, "{} Hz with pitch 2", filtered.non_silent().dominant_frequency());
    let first_changed = between(&conn, on, Instant::now()).non_silent().frames().iter().position(|f| !source.contains_key(&*f.opus));
    assert!(first_changed.is_some_and(|i| i <= 8), "the filter was heard only after {first_changed:?} frames");

    // Cleared: back to the source's own frames.
    let off = Instant::now();
    rig.session.patch(guild, json!({"filters": {}}));
    std::thread::sleep(Duration::from_millis(800));
    let after = between(&conn, off + Duration::from_millis(150), Instant::now());
    let (same, heard) = untouched(&after, &source);
    assert!(heard >= 25 && same == heard, "{same} of {heard} frames passed through after the filter was cleared");

    // Volume 50 then 100: the same.
    let half = Instant::now();
    rig.session.patch(guild, json!({"volume": 50}));
    std::thread::sleep(Duration::from_millis(600));
    let quiet = between(&conn, half + Duration::from_millis(150), Instant::now());
    assert_eq!(untouched(&quiet, &source).0, 0, "volume 50 passed frames through");
    let full = Instant::now();
    rig.session.patch(guild, json!({"volume": 100}));
    std::thread::sleep(Duration::from_millis(600));
    let loud = between(&conn, full + Duration::from_millis(150), Instant::now());
    let (same, heard) = untouched(&loud, &source);
    assert!(heard >= 15 && same == heard, "{same} of {heard} frames passed through at volume 100 again");
    let level = |a: &Audio| a.non_silent().frames().iter().map(|f| f.rms_dbfs()).sum::<f64>() / a.non_silent().packets().max(1) as f64;
    let drop = level(&loud) - level(&quiet);
    assert!((4.5..=7.5).contains(&drop), "volume 50 was {drop:.1} dB quieter");

    // No gap through every switch: every 20 ms of the RTP timeline carries audible audio (a
    // switch that lost audio leaves a silence frame, a quiet frame or a skipped sequence number),
    // and delivery never pauses for long (the bound allows a loaded machine's scheduling jitter).
    let all = between(&conn, on - Duration::from_millis(200), Instant::now());
    assert_eq!((all.seq_gaps(), all.silence_frames()), (0, 0), "frames lost across the switches");
    assert_eq!(all.non_silent().packets(), all.packets(), "a quiet frame across the switches");
    assert!(all.max_gap() <= Duration::from_millis(100), "a pause of {:?} across the switches", all.max_gap());
}

#[test]
fn a_seek_in_passthrough_lands_within_60_ms() {
    let rig = rig(1);
    let (ogg, list) = ogg_opus(440);
    let source = index(&list);
    let guild = 9021;
    let conn = play(&rig, guild, "/seek.opus", ogg);
    let seek = Instant::now();
    rig.session.patch(guild, json!({"position": 6000}));
    std::thread::sleep(Duration::from_millis(600));
    let after = between(&conn, seek, Instant::now());
    let first = after.non_silent().frames().iter().find_map(|f| source.get(&*f.opus).copied().filter(|i| *i > 200));
    let landed_ms = first.expect("no frame from after the seek target") as i64 * 20;
    assert!((landed_ms - 6000).abs() <= 60, "the seek to 6000 ms landed at {landed_ms} ms");
}

#[test]
fn a_worker_with_100_players_has_a_bounded_number_of_threads() {
    let rig = rig(1);
    let (ogg, _) = ogg_opus(440);
    rig.media.route("/many.opus", Route::file(ogg, "audio/ogg"));
    let track = encoded_track(&rig, "/many.opus", "ogg");
    for guild in 20_000..20_100u64 {
        let (status, _) = rig.session.patch(guild, json!({"voice": rig.voice_state(guild), "track": {"encoded": track}}));
        assert_eq!(status, 200);
    }
    for guild in 20_000..20_100u64 {
        assert!(rig.voice.wait_audio(guild, 10, Duration::from_secs(30)).packets() >= 10);
    }
    let worker = rig.node.wait_workers(1, Duration::from_secs(5))[0];
    let status = std::fs::read_to_string(format!("/proc/{worker}/status")).unwrap();
    let threads: usize = status.lines().find_map(|l| l.strip_prefix("Threads:")).unwrap().trim().parse().unwrap();
    let mut names: HashMap<String, usize> = HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{worker}/task")).unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        *names.entry(comm.trim().trim_end_matches(char::is_numeric).to_string()).or_default() += 1;
    }
    eprintln!("a worker with 100 playing players has {threads} threads: {names:?}");
    assert!(threads <= 48, "{threads} threads for 100 players");
}
