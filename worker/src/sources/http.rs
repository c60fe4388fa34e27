//! A blocking, seekable reader over HTTP (symphonia needs `Read + Seek`).
//!
//! Seeks use `Range` requests when the server supports them; otherwise a forward seek reads and
//! discards, and a backward seek starts over. ICY (SHOUTcast/Icecast) metadata interleaved in the
//! body is stripped, and the latest `StreamTitle` is kept. Every byte counts against a budget, so
//! a hostile server cannot make a probe read forever.

use super::LoadFailure;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const USER_AGENT: &str = concat!("Caldera/", env!("CARGO_PKG_VERSION"));
const MAX_REDIRECTS: usize = 5;

/// What the first response said about the resource.
#[derive(Debug, Clone, Default)]
pub struct ResponseMeta {
    /// The URL after redirects.
    pub final_url: String,
    pub content_type: Option<String>,
    /// `Content-Length` of the whole resource, when known.
    pub length: Option<u64>,
    pub accepts_ranges: bool,
    pub icy_name: Option<String>,
    pub icy_metaint: Option<usize>,
}

impl ResponseMeta {
    /// A stream: no known length, or a radio server (ICY headers).
    pub fn is_stream(&self) -> bool {
        self.length.is_none() || self.icy_metaint.is_some() || self.icy_name.is_some()
    }
}

pub fn client(timeout: Duration) -> Result<reqwest::blocking::Client, LoadFailure> {
    reqwest::blocking::Client::builder()
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        .build()
        .map_err(|e| LoadFailure::fault("Could not create an HTTP client.", e.to_string()))
}

pub struct HttpReader {
    client: reqwest::blocking::Client,
    url: String,
    meta: ResponseMeta,
    body: Option<reqwest::blocking::Response>,
    pos: u64,
    budget: u64,
    /// Audio bytes left before the next ICY metadata block.
    icy_left: usize,
    stream_title: Arc<Mutex<Option<String>>>,
}

impl HttpReader {
    /// Sends the first request. `Ok(None)` for a 404 (Lavaplayer's "no matches"); other non-2xx
    /// statuses and connection failures become load failures.
    pub fn open(client: reqwest::blocking::Client, url: &str, budget: u64) -> Result<Option<Self>, LoadFailure> {
        let res = client
            .get(url)
            .header("Icy-MetaData", "1")
            .send()
            .map_err(|e| LoadFailure::connect(url, &e))?;
        let status = res.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(LoadFailure::common(
                "That URL is not playable.",
                format!("Status code {}", status.as_u16()),
            ));
        }
        let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).map(|s| s.trim().to_string());
        let meta = ResponseMeta {
            final_url: res.url().to_string(),
            content_type: header("content-type"),
            length: header("content-length").and_then(|v| v.parse().ok()),
            accepts_ranges: header("accept-ranges").is_some_and(|v| v.eq_ignore_ascii_case("bytes")),
            icy_name: header("icy-name").filter(|n| !n.is_empty()),
            icy_metaint: header("icy-metaint").and_then(|v| v.parse().ok()).filter(|&n| n > 0),
        };
        Ok(Some(Self {
            client,
            url: meta.final_url.clone(),
            icy_left: meta.icy_metaint.unwrap_or(0),
            meta,
            body: Some(res),
            pos: 0,
            budget,
            stream_title: Arc::default(),
        }))
    }

    pub fn meta(&self) -> &ResponseMeta {
        &self.meta
    }

    /// The latest ICY `StreamTitle`, if the server sent one.
    pub fn stream_title(&self) -> Option<String> {
        self.stream_title.lock().ok()?.clone()
    }

    fn charge(&mut self, n: usize) -> io::Result<()> {
        self.budget = self.budget.checked_sub(n as u64).ok_or_else(|| {
            io::Error::new(io::ErrorKind::FileTooLarge, "read limit reached for this source")
        })?;
        Ok(())
    }

    /// Reads raw body bytes (metadata included).
    fn read_body(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(body) = self.body.as_mut() else { return Ok(0) };
        let n = body.read(buf)?;
        self.charge(n)?;
        Ok(n)
    }

    /// Consumes one ICY metadata block and records its StreamTitle.
    fn read_icy_block(&mut self) -> io::Result<()> {
        let mut len = [0u8; 1];
        if self.read_body(&mut len)? == 0 {
            return Ok(());
        }
        let mut block = vec![0u8; len[0] as usize * 16];
        let mut filled = 0;
        while filled < block.len() {
            match self.read_body(&mut block[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        if let Some(title) = parse_stream_title(&block[..filled]) {
            if let Ok(mut t) = self.stream_title.lock() {
                *t = Some(title);
            }
        }
        Ok(())
    }

    fn reopen_at(&mut self, pos: u64) -> io::Result<()> {
        self.body = None;
        let res = self
            .client
            .get(&self.url)
            .header("Range", format!("bytes={pos}-"))
            .send()
            .map_err(io::Error::other)?;
        match res.status().as_u16() {
            206 => {}
            416 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "seek past the end of the resource")),
            s => return Err(io::Error::other(format!("range request answered with status {s}"))),
        }
        self.body = Some(res);
        self.pos = pos;
        Ok(())
    }

    fn restart(&mut self) -> io::Result<()> {
        self.body = None;
        let res = self.client.get(&self.url).send().map_err(io::Error::other)?;
        if !res.status().is_success() {
            return Err(io::Error::other(format!("status {} when re-reading", res.status())));
        }
        self.body = Some(res);
        self.pos = 0;
        Ok(())
    }

    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        let mut scratch = [0u8; 16 * 1024];
        while n > 0 {
            let want = scratch.len().min(n as usize);
            match self.read(&mut scratch[..want])? {
                0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "seek past the end of the stream")),
                k => n -= k as u64,
            }
        }
        Ok(())
    }
}

impl Read for HttpReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = match self.meta.icy_metaint {
            None => self.read_body(buf)?,
            Some(metaint) => {
                if self.icy_left == 0 {
                    self.read_icy_block()?;
                    self.icy_left = metaint;
                }
                let want = buf.len().min(self.icy_left);
                let n = self.read_body(&mut buf[..want])?;
                self.icy_left -= n;
                n
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for HttpReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.meta.length.and_then(|l| l.checked_add_signed(d)),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "invalid seek on an HTTP source"))?;
        if target == self.pos {
            return Ok(target);
        }
        if self.meta.icy_metaint.is_some() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "streams cannot seek"));
        }
        if self.meta.accepts_ranges && self.meta.length.is_some() {
            self.reopen_at(target)?;
        } else {
            if target < self.pos {
                self.restart()?;
            }
            self.skip(target - self.pos)?;
        }
        Ok(target)
    }
}

impl symphonia::core::io::MediaSource for HttpReader {
    fn is_seekable(&self) -> bool {
        !self.meta.is_stream()
    }

    fn byte_len(&self) -> Option<u64> {
        self.meta.length
    }
}

/// `StreamTitle='Artist - Title';` from an ICY metadata block.
pub fn parse_stream_title(block: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(block);
    let start = text.find("StreamTitle='")? + "StreamTitle='".len();
    let rest = &text[start..];
    let end = rest.find("';").unwrap_or_else(|| rest.trim_end_matches('\0').len());
    let title = rest[..end].trim().to_string();
    (!title.is_empty()).then_some(title)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_titles() {
        assert_eq!(parse_stream_title(b"StreamTitle='Band - Song';StreamUrl='';\0\0").as_deref(), Some("Band - Song"));
        assert_eq!(parse_stream_title(b"StreamTitle='';\0"), None);
        assert_eq!(parse_stream_title(b"garbage\xff\xfe"), None);
    }
}
