//! DAVE end to end: the voice double negotiates Discord's end-to-end encryption (MLS) with the
//! node's songbird, takes part in the call as another member, and decrypts what arrives. Every
//! audio frame after the transition must arrive end-to-end encrypted, decrypt, and sound right —
//! through a member joining, a downgrade, a new epoch, an invalid commit, filters, volume and a
//! worker crash.

use caldera_tests::audio::sine_wav;
use caldera_tests::rig::{rig, Rig, CHANNEL};
use caldera_tests::voice::{Audio, Connection};
use nix::sys::signal::Signal;
use serde_json::json;
use std::time::{Duration, Instant};

/// A rig whose voice double speaks DAVE in the rig's channel.
fn dave_rig(workers: usize) -> Rig {
    let rig = rig(workers);
    rig.voice.enable_dave(CHANNEL.parse().unwrap());
    rig
}

/// Starts a 440 Hz tone in `guild` and waits until it arrives end-to-end encrypted.
fn encrypted_tone(rig: &Rig, guild: u64) -> Connection {
    rig.play(guild, &format!("/dave{guild}.wav"), sine_wav(440.0, 60.0, 48_000, 2, 0.5), json!({}));
    let conn = rig.voice.wait_connection(guild, Duration::from_secs(10));
    assert!(conn.wait_e2ee(50, Duration::from_secs(15)), "no end-to-end encrypted audio: {:?}", conn.dave());
    conn
}

/// The audio since `t`, which must be 440 Hz, complete on the RTP timeline and end-to-end
/// encrypted frame by frame (the Opus silence frame excepted, which DAVE never encrypts).
fn assert_encrypted_tone(audio: &Audio, what: &str) {
    assert!(audio.packets() >= 25, "{what}: only {} packets", audio.packets());
    let plain: Vec<u16> = audio.frames().iter().filter(|f| !f.e2ee && !f.is_silence_frame()).map(|f| f.seq).collect();
    assert!(plain.is_empty(), "{what}: plain frames {plain:?}");
    let tone = audio.non_silent();
    assert!((tone.dominant_frequency() - 440.0).abs() < 9.0, "{what}: {} Hz", tone.dominant_frequency());
    assert_eq!(audio.seq_gaps(), 0, "{what}: packets missing");
    eprintln!("{what}: {} packets, worst arrival gap {:?}", audio.packets(), audio.max_gap());
    assert!(audio.max_gap() < Duration::from_millis(200), "{what}: a gap of {:?}", audio.max_gap());
}

fn since(conn: &Connection, t: Instant) -> Audio {
    conn.audio().filter(|f| f.arrival > t)
}

fn assert_clean(conn: &Connection) {
    let dave = conn.dave();
    assert_eq!(dave.plain_frames_while_expected, 0, "{dave:?}");
    assert_eq!(dave.decrypt_failures, 0, "{dave:?}");
    assert!(dave.errors.is_empty(), "{dave:?}");
}

#[test]
fn audio_arrives_only_end_to_end_encrypted() {
    let rig = dave_rig(1);
    let conn = encrypted_tone(&rig, 8001);
    assert!(conn.wait_e2ee(150, Duration::from_secs(10)));
    let dave = conn.dave();
    assert_eq!(conn.identify().max_dave_protocol_version, Some(1));
    assert!(dave.negotiated);
    assert_eq!((dave.key_packages, dave.transitions.as_slice(), dave.epoch), (1, [1].as_slice(), Some(1)), "{dave:?}");
    assert_clean(&conn);
    assert_encrypted_tone(&conn.e2ee_audio(), "after the transition");
}

#[test]
fn without_dave_the_call_stays_transport_encrypted() {
    let rig = rig(1);
    rig.play(8101, "/plain.wav", sine_wav(440.0, 10.0, 48_000, 2, 0.5), json!({}));
    let conn = rig.voice.wait_audio(8101, 100, Duration::from_secs(10));
    let dave = conn.dave();
    assert!(!dave.negotiated && dave.e2ee_frames == 0 && dave.key_packages == 0, "{dave:?}");
    assert!((conn.audio().non_silent().dominant_frequency() - 440.0).abs() < 9.0);
}

#[test]
fn a_member_joining_changes_the_epoch_without_a_gap() {
    let rig = dave_rig(1);
    let conn = encrypted_tone(&rig, 8201);
    let joined_at = Instant::now();
    assert!(conn.add_dave_member());
    assert!(conn.wait_dave(Duration::from_secs(10), |d| d.transitions.len() == 2 && d.epoch == Some(2)), "{:?}", conn.dave());
    let frames_then = conn.dave().e2ee_frames;
    assert!(conn.wait_dave(Duration::from_secs(10), |d| d.e2ee_frames >= frames_then + 100));
    assert_clean(&conn);
    assert_encrypted_tone(&since(&conn, joined_at - Duration::from_millis(500)), "across the epoch change");
}

#[test]
fn a_downgrade_to_protocol_0_continues_in_plain_audio() {
    let rig = dave_rig(1);
    let conn = encrypted_tone(&rig, 8301);
    assert!(conn.downgrade_dave());
    assert!(conn.wait_dave(Duration::from_secs(10), |d| d.transitions == [1, 0]), "{:?}", conn.dave());
    // Frames in flight when the client executed the downgrade are still encrypted; from the
    // first plain one on, all are plain.
    let downgraded = Instant::now();
    let plain_since = |c: &Connection| since(c, downgraded).frames().iter().find(|f| !f.e2ee && !f.is_silence_frame()).map(|f| f.arrival);
    assert!(conn.wait_for(Duration::from_secs(10), |c| plain_since(c).is_some_and(|t| c.audio().filter(|f| f.arrival >= t).packets() >= 100)));
    let after = conn.audio().filter(|f| f.arrival >= plain_since(&conn).unwrap());
    assert!(after.frames().iter().all(|f| !f.e2ee), "E2EE after the downgrade");
    assert!((after.non_silent().dominant_frequency() - 440.0).abs() < 9.0);
    assert_eq!(after.seq_gaps(), 0);
    assert_clean(&conn);
}

#[test]
fn a_new_epoch_and_an_invalid_commit_recover() {
    let rig = dave_rig(1);
    let conn = encrypted_tone(&rig, 8401);
    // op 24: the client starts over with a new key package and is welcomed again.
    assert!(conn.prepare_dave_epoch());
    assert!(conn.wait_dave(Duration::from_secs(10), |d| d.key_packages == 2 && d.transitions.len() == 2 && d.expected_since.is_some()), "{:?}", conn.dave());
    let rejoined = conn.dave().expected_since.unwrap();
    assert!(conn.wait_for(Duration::from_secs(10), |c| since(c, rejoined).packets() >= 50));
    assert_encrypted_tone(&since(&conn, rejoined), "after the new epoch");
    // A commit the client cannot process: it says so (op 31) and starts over.
    assert!(conn.send_invalid_commit());
    assert!(conn.wait_dave(Duration::from_secs(10), |d| d.invalid_commits == 1 && d.key_packages == 3 && d.transitions.len() == 3 && d.expected_since.is_some()), "{:?}", conn.dave());
    let recovered = conn.dave().expected_since.unwrap();
    assert!(conn.wait_for(Duration::from_secs(10), |c| since(c, recovered).packets() >= 50));
    assert_encrypted_tone(&since(&conn, recovered), "after the invalid commit");
    assert_clean(&conn);
}

#[test]
fn filters_volume_and_a_worker_crash_stay_encrypted() {
    let rig = dave_rig(2);
    let guild = 8501;
    let conn = encrypted_tone(&rig, guild);
    // Volume and a filter move the player between passthrough and the PCM path: still E2EE.
    let changed = Instant::now();
    let (status, _) = rig.session.patch(guild, json!({"volume": 50}));
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(600));
    let (status, _) = rig.session.patch(guild, json!({"filters": {"timescale": {"pitch": 1.0, "speed": 1.0, "rate": 1.0}, "lowPass": {"smoothing": 1.5}}}));
    assert_eq!(status, 200);
    assert!(conn.wait_for(Duration::from_secs(10), |c| since(c, changed).packets() >= 100));
    assert_encrypted_tone(&since(&conn, changed), "through volume and filter changes");
    assert_clean(&conn);
    // The worker dies; the player is restored on the other one and joins the group again.
    let worker = rig.worker_of(guild);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(rig.worker_pid(worker) as i32), Signal::SIGKILL).unwrap();
    let restored = rig.voice.wait_connections(guild, 2, Duration::from_secs(10)).pop().unwrap();
    assert!(restored.wait_e2ee(100, Duration::from_secs(15)), "the restored player is not end-to-end encrypted: {:?}", restored.dave());
    assert_clean(&restored);
    assert_encrypted_tone(&restored.e2ee_audio(), "after the restore");
}
