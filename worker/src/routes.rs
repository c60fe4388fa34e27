//! The worker's side of the route planner: the planner lives in the gateway (one truth for every
//! worker), so each outbound source request asks it for a local address over the IPC and waits
//! for the lease. Called from blocking threads (loads, decoders), never from async tasks.

use crate::sources::http::{Lease, NoLease, Outbound, Planner};
use caldera_protocol::{RoutePlanning, ToGateway};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a request waits for the gateway's lease.
const LEASE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Routes {
    out: mpsc::Sender<ToGateway>,
    pending: Mutex<HashMap<u64, std_mpsc::SyncSender<Result<IpAddr, String>>>>,
    next: AtomicU64,
}

impl Routes {
    pub fn new(out: mpsc::Sender<ToGateway>) -> Self {
        Self { out, pending: Mutex::default(), next: AtomicU64::new(1) }
    }

    /// The outbound route for sources under these settings: none without a planner.
    pub fn outbound(&self, planning: Option<RoutePlanning>) -> Option<Outbound<'_>> {
        planning.map(|p| Outbound { planner: self, retry_limit: p.retry_limit })
    }

    /// The gateway's answer to one of our requests; unknown ids (late answers) are dropped.
    pub fn deliver(&self, id: u64, address: Result<IpAddr, String>) {
        let waiter = self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        if let Some(tx) = waiter {
            let _ = tx.try_send(address);
        }
    }
}

impl Planner for Routes {
    fn acquire(&self) -> Result<Lease, NoLease> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = std_mpsc::sync_channel(1);
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        let answer = match self.out.blocking_send(ToGateway::RouteAcquire { id }) {
            Ok(()) => rx
                .recv_timeout(LEASE_TIMEOUT)
                .map_err(|_| NoLease::Unavailable("the gateway did not answer in time".into()))
                .and_then(|a| a.map_err(NoLease::Exhausted)),
            Err(_) => Err(NoLease::Unavailable("the gateway connection is closed".into())),
        };
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        answer.map(|address| Lease { id, address })
    }

    fn failed(&self, lease: Lease) {
        // No Caldera source searches yet, so no failure is a search failure.
        let _ = self.out.blocking_send(ToGateway::RouteFailed { id: lease.id, search: false });
    }
}
