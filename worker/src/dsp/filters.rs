//! The filters themselves: interleaved 48 kHz stereo f32, processed in place, state kept
//! between frames, no allocation per frame.

use caldera_protocol::{Distortion, Karaoke, Lfo};
use std::f32::consts::PI;

pub const SAMPLE_RATE: f32 = 48_000.0;

/// Lavaplayer's equalizer band centres (Hz).
pub const EQ_BANDS: [f32; 15] = [25.0, 40.0, 63.0, 100.0, 160.0, 250.0, 400.0, 630.0, 1000.0, 1600.0, 2500.0, 4000.0, 6300.0, 10000.0, 16000.0];

pub trait Filter: Send + Sync {
    fn process(&mut self, frames: &mut [f32]);
}

/// A biquad (RBJ cookbook), one state per channel.
#[derive(Debug, Clone)]
pub struct Biquad {
    b: [f32; 3],
    a: [f32; 2],
    state: [[f32; 4]; 2],
}

impl Biquad {
    /// Band-pass with 0 dB peak gain at `freq`.
    pub fn band_pass(freq: f32, q: f32) -> Self {
        let w = 2.0 * PI * (freq / SAMPLE_RATE).min(0.49);
        let alpha = w.sin() / (2.0 * q);
        let a0 = 1.0 + alpha;
        Self { b: [alpha / a0, 0.0, -alpha / a0], a: [-2.0 * w.cos() / a0, (1.0 - alpha) / a0], state: [[0.0; 4]; 2] }
    }

    #[inline]
    pub fn tick(&mut self, ch: usize, x: f32) -> f32 {
        let s = &mut self.state[ch];
        let y = self.b[0] * x + self.b[1] * s[0] + self.b[2] * s[1] - self.a[0] * s[2] - self.a[1] * s[3];
        s[1] = s[0];
        s[0] = x;
        s[3] = s[2];
        s[2] = y;
        y
    }
}

pub struct Volume(pub f32);

impl Filter for Volume {
    fn process(&mut self, frames: &mut [f32]) {
        for s in frames {
            *s *= self.0;
        }
    }
}

/// 15 bands: `out = x + Σ 4·gain·bandpass(x)`, so a gain of 0.25 doubles a band (+6 dB) and
/// −0.25 cancels it, as Lavalink's docs describe.
pub struct Equalizer {
    bands: Vec<(f32, Biquad)>,
}

impl Equalizer {
    pub fn new(gains: &[(u8, f32)]) -> Self {
        let bands = gains
            .iter()
            .filter(|(_, g)| *g != 0.0)
            .map(|&(band, gain)| (4.0 * gain, Biquad::band_pass(EQ_BANDS[band as usize], 1.4)))
            .collect();
        Self { bands }
    }
}

impl Filter for Equalizer {
    fn process(&mut self, frames: &mut [f32]) {
        for pair in frames.chunks_exact_mut(2) {
            for (ch, s) in pair.iter_mut().enumerate() {
                let x = *s;
                let mut y = x;
                for (g, bq) in &mut self.bands {
                    y += *g * bq.tick(ch, x);
                }
                *s = y;
            }
        }
    }
}

/// Centre removal around `filterBand`: the mid signal loses `level` of its content in the band
/// (where centred vocals sit), the side signal is kept; `monoLevel` scales what remains of the mid.
pub struct KaraokeFilter {
    k: Karaoke,
    band: Biquad,
}

impl KaraokeFilter {
    pub fn new(k: Karaoke) -> Self {
        let q = (k.filter_band / k.filter_width.max(1.0)).clamp(0.1, 20.0);
        Self { k, band: Biquad::band_pass(k.filter_band.max(1.0), q) }
    }
}

impl Filter for KaraokeFilter {
    fn process(&mut self, frames: &mut [f32]) {
        for pair in frames.chunks_exact_mut(2) {
            let mid = (pair[0] + pair[1]) * 0.5;
            let side = (pair[0] - pair[1]) * 0.5;
            let mid = self.k.mono_level * (mid - self.k.level * self.band.tick(0, mid));
            pair[0] = mid + side;
            pair[1] = mid - side;
        }
    }
}

/// Amplitude LFO: gain swings between 1 − depth and 1 at `frequency`.
pub struct Tremolo {
    lfo: Lfo,
    phase: f32,
}

impl Tremolo {
    pub fn new(lfo: Lfo) -> Self {
        Self { lfo, phase: 0.0 }
    }
}

impl Filter for Tremolo {
    fn process(&mut self, frames: &mut [f32]) {
        let step = 2.0 * PI * self.lfo.frequency / SAMPLE_RATE;
        for pair in frames.chunks_exact_mut(2) {
            let gain = 1.0 - self.lfo.depth * 0.5 * (1.0 - self.phase.sin());
            pair[0] *= gain;
            pair[1] *= gain;
            self.phase = (self.phase + step) % (2.0 * PI);
        }
    }
}

/// Pitch LFO through a modulated delay line (up to `depth` × 4 ms), linearly interpolated.
pub struct Vibrato {
    lfo: Lfo,
    phase: f32,
    line: [Vec<f32>; 2],
    pos: usize,
}

const VIBRATO_LINE: usize = 1024;

impl Vibrato {
    pub fn new(lfo: Lfo) -> Self {
        Self { lfo, phase: 0.0, line: [vec![0.0; VIBRATO_LINE], vec![0.0; VIBRATO_LINE]], pos: 0 }
    }
}

impl Filter for Vibrato {
    fn process(&mut self, frames: &mut [f32]) {
        let step = 2.0 * PI * self.lfo.frequency / SAMPLE_RATE;
        let max_delay = self.lfo.depth.clamp(0.0, 1.0) * 0.004 * SAMPLE_RATE;
        for pair in frames.chunks_exact_mut(2) {
            let delay = 1.0 + max_delay * 0.5 * (1.0 + self.phase.sin());
            let read = self.pos as f32 + VIBRATO_LINE as f32 - delay;
            let i = read.floor() as usize;
            let frac = read - read.floor();
            for (ch, s) in pair.iter_mut().enumerate() {
                let line = &mut self.line[ch];
                line[self.pos] = *s;
                let a = line[i % VIBRATO_LINE];
                let b = line[(i + 1) % VIBRATO_LINE];
                *s = a + (b - a) * frac;
            }
            self.pos = (self.pos + 1) % VIBRATO_LINE;
            self.phase = (self.phase + step) % (2.0 * PI);
        }
    }
}

/// The waveshaper: each of sin/cos/tan whose parameters differ from the defaults contributes
/// `fn(x·scale + offset)`; their sum (or x itself when none does) is then `· scale + offset`.
pub struct DistortionFilter(pub Distortion);

impl DistortionFilter {
    pub fn shape(d: &Distortion, x: f32) -> f32 {
        let mut sum = 0.0;
        let mut any = false;
        if d.sin_offset != 0.0 || d.sin_scale != 1.0 {
            sum += (x * d.sin_scale + d.sin_offset).sin();
            any = true;
        }
        if d.cos_offset != 0.0 || d.cos_scale != 1.0 {
            sum += (x * d.cos_scale + d.cos_offset).cos();
            any = true;
        }
        if d.tan_offset != 0.0 || d.tan_scale != 1.0 {
            sum += (x * d.tan_scale + d.tan_offset).tan();
            any = true;
        }
        let base = if any { sum } else { x };
        base * d.scale + d.offset
    }
}

impl Filter for DistortionFilter {
    fn process(&mut self, frames: &mut [f32]) {
        for s in frames {
            *s = Self::shape(&self.0, *s);
        }
    }
}

/// 8D: the stereo image pans around the listener at `hz`.
pub struct Rotation {
    hz: f32,
    phase: f32,
}

impl Rotation {
    pub fn new(hz: f64) -> Self {
        Self { hz: hz as f32, phase: 0.0 }
    }
}

impl Filter for Rotation {
    fn process(&mut self, frames: &mut [f32]) {
        let step = 2.0 * PI * self.hz / SAMPLE_RATE;
        for pair in frames.chunks_exact_mut(2) {
            let s = self.phase.sin();
            pair[0] *= (1.0 + s) * 0.5;
            pair[1] *= (1.0 - s) * 0.5;
            self.phase = (self.phase + step) % (2.0 * PI);
        }
    }
}

pub struct ChannelMix(pub [f32; 4]);

impl Filter for ChannelMix {
    fn process(&mut self, frames: &mut [f32]) {
        let [ll, lr, rl, rr] = self.0;
        for pair in frames.chunks_exact_mut(2) {
            let (l, r) = (pair[0], pair[1]);
            pair[0] = l * ll + r * rl;
            pair[1] = l * lr + r * rr;
        }
    }
}

/// One-pole smoothing: `y += (x − y) / smoothing`.
pub struct LowPass {
    smoothing: f32,
    y: [f32; 2],
}

impl LowPass {
    pub fn new(smoothing: f32) -> Self {
        Self { smoothing: smoothing.max(1.0), y: [0.0; 2] }
    }
}

impl Filter for LowPass {
    fn process(&mut self, frames: &mut [f32]) {
        for pair in frames.chunks_exact_mut(2) {
            for (y, s) in self.y.iter_mut().zip(pair.iter_mut()) {
                *y += (*s - *y) / self.smoothing;
                *s = *y;
            }
        }
    }
}
