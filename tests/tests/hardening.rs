//! Findings of the adversarial run against the release build (the hardening issue), each
//! reproduced: it failed before its fix.

use caldera_tests::audio::sine_wav;
use caldera_tests::client::Session;
use caldera_tests::http_server::Route;
use caldera_tests::rig::{encoded_track, encoded_track_with, rig_with};
use caldera_tests::{Node, NodeOptions};
use serde_json::{json, Value};
use std::time::Duration;

/// Finding 2: with `http` and `local` off, loads answer `empty` — and a track encoded elsewhere
/// (by another node, or forged) is refused too, instead of making the worker fetch its URL or
/// read its file.
#[test]
fn switched_off_sources_cannot_come_back_through_an_encoded_track() {
    let rig = rig_with(1, "    sources:\n      http: false\n      local: false\n");
    rig.media.route("/t.wav", Route::file(sine_wav(440.0, 2.0, 48_000, 2, 0.5), "audio/wav"));
    assert_eq!(rig.node.load(&rig.media.url("/t.wav"))["loadType"], "empty");
    let http = encoded_track(&rig, "/t.wav", "wav");
    let local = encoded_track_with(&rig, "/t.wav", "wav", |i| {
        i.source_name = "local".into();
        i.identifier = "/etc/hostname".into();
        i.uri = Some("/etc/hostname".into());
    });
    for (source, encoded) in [("http", http), ("local", local)] {
        let (status, body) = rig.session.patch(9601, json!({"voice": rig.voice_state(9601), "track": {"encoded": encoded}}));
        assert_eq!(status, 400, "{source}: {body}");
        assert_eq!(body["message"], format!("The track's source `{source}` is disabled on this node"), "{body}");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(rig.media.hits("/t.wav").is_empty(), "nothing was fetched: {:?}", rig.media.hits("/t.wav"));
    assert!(rig.voice.connections(9601).iter().all(|c| c.packets() == 0), "nothing played");
}

/// Finding 7: a resume timeout of i64::MAX overflowed (`resumeTimeLeftMs` 0, never expiring);
/// it is cut to a year and counts down.
#[test]
fn a_huge_resume_timeout_is_cut_to_a_year_and_counts_down() {
    let node = Node::start();
    let session = Session::connect(&node);
    let (status, body) = session.configure(json!({"resuming": true, "timeout": i64::MAX}));
    assert_eq!((status, body["timeout"].as_u64()), (200, Some(YEAR_S)), "{body}");
    session.drop_and_wait_resumable();
    let c: Value = node.get("/v4/caldera/connections").json().unwrap();
    let left = c["connections"].as_array().unwrap().iter().find(|e| e["sessionId"] == session.id.as_str()).unwrap()["resumeTimeLeftMs"].as_i64().unwrap();
    assert!(left > (YEAR_S as i64 - 60) * 1000 && left <= YEAR_S as i64 * 1000, "{left}");
}

const YEAR_S: u64 = 365 * 24 * 3600;

/// Finding 7: a 1 MB identifier was echoed three times in one error body.
#[test]
fn a_huge_identifier_is_refused_without_being_echoed() {
    let node = Node::start();
    let session = Session::connect(&node);
    let huge = format!("http://127.0.0.1:9/{}", "a".repeat(1 << 20));
    let (status, body) = session.patch(9701, json!({"track": {"identifier": huge}}));
    assert_eq!(status, 400, "{}", &body.to_string()[..200.min(body.to_string().len())]);
    assert!(body.to_string().len() < 2000, "the error body is {} bytes", body.to_string().len());
    assert_eq!(body["message"], "The identifier is too long.");
    let long = format!("http://127.0.0.1:9/{}", "a".repeat(20_000));
    let res = node.load(&long);
    assert_eq!((res["loadType"].as_str(), res["data"]["message"].as_str()), (Some("error"), Some("The identifier is too long.")));
    assert!(res.to_string().len() < 2000, "{} bytes", res.to_string().len());
}

/// Finding 7: a resume with another User-Id was accepted (another bot took over the session's
/// players); it opens a new session instead and the first stays resumable for its owner.
#[test]
fn only_the_bot_that_owns_a_session_resumes_it() {
    let node = Node::start();
    let session = Session::connect(&node);
    session.configure(json!({"resuming": true, "timeout": 60}));
    session.drop_and_wait_resumable();
    let other = Session::connect_with(&node, &[("Session-Id", Some(&session.id)), ("User-Id", Some("424242"))]).unwrap();
    assert_eq!(other.ready["resumed"], false);
    assert_ne!(other.id, session.id);
    let owner = Session::connect_with(&node, &[("Session-Id", Some(&session.id))]).unwrap();
    assert_eq!((owner.ready["resumed"].as_bool(), owner.id.as_str()), (Some(true), session.id.as_str()));
}

/// Finding 7: a gateway killed by SIGKILL left its runtime directory behind; the next one
/// started there removes it.
#[test]
fn a_killed_gateways_runtime_directory_is_removed_by_the_next() {
    let base = tempfile::tempdir().unwrap();
    let env = vec![("RUNTIME_DIRECTORY".to_string(), base.path().display().to_string())];
    let mut first = Node::start_with(NodeOptions { env: env.clone(), ..Default::default() });
    let dirs = || std::fs::read_dir(base.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect::<Vec<_>>();
    let left = dirs();
    assert_eq!(left.len(), 1, "{left:?}");
    first.signal(nix::sys::signal::Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(10)).expect("the gateway died");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(dirs(), left, "SIGKILL leaves it behind");
    let second = Node::start_with(NodeOptions { env, ..Default::default() });
    let now = dirs();
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(!now.contains(&left[0]), "the stale directory is gone: {now:?}");
    assert!(second.logs.count("removed the runtime directory of a gateway that is gone") == 1);
}
