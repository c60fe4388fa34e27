//! Typed async halves over tokio streams (STYLE §4): a `FrameWriter<ToWorker, _>` can only send
//! gateway → worker messages, so a message cannot go the wrong way.

use crate::frame::{self, Encoded, FrameError, HEADER_LEN};
use serde::{de::DeserializeOwned, Serialize};
use std::marker::PhantomData;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub struct FrameReader<M, R> {
    inner: R,
    max: u32,
    bytes_received: u64,
    _msg: PhantomData<fn() -> M>,
}

impl<M: DeserializeOwned, R: AsyncRead + Unpin> FrameReader<M, R> {
    pub fn new(inner: R, max: u32) -> Self {
        Self { inner, max, bytes_received: 0, _msg: PhantomData }
    }

    pub fn set_max(&mut self, max: u32) {
        self.max = max;
    }

    /// The next message; `Ok(None)` on a clean end of stream between frames.
    ///
    /// Not cancel-safe: do not race it in `select!` against other branches that may win.
    pub async fn recv(&mut self) -> Result<Option<M>, FrameError> {
        let mut header = [0u8; HEADER_LEN];
        let got = read_full(&mut self.inner, &mut header).await?;
        if got == 0 {
            return Ok(None);
        }
        if got < HEADER_LEN {
            return Err(FrameError::Truncated { have: got, need: HEADER_LEN });
        }
        let len = frame::payload_len(header, self.max)?;
        let mut payload = vec![0u8; len];
        let got = read_full(&mut self.inner, &mut payload).await?;
        if got < len {
            return Err(FrameError::Truncated { have: HEADER_LEN + got, need: HEADER_LEN + len });
        }
        self.bytes_received += (HEADER_LEN + len) as u64;
        frame::decode_payload(&payload).map(Some)
    }

    /// Bytes of complete frames read so far.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }
}

pub struct FrameWriter<M, W> {
    inner: W,
    max: u32,
    bytes_sent: u64,
    _msg: PhantomData<fn(M)>,
}

impl<M: Serialize, W: AsyncWrite + Unpin> FrameWriter<M, W> {
    pub fn new(inner: W, max: u32) -> Self {
        Self { inner, max, bytes_sent: 0, _msg: PhantomData }
    }

    pub async fn send(&mut self, msg: &M) -> Result<(), FrameError> {
        let bytes = frame::encode(msg, self.max)?;
        self.inner.write_all(&bytes).await?;
        self.inner.flush().await?;
        self.bytes_sent += bytes.len() as u64;
        Ok(())
    }

    /// Sends a frame encoded earlier (see [`Encoded`]).
    pub async fn send_encoded(&mut self, frame: &Encoded<M>) -> Result<(), FrameError> {
        self.inner.write_all(frame.as_bytes()).await?;
        self.inner.flush().await?;
        self.bytes_sent += frame.len() as u64;
        Ok(())
    }

    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        self.inner.shutdown().await
    }
}

async fn read_full(r: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
