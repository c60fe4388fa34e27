//! A small HTTP/1.1 server for tests: serves bytes (with or without Range support), statuses,
//! redirects, endless ICY streams and requests that never get an answer. It records who asked.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone)]
pub enum Route {
    /// A file. `ranges` enables `Accept-Ranges: bytes` and 206 answers.
    File { body: Arc<Vec<u8>>, content_type: String, ranges: bool },
    Status(u16),
    Redirect(String),
    /// An endless stream without Content-Length, `chunk` repeated; ICY metadata when `icy` is set.
    Stream { chunk: Arc<Vec<u8>>, content_type: String, icy: Option<Icy> },
    /// Reads the request and never answers (until the server is dropped or 60 s pass).
    Hang,
    /// A file whose answer promises every byte but sends only `after` bytes, then stalls for
    /// `hold` and drops the connection — a download that stalls or is cut mid-way. Range requests
    /// (a reader resuming the transfer) are answered 503: the server is gone for good.
    Cut { body: Arc<Vec<u8>>, content_type: String, after: usize, hold: Duration },
    /// A file whose full answers drop the connection after `after` bytes, while range requests
    /// are answered whole: a flaky server a reader gets through by resuming.
    Flaky { body: Arc<Vec<u8>>, content_type: String, after: usize },
}

#[derive(Clone)]
pub struct Icy {
    pub name: String,
    pub metaint: usize,
    pub stream_title: String,
}

impl Route {
    pub fn file(body: Vec<u8>, content_type: &str) -> Self {
        Route::File { body: Arc::new(body), content_type: content_type.into(), ranges: true }
    }

    pub fn file_without_ranges(body: Vec<u8>, content_type: &str) -> Self {
        Route::File { body: Arc::new(body), content_type: content_type.into(), ranges: false }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    pub peer: IpAddr,
    pub range: Option<String>,
    /// `Referer` and `User-Agent`, to tell which client asked and with which headers.
    pub referer: Option<String>,
    pub user_agent: Option<String>,
}

/// Decides which client addresses get 429 Too Many Requests instead of their route.
type RateLimit = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

pub struct TestServer {
    pub addr: SocketAddr,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    hits: Arc<Mutex<Vec<Hit>>>,
    limited: Arc<Mutex<Option<RateLimit>>>,
}

impl TestServer {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1:0")
    }

    pub fn start_on(bind: &str) -> Self {
        let listener = TcpListener::bind(bind).expect("bind test HTTP server");
        let addr = listener.local_addr().unwrap();
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let limited: Arc<Mutex<Option<RateLimit>>> = Arc::default();
        let (r, h, l) = (routes.clone(), hits.clone(), limited.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (r, h, l) = (r.clone(), h.clone(), l.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &r, &h, &l);
                });
            }
        });
        Self { addr, routes, hits, limited }
    }

    /// Answers 429 to every request from a client address `limit` picks, whatever the path.
    pub fn rate_limit(&self, limit: impl Fn(IpAddr) -> bool + Send + Sync + 'static) {
        *self.limited.lock().unwrap() = Some(Arc::new(limit));
    }

    pub fn route(&self, path: &str, route: Route) {
        self.routes.lock().unwrap().insert(path.into(), route);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The client address of each request for `path`, in order.
    pub fn peers(&self, path: &str) -> Vec<IpAddr> {
        self.hits(path).iter().map(|h| h.peer).collect()
    }

    pub fn hits(&self, path: &str) -> Vec<Hit> {
        self.hits.lock().unwrap().iter().filter(|h| h.path == path).cloned().collect()
    }
}

fn serve(
    stream: TcpStream,
    routes: &Mutex<HashMap<String, Route>>,
    hits: &Mutex<Vec<Hit>>,
    limited: &Mutex<Option<RateLimit>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let peer = stream.peer_addr()?.ip();
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (mut range, mut referer, mut user_agent) = (None, None, None);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            let slot = match k.trim().to_ascii_lowercase().as_str() {
                "range" => &mut range,
                "referer" => &mut referer,
                "user-agent" => &mut user_agent,
                _ => continue,
            };
            *slot = Some(v.trim().to_string());
        }
    }
    hits.lock().unwrap().push(Hit { path: path.clone(), peer, range: range.clone(), referer, user_agent });
    let route = routes.lock().unwrap().get(&path).cloned();
    let mut out = stream;
    if limited.lock().unwrap().as_ref().is_some_and(|limit| limit(peer)) {
        return respond(&mut out, 429, &[], b"too many requests");
    }
    match route {
        None => respond(&mut out, 404, &[], b"not found"),
        Some(Route::Status(code)) => respond(&mut out, code, &[], b"status"),
        Some(Route::Redirect(to)) => respond(&mut out, 302, &[("Location", to)], b""),
        Some(Route::Hang) => {
            std::thread::sleep(Duration::from_secs(60));
            Ok(())
        }
        Some(Route::Cut { body, content_type, after, hold }) => {
            let headers = vec![("Content-Type", content_type), ("Accept-Ranges", "bytes".into())];
            if range_start(range.as_deref()).is_some() {
                return respond(&mut out, 503, &[], b"");
            }
            let mut head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
            for (k, v) in &headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            out.write_all(head.as_bytes())?;
            out.write_all(&body[..after.min(body.len())])?;
            out.flush()?;
            std::thread::sleep(hold);
            out.shutdown(std::net::Shutdown::Both)
        }
        Some(Route::Flaky { body, content_type, after }) => {
            let headers = vec![("Content-Type", content_type), ("Accept-Ranges", "bytes".into())];
            if let Some(start) = range_start(range.as_deref()) {
                let start = start.min(body.len());
                let mut h = headers;
                h.push(("Content-Range", format!("bytes {start}-{}/{}", body.len() - 1, body.len())));
                return respond(&mut out, 206, &h, &body[start..]);
            }
            let mut head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
            for (k, v) in &headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            out.write_all(head.as_bytes())?;
            out.write_all(&body[..after.min(body.len())])?;
            out.flush()?;
            out.shutdown(std::net::Shutdown::Both)
        }
        Some(Route::File { body, content_type, ranges }) => {
            let mut headers = vec![("Content-Type", content_type)];
            if ranges {
                headers.push(("Accept-Ranges", "bytes".into()));
                if let Some(start) = range_start(range.as_deref()) {
                    if start >= body.len() {
                        return respond(&mut out, 416, &[("Content-Range", format!("bytes */{}", body.len()))], b"");
                    }
                    headers.push(("Content-Range", format!("bytes {start}-{}/{}", body.len() - 1, body.len())));
                    return respond(&mut out, 206, &headers, &body[start..]);
                }
            }
            respond(&mut out, 200, &headers, &body)
        }
        Some(Route::Stream { chunk, content_type, icy }) => {
            let mut head = format!("HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n");
            if let Some(icy) = &icy {
                head.push_str(&format!("icy-name: {}\r\nicy-metaint: {}\r\n", icy.name, icy.metaint));
            }
            head.push_str("\r\n");
            out.write_all(head.as_bytes())?;
            // Bounded: a test stream never runs for more than 16 MiB.
            let mut sent_audio = 0usize;
            let mut since_meta = 0usize;
            for _ in 0..(16 * 1024 * 1024 / chunk.len().max(1)) {
                let mut data: &[u8] = &chunk;
                while !data.is_empty() {
                    match &icy {
                        None => {
                            out.write_all(data)?;
                            data = &[];
                        }
                        Some(icy) => {
                            let n = (icy.metaint - since_meta).min(data.len());
                            out.write_all(&data[..n])?;
                            data = &data[n..];
                            since_meta += n;
                            if since_meta == icy.metaint {
                                out.write_all(&icy_block(&icy.stream_title))?;
                                since_meta = 0;
                            }
                        }
                    }
                }
                sent_audio += chunk.len();
                // Roughly real time for a 128 kbit/s stream is far slower; this only keeps the
                // stream from flooding loopback.
                if sent_audio > 256 * 1024 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            Ok(())
        }
    }
}

fn range_start(range: Option<&str>) -> Option<usize> {
    range?.strip_prefix("bytes=")?.split('-').next()?.parse().ok()
}

fn icy_block(title: &str) -> Vec<u8> {
    let text = format!("StreamTitle='{title}';");
    let blocks = text.len().div_ceil(16);
    let mut out = vec![blocks as u8];
    out.extend_from_slice(text.as_bytes());
    out.resize(1 + blocks * 16, 0);
    out
}

fn respond(out: &mut TcpStream, code: u16, headers: &[(&str, String)], body: &[u8]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()
}
