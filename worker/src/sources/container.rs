//! Recognising a container from its first bytes, before any decoder sees them.

/// Containers Caldera can probe, with Lavaplayer's probe names (stored in encoded tracks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Mp3,
    Flac,
    Wav,
    Ogg,
    Mp4,
    Matroska,
    Adts,
    M3u,
    Pls,
    /// An HLS stream (known from the playlist's text, not from the first bytes).
    Hls,
}

impl Container {
    /// The probe name written into encoded tracks, as Lavaplayer's container probes name themselves.
    pub fn probe_name(self) -> &'static str {
        match self {
            Container::Mp3 => "mp3",
            Container::Flac => "flac",
            Container::Wav => "wav",
            Container::Ogg => "ogg",
            Container::Mp4 => "mp4",
            Container::Matroska => "matroska/webm",
            Container::Adts => "adts",
            Container::M3u => "m3u",
            Container::Pls => "pls",
            // As Lavaplayer names an HLS track of its http source.
            Container::Hls => "m3u|hls-outer",
        }
    }

    /// Reads a probe name back (from an encoded track).
    pub fn from_probe_name(name: &str) -> Option<Self> {
        // Lavaplayer may append parameters after '|'.
        let name = name.split('|').next()?;
        [
            Container::Mp3,
            Container::Flac,
            Container::Wav,
            Container::Ogg,
            Container::Mp4,
            Container::Matroska,
            Container::Adts,
        ]
        .into_iter()
        .find(|c| c.probe_name() == name)
    }

    /// A file extension symphonia can use as a hint.
    pub fn extension(self) -> &'static str {
        match self {
            Container::Mp3 => "mp3",
            Container::Flac => "flac",
            Container::Wav => "wav",
            Container::Ogg => "ogg",
            Container::Mp4 => "m4a",
            Container::Matroska => "webm",
            Container::Adts => "aac",
            Container::M3u => "m3u",
            Container::Pls => "pls",
            Container::Hls => "m3u8",
        }
    }

    pub fn is_playlist(self) -> bool {
        matches!(self, Container::M3u | Container::Pls)
    }
}

/// Detects the container from the first bytes (64 KiB is plenty).
pub fn detect(head: &[u8]) -> Option<Container> {
    if head.starts_with(b"fLaC") {
        return Some(Container::Flac);
    }
    if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WAVE" {
        return Some(Container::Wav);
    }
    if head.starts_with(b"OggS") {
        return Some(Container::Ogg);
    }
    if head.len() >= 8 && &head[4..8] == b"ftyp" {
        return Some(Container::Mp4);
    }
    if head.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        return Some(Container::Matroska);
    }
    if head.starts_with(b"ID3") {
        // An ID3v2 tag: skip it and look at what follows.
        if let Some(after) = id3_len(head) {
            if let Some(rest) = head.get(after..) {
                if let Some(c) = mpeg_sync(rest) {
                    return Some(c);
                }
            }
        }
        // The tag is longer than what we have: ID3 in front almost always means MP3.
        return Some(Container::Mp3);
    }
    if let Some(c) = mpeg_sync(head) {
        return Some(c);
    }
    detect_playlist(head)
}

/// The length of the ID3v2 tag `bytes` start with (header, synchsafe size, footer), if they do.
pub fn id3_len(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 10 || !bytes.starts_with(b"ID3") {
        return None;
    }
    let size = bytes[6..10].iter().fold(0usize, |acc, b| (acc << 7) | (*b as usize & 0x7F));
    Some(10 + size + if bytes[5] & 0x10 != 0 { 10 } else { 0 })
}

/// MPEG audio (layer III → MP3) or ADTS AAC: two consecutive valid frame headers within the
/// first 8 KiB. A stream joined mid-way starts at an arbitrary byte, so the sync is searched for.
fn mpeg_sync(bytes: &[u8]) -> Option<Container> {
    let window = bytes.len().min(8 * 1024);
    (0..window).find_map(|i| {
        let (container, len) = frame_at(&bytes[i..])?;
        let (next, _) = frame_at(bytes.get(i + len..)?)?;
        (next == container).then_some(container)
    })
}

/// The container and length of a frame whose header starts at `b[0]`.
fn frame_at(b: &[u8]) -> Option<(Container, usize)> {
    let h = b.get(..6)?;
    if h[0] != 0xFF || h[1] & 0xE0 != 0xE0 {
        return None;
    }
    let layer = (h[1] >> 1) & 0b11;
    if layer == 0b00 && h[1] & 0xF0 == 0xF0 {
        // ADTS: 13-bit frame length including the header.
        let len = ((h[3] as usize & 0b11) << 11) | ((h[4] as usize) << 3) | (h[5] as usize >> 5);
        return (len >= 7).then_some((Container::Adts, len));
    }
    let version = (h[1] >> 3) & 0b11; // 00 = 2.5, 10 = 2, 11 = 1
    if layer != 0b01 || version == 0b01 {
        return None;
    }
    let bitrate_index = (h[2] >> 4) as usize;
    let rate_index = ((h[2] >> 2) & 0b11) as usize;
    if bitrate_index == 0 || bitrate_index == 15 || rate_index == 3 {
        return None;
    }
    const V1: [u32; 15] = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320];
    const V2: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    let (kbps, rate, factor) = match version {
        0b11 => (V1[bitrate_index], [44100, 48000, 32000][rate_index], 144),
        0b10 => (V2[bitrate_index], [22050, 24000, 16000][rate_index], 72),
        _ => (V2[bitrate_index], [11025, 12000, 8000][rate_index], 72),
    };
    let padding = ((h[2] >> 1) & 1) as u32;
    let len = (factor * kbps * 1000 / rate + padding) as usize;
    Some((Container::Mp3, len))
}

fn detect_playlist(head: &[u8]) -> Option<Container> {
    let text = std::str::from_utf8(head).ok().or_else(|| {
        // The head may cut a multi-byte character at its end.
        let cut = head.len().saturating_sub(3);
        std::str::from_utf8(&head[..cut]).ok()
    })?;
    let text = text.trim_start_matches('\u{feff}').trim_start();
    if text.starts_with("#EXTM3U") {
        return Some(Container::M3u);
    }
    if text.len() >= 10 && text[..10].eq_ignore_ascii_case("[playlist]") {
        return Some(Container::Pls);
    }
    // A bare M3U: lines of URLs and comments, nothing binary.
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next()?;
    let is_entry = |l: &str| l.starts_with('#') || l.starts_with("http://") || l.starts_with("https://");
    if (first.starts_with("http://") || first.starts_with("https://")) && lines.take(50).all(is_entry) {
        return Some(Container::M3u);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes() {
        assert_eq!(detect(b"fLaC\0\0\0\x22"), Some(Container::Flac));
        assert_eq!(detect(b"RIFF\x24\0\0\0WAVEfmt "), Some(Container::Wav));
        assert_eq!(detect(b"OggS\0\x02"), Some(Container::Ogg));
        assert_eq!(detect(b"\0\0\0\x20ftypM4A "), Some(Container::Mp4));
        assert_eq!(detect(&[0x1A, 0x45, 0xDF, 0xA3, 0x9F]), Some(Container::Matroska));
        // Two MPEG-1 layer III frames (128 kbit/s, 44.1 kHz: 417 bytes each), after junk.
        let mut mp3 = vec![0x12, 0xFF, 0x00];
        for _ in 0..2 {
            let mut frame = vec![0u8; 417];
            frame[..4].copy_from_slice(&[0xFF, 0xFB, 0x90, 0x64]);
            mp3.extend(frame);
        }
        assert_eq!(detect(&mp3), Some(Container::Mp3));
        // A single header with nothing valid after it is not enough.
        assert_eq!(detect(&mp3[..400]), None);
        let mut adts = Vec::new();
        for _ in 0..2 {
            let mut frame = vec![0u8; 100];
            frame[..6].copy_from_slice(&[0xFF, 0xF1, 0x50, 0x80, 0x0C, 0x80]);
            adts.extend(frame);
        }
        assert_eq!(detect(&adts), Some(Container::Adts));
        let mut tagged = b"ID3\x03\0\0\0\0\0\x05hello".to_vec();
        tagged.extend(&mp3[3..]);
        assert_eq!(detect(&tagged), Some(Container::Mp3));
        assert_eq!(detect(b"#EXTM3U\n#EXTINF:-1,Radio\nhttp://x/y\n"), Some(Container::M3u));
        assert_eq!(detect(b"\xEF\xBB\xBF[Playlist]\nFile1=http://x\n"), Some(Container::Pls));
        assert_eq!(detect(b"http://a/b.mp3\nhttps://c/d.ogg\n"), Some(Container::M3u));
        assert_eq!(detect(b"<html><body>hi</body></html>"), None);
        assert_eq!(detect(b""), None);
        assert_eq!(detect(&[0xFF, 0x00, 0x12]), None);
    }

    #[test]
    fn probe_names_round_trip() {
        for c in [Container::Mp3, Container::Flac, Container::Wav, Container::Ogg, Container::Mp4, Container::Matroska, Container::Adts] {
            assert_eq!(Container::from_probe_name(c.probe_name()), Some(c));
        }
        assert_eq!(Container::from_probe_name("mp3|extra"), Some(Container::Mp3));
        assert_eq!(Container::from_probe_name("nope"), None);
    }
}
