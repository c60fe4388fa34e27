//! Tracks: Lavalink's track info and Lavaplayer's encoded-track format, byte for byte, so tracks
//! encoded by Lavalink, by client libraries and by Caldera are interchangeable.
//!
//! Layout (big-endian, Java `DataOutput`): an i32 header `payload_len | flags << 30`
//! (flag 1 = versioned), then the payload: u8 version (only when versioned; else version 1),
//! UTF title, UTF author, i64 length ms, UTF identifier, bool isStream, nullable UTF uri (v ≥ 2),
//! nullable UTF artworkUrl and isrc (v ≥ 3), UTF sourceName, source-specific bytes, i64 position.
//! "UTF" is Java's `writeUTF`: u16 byte length + modified UTF-8; "nullable" is a bool then UTF.

use base64::Engine;
use serde::{Deserialize, Serialize};

/// The version Caldera writes. Versions 1–3 are read.
pub const TRACK_INFO_VERSION: u8 = 3;
const FLAG_VERSIONED: u32 = 1;
/// Largest UTF string Java's `writeUTF` can write.
pub const MAX_UTF_LEN: usize = 65535;
/// Lavalink's length for streams (`Long.MAX_VALUE`).
pub const STREAM_LENGTH: u64 = i64::MAX as u64;

/// Track metadata as Lavalink reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    pub title: String,
    pub author: String,
    /// Milliseconds; [`STREAM_LENGTH`] for streams.
    pub length: u64,
    pub identifier: String,
    pub is_stream: bool,
    pub uri: Option<String>,
    pub artwork_url: Option<String>,
    pub isrc: Option<String>,
    pub source_name: String,
    /// Start position in milliseconds.
    pub position: u64,
}

/// A decoded track: its info plus the source-specific bytes, kept verbatim so re-encoding a
/// track of any source (even one Caldera cannot play) gives the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackData {
    pub info: TrackInfo,
    pub source_data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    #[error("not valid base64: {0}")]
    Base64(String),
    #[error("encoded track is too short ({0} bytes)")]
    TooShort(usize),
    #[error("header declares a {declared}-byte payload but only {available} bytes follow")]
    DeclaredTooLarge { declared: usize, available: usize },
    #[error("unsupported track info version {0} (1, 2 and 3 are known)")]
    Version(u8),
    #[error("field `{0}` runs past the end of the track data")]
    Truncated(&'static str),
    #[error("field `{0}` is not valid modified UTF-8")]
    Utf(&'static str),
    #[error("field `{0}` is {1} bytes long; at most 65535 fit")]
    TooLong(&'static str, usize),
    #[error("field `{0}` is negative")]
    Negative(&'static str),
}

impl TrackData {
    /// A track from Caldera's http/local sources: the source data is one UTF "probe info".
    pub fn with_probe_info(info: TrackInfo, probe_info: &str) -> Result<Self, TrackError> {
        let mut source_data = Vec::new();
        write_utf(&mut source_data, probe_info, "probeInfo")?;
        Ok(Self { info, source_data })
    }

    /// The probe info of an http/local track (`None` for other sources or malformed data).
    pub fn probe_info(&self) -> Option<String> {
        let mut r = Reader { buf: &self.source_data };
        let s = r.utf("probeInfo").ok()?;
        r.buf.is_empty().then_some(s)
    }

    /// Encodes as Lavaplayer's base64 track string (version 3).
    pub fn encode(&self) -> Result<String, TrackError> {
        let i = &self.info;
        let mut p = vec![TRACK_INFO_VERSION];
        write_utf(&mut p, &i.title, "title")?;
        write_utf(&mut p, &i.author, "author")?;
        p.extend_from_slice(&clamp_i64(i.length).to_be_bytes());
        write_utf(&mut p, &i.identifier, "identifier")?;
        p.push(i.is_stream as u8);
        write_nullable(&mut p, i.uri.as_deref(), "uri")?;
        write_nullable(&mut p, i.artwork_url.as_deref(), "artworkUrl")?;
        write_nullable(&mut p, i.isrc.as_deref(), "isrc")?;
        write_utf(&mut p, &i.source_name, "sourceName")?;
        p.extend_from_slice(&self.source_data);
        p.extend_from_slice(&clamp_i64(i.position).to_be_bytes());
        // The header holds the length in 30 bits.
        if p.len() >= 1 << 30 {
            return Err(TrackError::TooLong("track", p.len()));
        }
        let header = (p.len() as u32) | (FLAG_VERSIONED << 30);
        let mut out = header.to_be_bytes().to_vec();
        out.extend_from_slice(&p);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// Decodes a base64 track string of version 1, 2 or 3. Never panics.
    pub fn decode(encoded: &str) -> Result<Self, TrackError> {
        let bytes = base64_engine().decode(encoded.trim()).map_err(|e| TrackError::Base64(e.to_string()))?;
        let header: [u8; 4] = bytes.get(..4).and_then(|h| h.try_into().ok()).ok_or(TrackError::TooShort(bytes.len()))?;
        let header = u32::from_be_bytes(header);
        let declared = (header & 0x3FFF_FFFF) as usize;
        let flags = header >> 30;
        let available = bytes.len() - 4;
        if declared > available {
            return Err(TrackError::DeclaredTooLarge { declared, available });
        }
        // Bytes after the declared payload are ignored, as Lavaplayer's MessageInput does.
        let mut r = Reader { buf: &bytes[4..4 + declared] };
        let version = if flags & FLAG_VERSIONED != 0 { r.u8("version")? } else { 1 };
        if !(1..=3).contains(&version) {
            return Err(TrackError::Version(version));
        }
        let title = r.utf("title")?;
        let author = r.utf("author")?;
        let length = r.u64("length")?;
        let identifier = r.utf("identifier")?;
        let is_stream = r.u8("isStream")? != 0;
        let uri = if version >= 2 { r.nullable("uri")? } else { None };
        let (artwork_url, isrc) =
            if version >= 3 { (r.nullable("artworkUrl")?, r.nullable("isrc")?) } else { (None, None) };
        let source_name = r.utf("sourceName")?;
        // Source-specific bytes sit between the source name and the trailing position.
        let rest = r.buf;
        if rest.len() < 8 {
            return Err(TrackError::Truncated("position"));
        }
        let (source_data, position) = rest.split_at(rest.len() - 8);
        let position = i64::from_be_bytes(position.try_into().map_err(|_| TrackError::Truncated("position"))?);
        let position = u64::try_from(position).map_err(|_| TrackError::Negative("position"))?;
        Ok(Self {
            info: TrackInfo {
                title,
                author,
                length,
                identifier,
                is_stream,
                uri,
                artwork_url,
                isrc,
                source_name,
                position,
            },
            source_data: source_data.to_vec(),
        })
    }
}

fn base64_engine() -> base64::engine::GeneralPurpose {
    // Java's basic decoder accepts input with or without padding.
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    )
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], TrackError> {
        if self.buf.len() < n {
            return Err(TrackError::Truncated(field));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, TrackError> {
        Ok(self.take(1, field)?[0])
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, TrackError> {
        let b = self.take(8, field)?;
        let v = i64::from_be_bytes(b.try_into().map_err(|_| TrackError::Truncated(field))?);
        u64::try_from(v).map_err(|_| TrackError::Negative(field))
    }

    fn utf(&mut self, field: &'static str) -> Result<String, TrackError> {
        let len = self.take(2, field)?;
        let len = u16::from_be_bytes([len[0], len[1]]) as usize;
        decode_modified_utf8(self.take(len, field)?).ok_or(TrackError::Utf(field))
    }

    fn nullable(&mut self, field: &'static str) -> Result<Option<String>, TrackError> {
        if self.u8(field)? != 0 {
            self.utf(field).map(Some)
        } else {
            Ok(None)
        }
    }
}

fn write_utf(out: &mut Vec<u8>, s: &str, field: &'static str) -> Result<(), TrackError> {
    let bytes = encode_modified_utf8(s);
    if bytes.len() > MAX_UTF_LEN {
        return Err(TrackError::TooLong(field, bytes.len()));
    }
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(&bytes);
    Ok(())
}

fn write_nullable(out: &mut Vec<u8>, s: Option<&str>, field: &'static str) -> Result<(), TrackError> {
    match s {
        Some(s) => {
            out.push(1);
            write_utf(out, s, field)
        }
        None => {
            out.push(0);
            Ok(())
        }
    }
}

/// Java's modified UTF-8: UTF-16 code units, U+0000 as `C0 80`, each surrogate as 3 bytes.
pub fn encode_modified_utf8(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    for unit in s.encode_utf16() {
        match unit {
            0x0001..=0x007F => out.push(unit as u8),
            0x0000 | 0x0080..=0x07FF => {
                out.push(0xC0 | (unit >> 6) as u8);
                out.push(0x80 | (unit & 0x3F) as u8);
            }
            _ => {
                out.push(0xE0 | (unit >> 12) as u8);
                out.push(0x80 | ((unit >> 6) & 0x3F) as u8);
                out.push(0x80 | (unit & 0x3F) as u8);
            }
        }
    }
    out
}

/// Decodes modified UTF-8; `None` on malformed input or unpaired surrogates. Like Java's
/// `readUTF`, it also accepts the overlong-free standard forms it would produce.
pub fn decode_modified_utf8(bytes: &[u8]) -> Option<String> {
    let mut units = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let cont = |k: usize| bytes.get(i + k).copied().filter(|c| c & 0xC0 == 0x80).map(|c| (c & 0x3F) as u16);
        match b {
            0x01..=0x7F => {
                units.push(b as u16);
                i += 1;
            }
            0xC0..=0xDF => {
                units.push(((b as u16 & 0x1F) << 6) | cont(1)?);
                i += 2;
            }
            0xE0..=0xEF => {
                units.push(((b as u16 & 0x0F) << 12) | (cont(1)? << 6) | cont(2)?);
                i += 3;
            }
            // A raw NUL byte and 4-byte forms never occur in modified UTF-8.
            _ => return None,
        }
    }
    String::from_utf16(&units).ok()
}
