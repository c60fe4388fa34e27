//! What songbird reads: 20 ms frames of 48 kHz stereo f32, taken from the ring on the audio
//! clock. Never blocks: late data is silence, counted as a nulled frame (lavalink-internals §4.4).
//! Volume is applied here, so a change is heard on the next frame.

use super::ring::{Ring, CHANNELS, FRAME_SAMPLES, SAMPLE_RATE};
use super::Internal;
use caldera_protocol::EndReason;
use std::io::{self, Read, Seek, SeekFrom};
use crate::dsp::Processor;
use caldera_protocol::Filters;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::UnboundedSender;

/// Frame counters of a player, shared with its task.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU32,
    pub nulled: AtomicU32,
}

/// Controls shared between a player task and its pipe.
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
        Self {
            volume: AtomicU32::new(volume as u32),
            end_frames: AtomicU64::new(u64::MAX),
            filters: Mutex::default(),
            filters_version: AtomicU64::new(0),
        }
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

/// What a frame's fill produced.
enum Fill {
    /// `n` frames of audio (the rest silence); `primed` as in [`super::ring::RingState`].
    Frames { n: usize, primed: bool },
    End { reason: EndReason, error: Option<caldera_protocol::TrackException> },
}

pub struct Pipe {
    ring: Arc<Ring>,
    controls: Arc<Controls>,
    counters: Arc<Counters>,
    events: UnboundedSender<Internal>,
    track_seq: u64,
    stuck_after_frames: u32,
    /// Bytes of the current frame not yet handed out.
    frame: Vec<u8>,
    offset: usize,
    samples: Vec<f32>,
    /// Scratch for samples taken from the ring.
    input: Vec<f32>,
    gain: f32,
    dsp: Processor,
    /// The filters version `dsp` was built from (`u64::MAX`: none yet).
    dsp_version: u64,
    consecutive_nulled: u32,
    stuck_reported: bool,
    done: bool,
}

impl Pipe {
    pub fn new(
        ring: Arc<Ring>,
        controls: Arc<Controls>,
        counters: Arc<Counters>,
        events: UnboundedSender<Internal>,
        track_seq: u64,
        stuck_threshold_ms: u64,
    ) -> Self {
        let gain = controls.volume.load(Ordering::Relaxed) as f32 / 100.0;
        Self {
            ring,
            controls,
            counters,
            events,
            track_seq,
            stuck_after_frames: (stuck_threshold_ms / 20).max(1) as u32,
            frame: Vec::with_capacity(FRAME_SAMPLES * CHANNELS * 4),
            offset: 0,
            samples: vec![0.0; FRAME_SAMPLES * CHANNELS],
            input: Vec::with_capacity(FRAME_SAMPLES * CHANNELS),
            gain,
            dsp: Processor::default(),
            dsp_version: u64::MAX,
            consecutive_nulled: 0,
            stuck_reported: false,
            done: false,
        }
    }

    /// Produces the next frame into `self.frame`; `false` when the track is over.
    fn next_frame(&mut self) -> bool {
        if self.done {
            return false;
        }
        self.refresh_filters();
        let filled = if self.dsp.timescale().is_some() { self.fill_through_timescale() } else { self.fill_direct() };
        let (n, primed) = match filled {
            Fill::Frames { n, primed } => (n, primed),
            Fill::End { reason, error } => return self.finish(reason, error),
        };
        if n > 0 {
            self.counters.sent.fetch_add(1, Ordering::Relaxed);
            self.consecutive_nulled = 0;
            self.stuck_reported = false;
        } else {
            // Silence before the first audio (start, seek) is expected for frameStats, but counts
            // towards TrackStuck: a source that never yields audio is stuck from its start.
            if primed {
                self.counters.nulled.fetch_add(1, Ordering::Relaxed);
            }
            self.consecutive_nulled += 1;
        }
        if self.consecutive_nulled >= self.stuck_after_frames && !self.stuck_reported {
            self.stuck_reported = true;
            let _ = self.events.send(Internal::Stuck { track_seq: self.track_seq });
        }
        self.apply_volume();
        self.frame.clear();
        for s in &self.samples {
            self.frame.extend_from_slice(&s.to_le_bytes());
        }
        self.offset = 0;
        true
    }

    /// Takes up to `max` interleaved samples from the ring (never past the end marker) into
    /// `out`; `Err` when the track is over.
    fn take(&mut self, max: usize, out: &mut Vec<f32>) -> Result<bool, Fill> {
        let mut state = self.ring.lock();
        let end = self.controls.end_frames.load(Ordering::Relaxed);
        if state.position_frames >= end {
            return Err(Fill::End { reason: EndReason::Finished, error: None });
        }
        let until_end = ((end - state.position_frames) as usize).saturating_mul(CHANNELS);
        let n = max.min(state.samples.len()).min(until_end);
        if n == 0 && state.ended {
            let error = state.error.take();
            let reason = if error.is_some() { EndReason::LoadFailed } else { EndReason::Finished };
            return Err(Fill::End { reason, error });
        }
        out.clear();
        out.extend(state.samples.drain(..n));
        state.position_frames += (n / CHANNELS) as u64;
        // Before the first audio arrives (start, seek) silence is expected, not a loss.
        let primed = state.primed;
        drop(state);
        self.ring.notify();
        Ok(primed)
    }

    /// One frame straight from the ring through the filters.
    fn fill_direct(&mut self) -> Fill {
        let mut input = std::mem::take(&mut self.input);
        let primed = match self.take(FRAME_SAMPLES * CHANNELS, &mut input) {
            Ok(p) => p,
            Err(end) => return end,
        };
        let n = input.len();
        self.samples[..n].copy_from_slice(&input);
        self.samples[n..].fill(0.0);
        self.input = input;
        self.dsp.process(&mut self.samples);
        Fill::Frames { n: n / CHANNELS, primed }
    }

    /// One frame of timescale output: input is pulled (through the filters before timescale)
    /// until a frame is ready; position stays in source time because it counts what is pulled.
    fn fill_through_timescale(&mut self) -> Fill {
        let mut input = std::mem::take(&mut self.input);
        let mut primed = true;
        // Bounded: at most 40 frames of input (timescale is clamped to 20×) per output frame.
        for _ in 0..40 {
            if self.dsp.timescale().is_some_and(|t| t.available() >= FRAME_SAMPLES) {
                break;
            }
            match self.take(FRAME_SAMPLES * CHANNELS, &mut input) {
                Ok(p) => primed = p,
                Err(end) => {
                    if self.dsp.timescale().is_some_and(|t| t.available() > 0) {
                        break;
                    }
                    self.input = input;
                    return end;
                }
            }
            if input.is_empty() {
                break;
            }
            self.dsp.before(&mut input);
            if let Some(t) = self.dsp.timescale() {
                t.push(&input);
            }
        }
        self.input = input;
        let n = self.dsp.timescale().map(|t| t.pop(&mut self.samples)).unwrap_or(0);
        self.samples[n * CHANNELS..].fill(0.0);
        self.dsp.after(&mut self.samples, true);
        Fill::Frames { n, primed }
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
    fn apply_volume(&mut self) {
        let target = self.controls.volume.load(Ordering::Relaxed) as f32 / 100.0;
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

    fn finish(&mut self, reason: EndReason, error: Option<caldera_protocol::TrackException>) -> bool {
        self.done = true;
        let _ = self.events.send(Internal::Ended { track_seq: self.track_seq, reason, error });
        false
    }
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.offset >= self.frame.len() && !self.next_frame() {
            return Ok(0);
        }
        let n = buf.len().min(self.frame.len() - self.offset);
        buf[..n].copy_from_slice(&self.frame[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

impl Seek for Pipe {
    fn seek(&mut self, _: SeekFrom) -> io::Result<u64> {
        // Seeking is done by the decoder (see Ring::request_seek), never by songbird.
        Err(io::Error::new(io::ErrorKind::Unsupported, "the audio pipe cannot seek"))
    }
}

impl symphonia::core::io::MediaSource for Pipe {
    fn is_seekable(&self) -> bool {
        false
    }

    fn byte_len(&self) -> Option<u64> {
        None
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // songbird dropped the track (stopped, replaced, player destroyed): stop the decoder.
        self.ring.stop();
    }
}
