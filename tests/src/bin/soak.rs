//! `soak`: players with churn against the real binaries for a long time (an hour by default;
//! not part of CI), printing the gateway's and the workers' RSS, descriptors and threads every
//! minute, then each figure's slope per hour (the goal: flat).
//!
//!     cargo run --release -p caldera-tests --bin soak -- --minutes 60 --guilds 40
//!
//! Churn, one action every 250 ms, picked by a fixed-seed generator (a run can be repeated):
//! create or replace a player's track, seek, set or clear filters, change volume, destroy a
//! player; every 5 minutes a worker is killed (its players come back elsewhere); every 2
//! minutes a second client connects and goes away, and the main one drops and resumes.

use caldera_tests::audio::sine_wav;
use caldera_tests::client::Session;
use caldera_tests::http_server::{Route, TestServer};
use caldera_tests::voice::VoiceServer;
use caldera_tests::{procfs, Node, NodeOptions};
use serde_json::json;
use std::time::{Duration, Instant};

fn num(flag: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// xorshift64*: enough randomness for churn, reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// `(RSS MiB, descriptors, threads)` of one process.
fn figures(pid: u32) -> (f64, f64, f64) {
    let rss = procfs::rss_bytes(pid) as f64 / (1024.0 * 1024.0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0) as f64;
    let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0);
    (rss, fds, threads)
}

/// Least-squares slope of `ys` over `xs` (per unit of x).
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}

fn main() {
    let minutes = num("--minutes", 60);
    let guilds = num("--guilds", 40);
    let voice = VoiceServer::start();
    voice.set_decoding(false);
    let media = TestServer::start();
    media.route("/soak.wav", Route::file(sine_wav(440.0, 30.0, 48_000, 2, 0.5), "audio/wav"));
    let node = Node::start_with(NodeOptions {
        workers: 2,
        env: vec![("SSL_CERT_FILE".into(), voice.ca_file().display().to_string())],
        yaml: "lavalink:\n  server:\n    playerUpdateInterval: 5\ncaldera:\n  workers: 2\n".into(),
        ..Default::default()
    });
    let mut session = Session::connect(&node);
    session.configure(json!({"resuming": true, "timeout": 60}));
    let track = node.load(&media.url("/soak.wav"))["data"]["encoded"].as_str().expect("the soak track loads").to_string();
    let voice_state = |g: u64| json!({"token": format!("t{g}"), "endpoint": voice.endpoint(), "sessionId": format!("s{g}"), "channelId": "900000000000000001"});
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let started = Instant::now();
    let (mut next_sample, mut next_kill, mut next_clients) = (Duration::ZERO, Duration::from_secs(300), Duration::from_secs(120));
    let mut samples: Vec<(f64, (f64, f64, f64), (f64, f64, f64))> = Vec::new();
    println!("minute  gateway: RSS MiB  fds  threads   workers: RSS MiB  fds  threads");
    while started.elapsed() < Duration::from_secs(minutes * 60) {
        let g = 5000 + rng.below(guilds);
        let body = match rng.below(8) {
            0..=2 => json!({"voice": voice_state(g), "track": {"encoded": track}}),
            3 => json!({"position": rng.below(25_000)}),
            4 => json!({"filters": {"timescale": {"speed": 1.1, "pitch": 1.0, "rate": 1.0}, "equalizer": [{"band": 2, "gain": 0.2}]}}),
            5 => json!({"filters": {}}),
            6 => json!({"volume": rng.below(150)}),
            _ => {
                session.delete_player(g);
                json!(null)
            }
        };
        if !body.is_null() {
            let _ = session.patch(g, body);
        }
        let now = started.elapsed();
        if now >= next_kill {
            next_kill += Duration::from_secs(300);
            if let Some(pid) = node.worker_pids().first() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::Signal::SIGKILL);
            }
        }
        if now >= next_clients {
            next_clients += Duration::from_secs(120);
            drop(Session::connect(&node));
            session.drop_and_wait_resumable();
            session = Session::connect_with(&node, &[("Session-Id", Some(&session.id.clone()))]).expect("resume");
        }
        if now >= next_sample {
            next_sample += Duration::from_secs(60);
            let gateway = figures(node.pid());
            let workers = node.worker_pids().into_iter().map(figures).fold((0.0, 0.0, 0.0), |a, w| (a.0 + w.0, a.1 + w.1, a.2 + w.2));
            let minute = now.as_secs_f64() / 60.0;
            println!(
                "{minute:6.1}  {:>16.1} {:>4} {:>8}   {:>16.1} {:>4} {:>8}",
                gateway.0, gateway.1, gateway.2, workers.0, workers.1, workers.2
            );
            samples.push((minute, gateway, workers));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // Slopes per hour, from the second sample on (the first is before the players exist).
    let rest = &samples[1.min(samples.len())..];
    let xs: Vec<f64> = rest.iter().map(|s| s.0 / 60.0).collect();
    let series = |f: &dyn Fn(&(f64, (f64, f64, f64), (f64, f64, f64))) -> f64| -> f64 { slope(&xs, &rest.iter().map(f).collect::<Vec<_>>()) };
    println!("slopes per hour over {} samples:", rest.len());
    println!("  gateway: RSS {:+.1} MiB, fds {:+.1}, threads {:+.1}", series(&|s| s.1 .0), series(&|s| s.1 .1), series(&|s| s.1 .2));
    println!("  workers: RSS {:+.1} MiB, fds {:+.1}, threads {:+.1}", series(&|s| s.2 .0), series(&|s| s.2 .1), series(&|s| s.2 .2));
}
