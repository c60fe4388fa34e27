//! Replays the bytes already read for detection, so probing does not fetch them twice. Once the
//! reader is well past them they are let go (a player streams for minutes; a seek back reads
//! them from the source again).

use std::io::{self, Read, Seek, SeekFrom};

pub struct Rewind<R> {
    inner: R,
    head: Vec<u8>,
    /// How long the head was (it is kept until the reader is at twice that).
    head_len: u64,
    pos: u64,
    /// Where `inner` is positioned.
    inner_pos: u64,
}

impl<R: Read + Seek> Rewind<R> {
    /// `head` must be the first bytes of `inner`, which is positioned right after them.
    pub fn new(inner: R, head: Vec<u8>) -> Self {
        let inner_pos = head.len() as u64;
        Self { inner, head_len: inner_pos, head, pos: 0, inner_pos }
    }
}

impl<R: Read + Seek> Read for Rewind<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(rest) = self.head.get(self.pos as usize..).filter(|r| !r.is_empty()) {
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.pos += n as u64;
            return Ok(n);
        }
        if self.inner_pos != self.pos {
            self.inner_pos = self.inner.seek(SeekFrom::Start(self.pos))?;
        }
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        self.inner_pos = self.pos;
        if self.pos >= 2 * self.head_len && !self.head.is_empty() {
            self.head = Vec::new();
        }
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for Rewind<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::Current(d) => self
                .pos
                .checked_add_signed(d)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?,
            SeekFrom::End(_) => {
                self.inner_pos = self.inner.seek(to)?;
                self.inner_pos
            }
        };
        Ok(self.pos)
    }
}

impl<R: symphonia::core::io::MediaSource> symphonia::core::io::MediaSource for Rewind<R> {
    fn is_seekable(&self) -> bool {
        self.inner.is_seekable()
    }

    fn byte_len(&self) -> Option<u64> {
        self.inner.byte_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn replays_head_then_continues() {
        let data: Vec<u8> = (0..=255).collect();
        let mut inner = Cursor::new(data.clone());
        let mut head = vec![0u8; 10];
        inner.read_exact(&mut head).unwrap();
        let mut r = Rewind::new(inner, head);
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, data);
        r.seek(SeekFrom::Start(5)).unwrap();
        let mut b = [0u8; 10];
        r.read_exact(&mut b).unwrap();
        assert_eq!(b, [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
        assert_eq!(r.seek(SeekFrom::End(-1)).unwrap(), 255);
        r.read_exact(&mut b[..1]).unwrap();
        assert_eq!(b[0], 255);
        // Far past the head it is let go; a seek back reads from the source.
        assert!(r.head.is_empty());
        r.seek(SeekFrom::Start(2)).unwrap();
        r.read_exact(&mut b[..3]).unwrap();
        assert_eq!(b[..3], [2, 3, 4]);
    }
}
