//! Lavalink's filters as DSP in the worker (lavalink-internals §1.7), applied on the audio
//! clock so a change is heard on the next frame. Order (§1.7.2): lowPass → channelMix →
//! rotation → distortion → vibrato → tremolo → timescale → karaoke → equalizer → volume. Filters at their
//! defaults are not built at all (no cost, bit-exact passthrough). A change crossfades from the
//! old chain to the new one across a frame, so it never clicks.

mod filters;
pub mod timescale;

pub use filters::{DistortionFilter, Filter, EQ_BANDS, SAMPLE_RATE};

use caldera_protocol::Filters;
use filters::*;

/// A run of per-frame filters.
pub struct Chain {
    stages: Vec<Box<dyn Filter>>,
}

impl Chain {
    /// The filters before timescale (lowPass … tremolo); `None` when none is enabled.
    pub fn before_timescale(f: &Filters) -> Option<Chain> {
        let mut stages: Vec<Box<dyn Filter>> = Vec::new();
        if let Some(s) = f.low_pass.filter(|s| *s > 1.0) {
            stages.push(Box::new(LowPass::new(s)));
        }
        if let Some(m) = f.channel_mix.filter(|m| *m != [1.0, 0.0, 0.0, 1.0]) {
            stages.push(Box::new(ChannelMix(m)));
        }
        if let Some(hz) = f.rotation.filter(|hz| *hz != 0.0) {
            stages.push(Box::new(Rotation::new(hz)));
        }
        if let Some(d) = f.distortion {
            let default = [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0];
            let values = [d.sin_offset, d.sin_scale, d.cos_offset, d.cos_scale, d.tan_offset, d.tan_scale, d.offset, d.scale];
            if values != default {
                stages.push(Box::new(DistortionFilter(d)));
            }
        }
        if let Some(v) = f.vibrato.filter(|v| v.depth != 0.0) {
            stages.push(Box::new(Vibrato::new(v)));
        }
        if let Some(t) = f.tremolo.filter(|t| t.depth != 0.0) {
            stages.push(Box::new(Tremolo::new(t)));
        }
        Self::of(stages)
    }

    /// The filters after timescale (karaoke, equalizer, volume).
    pub fn after_timescale(f: &Filters) -> Option<Chain> {
        let mut stages: Vec<Box<dyn Filter>> = Vec::new();
        if let Some(k) = f.karaoke {
            stages.push(Box::new(KaraokeFilter::new(k)));
        }
        if f.equalizer.iter().any(|(_, g)| *g != 0.0) {
            stages.push(Box::new(Equalizer::new(&f.equalizer)));
        }
        if let Some(v) = f.volume.filter(|v| *v != 1.0) {
            stages.push(Box::new(Volume(v)));
        }
        Self::of(stages)
    }

    fn of(stages: Vec<Box<dyn Filter>>) -> Option<Chain> {
        (!stages.is_empty()).then_some(Chain { stages })
    }

    pub fn process(&mut self, frames: &mut [f32]) {
        for s in &mut self.stages {
            s.process(frames);
        }
    }
}

/// A chain that crossfades from its previous version when it changes.
#[derive(Default)]
struct Stage {
    chain: Option<Chain>,
    /// The chain being replaced, faded out over the next frame.
    old: Option<Option<Chain>>,
    scratch: Vec<f32>,
}

impl Stage {
    fn is_active(&self) -> bool {
        self.chain.is_some() || self.old.as_ref().is_some_and(Option::is_some)
    }

    fn set(&mut self, new: Option<Chain>) {
        self.old = Some(std::mem::replace(&mut self.chain, new));
    }

    /// Whether this frame was touched.
    fn process(&mut self, frames: &mut [f32]) -> bool {
        if let Some(old) = self.old.take() {
            self.scratch.clear();
            self.scratch.extend_from_slice(frames);
            if let Some(mut c) = old {
                c.process(&mut self.scratch);
            }
            if let Some(c) = self.chain.as_mut() {
                c.process(frames);
            }
            let n = (frames.len() / 2).max(1) as f32;
            for (i, (new, old)) in frames.chunks_exact_mut(2).zip(self.scratch.chunks_exact(2)).enumerate() {
                let t = (i as f32 + 1.0) / n;
                for ch in 0..2 {
                    new[ch] = old[ch] * (1.0 - t) + new[ch] * t;
                }
            }
            true
        } else if let Some(c) = self.chain.as_mut() {
            c.process(frames);
            true
        } else {
            false
        }
    }
}

/// The whole chain of a player: per-frame filters before timescale, timescale, per-frame filters
/// after it, then a hard limit.
#[derive(Default)]
pub struct Processor {
    before: Stage,
    after: Stage,
    timescale: Option<timescale::Timescale>,
    timescale_settings: Option<caldera_protocol::Timescale>,
}

impl Processor {
    pub fn set(&mut self, filters: &Filters) {
        self.before.set(Chain::before_timescale(filters));
        self.after.set(Chain::after_timescale(filters));
        // A timescale whose settings did not change keeps its state (no glitch).
        if filters.timescale != self.timescale_settings {
            self.timescale_settings = filters.timescale;
            self.timescale = filters.timescale.and_then(|t| timescale::Timescale::new(t.speed, t.pitch, t.rate));
        }
    }

    /// Whether any filter would change the audio (a crossfade in progress included): when none
    /// would, a source's Opus frames can go out as they are.
    pub fn is_active(&self) -> bool {
        self.before.is_active() || self.after.is_active() || self.timescale.is_some()
    }

    /// The timescale stage, when enabled: the caller feeds it through [`Self::before`] and takes
    /// frames from it before [`Self::after`].
    pub fn timescale(&mut self) -> Option<&mut timescale::Timescale> {
        self.timescale.as_mut()
    }

    /// The filters before timescale, in place.
    pub fn before(&mut self, frames: &mut [f32]) {
        self.before.process(frames);
    }

    /// The filters after timescale, in place, then the hard limit: hostile values (NaN, inf,
    /// runaway gain) never reach the encoder. `touched` says whether anything ran before.
    pub fn after(&mut self, frames: &mut [f32], touched: bool) {
        if !(self.after.process(frames) || touched || self.timescale.is_some()) {
            return;
        }
        for s in frames {
            *s = if s.is_finite() { s.clamp(-1.0, 1.0) } else { 0.0 };
        }
    }

    /// Per-frame processing when there is no timescale (bit-exact passthrough when no filter
    /// is enabled).
    pub fn process(&mut self, frames: &mut [f32]) {
        let touched = self.before.process(frames);
        self.after(frames, touched);
    }
}

#[cfg(test)]
mod tests;
