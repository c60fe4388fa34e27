//! A track's decoder: source → demux → decode → 48 kHz stereo → the track's buffer; or, for an
//! Opus source, the source's packets as they are. Runs in turns on the worker's decode pool,
//! each turn filling the buffer up to its capacity (or until input runs short: a turn never
//! waits on the network).
//!
//! Media bytes are hostile: every failure becomes a TrackException, never a panic across the
//! worker.

use super::buffer::{Content, OpusPacket, TrackBuffer, CHANNELS, SAMPLE_RATE};
use super::pool::Fill;
use super::Internal;
use crate::net::Gauge;
use crate::sources::{self, LoadFailure};
use caldera_protocol::evidence::Culprit;
use caldera_protocol::{ResamplingQuality, TrackData, TrackException};
use rubato::{FastFixedIn, FftFixedIn, PolynomialDegree, Resampler};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::borrow::Cow;
use symphonia::core::audio::{AudioBuffer, AudioBufferRef, Signal};
use symphonia::core::codecs::{Decoder, DecoderOptions, CODEC_TYPE_OPUS};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::{FormatReader, SeekMode, SeekTo};
use symphonia::core::units::{Time, TimeBase};
use tokio::sync::mpsc::UnboundedSender;

/// Consecutive undecodable packets tolerated before the track is given up.
const MAX_BAD_PACKETS: u32 = 50;
/// Frames one write to the buffer usually holds at most: a resampler chunk, or a packet of a
/// 48 kHz source (a larger one makes the buffer grow, which is only memory).
const MAX_WRITE_FRAMES: usize = 4096;

/// A track's decoding, run by the pool.
pub struct TrackDecoder {
    buffer: Arc<TrackBuffer>,
    /// `None` until the source is open, and once it is done.
    state: Mutex<Option<Decoding>>,
    /// Where a finished seek is announced: the player's events and the track's number.
    seeked: (UnboundedSender<Internal>, u64),
    /// Whose media this is, should decoding it crash the worker.
    culprit: Culprit,
}

impl TrackDecoder {
    pub fn new(buffer: Arc<TrackBuffer>, seeked: (UnboundedSender<Internal>, u64), culprit: Culprit) -> Self {
        Self { buffer, state: Mutex::new(None), seeked, culprit }
    }

    /// The source is open: decoding can start.
    pub fn opened(&self, decoding: Decoding, capacity_frames: usize) {
        {
            let mut st = self.buffer.lock();
            st.capacity_frames = capacity_frames;
            // Room for the capacity and one more write (the decoder stops once it is reached), so
            // the buffer never grows by doubling.
            st.content = match decoding.decoder {
                None => Content::Opus(Default::default()),
                Some(_) => Content::Pcm(VecDeque::with_capacity((capacity_frames + MAX_WRITE_FRAMES) * CHANNELS)),
            };
        }
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(decoding);
    }
}

impl Fill for TrackDecoder {
    fn fill(&self) {
        crate::crash::working_on(self.culprit, || self.fill_now());
    }
}

impl TrackDecoder {
    fn fill_now(&self) {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(d) = guard.as_mut() else { return };
        let result = loop {
            if self.buffer.stopped() {
                break Ok(false);
            }
            let seek = self.buffer.lock().seek_to_ms.take();
            if let Some(ms) = seek {
                d.seek(ms, &self.buffer);
                let _ = self.seeked.0.send(Internal::Seeked { track_seq: self.seeked.1 });
                continue;
            }
            let full = {
                let st = self.buffer.lock();
                st.content.frames() >= st.capacity_frames
            };
            if full || d.exhausted || !d.input_ready() {
                break Ok(false);
            }
            match d.step(&self.buffer) {
                Ok(false) => {}
                end => break end,
            }
        };
        match result {
            Ok(false) => {}
            // The end of the source: what is buffered plays, then the track ends (unless a seek
            // comes first, so the decoding is kept).
            Ok(true) => {
                d.flush(&self.buffer);
                d.exhausted = true;
                self.buffer.end(None);
            }
            Err(f) => {
                self.buffer.end(Some(TrackException { message: f.message, severity: f.severity, cause: f.cause }));
                *guard = None;
            }
        }
    }
}

/// An open source being decoded.
pub struct Decoding {
    format: Box<dyn FormatReader>,
    track_id: u32,
    params: symphonia::core::codecs::CodecParameters,
    time_base: Option<TimeBase>,
    /// `None` for an Opus source, whose packets are buffered as they are.
    decoder: Option<AudioDecoder>,
    channels: usize,
    out: Output,
    gauge: Option<Gauge>,
    bad_packets: u32,
    /// After a seek: packets ending before this timestamp are skipped.
    skip_until: Option<u64>,
    /// The source has been read to its end.
    exhausted: bool,
}

impl Decoding {
    /// Opens a track's media (blocking: network and probing). Called off the pool.
    pub fn open(track: &TrackData, settings: &crate::Settings, net: &crate::net::Net) -> Result<Self, LoadFailure> {
        let media = sources::open_for_playback(track, settings, net)?;
        let track_info = sources::probe::audio_track(media.format.as_ref(), media.container)?;
        let params = track_info.codec_params.clone();
        let channels = params.channels.map(|c| c.count()).unwrap_or(2).max(1);
        let decoder = if params.codec == CODEC_TYPE_OPUS { None } else { Some(AudioDecoder::new(&params)?) };
        let time_base = params.time_base.or_else(|| params.sample_rate.map(|r| TimeBase::new(1, r)));
        Ok(Self {
            format: media.format,
            track_id: track_info.id,
            params,
            time_base,
            decoder,
            channels,
            out: Output::new(settings.audio.resampling),
            gauge: media.gauge,
            bad_packets: 0,
            skip_until: None,
            exhausted: false,
        })
    }

    /// Whether the source's own Opus frames are buffered (not decoded here).
    pub fn passes_opus(&self) -> bool {
        self.decoder.is_none()
    }

    /// Whether decoding can go on without waiting for the network.
    fn input_ready(&self) -> bool {
        self.gauge.as_ref().is_none_or(Gauge::ready)
    }

    /// One packet into the buffer. `Ok(true)` at the end of the source.
    fn step(&mut self, buffer: &TrackBuffer) -> Result<bool, LoadFailure> {
        let packet = match self.format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(true),
            // Input not there yet (an HLS segment still on its way): the turn ends on the gauge.
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(SymError::ResetRequired) => {
                // The stream changed its encoding (a chained stream, an HLS discontinuity).
                if let Some(t) = self.format.tracks().iter().find(|t| t.id == self.track_id) {
                    self.params = t.codec_params.clone();
                    self.channels = self.params.channels.map(|c| c.count()).unwrap_or(2).max(1);
                }
                let opus = self.params.codec == CODEC_TYPE_OPUS;
                if opus != self.decoder.is_none() {
                    return Err(LoadFailure::common("The track changed its audio format mid-way.", "between Opus and another codec".into()));
                }
                self.decoder = if opus { None } else { Some(AudioDecoder::new(&self.params)?) };
                return Ok(false);
            }
            // A source that says why (an HLS segment that cannot be fetched, say).
            Err(SymError::IoError(e)) if LoadFailure::of_io(&e).is_some() => return Err(LoadFailure::of_io(&e).cloned().expect("checked")),
            Err(e) => return Err(LoadFailure::suspicious("Something broke when playing the track.", format!("reading: {e}"))),
        };
        if packet.track_id() != self.track_id {
            return Ok(false);
        }
        // After a seek, packets before the target are dropped (the position is where the first
        // kept one starts).
        if let Some(until) = self.skip_until {
            if packet.ts() + packet.dur() <= until {
                return Ok(false);
            }
            self.skip_until = None;
            if let Some(tb) = self.time_base {
                let t = tb.calc_time(packet.ts());
                buffer.lock().position_frames = t.seconds.saturating_mul(SAMPLE_RATE as u64) + (t.frac * SAMPLE_RATE as f64) as u64;
            }
        }
        match self.decoder.as_mut() {
            None => {
                // Hostile bytes: a packet libopus cannot size is dropped, and counts as bad.
                let Ok(frames) = opus2::packet::get_nb_samples(packet.buf(), SAMPLE_RATE) else {
                    return self.bad("an Opus packet with an invalid header");
                };
                self.bad_packets = 0;
                let passable = frames == super::buffer::FRAME_SAMPLES && self.channels == 2;
                let mut st = buffer.lock();
                if let Content::Opus(queue) = &mut st.content {
                    queue.push_back(OpusPacket { data: Box::from(packet.buf()), frames: frames as u32, passable });
                }
                st.primed = true;
            }
            Some(decoder) => match decoder.decode(&packet) {
                Ok(Some((rate, left, right))) => {
                    self.bad_packets = 0;
                    self.out.push(rate, left, right, buffer)?;
                }
                Ok(None) => {}
                Err(e) => return self.bad(&e),
            },
        }
        Ok(false)
    }

    fn bad(&mut self, what: &str) -> Result<bool, LoadFailure> {
        self.bad_packets += 1;
        if self.bad_packets > MAX_BAD_PACKETS {
            return Err(LoadFailure::suspicious("Something broke when playing the track.", format!("decoding: {what}")));
        }
        Ok(false)
    }

    /// Seeks to `ms`: the buffer is emptied, and packets before the target are dropped as they
    /// come. A source that cannot seek stays where it is (buffer and position included).
    fn seek(&mut self, ms: u64, buffer: &TrackBuffer) {
        let time = Time::new(ms / 1000, (ms % 1000) as f64 / 1000.0);
        match self.format.seek(SeekMode::Accurate, SeekTo::Time { time, track_id: Some(self.track_id) }) {
            Ok(seeked) => {
                if let Some(d) = self.decoder.as_mut() {
                    d.reset();
                }
                self.out.reset();
                self.skip_until = Some(seeked.required_ts);
                self.exhausted = false;
                let mut st = buffer.lock();
                st.ended = false;
                st.content.clear();
                st.position_frames = ms * SAMPLE_RATE as u64 / 1000;
                st.primed = false;
            }
            Err(e) => tracing::debug!(error = %e, "seek failed; continuing where we are"),
        }
    }

    /// Pushes what the resampler holds at the end of the source.
    fn flush(&mut self, buffer: &TrackBuffer) {
        self.out.flush(buffer);
    }
}

/// Symphonia decoders (Opus sources are buffered as packets, not decoded here).
struct AudioDecoder {
    decoder: Box<dyn Decoder>,
    /// Decoded audio of a sample type other than f32, converted.
    converted: Option<AudioBuffer<f32>>,
}

impl AudioDecoder {
    fn new(params: &symphonia::core::codecs::CodecParameters) -> Result<Self, LoadFailure> {
        let decoder = symphonia::default::get_codecs()
            .make(params, &DecoderOptions::default())
            .map_err(|e| LoadFailure::common("The track's audio format is not supported.", e.to_string()))?;
        Ok(Self { decoder, converted: None })
    }

    fn reset(&mut self) {
        self.decoder.reset();
    }

    /// Decodes one packet into (sample rate, left, right): planar, as decoders make it (a mono
    /// source is its own right channel; channels past two are dropped).
    fn decode(&mut self, packet: &symphonia::core::formats::Packet) -> Result<Option<(u32, &[f32], &[f32])>, String> {
        let decoded = self.decoder.decode(packet).map_err(|e| e.to_string())?;
        let spec = *decoded.spec();
        let frames = decoded.frames();
        if frames == 0 || spec.channels.count() == 0 {
            return Ok(None);
        }
        let planes: &AudioBuffer<f32> = match decoded {
            AudioBufferRef::F32(Cow::Borrowed(b)) => b,
            other => {
                if self.converted.as_ref().is_none_or(|c| c.capacity() < frames || *c.spec() != spec) {
                    self.converted = Some(AudioBuffer::new(frames as u64, spec));
                }
                let c = self.converted.as_mut().expect("just set");
                other.convert(c);
                c
            }
        };
        let left = planes.chan(0);
        let right = if spec.channels.count() > 1 { planes.chan(1) } else { left };
        Ok(Some((spec.rate, left, right)))
    }
}

/// The resamplers of `resamplingQuality`: LOW is linear interpolation, MEDIUM a cubic
/// polynomial, HIGH an FFT resampler (band-limited).
enum AnyResampler {
    Fast(FastFixedIn<f32>),
    Fft(FftFixedIn<f32>),
}

impl AnyResampler {
    const CHUNK: usize = 1024;

    fn new(quality: ResamplingQuality, from: u32) -> Result<Self, String> {
        let ratio = SAMPLE_RATE as f64 / from as f64;
        let fast = |degree| FastFixedIn::new(ratio, 1.0, degree, Self::CHUNK, CHANNELS).map(Self::Fast).map_err(|e| e.to_string());
        match quality {
            ResamplingQuality::Low => fast(PolynomialDegree::Linear),
            ResamplingQuality::Medium => fast(PolynomialDegree::Cubic),
            ResamplingQuality::High => FftFixedIn::new(from as usize, SAMPLE_RATE as usize, Self::CHUNK, 2, CHANNELS).map(Self::Fft).map_err(|e| e.to_string()),
        }
    }

    fn input_frames_next(&self) -> usize {
        match self {
            Self::Fast(r) => r.input_frames_next(),
            Self::Fft(r) => r.input_frames_next(),
        }
    }

    fn output_frames_max(&self) -> usize {
        match self {
            Self::Fast(r) => r.output_frames_max(),
            Self::Fft(r) => r.output_frames_max(),
        }
    }

    fn process_into(&mut self, input: &[&[f32]; 2], output: &mut [Vec<f32>; 2]) -> Result<usize, String> {
        let done = match self {
            Self::Fast(r) => r.process_into_buffer(input, output, None),
            Self::Fft(r) => r.process_into_buffer(input, output, None),
        };
        done.map(|(_, written)| written).map_err(|e| e.to_string())
    }

    fn process_partial_into(&mut self, input: &[&[f32]; 2], output: &mut [Vec<f32>; 2]) -> Result<usize, String> {
        let done = match self {
            Self::Fast(r) => r.process_partial_into_buffer(Some(input), output, None),
            Self::Fft(r) => r.process_partial_into_buffer(Some(input), output, None),
        };
        done.map(|(_, written)| written).map_err(|e| e.to_string())
    }

    fn reset(&mut self) {
        match self {
            Self::Fast(r) => r.reset(),
            Self::Fft(r) => r.reset(),
        }
    }
}

/// Converts decoded audio to 48 kHz stereo and pushes it into the buffer.
struct Output {
    quality: ResamplingQuality,
    resampler: Option<(u32, AnyResampler)>,
    /// Planar input waiting for a full resampler chunk, and the resampler's output scratch.
    pending: [Vec<f32>; 2],
    scratch: [Vec<f32>; 2],
    /// 16-bit stereo ready for the buffer.
    interleaved: Vec<i16>,
}

impl Output {
    fn new(quality: ResamplingQuality) -> Self {
        Self { quality, resampler: None, pending: [Vec::new(), Vec::new()], scratch: [Vec::new(), Vec::new()], interleaved: Vec::new() }
    }

    fn reset(&mut self) {
        if let Some((_, r)) = self.resampler.as_mut() {
            r.reset();
        }
        self.pending.iter_mut().for_each(Vec::clear);
    }

    fn push(&mut self, rate: u32, left: &[f32], right: &[f32], buffer: &TrackBuffer) -> Result<(), LoadFailure> {
        if rate == SAMPLE_RATE {
            interleave(&mut self.interleaved, left, right);
            write(buffer, &self.interleaved);
            return Ok(());
        }
        if self.resampler.as_ref().is_none_or(|(r, _)| *r != rate) {
            let r = AnyResampler::new(self.quality, rate).map_err(|e| LoadFailure::common("The track's sample rate is not supported.", e))?;
            self.scratch = [vec![0.0; r.output_frames_max()], vec![0.0; r.output_frames_max()]];
            self.resampler = Some((rate, r));
            self.pending.iter_mut().for_each(Vec::clear);
        }
        self.pending[0].extend_from_slice(left);
        self.pending[1].extend_from_slice(right);
        let (_, resampler) = self.resampler.as_mut().expect("just set");
        let mut used = 0;
        loop {
            let need = resampler.input_frames_next();
            if self.pending[0].len() - used < need {
                break;
            }
            let input = [&self.pending[0][used..used + need], &self.pending[1][used..used + need]];
            let n = resampler.process_into(&input, &mut self.scratch).map_err(|e| LoadFailure::fault("Resampling failed.", e))?;
            used += need;
            interleave(&mut self.interleaved, &self.scratch[0][..n], &self.scratch[1][..n]);
            write(buffer, &self.interleaved);
        }
        self.pending.iter_mut().for_each(|p| {
            p.drain(..used);
        });
        Ok(())
    }

    /// Pushes what is left in the resampler at the end of the track.
    fn flush(&mut self, buffer: &TrackBuffer) {
        let Some((_, resampler)) = self.resampler.as_mut() else { return };
        if self.pending[0].is_empty() {
            return;
        }
        let input = [&self.pending[0][..], &self.pending[1][..]];
        if let Ok(n) = resampler.process_partial_into(&input, &mut self.scratch) {
            interleave(&mut self.interleaved, &self.scratch[0][..n], &self.scratch[1][..n]);
            write(buffer, &self.interleaved);
        }
        self.pending.iter_mut().for_each(Vec::clear);
    }
}

/// Two planes into interleaved 16-bit stereo. Decoders are fed hostile bytes: NaN becomes 0 and
/// infinities clip (Rust's float-to-int casts saturate).
fn interleave(out: &mut Vec<i16>, left: &[f32], right: &[f32]) {
    let n = left.len().min(right.len());
    out.clear();
    out.resize(n * 2, 0);
    for (o, (l, r)) in out.chunks_exact_mut(2).zip(left.iter().zip(right)) {
        o[0] = (l.clamp(-1.0, 1.0) * 32767.0) as i16;
        o[1] = (r.clamp(-1.0, 1.0) * 32767.0) as i16;
    }
}

/// Appends interleaved 16-bit stereo to the buffer.
fn write(buffer: &TrackBuffer, interleaved: &[i16]) {
    let mut st = buffer.lock();
    if let Content::Pcm(samples) = &mut st.content {
        samples.extend(interleaved);
    }
    st.primed = true;
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostile_samples_are_clipped_or_silenced() {
        let mut out = Vec::new();
        super::interleave(&mut out, &[0.5, f32::NAN, f32::INFINITY, -2.0], &[-0.5, 1.0, f32::NEG_INFINITY, 0.0]);
        assert_eq!(out, [16383, -16383, 0, 32767, 32767, -32767, -32767, 0]);
    }
}
