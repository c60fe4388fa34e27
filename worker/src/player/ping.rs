//! The player's `ping`: round trip to its voice server.
//!
//! Lavalink reports the voice websocket's heartbeat round trip; songbird keeps that to itself, so
//! Caldera measures the same network path directly: the time a TCP handshake to the voice
//! endpoint takes (one round trip). Results are shared by every player of the worker talking to
//! the same endpoint for [`FRESH_FOR`], so a busy worker does not open many connections.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a measurement is reused.
pub const FRESH_FOR: Duration = Duration::from_secs(10);
const TIMEOUT: Duration = Duration::from_secs(2);

fn cache() -> &'static Mutex<HashMap<String, (Instant, i64)>> {
    static CACHE: OnceLock<Mutex<HashMap<String, (Instant, i64)>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// `host:port` of a voice endpoint (Discord sends it without a port: 443).
fn address(endpoint: &str) -> String {
    let host = endpoint.trim_start_matches("wss://").split('/').next().unwrap_or(endpoint);
    let has_port = host.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !host.ends_with(']');
    if has_port {
        host.to_string()
    } else {
        format!("{host}:443")
    }
}

/// Round trip in milliseconds, or -1 when the endpoint cannot be reached.
pub async fn measure(endpoint: &str) -> i64 {
    let addr = address(endpoint);
    if let Some((at, ms)) = cache().lock().ok().and_then(|c| c.get(&addr).copied()) {
        if at.elapsed() < FRESH_FOR {
            return ms;
        }
    }
    let start = Instant::now();
    let ms = match tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(_stream)) => start.elapsed().as_millis() as i64,
        _ => -1,
    };
    if let Ok(mut c) = cache().lock() {
        c.insert(addr, (Instant::now(), ms));
    }
    ms
}

#[cfg(test)]
mod tests {
    use super::address;

    #[test]
    fn endpoints_get_a_port() {
        assert_eq!(address("eu-west123.discord.media"), "eu-west123.discord.media:443");
        assert_eq!(address("localhost:4443"), "localhost:4443");
        assert_eq!(address("wss://x.example/?v=4"), "x.example:443");
    }
}
