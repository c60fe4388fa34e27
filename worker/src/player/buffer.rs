//! What a track's decoder has ready for the audio clock: decoded 48 kHz stereo samples (16-bit,
//! half the size of floats), or — for an Opus source — the source's own Opus packets, which the
//! clock can send as they are. Also the track's position, its end and error, and a pending seek.
//!
//! The decoder (on the worker's decode pool) fills it up to its capacity; the audio clock takes
//! from it and never waits: what is not there yet is silence.

use caldera_protocol::TrackException;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

pub const SAMPLE_RATE: u32 = 48_000;
pub const CHANNELS: usize = 2;
/// Frames (per channel) in one 20 ms packet.
pub const FRAME_SAMPLES: usize = 960;

/// One Opus packet of the source.
#[derive(Debug, Clone)]
pub struct OpusPacket {
    pub data: Box<[u8]>,
    /// Its duration in 48 kHz frames.
    pub frames: u32,
    /// A 20 ms stereo frame, which Discord takes as it is.
    pub passable: bool,
}

/// The decoded audio or the source's packets.
#[derive(Debug)]
pub enum Content {
    /// Interleaved stereo at 48 kHz.
    Pcm(VecDeque<i16>),
    Opus(VecDeque<OpusPacket>),
}

impl Content {
    /// Buffered audio, in 48 kHz frames.
    pub fn frames(&self) -> usize {
        match self {
            Self::Pcm(s) => s.len() / CHANNELS,
            Self::Opus(p) => p.iter().map(|p| p.frames as usize).sum(),
        }
    }

    pub fn clear(&mut self) {
        match self {
            Self::Pcm(s) => s.clear(),
            Self::Opus(p) => p.clear(),
        }
    }
}

#[derive(Debug)]
pub struct BufferState {
    pub content: Content,
    /// The decoder has nothing more to give.
    pub ended: bool,
    /// Why the decoder stopped early, if it did.
    pub error: Option<TrackException>,
    /// Position (in 48 kHz frames) of the next audio the clock takes.
    pub position_frames: u64,
    /// Seek requested by the player, in milliseconds; the decoder takes it.
    pub seek_to_ms: Option<u64>,
    /// Whether any audio has arrived since the start or the last seek.
    pub primed: bool,
    /// How much the decoder keeps ready, in 48 kHz frames.
    pub capacity_frames: usize,
}

#[derive(Debug)]
pub struct TrackBuffer {
    state: Mutex<BufferState>,
    stop: AtomicBool,
}

impl TrackBuffer {
    pub fn new(capacity_frames: usize, start_ms: u64) -> Self {
        let state = BufferState {
            content: Content::Pcm(VecDeque::new()),
            ended: false,
            error: None,
            position_frames: start_ms * SAMPLE_RATE as u64 / 1000,
            seek_to_ms: None,
            primed: false,
            capacity_frames,
        };
        Self { state: Mutex::new(state), stop: AtomicBool::new(false) }
    }

    pub fn lock(&self) -> MutexGuard<'_, BufferState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The track is over for whoever fills this buffer (stopped, replaced, destroyed).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    pub fn request_seek(&self, ms: u64) {
        self.lock().seek_to_ms = Some(ms);
    }

    pub fn position_ms(&self) -> u64 {
        self.lock().position_frames * 1000 / SAMPLE_RATE as u64
    }

    /// The decoder failed or finished: whatever is buffered still plays, then the track ends.
    pub fn end(&self, error: Option<TrackException>) {
        let mut st = self.lock();
        st.ended = true;
        st.error = error;
    }
}
