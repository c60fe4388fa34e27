//! HLS playlists (RFC 8216): master playlists (variants and audio renditions) and media
//! playlists (segments, keys, init sections). Text from the network: every count, length and
//! duration is bounded, and only http(s) locations are accepted.

use crate::sources::LoadFailure;
use std::sync::Arc;

/// Most segments one media playlist may list (a day of 2-second segments).
pub const MAX_SEGMENTS: usize = 50_000;
/// Most variants or renditions one master playlist may list.
const MAX_VARIANTS: usize = 1_000;
/// Longest segment accepted (seconds); HLS segments are a few seconds long.
const MAX_SEGMENT_SECONDS: f64 = 3_600.0;

/// A playlist: a master playlist lists media playlists, a media playlist lists segments.
#[derive(Debug, Clone, PartialEq)]
pub enum Playlist {
    Master(Master),
    Media(Media),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Master {
    pub variants: Vec<Variant>,
    /// `EXT-X-MEDIA` renditions of type AUDIO.
    pub audio: Vec<Rendition>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub uri: String,
    pub bandwidth: u64,
    pub codecs: Option<String>,
    /// The `AUDIO` group this variant plays its sound from.
    pub audio_group: Option<String>,
    /// Has a `RESOLUTION` (a video variant).
    pub video: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rendition {
    pub group: String,
    pub uri: Option<String>,
    pub default: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Media {
    pub target_duration: f64,
    pub media_sequence: u64,
    /// `EXT-X-ENDLIST`, or `EXT-X-PLAYLIST-TYPE:VOD`: no segment will be added.
    pub ended: bool,
    pub segments: Vec<Segment>,
}

impl Media {
    /// The sum of the segments' durations, in milliseconds.
    pub fn length_ms(&self) -> u64 {
        (self.segments.iter().map(|s| s.duration).sum::<f64>() * 1000.0).round() as u64
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub uri: String,
    /// Seconds (`EXTINF`).
    pub duration: f64,
    /// The media sequence number.
    pub sequence: u64,
    /// `EXT-X-DISCONTINUITY` before this segment.
    pub discontinuity: bool,
    pub range: Option<ByteRange>,
    pub key: Option<Arc<Key>>,
    /// The initialisation section (`EXT-X-MAP`) of fragmented MP4 segments.
    pub map: Option<Arc<Map>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub len: u64,
}

/// `EXT-X-KEY METHOD=AES-128`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub uri: String,
    /// The IV from the tag; without one, the segment's sequence number is the IV.
    pub iv: Option<[u8; 16]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    pub uri: String,
    pub range: Option<ByteRange>,
}

/// Whether the text is an HLS playlist rather than a list of links (radio).
pub fn is_hls(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim();
        l.starts_with("#EXT-X-TARGETDURATION") || l.starts_with("#EXT-X-STREAM-INF") || l.starts_with("#EXT-X-MEDIA-SEQUENCE")
    })
}

/// Parses a playlist fetched from `base` (relative locations resolve against it).
pub fn parse(text: &str, base: &url::Url) -> Result<Playlist, LoadFailure> {
    let lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if text.lines().any(|l| l.trim_start().starts_with("#EXT-X-STREAM-INF")) {
        parse_master(lines, base).map(Playlist::Master)
    } else {
        parse_media(lines, base).map(Playlist::Media)
    }
}

fn malformed(why: String) -> LoadFailure {
    LoadFailure::common("The HLS playlist is malformed.", why)
}

fn resolve(base: &url::Url, location: &str) -> Result<String, LoadFailure> {
    let url = base.join(location).map_err(|e| malformed(format!("`{location}` is not a valid location: {e}")))?;
    // A remote playlist must never make the node read local files or other schemes.
    if !matches!(url.scheme(), "http" | "https") {
        return Err(malformed(format!("`{location}` is not an http(s) location")));
    }
    Ok(url.into())
}

fn parse_master<'a>(lines: impl Iterator<Item = &'a str>, base: &url::Url) -> Result<Master, LoadFailure> {
    let mut master = Master::default();
    let mut pending: Option<Attributes> = None;
    for line in lines {
        if let Some(attrs) = line.strip_prefix("#EXT-X-STREAM-INF:") {
            pending = Some(Attributes::parse(attrs));
        } else if let Some(attrs) = line.strip_prefix("#EXT-X-MEDIA:") {
            let a = Attributes::parse(attrs);
            if a.get("TYPE") == Some("AUDIO") {
                let uri = a.get("URI").map(|u| resolve(base, u)).transpose()?;
                let group = a.get("GROUP-ID").unwrap_or_default().to_string();
                master.audio.push(Rendition { group, uri, default: a.get("DEFAULT") == Some("YES") });
            }
        } else if !line.starts_with('#') {
            if let Some(a) = pending.take() {
                master.variants.push(Variant {
                    uri: resolve(base, line)?,
                    bandwidth: a.get("BANDWIDTH").and_then(|b| b.parse().ok()).unwrap_or(0),
                    codecs: a.get("CODECS").map(str::to_string),
                    audio_group: a.get("AUDIO").map(str::to_string),
                    video: a.get("RESOLUTION").is_some(),
                });
            }
        }
        if master.variants.len() + master.audio.len() > MAX_VARIANTS {
            return Err(malformed(format!("more than {MAX_VARIANTS} variants")));
        }
    }
    if master.variants.is_empty() {
        return Err(malformed("the master playlist lists no variants".into()));
    }
    Ok(master)
}

fn parse_media<'a>(lines: impl Iterator<Item = &'a str>, base: &url::Url) -> Result<Media, LoadFailure> {
    let mut media = Media::default();
    let mut target = None;
    let mut duration: Option<f64> = None;
    let mut discontinuity = false;
    let mut range: Option<ByteRange> = None;
    // Where the next range without an offset starts: the end of the previous range of the same
    // resource.
    let mut range_end: Option<(String, u64)> = None;
    let mut key: Option<Arc<Key>> = None;
    let mut map: Option<Arc<Map>> = None;
    let mut sequence = None;
    for line in lines {
        if let Some(v) = line.strip_prefix("#EXT-X-TARGETDURATION:") {
            let t: f64 = v.trim().parse().map_err(|_| malformed(format!("bad target duration `{v}`")))?;
            if !(t > 0.0 && t <= MAX_SEGMENT_SECONDS) {
                return Err(malformed(format!("target duration {t} s is out of range")));
            }
            target = Some(t);
        } else if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            media.media_sequence = v.trim().parse().map_err(|_| malformed(format!("bad media sequence `{v}`")))?;
        } else if line == "#EXT-X-ENDLIST" {
            media.ended = true;
        } else if let Some(v) = line.strip_prefix("#EXT-X-PLAYLIST-TYPE:") {
            media.ended |= v.trim() == "VOD";
        } else if let Some(v) = line.strip_prefix("#EXTINF:") {
            let d = v.split(',').next().unwrap_or("").trim();
            let d: f64 = d.parse().map_err(|_| malformed(format!("bad segment duration `{d}`")))?;
            if !(d.is_finite() && (0.0..=MAX_SEGMENT_SECONDS).contains(&d)) {
                return Err(malformed(format!("segment duration {d} s is out of range")));
            }
            duration = Some(d);
        } else if line == "#EXT-X-DISCONTINUITY" {
            discontinuity = true;
        } else if let Some(v) = line.strip_prefix("#EXT-X-BYTERANGE:") {
            range = Some(parse_range(v, None)?);
        } else if let Some(v) = line.strip_prefix("#EXT-X-KEY:") {
            key = parse_key(&Attributes::parse(v), base)?;
        } else if let Some(v) = line.strip_prefix("#EXT-X-MAP:") {
            let a = Attributes::parse(v);
            let uri = resolve(base, a.get("URI").ok_or_else(|| malformed("EXT-X-MAP without a URI".into()))?)?;
            let range = a.get("BYTERANGE").map(|r| parse_range(r, Some(0))).transpose()?;
            map = Some(Arc::new(Map { uri, range }));
        } else if !line.starts_with('#') {
            let Some(d) = duration.take() else {
                return Err(malformed(format!("the segment `{line}` has no EXTINF")));
            };
            let uri = resolve(base, line)?;
            let range = match range.take() {
                Some(mut r) => {
                    if r.offset == u64::MAX {
                        r.offset = match &range_end {
                            Some((u, end)) if *u == uri => *end,
                            _ => return Err(malformed(format!("the byte range of `{line}` has no offset to continue from"))),
                        };
                    }
                    range_end = Some((uri.clone(), r.offset.saturating_add(r.len)));
                    Some(r)
                }
                None => None,
            };
            let seq = sequence.unwrap_or(media.media_sequence);
            sequence = Some(seq + 1);
            media.segments.push(Segment { uri, duration: d, sequence: seq, discontinuity, range, key: key.clone(), map: map.clone() });
            discontinuity = false;
            if media.segments.len() > MAX_SEGMENTS {
                return Err(malformed(format!("more than {MAX_SEGMENTS} segments")));
            }
        }
    }
    media.target_duration = target.ok_or_else(|| malformed("no EXT-X-TARGETDURATION".into()))?;
    Ok(media)
}

/// `<len>[@<offset>]`; a missing offset is `u64::MAX` (continue after the previous range) unless
/// a default is given.
fn parse_range(v: &str, default_offset: Option<u64>) -> Result<ByteRange, LoadFailure> {
    let bad = || malformed(format!("bad byte range `{v}`"));
    let (len, offset) = match v.trim().split_once('@') {
        Some((l, o)) => (l, Some(o.parse::<u64>().map_err(|_| bad())?)),
        None => (v.trim(), None),
    };
    let len = len.parse::<u64>().map_err(|_| bad())?;
    Ok(ByteRange { len, offset: offset.or(default_offset).unwrap_or(u64::MAX) })
}

fn parse_key(a: &Attributes, base: &url::Url) -> Result<Option<Arc<Key>>, LoadFailure> {
    match a.get("METHOD") {
        Some("NONE") => Ok(None),
        Some("AES-128") => {
            let uri = resolve(base, a.get("URI").ok_or_else(|| malformed("an AES-128 key without a URI".into()))?)?;
            let iv = match a.get("IV") {
                None => None,
                Some(hex) => Some(parse_iv(hex).ok_or_else(|| malformed(format!("bad IV `{hex}`")))?),
            };
            Ok(Some(Arc::new(Key { uri, iv })))
        }
        other => Err(LoadFailure::common(
            "The HLS stream's encryption is not supported.",
            format!("EXT-X-KEY METHOD={}", other.unwrap_or("(none)")),
        )),
    }
}

fn parse_iv(hex: &str) -> Option<[u8; 16]> {
    let digits = hex.strip_prefix("0x").or_else(|| hex.strip_prefix("0X"))?;
    if digits.is_empty() || digits.len() > 32 {
        return None;
    }
    let value = u128::from_str_radix(digits, 16).ok()?;
    Some(value.to_be_bytes())
}

/// An attribute list: `KEY=value,KEY="quoted, value"`.
struct Attributes(Vec<(String, String)>);

impl Attributes {
    fn parse(text: &str) -> Self {
        let mut out = Vec::new();
        let mut rest = text.trim();
        while !rest.is_empty() {
            let Some((key, after)) = rest.split_once('=') else { break };
            let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
                match quoted.split_once('"') {
                    Some((v, n)) => (v, n),
                    None => (quoted, ""),
                }
            } else {
                match after.split_once(',') {
                    Some((v, n)) => (v, n),
                    None => (after, ""),
                }
            };
            out.push((key.trim().to_string(), value.trim().to_string()));
            rest = next.trim_start_matches(',').trim_start();
        }
        Self(out)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// The media playlist to play from a master playlist: the default audio rendition of the best
/// variant's group when renditions have their own playlists, else the best audio-only variant,
/// else the best variant.
pub fn choose(master: &Master) -> &str {
    let best = |only_audio: bool| master.variants.iter().filter(|v| !only_audio || is_audio_only(v)).max_by_key(|v| v.bandwidth);
    let variant = best(true).or_else(|| best(false)).expect("a master playlist has variants");
    if let Some(group) = &variant.audio_group {
        let in_group = || master.audio.iter().filter(|r| &r.group == group && r.uri.is_some());
        if let Some(r) = in_group().find(|r| r.default).or_else(|| in_group().next()) {
            return r.uri.as_deref().expect("filtered on a URI");
        }
    }
    &variant.uri
}

fn is_audio_only(v: &Variant) -> bool {
    if v.video {
        return false;
    }
    match &v.codecs {
        // Codecs tell: audio codecs only (AAC, MP3, Opus, AC-3...).
        Some(c) => c.split(',').map(str::trim).all(|c| c.starts_with("mp4a") || c == "opus" || c.starts_with("ac-3") || c.starts_with("ec-3") || c == "mp3"),
        None => false,
    }
}

/// Where a live stream starts (RFC 8216 §6.3.3): no later than three target durations before
/// the end of the playlist.
pub fn live_start(media: &Media) -> usize {
    let mut remaining = 0.0;
    for (i, s) in media.segments.iter().enumerate().rev() {
        remaining += s.duration;
        if remaining >= 3.0 * media.target_duration {
            return i;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> url::Url {
        url::Url::parse("http://host/a/list.m3u8").unwrap()
    }

    fn media(text: &str) -> Media {
        match parse(text, &base()).unwrap() {
            Playlist::Media(m) => m,
            other => panic!("not a media playlist: {other:?}"),
        }
    }

    #[test]
    fn vod_media_playlist() {
        let m = media(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:7\n#EXTINF:4.0,\nseg7.ts\n\
             #EXT-X-DISCONTINUITY\n#EXTINF:3.5,title\nhttp://cdn/x/seg8.ts\n#EXT-X-ENDLIST\n",
        );
        assert!(m.ended);
        assert_eq!(m.target_duration, 4.0);
        assert_eq!(m.length_ms(), 7500);
        assert_eq!(m.segments[0].uri, "http://host/a/seg7.ts");
        assert_eq!((m.segments[0].sequence, m.segments[1].sequence), (7, 8));
        assert!(!m.segments[0].discontinuity && m.segments[1].discontinuity);
        assert_eq!(m.segments[1].uri, "http://cdn/x/seg8.ts");
    }

    #[test]
    fn keys_maps_and_ranges() {
        let m = media(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI=\"init.mp4\",BYTERANGE=\"700@0\"\n\
             #EXT-X-KEY:METHOD=AES-128,URI=\"k.bin\",IV=0x000102030405060708090a0b0c0d0e0f\n\
             #EXTINF:2,\n#EXT-X-BYTERANGE:1000@700\nall.mp4\n#EXTINF:2,\n#EXT-X-BYTERANGE:500\nall.mp4\n\
             #EXT-X-KEY:METHOD=NONE\n#EXTINF:2,\nplain.mp4\n",
        );
        assert!(!m.ended);
        let s = &m.segments;
        assert_eq!(s[0].range, Some(ByteRange { offset: 700, len: 1000 }));
        assert_eq!(s[1].range, Some(ByteRange { offset: 1700, len: 500 }));
        let key = s[0].key.as_ref().unwrap();
        assert_eq!(key.uri, "http://host/a/k.bin");
        assert_eq!(key.iv.unwrap()[15], 0x0f);
        assert!(s[2].key.is_none());
        assert_eq!(s[2].map.as_ref().unwrap().range, Some(ByteRange { offset: 0, len: 700 }));
    }

    #[test]
    fn master_choice() {
        let text = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360,CODECS=\"avc1.4d401e,mp4a.40.2\"\nlow.m3u8\n\
                    #EXT-X-STREAM-INF:BANDWIDTH=64000,CODECS=\"mp4a.40.2\"\naudio64.m3u8\n\
                    #EXT-X-STREAM-INF:BANDWIDTH=128000,CODECS=\"mp4a.40.2\"\naudio128.m3u8\n";
        let Playlist::Master(m) = parse(text, &base()).unwrap() else { panic!() };
        assert_eq!(choose(&m), "http://host/a/audio128.m3u8");

        let text = "#EXTM3U\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aac\",NAME=\"en, main\",DEFAULT=NO,URI=\"en.m3u8\"\n\
                    #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aac\",NAME=\"de\",DEFAULT=YES,URI=\"de.m3u8\"\n\
                    #EXT-X-STREAM-INF:BANDWIDTH=900000,RESOLUTION=1280x720,AUDIO=\"aac\"\nv720.m3u8\n";
        let Playlist::Master(m) = parse(text, &base()).unwrap() else { panic!() };
        assert_eq!(choose(&m), "http://host/a/de.m3u8");
    }

    #[test]
    fn hostile_playlists_are_refused() {
        let bad = |text: &str| parse(text, &base()).unwrap_err().message;
        assert_eq!(bad("#EXTM3U\n#EXTINF:4,\nseg.ts\n"), "The HLS playlist is malformed.");
        assert_eq!(bad("#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:1e300,\nseg.ts\n"), "The HLS playlist is malformed.");
        assert_eq!(bad("#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:NaN,\nseg.ts\n"), "The HLS playlist is malformed.");
        assert_eq!(bad("#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\nfile:///etc/passwd\n"), "The HLS playlist is malformed.");
        assert_eq!(
            bad("#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"k\"\n#EXTINF:4,\ns.ts\n"),
            "The HLS stream's encryption is not supported."
        );
        let many = format!("#EXTM3U\n#EXT-X-TARGETDURATION:1\n{}", "#EXTINF:1,\ns.ts\n".repeat(MAX_SEGMENTS + 1));
        assert_eq!(bad(&many), "The HLS playlist is malformed.");
    }

    #[test]
    fn live_edge() {
        let m = media(&format!("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:100\n{}", "#EXTINF:2,\ns.ts\n".repeat(10)));
        // Three target durations (6 s) before the end: the 8th of 10 segments.
        assert_eq!(live_start(&m), 7);
        assert_eq!(m.segments[7].sequence, 107);
        let short = media("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\ns.ts\n");
        assert_eq!(live_start(&short), 0);
    }

    #[test]
    fn hls_or_radio() {
        assert!(is_hls("#EXTM3U\n#EXT-X-TARGETDURATION:2\n"));
        assert!(is_hls("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nx.m3u8\n"));
        assert!(!is_hls("#EXTM3U\n#EXTINF:-1,Radio\nhttp://radio/stream\n"));
    }
}
