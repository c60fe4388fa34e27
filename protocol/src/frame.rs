//! Framing: a u32 little-endian payload length, then a postcard payload.
//!
//! The length is checked against a maximum *before* anything is allocated, decoding never panics,
//! and a payload must be consumed exactly (trailing bytes are an error): every frame from a peer is
//! hostile input (STYLE §2).

use serde::{de::DeserializeOwned, Serialize};
use std::io::{Read, Write};

/// Largest payload either side accepts once the hello is done.
pub const MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;

/// Largest payload accepted before the peer has proven who it is.
pub const HELLO_MAX_FRAME_LEN: u32 = 4 * 1024;

/// Length prefix size in bytes.
pub const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes; Hint: the peer is broken or hostile")]
    TooLarge { len: u32, max: u32 },
    #[error("connection ended inside a frame ({have} of {need} bytes received)")]
    Truncated { have: usize, need: usize },
    #[error("frame payload is not a valid message: {0}")]
    Decode(#[from] postcard::Error),
    #[error("frame payload has {0} unexpected trailing bytes")]
    TrailingBytes(usize),
    #[error("IPC i/o failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Serializes `msg` into one complete frame (header + payload).
pub fn encode<T: Serialize>(msg: &T, max: u32) -> Result<Vec<u8>, FrameError> {
    let mut out = postcard::to_extend(msg, vec![0u8; HEADER_LEN])?;
    let len = u32::try_from(out.len() - HEADER_LEN).unwrap_or(u32::MAX);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    out[..HEADER_LEN].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

/// A frame encoded ahead of sending, still typed by its message, so a queue can count its exact
/// size and the writer cannot send it the wrong way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded<M> {
    bytes: Vec<u8>,
    _msg: std::marker::PhantomData<fn(M)>,
}

impl<M: Serialize> Encoded<M> {
    pub fn new(msg: &M, max: u32) -> Result<Self, FrameError> {
        Ok(Self { bytes: encode(msg, max)?, _msg: std::marker::PhantomData })
    }
}

impl<M> Encoded<M> {
    /// The whole frame: header and payload.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Decodes one payload, which must be consumed exactly.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes(payload)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// Reads the payload length from a header, rejecting lengths over `max`.
pub fn payload_len(header: [u8; HEADER_LEN], max: u32) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len as usize)
}

/// An I/O-free incremental decoder: push bytes as they arrive, pop complete messages.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: u32,
}

impl FrameDecoder {
    pub fn new(max: u32) -> Self {
        Self { buf: Vec::new(), max }
    }

    /// Changes the limit (e.g. from [`HELLO_MAX_FRAME_LEN`] to [`MAX_FRAME_LEN`] after the hello).
    pub fn set_max(&mut self, max: u32) {
        self.max = max;
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let Some(header) = self.buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = payload_len(*header, self.max)?;
        let end = HEADER_LEN + len;
        if self.buf.len() < end {
            return Ok(None);
        }
        let result = decode_payload(&self.buf[HEADER_LEN..end]);
        self.buf.drain(..end);
        result.map(Some)
    }

    /// Call at end of stream: leftover bytes mean the peer stopped inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let need = match self.buf.first_chunk::<HEADER_LEN>() {
            Some(h) => HEADER_LEN + u32::from_le_bytes(*h) as usize,
            None => HEADER_LEN,
        };
        Err(FrameError::Truncated { have: self.buf.len(), need })
    }
}

/// Blocking read of one message; `Ok(None)` on a clean end of stream between frames.
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read, max: u32) -> Result<Option<T>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(r, &mut header)?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER_LEN {
        return Err(FrameError::Truncated { have: got, need: HEADER_LEN });
    }
    let len = payload_len(header, max)?;
    let mut payload = vec![0u8; len];
    let got = read_full(r, &mut payload)?;
    if got < len {
        return Err(FrameError::Truncated { have: HEADER_LEN + got, need: HEADER_LEN + len });
    }
    decode_payload(&payload).map(Some)
}

/// Blocking write of one message.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T, max: u32) -> Result<(), FrameError> {
    w.write_all(&encode(msg, max)?)?;
    w.flush()?;
    Ok(())
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
