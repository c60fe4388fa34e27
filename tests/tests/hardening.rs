//! Findings of the adversarial run against the release build (the hardening issue), each
//! reproduced: it failed before its fix.

use caldera_tests::audio::sine_wav;
use caldera_tests::http_server::Route;
use caldera_tests::rig::{encoded_track, encoded_track_with, rig_with};
use serde_json::json;
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
