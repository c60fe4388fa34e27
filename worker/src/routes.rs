//! The worker's side of the route planner: the planner lives in the gateway (one truth for every
//! worker), so each outbound source request asks it for a local address over the IPC and waits
//! for the lease.

use caldera_protocol::ToGateway;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long a request waits for the gateway's lease.
const LEASE_TIMEOUT: Duration = Duration::from_secs(5);

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

pub struct Routes {
    out: mpsc::Sender<ToGateway>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<IpAddr, String>>>>,
    next: AtomicU64,
}

impl Routes {
    pub fn new(out: mpsc::Sender<ToGateway>) -> Self {
        Self { out, pending: Mutex::default(), next: AtomicU64::new(1) }
    }

    /// The gateway's answer to one of our requests; unknown ids (late answers) are dropped.
    pub fn deliver(&self, id: u64, address: Result<IpAddr, String>) {
        let waiter = self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        if let Some(tx) = waiter {
            let _ = tx.send(address);
        }
    }

    /// Asks the gateway's planner for the local address of one request.
    pub async fn acquire(&self) -> Result<Lease, NoLease> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        let answer = match self.out.send(ToGateway::RouteAcquire { id }).await {
            Ok(()) => match tokio::time::timeout(LEASE_TIMEOUT, rx).await {
                Ok(Ok(a)) => a.map_err(NoLease::Exhausted),
                _ => Err(NoLease::Unavailable("the gateway did not answer in time".into())),
            },
            Err(_) => Err(NoLease::Unavailable("the gateway connection is closed".into())),
        };
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        answer.map(|address| Lease { id, address })
    }

    /// The request made with `lease` was rate limited, or its address could not be bound.
    pub async fn failed(&self, lease: Lease) {
        // No Caldera source searches yet, so no failure is a search failure.
        let _ = self.out.send(ToGateway::RouteFailed { id: lease.id, search: false }).await;
    }
}
