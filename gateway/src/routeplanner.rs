//! The route planner (lavalink-internals §2): which local address each outbound source request
//! leaves from, so a node with an IP block spreads its traffic and moves off rate-limited
//! addresses. One planner lives in the gateway and serves every worker: a worker asks for an
//! address before each request and reports the ones that were answered with 429.
//!
//! The four strategies keep Lavaplayer's names and status shapes; their selection is our own:
//! - `RotateOnBan` (RotatingIpRoutePlanner): one address at a time, the next usable one after a ban;
//! - `LoadBalance` (BalancingIpRoutePlanner): a random usable address per request;
//! - `NanoSwitch` (NanoIpRoutePlanner): the address at the offset of the nanosecond clock in a /64;
//! - `RotatingNanoSwitch` (RotatingNanoIpRoutePlanner): as NanoSwitch, moving to the next /64 on a ban.
//!
//! Failing addresses are skipped for a week (Lavaplayer's expiry) unless freed through the REST API.

use crate::config::{block_size, RoutePlannerSettings, Strategy, BLOCK64};
use crate::lavalink::{FailingAddress, IpBlock, RoutePlannerDetails, RoutePlannerStatus, StrategyDetails};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a failing address is skipped unless freed.
const FAILING_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most candidates looked at for one request in a large block before giving up.
const MAX_TRIES: u128 = 4096;
/// Blocks up to this size are searched exhaustively: "no free address" then really means none.
const SCAN_ALL_UP_TO: u128 = 4096;
/// Consecutive unusable addresses before RotatingNanoSwitch moves to the next /64.
const TRIES_PER_BLOCK: u128 = 128;
/// Most failing addresses remembered; the oldest marks go first.
const MAX_FAILING: usize = 65_536;

/// What reporting a failing address did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// Newly marked failing.
    New,
    /// It was failing already (its mark is renewed).
    Known,
    /// A search failure while `searchTriggersFail` is off: not marked.
    Search,
    /// Not an address of the blocks.
    Foreign,
}

/// The planner class name clients see in `/v4/routeplanner/status`.
pub fn class(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::RotateOnBan => "RotatingIpRoutePlanner",
        Strategy::LoadBalance => "BalancingIpRoutePlanner",
        Strategy::NanoSwitch => "NanoIpRoutePlanner",
        Strategy::RotatingNanoSwitch => "RotatingNanoIpRoutePlanner",
    }
}

/// The configured blocks as one index space, in configuration order.
#[derive(Debug, Clone)]
pub struct IpBlocks {
    blocks: Vec<(IpNet, u128)>,
    size: u128,
    v6: bool,
}

impl IpBlocks {
    /// The blocks of validated settings (one family, a countable total).
    pub fn new(nets: &[IpNet]) -> Self {
        let v6 = matches!(nets.first(), Some(IpNet::V6(_)));
        let blocks: Vec<(IpNet, u128)> = nets.iter().map(|net| (net.trunc(), block_size(net))).collect();
        let size = blocks.iter().fold(0u128, |total, (_, n)| total.saturating_add(*n));
        Self { blocks, size, v6 }
    }

    pub fn size(&self) -> u128 {
        self.size
    }

    pub fn is_v6(&self) -> bool {
        self.v6
    }

    /// The address at `index` counted across all blocks.
    pub fn get(&self, mut index: u128) -> Option<IpAddr> {
        for (net, n) in &self.blocks {
            if index < *n {
                return Some(match net.network() {
                    IpAddr::V4(a) => IpAddr::V4((u32::from(a) + index as u32).into()),
                    IpAddr::V6(a) => IpAddr::V6((u128::from(a) + index).into()),
                });
            }
            index -= n;
        }
        None
    }

    /// The index of `addr` counted across all blocks, if it is in one.
    pub fn index_of(&self, addr: &IpAddr) -> Option<u128> {
        let mut before = 0u128;
        for (net, n) in &self.blocks {
            if net.contains(addr) {
                let offset = match (addr, net.network()) {
                    (IpAddr::V4(a), IpAddr::V4(base)) => u128::from(u32::from(*a) - u32::from(base)),
                    (IpAddr::V6(a), IpAddr::V6(base)) => u128::from(*a) - u128::from(base),
                    _ => return None,
                };
                return Some(before + offset);
            }
            before += n;
        }
        None
    }
}

/// Failing addresses with when they were marked (Unix ms), also ordered by that time so expired
/// and oldest marks go cheaply.
#[derive(Debug, Default)]
struct Failing {
    by_addr: BTreeMap<IpAddr, u64>,
    by_time: BTreeSet<(u64, IpAddr)>,
}

impl Failing {
    fn since(&self, addr: &IpAddr) -> Option<u64> {
        self.by_addr.get(addr).copied()
    }

    /// Marks `addr` at `ms`; true if it was marked already.
    fn insert(&mut self, addr: IpAddr, ms: u64) -> bool {
        let old = self.by_addr.insert(addr, ms);
        if let Some(old) = old {
            self.by_time.remove(&(old, addr));
        }
        self.by_time.insert((ms, addr));
        old.is_some()
    }

    fn remove(&mut self, addr: &IpAddr) {
        if let Some(old) = self.by_addr.remove(addr) {
            self.by_time.remove(&(old, *addr));
        }
    }

    fn clear(&mut self) {
        self.by_addr.clear();
        self.by_time.clear();
    }

    /// Drops marks that expired by `now_ms`, then the oldest until at most `keep` remain.
    fn shed(&mut self, now_ms: u64, keep: usize) {
        while let Some(&(since, addr)) = self.by_time.first() {
            if since + FAILING_FOR.as_millis() as u64 > now_ms && self.by_addr.len() <= keep {
                break;
            }
            self.remove(&addr);
        }
    }
}

/// What the planner moves through, besides the failing addresses.
#[derive(Debug)]
struct State {
    failing: Failing,
    /// RotateOnBan: the index in use (`None` before the first request) and bans seen.
    index: Option<u128>,
    rotations: u128,
    /// RotateOnBan: the address in use failed; pick the next one.
    rotate: bool,
    /// Nano strategies: the /64 in use and when the clock offset started counting.
    block: u128,
    block_start: Instant,
}

#[derive(Debug)]
pub struct RoutePlanner {
    strategy: Strategy,
    blocks: IpBlocks,
    excluded: HashSet<IpAddr>,
    search_triggers_fail: bool,
    retry_limit: Option<u32>,
    state: Mutex<State>,
}

impl RoutePlanner {
    /// The planner `lavalink.server.ratelimit` describes (checked when the settings were made).
    pub fn new(settings: &RoutePlannerSettings) -> Self {
        let state = State { failing: Failing::default(), index: None, rotations: 0, rotate: false, block: 0, block_start: Instant::now() };
        Self {
            strategy: settings.strategy,
            blocks: IpBlocks::new(&settings.blocks),
            excluded: settings.excluded.clone(),
            search_triggers_fail: settings.search_triggers_fail,
            retry_limit: settings.retry_limit,
            state: Mutex::new(state),
        }
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    pub fn is_v6(&self) -> bool {
        self.blocks.is_v6()
    }

    /// Addresses in the configured blocks (exclusions not subtracted, as Lavalink reports it).
    pub fn ip_count(&self) -> u128 {
        self.blocks.size()
    }

    /// Retries allowed after a failed attempt; `None` = no limit.
    pub fn retry_limit(&self) -> Option<u32> {
        self.retry_limit
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The local address for the next outbound request.
    pub fn acquire(&self) -> Result<IpAddr, String> {
        self.acquire_at(Instant::now(), unix_ms())
    }

    /// A step of 10–19 that shares no factor with `size`, so a walk visits every address once
    /// before repeating (1 when there is none).
    fn coprime_step(size: u128) -> u128 {
        fn gcd(a: u128, b: u128) -> u128 {
            if b == 0 { a } else { gcd(b, a % b) }
        }
        let offset = random_below(10);
        (0..10).map(|k| 10 + (offset + k) % 10).find(|&s| gcd(s, size) == 1).unwrap_or(1)
    }

    fn acquire_at(&self, now: Instant, now_ms: u64) -> Result<IpAddr, String> {
        let mut st = self.state();
        let size = self.blocks.size();
        let found = match self.strategy {
            Strategy::RotateOnBan => {
                let current = st.index.and_then(|i| self.blocks.get(i));
                match current {
                    Some(addr) if !st.rotate && self.usable(&mut st, addr, now_ms) => Some(addr),
                    _ => {
                        // Small blocks step through every address; large ones skip ahead a little
                        // (so a ban does not land on the neighbour of a banned address), with a
                        // step that still visits every address before repeating.
                        let step = if size > 128 { Self::coprime_step(size) } else { 1 };
                        let start = st.index.map_or(0, |i| (i + step) % size);
                        let next = (0..size.min(MAX_TRIES))
                            .map(|k| (start + k * step) % size)
                            .find_map(|i| self.blocks.get(i).filter(|a| self.usable(&mut st, *a, now_ms)).map(|a| (i, a)));
                        next.map(|(i, a)| {
                            if st.index.is_some() {
                                st.rotations += 1;
                            }
                            st.index = Some(i);
                            st.rotate = false;
                            a
                        })
                    }
                }
            }
            Strategy::LoadBalance => {
                if size <= SCAN_ALL_UP_TO {
                    let usable: Vec<IpAddr> =
                        (0..size).filter_map(|i| self.blocks.get(i)).filter(|a| self.usable(&mut st, *a, now_ms)).collect();
                    (!usable.is_empty()).then(|| usable[random_below(usable.len() as u128) as usize])
                } else {
                    (0..MAX_TRIES).find_map(|_| self.blocks.get(random_below(size)).filter(|a| self.usable(&mut st, *a, now_ms)))
                }
            }
            Strategy::NanoSwitch => {
                let offset = now.saturating_duration_since(st.block_start).as_nanos() % BLOCK64;
                // Blocks larger than a /64: a random /64 of them, the clock within it.
                let high = random_below(size / BLOCK64) * BLOCK64;
                (0..MAX_TRIES).find_map(|k| self.blocks.get((high + (offset + k) % BLOCK64) % size).filter(|a| self.usable(&mut st, *a, now_ms)))
            }
            Strategy::RotatingNanoSwitch => {
                let blocks64 = size / BLOCK64;
                let mut found = None;
                for _ in 0..blocks64.min(MAX_TRIES / TRIES_PER_BLOCK) {
                    if st.block >= blocks64 {
                        st.block = 0;
                    }
                    let offset = now.saturating_duration_since(st.block_start).as_nanos() % BLOCK64;
                    let base = st.block * BLOCK64;
                    found = (0..TRIES_PER_BLOCK)
                        .find_map(|k| self.blocks.get(base + (offset + k) % BLOCK64).filter(|a| self.usable(&mut st, *a, now_ms)));
                    if found.is_some() {
                        break;
                    }
                    st.block += 1;
                    st.block_start = now;
                }
                found
            }
        };
        found.ok_or_else(|| "Can't find a free ip: every address of the block is failing or excluded".to_string())
    }

    /// Not excluded, and not failing (a failing mark expires after [`FAILING_FOR`]).
    fn usable(&self, st: &mut State, addr: IpAddr, now_ms: u64) -> bool {
        if self.excluded.contains(&addr) {
            return false;
        }
        match st.failing.since(&addr) {
            None => true,
            Some(since) if since + FAILING_FOR.as_millis() as u64 <= now_ms => {
                st.failing.remove(&addr);
                true
            }
            Some(_) => false,
        }
    }

    /// A request from `addr` was rate limited or could not bind. Searches mark the address only
    /// when `searchTriggersFail` is set. Returns false when `addr` is not one of ours (a worker
    /// cannot make the planner track arbitrary addresses).
    pub fn mark_failing(&self, addr: IpAddr, search: bool) -> Marked {
        self.mark_failing_at(addr, search, Instant::now(), unix_ms())
    }

    fn mark_failing_at(&self, addr: IpAddr, search: bool, now: Instant, now_ms: u64) -> Marked {
        let Some(index) = self.blocks.index_of(&addr) else { return Marked::Foreign };
        if search && !self.search_triggers_fail {
            return Marked::Search;
        }
        let mut st = self.state();
        // Marks of addresses never visited again (most of a /64) would stay forever: expired
        // ones go on every insert, and the oldest when there are too many.
        let known = st.failing.insert(addr, now_ms);
        st.failing.shed(now_ms, MAX_FAILING);
        match self.strategy {
            Strategy::RotateOnBan if st.index == Some(index) => st.rotate = true,
            // Only a ban in the /64 in use moves on (two bans at once skip one /64, not two).
            Strategy::RotatingNanoSwitch if index / BLOCK64 == st.block => {
                st.block = (st.block + 1) % (self.blocks.size() / BLOCK64);
                st.block_start = now;
            }
            _ => {}
        }
        if known {
            Marked::Known
        } else {
            Marked::New
        }
    }

    pub fn free(&self, addr: IpAddr) {
        self.state().failing.remove(&addr);
    }

    pub fn free_all(&self) {
        self.state().failing.clear();
    }

    pub fn failing_count(&self) -> usize {
        self.state().failing.by_addr.len()
    }

    pub fn failing(&self) -> Vec<IpAddr> {
        self.state().failing.by_addr.keys().copied().collect()
    }

    /// The failing marks (address, unix ms when marked), for the next gateway.
    pub fn failing_marks(&self) -> Vec<(IpAddr, u64)> {
        self.state().failing.by_addr.iter().map(|(a, ms)| (*a, *ms)).collect()
    }

    /// Takes the marks the previous gateway handed over: addresses of our blocks only, each
    /// expiring when it would have there.
    pub fn restore_failing(&self, marks: Vec<(IpAddr, u64)>) {
        let mut st = self.state();
        for (addr, ms) in marks.into_iter().filter(|(a, _)| self.blocks.index_of(a).is_some()) {
            st.failing.insert(addr, ms);
        }
        st.failing.shed(unix_ms(), MAX_FAILING);
    }

    /// `GET /v4/routeplanner/status`, in Lavalink's shapes: sizes and indexes as strings,
    /// addresses as Java prints them (`/1.2.3.4`).
    pub fn status(&self) -> RoutePlannerStatus {
        let st = self.state();
        let failing_addresses = st
            .failing
            .by_addr
            .iter()
            .map(|(addr, &ms)| FailingAddress { failing_address: java_address(addr), failing_timestamp: ms, failing_time: java_date(ms) })
            .collect();
        let clock = |start: Instant| (Instant::now().saturating_duration_since(start).as_nanos() % BLOCK64).to_string();
        let strategy = match self.strategy {
            Strategy::RotateOnBan => StrategyDetails::Rotating {
                rotate_index: st.rotations.to_string(),
                ip_index: st.index.unwrap_or(0).to_string(),
                current_address: st.index.and_then(|i| self.blocks.get(i)).map_or("null".to_string(), |a| java_address(&a)),
            },
            Strategy::NanoSwitch => StrategyDetails::Nano { current_address_index: clock(st.block_start) },
            Strategy::RotatingNanoSwitch => StrategyDetails::RotatingNano { block_index: st.block.to_string(), current_address_index: clock(st.block_start) },
            Strategy::LoadBalance => StrategyDetails::Balancing {},
        };
        let ip_block = IpBlock { kind: if self.blocks.is_v6() { "Inet6Address" } else { "Inet4Address" }, size: self.blocks.size().to_string() };
        RoutePlannerStatus { class: class(self.strategy), details: RoutePlannerDetails { ip_block, failing_addresses, strategy } }
    }
}

fn unix_ms() -> u64 {
    crate::clock::unix_ms().max(0) as u64
}

/// A uniform random number below `n` (0 when `n` is 0 or 1).
fn random_below(n: u128) -> u128 {
    if n <= 1 {
        return 0;
    }
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random number generator is unavailable");
    // The modulo bias is below 2^-64 for every n this is used with.
    u128::from_le_bytes(bytes) % n
}

/// `InetAddress.toString()` of an address without a host name: `/1.2.3.4`, and IPv6 as eight
/// groups without zero compression (`/2001:db8:0:0:0:0:0:1`).
pub fn java_address(addr: &IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => format!("/{a}"),
        IpAddr::V6(a) => format!("/{}", a.segments().iter().map(|s| format!("{s:x}")).collect::<Vec<_>>().join(":")),
    }
}

/// `java.util.Date.toString()` in UTC: `Wed Nov 25 14:54:14 UTC 2026`.
fn java_date(ms: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{} {} {day:02} {h:02}:{m:02}:{s:02} UTC {year}", DAYS[(days % 7) as usize], MONTHS[(month - 1) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_RETRY_LIMIT;
    use serde_json::{json, Value};

    fn settings(strategy: Strategy, blocks: &[&str], excluded: &[&str]) -> RoutePlannerSettings {
        RoutePlannerSettings {
            strategy,
            blocks: blocks.iter().map(|b| b.parse().unwrap()).collect(),
            excluded: excluded.iter().map(|e| e.parse().unwrap()).collect(),
            search_triggers_fail: true,
            retry_limit: Some(DEFAULT_RETRY_LIMIT),
        }
    }

    fn planner(strategy: Strategy, blocks: &[&str], excluded: &[&str]) -> RoutePlanner {
        RoutePlanner::new(&settings(strategy, blocks, excluded))
    }

    #[test]
    fn failing_marks_go_to_the_next_gateway_with_their_time() {
        let old = planner(Strategy::LoadBalance, &["10.0.0.0/30"], &[]);
        let addr: IpAddr = "10.0.0.1".parse().unwrap();
        old.mark_failing(addr, false);
        let mut marks = old.failing_marks();
        marks.push(("192.0.2.1".parse().unwrap(), unix_ms()));
        let new = planner(Strategy::LoadBalance, &["10.0.0.0/30"], &[]);
        new.restore_failing(marks);
        assert_eq!(new.failing(), vec![addr], "foreign addresses are not taken");
        assert_eq!(new.failing_marks(), old.failing_marks(), "marked when the old gateway marked it");
    }

    impl RoutePlanner {
        /// The status as clients receive it.
        fn status_json(&self) -> Value {
            serde_json::to_value(self.status()).unwrap()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_index_across_blocks_and_know_their_size() {
        let b = IpBlocks::new(&["10.0.0.0/30".parse().unwrap(), "10.1.0.8/31".parse().unwrap()]);
        assert_eq!(b.size(), 6);
        let all: Vec<_> = (0..7).map(|i| b.get(i)).collect();
        assert_eq!(all[0], Some(ip("10.0.0.0")));
        assert_eq!(all[3], Some(ip("10.0.0.3")));
        assert_eq!(all[4], Some(ip("10.1.0.8")));
        assert_eq!(all[5], Some(ip("10.1.0.9")));
        assert_eq!(all[6], None);
        assert_eq!((b.index_of(&ip("10.1.0.9")), b.index_of(&ip("10.1.0.10")), b.index_of(&ip("10.0.0.2"))), (Some(5), None, Some(2)));
        let v6 = IpBlocks::new(&["2001:db8::/64".parse().unwrap()]);
        assert_eq!(v6.size(), BLOCK64);
        assert_eq!(v6.get(BLOCK64 - 1), Some(ip("2001:db8::ffff:ffff:ffff:ffff")));
    }

    #[test]
    fn rotate_on_ban_keeps_an_address_until_it_is_banned() {
        let p = planner(Strategy::RotateOnBan, &["10.0.0.0/29"], &["10.0.0.1"]);
        let first = p.acquire().unwrap();
        assert_eq!(first, ip("10.0.0.0"));
        assert_eq!(p.acquire().unwrap(), first, "no ban, no rotation");
        assert_eq!(p.mark_failing(first, false), Marked::New);
        assert_eq!(p.mark_failing(first, false), Marked::Known);
        // The excluded address is skipped.
        assert_eq!(p.acquire().unwrap(), ip("10.0.0.2"));
        assert_eq!(p.status_json()["details"]["rotateIndex"], "1");
        assert_eq!(p.status_json()["details"]["currentAddress"], "/10.0.0.2");
        // A ban of an address not in use does not rotate.
        p.mark_failing(ip("10.0.0.5"), false);
        assert_eq!(p.acquire().unwrap(), ip("10.0.0.2"));
        p.mark_failing(ip("10.0.0.2"), false);
        assert_eq!(p.acquire().unwrap(), ip("10.0.0.3"));
    }

    #[test]
    fn rotate_on_ban_exhausts_and_recovers_when_freed() {
        let p = planner(Strategy::RotateOnBan, &["10.0.0.0/30"], &["10.0.0.3"]);
        for _ in 0..3 {
            let a = p.acquire().unwrap();
            p.mark_failing(a, false);
        }
        let err = p.acquire().unwrap_err();
        assert!(err.contains("Can't find a free ip"), "{err}");
        assert_eq!(p.failing().len(), 3);
        p.free(ip("10.0.0.1"));
        assert_eq!(p.acquire().unwrap(), ip("10.0.0.1"));
        p.free_all();
        assert!(p.failing().is_empty());
    }

    #[test]
    fn rotate_on_ban_finds_the_last_free_address_of_a_larger_block() {
        let p = planner(Strategy::RotateOnBan, &["10.0.0.0/24"], &[]);
        for i in (0..=255).filter(|i| *i != 77) {
            p.mark_failing(ip(&format!("10.0.0.{i}")), false);
        }
        assert_eq!(p.acquire().unwrap(), ip("10.0.0.77"));
        p.mark_failing(ip("10.0.0.77"), false);
        assert!(p.acquire().is_err());
    }

    #[test]
    fn rotate_on_ban_walks_a_large_block_without_repeating() {
        let p = planner(Strategy::RotateOnBan, &["10.0.0.0/24", "10.0.1.0/26"], &[]);
        let mut seen = HashSet::new();
        for _ in 0..320 {
            let a = p.acquire().unwrap();
            assert!(seen.insert(a), "{a} came twice");
            p.mark_failing(a, false);
        }
        assert!(p.acquire().is_err());
    }

    #[test]
    fn the_failing_map_is_bounded_and_sheds_expired_marks() {
        let p = planner(Strategy::NanoSwitch, &["2001:db8::/64"], &[]);
        let now = Instant::now();
        let week = FAILING_FOR.as_millis() as u64;
        p.mark_failing_at(ip("2001:db8::1"), false, now, 1_000);
        p.mark_failing_at(ip("2001:db8::2"), false, now, 1_000 + week);
        assert_eq!(p.failing(), [ip("2001:db8::2")], "the expired mark went");
        for i in 0..MAX_FAILING as u128 + 10 {
            p.mark_failing_at(IpAddr::V6((0x2001_0db8_u128 << 96 | (i + 100)).into()), false, now, 2_000 + week + i as u64);
        }
        let failing = p.failing();
        assert_eq!(failing.len(), MAX_FAILING);
        assert!(!failing.contains(&ip("2001:db8::2")), "the oldest mark went first");
    }

    #[test]
    fn failing_marks_expire_after_a_week() {
        let p = planner(Strategy::RotateOnBan, &["10.0.0.0/31"], &[]);
        let now = Instant::now();
        p.mark_failing_at(ip("10.0.0.0"), false, now, 1_000);
        p.mark_failing_at(ip("10.0.0.1"), false, now, 1_000);
        assert!(p.acquire_at(now, 2_000).is_err());
        assert!(p.acquire_at(now, 1_000 + FAILING_FOR.as_millis() as u64).is_ok());
    }

    #[test]
    fn load_balance_spreads_over_usable_addresses() {
        let p = planner(Strategy::LoadBalance, &["10.0.0.0/28"], &["10.0.0.1"]);
        p.mark_failing(ip("10.0.0.2"), false);
        let mut seen = std::collections::HashMap::new();
        for _ in 0..1400 {
            *seen.entry(p.acquire().unwrap()).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 14, "{seen:?}");
        assert!(!seen.contains_key(&ip("10.0.0.1")) && !seen.contains_key(&ip("10.0.0.2")));
        assert!(seen.values().all(|&n| (40..=180).contains(&n)), "uneven spread: {seen:?}");
        // Only one usable address left: it is always found.
        let p = planner(Strategy::LoadBalance, &["10.0.0.0/28"], &[]);
        for i in 0..15 {
            p.mark_failing(ip(&format!("10.0.0.{i}")), false);
        }
        assert!((0..50).all(|_| p.acquire().unwrap() == ip("10.0.0.15")));
    }

    #[test]
    fn searches_mark_only_when_configured() {
        let p = RoutePlanner::new(&RoutePlannerSettings { search_triggers_fail: false, ..settings(Strategy::LoadBalance, &["10.0.0.0/30"], &[]) });
        assert_eq!(p.mark_failing(ip("10.0.0.1"), true), Marked::Search);
        assert!(p.failing().is_empty());
        p.mark_failing(ip("10.0.0.1"), false);
        assert_eq!(p.failing(), [ip("10.0.0.1")]);
        // Addresses outside the block are refused.
        assert_eq!(p.mark_failing(ip("192.0.2.1"), false), Marked::Foreign);
        assert_eq!(p.failing(), [ip("10.0.0.1")]);
    }

    #[test]
    fn nano_switch_follows_the_clock_within_the_block() {
        let p = planner(Strategy::NanoSwitch, &["2001:db8:1::/64"], &[]);
        let net: IpNet = "2001:db8:1::/64".parse().unwrap();
        let start = p.state().block_start;
        let a = p.acquire_at(start + Duration::from_nanos(1000), 0).unwrap();
        let b = p.acquire_at(start + Duration::from_nanos(5000), 0).unwrap();
        assert_eq!(a, ip("2001:db8:1::3e8"));
        assert_eq!(b, ip("2001:db8:1::1388"));
        assert!(net.contains(&a) && net.contains(&b));
        p.mark_failing(b, false);
        assert_eq!(p.acquire_at(start + Duration::from_nanos(5000), 0).unwrap(), ip("2001:db8:1::1389"), "a failing address is skipped");
        let s = p.status_json();
        assert_eq!(s["class"], "NanoIpRoutePlanner");
        assert_eq!(s["details"]["ipBlock"], json!({"type": "Inet6Address", "size": "18446744073709551616"}));
        assert_eq!(s["details"]["failingAddresses"][0]["failingAddress"], "/2001:db8:1:0:0:0:0:1388");
        assert!(s["details"]["currentAddressIndex"].as_str().unwrap().parse::<u64>().is_ok());
    }

    #[test]
    fn nano_switch_over_a_larger_block_picks_random_64s() {
        let p = planner(Strategy::NanoSwitch, &["2001:db8::/48"], &[]);
        let prefixes: HashSet<u128> = (0..50).map(|_| u128::from(match p.acquire().unwrap() { IpAddr::V6(a) => a, _ => unreachable!() }) >> 64).collect();
        assert!(prefixes.len() > 40, "{} distinct /64s", prefixes.len());
    }

    #[test]
    fn rotating_nano_switch_moves_to_the_next_64_on_a_ban_and_wraps() {
        let p = planner(Strategy::RotatingNanoSwitch, &["2001:db8::/63"], &[]);
        let prefix = |a: IpAddr| match a { IpAddr::V6(a) => u128::from(a) >> 64, _ => unreachable!() };
        let first = p.acquire().unwrap();
        assert_eq!(prefix(first), 0x2001_0db8_0000_0000);
        p.mark_failing(first, false);
        let second = p.acquire().unwrap();
        assert_eq!(prefix(second), 0x2001_0db8_0000_0001);
        assert_eq!(p.status_json()["details"]["blockIndex"], "1");
        // A late report about the first /64 does not skip the second.
        p.mark_failing(ip("2001:db8::1"), false);
        assert_eq!(p.status_json()["details"]["blockIndex"], "1");
        p.mark_failing(second, false);
        assert_eq!(p.status_json()["details"]["blockIndex"], "0", "wraps to the first /64");
        assert_eq!(prefix(p.acquire().unwrap()), 0x2001_0db8_0000_0000);
        assert_eq!(p.status_json()["class"], "RotatingNanoIpRoutePlanner");
    }

    #[test]
    fn status_shapes() {
        let p = planner(Strategy::RotateOnBan, &["127.0.0.0/28"], &[]);
        assert_eq!(p.status_json()["details"]["currentAddress"], "null");
        p.acquire().unwrap();
        p.mark_failing_at(ip("127.0.0.0"), false, Instant::now(), 1_764_082_454_000);
        let s = p.status_json();
        assert_eq!(
            s,
            json!({"class": "RotatingIpRoutePlanner", "details": {
                "ipBlock": {"type": "Inet4Address", "size": "16"},
                "failingAddresses": [{"failingAddress": "/127.0.0.0", "failingTimestamp": 1_764_082_454_000u64, "failingTime": "Tue Nov 25 14:54:14 UTC 2025"}],
                "rotateIndex": "0", "ipIndex": "0", "currentAddress": "/127.0.0.0"}})
        );
        let b = planner(Strategy::LoadBalance, &["10.0.0.0/24"], &[]).status_json();
        assert_eq!(b, json!({"class": "BalancingIpRoutePlanner", "details": {"ipBlock": {"type": "Inet4Address", "size": "256"}, "failingAddresses": []}}));
    }

    #[test]
    fn java_dates() {
        assert_eq!(java_date(0), "Thu Jan 01 00:00:00 UTC 1970");
        assert_eq!(java_date(951_782_400_000), "Tue Feb 29 00:00:00 UTC 2000");
        assert_eq!(java_date(1_573_520_707_545), "Tue Nov 12 01:05:07 UTC 2019");
    }
}
