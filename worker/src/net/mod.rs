//! Outbound HTTP for every source: one async client per local address, shared by the worker's
//! players and loads (no thread per request), with Lavalink's timeouts and proxy, and the
//! gateway's route planner.
//!
//! - With a route planner, each request leaves from the address the planner hands out; a 429, or
//!   an address the host cannot bind, is reported to the planner and the request is retried from
//!   the next address, up to the retry limit.
//! - With `httpConfig` set, requests of the http source go through the proxy instead (as in
//!   Lavalink, where the proxy is the http source's and the planner is not).
//! - Bodies are read by [`HttpReader`], a blocking `Read + Seek` for decoders, fed by a task on
//!   the worker's runtime; dropping it cancels the transfer and closes its socket.

mod dns;
mod reader;

pub use reader::{Gauge, HttpReader, ResponseMeta};

use crate::routes::{Lease, NoLease, Routes};
use crate::sources::LoadFailure;
use caldera_protocol::{HttpSettings, RoutePlanning, WorkerSettings};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

const USER_AGENT: &str = concat!("Caldera/", env!("CARGO_PKG_VERSION"));
const MAX_REDIRECTS: usize = 5;
/// Clients kept (one per local address, proxy or not); the least recently used goes first.
const MAX_CLIENTS: usize = 32;
/// The longest a request keeps retrying on new addresses when it has no deadline of its own.
const MAX_RETRY_TIME: Duration = Duration::from_secs(60);

/// Which outbound path a request takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The http source: through the proxy when one is configured, else the route planner.
    HttpSource,
}

/// One request.
#[derive(Debug, Clone)]
pub struct Request {
    pub url: String,
    /// Start the body at this byte (a `Range` request).
    pub from: Option<u64>,
    pub via: Via,
    /// Ask ICY (SHOUTcast/Icecast) servers to interleave metadata.
    pub icy: bool,
    /// When the whole operation must be over (retries included).
    pub deadline: Option<Instant>,
}

impl Request {
    pub fn new(url: &str, via: Via) -> Self {
        Self { url: url.to_string(), from: None, via, icy: false, deadline: None }
    }
}

/// How a client reaches the outside: from which local address, and whether through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Egress {
    local: Option<IpAddr>,
    proxied: bool,
}

struct Inner {
    runtime: tokio::runtime::Handle,
    routes: Arc<Routes>,
    http: RwLock<(HttpSettings, Option<RoutePlanning>)>,
    clients: Mutex<VecDeque<(Egress, reqwest::Client)>>,
    dns: Arc<dns::Cache>,
}

/// The worker's outbound HTTP. Cheap to clone.
#[derive(Clone)]
pub struct Net {
    inner: Arc<Inner>,
}

impl Net {
    /// Must be created on the worker's runtime.
    pub fn new(routes: Arc<Routes>, settings: &WorkerSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                runtime: tokio::runtime::Handle::current(),
                routes,
                http: RwLock::new((settings.http.clone(), settings.route_planner)),
                clients: Mutex::default(),
                dns: Arc::default(),
            }),
        }
    }

    /// A `Net` of its own, without a gateway to lease addresses from (tools and tests: a route
    /// planner in `settings` then has no addresses to give). Must be called on a runtime.
    pub fn detached(settings: &WorkerSettings) -> Self {
        let (out, _) = tokio::sync::mpsc::channel(1);
        Self::new(Arc::new(Routes::new(out)), settings)
    }

    /// New settings from the gateway: clients are rebuilt with them.
    pub fn configure(&self, settings: &WorkerSettings) {
        *self.inner.http.write().unwrap_or_else(|e| e.into_inner()) = (settings.http.clone(), settings.route_planner);
        self.inner.clients.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn settings(&self) -> (HttpSettings, Option<RoutePlanning>) {
        self.inner.http.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.inner.runtime
    }

    /// The client for an egress, built once.
    fn client(&self, egress: Egress) -> Result<reqwest::Client, LoadFailure> {
        let mut clients = self.inner.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = clients.iter().position(|(e, _)| *e == egress) {
            let entry = clients.remove(i).expect("present");
            let client = entry.1.clone();
            clients.push_back(entry);
            return Ok(client);
        }
        let (http, _) = self.settings();
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .connect_timeout(Duration::from_millis(http.connect_timeout_ms))
            .read_timeout(Duration::from_millis(http.read_timeout_ms))
            .local_address(egress.local)
            .dns_resolver(Arc::new(dns::Resolver::new(self.inner.dns.clone(), egress.local)));
        builder = match (&http.proxy, egress.proxied) {
            (Some(p), true) => {
                let mut proxy = reqwest::Proxy::all(&p.url).map_err(|e| LoadFailure::fault("The HTTP proxy is not usable.", e.to_string()))?;
                if let Some(user) = &p.user {
                    proxy = proxy.basic_auth(user, p.password.as_deref().unwrap_or(""));
                }
                builder.proxy(proxy)
            }
            _ => builder.no_proxy(),
        };
        let client = builder.build().map_err(|e| LoadFailure::fault("Could not create an HTTP client.", e.to_string()))?;
        if clients.len() >= MAX_CLIENTS {
            clients.pop_front();
        }
        clients.push_back((egress, client.clone()));
        Ok(client)
    }

    /// Sends `req` and returns the response head with the egress it went out through.
    pub async fn send(&self, req: &Request) -> Result<(reqwest::Response, Egress), LoadFailure> {
        let (http, planning) = self.settings();
        let proxied = req.via == Via::HttpSource && http.proxy.is_some();
        let planning = planning.filter(|_| !proxied);
        let deadline = req.deadline.unwrap_or_else(|| Instant::now() + MAX_RETRY_TIME);
        let Some(planning) = planning else {
            let egress = Egress { local: None, proxied };
            return self.attempt(req, egress, &http).await.map(|r| (r, egress)).map_err(|(f, _)| f);
        };
        let host = url::Url::parse(&req.url).ok().and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()));
        let mut failed = 0u32;
        loop {
            let lease = self.inner.routes.acquire().await.map_err(|no| match no {
                NoLease::Exhausted(why) => LoadFailure::suspicious("No outbound address is free to make the request from.", format!("{}: {why}", req.url)),
                NoLease::Unavailable(why) => LoadFailure::fault("The route planner did not hand out an address.", format!("{}: {why}", req.url)),
            })?;
            // A connection bound to the lease reaches only the host's addresses of its family; a
            // host with none is fetched unbound, as Lavaplayer falls back for a host without AAAA.
            let reachable = match &host {
                Some(h) => self.inner.dns.has_family(h, lease.address.is_ipv4()).await,
                None => true,
            };
            if !reachable {
                tracing::warn!(url = %req.url, local = %lease.address, "the host has no address of the route planner's family; fetching it unbalanced");
                let egress = Egress { local: None, proxied: false };
                return self.attempt(req, egress, &http).await.map(|r| (r, egress)).map_err(|(f, _)| f);
            }
            let egress = Egress { local: Some(lease.address), proxied: false };
            let sent = self.attempt(req, egress, &http).await;
            let rejected = match &sent {
                Ok(res) => res.status() == reqwest::StatusCode::TOO_MANY_REQUESTS,
                Err((_, bind)) => *bind,
            };
            if !rejected {
                return sent.map(|r| (r, egress)).map_err(|(f, _)| f);
            }
            self.inner.routes.failed(lease).await;
            failed += 1;
            if planning.retry_limit.is_some_and(|limit| failed > limit) || Instant::now() >= deadline {
                return Err(retry_aborted(&req.url, failed, lease));
            }
        }
    }

    /// Sends `req` from a known egress (a request resumed or re-sent), without a new lease.
    pub(crate) async fn send_via(&self, req: &Request, egress: Egress) -> Result<reqwest::Response, LoadFailure> {
        let (http, _) = self.settings();
        self.attempt(req, egress, &http).await.map_err(|(f, _)| f)
    }

    /// One attempt from one egress, bounded by the response timeout and the deadline. A failure
    /// says whether the local address could not be bound.
    async fn attempt(&self, req: &Request, egress: Egress, http: &HttpSettings) -> Result<reqwest::Response, (LoadFailure, bool)> {
        let client = self.client(egress).map_err(|f| (f, false))?;
        let mut builder = client.get(&req.url);
        if req.icy {
            builder = builder.header("Icy-MetaData", "1");
        }
        if let Some(from) = req.from {
            builder = builder.header("Range", format!("bytes={from}-"));
        }
        let mut limit = Duration::from_millis(http.connect_timeout_ms + http.response_timeout_ms);
        if let Some(deadline) = req.deadline {
            limit = limit.min(deadline.saturating_duration_since(Instant::now()));
        }
        match tokio::time::timeout(limit, builder.send()).await {
            Ok(Ok(res)) => Ok(res),
            Ok(Err(e)) => Err((LoadFailure::connect(&req.url, &e), is_bind_error(&e))),
            Err(_) => {
                let cause = format!("{}: no response within {} ms", req.url, limit.as_millis());
                Err((LoadFailure::suspicious("Connecting to the URL failed.", cause), false))
            }
        }
    }

    /// Opens `req` for reading from a blocking thread: `Ok(None)` for a 404 (Lavaplayer's "no
    /// matches"); other non-2xx statuses and connection failures are load failures.
    pub fn open(&self, req: Request, budget: u64) -> Result<Option<HttpReader>, LoadFailure> {
        HttpReader::open(self.clone(), req, budget)
    }
}

/// The connection failed because the local address cannot be used on this host.
fn is_bind_error(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::AddrNotAvailable || io.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                return true;
            }
        }
        source = s.source();
    }
    false
}

fn retry_aborted(url: &str, failed: u32, lease: Lease) -> LoadFailure {
    LoadFailure::suspicious(
        "Retry aborted, too many retries on ratelimit.",
        format!("{url}: {failed} attempts were rate limited or could not bind, the last from {}", lease.address),
    )
}
