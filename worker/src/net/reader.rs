//! A blocking, seekable reader over an HTTP body, for demuxers (symphonia needs `Read + Seek`).
//!
//! A task on the worker's runtime pulls the body into a bounded buffer ahead of the reader; the
//! reader blocks (bounded by its deadline) until bytes arrive. Seeks use `Range` requests when
//! the server supports them; otherwise a forward seek reads and discards, and a backward seek
//! starts over. A transfer that fails mid-way is resumed where it stopped (a `Range` request, or
//! a new request for a stream), a few times, as Lavaplayer's persistent streams do. ICY
//! metadata interleaved in the body is stripped, and the latest `StreamTitle` kept. Every byte
//! counts against a budget, so a hostile server cannot make a probe read forever.

use super::{Egress, Net, Request, Response};
use http_body_util::BodyExt;
use crate::sources::LoadFailure;
use std::collections::VecDeque;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;
use tokio::sync::Notify;

/// Bytes fetched ahead of the reader (a few seconds of a compressed track): more fetched ahead is
/// memory every player holds.
const AHEAD: usize = 32 * 1024;
/// Bytes buffered for a decoder to go on without waiting (a few packets of any format).
const READY_BYTES: usize = 8 * 1024;

/// How much input is buffered and not yet read: decoders on the shared pool check it before
/// reading, so a turn never waits on the network. Counts bytes for a transfer, segments for HLS.
#[derive(Debug, Clone)]
pub struct Gauge(Arc<GaugeState>);

#[derive(Debug)]
struct GaugeState {
    buffered: std::sync::atomic::AtomicUsize,
    done: std::sync::atomic::AtomicBool,
    /// How much is enough to go on without waiting.
    ready_at: usize,
}

impl Default for Gauge {
    fn default() -> Self {
        Self::new(READY_BYTES)
    }
}

impl Gauge {
    pub fn new(ready_at: usize) -> Self {
        Self(Arc::new(GaugeState { buffered: Default::default(), done: Default::default(), ready_at }))
    }

    /// Enough is buffered, or the input is over (reads will not wait).
    pub fn ready(&self) -> bool {
        use std::sync::atomic::Ordering::Acquire;
        self.0.done.load(Acquire) || self.0.buffered.load(Acquire) >= self.0.ready_at
    }

    pub fn add(&self, n: usize) {
        self.0.buffered.fetch_add(n, std::sync::atomic::Ordering::Release);
    }

    pub fn sub(&self, n: usize) {
        let _ = self.0.buffered.fetch_update(std::sync::atomic::Ordering::Release, std::sync::atomic::Ordering::Acquire, |b| Some(b.saturating_sub(n)));
    }

    /// The input is over (or failed): reads return at once.
    pub fn finish(&self) {
        self.0.done.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Empty again, input to come (a new transfer, a seek).
    pub fn reset(&self) {
        self.0.buffered.store(0, std::sync::atomic::Ordering::Release);
        self.0.done.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Times a failed transfer is resumed before the reader gives up.
const RESUMES: u32 = 3;

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

    fn of(res: &Response, final_url: String) -> Self {
        let header = |name: &str| res.headers.get(name).and_then(|v| v.to_str().ok()).map(|s| s.trim().to_string());
        // A ranged answer names the whole resource's length: `bytes 0-99/1234`.
        let total = header("content-range").filter(|_| res.status == 206).and_then(|v| v.rsplit_once('/')?.1.parse::<u64>().ok());
        ResponseMeta {
            final_url,
            content_type: header("content-type"),
            length: total.or_else(|| header("content-length").and_then(|v| v.parse().ok()).filter(|_| res.status != 206)),
            accepts_ranges: total.is_some() || header("accept-ranges").is_some_and(|v| v.eq_ignore_ascii_case("bytes")),
            icy_name: header("icy-name").filter(|n| !n.is_empty()),
            icy_metaint: header("icy-metaint").and_then(|v| v.parse().ok()).filter(|&n| n > 0),
        }
    }
}

#[derive(Default)]
struct PipeState {
    bytes: VecDeque<u8>,
    /// The transfer ended: `Ok` at the end of the body, `Err` when it failed.
    done: Option<Result<(), String>>,
}

/// The buffer between the transfer task and the reader.
struct Pipe {
    state: Mutex<PipeState>,
    /// Bytes arrived or the transfer ended (the reader waits on it).
    filled: Condvar,
    /// The reader took bytes (the transfer task waits on it).
    drained: Notify,
}

/// One running transfer; dropping it aborts the task and closes the connection.
struct Transfer {
    pipe: Arc<Pipe>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Transfer {
    fn start(net: &Net, mut res: Response, gauge: Gauge) -> Self {
        // Room for what is fetched ahead plus one chunk (hyper's read buffer bounds a chunk), so
        // the buffer never grows by doubling.
        let state = PipeState { bytes: VecDeque::with_capacity(AHEAD + super::http::READ_BUFFER), done: None };
        let pipe = Arc::new(Pipe { state: Mutex::new(state), filled: Condvar::new(), drained: Notify::new() });
        let read_timeout = net.read_timeout();
        let feed = pipe.clone();
        gauge.reset();
        let task = net.runtime().spawn(async move {
            let end = loop {
                loop {
                    let drained = feed.drained.notified();
                    if feed.state.lock().unwrap_or_else(|e| e.into_inner()).bytes.len() < AHEAD {
                        break;
                    }
                    drained.await;
                }
                // `socketTimeoutMs`: the longest wait for more of the body.
                match tokio::time::timeout(read_timeout, res.body.frame()).await {
                    Ok(Some(Ok(frame))) => {
                        let Ok(chunk) = frame.into_data() else { continue };
                        feed.state.lock().unwrap_or_else(|e| e.into_inner()).bytes.extend(chunk.iter());
                        gauge.add(chunk.len());
                        feed.filled.notify_all();
                    }
                    Ok(None) => break Ok(()),
                    Ok(Some(Err(e))) => break Err(super::http::describe(&e)),
                    Err(_) => break Err(format!("no data for {} ms", read_timeout.as_millis())),
                }
            };
            feed.state.lock().unwrap_or_else(|e| e.into_inner()).done = Some(end);
            gauge.finish();
            feed.filled.notify_all();
        });
        Self { pipe, task }
    }

    /// Reads what has arrived, waiting until `deadline` for something: `Ok(0)` at the end of the
    /// body, `Err` when the transfer failed or the deadline passed.
    fn read(&self, buf: &mut [u8], deadline: Option<Instant>, gauge: &Gauge) -> io::Result<usize> {
        let mut st = self.pipe.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if !st.bytes.is_empty() {
                let n = buf.len().min(st.bytes.len());
                for (dst, src) in buf.iter_mut().zip(st.bytes.drain(..n)) {
                    *dst = src;
                }
                drop(st);
                gauge.sub(n);
                self.pipe.drained.notify_one();
                return Ok(n);
            }
            match &st.done {
                Some(Ok(())) => return Ok(0),
                Some(Err(e)) => return Err(io::Error::other(e.clone())),
                None => {}
            }
            st = match deadline {
                None => self.pipe.filled.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now()).ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "the time to read this source ran out"))?;
                    self.pipe.filled.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0
                }
            };
        }
    }
}

/// Gives a fresh request for a resource whose address expired (a platform's media URL): the
/// resolver is asked again.
pub type Renew = Box<dyn FnMut() -> Result<Request, LoadFailure> + Send + Sync>;

/// Times an expired address is renewed before the reader gives up.
const RENEWALS: u32 = 2;

pub struct HttpReader {
    net: Net,
    renew: Option<Renew>,
    renewals_left: u32,
    /// The request, re-sent (from the same egress) to resume or seek.
    request: Request,
    egress: Egress,
    meta: ResponseMeta,
    body: Option<Transfer>,
    pos: u64,
    budget: u64,
    resumes_left: u32,
    /// Audio bytes left before the next ICY metadata block.
    icy_left: usize,
    stream_title: Arc<Mutex<Option<String>>>,
    gauge: Gauge,
}

impl HttpReader {
    /// Sends the first request; see [`Net::open`].
    pub(super) fn open(net: Net, mut request: Request, budget: u64) -> Result<Option<Self>, LoadFailure> {
        request.icy = request.chunk.is_none();
        if let Some(chunk) = request.chunk {
            request.from = Some(0);
            request.to = Some(chunk.max(1) - 1);
        }
        let (res, final_url, egress) = net.runtime().block_on(net.send(&request))?;
        if res.status == 404 {
            return Ok(None);
        }
        if !(200..300).contains(&res.status) {
            return Err(LoadFailure::common("That URL is not playable.", format!("Status code {}", res.status)));
        }
        let meta = ResponseMeta::of(&res, final_url);
        request.url = meta.final_url.clone();
        let gauge = Gauge::default();
        let body = Transfer::start(&net, res, gauge.clone());
        Ok(Some(Self {
            net,
            renew: None,
            renewals_left: RENEWALS,
            request,
            egress,
            icy_left: meta.icy_metaint.unwrap_or(0),
            meta,
            body: Some(body),
            pos: 0,
            budget,
            resumes_left: RESUMES,
            stream_title: Arc::default(),
            gauge,
        }))
    }

    /// Asks `renew` for a new request when the server refuses this one mid-way (403, 410: an
    /// expired media URL), and carries on from the same position.
    pub fn with_renewal(mut self, renew: Renew) -> Self {
        self.renew = Some(renew);
        self
    }

    /// How much of the body is buffered ahead of this reader.
    pub fn gauge(&self) -> Gauge {
        self.gauge.clone()
    }

    pub fn meta(&self) -> &ResponseMeta {
        &self.meta
    }

    /// The latest ICY `StreamTitle`, if the server sent one.
    pub fn stream_title(&self) -> Option<String> {
        self.stream_title.lock().ok()?.clone()
    }

    /// Sends the request again from the same egress, at `from` (a range) or from the start.
    fn resend(&mut self, from: Option<u64>) -> io::Result<()> {
        self.body = None;
        let from = from.or(self.request.chunk.map(|_| 0));
        let mut req = self.request.clone();
        req.from = from;
        req.to = self.request.chunk.zip(from).map(|(chunk, from)| from + chunk.max(1) - 1);
        req.icy = from.is_none() && self.meta.icy_metaint.is_some();
        let net = self.net.clone();
        let mut res = net.runtime().block_on(async { net.send_via(&req, self.egress).await }).map_err(|f| io::Error::other(format!("{}: {}", f.message, f.cause)))?;
        while matches!(res.status, 403 | 410) && self.renewals_left > 0 {
            let Some(renew) = self.renew.as_mut() else { break };
            self.renewals_left -= 1;
            tracing::info!(status = res.status, "the media address was refused; resolving the track again");
            let fresh = renew().map_err(io::Error::other)?;
            self.egress = Egress { local: fresh.local, proxied: false };
            self.request = Request { chunk: self.request.chunk, deadline: self.request.deadline, ..fresh };
            req = Request { from: req.from, to: req.to, icy: req.icy, ..self.request.clone() };
            res = net.runtime().block_on(async { net.send_via(&req, self.egress).await }).map_err(|f| io::Error::other(format!("{}: {}", f.message, f.cause)))?;
        }
        match (from, res.status) {
            (Some(_), 206) | (None, 200..=299) => {}
            (Some(_), 416) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "seek past the end of the resource")),
            (_, s) => return Err(io::Error::other(format!("the server answered {s} when reading again"))),
        }
        self.body = Some(Transfer::start(&self.net, res, self.gauge.clone()));
        self.pos = from.unwrap_or(0);
        if from.is_none() {
            self.icy_left = self.meta.icy_metaint.unwrap_or(0);
        }
        Ok(())
    }

    fn charge(&mut self, n: usize) -> io::Result<()> {
        self.budget = self.budget.checked_sub(n as u64).ok_or_else(|| io::Error::new(io::ErrorKind::FileTooLarge, "read limit reached for this source"))?;
        Ok(())
    }

    /// Reads raw body bytes (metadata included), resuming a failed transfer where it stopped.
    fn read_body(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(body) = self.body.as_ref() else { return Ok(0) };
            match body.read(buf, self.request.deadline, &self.gauge) {
                // The end of one chunk of a resource read in chunks: ask for the next.
                Ok(0) if self.request.chunk.is_some() && self.meta.length.is_some_and(|len| self.pos < len) => {
                    self.resend(Some(self.pos))?;
                }
                Ok(n) => {
                    self.charge(n)?;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut || self.resumes_left == 0 => return Err(e),
                Err(e) => {
                    self.resumes_left -= 1;
                    tracing::debug!(url = %self.request.url, error = %e, "transfer failed; resuming it");
                    // A file resumes at its position; a stream (or a server without ranges)
                    // starts over: radio continues live, and a file is skipped to where it was.
                    if self.seekable_by_range() {
                        self.resend(Some(self.pos))?;
                    } else if self.meta.is_stream() {
                        self.resend(None)?;
                    } else {
                        let pos = self.pos;
                        self.resend(None)?;
                        self.skip(pos)?;
                    }
                }
            }
        }
    }

    fn seekable_by_range(&self) -> bool {
        self.meta.accepts_ranges && self.meta.length.is_some() && self.meta.icy_metaint.is_none()
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
        if self.seekable_by_range() {
            self.resend(Some(target))?;
        } else {
            if target < self.pos {
                self.resend(None)?;
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
