//! A forward HTTP proxy for tests (plain HTTP, absolute-form requests), requiring basic
//! credentials: it records every request it is asked to relay, and relays only authorized ones.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// One request the proxy was asked to relay.
#[derive(Debug, Clone)]
pub struct Relayed {
    /// The absolute URL asked for.
    pub url: String,
    /// Whether it carried the expected `Proxy-Authorization`.
    pub authorized: bool,
}

pub struct TestProxy {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Relayed>>>,
}

impl TestProxy {
    /// A proxy accepting `user`:`password`.
    pub fn start(user: &str, password: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test proxy");
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Relayed>>> = Arc::default();
        let expected = format!("Basic {}", base64(format!("{user}:{password}").as_bytes()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (record, expected) = (record.clone(), expected.clone());
                std::thread::spawn(move || {
                    let _ = relay(client, &expected, &record);
                });
            }
        });
        Self { addr, seen }
    }

    pub fn seen(&self) -> Vec<Relayed> {
        self.seen.lock().unwrap().clone()
    }
}

fn relay(client: TcpStream, expected: &str, seen: &Mutex<Vec<Relayed>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, url) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut headers = Vec::new();
    let mut authorized = false;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        match header.split_once(':') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("proxy-authorization") => authorized = v.trim() == expected,
            Some((k, _)) if k.trim().eq_ignore_ascii_case("proxy-connection") => {}
            _ => headers.push(header),
        }
    }
    seen.lock().unwrap().push(Relayed { url: url.clone(), authorized });
    let mut client = client;
    if !authorized {
        return client.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
    let rest = url.strip_prefix("http://").unwrap_or(&url);
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut upstream = TcpStream::connect(host)?;
    let mut request = format!("{method} {path} HTTP/1.1\r\n");
    for h in headers {
        request.push_str(&h);
    }
    request.push_str("\r\n");
    upstream.write_all(request.as_bytes())?;
    std::io::copy(&mut upstream, &mut client)?;
    Ok(())
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
