//! Sessions, end to end: the WebSocket handshake, session configuration and resuming
//! (lavalink-internals §3), with the audio checked at the voice test double.

use caldera_tests::audio::sine_wav;
use caldera_tests::client::Session;
use caldera_tests::rig::{rig, rig_with};
use caldera_tests::{Node, NodeOptions, PASSWORD};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[test]
fn websocket_handshake_rules() {
    let node = Node::start_with(NodeOptions { workers: 1, ..Default::default() });
    assert_eq!(Session::connect_with(&node, &[("Authorization", None)]).err(), Some(401));
    assert_eq!(Session::connect_with(&node, &[("Authorization", Some("wrong"))]).err(), Some(401));
    assert_eq!(Session::connect_with(&node, &[("User-Id", None)]).err(), Some(400));
    assert_eq!(Session::connect_with(&node, &[("User-Id", Some("not-a-number"))]).err(), Some(400));
    // Header names are case-insensitive; Client-Name is optional; an unknown Session-Id (even
    // "0") opens a new session.
    let s = Session::connect_with(&node, &[("authorization", Some(PASSWORD)), ("USER-ID", Some("42")), ("Client-Name", None), ("Session-Id", Some("0"))]).unwrap();
    assert_eq!(s.resumed_header.as_deref(), Some("false"));
    assert_eq!(s.ready["resumed"], false);
    assert_ne!(s.id, "0");
    // Text messages from the client are ignored; the session stays usable.
    s.send_text("{\"op\":\"play\"}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(s.closed().is_none());
    let (status, body) = s.configure(json!({}));
    assert_eq!(status, 200);
    assert_eq!(body, json!({"resuming": false, "timeout": 60}));
    let (status, body) = s.configure(json!({"resuming": true, "timeout": 30}));
    assert_eq!(status, 200);
    assert_eq!(body, json!({"resuming": true, "timeout": 30}));
    assert_eq!(s.configure(json!({"timeout": -1})).0, 400);
    assert_eq!(s.configure(json!({"resuming": "yes"})).0, 400);
    let res = node.client().patch(node.url("/v4/sessions/nosuchsession0000")).header("Authorization", PASSWORD).json(&json!({"resuming": true})).send().unwrap();
    assert_eq!(res.status(), 404);
    // Several sessions at once, isolated from each other.
    let other = Session::connect(&node);
    assert_ne!(other.id, s.id);
    let (status, _) = other.patch(5, json!({"volume": 50}));
    assert_eq!(status, 200);
    assert_eq!(s.get_player(5).0, 404);
}

#[test]
fn resume_replays_queued_events_and_audio_never_stops() {
    let rig = rig(1);
    let guild = 1001;
    let (status, body) = rig.session.configure(json!({"resuming": true, "timeout": 20}));
    assert_eq!((status, &body), (200, &json!({"resuming": true, "timeout": 20})));
    rig.play(guild, "/resume.wav", sine_wav(440.0, 3.0, 48_000, 2, 0.5), json!({}));
    let conn = rig.voice.wait_audio(guild, 25, Duration::from_secs(15));
    // Drop the socket while the track plays; it finishes during the gap.
    rig.session.drop_connection();
    std::thread::sleep(Duration::from_millis(3500));
    let resumed = Session::connect_with(&rig.node, &[("Session-Id", Some(&rig.session.id))]).expect("resume");
    assert_eq!(resumed.resumed_header.as_deref(), Some("true"));
    assert_eq!(resumed.ready, json!({"op": "ready", "resumed": true, "sessionId": rig.session.id}));
    assert_eq!(resumed.id, rig.session.id);
    // Order: ready, the queued events (TrackEnd among them), then one playerUpdate per player.
    resumed.wait_for(|m| m["op"] == "playerUpdate", Duration::from_secs(5)).expect("playerUpdate after resume");
    let msgs = resumed.messages();
    let end = msgs.iter().position(|m| m["type"] == "TrackEndEvent").expect("queued TrackEndEvent replayed");
    let update = msgs.iter().position(|m| m["op"] == "playerUpdate").unwrap();
    assert_eq!(msgs[0]["op"], "ready");
    assert!(end < update, "{msgs:#?}");
    assert_eq!(msgs[end]["reason"], "finished");
    // No playerUpdates were queued while disconnected: exactly one, after the events.
    assert_eq!(msgs.iter().filter(|m| m["op"] == "playerUpdate").count(), 1, "{msgs:#?}");
    // The player is still there and the audio never stopped at the voice server.
    assert_eq!(resumed.get_player(guild).0, 200);
    let tone = conn.audio().non_silent();
    assert!(tone.packets() >= 142, "{} tone packets of 150", tone.packets());
    assert!(tone.max_gap() < Duration::from_millis(100), "gap {:?}", tone.max_gap());
    // A second client resuming the same id gets a new session (the first one won).
    let late = Session::connect_with(&rig.node, &[("Session-Id", Some(&rig.session.id))]).unwrap();
    assert_eq!(late.resumed_header.as_deref(), Some("false"));
    assert_ne!(late.id, rig.session.id);
}

#[test]
fn an_expired_session_is_destroyed_with_its_players() {
    let rig = rig_with(1, "");
    let guild = 1101;
    rig.session.configure(json!({"resuming": true, "timeout": 1}));
    rig.play(guild, "/expire.wav", sine_wav(440.0, 8.0, 48_000, 2, 0.5), json!({}));
    let conn = rig.voice.wait_audio(guild, 10, Duration::from_secs(15));
    rig.session.drop_connection();
    let t0 = Instant::now();
    // The voice connection is closed when the session expires.
    assert!(conn.wait_closed(Duration::from_secs(8)).is_some(), "voice connection still open after the resume timeout");
    assert!(t0.elapsed() >= Duration::from_millis(900), "destroyed before the timeout: {:?}", t0.elapsed());
    let again = Session::connect_with(&rig.node, &[("Session-Id", Some(&rig.session.id))]).unwrap();
    assert_eq!(again.ready["resumed"], false);
    assert_ne!(again.id, rig.session.id);
    let res = rig.node.client().get(rig.node.url(&format!("/v4/sessions/{}/players", rig.session.id))).header("Authorization", PASSWORD).send().unwrap();
    assert_eq!(res.status(), 404);
    let _: Value = res.json().unwrap();
}

#[test]
fn a_closed_session_without_resuming_destroys_its_players() {
    let rig = rig(1);
    let guild = 1201;
    rig.play(guild, "/close.wav", sine_wav(440.0, 8.0, 48_000, 2, 0.5), json!({}));
    let conn = rig.voice.wait_audio(guild, 10, Duration::from_secs(15));
    rig.session.drop_connection();
    assert!(conn.wait_closed(Duration::from_secs(5)).is_some(), "voice connection outlived its session");
}
