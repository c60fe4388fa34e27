//! Tracks, end to end: loading over HTTP and from local files (probed in workers), decoding, and
//! every way a load can fail — with the node still serving afterwards.

use caldera_tests::audio::{fixture, fixture_bytes, sine_wav};
use caldera_tests::http_server::{Icy, Route, TestServer};
use caldera_tests::{eventually, Node, NodeOptions, PASSWORD};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::time::Duration;

const DOCS_EXAMPLE: &str = "QAAAjQIAJVJpY2sgQXN0bGV5IC0gTmV2ZXIgR29ubmEgR2l2ZSBZb3UgVXAADlJpY2tBc3RsZXlWRVZPAAAAAAADPCAAC2RRdzR3OVdnWGNRAAEAK2h0dHBzOi8vd3d3LnlvdXR1YmUuY29tL3dhdGNoP3Y9ZFF3NHc5V2dYY1EAB3lvdXR1YmUAAAAAAAAAAA==";

fn assert_track_shape(track: &Value) {
    let info = &track["info"];
    for key in ["identifier", "author", "title", "sourceName"] {
        assert!(info[key].is_string(), "{key} in {track}");
    }
    for key in ["isSeekable", "isStream"] {
        assert!(info[key].is_boolean(), "{key} in {track}");
    }
    assert!(info["length"].is_u64() && info["position"].is_u64());
    // Optional fields are present as null, never omitted.
    for key in ["uri", "artworkUrl", "isrc"] {
        assert!(info.get(key).is_some(), "{key} missing in {track}");
    }
    assert_eq!(track["pluginInfo"], json!({}));
    assert_eq!(track["userData"], json!({}));
    assert!(track["encoded"].is_string());
}

fn loaded_track(node: &Node, identifier: &str) -> Value {
    let res = node.load(identifier);
    assert_eq!(res["loadType"], "track", "{identifier}: {res}");
    assert_track_shape(&res["data"]);
    res["data"].clone()
}

fn load_error(node: &Node, identifier: &str) -> Value {
    let res = node.load(identifier);
    assert_eq!(res["loadType"], "error", "{identifier}: {res}");
    let data = &res["data"];
    assert!(data["message"].is_string() && data["cause"].is_string(), "{res}");
    data.clone()
}

#[test]
fn every_format_loads_over_http_with_length_title_and_author() {
    let server = TestServer::start();
    let node = Node::start();
    let wav = sine_wav(440.0, 3.0, 48_000, 2, 0.5);
    let cases: Vec<(&str, Route, &str, bool)> = vec![
        ("/a.mp3", Route::file(fixture_bytes("sine440.mp3"), "audio/mpeg"), "mp3", true),
        ("/a.ogg", Route::file(fixture_bytes("sine440.ogg"), "audio/ogg"), "ogg", true),
        ("/a.opus", Route::file(fixture_bytes("sine440.opus"), "audio/ogg"), "ogg", true),
        ("/a.flac", Route::file(fixture_bytes("sine440.flac"), "audio/flac"), "flac", true),
        ("/a.m4a", Route::file(fixture_bytes("sine440.m4a"), "audio/mp4"), "mp4", true),
        ("/a.webm", Route::file(fixture_bytes("sine440.webm"), "audio/webm"), "matroska/webm", false),
        ("/a.wav", Route::file(wav, "audio/wav"), "wav", false),
        // Servers without Range support still work (forward reads, restarts for backward seeks).
        ("/noranges.ogg", Route::file_without_ranges(fixture_bytes("sine440.ogg"), "audio/ogg"), "ogg", true),
        ("/noranges.m4a", Route::file_without_ranges(fixture_bytes("sine440.m4a"), "application/octet-stream"), "mp4", true),
        ("/untagged", Route::file(fixture_bytes("untagged.mp3"), "application/octet-stream"), "mp3", false),
    ];
    for (path, route, probe, tagged) in cases {
        server.route(path, route);
        let url = server.url(path);
        let t = loaded_track(&node, &url);
        let info = &t["info"];
        let length = info["length"].as_u64().unwrap();
        assert!((2950..=3050).contains(&length), "{path}: length {length}");
        assert_eq!(info["isStream"], false, "{path}");
        assert_eq!(info["isSeekable"], true, "{path}");
        assert_eq!(info["sourceName"], "http");
        assert_eq!(info["identifier"], url.as_str());
        assert_eq!(info["uri"], url.as_str());
        assert_eq!(info["artworkUrl"], Value::Null);
        if tagged {
            assert_eq!(info["title"], "Sine 440", "{path}");
            assert_eq!(info["author"], "Caldera Tests", "{path}");
        } else {
            assert_eq!(info["title"], "Unknown title", "{path}");
            assert_eq!(info["author"], "Unknown artist", "{path}");
        }
        // The encoded track is Lavaplayer's format with the probe name as http's source data.
        let decoded = caldera_protocol::TrackData::decode(t["encoded"].as_str().unwrap()).unwrap();
        assert_eq!(decoded.probe_info().as_deref(), Some(probe), "{path}");
        assert_eq!(decoded.info.length, length);
        // And the node decodes it back to the same JSON.
        let res = node.client().get(node.url("/v4/decodetrack")).query(&[("encodedTrack", t["encoded"].as_str().unwrap())]).header("Authorization", PASSWORD).send().unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.json::<Value>().unwrap(), t);
    }
    let info: Value = node.get("/v4/info").json().unwrap();
    assert_eq!(info["sourceManagers"], json!(["http"]), "local is off by default");
}

#[test]
fn radio_playlists_load_as_their_first_playable_entry() {
    let server = TestServer::start();
    let node = Node::start();
    server.route("/one.mp3", Route::file(fixture_bytes("sine440.mp3"), "audio/mpeg"));
    server.route("/three.mp3", Route::file(fixture_bytes("untagged.mp3"), "audio/mpeg"));
    // As Lavaplayer: one track, not a playlist; entries that do not load are passed over, the
    // stream's own title wins over the listed one.
    let m3u = format!("#EXTM3U\n#PLAYLIST:Test Mix\n#EXTINF:3,Missing\n/missing.mp3\n#EXTINF:3,First\n{}\n", server.url("/one.mp3"));
    server.route("/list/mix.m3u", Route::file(m3u.into_bytes(), "audio/x-mpegurl"));
    let t = loaded_track(&node, &server.url("/list/mix.m3u"));
    assert_eq!(t["info"]["title"], "Sine 440");
    assert_eq!(t["info"]["uri"], server.url("/one.mp3"));
    assert_track_shape(&t);
    // A relative entry resolves against the playlist's URL; the listed title fills in.
    server.route("/list/three.mp3", Route::file(fixture_bytes("untagged.mp3"), "audio/mpeg"));
    server.route("/list/rel.m3u", Route::file(b"#EXTM3U\n#EXTINF:-1,Listed Title\nthree.mp3\n".to_vec(), "audio/x-mpegurl"));
    let t = loaded_track(&node, &server.url("/list/rel.m3u"));
    assert_eq!((t["info"]["title"].as_str(), t["info"]["uri"].as_str()), (Some("Listed Title"), Some(server.url("/list/three.mp3").as_str())));

    // PLS, known by its content (the URL has no extension), in entry-number order.
    let pls = format!("[playlist]\nFile2={}\nFile1={}\nTitle1=One\nNumberOfEntries=2\n", server.url("/one.mp3"), server.url("/three.mp3"));
    server.route("/radio", Route::file(pls.into_bytes(), "audio/x-scpls"));
    let t = loaded_track(&node, &server.url("/radio"));
    assert_eq!((t["info"]["title"].as_str(), t["info"]["uri"].as_str()), (Some("One"), Some(server.url("/three.mp3").as_str())));

    // Nothing playable: a clear error, and no local file is ever read.
    server.route("/none.m3u", Route::file(b"#EXTM3U\nfile:///etc/passwd\n".to_vec(), "audio/x-mpegurl"));
    assert_eq!(load_error(&node, &server.url("/none.m3u"))["message"], "The playlist file contains no links.");
    let all_missing = format!("#EXTM3U\n{}\n", server.url("/gone.mp3"));
    server.route("/gone.m3u", Route::file(all_missing.into_bytes(), "audio/x-mpegurl"));
    assert_eq!(load_error(&node, &server.url("/gone.m3u"))["message"], "None of the playlist's entries could be loaded.");
}

#[test]
fn icy_and_unbounded_streams_load_as_streams() {
    let server = TestServer::start();
    let node = Node::start();
    // An MP3 "radio": frames of the fixture repeated forever, ICY metadata every 8000 bytes.
    let mp3 = fixture_bytes("untagged.mp3");
    let frames = mp3[mp3.len() / 4..].to_vec();
    server.route(
        "/radio",
        Route::Stream {
            chunk: frames.clone().into(),
            content_type: "audio/mpeg".into(),
            icy: Some(Icy { name: "Caldera FM".into(), metaint: 8000, stream_title: "Band - Live Song".into() }),
        },
    );
    let t = loaded_track(&node, &server.url("/radio"));
    assert_eq!(t["info"]["isStream"], true);
    assert_eq!(t["info"]["isSeekable"], false);
    assert_eq!(t["info"]["length"], i64::MAX);
    assert_eq!(t["info"]["title"], "Band - Live Song");
    assert_eq!(t["info"]["author"], "Caldera FM");

    // No ICY, no Content-Length: still a stream.
    server.route("/plain-stream", Route::Stream { chunk: frames.into(), content_type: "audio/mpeg".into(), icy: None });
    let t = loaded_track(&node, &server.url("/plain-stream"));
    assert_eq!(t["info"]["isStream"], true);
    assert_eq!(t["info"]["length"], i64::MAX);
    assert_eq!(t["info"]["title"], "Unknown title");
}

#[test]
fn failures_are_clean_results_and_the_node_keeps_serving() {
    let server = TestServer::start();
    let node = Node::start();
    let mp3 = fixture_bytes("sine440.mp3");
    server.route("/garbage.mp3", Route::file((0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect(), "audio/mpeg"));
    server.route("/empty.mp3", Route::file(Vec::new(), "audio/mpeg"));
    server.route("/truncated.mp3", Route::file(mp3[..mp3.len() / 3].to_vec(), "audio/mpeg"));
    server.route("/page.html", Route::file(b"<!doctype html><title>hi</title>".to_vec(), "text/html"));
    server.route("/image.png", Route::file(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".repeat(50), "image/png"));
    server.route("/error", Route::Status(500));
    server.route("/forbidden", Route::Status(403));
    server.route("/loop", Route::Redirect("/loop".into()));
    server.route("/moved", Route::Redirect("/real.mp3".into()));
    server.route("/real.mp3", Route::file(mp3.clone(), "audio/mpeg"));

    assert_eq!(node.load(&server.url("/nothing-here.mp3")), json!({"loadType": "empty", "data": null}));
    for path in ["/garbage.mp3", "/empty.mp3", "/page.html", "/image.png"] {
        let e = load_error(&node, &server.url(path));
        assert_eq!(e["message"], "Unknown file format.", "{path}");
        assert_eq!(e["severity"], "common", "{path}");
    }
    let e = load_error(&node, &server.url("/truncated.mp3"));
    assert_eq!(e["message"], "The file is truncated or corrupt.");
    assert_eq!(e["severity"], "suspicious");
    for path in ["/error", "/forbidden"] {
        let e = load_error(&node, &server.url(path));
        assert_eq!(e["message"], "That URL is not playable.", "{path}");
        assert_eq!(e["severity"], "common");
    }
    assert_eq!(load_error(&node, &server.url("/loop"))["message"], "Too many redirects.");
    assert_eq!(loaded_track(&node, &server.url("/moved"))["info"]["title"], "Sine 440");

    // Connection refused: a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let e = load_error(&node, &format!("http://{closed}/a.mp3"));
    assert_eq!(e["message"], "Connecting to the URL failed.");
    assert_eq!(e["severity"], "suspicious");

    // Identifiers no source of ours handles.
    for id in ["ytsearch:never gonna", "scsearch:x", "dQw4w9WgXcQ", "/etc/passwd"] {
        assert_eq!(node.load(id), json!({"loadType": "empty", "data": null}), "{id}");
    }
    let res = node.client().get(node.url("/v4/loadtracks")).header("Authorization", PASSWORD).send().unwrap();
    assert_eq!(res.status(), 400);

    assert_eq!(node.get("/v4/info").status(), 200);
    assert_eq!(node.worker_pids().len(), 2);
    assert_eq!(node.logs.count("worker exited"), 0);
}

#[test]
fn a_worker_dying_mid_probe_gives_a_fault_and_the_node_recovers() {
    let server = TestServer::start();
    let node = Node::start_with(NodeOptions { workers: 1, ..Default::default() });
    let worker = node.wait_workers(1, Duration::from_secs(20))[0];
    server.route("/slow.mp3", Route::Hang);
    let url = server.url("/slow.mp3");
    let (client, load_url) = (node.client().clone(), node.url("/v4/loadtracks"));
    let pending = std::thread::spawn(move || -> Value {
        client.get(load_url).query(&[("identifier", url)]).header("Authorization", PASSWORD).send().unwrap().json().unwrap()
    });
    eventually(Duration::from_secs(10), "the worker requests the slow URL", || (!server.hits("/slow.mp3").is_empty()).then_some(()));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker as i32), Signal::SIGKILL).unwrap();
    let res = pending.join().unwrap();
    assert_eq!(res["loadType"], "error", "{res}");
    assert_eq!(res["data"]["severity"], "fault");
    // A replacement worker loads again (the killed one can still be listed while it exits).
    eventually(Duration::from_secs(15), "a replacement worker", || (node.wait_workers(1, Duration::from_secs(15)) != [worker]).then_some(()));
    server.route("/ok.mp3", Route::file(fixture_bytes("sine440.mp3"), "audio/mpeg"));
    loaded_track(&node, &server.url("/ok.mp3"));
}

#[test]
fn local_source_reads_only_allowed_directories() {
    let dir = fixture("").canonicalize().unwrap();
    let node = Node::start_with(NodeOptions {
        yaml: format!("lavalink:\n  server:\n    sources:\n      local: true\ncaldera:\n  workers: 1\n  localDirectories: [\"{}\"]\n", dir.display()),
        ..Default::default()
    });
    let path = dir.join("sine440.flac");
    let t = loaded_track(&node, path.to_str().unwrap());
    assert_eq!(t["info"]["sourceName"], "local");
    assert_eq!(t["info"]["title"], "Sine 440");
    assert_eq!(t["info"]["identifier"], path.to_str().unwrap());
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), fixture_bytes("sine440.mp3")).unwrap();
    let e = load_error(&node, outside.path().to_str().unwrap());
    assert_eq!(e["severity"], "common");
    // Escaping with .. is caught after resolving the path.
    let sneaky = format!("{}/../fixtures/../../Cargo.toml", dir.display());
    assert_ne!(node.load(&sneaky)["loadType"], "track");
    assert_eq!(node.load(&format!("{}/missing.mp3", dir.display())), json!({"loadType": "empty", "data": null}));
    let info: Value = node.get("/v4/info").json().unwrap();
    assert_eq!(info["sourceManagers"], json!(["http", "local"]));
}

#[test]
fn decode_routes() {
    let node = Node::start_with(NodeOptions { workers: 1, ..Default::default() });
    let http = node.client();
    let get = |query: &[(&str, &str)]| http.get(node.url("/v4/decodetrack")).query(query).header("Authorization", PASSWORD).send().unwrap();
    let expected_info = json!({
        "identifier": "dQw4w9WgXcQ",
        "isSeekable": true,
        "author": "RickAstleyVEVO",
        "length": 212000,
        "isStream": false,
        "position": 0,
        "title": "Rick Astley - Never Gonna Give You Up",
        "uri": "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
        // Not in this version-2 track's bytes (see protocol/tests/track.rs).
        "artworkUrl": null,
        "isrc": null,
        "sourceName": "youtube"
    });
    for key in ["encodedTrack", "track"] {
        let res = get(&[(key, DOCS_EXAMPLE)]);
        assert_eq!(res.status(), 200);
        let t: Value = res.json().unwrap();
        assert_eq!(t["info"], expected_info);
        assert_eq!(t["encoded"], DOCS_EXAMPLE);
        assert_track_shape(&t);
    }
    let res = get(&[]);
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<Value>().unwrap()["message"], "No track to decode provided");
    for bad in ["not-base64!", "QUJD", "QAAAjQIAJVJpY2sg"] {
        let res = get(&[("encodedTrack", bad)]);
        assert_eq!(res.status(), 400, "{bad}");
        let body: Value = res.json().unwrap();
        assert!(body["message"].as_str().unwrap().starts_with("Failed to decode track"), "{body}");
        assert_eq!(body["path"], "/v4/decodetrack");
    }

    let post = |body: &str| http.post(node.url("/v4/decodetracks")).header("Authorization", PASSWORD).header("Content-Type", "application/json").body(body.to_string()).send().unwrap();
    let res = post(&json!([DOCS_EXAMPLE, DOCS_EXAMPLE]).to_string());
    assert_eq!(res.status(), 200);
    let list: Value = res.json().unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[1]["info"], expected_info);
    let res = post("[]");
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<Value>().unwrap()["message"], "No tracks to decode provided");
    assert_eq!(post("{not json").status(), 400);
    assert_eq!(post(&json!([DOCS_EXAMPLE, "garbage"]).to_string()).status(), 400);
}

#[test]
fn python_lavalink_client_loads_and_decodes() {
    let server = TestServer::start();
    let node = Node::start_with(NodeOptions { workers: 1, ..Default::default() });
    server.route("/song.mp3", Route::file(fixture_bytes("sine440.mp3"), "audio/mpeg"));
    let seen = node.python("load_and_decode.py", &[&server.url("/song.mp3")]);
    assert_eq!(seen["title"], "Sine 440");
    assert_eq!(seen["author"], "Caldera Tests");
    assert!((2950..=3050).contains(&seen["duration"].as_u64().unwrap()), "{seen}");
    assert_eq!(seen["stream"], false);
    assert_eq!(seen["source"], "http");
    assert_eq!(seen["decoded_title"], "Sine 440");
    assert_eq!(seen["decoded_identifier"], server.url("/song.mp3"));
    assert_eq!(seen["decoded_count"], 2);
    assert!(seen["missing"].as_str().unwrap().to_lowercase().contains("empty"), "{seen}");
}
