//! A ready-made end-to-end rig: voice test double, media server, node, one client session.

use crate::client::Session;
use crate::http_server::{Route, TestServer};
use crate::voice::{Audio, VoiceServer};
use crate::{Node, NodeOptions};
use caldera_protocol::{TrackData, TrackInfo};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub const CHANNEL: &str = "900000000000000001";

pub struct Rig {
    pub voice: VoiceServer,
    pub media: TestServer,
    pub node: Node,
    pub session: Session,
}

pub fn rig(workers: usize) -> Rig {
    rig_with(workers, "")
}

pub fn rig_with(workers: usize, lavalink_server_yaml: &str) -> Rig {
    rig_configured(workers, lavalink_server_yaml, "")
}

/// A rig with extra `lavalink.server` lines and extra `caldera` lines (each indented for its
/// section, e.g. `"  worker:\n    memoryLimit: 128M\n"`).
pub fn rig_configured(workers: usize, lavalink_server_yaml: &str, caldera_yaml: &str) -> Rig {
    let voice = VoiceServer::start();
    let media = TestServer::start();
    let node = Node::start_with(NodeOptions {
        workers,
        env: vec![("SSL_CERT_FILE".into(), voice.ca_file().display().to_string())],
        yaml: format!(
            "lavalink:\n  server:\n    playerUpdateInterval: 1\n{lavalink_server_yaml}caldera:\n  workers: {workers}\n{caldera_yaml}"
        ),
        ..Default::default()
    });
    let session = Session::connect(&node);
    Rig { voice, media, node, session }
}

impl Rig {
    pub fn voice_state(&self, guild: u64) -> Value {
        json!({"token": format!("token-{guild}"), "endpoint": self.voice.endpoint(), "sessionId": format!("voice-session-{guild}"), "channelId": CHANNEL})
    }

    /// Serves `bytes` at `path` and starts playing it in `guild`, connected to the voice double.
    pub fn play(&self, guild: u64, path: &str, bytes: Vec<u8>, extra: Value) -> Value {
        self.media.route(path, Route::file(bytes, "application/octet-stream"));
        let mut body = json!({"voice": self.voice_state(guild), "track": {"identifier": self.media.url(path)}});
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        let (status, player) = self.session.patch(guild, body);
        assert_eq!(status, 200, "{player}");
        player
    }

    /// Serves `bytes` at `path` and plays them in `guild` as an encoded track built here, the
    /// way a client holding a track plays it: the node does not probe it first.
    pub fn play_encoded(&self, guild: u64, path: &str, bytes: Vec<u8>, probe_info: &str) -> Value {
        self.media.route(path, Route::file(bytes, "application/octet-stream"));
        let encoded = encoded_track(self, path, probe_info);
        let (status, player) = self.session.patch(guild, json!({"voice": self.voice_state(guild), "track": {"encoded": encoded}}));
        assert_eq!(status, 200, "{player}");
        player
    }

    /// The worker slot hosting `guild`'s player, from the worker's "voice connected" log line.
    pub fn worker_of(&self, guild: u64) -> u64 {
        let line = self
            .node
            .logs
            .wait_for(&format!("guild_id={guild}}}: caldera_worker::player: voice connected"), Duration::from_secs(5))
            .expect("voice connected log");
        line.split("worker{id=").nth(1).and_then(|r| r.split('}').next()).and_then(|id| id.parse().ok()).expect("worker id in the log")
    }

    /// The pid of worker slot `id`, from `/v4/caldera/workers`.
    pub fn worker_pid(&self, id: u64) -> u32 {
        let workers: Value = self.node.get("/v4/caldera/workers").json().unwrap();
        let w = workers["workers"].as_array().unwrap().iter().find(|w| w["id"] == id).expect("worker listed");
        w["pid"].as_u64().expect("worker has a pid") as u32
    }

    pub fn ended(&self, guild: u64, timeout: Duration) -> (Instant, Value) {
        self.session.wait_event("TrackEndEvent", guild, timeout).unwrap_or_else(|| panic!("no TrackEndEvent for {guild}: {:#?}", self.session.messages()))
    }
}

/// An encoded http track of `path` on the rig's media server (60 s long, titled after the path),
/// built here as a client holding a track has it: the node does not probe it.
pub fn encoded_track(rig: &Rig, path: &str, probe_info: &str) -> String {
    encoded_track_with(rig, path, probe_info, |_| {})
}

/// [`encoded_track`] with its info changed by `edit` first.
pub fn encoded_track_with(rig: &Rig, path: &str, probe_info: &str, edit: impl FnOnce(&mut TrackInfo)) -> String {
    let url = rig.media.url(path);
    let mut info = TrackInfo {
        title: path.trim_start_matches('/').into(),
        author: "caldera-tests".into(),
        length: 60_000,
        identifier: url.clone(),
        is_stream: false,
        uri: Some(url),
        artwork_url: None,
        isrc: None,
        source_name: "http".into(),
        position: 0,
    };
    edit(&mut info);
    TrackData::with_probe_info(info, probe_info).and_then(|t| t.encode()).expect("encode track")
}

pub fn assert_clean_tone(audio: &Audio, freq: f64, expected_packets: usize, what: &str) {
    let tone = audio.non_silent();
    assert!(
        tone.packets() as f64 >= expected_packets as f64 * 0.95,
        "{what}: {} audible packets, expected ≥ 95% of {expected_packets}",
        tone.packets()
    );
    let f = tone.dominant_frequency();
    assert!((f - freq).abs() <= freq * 0.02, "{what}: dominant frequency {f:.1} Hz, expected {freq} Hz");
    // Gaps are measured over the audible part: from the first to the last tone packet.
    let first = tone.first_arrival().unwrap();
    let span = tone.last_arrival().unwrap() - first;
    let gap = audio.slice(first - audio.first_arrival().unwrap(), span + (first - audio.first_arrival().unwrap())).max_gap();
    assert!(gap < Duration::from_millis(100), "{what}: gap of {gap:?} in the audio");
}

