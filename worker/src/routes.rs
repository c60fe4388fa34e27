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

/// Requests sent to the gateway and waiting for its answer, by id.
struct Waiters<T>(Mutex<HashMap<u64, oneshot::Sender<T>>>);

impl<T> Default for Waiters<T> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<T> Waiters<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<T>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The gateway's answer to request `id`; unknown ids (late answers) are dropped.
    fn deliver(&self, id: u64, answer: T) {
        let waiter = self.lock().remove(&id);
        if let Some(tx) = waiter {
            let _ = tx.send(answer);
        }
    }
}

/// Why a request to the gateway got no answer.
enum Unanswered {
    /// The connection to the gateway is closed.
    Closed,
    /// No answer within the request's time.
    Late,
}

pub struct Routes {
    out: mpsc::Sender<ToGateway>,
    leases: Waiters<Result<IpAddr, String>>,
    resolutions: Waiters<Resolution>,
    next: AtomicU64,
}

impl Routes {
    pub fn new(out: mpsc::Sender<ToGateway>) -> Self {
        Self { out, leases: Waiters::default(), resolutions: Waiters::default(), next: AtomicU64::new(1) }
    }

    /// The gateway's answer to one of our lease requests.
    pub fn deliver(&self, id: u64, address: Result<IpAddr, String>) {
        self.leases.deliver(id, address);
    }

    /// The gateway's answer to one of our resolve requests.
    pub fn deliver_resolved(&self, id: u64, result: Resolution) {
        self.resolutions.deliver(id, result);
    }

    /// Sends the message `ask` makes for a fresh id and waits up to `timeout` for its answer.
    async fn ask<T>(&self, waiters: &Waiters<T>, ask: impl FnOnce(u64) -> ToGateway, timeout: Duration) -> (u64, Result<T, Unanswered>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        waiters.lock().insert(id, tx);
        let answer = match self.out.send(ask(id)).await {
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(answer)) => Ok(answer),
                _ => Err(Unanswered::Late),
            },
            Err(_) => Err(Unanswered::Closed),
        };
        waiters.lock().remove(&id);
        (id, answer)
    }

    /// Asks the gateway's resolver for a platform track's stream.
    pub async fn resolve(&self, request: ResolveRequest) -> Result<ResolvedStream, LoadFailure> {
        let (_, answer) = self.ask(&self.resolutions, |id| ToGateway::Resolve { id, request }, RESOLVE_TIMEOUT).await;
        match answer {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(LoadFailure::new(&e.message, e.severity, e.cause)),
            Err(Unanswered::Late) => Err(LoadFailure::fault("The resolver did not answer.", "no answer from the gateway in time".into())),
            Err(Unanswered::Closed) => Err(LoadFailure::fault("The resolver did not answer.", "the gateway connection is closed".into())),
        }
    }

    /// Asks the gateway's planner for the local address of one request.
    pub async fn acquire(&self) -> Result<Lease, NoLease> {
        let (id, answer) = self.ask(&self.leases, |id| ToGateway::RouteAcquire { id }, LEASE_TIMEOUT).await;
        match answer {
            Ok(address) => address.map(|address| Lease { id, address }).map_err(NoLease::Exhausted),
            Err(Unanswered::Late) => Err(NoLease::Unavailable("the gateway did not answer in time".into())),
            Err(Unanswered::Closed) => Err(NoLease::Unavailable("the gateway connection is closed".into())),
        }
    }

    /// The request made with `lease` was rate limited, or its address could not be bound.
    pub async fn failed(&self, lease: Lease) {
        // No Caldera source searches yet, so no failure is a search failure.
        let _ = self.out.send(ToGateway::RouteFailed { id: lease.id, search: false }).await;
    }
}
