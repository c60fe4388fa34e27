//! Timescale (speed, pitch, rate) like SoundTouch: a WSOLA time-stretch changes the tempo by
//! `speed / pitch` without touching the pitch, then a resampler plays the result `pitch · rate`
//! times faster. Net: duration ÷ (speed · rate), pitch × (pitch · rate).
//!
//! Samples go in and come out at different rates, so this stage sits between the per-frame
//! filters before it and after it (lavalink-internals §1.7.2), and the caller pulls input until
//! enough output is available.

use std::collections::VecDeque;

/// WSOLA window (≈ 21 ms), its half (overlap and synthesis hop), and the search radius.
const W: usize = 1024;
const O: usize = W / 2;
const DELTA: usize = 256;

pub struct Timescale {
    tempo: f64,
    ratio: f64,
    window: Vec<f32>,
    input: Vec<[f32; 2]>,
    /// Absolute index of `input[0]`.
    base: usize,
    /// Ideal (absolute) position of the next analysis segment.
    ana: f64,
    prev: Option<usize>,
    tail: Vec<[f32; 2]>,
    stretched: VecDeque<[f32; 2]>,
    last: Option<[f32; 2]>,
    frac: f64,
    out: VecDeque<[f32; 2]>,
}

impl Timescale {
    /// `None` when all three are 1 (nothing to do).
    pub fn new(speed: f64, pitch: f64, rate: f64) -> Option<Self> {
        if speed == 1.0 && pitch == 1.0 && rate == 1.0 {
            return None;
        }
        // Bound the work per frame whatever a client asks for.
        let (speed, pitch, rate) = (speed.clamp(0.05, 20.0), pitch.clamp(0.05, 20.0), rate.clamp(0.05, 20.0));
        let window = (0..W).map(|i| (std::f32::consts::PI * i as f32 / W as f32).sin().powi(2)).collect();
        Some(Self {
            tempo: speed / pitch,
            ratio: pitch * rate,
            window,
            input: Vec::new(),
            base: 0,
            ana: 0.0,
            prev: None,
            tail: vec![[0.0; 2]; O],
            stretched: VecDeque::new(),
            last: None,
            frac: 0.0,
            out: VecDeque::new(),
        })
    }

    /// Output frames ready to be taken.
    pub fn available(&self) -> usize {
        self.out.len()
    }

    /// Feeds interleaved stereo input.
    pub fn push(&mut self, frames: &[f32]) {
        if self.tempo == 1.0 {
            self.stretched.extend(frames.chunks_exact(2).map(|p| [p[0], p[1]]));
        } else {
            self.input.extend(frames.chunks_exact(2).map(|p| [p[0], p[1]]));
            while self.wsola_step() {}
        }
        self.resample();
    }

    /// Takes up to `out.len() / 2` frames (interleaved); returns how many.
    pub fn pop(&mut self, out: &mut [f32]) -> usize {
        let n = (out.len() / 2).min(self.out.len());
        for (dst, src) in out.chunks_exact_mut(2).zip(self.out.drain(..n)) {
            dst[0] = src[0];
            dst[1] = src[1];
        }
        n
    }

    fn mono(&self, abs: usize) -> f32 {
        let s = self.input[abs - self.base];
        s[0] + s[1]
    }

    /// One synthesis hop; `false` when more input is needed.
    fn wsola_step(&mut self) -> bool {
        let ana = self.ana.round() as usize;
        let lo = ana.saturating_sub(DELTA).max(self.base);
        let hi = ana + DELTA;
        let end = self.base + self.input.len();
        let natural = self.prev.map(|p| p + O);
        if hi + W > end || natural.is_some_and(|n| n + O > end) {
            return false;
        }
        let chosen = match natural {
            None => ana.max(self.base),
            Some(nat) => {
                // Normalised cross-correlation against what naturally followed the last segment:
                // a coarse pass, then a fine one around the best.
                let score = |c: usize| {
                    let (mut dot, mut energy) = (0.0f32, 1e-9f32);
                    for i in (0..O).step_by(2) {
                        let a = self.mono(c + i);
                        dot += a * self.mono(nat + i);
                        energy += a * a;
                    }
                    dot / energy.sqrt()
                };
                let best = |from: usize, to: usize, step: usize| (from..=to).step_by(step).max_by(|a, b| score(*a).total_cmp(&score(*b))).unwrap_or(from);
                let coarse = best(lo, hi, 8);
                best(coarse.saturating_sub(8).max(lo), (coarse + 8).min(hi), 1)
            }
        };
        for i in 0..O {
            let s = self.input[chosen + i - self.base];
            let w = self.window[i];
            self.stretched.push_back([self.tail[i][0] + s[0] * w, self.tail[i][1] + s[1] * w]);
            let t = self.input[chosen + O + i - self.base];
            let w = self.window[O + i];
            self.tail[i] = [t[0] * w, t[1] * w];
        }
        self.prev = Some(chosen);
        self.ana += O as f64 * self.tempo;
        // Drop input nothing will look at again.
        let keep_from = (self.ana.round() as usize).saturating_sub(DELTA).min(chosen + O);
        if keep_from > self.base {
            self.input.drain(..keep_from - self.base);
            self.base = keep_from;
        }
        true
    }

    /// Linear-interpolation resampler by `ratio` (stretched → out).
    fn resample(&mut self) {
        if self.ratio == 1.0 {
            self.out.extend(self.stretched.drain(..));
            return;
        }
        loop {
            let last = match self.last {
                Some(l) => l,
                None => match self.stretched.pop_front() {
                    Some(s) => {
                        self.last = Some(s);
                        s
                    }
                    None => return,
                },
            };
            while self.frac >= 1.0 {
                match self.stretched.pop_front() {
                    Some(s) => {
                        self.last = Some(s);
                        self.frac -= 1.0;
                    }
                    None => return,
                }
            }
            let last = self.last.unwrap_or(last);
            let Some(&next) = self.stretched.front() else { return };
            let f = self.frac as f32;
            self.out.push_back([last[0] + (next[0] - last[0]) * f, last[1] + (next[1] - last[1]) * f]);
            self.frac += self.ratio;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f32, seconds: f32) -> Vec<f32> {
        (0..(seconds * 48_000.0) as usize)
            .flat_map(|i| {
                let v = (2.0 * std::f32::consts::PI * freq * i as f32 / 48_000.0).sin() * 0.5;
                [v, v]
            })
            .collect()
    }

    /// Runs 1 s of a tone through; returns (output seconds, frequency from zero crossings).
    fn run(speed: f64, pitch: f64, rate: f64, freq: f32) -> (f64, f64) {
        let mut ts = Timescale::new(speed, pitch, rate).unwrap();
        let input = tone(freq, 1.0);
        let mut out = Vec::new();
        for chunk in input.chunks(1920) {
            ts.push(chunk);
            let mut buf = vec![0.0; ts.available() * 2];
            let n = ts.pop(&mut buf);
            out.extend_from_slice(&buf[..n * 2]);
        }
        let left: Vec<f32> = out.chunks_exact(2).map(|p| p[0]).collect();
        // Frequency over the steady middle.
        let mid = &left[left.len() / 5..left.len() * 4 / 5];
        let ups = mid.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        (left.len() as f64 / 48_000.0, ups as f64 / (mid.len() as f64 / 48_000.0))
    }

    #[test]
    fn speed_2_halves_duration_at_the_same_pitch() {
        let (secs, f) = run(2.0, 1.0, 1.0, 440.0);
        assert!((secs - 0.5).abs() < 0.05, "{secs} s");
        assert!((f - 440.0).abs() < 440.0 * 0.02, "{f} Hz");
    }

    #[test]
    fn pitch_2_doubles_frequency_at_the_same_duration() {
        let (secs, f) = run(1.0, 2.0, 1.0, 440.0);
        assert!((secs - 1.0).abs() < 0.05, "{secs} s");
        assert!((f - 880.0).abs() < 880.0 * 0.02, "{f} Hz");
    }

    #[test]
    fn rate_1_5_does_both() {
        let (secs, f) = run(1.0, 1.0, 1.5, 440.0);
        assert!((secs - 1.0 / 1.5).abs() < 0.05, "{secs} s");
        assert!((f - 660.0).abs() < 660.0 * 0.02, "{f} Hz");
    }

    #[test]
    fn slowing_down_keeps_pitch() {
        let (secs, f) = run(0.5, 1.0, 1.0, 440.0);
        assert!((secs - 2.0).abs() < 0.1, "{secs} s");
        assert!((f - 440.0).abs() < 440.0 * 0.02, "{f} Hz");
    }
}
