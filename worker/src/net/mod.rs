//! Outbound HTTP for every source, on the worker's runtime (no thread per request), with
//! Lavalink's timeouts and proxy, and the gateway's route planner.
//!
//! - With a route planner, each request leaves from the address the planner hands out; a 429, or
//!   an address the host cannot bind, is reported to the planner and the request is retried from
//!   the next address, up to the retry limit.
//! - With `httpConfig` set, requests of the http source go through the proxy instead (as in
//!   Lavalink, where the proxy is the http source's and the planner is not).
//! - Bodies are read by [`HttpReader`], a blocking `Read + Seek` for decoders, fed by a task on
//!   the worker's runtime; dropping it cancels the transfer and closes its socket.

mod dns;
mod http;
mod reader;

pub use http::Response;
pub use reader::{Gauge, HttpReader, ResponseMeta};

use crate::routes::{Lease, NoLease, Routes};
use crate::sources::LoadFailure;
use caldera_protocol::{HttpSettings, RoutePlanning, WorkerSettings};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

const MAX_REDIRECTS: usize = 5;
/// The longest a request keeps retrying on new addresses when it has no deadline of its own.
const MAX_RETRY_TIME: Duration = Duration::from_secs(60);

/// Which outbound path a request takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The http source: through the proxy when one is configured, else the route planner.
    HttpSource,
    /// A platform source's media (resolved by the gateway's resolver): never through the http
    /// source's proxy; from the address the resolver used when one was leased.
    Platform,
}

/// One request.
#[derive(Debug, Clone)]
pub struct Request {
    pub url: String,
    /// Start the body at this byte (a `Range` request)...
    pub from: Option<u64>,
    /// ...and end it at this one (inclusive).
    pub to: Option<u64>,
    pub via: Via,
    /// Ask ICY (SHOUTcast/Icecast) servers to interleave metadata.
    pub icy: bool,
    /// When the whole operation must be over (retries included).
    pub deadline: Option<Instant>,
    /// Headers the request must carry (a platform's).
    pub headers: Vec<(String, String)>,
    /// Leave from this local address (the one a platform's media URL was resolved from) instead
    /// of asking the route planner.
    pub local: Option<IpAddr>,
    /// Read the body in ranged requests of this many bytes (platforms that cut off long
    /// transfers or throttle them).
    pub chunk: Option<u64>,
}

impl Request {
    pub fn new(url: &str, via: Via) -> Self {
        Self { url: url.to_string(), from: None, to: None, via, icy: false, deadline: None, headers: Vec::new(), local: None, chunk: None }
    }
}

/// How a request reaches the outside: from which local address, and whether through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Egress {
    local: Option<IpAddr>,
    proxied: bool,
}

struct Inner {
    runtime: tokio::runtime::Handle,
    routes: Arc<Routes>,
    http: RwLock<(HttpSettings, Option<RoutePlanning>)>,
    dns: dns::Cache,
    tls: Result<Arc<rustls::ClientConfig>, String>,
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
                dns: dns::Cache::default(),
                tls: http::tls_config(),
            }),
        }
    }

    /// A `Net` of its own, without a gateway to lease addresses from (tools and tests: a route
    /// planner in `settings` then has no addresses to give). Must be called on a runtime.
    pub fn detached(settings: &WorkerSettings) -> Self {
        let (out, _) = tokio::sync::mpsc::channel(1);
        Self::new(Arc::new(Routes::new(out)), settings)
    }

    /// New settings from the gateway.
    pub fn configure(&self, settings: &WorkerSettings) {
        *self.inner.http.write().unwrap_or_else(|e| e.into_inner()) = (settings.http.clone(), settings.route_planner);
    }

    fn settings(&self) -> (HttpSettings, Option<RoutePlanning>) {
        self.inner.http.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.inner.runtime
    }

    /// Sends `req` and returns the response head (redirects followed), its final URL and the
    /// egress it went out through.
    pub async fn send(&self, req: &Request) -> Result<(Response, String, Egress), LoadFailure> {
        let (http, planning) = self.settings();
        let proxied = req.via == Via::HttpSource && http.proxy.is_some();
        if req.local.is_some() {
            let egress = Egress { local: req.local, proxied: false };
            return self.attempt(req, egress, &http).await.map(|(r, url)| (r, url, egress)).map_err(|(f, _)| f);
        }
        let planning = planning.filter(|_| !proxied);
        let deadline = req.deadline.unwrap_or_else(|| Instant::now() + MAX_RETRY_TIME);
        let Some(planning) = planning else {
            let egress = Egress { local: None, proxied };
            return self.attempt(req, egress, &http).await.map(|(r, url)| (r, url, egress)).map_err(|(f, _)| f);
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
                return self.attempt(req, egress, &http).await.map(|(r, url)| (r, url, egress)).map_err(|(f, _)| f);
            }
            let egress = Egress { local: Some(lease.address), proxied: false };
            let sent = self.attempt(req, egress, &http).await;
            let rejected = match &sent {
                Ok((res, _)) => res.status == 429,
                Err((_, bind)) => *bind,
            };
            if !rejected {
                return sent.map(|(r, url)| (r, url, egress)).map_err(|(f, _)| f);
            }
            self.inner.routes.failed(lease).await;
            failed += 1;
            if planning.retry_limit.is_some_and(|limit| failed > limit) || Instant::now() >= deadline {
                return Err(retry_aborted(&req.url, failed, lease));
            }
        }
    }

    /// Sends `req` from a known egress (a request resumed or re-sent), without a new lease.
    pub(crate) async fn send_via(&self, req: &Request, egress: Egress) -> Result<Response, LoadFailure> {
        let (http, _) = self.settings();
        self.attempt(req, egress, &http).await.map(|(r, _)| r).map_err(|(f, _)| f)
    }

    /// One attempt from one egress, redirects followed, bounded by the response timeout and the
    /// deadline. A failure says whether the local address could not be bound.
    async fn attempt(&self, req: &Request, egress: Egress, http: &HttpSettings) -> Result<(Response, String), (LoadFailure, bool)> {
        let tls = self.inner.tls.clone().map_err(|e| (LoadFailure::fault("TLS is not available.", e), false))?;
        let failed = |cause: String| (LoadFailure::suspicious("Connecting to the URL failed.", format!("{}: {cause}", req.url)), false);
        let mut url = url::Url::parse(&req.url).map_err(|e| (LoadFailure::common("Not a valid URL.", format!("{}: {e}", req.url)), false))?;
        let mut limit = Duration::from_millis(http.connect_timeout_ms + http.response_timeout_ms);
        if let Some(deadline) = req.deadline {
            limit = limit.min(deadline.saturating_duration_since(Instant::now()));
        }
        for _ in 0..=MAX_REDIRECTS {
            let route = http::Route {
                local: egress.local,
                proxy: http.proxy.as_ref().filter(|_| egress.proxied),
                connect_timeout: Duration::from_millis(http.connect_timeout_ms),
                deny: &http.deny,
            };
            let ask = http::Ask { from: req.from, to: req.to, icy: req.icy, url: &url, headers: &req.headers };
            let res = match tokio::time::timeout(limit, http::get(ask, route, &self.inner.dns, &tls)).await {
                Ok(Ok(res)) => res,
                Ok(Err(http::Failure::Bind(e))) => return Err((LoadFailure::suspicious("Connecting to the URL failed.", format!("{}: {e}", req.url)), true)),
                Ok(Err(http::Failure::Connect(e))) => return Err(failed(e)),
                Err(_) => return Err(failed(format!("no response within {} ms", limit.as_millis()))),
            };
            let location = res.headers.get(::http::header::LOCATION).and_then(|v| v.to_str().ok()).and_then(|l| url.join(l).ok());
            match (res.status, location) {
                (301 | 302 | 303 | 307 | 308, Some(next)) => url = next,
                _ => return Ok((res, url.to_string())),
            }
        }
        Err((LoadFailure::common("Too many redirects.", format!("{}: more than {MAX_REDIRECTS} redirects", req.url)), false))
    }

    /// Opens `req` for reading from a blocking thread: `Ok(None)` for a 404 (Lavaplayer's "no
    /// matches"); other non-2xx statuses and connection failures are load failures.
    pub fn open(&self, req: Request, budget: u64) -> Result<Option<HttpReader>, LoadFailure> {
        HttpReader::open(self.clone(), req, budget)
    }

    /// Fetches a whole resource of at most `limit` bytes (a playlist, a key, a segment): its
    /// body and final URL. Any status but 2xx is a failure naming it.
    pub async fn fetch(&self, req: &Request, limit: usize) -> Result<(Vec<u8>, String), LoadFailure> {
        use http_body_util::BodyExt;
        let (mut res, final_url, _) = self.send(req).await?;
        if !(200..300).contains(&res.status) {
            return Err(LoadFailure::common("That URL is not playable.", format!("{}: status code {}", req.url, res.status)));
        }
        let declared = res.headers.get(::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        let too_large = || LoadFailure::suspicious("The resource is too large.", format!("{}: more than {limit} bytes", req.url));
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut body = Vec::with_capacity(declared.unwrap_or(0));
        let read_timeout = self.read_timeout();
        loop {
            let frame = match tokio::time::timeout(read_timeout, res.body.frame()).await {
                Ok(Some(Ok(frame))) => frame,
                Ok(None) => return Ok((body, final_url)),
                Ok(Some(Err(e))) => return Err(LoadFailure::suspicious("Reading the resource failed.", format!("{}: {}", req.url, http::describe(&e)))),
                Err(_) => return Err(LoadFailure::suspicious("Reading the resource failed.", format!("{}: no data for {} ms", req.url, read_timeout.as_millis()))),
            };
            if let Ok(chunk) = frame.into_data() {
                if body.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
        }
    }

    /// Has the gateway's resolver turn a platform track into a stream, from an address the
    /// route planner leases (when one is configured); the stream must then be fetched from that
    /// same address (it is returned with it).
    pub async fn resolve(&self, track: &caldera_protocol::TrackInfo) -> Result<(caldera_protocol::ResolvedStream, Option<IpAddr>), LoadFailure> {
        let planning = self.settings().1;
        let lease = match planning {
            Some(_) => Some(self.inner.routes.acquire().await.map_err(|no| match no {
                NoLease::Exhausted(why) => LoadFailure::suspicious("No outbound address is free to make the request from.", why),
                NoLease::Unavailable(why) => LoadFailure::fault("The route planner did not hand out an address.", why),
            })?),
            None => None,
        };
        let request = caldera_protocol::ResolveRequest {
            source_name: track.source_name.clone(),
            identifier: track.identifier.clone(),
            uri: track.uri.clone(),
            lease: lease.map(|l| l.id),
        };
        let stream = self.inner.routes.resolve(request).await?;
        Ok((stream, lease.map(|l| l.address)))
    }

    pub(crate) fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.settings().0.read_timeout_ms)
    }
}

fn retry_aborted(url: &str, failed: u32, lease: Lease) -> LoadFailure {
    LoadFailure::suspicious(
        "Retry aborted, too many retries on ratelimit.",
        format!("{url}: {failed} attempts were rate limited or could not bind, the last from {}", lease.address),
    )
}
