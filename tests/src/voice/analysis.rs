//! Received audio and what tests measure on it.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Sample rate of every decoded frame.
pub const SAMPLE_RATE: u32 = 48_000;
/// Frames (per channel) in one 20 ms packet.
pub const FRAME_SAMPLES: usize = 960;
/// Threshold of [`Audio::non_silent`].
pub const SILENCE_DBFS: f64 = -60.0;

/// One received RTP audio packet, decrypted and decoded.
#[derive(Clone, Debug)]
pub struct Frame {
    /// When the datagram was read from the socket.
    pub arrival: Instant,
    pub seq: u16,
    pub timestamp: u32,
    /// The decrypted Opus payload, byte for byte (for passthrough checks).
    pub opus: Arc<[u8]>,
    /// Decoded PCM, interleaved stereo `[l, r, l, r, ...]` at 48 kHz (960 frames for 20 ms).
    pub pcm: Arc<[i16]>,
    /// The frame arrived end-to-end encrypted (DAVE); `opus` is what it decrypted to.
    pub e2ee: bool,
}

impl Frame {
    /// Whether the payload is the Opus silence frame `F8 FF FE`.
    pub fn is_silence_frame(&self) -> bool {
        *self.opus == SILENCE_FRAME
    }

    /// RMS of both channels of this frame, in dBFS.
    pub fn rms_dbfs(&self) -> f64 {
        dbfs(rms(self.pcm.iter().copied()))
    }
}

pub(crate) const SILENCE_FRAME: [u8; 3] = [0xf8, 0xff, 0xfe];

/// A shared all-zero PCM buffer, so silent frames cost no memory.
pub(crate) fn zero_pcm(len: usize) -> Arc<[i16]> {
    static ZERO: OnceLock<Arc<[i16]>> = OnceLock::new();
    let z = ZERO.get_or_init(|| Arc::from(vec![0i16; FRAME_SAMPLES * 2]));
    if z.len() == len {
        z.clone()
    } else {
        Arc::from(vec![0i16; len])
    }
}

/// A snapshot of received audio, oldest packet first. Cheap to clone and to slice (PCM is shared).
#[derive(Clone, Debug, Default)]
pub struct Audio {
    frames: Vec<Frame>,
}

impl Audio {
    pub(crate) fn new(frames: Vec<Frame>) -> Audio {
        Audio { frames }
    }

    /// Audio made of these frames (a part of another, say).
    pub fn new_from(frames: Vec<Frame>) -> Audio {
        Audio { frames }
    }

    /// The packets themselves.
    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    pub fn packets(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn first_arrival(&self) -> Option<Instant> {
        self.frames.first().map(|f| f.arrival)
    }

    pub fn last_arrival(&self) -> Option<Instant> {
        self.frames.last().map(|f| f.arrival)
    }

    /// Decoded duration (samples / 48 kHz), not wall-clock time.
    pub fn duration(&self) -> Duration {
        let frames: usize = self.frames.iter().map(|f| f.pcm.len() / 2).sum();
        Duration::from_secs_f64(frames as f64 / f64::from(SAMPLE_RATE))
    }

    /// Inter-arrival gaps between consecutive packets.
    pub fn gaps(&self) -> Vec<Duration> {
        self.frames.windows(2).map(|w| w[1].arrival.saturating_duration_since(w[0].arrival)).collect()
    }

    /// Largest inter-arrival gap between consecutive packets (zero with fewer than 2 packets).
    pub fn max_gap(&self) -> Duration {
        self.gaps().into_iter().max().unwrap_or_default()
    }

    /// `(p50, p99)` of `|inter-arrival − 20 ms|`, in milliseconds (`(0, 0)` with < 2 packets).
    pub fn jitter_ms(&self) -> (f64, f64) {
        let mut dev: Vec<f64> = self.gaps().iter().map(|g| (g.as_secs_f64() * 1000.0 - 20.0).abs()).collect();
        if dev.is_empty() {
            return (0.0, 0.0);
        }
        dev.sort_by(f64::total_cmp);
        (percentile(&dev, 0.50), percentile(&dev, 0.99))
    }

    /// Number of RTP sequence numbers skipped between consecutive packets (lost or reordered).
    pub fn seq_gaps(&self) -> usize {
        self.frames
            .windows(2)
            .map(|w| usize::from(w[1].seq.wrapping_sub(w[0].seq).wrapping_sub(1)))
            .filter(|&d| d < 0x8000)
            .sum()
    }

    /// Packets whose payload is the Opus silence frame `F8 FF FE`.
    pub fn silence_frames(&self) -> usize {
        self.frames.iter().filter(|f| f.is_silence_frame()).count()
    }

    /// Only the packets that decoded to audible sound (RMS above -60 dBFS), in order.
    pub fn non_silent(&self) -> Audio {
        self.filter(|f| f.rms_dbfs() > SILENCE_DBFS)
    }

    /// Packets for which `keep` is true, in order.
    pub fn filter(&self, mut keep: impl FnMut(&Frame) -> bool) -> Audio {
        Audio { frames: self.frames.iter().filter(|f| keep(f)).cloned().collect() }
    }

    /// Packets whose arrival is within `[first_arrival + from, first_arrival + to)`.
    pub fn slice(&self, from: Duration, to: Duration) -> Audio {
        let Some(first) = self.first_arrival() else { return Audio::default() };
        self.filter(|f| {
            let t = f.arrival.saturating_duration_since(first);
            t >= from && t < to
        })
    }

    /// Packets `range` by index.
    pub fn range(&self, range: std::ops::Range<usize>) -> Audio {
        let end = range.end.min(self.frames.len());
        let start = range.start.min(end);
        Audio { frames: self.frames[start..end].to_vec() }
    }

    /// Concatenated decoded frames.
    pub fn samples(&self) -> Vec<[i16; 2]> {
        let mut out = Vec::with_capacity(self.frames.len() * FRAME_SAMPLES);
        for f in &self.frames {
            out.extend(f.pcm.chunks_exact(2).map(|c| [c[0], c[1]]));
        }
        out
    }

    /// The decrypted Opus payloads, in order.
    pub fn opus_payloads(&self) -> Vec<Vec<u8>> {
        self.frames.iter().map(|f| f.opus.to_vec()).collect()
    }

    /// RMS of one channel (0 = left, 1 = right) over all decoded samples, in dBFS
    /// (full-scale sine ≈ -3 dBFS; `-inf` for digital silence or no audio).
    pub fn rms_dbfs(&self, channel: usize) -> f64 {
        assert!(channel < 2, "channel must be 0 (left) or 1 (right)");
        dbfs(rms(self.frames.iter().flat_map(|f| f.pcm.iter().skip(channel).step_by(2).copied())))
    }

    /// Peak absolute sample value over both channels.
    pub fn peak(&self) -> i16 {
        self.frames.iter().flat_map(|f| f.pcm.iter()).map(|s| s.saturating_abs()).max().unwrap_or(0)
    }

    /// Dominant frequency in Hz of the mono mix of all decoded samples (0.0 for no audio or
    /// silence). Welch-averaged, Hann-windowed 32768-point spectra (1.46 Hz bins) with parabolic
    /// interpolation of the peak, searched between 20 Hz and 20 kHz.
    pub fn dominant_frequency(&self) -> f64 {
        let mono: Vec<f64> = self
            .frames
            .iter()
            .flat_map(|f| f.pcm.chunks_exact(2).map(|c| (f64::from(c[0]) + f64::from(c[1])) / 2.0))
            .collect();
        dominant_frequency(&mono, f64::from(SAMPLE_RATE))
    }

    /// Signal-to-noise ratio of a pure tone at `freq` (dB): over 100 ms windows of the left
    /// channel, the best-fitting sinusoid at `freq` is the signal and everything else the noise.
    pub fn snr_db(&self, freq: f64) -> f64 {
        let left: Vec<f64> = self.frames.iter().flat_map(|f| f.pcm.chunks_exact(2).map(|c| f64::from(c[0]))).collect();
        let (mut signal, mut noise) = (0.0f64, 0.0f64);
        let w = 2.0 * std::f64::consts::PI * freq / f64::from(SAMPLE_RATE);
        for chunk in left.chunks_exact(4800) {
            // Least squares for a·sin + b·cos (the basis is near-orthogonal over whole periods).
            let (mut ss, mut cc, mut sc, mut ys, mut yc) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for (i, y) in chunk.iter().enumerate() {
                let (s, c) = (w * i as f64).sin_cos();
                ss += s * s;
                cc += c * c;
                sc += s * c;
                ys += y * s;
                yc += y * c;
            }
            let det = ss * cc - sc * sc;
            let a = (ys * cc - yc * sc) / det;
            let b = (yc * ss - ys * sc) / det;
            for (i, y) in chunk.iter().enumerate() {
                let (s, c) = (w * i as f64).sin_cos();
                let fit = a * s + b * c;
                signal += fit * fit;
                noise += (y - fit) * (y - fit);
            }
        }
        10.0 * (signal / noise.max(f64::MIN_POSITIVE)).log10()
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let idx = ((sorted.len() - 1) as f64 * q).ceil() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn rms(samples: impl Iterator<Item = i16>) -> f64 {
    let (mut sum, mut n) = (0.0f64, 0usize);
    for s in samples {
        let v = f64::from(s) / 32768.0;
        sum += v * v;
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        (sum / n as f64).sqrt()
    }
}

fn dbfs(rms: f64) -> f64 {
    if rms <= 0.0 {
        f64::NEG_INFINITY
    } else {
        20.0 * rms.log10()
    }
}

const FFT_LEN: usize = 1 << 15;
const MAX_SEGMENTS: usize = 48;

/// Dominant frequency of a mono signal (see [`Audio::dominant_frequency`]).
pub fn dominant_frequency(signal: &[f64], sample_rate: f64) -> f64 {
    if signal.is_empty() || signal.iter().all(|&s| s == 0.0) {
        return 0.0;
    }
    let fft = Fft::new(FFT_LEN);
    let seg_len = signal.len().min(FFT_LEN);
    let window: Vec<f64> = (0..seg_len)
        .map(|i| {
            if seg_len < 2 {
                1.0
            } else {
                0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / (seg_len - 1) as f64).cos()
            }
        })
        .collect();
    // Segment starts: 50 % overlap, at most MAX_SEGMENTS spread evenly over the signal.
    let last_start = signal.len() - seg_len;
    let wanted = (last_start / (seg_len / 2).max(1) + 1).min(MAX_SEGMENTS);
    let starts: Vec<usize> =
        (0..wanted).map(|i| if wanted == 1 { 0 } else { last_start * i / (wanted - 1) }).collect();

    let mut power = vec![0.0f64; FFT_LEN / 2 + 1];
    let mut re = vec![0.0f64; FFT_LEN];
    let mut im = vec![0.0f64; FFT_LEN];
    for &start in &starts {
        re.iter_mut().for_each(|v| *v = 0.0);
        im.iter_mut().for_each(|v| *v = 0.0);
        for (i, w) in window.iter().enumerate() {
            re[i] = signal[start + i] * w;
        }
        fft.run(&mut re, &mut im);
        for (k, p) in power.iter_mut().enumerate() {
            *p += re[k] * re[k] + im[k] * im[k];
        }
    }

    let bin_hz = sample_rate / FFT_LEN as f64;
    let lo = ((20.0 / bin_hz).floor() as usize).max(1);
    let hi = ((20_000.0 / bin_hz).ceil() as usize).min(FFT_LEN / 2 - 1);
    let mut k = lo;
    for i in lo..=hi {
        if power[i] > power[k] {
            k = i;
        }
    }
    if power[k] <= 0.0 {
        return 0.0;
    }
    // Parabolic interpolation on log power around the peak bin.
    let (a, b, c) = (power[k - 1].max(1e-300).ln(), power[k].ln(), power[k + 1].max(1e-300).ln());
    let denom = a - 2.0 * b + c;
    let delta = if denom.abs() > 1e-12 { (0.5 * (a - c) / denom).clamp(-0.5, 0.5) } else { 0.0 };
    (k as f64 + delta) * bin_hz
}

/// A plain iterative radix-2 FFT with a precomputed twiddle table.
struct Fft {
    n: usize,
    cos: Vec<f64>,
    sin: Vec<f64>,
}

impl Fft {
    fn new(n: usize) -> Fft {
        assert!(n.is_power_of_two());
        let (cos, sin) = (0..n / 2)
            .map(|i| {
                let a = -2.0 * std::f64::consts::PI * i as f64 / n as f64;
                (a.cos(), a.sin())
            })
            .unzip();
        Fft { n, cos, sin }
    }

    fn run(&self, re: &mut [f64], im: &mut [f64]) {
        let n = self.n;
        let bits = n.trailing_zeros();
        for i in 0..n {
            let j = i.reverse_bits() >> (usize::BITS - bits);
            if j > i {
                re.swap(i, j);
                im.swap(i, j);
            }
        }
        let mut len = 2;
        while len <= n {
            let half = len / 2;
            let step = n / len;
            for start in (0..n).step_by(len) {
                for j in 0..half {
                    let (wr, wi) = (self.cos[j * step], self.sin[j * step]);
                    let (a, b) = (start + j, start + j + half);
                    let tr = re[b] * wr - im[b] * wi;
                    let ti = re[b] * wi + im[b] * wr;
                    re[b] = re[a] - tr;
                    im[b] = im[a] - ti;
                    re[a] += tr;
                    im[a] += ti;
                }
            }
            len <<= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, secs: f64) -> Vec<f64> {
        let n = (secs * 48_000.0) as usize;
        (0..n).map(|i| (2.0 * std::f64::consts::PI * freq * i as f64 / 48_000.0).sin() * 10_000.0).collect()
    }

    #[test]
    fn finds_sine_frequencies_precisely() {
        for (f, secs) in [(440.0, 2.0), (523.25, 0.3), (997.0, 5.0), (401.3, 1.0), (1000.0, 0.05)] {
            let got = dominant_frequency(&sine(f, secs), 48_000.0);
            let tol = if secs < 0.1 { 15.0 } else { 0.5 };
            assert!((got - f).abs() < tol, "{f} Hz over {secs} s: got {got}");
        }
        assert_eq!(dominant_frequency(&[0.0; 1000], 48_000.0), 0.0);
        assert_eq!(dominant_frequency(&[], 48_000.0), 0.0);
    }

    #[test]
    fn jitter_and_gaps() {
        let t0 = Instant::now();
        let frames: Vec<Frame> = [0u64, 20, 40, 61, 80, 180]
            .iter()
            .enumerate()
            .map(|(i, ms)| Frame {
                arrival: t0 + Duration::from_millis(*ms),
                seq: i as u16,
                timestamp: i as u32 * 960,
                opus: Arc::from(&SILENCE_FRAME[..]),
                pcm: zero_pcm(1920),
                e2ee: false,
            })
            .collect();
        let a = Audio::new(frames);
        assert_eq!(a.max_gap(), Duration::from_millis(100));
        let (p50, p99) = a.jitter_ms();
        assert!(p50 <= 1.0 + 1e-9 && (p99 - 80.0).abs() < 1e-6, "{p50} {p99}");
        assert_eq!(a.slice(Duration::from_millis(20), Duration::from_millis(80)).packets(), 3);
        assert_eq!(a.non_silent().packets(), 0);
        assert_eq!(a.rms_dbfs(0), f64::NEG_INFINITY);
        assert_eq!(a.silence_frames(), 6);
        assert_eq!(a.seq_gaps(), 0);
    }
}
