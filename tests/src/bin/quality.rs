//! What Lavalink's audio keys cost and do (a benchmark, not a test): for each
//! `resamplingQuality` and a few `opusEncodingQuality` levels, N players play a 44.1 kHz 1 kHz
//! tone; prints the node's CPU per player and the SNR of the tone as the voice double decodes it.
//!
//!   cargo build --release --workspace --bins
//!   target/release/quality [--players 20] [--seconds 15]

use caldera_tests::audio::sine_wav;
use caldera_tests::client::Session;
use caldera_tests::http_server::{Route, TestServer};
use caldera_tests::procfs::cpu_ticks;
use caldera_tests::voice::VoiceServer;
use caldera_tests::{Node, NodeOptions};
use serde_json::json;
use std::time::{Duration, Instant};

fn num(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let players = num("--players", 20) as usize;
    let seconds = num("--seconds", 15);
    let media = TestServer::start();
    media.route("/tone.wav", Route::file(sine_wav(1000.0, seconds as f64 + 30.0, 44_100, 2, 0.5), "audio/wav"));
    println!("| resamplingQuality | opusEncodingQuality | node CPU per player (% of a core) | SNR at the double |");
    println!("|---|---:|---:|---:|");
    for (resampling, opus) in [("LOW", 10), ("MEDIUM", 10), ("HIGH", 10), ("HIGH", 5), ("HIGH", 0)] {
        let voice = VoiceServer::start();
        let node = Node::start_with(NodeOptions {
            workers: 2,
            env: vec![("SSL_CERT_FILE".into(), voice.ca_file().display().to_string())],
            yaml: format!("lavalink:\n  server:\n    resamplingQuality: {resampling}\n    opusEncodingQuality: {opus}\n"),
            ..Default::default()
        });
        let session = Session::connect(&node);
        let track = node.load(&media.url("/tone.wav"))["data"]["encoded"].as_str().expect("loads").to_string();
        for i in 0..players {
            let guild = 10_000 + i as u64;
            let voice_state = json!({"token": "t", "endpoint": voice.endpoint(), "sessionId": format!("s{guild}"), "channelId": "900000000000000001"});
            session.patch(guild, json!({"voice": voice_state, "track": {"encoded": track}}));
        }
        for i in 0..players {
            voice.wait_audio(10_000 + i as u64, 50, Duration::from_secs(30));
        }
        std::thread::sleep(Duration::from_secs(3));
        let pids: Vec<u32> = std::iter::once(node.pid()).chain(node.worker_pids()).collect();
        let cpu0: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
        let start = Instant::now();
        std::thread::sleep(Duration::from_secs(seconds));
        let cpu1: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
        let cpu = (cpu1 - cpu0) as f64 / 100.0 / start.elapsed().as_secs_f64() * 100.0 / players as f64;
        let audio = voice.wait_connection(10_000, Duration::from_secs(1)).audio().non_silent();
        let skip = audio.packets().saturating_sub(250);
        let steady = caldera_tests::voice::Audio::new_from(audio.frames()[skip..].to_vec());
        println!("| {resampling} | {opus} | {cpu:.3} % | {:.1} dB |", steady.snr_db(1000.0));
    }
}
