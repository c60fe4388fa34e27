//! Per-frame cost of the filters: each per-frame filter alone and all nine together, on one
//! 20 ms stereo frame at 48 kHz, and timescale (which changes how much input a frame takes),
//! as a share of the 20 ms budget of one core.
//!
//!   cargo bench -p caldera-worker --bench filter_cost

use caldera_protocol::{Distortion, Filters, Karaoke, Lfo};
use caldera_worker::dsp::Processor;
use std::time::Instant;

fn frame_cost(filters: &Filters) -> f64 {
    let mut p = Processor::default();
    p.set(filters);
    let mut frame: Vec<f32> = (0..1920).map(|i| ((i / 2) as f32 * 0.0575).sin() * 0.5).collect();
    // Warm up (the first frame after a change crossfades).
    for _ in 0..50 {
        p.process(&mut frame);
    }
    let n = 20_000;
    let t = Instant::now();
    for _ in 0..n {
        p.process(&mut frame);
        std::hint::black_box(&frame);
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

/// Timescale per 20 ms of output: feed input, take 960 frames.
fn timescale_cost(speed: f64, pitch: f64, rate: f64) -> f64 {
    let mut ts = caldera_worker::dsp::timescale::Timescale::new(speed, pitch, rate).expect("enabled");
    let input: Vec<f32> = (0..1920).map(|i| ((i / 2) as f32 * 0.0575).sin() * 0.5).collect();
    let mut out = vec![0.0f32; 1920];
    let frames = 5_000;
    let t = Instant::now();
    for _ in 0..frames {
        while ts.available() < 960 {
            ts.push(&input);
        }
        ts.pop(&mut out);
        std::hint::black_box(&out);
    }
    t.elapsed().as_nanos() as f64 / frames as f64
}

fn main() {
    let lfo = Lfo { frequency: 4.0, depth: 0.5 };
    let all_bands: Vec<(u8, f32)> = (0..15).map(|b| (b, 0.1)).collect();
    let distortion = Distortion { sin_offset: 0.1, sin_scale: 1.2, cos_offset: 0.1, cos_scale: 1.1, tan_offset: 0.0, tan_scale: 0.5, offset: 0.0, scale: 0.8 };
    let karaoke = Karaoke { level: 1.0, mono_level: 1.0, filter_band: 220.0, filter_width: 100.0 };
    let cases: Vec<(&str, Filters)> = vec![
        ("volume", Filters { volume: Some(0.8), ..Default::default() }),
        ("equalizer (15 bands)", Filters { equalizer: all_bands.clone(), ..Default::default() }),
        ("karaoke", Filters { karaoke: Some(karaoke), ..Default::default() }),
        ("tremolo", Filters { tremolo: Some(lfo), ..Default::default() }),
        ("vibrato", Filters { vibrato: Some(lfo), ..Default::default() }),
        ("distortion", Filters { distortion: Some(distortion), ..Default::default() }),
        ("rotation", Filters { rotation: Some(0.2), ..Default::default() }),
        ("channelMix", Filters { channel_mix: Some([0.5, 0.5, 0.5, 0.5]), ..Default::default() }),
        ("lowPass", Filters { low_pass: Some(20.0), ..Default::default() }),
        (
            "full chain (all nine)",
            Filters {
                volume: Some(0.8),
                equalizer: all_bands,
                karaoke: Some(karaoke),
                tremolo: Some(lfo),
                vibrato: Some(lfo),
                distortion: Some(distortion),
                rotation: Some(0.2),
                channel_mix: Some([0.9, 0.1, 0.1, 0.9]),
                low_pass: Some(20.0),
                timescale: None,
            },
        ),
        ("none (passthrough)", Filters::default()),
    ];
    println!("per 20 ms frame (48 kHz stereo, one core):");
    for (name, (sp, p, r)) in [("timescale speed 1.25", (1.25, 1.0, 1.0)), ("timescale pitch 1.25", (1.0, 1.25, 1.0)), ("timescale rate 1.25", (1.0, 1.0, 1.25))] {
        let ns = timescale_cost(sp, p, r);
        println!("  {name:<24} {:>8.2} us  {:>6.3}% of the budget", ns / 1000.0, ns / 20_000_000.0 * 100.0);
    }
    for (name, f) in cases {
        let ns = frame_cost(&f);
        println!("  {name:<24} {:>8.2} us  {:>6.3}% of the budget", ns / 1000.0, ns / 20_000_000.0 * 100.0);
    }
}
