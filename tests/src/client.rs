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
    inbox: Arc<Inbox>,
    stream: TcpStream,
    base: String,
    http: reqwest::blocking::Client,
}

impl Session {
    /// Opens `/v4/websocket` and waits for `ready`.
    pub fn connect(node: &Node) -> Session {
        let addr = node.addr.expect("node listening");
        let mut request = format!("ws://{addr}/v4/websocket").into_client_request().unwrap();
        let h = request.headers_mut();
        h.insert("Authorization", PASSWORD.parse().unwrap());
        h.insert("User-Id", USER_ID.to_string().parse().unwrap());
        h.insert("Client-Name", "caldera-tests/1.0".parse().unwrap());
        let stream = TcpStream::connect(addr).unwrap();
        let (mut ws, _) = tungstenite::client(request, stream.try_clone().unwrap()).expect("websocket handshake");
        let inbox = Arc::new(Inbox::default());
        let sink = inbox.clone();
        std::thread::spawn(move || loop {
            match ws.read() {
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
            inbox,
            stream,
            base: format!("http://{addr}"),
            http: node.client().clone(),
        };
        let ready = s.wait_for(|m| m["op"] == "ready", Duration::from_secs(10)).expect("no ready op");
        s.id = ready["sessionId"].as_str().unwrap().to_string();
        s.ready = ready;
        s
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
        let res = self
            .http
            .patch(format!("{}{query}", self.player_url(guild)))
            .header("Authorization", PASSWORD)
            .json(&body)
            .send()
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().unwrap_or(Value::Null))
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
