//! Probing the committed fixtures through the local source, in-process.

use caldera_protocol::{AudioSettings, ExceptionSeverity, HttpSettings, LoadRequest, LoadResult, ResamplingQuality, WorkerSettings};
use caldera_worker::sources::load;
use caldera_worker::net::Net;
use caldera_worker::Settings;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").canonicalize().unwrap()
}

fn settings(dir: &Path) -> Settings {
    let ipc = WorkerSettings {
        max_probe_bytes: 64 << 20,
        load_timeout_ms: 20_000,
        max_playlist_entries: 100,
        player_update_interval_ms: 5_000,
        track_stuck_threshold_ms: 10_000,
        route_planner: None,
        http: HttpSettings { connect_timeout_ms: 3000, response_timeout_ms: 3000, read_timeout_ms: 3000, proxy: None, deny: Vec::new() },
        audio: AudioSettings { buffer_ms: 400, frame_buffer_ms: 5000, opus_quality: 10, resampling: ResamplingQuality::Low },
        sources: vec!["http".into(), "local".into()],
    };
    Settings { ipc, local_dirs: vec![dir.display().to_string()].into() }
}

/// Loads through a worker's `Net` on a runtime of its own (local loads never touch it).
fn load_with(request: &LoadRequest, settings: &Settings) -> LoadResult {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let net = runtime.block_on(async { Net::detached(&settings.ipc) });
    load(request, settings, &net)
}

fn load_file(path: &Path, dir: &Path) -> LoadResult {
    load_with(&LoadRequest::Local { path: path.display().to_string() }, &settings(dir))
}

#[test]
fn every_fixture_probes_with_length_and_tags() {
    let dir = fixtures();
    for (file, probe, tagged) in [
        ("sine440.mp3", "mp3", true),
        ("sine440.ogg", "ogg", true),
        ("sine440.opus", "ogg", true),
        ("sine440.flac", "flac", true),
        ("sine440.m4a", "mp4", true),
        // Matroska tags are not read (neither does Lavaplayer): Lavalink's fallbacks apply.
        ("sine440.webm", "matroska/webm", false),
        ("untagged.mp3", "mp3", false),
    ] {
        let path = dir.join(file);
        let LoadResult::Track(t) = load_file(&path, &dir) else { panic!("{file}: {:?}", load_file(&path, &dir)) };
        assert!((2950..=3050).contains(&t.info.length), "{file}: length {}", t.info.length);
        assert_eq!(t.probe_info().as_deref(), Some(probe), "{file}");
        assert_eq!(t.info.source_name, "local");
        assert!(!t.info.is_stream);
        assert_eq!(t.info.identifier, path.display().to_string());
        if tagged {
            assert_eq!(t.info.title, "Sine 440", "{file}");
            assert_eq!(t.info.author, "Caldera Tests", "{file}");
        } else {
            assert_eq!(t.info.title, "Unknown title");
            assert_eq!(t.info.author, "Unknown artist");
        }
    }
}

#[test]
fn local_source_refuses_paths_outside_allowed_dirs_and_reports_missing_files_as_empty() {
    let dir = fixtures();
    let other = tempfile::tempdir().unwrap();
    let copy = other.path().join("x.mp3");
    std::fs::copy(dir.join("sine440.mp3"), &copy).unwrap();
    let LoadResult::Error(e) = load_file(&copy, &dir) else { panic!() };
    assert_eq!(e.severity, ExceptionSeverity::Common);
    // The same answer whether or not the file exists, and no path in it: no existence oracle.
    let LoadResult::Error(missing) = load_file(&other.path().join("missing.mp3"), &dir) else { panic!() };
    assert_eq!(missing, e);
    assert!(!e.cause.contains(other.path().to_str().unwrap()) && !e.message.contains('/'), "{e:?}");
    let escape = format!("{}/../../../etc/hostname", dir.display());
    assert!(matches!(load_with(&LoadRequest::Local { path: escape }, &settings(&dir)), LoadResult::Error(_)), "`..` out of the directory");
    // A symlink inside the allowed directory pointing outside it is refused too.
    let link_dir = tempfile::tempdir().unwrap();
    let link = link_dir.path().join("link.mp3");
    std::os::unix::fs::symlink(&copy, &link).unwrap();
    let allowed = link_dir.path().canonicalize().unwrap();
    assert!(matches!(load_file(&link, &allowed), LoadResult::Error(_)));
    assert_eq!(load_file(&dir.join("missing.mp3"), &dir), LoadResult::Empty);
    assert_eq!(load_with(&LoadRequest::Local { path: "relative.mp3".into() }, &settings(&dir)), LoadResult::Empty);
}

#[test]
fn broken_files_are_clean_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = root.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let mp3 = std::fs::read(fixtures().join("sine440.mp3")).unwrap();
    let cases = [
        ("empty.mp3", Vec::new(), "Unknown file format."),
        ("garbage.mp3", (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect(), "Unknown file format."),
        ("text.mp3", b"<html>not audio</html>".to_vec(), "Unknown file format."),
        ("truncated.mp3", mp3[..mp3.len() / 3].to_vec(), "The file is truncated or corrupt."),
        ("header-only.mp3", mp3[..200].to_vec(), ""),
    ];
    for (name, bytes, message) in cases {
        let path = write(name, &bytes);
        match load_file(&path, &root) {
            LoadResult::Error(e) => {
                if !message.is_empty() {
                    assert_eq!(e.message, message, "{name}: {e:?}");
                }
                assert_ne!(e.severity, ExceptionSeverity::Fault, "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn switched_off_sources_are_refused_by_the_worker_too() {
    let dir = fixtures();
    let mut only_http = settings(&dir);
    only_http.ipc.sources = vec!["http".into()];
    let path = dir.join("sine440.mp3").display().to_string();
    let LoadResult::Error(e) = load_with(&LoadRequest::Local { path }, &only_http) else { panic!("a local load with `local` off") };
    assert_eq!(e.message, "This track's source is disabled on this node.");
    let mut nothing = settings(&dir);
    nothing.ipc.sources = Vec::new();
    let LoadResult::Error(e) = load_with(&LoadRequest::Http { url: "http://127.0.0.1:9/x.mp3".into() }, &nothing) else { panic!("an http load with `http` off") };
    assert!(e.cause.contains("`http`"), "{e:?}");
}
