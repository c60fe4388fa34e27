//! Name resolution for the worker's clients: one lookup per host for a short while, shared by
//! the route planner's reachability check and the connection, and filtered to the family of the
//! client's local address (a socket bound to an IPv6 address cannot reach an IPv4 one).

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a lookup is reused.
const TTL: Duration = Duration::from_secs(30);
/// Hosts remembered at most; the cache is emptied when it would hold more.
const MAX_HOSTS: usize = 1024;

#[derive(Default)]
pub struct Cache {
    hosts: Mutex<HashMap<String, (Instant, Arc<[IpAddr]>)>>,
}

impl Cache {
    /// The addresses of `host` (an IP literal is its own address).
    pub async fn lookup(&self, host: &str) -> std::io::Result<Arc<[IpAddr]>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Arc::from([ip]));
        }
        if let Some((at, addrs)) = self.hosts.lock().unwrap_or_else(|e| e.into_inner()).get(host) {
            if at.elapsed() < TTL {
                return Ok(addrs.clone());
            }
        }
        let addrs: Arc<[IpAddr]> = tokio::net::lookup_host((host, 0)).await?.map(|a| a.ip()).collect();
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if hosts.len() >= MAX_HOSTS {
            hosts.clear();
        }
        hosts.insert(host.to_string(), (Instant::now(), addrs.clone()));
        Ok(addrs)
    }

    /// Whether `host` has an address of the family (v4 or v6); a host that does not resolve
    /// counts as reachable (the request itself then says what is wrong).
    pub async fn has_family(&self, host: &str, v4: bool) -> bool {
        match self.lookup(host).await {
            Ok(addrs) => addrs.iter().any(|a| a.is_ipv4() == v4),
            Err(_) => true,
        }
    }
}

/// A client's resolver: the shared cache, filtered to its local address's family.
pub struct Resolver {
    cache: Arc<Cache>,
    local: Option<IpAddr>,
}

impl Resolver {
    pub fn new(cache: Arc<Cache>, local: Option<IpAddr>) -> Self {
        Self { cache, local }
    }
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let cache = self.cache.clone();
        let family = self.local.map(|l| l.is_ipv4());
        Box::pin(async move {
            let addrs = cache.lookup(name.as_str()).await?;
            let chosen: Vec<SocketAddr> =
                addrs.iter().filter(|a| family.is_none_or(|v4| a.is_ipv4() == v4)).map(|ip| SocketAddr::new(*ip, 0)).collect();
            Ok(Box::new(chosen.into_iter()) as Addrs)
        })
    }
}
