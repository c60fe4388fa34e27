//! Each filter measured on synthetic signals.

use super::*;
use caldera_protocol::{Distortion, Filters, Karaoke, Lfo};

const SR: f32 = SAMPLE_RATE;

/// `seconds` of a stereo sine (L = `l` × tone, R = `r` × tone).
fn tone(freq: f32, seconds: f32, l: f32, r: f32) -> Vec<f32> {
    (0..(seconds * SR) as usize)
        .flat_map(|i| {
            let v = (2.0 * std::f32::consts::PI * freq * i as f32 / SR).sin() * 0.5;
            [v * l, v * r]
        })
        .collect()
}

fn rms(frames: &[f32], ch: usize) -> f32 {
    let s: Vec<f32> = frames.chunks_exact(2).map(|p| p[ch]).collect();
    (s.iter().map(|x| x * x).sum::<f32>() / s.len().max(1) as f32).sqrt()
}

fn db(ratio: f32) -> f32 {
    20.0 * ratio.log10()
}

/// Runs `filters` over `input` in 20 ms frames, as the pipe does; drops the first 0.2 s
/// (filter settling) from the result.
fn run(filters: &Filters, mut input: Vec<f32>) -> Vec<f32> {
    let mut p = Processor::default();
    p.set(filters);
    for frame in input.chunks_mut(1920) {
        p.process(frame);
    }
    input.split_off((0.2 * SR) as usize * 2)
}

fn gain_db(filters: &Filters, freq: f32) -> f32 {
    let input = tone(freq, 1.0, 1.0, 1.0);
    let reference = rms(&input[(0.2 * SR) as usize * 2..], 0);
    db(rms(&run(filters, input), 0) / reference)
}

#[test]
fn defaults_build_nothing_and_pass_through_bit_exact() {
    let defaults = Filters {
        volume: Some(1.0),
        equalizer: vec![(3, 0.0)],
        tremolo: Some(Lfo { frequency: 2.0, depth: 0.0 }),
        vibrato: Some(Lfo { frequency: 2.0, depth: 0.0 }),
        distortion: Some(Distortion { sin_offset: 0.0, sin_scale: 1.0, cos_offset: 0.0, cos_scale: 1.0, tan_offset: 0.0, tan_scale: 1.0, offset: 0.0, scale: 1.0 }),
        rotation: Some(0.0),
        channel_mix: Some([1.0, 0.0, 0.0, 1.0]),
        low_pass: Some(1.0),
        karaoke: None,
        timescale: Some(caldera_protocol::Timescale { speed: 1.0, pitch: 1.0, rate: 1.0 }),
    };
    for f in [&defaults, &Filters::default()] {
        assert!(Chain::before_timescale(f).is_none() && Chain::after_timescale(f).is_none());
    }
    let input = tone(440.0, 0.5, 1.0, 0.3);
    let mut p = Processor::default();
    let mut out = input.clone();
    for f in out.chunks_mut(1920) {
        p.process(f);
    }
    assert_eq!(out, input);
}

#[test]
fn volume_half_is_minus_6_db() {
    let g = gain_db(&Filters { volume: Some(0.5), ..Default::default() }, 440.0);
    assert!((g + 6.02).abs() < 0.05, "{g}");
}

#[test]
fn equalizer_boosts_and_cuts_one_band() {
    let boost = Filters { equalizer: vec![(8, 0.25)], ..Default::default() };
    let g1k = gain_db(&boost, 1000.0);
    let g100 = gain_db(&boost, 100.0);
    assert!((g1k - 6.0).abs() < 1.0, "1 kHz boosted by {g1k:.2} dB");
    assert!(g100.abs() < 1.0, "100 Hz changed by {g100:.2} dB");
    let cut = Filters { equalizer: vec![(8, -0.25)], ..Default::default() };
    let c1k = gain_db(&cut, 1000.0);
    assert!(c1k < -20.0, "1 kHz cut only {c1k:.2} dB");
    assert!(gain_db(&cut, 100.0).abs() < 1.0);
}

#[test]
fn low_pass_20_attenuates_8_khz_and_passes_100_hz() {
    let f = Filters { low_pass: Some(20.0), ..Default::default() };
    let high = gain_db(&f, 8000.0);
    let low = gain_db(&f, 100.0);
    // One pole, α = 1/20: about −25.8 dB at 8 kHz and −0.3 dB at 100 Hz.
    assert!((high + 25.8).abs() < 1.5, "8 kHz: {high:.2} dB");
    assert!(low > -0.6 && low <= 0.05, "100 Hz: {low:.2} dB");
}

#[test]
fn channel_mix_halves_make_mono() {
    let out = run(&Filters { channel_mix: Some([0.5, 0.5, 0.5, 0.5]), ..Default::default() }, tone(440.0, 0.5, 1.0, 0.2));
    for p in out.chunks_exact(2) {
        assert_eq!(p[0], p[1]);
    }
}

#[test]
fn rotation_moves_energy_between_channels_at_its_rate() {
    // 0.5 Hz: the left channel peaks at 0.5 s, the right at 1.5 s (period 2 s).
    let mut p = Processor::default();
    p.set(&Filters { rotation: Some(0.5), ..Default::default() });
    let mut input = tone(440.0, 2.0, 1.0, 1.0);
    for f in input.chunks_mut(1920) {
        p.process(f);
    }
    let window = |t: f32, ch| {
        let start = (t * SR) as usize * 2;
        rms(&input[start..start + 4800], ch)
    };
    assert!(window(0.45, 0) > 4.0 * window(0.45, 1), "left should dominate at 0.5 s");
    assert!(window(1.45, 1) > 4.0 * window(1.45, 0), "right should dominate at 1.5 s");
}

#[test]
fn tremolo_modulates_the_envelope_at_its_frequency_and_depth() {
    let out = run(&Filters { tremolo: Some(Lfo { frequency: 4.0, depth: 0.5 }), ..Default::default() }, tone(440.0, 1.2, 1.0, 1.0));
    // RMS in 5 ms windows across one second: 4 cycles between 0.5 and 1 of the level.
    let levels: Vec<f32> = out.chunks_exact(480).map(|w| rms(w, 0)).collect();
    let (lo, hi) = levels.iter().fold((f32::MAX, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    assert!((lo / hi - 0.5).abs() < 0.05, "depth: {}", lo / hi);
    let mid = (lo + hi) / 2.0;
    let crossings = levels.windows(2).filter(|w| w[0] < mid && w[1] >= mid).count();
    assert!((3..=5).contains(&crossings), "{crossings} cycles in 1 s at 4 Hz");
}

#[test]
fn vibrato_modulates_pitch() {
    let zero_crossing_periods = |frames: &[f32]| -> Vec<f32> {
        let s: Vec<f32> = frames.chunks_exact(2).map(|p| p[0]).collect();
        let ups: Vec<f32> = s.windows(2).enumerate().filter(|(_, w)| w[0] < 0.0 && w[1] >= 0.0).map(|(i, w)| i as f32 + w[0] / (w[0] - w[1])).collect();
        ups.windows(2).map(|w| w[1] - w[0]).collect()
    };
    let plain = zero_crossing_periods(&tone(440.0, 1.0, 1.0, 1.0));
    let wobbly = zero_crossing_periods(&run(&Filters { vibrato: Some(Lfo { frequency: 5.0, depth: 1.0 }), ..Default::default() }, tone(440.0, 1.2, 1.0, 1.0)));
    let spread = |p: &[f32]| p.iter().cloned().fold(f32::MIN, f32::max) - p.iter().cloned().fold(f32::MAX, f32::min);
    assert!(spread(&plain) < 0.1, "a plain sine has a steady period");
    // Period in samples swings by several percent around 109 (440 Hz).
    assert!(spread(&wobbly) > 3.0, "vibrato period spread {}", spread(&wobbly));
}

#[test]
fn karaoke_removes_a_centred_tone_and_keeps_a_side_one() {
    let k = Filters { karaoke: Some(Karaoke { level: 1.0, mono_level: 1.0, filter_band: 220.0, filter_width: 100.0 }), ..Default::default() };
    let centre = gain_db(&k, 220.0);
    assert!(centre < -15.0, "centred tone only {centre:.1} dB down");
    let input = tone(220.0, 1.0, 1.0, 0.0);
    let reference = rms(&input[(0.2 * SR) as usize * 2..], 0);
    let out = run(&k, input);
    let side = db(rms(&out, 0) / reference);
    assert!(side > -7.0, "side tone lost: {side:.1} dB");
}

#[test]
fn distortion_matches_the_formula_and_never_emits_nan() {
    let d = Distortion { sin_offset: 0.1, sin_scale: 2.0, cos_offset: 0.0, cos_scale: 1.0, tan_offset: 0.0, tan_scale: 1.0, offset: 0.05, scale: 0.5 };
    for x in [-0.9f32, -0.3, 0.0, 0.25, 0.8] {
        let expected = (x * 2.0 + 0.1).sin() * 0.5 + 0.05;
        assert!((DistortionFilter::shape(&d, x) - expected).abs() < 1e-6);
    }
    let all = Distortion { sin_offset: 0.0, sin_scale: 1.5, cos_offset: 0.2, cos_scale: 1.0, tan_offset: 0.0, tan_scale: 0.5, offset: 0.0, scale: 1.0 };
    let x = 0.4f32;
    let expected = (x * 1.5).sin() + (x + 0.2).cos() + (x * 0.5).tan();
    assert!((DistortionFilter::shape(&all, x) - expected).abs() < 1e-6);
    // tan near π/2 explodes: the processor's hard limit keeps the output finite and in range.
    let wild = Filters { distortion: Some(Distortion { tan_scale: std::f32::consts::FRAC_PI_2, ..all }), ..Default::default() };
    let out = run(&wild, tone(440.0, 0.5, 1.0, 1.0));
    assert!(out.iter().all(|s| s.is_finite() && s.abs() <= 1.0));
}

#[test]
fn a_change_crossfades_instead_of_clicking() {
    let mut p = Processor::default();
    let mut frame = vec![0.5f32; 1920];
    p.process(&mut frame);
    p.set(&Filters { volume: Some(0.0), ..Default::default() });
    let mut frame = vec![0.5f32; 1920];
    p.process(&mut frame);
    // From 0.5 down to 0 over the frame, in small steps.
    let steps: Vec<f32> = frame.chunks_exact(2).map(|p| p[0]).collect();
    assert!(steps.windows(2).all(|w| (w[0] - w[1]).abs() < 0.01));
    assert!(steps[0] > 0.49 && *steps.last().unwrap() < 0.01);
}
