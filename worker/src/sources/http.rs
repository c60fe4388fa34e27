//! A blocking, seekable reader over HTTP (symphonia needs `Read + Seek`).
//!
//! Seeks use `Range` requests when the server supports them; otherwise a forward seek reads and
//! discards, and a backward seek starts over. ICY (SHOUTcast/Icecast) metadata interleaved in the
//! body is stripped, and the latest `StreamTitle` is kept. Every byte counts against a budget, so
//! a hostile server cannot make a probe read forever.
//!
//! With a route planner, each request leaves from the local address the planner hands out; a 429,
//! or an address the host cannot bind, is reported to the planner and the request is retried from
//! the next address, up to the retry limit.

use super::LoadFailure;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// A local address the planner handed out for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: u64,
    pub address: IpAddr,
}

/// Why no address could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoLease {
    /// Every address of the block is failing or excluded.
    Exhausted(String),
    /// The planner did not answer (the gateway is gone or overloaded).
    Unavailable(String),
}

/// Hands out the local addresses outbound requests leave from (the gateway's route planner).
pub trait Planner: Send + Sync {
    fn acquire(&self) -> Result<Lease, NoLease>;
    /// The request made with `lease` was rate limited, or its address could not be bound.
    fn failed(&self, lease: Lease);
}

/// A route planner, and how many times a request may be retried on another address after a
/// failed attempt (`None` = until no address is free or the time limit runs out).
#[derive(Clone, Copy)]
pub struct Outbound<'a> {
    pub planner: &'a dyn Planner,
    pub retry_limit: Option<u32>,
}

/// The longest a request keeps retrying on new addresses.
const MAX_RETRY_TIME: Duration = Duration::from_secs(60);

/// A client leaving from `local`, if given, and reaching `pinned.0` at the addresses `pinned.1`
/// (resolved by the caller) instead of resolving it again.
fn client(timeout: Duration, local: Option<IpAddr>, pinned: Option<(&str, &[SocketAddr])>) -> Result<reqwest::blocking::Client, LoadFailure> {
    let mut builder = reqwest::blocking::Client::builder()
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        .local_address(local);
    if let Some((host, addrs)) = pinned {
        builder = builder.resolve_to_addrs(host, addrs);
    }
    builder.build().map_err(|e| LoadFailure::fault("Could not create an HTTP client.", e.to_string()))
}

/// The connection failed because the local address cannot be used on this host.
fn is_bind_error(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::AddrNotAvailable || io.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                return true;
            }
        }
        source = s.source();
    }
    false
}

/// `url`'s host and its addresses, looked up once for all attempts of a planned request;
/// `None` when the URL has no host or it does not resolve (the request itself then says so).
fn resolve(url: &str) -> Option<(String, Vec<SocketAddr>)> {
    let u = url::Url::parse(url).ok()?;
    let host = u.host_str()?.trim_matches(['[', ']']).to_string();
    let addrs = (host.as_str(), u.port_or_known_default()?).to_socket_addrs().ok()?.collect();
    Some((host, addrs))
}

/// Sends `GET url`, from planner-chosen addresses when there is a planner: a rate-limited or
/// unbindable address is reported and the next one tried, up to the retry limit.
fn get(
    url: &str,
    timeout: Duration,
    outbound: Option<Outbound>,
) -> Result<(reqwest::blocking::Client, reqwest::blocking::Response), LoadFailure> {
    let deadline = Instant::now() + timeout.min(MAX_RETRY_TIME);
    let resolved = outbound.and_then(|_| resolve(url));
    let mut failed = 0u32;
    loop {
        let lease = outbound.map(|o| o.planner.acquire()).transpose().map_err(|no| match no {
            NoLease::Exhausted(why) => LoadFailure::suspicious("No outbound address is free to make the request from.", format!("{url}: {why}")),
            NoLease::Unavailable(why) => LoadFailure::fault("The route planner did not hand out an address.", format!("{url}: {why}")),
        })?;
        // A connection bound to the lease reaches only the host's addresses of its family; a
        // host with none is fetched unbound, as Lavaplayer falls back for a host without AAAA.
        let pinned: Option<(&str, Vec<SocketAddr>)> = lease.zip(resolved.as_ref()).map(|(l, (host, addrs))| {
            (host.as_str(), addrs.iter().copied().filter(|a| a.is_ipv4() == l.address.is_ipv4()).collect())
        });
        let pinned = pinned.filter(|(_, addrs)| !addrs.is_empty());
        let lease = lease.filter(|l| {
            let reachable = pinned.is_some() || resolved.is_none();
            if !reachable {
                tracing::warn!(%url, local = %l.address, "the host has no address of the route planner's family; fetching it unbalanced");
            }
            reachable
        });
        let client = client(timeout, lease.map(|l| l.address), pinned.as_ref().map(|(host, addrs)| (*host, addrs.as_slice())))?;
        let sent = client.get(url).header("Icy-MetaData", "1").send();
        let rejected = lease.filter(|_| match &sent {
            Ok(res) => res.status() == reqwest::StatusCode::TOO_MANY_REQUESTS,
            Err(e) => is_bind_error(e),
        });
        let (Some(lease), Some(outbound)) = (rejected, outbound) else {
            let res = sent.map_err(|e| LoadFailure::connect(url, &e))?;
            return Ok((client, res));
        };
        outbound.planner.failed(lease);
        failed += 1;
        if outbound.retry_limit.is_some_and(|limit| failed > limit) || Instant::now() >= deadline {
            return Err(LoadFailure::suspicious(
                "Retry aborted, too many retries on ratelimit.",
                format!("{url}: {failed} attempts were rate limited or could not bind, the last from {}", lease.address),
            ));
        }
    }
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
    /// statuses and connection failures become load failures. `timeout` bounds each request;
    /// later range requests leave from the same address as the first.
    pub fn open(url: &str, budget: u64, timeout: Duration, outbound: Option<Outbound>) -> Result<Option<Self>, LoadFailure> {
        let (client, res) = get(url, timeout, outbound)?;
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
