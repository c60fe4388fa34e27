//! Reading a media file's duration and tags with symphonia, defensively: the bytes are hostile.

use super::container::Container;
use super::LoadFailure;
use symphonia::core::codecs::CODEC_TYPE_NULL;
use symphonia::core::formats::{FormatOptions, FormatReader, SeekMode, SeekTo, Track};
use symphonia::core::io::{MediaSource, MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::{MetadataOptions, MetadataRevision, StandardTagKey};
use symphonia::core::probe::Hint;
use symphonia::core::units::Time;

/// What probing found out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probed {
    /// Milliseconds; `None` when unknown (streams).
    pub length_ms: Option<u64>,
    pub title: Option<String>,
    pub author: Option<String>,
    pub isrc: Option<String>,
}

/// Runs a demuxer on untrusted bytes: a panic inside it (symphonia's Matroska reader panics on
/// a file cut short, which fuzzing found) is a failure of this file, not of the worker.
fn guarded<T>(container: Container, f: impl FnOnce() -> Result<T, LoadFailure>) -> Result<T, LoadFailure> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
        Err(LoadFailure::suspicious("The file is truncated or corrupt.", format!("{} container: the demuxer failed: {why}", container.probe_name())))
    })
}

/// Opens a symphonia reader for a detected container.
pub fn open_format(source: Box<dyn MediaSource>, container: Container) -> Result<(Box<dyn FormatReader>, Probed), LoadFailure> {
    guarded(container, || open_format_unguarded(source, container))
}

fn open_format_unguarded(source: Box<dyn MediaSource>, container: Container) -> Result<(Box<dyn FormatReader>, Probed), LoadFailure> {
    let mss = MediaSourceStream::new(source, MediaSourceStreamOptions::default());
    let mut hint = Hint::new();
    hint.with_extension(container.extension());
    let mut probed = symphonia::default::get_probe()
        .format(&hint, mss, &FormatOptions { enable_gapless: true, ..Default::default() }, &MetadataOptions::default())
        .map_err(|e| LoadFailure::suspicious("The file could not be read.", format!("{} container: {e}", container.probe_name())))?;
    let mut tags = Probed::default();
    if let Some(rev) = probed.metadata.get().as_ref().and_then(|m| m.current().cloned()) {
        apply_tags(&mut tags, &rev);
    }
    if let Some(rev) = probed.format.metadata().current() {
        apply_tags(&mut tags, rev);
    }
    Ok((probed.format, tags))
}

/// The first track with a codec (video containers may list others first).
pub fn audio_track(format: &dyn FormatReader, container: Container) -> Result<Track, LoadFailure> {
    format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .cloned()
        .ok_or_else(|| LoadFailure::common("No supported audio tracks present in the file.", container.probe_name().to_string()))
}

/// Probes a file (not a stream): duration from the header, else by walking its packets, then a
/// check that the end of the file is really there.
pub fn probe_file(source: Box<dyn MediaSource>, container: Container) -> Result<Probed, LoadFailure> {
    guarded(container, || probe_file_unguarded(source, container))
}

fn probe_file_unguarded(source: Box<dyn MediaSource>, container: Container) -> Result<Probed, LoadFailure> {
    let (mut format, mut probed) = open_format_unguarded(source, container)?;
    let track = audio_track(format.as_ref(), container)?;
    let params = &track.codec_params;
    let time_base = params.time_base.or_else(|| params.sample_rate.map(|r| symphonia::core::units::TimeBase::new(1, r)));
    let Some(time_base) = time_base else {
        return Err(LoadFailure::suspicious("The file could not be read.", "audio track has no sample rate or time base".into()));
    };
    let declared = params.n_frames.map(|n| time_ms(time_base.calc_time(n)));
    let length_ms = match declared {
        Some(ms) => {
            check_end_is_present(format.as_mut(), track.id, ms)?;
            ms
        }
        None => {
            // No duration in the header: count it by walking every packet of the track.
            let mut ts_end = 0u64;
            loop {
                match format.next_packet() {
                    Ok(p) if p.track_id() == track.id => ts_end = ts_end.max(p.ts() + p.dur()),
                    Ok(_) => {}
                    Err(symphonia::core::errors::Error::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(LoadFailure::suspicious("The file could not be read.", format!("while measuring its length: {e}"))),
                }
            }
            time_ms(time_base.calc_time(ts_end))
        }
    };
    if length_ms == 0 {
        return Err(LoadFailure::common("The file contains no audio.", "its length is zero".into()));
    }
    probed.length_ms = Some(length_ms);
    Ok(probed)
}

/// Reads tags of a stream's first bytes (no seeking).
pub fn probe_stream(source: Box<dyn MediaSource>, container: Container) -> Result<Probed, LoadFailure> {
    let (format, probed) = open_format(source, container)?;
    audio_track(format.as_ref(), container)?;
    Ok(probed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (sources/fuzz.rs): a WebM file cut short made symphonia's Matroska
    /// reader panic ("EBML header must be read before calling this function").
    #[test]
    fn a_truncated_webm_is_a_clean_error() {
        let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/sine440.webm")).unwrap();
        for cut in [bytes.len() / 2, bytes.len() / 2 + 1000, bytes.len() - 100] {
            let source = Box::new(std::io::Cursor::new(bytes[..cut].to_vec()));
            match probe_file(source, Container::Matroska) {
                Ok(p) => assert!(p.length_ms.is_some()),
                Err(e) => assert!(!e.message.is_empty()),
            }
        }
    }
}

/// A header can claim more audio than the file holds (a cut-off download): seek close to the
/// claimed end and require a packet there.
fn check_end_is_present(format: &mut dyn FormatReader, track_id: u32, length_ms: u64) -> Result<(), LoadFailure> {
    if length_ms < 1500 {
        return Ok(());
    }
    let target = (length_ms - 1000) as f64 / 1000.0;
    let truncated = |why: String| LoadFailure::suspicious("The file is truncated or corrupt.", why);
    format
        .seek(SeekMode::Coarse, SeekTo::Time { time: Time::from(target), track_id: Some(track_id) })
        .map_err(|e| truncated(format!("seeking to {target:.1} s of {:.1} s failed: {e}", length_ms as f64 / 1000.0)))?;
    loop {
        match format.next_packet() {
            Ok(p) if p.track_id() == track_id => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(truncated(format!("no audio at {target:.1} s of {:.1} s: {e}", length_ms as f64 / 1000.0))),
        }
    }
}

fn time_ms(t: Time) -> u64 {
    t.seconds * 1000 + (t.frac * 1000.0).round() as u64
}

fn apply_tags(out: &mut Probed, rev: &MetadataRevision) {
    for tag in rev.tags() {
        let value = tag.value.to_string();
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        let slot = match tag.std_key {
            Some(StandardTagKey::TrackTitle) => &mut out.title,
            Some(StandardTagKey::Artist) => &mut out.author,
            Some(StandardTagKey::AlbumArtist) if out.author.is_none() => &mut out.author,
            Some(StandardTagKey::IdentIsrc) => &mut out.isrc,
            _ => continue,
        };
        // Tags are hostile input too: keep them to a sane size.
        *slot = Some(value.chars().take(1000).collect());
    }
}
