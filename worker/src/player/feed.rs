//! What songbird sends: one 20 ms Opus frame per tick of its audio clock, from the track's
//! buffer. songbird reads it as a "format" of Opus packets and sends each one as it is
//! (its passthrough), so all the audio work is here, on the clock, and never blocks: what is not
//! ready is a silence frame, counted as nulled (lavalink-internals §4.4).
//!
//! - **Opus passthrough**: an Opus source's own 20 ms stereo frames go out untouched while no
//!   filter is active and the volume is 100 (as lavaplayer does) — no decode, resample or encode.
//! - **PCM**: otherwise the audio is decoded (an Opus source's frames here, other sources by the
//!   decoder), filtered, its volume applied with a ramp, and encoded with libopus at
//!   `opusEncodingQuality`. A filter or volume change is heard on the next frame, and clearing
//!   them returns to passthrough.

use super::buffer::{Content, TrackBuffer, CHANNELS, FRAME_SAMPLES, SAMPLE_RATE};
use super::pool::Ticket;
use super::Internal;
use crate::dsp::Processor;
use caldera_protocol::evidence::Culprit;
use caldera_protocol::{EndReason, Filters, TrackException};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use symphonia::core::codecs::{CodecParameters, CODEC_TYPE_OPUS};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::{Cue, FormatOptions, FormatReader, Packet, SeekMode, SeekTo, SeekedTo, Track};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::{Metadata, MetadataLog};
use tokio::sync::mpsc::UnboundedSender;

/// Opus's 20 ms silence frame (Discord's "nothing to play").
pub const SILENCE: [u8; 3] = [0xF8, 0xFF, 0xFE];
/// Largest frame Caldera encodes.
const MAX_FRAME_BYTES: usize = 1275;

/// Frame counters of a player, shared with its task.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU32,
    pub nulled: AtomicU32,
}

/// Controls shared between a player task and its feed.
#[derive(Debug)]
pub struct Controls {
    /// Volume in percent (0–1000).
    pub volume: AtomicU32,
    /// End marker in 48 kHz frames (`u64::MAX`: none).
    pub end_frames: AtomicU64,
    /// The filters, and a counter bumped on every change (checked once per frame).
    filters: Mutex<Filters>,
    filters_version: AtomicU64,
}

impl Controls {
    pub fn new(volume: u16) -> Self {
        Self { volume: AtomicU32::new(volume as u32), end_frames: AtomicU64::new(u64::MAX), filters: Mutex::default(), filters_version: AtomicU64::new(0) }
    }

    pub fn set_filters(&self, filters: Filters) {
        *self.filters.lock().unwrap_or_else(|e| e.into_inner()) = filters;
        self.filters_version.fetch_add(1, Ordering::Release);
    }

    pub fn set_end_ms(&self, end_ms: Option<u64>) {
        let frames = end_ms.map(|ms| ms * SAMPLE_RATE as u64 / 1000).unwrap_or(u64::MAX);
        self.end_frames.store(frames, Ordering::Relaxed);
    }
}

/// What one tick produced.
enum Tick {
    /// A frame to send (encoded here, or the source's own).
    Frame,
    /// Nothing ready: silence.
    Silence,
    End { reason: EndReason, error: Option<TrackException> },
}

/// The feed's state, touched on the audio clock only.
struct State {
    buffer: Arc<TrackBuffer>,
    ticket: Ticket,
    controls: Arc<Controls>,
    counters: Arc<Counters>,
    events: UnboundedSender<Internal>,
    track_seq: u64,
    culprit: Culprit,
    stuck_after_frames: u32,
    consecutive_nulled: u32,
    stuck_reported: bool,
    done: bool,
    /// Packets handed to songbird (their timestamps).
    ticks: u64,
    dsp: Processor,
    /// The filters version `dsp` was built from (`u64::MAX`: none yet).
    dsp_version: u64,
    /// The volume applied to the last frame (ramped towards the target).
    gain: f32,
    opus_quality: u8,
    encoder: Option<opus2::Encoder>,
    /// Decodes an Opus source's frames when the PCM path plays it.
    decoder: Option<opus2::Decoder>,
    /// The last frame sent as it was: decoded first when the PCM path takes over, so the
    /// decoder's state continues from it (no click).
    last_passed: Option<Box<[u8]>>,
    /// Decoded Opus audio not used yet (interleaved).
    decoded: VecDeque<f32>,
    /// One frame of audio being built, input scratch, decode scratch, and the frame to send.
    samples: Vec<f32>,
    input: Vec<f32>,
    scratch: Vec<f32>,
    out: Vec<u8>,
    out_len: usize,
}

pub struct Feed {
    tracks: Vec<Track>,
    /// Always empty: the feed has no metadata of its own.
    meta: MetadataLog,
    state: Mutex<State>,
}

/// What a feed is made of.
pub struct FeedParts {
    pub buffer: Arc<TrackBuffer>,
    pub ticket: Ticket,
    pub controls: Arc<Controls>,
    pub counters: Arc<Counters>,
    pub events: UnboundedSender<Internal>,
    pub track_seq: u64,
    /// Whose media this is, should decoding its Opus frames here crash the worker.
    pub culprit: Culprit,
    pub stuck_threshold_ms: u64,
    pub opus_quality: u8,
}

impl Feed {
    pub fn new(p: FeedParts) -> Self {
        let mut params = CodecParameters::new();
        params.for_codec(CODEC_TYPE_OPUS).with_sample_rate(SAMPLE_RATE).with_channels(symphonia::core::audio::Layout::Stereo.into_channels());
        let gain = p.controls.volume.load(Ordering::Relaxed) as f32 / 100.0;
        let state = State {
            buffer: p.buffer,
            ticket: p.ticket,
            controls: p.controls,
            counters: p.counters,
            events: p.events,
            track_seq: p.track_seq,
            culprit: p.culprit,
            stuck_after_frames: (p.stuck_threshold_ms / 20).max(1) as u32,
            consecutive_nulled: 0,
            stuck_reported: false,
            done: false,
            ticks: 0,
            dsp: Processor::default(),
            dsp_version: u64::MAX,
            gain,
            opus_quality: p.opus_quality,
            encoder: None,
            decoder: None,
            last_passed: None,
            decoded: VecDeque::new(),
            samples: vec![0.0; FRAME_SAMPLES * CHANNELS],
            input: Vec::with_capacity(FRAME_SAMPLES * CHANNELS),
            scratch: Vec::new(),
            out: vec![0; MAX_FRAME_BYTES],
            out_len: 0,
        };
        Self { tracks: vec![Track::new(0, params)], meta: MetadataLog::default(), state: Mutex::new(state) }
    }

    /// The codec parameters songbird needs for its (unused) decoder.
    pub fn codec_params(&self) -> &CodecParameters {
        &self.tracks[0].codec_params
    }
}

impl State {
    fn tick(&mut self) -> Tick {
        self.refresh_filters();
        self.request_fill();
        let end = self.controls.end_frames.load(Ordering::Relaxed);
        let target = self.controls.volume.load(Ordering::Relaxed) as f32 / 100.0;
        let mut st = self.buffer.lock();
        if st.position_frames >= end {
            return Tick::End { reason: EndReason::Finished, error: None };
        }
        // A seek the decoder has not taken yet: old audio must not play.
        if st.seek_to_ms.is_some() {
            return Tick::Silence;
        }
        let passthrough = !self.dsp.is_active() && target == 1.0 && self.gain == 1.0 && self.decoded.is_empty();
        if let Content::Opus(queue) = &mut st.content {
            if passthrough && queue.front().is_some_and(|p| p.passable) {
                let packet = queue.pop_front().expect("front checked");
                st.position_frames += packet.frames as u64;
                drop(st);
                self.out[..packet.data.len()].copy_from_slice(&packet.data);
                self.out_len = packet.data.len();
                self.last_passed = Some(packet.data);
                return Tick::Frame;
            }
        }
        drop(st);
        self.pcm_frame(target)
    }

    /// Asks the decoder for more when less than half of the buffer is left (or a seek waits).
    fn request_fill(&self) {
        let st = self.buffer.lock();
        let low = !st.ended && (st.content.frames() < st.capacity_frames / 2 || st.seek_to_ms.is_some());
        drop(st);
        if low {
            self.ticket.request();
        }
    }

    /// One frame through the PCM path.
    fn pcm_frame(&mut self, target_gain: f32) -> Tick {
        let filled = if self.dsp.timescale().is_some() { self.fill_through_timescale() } else { self.fill_direct() };
        let n = match filled {
            Ok(n) => n,
            Err(end) => return end,
        };
        if n == 0 {
            return Tick::Silence;
        }
        self.apply_volume(target_gain);
        let encoder = match self.encoder.as_mut() {
            Some(e) => e,
            None => match new_encoder(self.opus_quality) {
                Ok(e) => self.encoder.insert(e),
                Err(e) => return Tick::End { reason: EndReason::LoadFailed, error: Some(fault(format!("cannot create an Opus encoder: {e}"))) },
            },
        };
        match encoder.encode_float(&self.samples, &mut self.out) {
            Ok(len) => {
                self.out_len = len;
                Tick::Frame
            }
            Err(e) => Tick::End { reason: EndReason::LoadFailed, error: Some(fault(format!("Opus encoding failed: {e}"))) },
        }
    }

    /// Takes up to `max` interleaved samples (never past the end marker) into `input`; the
    /// number of frames taken, or the end of the track.
    fn take(&mut self, max: usize) -> Result<usize, Tick> {
        self.input.clear();
        let end = self.controls.end_frames.load(Ordering::Relaxed);
        let mut st = self.buffer.lock();
        let until_end = ((end.saturating_sub(st.position_frames)) as usize).saturating_mul(CHANNELS);
        let want = max.min(until_end);
        match &mut st.content {
            Content::Pcm(samples) => {
                let n = want.min(samples.len());
                let (a, b) = samples.as_slices();
                let from_a = n.min(a.len());
                let to_f32 = |s: &i16| f32::from(*s) / 32768.0;
                self.input.extend(a[..from_a].iter().map(to_f32));
                self.input.extend(b[..n - from_a].iter().map(to_f32));
                samples.drain(..n);
            }
            Content::Opus(queue) => {
                // Decode frames until enough is here (the first after passthrough primes it).
                while self.decoded.len() < want {
                    let Some(packet) = queue.pop_front() else { break };
                    let decoder = match self.decoder.as_mut() {
                        Some(d) => d,
                        None => match opus2::Decoder::new(SAMPLE_RATE, opus2::Channels::Stereo) {
                            Ok(d) => self.decoder.insert(d),
                            Err(e) => return Err(Tick::End { reason: EndReason::LoadFailed, error: Some(fault(format!("cannot create an Opus decoder: {e}"))) }),
                        },
                    };
                    // Room for the longest Opus frame (120 ms), made only when Opus is decoded here.
                    self.scratch.resize(5760 * CHANNELS, 0.0);
                    if let Some(previous) = self.last_passed.take() {
                        let _ = decoder.decode_float(&previous, &mut self.scratch, false);
                    }
                    // A frame libopus cannot decode is dropped (hostile bytes).
                    if let Ok(frames) = decoder.decode_float(&packet.data, &mut self.scratch, false) {
                        self.decoded.extend(&self.scratch[..frames * CHANNELS]);
                    }
                }
                let n = want.min(self.decoded.len());
                let (a, b) = self.decoded.as_slices();
                let from_a = n.min(a.len());
                self.input.extend_from_slice(&a[..from_a]);
                self.input.extend_from_slice(&b[..n - from_a]);
                self.decoded.drain(..n);
            }
        }
        let frames = self.input.len() / CHANNELS;
        if frames == 0 && (st.ended || until_end == 0) {
            let error = st.error.take();
            let reason = if error.is_some() { EndReason::LoadFailed } else { EndReason::Finished };
            return Err(Tick::End { reason, error });
        }
        st.position_frames += frames as u64;
        if frames == 0 && st.primed {
            self.counters.nulled.fetch_add(1, Ordering::Relaxed);
        }
        Ok(frames)
    }

    /// One frame straight from the buffer through the filters; the frames of audio in it.
    fn fill_direct(&mut self) -> Result<usize, Tick> {
        let n = self.take(FRAME_SAMPLES * CHANNELS)?;
        self.samples[..n * CHANNELS].copy_from_slice(&self.input);
        self.samples[n * CHANNELS..].fill(0.0);
        if n > 0 {
            self.dsp.process(&mut self.samples);
        }
        Ok(n)
    }

    /// One frame of timescale output: input is pulled (through the filters before timescale)
    /// until a frame is ready; the position stays in source time because it counts what is
    /// pulled.
    fn fill_through_timescale(&mut self) -> Result<usize, Tick> {
        // Bounded: at most 40 frames of input (timescale is clamped to 20×) per output frame.
        for _ in 0..40 {
            if self.dsp.timescale().is_some_and(|t| t.available() >= FRAME_SAMPLES) {
                break;
            }
            match self.take(FRAME_SAMPLES * CHANNELS) {
                Ok(0) => break,
                Ok(_) => {}
                Err(end) if self.dsp.timescale().is_some_and(|t| t.available() > 0) => {
                    drop(end);
                    break;
                }
                Err(end) => return Err(end),
            }
            let mut input = std::mem::take(&mut self.input);
            self.dsp.before(&mut input);
            if let Some(t) = self.dsp.timescale() {
                t.push(&input);
            }
            self.input = input;
        }
        let n = self.dsp.timescale().map(|t| t.pop(&mut self.samples)).unwrap_or(0);
        self.samples[n * CHANNELS..].fill(0.0);
        if n > 0 {
            self.dsp.after(&mut self.samples, true);
        }
        Ok(n)
    }

    /// Picks up a filter change on this very frame.
    fn refresh_filters(&mut self) {
        let version = self.controls.filters_version.load(Ordering::Acquire);
        if version != self.dsp_version {
            let filters = self.controls.filters.lock().unwrap_or_else(|e| e.into_inner()).clone();
            self.dsp.set(&filters);
            self.dsp_version = version;
        }
    }

    /// Applies the volume with a ramp across the frame, so a change never clicks.
    fn apply_volume(&mut self, target: f32) {
        let start = self.gain;
        if start == 1.0 && target == 1.0 {
            return;
        }
        let frames = FRAME_SAMPLES as f32;
        for (i, pair) in self.samples.chunks_exact_mut(CHANNELS).enumerate() {
            let g = start + (target - start) * (i as f32 + 1.0) / frames;
            for s in pair {
                *s *= g;
            }
        }
        self.gain = target;
    }

    /// The packet for songbird, with the bookkeeping of a tick.
    fn next(&mut self) -> Option<Packet> {
        if self.done {
            return None;
        }
        let ts = self.ticks;
        self.ticks += 1;
        let packet = match crate::crash::working_on(self.culprit, || self.tick()) {
            Tick::Frame => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                self.consecutive_nulled = 0;
                self.stuck_reported = false;
                Packet::new_from_slice(0, ts * FRAME_SAMPLES as u64, FRAME_SAMPLES as u64, &self.out[..self.out_len])
            }
            Tick::Silence => {
                // Silence before the first audio (start, seek) is expected for frameStats, but
                // counts towards TrackStuck: a source that never yields audio is stuck from its
                // start.
                self.consecutive_nulled += 1;
                if self.consecutive_nulled >= self.stuck_after_frames && !self.stuck_reported {
                    self.stuck_reported = true;
                    let _ = self.events.send(Internal::Stuck { track_seq: self.track_seq });
                }
                Packet::new_from_slice(0, ts * FRAME_SAMPLES as u64, FRAME_SAMPLES as u64, &SILENCE)
            }
            Tick::End { reason, error } => {
                self.done = true;
                let _ = self.events.send(Internal::Ended { track_seq: self.track_seq, reason, error });
                return None;
            }
        };
        Some(packet)
    }
}

/// The encoder of frames Caldera makes, set as lavaplayer's: the general audio application (CELT
/// only measured no faster, see `benches/frame_cost.rs`), libopus's automatic bitrate (99 kbit/s
/// VBR for 20 ms stereo; songbird's 128 kbit/s costs 9 % more per frame), complexity =
/// opusEncodingQuality.
fn new_encoder(quality: u8) -> Result<opus2::Encoder, opus2::Error> {
    let mut e = opus2::Encoder::new(SAMPLE_RATE, opus2::Channels::Stereo, opus2::Application::Audio)?;
    e.set_bitrate(opus2::Bitrate::Auto)?;
    e.set_complexity(quality.min(10) as i32)?;
    Ok(e)
}

fn fault(cause: String) -> TrackException {
    TrackException { message: "Something broke when playing the track.".into(), severity: caldera_protocol::ExceptionSeverity::Fault, cause }
}

impl FormatReader for Feed {
    fn try_new(_: MediaSourceStream, _: &FormatOptions) -> symphonia::core::errors::Result<Self> {
        Err(SymError::Unsupported("a feed is made by the player, not probed"))
    }

    fn cues(&self) -> &[Cue] {
        &[]
    }

    fn metadata(&mut self) -> Metadata<'_> {
        self.meta.metadata()
    }

    fn seek(&mut self, _: SeekMode, _: SeekTo) -> symphonia::core::errors::Result<SeekedTo> {
        // Seeks are the decoder's (see TrackBuffer::request_seek), never songbird's.
        Err(SymError::Unsupported("the feed cannot seek"))
    }

    fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    fn next_packet(&mut self) -> symphonia::core::errors::Result<Packet> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.next().ok_or_else(|| SymError::IoError(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the track is over")))
    }

    fn into_inner(self: Box<Self>) -> MediaSourceStream {
        MediaSourceStream::new(Box::new(std::io::Cursor::new(Vec::new())), Default::default())
    }
}

/// The input songbird plays: the feed, as a parsed Opus "file".
pub fn songbird_input(feed: Feed) -> Result<songbird::input::Input, String> {
    let decoder = Undecoded { params: feed.codec_params().clone(), silence: symphonia::core::audio::AudioBuffer::unused() };
    let parsed = songbird::input::Parsed { format: Box::new(feed), decoder: Box::new(decoder), track_id: 0, meta: no_metadata()?, supports_backseek: false };
    Ok(songbird::input::Input::Live(songbird::input::LiveInput::Parsed(parsed), None))
}

/// songbird wants the metadata a probe found; there is no other way to make an empty one than
/// probing something that has none (a WAV header and one sample).
fn no_metadata() -> Result<symphonia::core::probe::ProbedMetadata, String> {
    let mut wav = Vec::with_capacity(48);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&40u32.to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
    wav.extend_from_slice(&(SAMPLE_RATE * 2).to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&2u32.to_le_bytes());
    wav.extend_from_slice(&[0, 0]);
    let source = MediaSourceStream::new(Box::new(std::io::Cursor::new(wav)), Default::default());
    symphonia::default::get_probe()
        .format(&Default::default(), source, &Default::default(), &Default::default())
        .map(|probed| probed.metadata)
        .map_err(|e| e.to_string())
}

/// The decoder songbird asks for with a parsed input. Every frame the feed hands it is a 20 ms
/// Opus frame that songbird sends as it is, so it never decodes; this stands in for libopus
/// (which would cost a decoder's state per player) and decodes nothing, should it be asked.
struct Undecoded {
    params: CodecParameters,
    silence: symphonia::core::audio::AudioBuffer<f32>,
}

impl symphonia::core::codecs::Decoder for Undecoded {
    fn try_new(params: &CodecParameters, _: &symphonia::core::codecs::DecoderOptions) -> symphonia::core::errors::Result<Self> {
        Ok(Self { params: params.clone(), silence: symphonia::core::audio::AudioBuffer::unused() })
    }

    fn supported_codecs() -> &'static [symphonia::core::codecs::CodecDescriptor] {
        &[]
    }

    fn reset(&mut self) {}

    fn codec_params(&self) -> &CodecParameters {
        &self.params
    }

    fn decode(&mut self, _: &Packet) -> symphonia::core::errors::Result<symphonia::core::audio::AudioBufferRef<'_>> {
        Err(SymError::Unsupported("the feed's frames are sent as they are"))
    }

    fn finalize(&mut self) -> symphonia::core::codecs::FinalizeResult {
        Default::default()
    }

    fn last_decoded(&self) -> symphonia::core::audio::AudioBufferRef<'_> {
        symphonia::core::audio::AsAudioBufferRef::as_audio_buffer_ref(&self.silence)
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        // songbird dropped the track (stopped, replaced, player destroyed): stop the decoder.
        self.state.lock().unwrap_or_else(|e| e.into_inner()).buffer.stop();
    }
}
