//! Telling systemd the truth (STYLE §13): `READY=1` once workers are up and the listener is open,
//! `STOPPING=1` on shutdown, `WATCHDOG=1` from the async runtime at half of `WATCHDOG_USEC`, and a
//! `STATUS=` line. The notify socket protocol is a datagram per message; no crate needed.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace); inert without it.
    pub fn from_env() -> Self {
        let socket = std::env::var("NOTIFY_SOCKET").ok().and_then(|path| {
            let addr = match path.strip_prefix('@') {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
                }
                None => std::os::unix::net::SocketAddr::from_pathname(&path).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        Self { socket }
    }

    pub fn notify(&self, message: &str) {
        if let Some((socket, addr)) = &self.socket {
            if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
                tracing::warn!(error = %e, "cannot notify systemd");
            }
        }
    }

    /// How often to ping the watchdog: half of `WATCHDOG_USEC`, if it is meant for us.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.socket.as_ref()?;
        if let Ok(pid) = std::env::var("WATCHDOG_PID") {
            if pid.trim() != std::process::id().to_string() {
                return None;
            }
        }
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}
