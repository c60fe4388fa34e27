//! Fuzzing of the worker's parsers of untrusted bytes, on stable Rust (proptest): radio
//! playlists, HLS playlists, the MPEG-TS demuxer, container detection and probing. Each case
//! mutates a seed of the committed corpus (`worker/tests/corpus`, `tests/fixtures`) — byte
//! flips, a cut, a repeated slice — so a failure prints the seed and the mutation that
//! reproduce it; the parsers must answer (Ok or a clean error) without panicking. Bounded in
//! cases so the suite stays fast; `PROPTEST_CASES=100000` runs longer.

use super::container::{self, Container};
use super::{hls, playlist, probe};
use proptest::prelude::*;
use std::path::Path;

fn seed(path: &str) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A seed with up to 16 bytes replaced, cut at some point, and a slice of it repeated.
fn mutate(mut bytes: Vec<u8>, flips: &[(usize, u8)], cut: usize, repeat: (usize, usize, usize)) -> Vec<u8> {
    for &(at, b) in flips {
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] = b;
        }
    }
    if !bytes.is_empty() {
        let (from, len, times) = repeat;
        let from = from % bytes.len();
        let slice = bytes[from..(from + len % 64).min(bytes.len())].to_vec();
        for _ in 0..times % 4 {
            bytes.splice(from..from, slice.iter().copied());
        }
    }
    bytes.truncate(cut % (bytes.len() + 1) + bytes.len() / 2);
    bytes
}

fn mutation() -> impl Strategy<Value = (Vec<(usize, u8)>, usize, (usize, usize, usize))> {
    (proptest::collection::vec((any::<usize>(), any::<u8>()), 0..16), any::<usize>(), (any::<usize>(), any::<usize>(), any::<usize>()))
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(cases), failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn radio_playlists(which in 0usize..2, (flips, cut, repeat) in mutation()) {
        let name = ["tests/corpus/radio.m3u", "tests/corpus/radio.pls"][which];
        let text = String::from_utf8_lossy(&mutate(seed(name), &flips, cut, repeat)).into_owned();
        let list = if which == 0 { playlist::parse_m3u(&text) } else { playlist::parse_pls(&text) };
        prop_assert!(list.entries.len() <= text.lines().count());
    }

    #[test]
    fn hls_playlists(which in 0usize..2, (flips, cut, repeat) in mutation()) {
        let name = ["tests/corpus/master.m3u8", "tests/corpus/media.m3u8"][which];
        let text = String::from_utf8_lossy(&mutate(seed(name), &flips, cut, repeat)).into_owned();
        let base = url::Url::parse("https://cdn.example/path/index.m3u8").unwrap();
        let _ = hls::is_hls(&text);
        match hls::playlist::parse(&text, &base) {
            Ok(hls::playlist::Playlist::Master(m)) => {
                let chosen = hls::playlist::choose(&m);
                prop_assert!(chosen.starts_with("http"), "{chosen}");
            }
            Ok(hls::playlist::Playlist::Media(m)) => {
                prop_assert!(hls::playlist::live_start(&m) <= m.segments.len());
                prop_assert!(m.segments.len() <= hls::playlist::MAX_SEGMENTS);
            }
            Err(_) => {}
        }
    }

    #[test]
    fn mpeg_ts_segments((flips, cut, repeat) in mutation()) {
        let bytes = mutate(seed("tests/corpus/seed.ts"), &flips, cut, repeat);
        let _ = hls::ts::looks_like_ts(&bytes);
        if let Ok((_, audio)) = hls::ts::demux(&bytes) {
            prop_assert!(audio.len() <= bytes.len());
        }
    }
}

proptest! {
    // Probing decodes headers and scans frames: fewer, costlier cases.
    #![proptest_config(config(300))]

    #[test]
    fn container_detection_and_probing(which in 0usize..6, (flips, cut, repeat) in mutation()) {
        let name = ["sine440.mp3", "sine440.ogg", "sine440.opus", "sine440.flac", "sine440.m4a", "sine440.webm"][which];
        let bytes = mutate(seed(&format!("../tests/fixtures/{name}")), &flips, cut, repeat);
        if let Some(found) = container::detect(&bytes).filter(|c| !c.is_playlist() && *c != Container::Hls) {
            let source = Box::new(std::io::Cursor::new(bytes.clone()));
            let _ = probe::probe_file(source, found);
        }
    }
}
