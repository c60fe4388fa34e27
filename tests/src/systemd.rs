//! What systemd's side of `sd_notify` is to a test: a datagram socket the node is pointed at
//! with `NOTIFY_SOCKET`, whose messages (`READY=1`, `WATCHDOG=1`, `MAINPID=…`) tests read.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds `notify.sock` in `dir`.
    pub fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket.set_read_timeout(Some(Duration::from_millis(200))).expect("read timeout");
        Self { socket, path }
    }

    /// `NOTIFY_SOCKET` for the node's environment.
    pub fn env(&self) -> (String, String) {
        ("NOTIFY_SOCKET".into(), self.path.display().to_string())
    }

    /// The next message, if one comes within 200 ms.
    pub fn recv(&self) -> Option<String> {
        let mut buf = [0u8; 1024];
        self.socket.recv(&mut buf).ok().map(|n| String::from_utf8_lossy(&buf[..n]).to_string())
    }

    /// The first message containing `what` within `timeout` (earlier ones are skipped).
    pub fn wait_for(&self, what: &str, timeout: Duration) -> String {
        crate::eventually(timeout, what, || self.recv().filter(|m| m.contains(what)))
    }

    /// How many messages containing `what` arrive during `window`.
    pub fn count_during(&self, what: &str, window: Duration) -> usize {
        let t0 = Instant::now();
        let mut n = 0;
        while t0.elapsed() < window {
            if self.recv().is_some_and(|m| m.contains(what)) {
                n += 1;
            }
        }
        n
    }
}
