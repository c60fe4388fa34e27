//! The queue between the node and one client WebSocket: bounded in messages and in bytes, so a
//! client that stops reading costs a bounded amount of memory before it is dropped.

use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

/// Most messages waiting for one socket.
pub const MAX_MESSAGES: usize = 1000;
/// Most bytes waiting for one socket.
pub const MAX_BYTES: usize = 8 << 20;

#[derive(Debug, Default)]
struct State {
    messages: VecDeque<String>,
    bytes: usize,
    /// The first `backlog` messages (`backlog_bytes`) came with the outbox (a resume's replay):
    /// the bounds apply to what comes after them.
    backlog: usize,
    backlog_bytes: usize,
    /// No more messages will come (the session moved on, or the client fell behind).
    closed: bool,
    /// The client fell behind: the socket is to be dropped without sending what is left.
    overflowed: bool,
}

/// What the socket task gets next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Message(String),
    /// Closed after everything was sent.
    Closed,
    /// The client did not keep up; drop the socket.
    Overflowed,
}

#[derive(Debug, Default)]
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An outbox starting with `backlog` (a resume's replay, itself bounded by the resume queue).
    pub fn with_backlog(backlog: impl IntoIterator<Item = String>) -> Self {
        let messages: VecDeque<String> = backlog.into_iter().collect();
        let bytes = messages.iter().map(String::len).sum();
        let state = State { backlog: messages.len(), backlog_bytes: bytes, messages, bytes, ..State::default() };
        Self { state: Mutex::new(state), ready: Notify::new() }
    }

    /// Queues a message; `Err` (and the outbox overflows) when the client is too far behind.
    pub fn push(&self, msg: String) -> Result<(), String> {
        let mut st = self.lock();
        if st.closed {
            return Err(msg);
        }
        if st.messages.len() - st.backlog >= MAX_MESSAGES || st.bytes - st.backlog_bytes + msg.len() > MAX_BYTES {
            st.closed = true;
            st.overflowed = true;
            st.messages.clear();
            st.bytes = 0;
            drop(st);
            self.ready.notify_one();
            return Err(msg);
        }
        st.bytes += msg.len();
        st.messages.push_back(msg);
        drop(st);
        self.ready.notify_one();
        Ok(())
    }

    /// Ends the outbox once what is queued has been taken.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Waits for the next message (cancel-safe).
    pub async fn next(&self) -> Next {
        loop {
            let notified = self.ready.notified();
            {
                let mut st = self.lock();
                if st.overflowed {
                    return Next::Overflowed;
                }
                if let Some(msg) = st.messages.pop_front() {
                    st.bytes -= msg.len();
                    if st.backlog > 0 {
                        st.backlog -= 1;
                        st.backlog_bytes -= msg.len();
                    }
                    return Next::Message(msg);
                }
                if st.closed {
                    return Next::Closed;
                }
            }
            notified.await;
        }
    }

    pub fn len(&self) -> usize {
        self.lock().messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_in_messages_and_bytes() {
        let outbox = Outbox::default();
        for i in 0..MAX_MESSAGES {
            outbox.push(i.to_string()).unwrap();
        }
        assert!(outbox.push("one too many".into()).is_err());
        assert_eq!(outbox.next().await, Next::Overflowed);
        assert!(outbox.push("after".into()).is_err(), "an overflowed outbox stays closed");

        let outbox = Outbox::default();
        outbox.push("x".repeat(MAX_BYTES - 10)).unwrap();
        assert!(outbox.push("y".repeat(11)).is_err());

        let outbox = Outbox::with_backlog((0..MAX_MESSAGES * 3).map(|i| i.to_string()));
        for i in 0..MAX_MESSAGES {
            outbox.push(i.to_string()).expect("the bounds apply after the backlog");
        }
        assert!(outbox.push("one too many".into()).is_err());

        let outbox = Outbox::default();
        outbox.push("a".into()).unwrap();
        outbox.close();
        assert_eq!(outbox.next().await, Next::Message("a".into()));
        assert_eq!(outbox.next().await, Next::Closed);
    }
}
