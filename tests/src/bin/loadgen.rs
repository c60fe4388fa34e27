//! Load generator (a benchmark, not a test): starts a node (release binaries) and the voice test
//! double, runs N players on one source, and prints what it cost and how the audio arrived.
//!
//!   cargo build --release --workspace --bins
//!   target/release/loadgen --players 50 [--seconds 30] [--warmup 20] [--workers 2]
//!                          [--source FILE] [--filters '{"volume": 0.8}'] [--no-decode]
//!                          [--caldera 'worker: {sandbox: off}'] [--server 'bufferDurationMs: 200']
//!
//! Without `--source`, every player plays a 44.1 kHz stereo WAV tone (decoded, resampled,
//! encoded). Figures, over a steady window after a warm-up: node CPU (gateway + workers, from
//! /proc) per player, PSS (proportional set size: shared pages counted once) total and per
//! player, the voice double's own CPU (it runs in this process, on the same cores), frames
//! received per player per second, gaps over 40 ms, and packet inter-arrival jitter p50/p99.
//! `--no-decode` stops the double from decoding what it receives (arrival is enough), so at scale
//! it takes less of the cores the node needs.

use caldera_tests::audio::sine_wav;
use caldera_tests::client::Session;
use caldera_tests::http_server::{Route, TestServer};
use caldera_tests::procfs::{cpu_ticks, pss_bytes};
use caldera_tests::voice::VoiceServer;
use caldera_tests::{Node, NodeOptions};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn num(name: &str, default: u64) -> u64 {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let players = num("--players", 10) as usize;
    let seconds = num("--seconds", 30);
    let warmup = num("--warmup", 20);
    let workers = num("--workers", 2) as usize;
    let decode = !std::env::args().any(|a| a == "--no-decode");
    let filters: Option<Value> = arg("--filters").map(|f| serde_json::from_str(&f).expect("--filters is JSON"));
    let voice = VoiceServer::start();
    voice.set_decoding(decode);
    voice.set_audio_cap(Duration::from_secs(seconds + warmup + 30));
    let media = TestServer::start();
    let (path, bytes) = match arg("--source") {
        Some(file) => {
            let name = std::path::Path::new(&file).file_name().unwrap().to_string_lossy().to_string();
            (format!("/{name}"), std::fs::read(&file).expect("--source file"))
        }
        None => ("/load.wav".to_string(), sine_wav(440.0, (seconds + warmup) as f64 + 30.0, 44_100, 2, 0.5)),
    };
    media.route(&path, Route::file(bytes, "application/octet-stream"));
    let node = Node::start_with(NodeOptions {
        workers,
        env: vec![("SSL_CERT_FILE".into(), voice.ca_file().display().to_string())],
        yaml: format!(
            "lavalink:\n  server:\n    {}\ncaldera:\n  workers: {workers}\n  playersPerWorker: 1000\n  {}\n",
            arg("--server").unwrap_or_default(),
            arg("--caldera").unwrap_or_default()
        ),
        ..Default::default()
    });
    let session = Session::connect(&node);
    let track = node.load(&media.url(&path))["data"]["encoded"].as_str().expect("the source loads as a track").to_string();
    let t0 = Instant::now();
    for i in 0..players {
        let guild = 10_000 + i as u64;
        let mut body = json!({"voice": {"token": format!("t{guild}"), "endpoint": voice.endpoint(), "sessionId": format!("s{guild}"), "channelId": "900000000000000001"},
                              "track": {"encoded": track}});
        if let Some(f) = &filters {
            body["filters"] = f.clone();
        }
        let (status, body) = session.patch(guild, body);
        assert_eq!(status, 200, "{body}");
    }
    eprintln!("{players} players created in {:?}", t0.elapsed());
    for i in 0..players {
        voice.wait_connection(10_000 + i as u64, Duration::from_secs(60));
    }
    std::thread::sleep(Duration::from_secs(warmup));
    let pids: Vec<u32> = std::iter::once(node.pid()).chain(node.worker_pids()).collect();
    let me = std::process::id();
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let (cpu0, own0): (u64, u64) = (pids.iter().map(|p| cpu_ticks(*p)).sum(), cpu_ticks(me));
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let (cpu1, own1): (u64, u64) = (pids.iter().map(|p| cpu_ticks(*p)).sum(), cpu_ticks(me));
    let wall = start.elapsed().as_secs_f64();
    let pss: u64 = pids.iter().map(|p| pss_bytes(*p)).sum();

    let mut received = 0usize;
    let mut audible = 0usize;
    let mut gaps = 0usize;
    let mut jitter50 = Vec::new();
    let mut jitter99 = Vec::new();
    for i in 0..players {
        let audio = voice.wait_connection(10_000 + i as u64, Duration::from_secs(1)).audio();
        let Some(first) = audio.first_arrival() else { continue };
        let from = start.saturating_duration_since(first);
        let window = audio.slice(from, from + Duration::from_secs_f64(wall));
        received += window.packets();
        audible += window.frames().iter().filter(|f| !f.is_silence_frame()).count();
        gaps += window.gaps().iter().filter(|g| **g > Duration::from_millis(40)).count();
        let (p50, p99) = window.jitter_ms();
        jitter50.push(p50);
        jitter99.push(p99);
    }
    jitter50.sort_by(f64::total_cmp);
    jitter99.sort_by(f64::total_cmp);
    let cpu_pct = (cpu1 - cpu0) as f64 / ticks_per_s / wall * 100.0;
    let own_pct = (own1 - own0) as f64 / ticks_per_s / wall * 100.0;
    println!("players={players} workers={workers} source={path} filters={} window_s={wall:.1} warmup_s={warmup}", filters.map_or("none".into(), |f| f.to_string()));
    println!("node_cpu_percent_of_one_core={cpu_pct:.1} per_player={:.3}", cpu_pct / players as f64);
    println!("node_pss_mib={:.1} per_player_mib={:.2}", pss as f64 / 1048576.0, pss as f64 / 1048576.0 / players as f64);
    println!("voice_double_and_media_cpu_percent={own_pct:.1} (decoding={decode})");
    println!(
        "packets_per_second_per_player={:.2} audible={:.1}% gaps_over_40ms={gaps}",
        received as f64 / wall / players as f64,
        audible as f64 / received.max(1) as f64 * 100.0
    );
    println!(
        "jitter_ms p50(median player)={:.2} p99(median player)={:.2} p99(worst player)={:.2}",
        jitter50.get(jitter50.len() / 2).copied().unwrap_or(f64::NAN),
        jitter99.get(jitter99.len() / 2).copied().unwrap_or(f64::NAN),
        jitter99.last().copied().unwrap_or(0.0)
    );
}
