//! Load generator (a benchmark, not a test): starts a node (release binaries) and the voice test
//! double, runs N players on one source for a fixed time, and prints what it cost and how the
//! audio arrived.
//!
//!   cargo build --release --workspace --bins
//!   target/release/loadgen --players 50 --seconds 30 [--workers 2]
//!
//! Figures: node CPU (gateway + workers, from /proc) per player, RSS total and per player, audio
//! frames received at the voice double / silent / missing (deficit against 50 per second per
//! player, counted from each player's first packet), and packet inter-arrival jitter p50/p99.

use caldera_tests::audio::sine_wav;
use caldera_tests::client::Session;
use caldera_tests::http_server::{Route, TestServer};
use caldera_tests::voice::VoiceServer;
use caldera_tests::procfs::{cpu_ticks, rss_bytes};
use caldera_tests::{Node, NodeOptions};
use serde_json::json;
use std::time::{Duration, Instant};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let players = arg("--players", 10) as usize;
    let seconds = arg("--seconds", 30);
    let workers = arg("--workers", 2) as usize;
    let voice = VoiceServer::start();
    let media = TestServer::start();
    // One source for every player: a 44.1 kHz WAV (decoded, resampled to 48 kHz, filtered,
    // encoded to Opus per player), longer than the run.
    media.route("/load.wav", Route::file(sine_wav(440.0, seconds as f64 + 30.0, 44_100, 2, 0.5), "audio/wav"));
    let node = Node::start_with(NodeOptions {
        workers,
        env: vec![("SSL_CERT_FILE".into(), voice.ca_file().display().to_string())],
        ..Default::default()
    });
    let session = Session::connect(&node);
    let url = media.url("/load.wav");
    let track = node.load(&url)["data"]["encoded"].as_str().expect("track loads").to_string();
    let t0 = Instant::now();
    for i in 0..players {
        let guild = 10_000 + i as u64;
        let (status, body) = session.patch(
            guild,
            json!({"voice": {"token": format!("t{guild}"), "endpoint": voice.endpoint(), "sessionId": format!("s{guild}"), "channelId": "900000000000000001"},
                   "track": {"encoded": track}}),
        );
        assert_eq!(status, 200, "{body}");
    }
    eprintln!("{players} players created in {:?}", t0.elapsed());
    // Let every connection come up, then measure a steady window.
    for i in 0..players {
        voice.wait_connection(10_000 + i as u64, Duration::from_secs(60));
    }
    std::thread::sleep(Duration::from_secs(2));
    let pids: Vec<u32> = std::iter::once(node.pid()).chain(node.worker_pids()).collect();
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let cpu0: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let cpu1: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
    let wall = start.elapsed().as_secs_f64();
    let rss: u64 = pids.iter().map(|p| rss_bytes(*p)).sum();

    let window_from = Duration::from_secs(0);
    let mut received = 0usize;
    let mut silent = 0usize;
    let mut jitter50 = Vec::new();
    let mut jitter99 = Vec::new();
    let mut mute_players = 0;
    for i in 0..players {
        let conn = voice.wait_connection(10_000 + i as u64, Duration::from_secs(1));
        let audio = conn.audio();
        let Some(first) = audio.first_arrival() else {
            // Counted as deficit: every expected frame of this player is missing.
            mute_players += 1;
            continue;
        };
        let from = start.saturating_duration_since(first).max(window_from);
        let window = audio.slice(from, from + Duration::from_secs_f64(wall));
        received += window.packets();
        silent += window.packets() - window.non_silent().packets();
        let (p50, p99) = window.jitter_ms();
        jitter50.push(p50);
        jitter99.push(p99);
    }
    jitter50.sort_by(f64::total_cmp);
    jitter99.sort_by(f64::total_cmp);
    let expected = (wall * 50.0) as usize * players;
    let cpu_pct = (cpu1 - cpu0) as f64 / ticks_per_s / wall * 100.0;
    println!("players={players} workers={workers} seconds={wall:.1}");
    println!("node_cpu_percent_of_one_core={cpu_pct:.1} per_player={:.2}", cpu_pct / players as f64);
    println!("rss_total_mib={:.1} per_player_mib={:.2}", rss as f64 / 1048576.0, rss as f64 / 1048576.0 / players as f64);
    println!(
        "frames_expected={expected} received={received} silent={silent} deficit={} ({:.2}%)",
        expected as i64 - received as i64,
        (expected as f64 - received as f64) / expected as f64 * 100.0
    );
    println!("players_without_any_audio={mute_players}");
    println!(
        "jitter_ms p50(median player)={:.2} p99(median player)={:.2} p99(worst player)={:.2}",
        jitter50.get(jitter50.len() / 2).copied().unwrap_or(f64::NAN),
        jitter99.get(jitter99.len() / 2).copied().unwrap_or(f64::NAN),
        jitter99.last().copied().unwrap_or(0.0)
    );
}
