//! Name resolution for outbound requests: one lookup per host for a short while, shared by the
//! route planner's reachability check and the connection.

use std::collections::HashMap;
use std::net::IpAddr;
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
