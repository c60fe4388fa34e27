//! A Lavalink client session for tests: the WebSocket (messages collected by a thread) and
//! helpers for the REST calls a bot makes.

use crate::{Node, PASSWORD};
use serde_json::Value;
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};

pub const USER_ID: u64 = 170_000_000_000_000_001;

#[derive(Default)]
struct Inbox {
    messages: Mutex<Vec<(Instant, Value)>>,
    grew: Condvar,
    closed: Mutex<Option<(u16, String)>>,
}

pub struct Session {
    pub id: String,
    pub ready: Value,
    /// The `Session-Resumed` response header of the handshake.
    pub resumed_header: Option<String>,
    ws: Arc<Mutex<tungstenite::WebSocket<TcpStream>>>,
    inbox: Arc<Inbox>,
    stream: TcpStream,
    base: String,
    http: reqwest::blocking::Client,
}

impl Session {
    /// Opens `/v4/websocket` and waits for `ready`.
    pub fn connect(node: &Node) -> Session {
        Self::connect_with(node, &[]).expect("websocket handshake")
    }

    /// Opens `/v4/websocket` with these headers replacing the defaults (a `None` value removes
    /// one); `Err(status)` when the handshake is refused.
    pub fn connect_with(node: &Node, headers: &[(&str, Option<&str>)]) -> Result<Session, u16> {
        let addr = node.addr.expect("node listening");
        let mut request = format!("ws://{addr}/v4/websocket").into_client_request().unwrap();
        let h = request.headers_mut();
        h.insert("Authorization", PASSWORD.parse().unwrap());
        h.insert("User-Id", USER_ID.to_string().parse().unwrap());
        h.insert("Client-Name", "caldera-tests/1.0".parse().unwrap());
        for (name, value) in headers {
            let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            h.remove(&name);
            if let Some(v) = value {
                h.insert(name, v.parse().unwrap());
            }
        }
        let stream = TcpStream::connect(addr).unwrap();
        let (ws, response) = match tungstenite::client(request, stream.try_clone().unwrap()) {
            Ok(ok) => ok,
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(res))) => return Err(res.status().as_u16()),
            Err(e) => panic!("websocket handshake failed: {e}"),
        };
        let resumed_header = response.headers().get("session-resumed").and_then(|v| v.to_str().ok()).map(str::to_string);
        stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let ws = Arc::new(Mutex::new(ws));
        let inbox = Arc::new(Inbox::default());
        let (sink, reader) = (inbox.clone(), ws.clone());
        std::thread::spawn(move || loop {
            let read = reader.lock().unwrap().read();
            match read {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).expect("server sent invalid JSON");
                    sink.messages.lock().unwrap().push((Instant::now(), v));
                    sink.grew.notify_all();
                }
                Ok(Message::Close(frame)) => {
                    *sink.closed.lock().unwrap() = Some(frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new())));
                    sink.grew.notify_all();
                    break;
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    // Let a writer in between reads.
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => {
                    sink.closed.lock().unwrap().get_or_insert((1006, String::new()));
                    sink.grew.notify_all();
                    break;
                }
            }
        });
        let mut s = Session {
            id: String::new(),
            ready: Value::Null,
            resumed_header,
            ws,
            inbox,
            stream,
            base: format!("http://{addr}"),
            http: node.client().clone(),
        };
        let ready = s.wait_for(|m| m["op"] == "ready", Duration::from_secs(10)).expect("no ready op");
        s.id = ready["sessionId"].as_str().unwrap().to_string();
        s.ready = ready;
        Ok(s)
    }

    /// Drops the connection and waits until the node holds the session for a resume (a client
    /// that reconnects before the node noticed the drop gets a new session, as with Lavalink).
    pub fn drop_and_wait_resumable(&self) {
        self.drop_connection();
        let url = format!("{}/v4/caldera/connections", self.base);
        crate::eventually(Duration::from_secs(10), "the session to become resumable", || {
            let c: Value = self.http.get(&url).header("Authorization", PASSWORD).send().ok()?.json().ok()?;
            c["connections"].as_array()?.iter().any(|e| e["sessionId"] == self.id.as_str() && e["state"] == "resumable").then_some(())
        });
    }

    /// Sends a text message (Lavalink ignores them).
    pub fn send_text(&self, text: &str) {
        self.ws.lock().unwrap().send(Message::Text(text.into())).expect("send");
    }

    /// `PATCH /v4/sessions/{id}`.
    pub fn configure(&self, body: Value) -> (u16, Value) {
        self.patch_json(format!("{}/v4/sessions/{}", self.base, self.id), body)
    }

    /// PATCHes JSON with the password; returns (status, body).
    fn patch_json(&self, url: String, body: Value) -> (u16, Value) {
        let res = self.http.patch(url).header("Authorization", PASSWORD).json(&body).send().unwrap();
        let status = res.status().as_u16();
        (status, res.json().unwrap_or(Value::Null))
    }

    /// The first message (in arrival order) matching `pred`, waiting up to `timeout`.
    pub fn wait_for(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Option<Value> {
        self.wait_for_at(pred, timeout).map(|(_, v)| v)
    }

    /// Like [`Self::wait_for`], with the arrival time.
    pub fn wait_for_at(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Option<(Instant, Value)> {
        let deadline = Instant::now() + timeout;
        let mut msgs = self.inbox.messages.lock().unwrap();
        loop {
            if let Some(m) = msgs.iter().find(|(_, m)| pred(m)) {
                return Some(m.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            msgs = self.inbox.grew.wait_timeout(msgs, left).unwrap().0;
        }
    }

    /// Waits for a player event of `kind` (e.g. "TrackEndEvent") for `guild`.
    pub fn wait_event(&self, kind: &str, guild: u64, timeout: Duration) -> Option<(Instant, Value)> {
        let g = guild.to_string();
        self.wait_for_at(|m| m["op"] == "event" && m["type"] == kind && m["guildId"] == g.as_str(), timeout)
    }

    /// All messages so far.
    pub fn messages(&self) -> Vec<Value> {
        self.inbox.messages.lock().unwrap().iter().map(|(_, m)| m.clone()).collect()
    }

    pub fn closed(&self) -> Option<(u16, String)> {
        self.inbox.closed.lock().unwrap().clone()
    }

    /// Drops the TCP connection without a close frame.
    pub fn drop_connection(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    fn player_url(&self, guild: u64) -> String {
        format!("{}/v4/sessions/{}/players/{guild}", self.base, self.id)
    }

    /// `PATCH` the player; returns (status, body).
    pub fn patch(&self, guild: u64, body: Value) -> (u16, Value) {
        self.patch_query(guild, "", body)
    }

    pub fn patch_query(&self, guild: u64, query: &str, body: Value) -> (u16, Value) {
        self.patch_json(format!("{}{query}", self.player_url(guild)), body)
    }

    pub fn get_player(&self, guild: u64) -> (u16, Value) {
        let res = self.http.get(self.player_url(guild)).header("Authorization", PASSWORD).send().unwrap();
        let status = res.status().as_u16();
        (status, res.json().unwrap_or(Value::Null))
    }

    pub fn delete_player(&self, guild: u64) -> u16 {
        self.http.delete(self.player_url(guild)).header("Authorization", PASSWORD).send().unwrap().status().as_u16()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.drop_connection();
    }
}
