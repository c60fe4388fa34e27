//! A track's decoder thread: source → demux → decode → 48 kHz stereo → ring.
//!
//! Media bytes are hostile: every failure becomes a TrackException, never a panic across the
//! worker (the thread's result is checked).

use super::ring::{Ring, CAPACITY_FRAMES, CHANNELS, SAMPLE_RATE};
use crate::net::Net;
use crate::sources::{self, LoadFailure};
use caldera_protocol::{ExceptionSeverity, TrackData, TrackException};
use rubato::{FftFixedIn, Resampler};
use std::sync::Arc;
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{Decoder, DecoderOptions, CODEC_TYPE_OPUS};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::{FormatReader, SeekMode, SeekTo};
use symphonia::core::units::Time;

/// Consecutive undecodable packets tolerated before the track is given up.
const MAX_BAD_PACKETS: u32 = 50;

/// Where a finished seek is announced: the player's events and the track's number.
pub type SeekReports = (tokio::sync::mpsc::UnboundedSender<super::Internal>, u64);

pub fn spawn(
    track: TrackData,
    start_ms: u64,
    settings: crate::Settings,
    net: Net,
    ring: Arc<Ring>,
    seeked: SeekReports,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("caldera-decode".into()).spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&track, start_ms, &settings, &net, &ring, &seeked)));
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(f)) => Some(TrackException { message: f.message, severity: f.severity, cause: f.cause }),
            Err(_) => Some(TrackException {
                message: "Something broke when playing the track.".into(),
                severity: ExceptionSeverity::Fault,
                cause: "the decoder panicked".into(),
            }),
        };
        let mut state = ring.lock();
        state.ended = true;
        state.error = error;
        drop(state);
        ring.notify();
    })
}

fn run(track: &TrackData, start_ms: u64, settings: &crate::Settings, net: &Net, ring: &Ring, seeked: &SeekReports) -> Result<(), LoadFailure> {
    let (mut format, container) = sources::open_for_playback(track, settings, net)?;
    let track_info = sources::probe::audio_track(format.as_ref(), container)?;
    let mut decoder = AudioDecoder::new(&track_info.codec_params)?;
    let mut out = Output::new();
    if start_ms > 0 {
        ring.lock().seek_to_ms = Some(start_ms);
    }
    let mut bad_packets = 0;
    loop {
        if ring.stopped() {
            return Ok(());
        }
        let seek = ring.lock().seek_to_ms.take();
        if let Some(ms) = seek {
            // A seek that fails leaves the track where it is, buffer and position included.
            if let Some(landed) = seek_to(format.as_mut(), track_info.id, ms) {
                decoder.reset();
                out.reset();
                let mut state = ring.lock();
                state.samples.clear();
                state.position_frames = landed * SAMPLE_RATE as u64 / 1000;
                state.primed = false;
                drop(state);
                ring.notify();
            }
            let _ = seeked.0.send(super::Internal::Seeked { track_seq: seeked.1 });
        }
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                out.flush(ring);
                return Ok(());
            }
            Err(SymError::ResetRequired) => {
                decoder = AudioDecoder::new(&track_info.codec_params)?;
                continue;
            }
            Err(e) => return Err(LoadFailure::suspicious("Something broke when playing the track.", format!("reading: {e}"))),
        };
        if packet.track_id() != track_info.id {
            continue;
        }
        match decoder.decode(&packet) {
            Ok(Some((rate, channels, samples))) => {
                bad_packets = 0;
                out.push(rate, channels, &samples, ring)?;
            }
            Ok(None) => {}
            Err(e) => {
                bad_packets += 1;
                if bad_packets > MAX_BAD_PACKETS {
                    return Err(LoadFailure::suspicious("Something broke when playing the track.", format!("decoding: {e}")));
                }
            }
        }
    }
}

/// Seeks and returns where it landed (ms): accurate seeks land on the requested time once the
/// decoder has discarded up to it. `None` when the source cannot seek: it stays where it is.
fn seek_to(format: &mut dyn FormatReader, track_id: u32, ms: u64) -> Option<u64> {
    let time = Time::new(ms / 1000, (ms % 1000) as f64 / 1000.0);
    match format.seek(SeekMode::Accurate, SeekTo::Time { time, track_id: Some(track_id) }) {
        Ok(_) => Some(ms),
        Err(e) => {
            tracing::debug!(error = %e, "seek failed; continuing where we are");
            None
        }
    }
}

/// Symphonia decoders, plus Opus through libopus (symphonia has no Opus decoder).
enum AudioDecoder {
    Symphonia(Box<dyn Decoder>, Option<SampleBuffer<f32>>),
    Opus(opus2::Decoder, usize, Vec<f32>),
}

impl AudioDecoder {
    fn new(params: &symphonia::core::codecs::CodecParameters) -> Result<Self, LoadFailure> {
        if params.codec == CODEC_TYPE_OPUS {
            let channels = params.channels.map(|c| c.count()).unwrap_or(2).clamp(1, 2);
            let ch = if channels == 1 { opus2::Channels::Mono } else { opus2::Channels::Stereo };
            let dec = opus2::Decoder::new(SAMPLE_RATE, ch)
                .map_err(|e| LoadFailure::fault("Could not create an Opus decoder.", e.to_string()))?;
            return Ok(Self::Opus(dec, channels, vec![0.0; 5760 * channels]));
        }
        let dec = symphonia::default::get_codecs()
            .make(params, &DecoderOptions::default())
            .map_err(|e| LoadFailure::common("The track's audio format is not supported.", e.to_string()))?;
        Ok(Self::Symphonia(dec, None))
    }

    fn reset(&mut self) {
        match self {
            Self::Symphonia(d, _) => d.reset(),
            Self::Opus(d, _, _) => {
                let _ = d.reset_state();
            }
        }
    }

    /// Decodes one packet into (sample rate, channels, interleaved samples).
    fn decode(&mut self, packet: &symphonia::core::formats::Packet) -> Result<Option<(u32, usize, Vec<f32>)>, String> {
        match self {
            Self::Symphonia(dec, buf) => {
                let decoded = dec.decode(packet).map_err(|e| e.to_string())?;
                let spec = *decoded.spec();
                let frames = decoded.frames();
                if frames == 0 {
                    return Ok(None);
                }
                let needed = frames as u64;
                if buf.as_ref().is_none_or(|b| b.capacity() < frames * spec.channels.count()) {
                    *buf = Some(SampleBuffer::new(needed, spec));
                }
                let b = buf.as_mut().expect("just set");
                b.copy_interleaved_ref(decoded);
                Ok(Some((spec.rate, spec.channels.count(), b.samples().to_vec())))
            }
            Self::Opus(dec, channels, scratch) => {
                let n = dec.decode_float(&packet.data, scratch, false).map_err(|e| e.to_string())?;
                Ok(Some((SAMPLE_RATE, *channels, scratch[..n * *channels].to_vec())))
            }
        }
    }
}

/// Converts decoded audio to 48 kHz stereo and pushes it into the ring, waiting for space.
struct Output {
    resampler: Option<(u32, FftFixedIn<f32>)>,
    pending: [Vec<f32>; 2],
}

impl Output {
    fn new() -> Self {
        Self { resampler: None, pending: [Vec::new(), Vec::new()] }
    }

    fn reset(&mut self) {
        if let Some((_, r)) = self.resampler.as_mut() {
            r.reset();
        }
        self.pending = [Vec::new(), Vec::new()];
    }

    fn push(&mut self, rate: u32, channels: usize, samples: &[f32], ring: &Ring) -> Result<(), LoadFailure> {
        let channels = channels.max(1);
        // Up/down-mix to stereo: mono is duplicated, extra channels are dropped.
        let frames = samples.len() / channels;
        let (left, right): (Vec<f32>, Vec<f32>) = (0..frames)
            .map(|i| {
                let l = samples[i * channels];
                let r = if channels > 1 { samples[i * channels + 1] } else { l };
                (l, r)
            })
            .unzip();
        if rate == SAMPLE_RATE {
            Self::write(&left, &right, ring);
            return Ok(());
        }
        if self.resampler.as_ref().is_none_or(|(r, _)| *r != rate) {
            let r = FftFixedIn::<f32>::new(rate as usize, SAMPLE_RATE as usize, 1024, 2, CHANNELS)
                .map_err(|e| LoadFailure::common("The track's sample rate is not supported.", e.to_string()))?;
            self.resampler = Some((rate, r));
            self.pending = [Vec::new(), Vec::new()];
        }
        self.pending[0].extend_from_slice(&left);
        self.pending[1].extend_from_slice(&right);
        let (_, resampler) = self.resampler.as_mut().expect("just set");
        loop {
            let need = resampler.input_frames_next();
            if self.pending[0].len() < need {
                break;
            }
            let input = [&self.pending[0][..need], &self.pending[1][..need]];
            let output = resampler
                .process(&input, None)
                .map_err(|e| LoadFailure::fault("Resampling failed.", e.to_string()))?;
            self.pending[0].drain(..need);
            self.pending[1].drain(..need);
            Self::write(&output[0], &output[1], ring);
        }
        Ok(())
    }

    /// Pushes what is left in the resampler at the end of the track.
    fn flush(&mut self, ring: &Ring) {
        if let Some((_, resampler)) = self.resampler.as_mut() {
            if !self.pending[0].is_empty() {
                let input = [&self.pending[0][..], &self.pending[1][..]];
                if let Ok(out) = resampler.process_partial(Some(&input), None) {
                    let (l, r) = (out[0].clone(), out[1].clone());
                    self.pending = [Vec::new(), Vec::new()];
                    Self::write(&l, &r, ring);
                }
            }
        }
    }

    /// Interleaves into the ring, blocking while it is full (unless stopped or seeking).
    fn write(left: &[f32], right: &[f32], ring: &Ring) {
        let mut i = 0;
        while i < left.len() {
            let mut state = ring.lock();
            if ring.stopped() || state.seek_to_ms.is_some() {
                return;
            }
            let free = (CAPACITY_FRAMES * CHANNELS).saturating_sub(state.samples.len()) / CHANNELS;
            if free == 0 {
                drop(ring.wait(state));
                continue;
            }
            let n = free.min(left.len() - i);
            for k in i..i + n {
                state.samples.push_back(sanitize(left[k]));
                state.samples.push_back(sanitize(right[k]));
            }
            state.primed = true;
            i += n;
        }
    }
}

/// Decoders are fed hostile bytes: never let NaN/inf through.
fn sanitize(x: f32) -> f32 {
    if x.is_finite() {
        x.clamp(-4.0, 4.0)
    } else {
        0.0
    }
}

