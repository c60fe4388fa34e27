//! The worker's side of the route planner and the resolver, both of which live in the gateway
//! (one truth for every worker): each outbound source request asks the planner for a local
//! address over the IPC and waits for the lease; a platform track asks the resolver for its
//! stream.

use crate::sources::LoadFailure;
use caldera_protocol::{ResolveRequest, ResolvedStream, ToGateway, TrackException};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long a request waits for the gateway's lease.
const LEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a track waits for the resolver (the gateway enforces its own, shorter deadline).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(60);

type Resolution = Result<ResolvedStream, TrackException>;

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
    resolving: Mutex<HashMap<u64, oneshot::Sender<Resolution>>>,
    next: AtomicU64,
}

impl Routes {
    pub fn new(out: mpsc::Sender<ToGateway>) -> Self {
        Self { out, pending: Mutex::default(), resolving: Mutex::default(), next: AtomicU64::new(1) }
    }

    /// The gateway's answer to one of our requests; unknown ids (late answers) are dropped.
    pub fn deliver(&self, id: u64, address: Result<IpAddr, String>) {
        let waiter = self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        if let Some(tx) = waiter {
            let _ = tx.send(address);
        }
    }

    /// The gateway's answer to one of our resolve requests; unknown ids are dropped.
    pub fn deliver_resolved(&self, id: u64, result: Resolution) {
        let waiter = self.resolving.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        if let Some(tx) = waiter {
            let _ = tx.send(result);
        }
    }

    /// Asks the gateway's resolver for a platform track's stream.
    pub async fn resolve(&self, request: ResolveRequest) -> Result<ResolvedStream, LoadFailure> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.resolving.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        let answer = match self.out.send(ToGateway::Resolve { id, request }).await {
            Ok(()) => match tokio::time::timeout(RESOLVE_TIMEOUT, rx).await {
                Ok(Ok(Ok(stream))) => Ok(stream),
                Ok(Ok(Err(e))) => Err(LoadFailure::new(&e.message, e.severity, e.cause)),
                _ => Err(LoadFailure::fault("The resolver did not answer.", "no answer from the gateway in time".into())),
            },
            Err(_) => Err(LoadFailure::fault("The resolver did not answer.", "the gateway connection is closed".into())),
        };
        self.resolving.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        answer
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
