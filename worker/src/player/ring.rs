//! The buffer between a track's decoder thread and the audio clock: interleaved 48 kHz stereo
//! f32 samples, with the decoder's end/error state and the track position.
//!
//! The decoder blocks when the buffer is full; the audio clock never blocks (it takes what is
//! there and fills the rest with silence).

use caldera_protocol::TrackException;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub const SAMPLE_RATE: u32 = 48_000;
pub const CHANNELS: usize = 2;
/// Frames (per channel) in one 20 ms packet.
pub const FRAME_SAMPLES: usize = 960;
/// How far the decoder reads ahead: network hiccups shorter than this are never heard.
pub const CAPACITY_FRAMES: usize = SAMPLE_RATE as usize; // 1 s

#[derive(Debug, Default)]
pub struct RingState {
    pub samples: VecDeque<f32>,
    /// The decoder has nothing more to give.
    pub ended: bool,
    /// Why the decoder stopped early, if it did.
    pub error: Option<TrackException>,
    /// Position (in 48 kHz frames) of the next sample the audio clock takes.
    pub position_frames: u64,
    /// Seek requested by the player, in milliseconds; the decoder takes it.
    pub seek_to_ms: Option<u64>,
    /// Whether any audio has arrived since the start or the last seek.
    pub primed: bool,
}

#[derive(Debug, Default)]
pub struct Ring {
    state: Mutex<RingState>,
    /// Signalled when space frees up or a seek/stop is requested.
    changed: Condvar,
    stop: AtomicBool,
}

impl Ring {
    pub fn lock(&self) -> MutexGuard<'_, RingState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn notify(&self) {
        self.changed.notify_all();
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.notify();
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    pub fn request_seek(&self, ms: u64) {
        self.lock().seek_to_ms = Some(ms);
        self.notify();
    }

    /// Waits (briefly) for space, a seek or a stop. Returns the guard.
    pub fn wait<'a>(&self, guard: MutexGuard<'a, RingState>) -> MutexGuard<'a, RingState> {
        self.changed.wait_timeout(guard, Duration::from_millis(50)).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0)
    }
}
