//! HLS (RFC 8216) over the worker's net layer: a master playlist is resolved to one media
//! playlist, whose segments a task on the worker's runtime fetches ahead of the decoder
//! (decrypting AES-128, demuxing MPEG-TS, keeping fMP4 init sections) and hands over whole.
//! [`HlsFormat`] is the symphonia reader the decoder sees: each segment is read by a reader of
//! its own (ADTS, MPEG audio or fragmented MP4) and its packets are put on one timeline, so
//! positions run on across segment boundaries and discontinuities, and a seek (VOD) starts the
//! fetching over at the segment holding the target.
//!
//! Live playlists start near the live edge (three target durations from the end), are reloaded
//! every target duration (half of it when nothing changed), and followed by media sequence
//! number; one that stops advancing ends the track.

mod fetch;
pub(super) mod playlist;
pub(super) mod ts;

pub use playlist::is_hls;

use super::LoadFailure;
use crate::net::{Gauge, Net, Request};
use fetch::{Fetched, Kind, Shared};
use std::sync::Arc;
use std::time::{Duration, Instant};
use symphonia::core::codecs::{CodecParameters, CODEC_TYPE_NULL};
use symphonia::core::errors::{Error as SymError, SeekErrorKind};
use symphonia::core::formats::{Cue, FormatOptions, FormatReader, Packet, SeekMode, SeekTo, SeekedTo, Track};
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::{Metadata, MetadataLog};
use symphonia::core::units::TimeBase;

/// Largest playlist read.
pub const MAX_PLAYLIST_BYTES: usize = 4 * 1024 * 1024;
/// The timeline's unit: microseconds.
const TIME_BASE: TimeBase = TimeBase { numer: 1, denom: 1_000_000 };
/// Consecutive unreadable segments tolerated before the track is given up.
const MAX_BAD_SEGMENTS: u32 = 3;
/// How long opening waits for the first segment when the caller has no deadline.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// An HLS stream as a symphonia format reader. Dropping it stops its fetching.
pub struct HlsFormat {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    tracks: Vec<Track>,
    cues: Vec<Cue>,
    metadata: MetadataLog,
    /// VOD: where each segment starts on the timeline (µs), by EXTINF. `None` for live streams.
    starts: Option<Vec<u64>>,
    length_ms: Option<u64>,
    current: Option<SegmentReader>,
    /// Where the next segment starts on the timeline.
    next_start: u64,
    bad_segments: u32,
}

/// The reader of one segment, and where its packets go on the timeline.
struct SegmentReader {
    reader: Box<dyn FormatReader>,
    track_id: u32,
    time_base: TimeBase,
    params: CodecParameters,
    start: u64,
    first_ts: Option<u64>,
    end: u64,
}

impl HlsFormat {
    /// Opens the stream of a playlist already fetched from `url` (a master or media playlist):
    /// fetches the media playlist a master points to, starts the segment fetching and waits for
    /// the first segment to learn the codec. Every request is made like `like` (its path,
    /// headers and egress). Blocking.
    pub fn open(url: &str, text: &str, net: &Net, deadline: Option<Instant>, like: &Request) -> Result<Self, LoadFailure> {
        let deadline = deadline.unwrap_or_else(|| Instant::now() + OPEN_TIMEOUT);
        let base = url::Url::parse(url).map_err(|e| LoadFailure::common("Not a valid URL.", e.to_string()))?;
        let (media_url, media) = match playlist::parse(text, &base)? {
            playlist::Playlist::Media(m) => (url.to_string(), m),
            playlist::Playlist::Master(master) => {
                let chosen = playlist::choose(&master).to_string();
                let request = Request { url: chosen.clone(), from: None, to: None, deadline: Some(deadline), ..like.clone() };
                let (bytes, final_url) = net.runtime().block_on(net.fetch(&request, MAX_PLAYLIST_BYTES))?;
                let base = url::Url::parse(&final_url).map_err(|e| LoadFailure::common("Not a valid URL.", e.to_string()))?;
                match playlist::parse(&String::from_utf8_lossy(&bytes), &base)? {
                    playlist::Playlist::Media(m) => (final_url, m),
                    playlist::Playlist::Master(_) => {
                        return Err(LoadFailure::common("The HLS playlist is malformed.", format!("the variant {chosen} is a master playlist too")))
                    }
                }
            }
        };
        if media.segments.is_empty() && media.ended {
            return Err(LoadFailure::common("The HLS playlist is empty.", media_url));
        }
        let live = !media.ended;
        let (starts, length_ms) = if live {
            (None, None)
        } else {
            let mut at = 0.0;
            let starts = media.segments.iter().map(|s| {
                let start = (at * 1e6) as u64;
                at += s.duration;
                start
            });
            (Some(starts.collect()), Some(media.length_ms()))
        };
        let first = if live { playlist::live_start(&media) } else { 0 };
        let (shared, task) = fetch::start(net, like, media_url, media, first);
        let mut format = Self {
            shared,
            task,
            tracks: Vec::new(),
            cues: Vec::new(),
            metadata: MetadataLog::default(),
            starts,
            length_ms,
            current: None,
            next_start: 0,
            bad_segments: 0,
        };
        let segment = format.shared.wait_first(deadline)?;
        let reader = SegmentReader::open(segment, 0).map_err(|e| LoadFailure::common("Unknown file format.", format!("the first HLS segment: {e}")))?;
        format.tracks = vec![Track::new(0, format.timeline_params(&reader.params))];
        format.current = Some(reader);
        Ok(format)
    }

    pub fn is_live(&self) -> bool {
        self.starts.is_none()
    }

    /// The sum of the segments' durations (VOD).
    pub fn length_ms(&self) -> Option<u64> {
        self.length_ms
    }

    /// How many whole segments are ready for the decoder.
    pub fn gauge(&self) -> Gauge {
        self.shared.gauge.clone()
    }

    /// A segment's codec parameters on the timeline's time base.
    fn timeline_params(&self, params: &CodecParameters) -> CodecParameters {
        let mut p = params.clone();
        p.time_base = Some(TIME_BASE);
        p.n_frames = None;
        p.start_ts = 0;
        p
    }

    /// Opens the next segment, if one is ready. `Ok(None)` when the decoder must wait.
    fn next_segment(&mut self) -> symphonia::core::errors::Result<Option<SegmentReader>> {
        loop {
            let segment = match self.shared.take() {
                fetch::Take::Segment(s) => s,
                fetch::Take::Wait => return Ok(None),
                fetch::Take::End => return Err(SymError::IoError(std::io::ErrorKind::UnexpectedEof.into())),
                fetch::Take::Failed(f) => return Err(SymError::IoError(f.into_io())),
            };
            match SegmentReader::open(segment, self.next_start) {
                Ok(r) => return Ok(Some(r)),
                Err(e) => {
                    // Hostile or damaged: skip the segment, a few times.
                    self.shared.gauge.sub(1);
                    self.bad_segments += 1;
                    tracing::debug!(error = %e, "an HLS segment cannot be read; skipping it");
                    if self.bad_segments > MAX_BAD_SEGMENTS {
                        return Err(SymError::DecodeError("several HLS segments in a row cannot be read"));
                    }
                }
            }
        }
    }
}

impl SegmentReader {
    fn open(segment: Fetched, start: u64) -> Result<Self, SymError> {
        let options = FormatOptions { enable_gapless: false, ..Default::default() };
        let source = |bytes: Vec<u8>| MediaSourceStream::new(Box::new(std::io::Cursor::new(bytes)), MediaSourceStreamOptions::default());
        let reader: Box<dyn FormatReader> = match segment.kind {
            Kind::Adts => Box::new(symphonia::default::formats::AdtsReader::try_new(source(segment.data), &options)?),
            Kind::Mpeg => Box::new(symphonia::default::formats::MpaReader::try_new(source(segment.data), &options)?),
            Kind::Fmp4(init) => {
                let mut bytes = Vec::with_capacity(init.len() + segment.data.len());
                bytes.extend_from_slice(&init);
                bytes.extend_from_slice(&segment.data);
                Box::new(symphonia::default::formats::IsoMp4Reader::try_new(source(bytes), &options)?)
            }
        };
        let track = reader.tracks().iter().find(|t| t.codec_params.codec != CODEC_TYPE_NULL).ok_or(SymError::Unsupported("no audio track in the segment"))?;
        let (track_id, params) = (track.id, track.codec_params.clone());
        let time_base = params.time_base.or_else(|| params.sample_rate.map(|r| TimeBase::new(1, r))).ok_or(SymError::Unsupported("the segment's audio has no time base"))?;
        Ok(Self { track_id, reader, time_base, params, start, first_ts: None, end: start })
    }

    /// The segment's next packet on the timeline; `None` at its end.
    fn next(&mut self) -> Result<Option<Packet>, SymError> {
        loop {
            let packet = match self.reader.next_packet() {
                Ok(p) => p,
                Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            };
            if packet.track_id() != self.track_id {
                continue;
            }
            let first = *self.first_ts.get_or_insert(packet.ts());
            let ts = self.start + to_micros(self.time_base, packet.ts().saturating_sub(first));
            let dur = to_micros(self.time_base, packet.dur());
            self.end = self.end.max(ts + dur);
            return Ok(Some(Packet::new_from_boxed_slice(0, ts, dur, packet.data)));
        }
    }
}

fn to_micros(tb: TimeBase, ts: u64) -> u64 {
    let t = tb.calc_time(ts);
    t.seconds.saturating_mul(1_000_000).saturating_add((t.frac * 1e6).round() as u64)
}

/// Codec parameters that need a new decoder when they change.
fn same_stream(a: &CodecParameters, b: &CodecParameters) -> bool {
    a.codec == b.codec && a.sample_rate == b.sample_rate && a.channels == b.channels && a.extra_data == b.extra_data
}

impl FormatReader for HlsFormat {
    fn try_new(_: MediaSourceStream, _: &FormatOptions) -> symphonia::core::errors::Result<Self> {
        Err(SymError::Unsupported("HLS streams are opened from their playlist"))
    }

    fn cues(&self) -> &[Cue] {
        &self.cues
    }

    fn metadata(&mut self) -> Metadata<'_> {
        self.metadata.metadata()
    }

    fn seek(&mut self, _mode: SeekMode, to: SeekTo) -> symphonia::core::errors::Result<SeekedTo> {
        let Some(starts) = &self.starts else { return Err(SymError::SeekError(SeekErrorKind::Unseekable)) };
        let target = match to {
            SeekTo::Time { time, .. } => time.seconds.saturating_mul(1_000_000).saturating_add((time.frac * 1e6) as u64),
            SeekTo::TimeStamp { ts, .. } => ts,
        };
        // The segment holding the target (the last one for a target past the end).
        let index = starts.partition_point(|s| *s <= target).saturating_sub(1);
        let start = starts.get(index).copied().unwrap_or(0);
        self.shared.restart(index);
        self.current = None;
        self.next_start = start;
        self.bad_segments = 0;
        Ok(SeekedTo { track_id: 0, required_ts: target, actual_ts: start })
    }

    fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    fn next_packet(&mut self) -> symphonia::core::errors::Result<Packet> {
        loop {
            if self.current.is_none() {
                let Some(reader) = self.next_segment()? else {
                    // Nothing fetched yet: the decoder checks the gauge and comes back.
                    return Err(SymError::IoError(std::io::ErrorKind::WouldBlock.into()));
                };
                let changed = self.tracks.first().is_some_and(|t| !same_stream(&t.codec_params, &reader.params));
                if changed {
                    // A discontinuity to another encoding: the decoder is made anew.
                    self.tracks = vec![Track::new(0, self.timeline_params(&reader.params))];
                    self.current = Some(reader);
                    return Err(SymError::ResetRequired);
                }
                self.current = Some(reader);
            }
            let current = self.current.as_mut().expect("just set");
            match current.next() {
                Ok(Some(packet)) => {
                    self.bad_segments = 0;
                    return Ok(packet);
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "an HLS segment ends early"),
            }
            // The segment is done: the next one starts where it ended.
            self.next_start = current.end;
            self.current = None;
            self.shared.gauge.sub(1);
        }
    }

    fn into_inner(self: Box<Self>) -> MediaSourceStream {
        MediaSourceStream::new(Box::new(std::io::Cursor::new(Vec::new())), MediaSourceStreamOptions::default())
    }
}

impl Drop for HlsFormat {
    fn drop(&mut self) {
        self.task.abort();
    }
}
