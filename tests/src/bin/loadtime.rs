//! Load latency (a benchmark, not a test): `/v4/loadtracks` of one WAV on loopback, N times,
//! through a node without a route planner and through one with a planner over 127.0.0.0/28 —
//! what the per-request lease (one IPC round trip to the gateway) and the bound source address
//! cost. Prints p50/p99/mean per configuration.
//!
//!   cargo build --release --workspace --bins
//!   target/release/loadtime --loads 500

use caldera_tests::audio::sine_wav;
use caldera_tests::http_server::{Route, TestServer};
use caldera_tests::{Node, NodeOptions};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let loads: usize = args.iter().position(|a| a == "--loads").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(500);
    let media = TestServer::start();
    media.route("/t.wav", Route::file(sine_wav(440.0, 2.0, 48_000, 2, 0.5), "audio/wav"));
    let planner = "lavalink:\n  server:\n    ratelimit:\n      ipBlocks: [\"127.0.0.0/28\"]\n      strategy: LoadBalance\n";
    for (name, yaml) in [("no route planner", ""), ("route planner (LoadBalance, 127.0.0.0/28)", planner)] {
        let node = Node::start_with(NodeOptions { workers: 1, yaml: yaml.into(), ..Default::default() });
        let url = media.url("/t.wav");
        for _ in 0..20 {
            node.load(&url); // warm-up
        }
        let mut times: Vec<Duration> = (0..loads)
            .map(|_| {
                let started = Instant::now();
                assert_eq!(node.load(&url)["loadType"], "track");
                started.elapsed()
            })
            .collect();
        times.sort();
        let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;
        let mean = times.iter().sum::<Duration>().as_secs_f64() * 1000.0 / times.len() as f64;
        println!("{name}: {loads} loads, p50 {:.2} ms, p99 {:.2} ms, mean {:.2} ms", pct(0.5), pct(0.99), mean);
    }
}
