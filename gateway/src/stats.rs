//! Lavalink's stats (lavalink-internals §4.1–4.4) for a node made of several processes.
//!
//! Mapping (documented in the README): `memory.used` and `.allocated` are the resident memory of
//! the gateway plus every worker; `.free` is the system's available memory; `.reservable` is
//! the system's total memory. `cpu.lavalinkLoad` is the CPU time of the gateway and its workers
//! over the interval ÷ (interval × cores); `cpu.systemLoad` comes from `/proc/stat` deltas. Both
//! are cached for 30 s (§5.7) and read 0 the first time (no baseline yet).

use crate::lavalink::{self, FrameStats};
use crate::players::Players;
use crate::supervisor::Supervisor;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CPU_REFRESH: Duration = Duration::from_secs(30);

/// The node's figures at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub players: usize,
    pub playing_players: usize,
    pub uptime_ms: u64,
    /// Resident memory of the gateway and its workers.
    pub memory_used: u64,
    /// The system's available and total memory.
    pub memory_free: u64,
    pub memory_total: u64,
    pub cores: usize,
    pub system_load: f64,
    pub node_load: f64,
}

impl Snapshot {
    /// Lavalink's stats object; `frame_stats` only for the WebSocket op.
    pub fn wire(&self, frame_stats: Option<FrameStats>) -> lavalink::Stats {
        lavalink::Stats {
            players: self.players,
            playing_players: self.playing_players,
            uptime: self.uptime_ms,
            memory: lavalink::Memory { free: self.memory_free, used: self.memory_used, allocated: self.memory_used, reservable: self.memory_total },
            cpu: lavalink::Cpu { cores: self.cores, system_load: self.system_load, lavalink_load: self.node_load },
            frame_stats,
        }
    }
}

#[derive(Default)]
struct CpuSample {
    at: Option<Instant>,
    system_total: u64,
    system_idle: u64,
    node_cpu_ms: u64,
    system_load: f64,
    node_load: f64,
}

pub struct Stats {
    started: Instant,
    /// Uptime of the gateways this one took over from (a handover), in milliseconds.
    carried_ms: std::sync::atomic::AtomicU64,
    cores: usize,
    cpu: Mutex<CpuSample>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            carried_ms: std::sync::atomic::AtomicU64::new(0),
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            cpu: Mutex::default(),
        }
    }

    /// Since the node started: a handover does not restart it.
    pub fn uptime_ms(&self) -> u64 {
        self.carried_ms.load(std::sync::atomic::Ordering::Relaxed).saturating_add(self.started.elapsed().as_millis() as u64)
    }

    /// Counts the uptime of the gateway this one took over from.
    pub fn carry_uptime(&self, ms: u64) {
        self.carried_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The node's figures now.
    pub fn snapshot(&self, supervisor: &Supervisor, players: &Players) -> Snapshot {
        let workers = supervisor.workers();
        let live = workers.iter().filter(|w| w.pid.is_some()).filter_map(|w| w.resources);
        let (worker_rss, worker_cpu_ms) = live.fold((0, 0), |(rss, cpu), r| (rss + r.rss_bytes, cpu + r.cpu_time_ms));
        let own = own_usage();
        let (memory_total, memory_free) = meminfo();
        let (system_load, node_load) = self.cpu_loads(own.1 + worker_cpu_ms);
        let (players, playing_players) = players.counts();
        Snapshot {
            players,
            playing_players,
            uptime_ms: self.uptime_ms(),
            memory_used: own.0 + worker_rss,
            memory_free,
            memory_total,
            cores: self.cores,
            system_load,
            node_load,
        }
    }

    fn cpu_loads(&self, node_cpu_ms: u64) -> (f64, f64) {
        let mut s = self.cpu.lock().unwrap_or_else(|e| e.into_inner());
        if s.at.is_some_and(|at| at.elapsed() < CPU_REFRESH) {
            return (s.system_load, s.node_load);
        }
        let (total, idle) = system_ticks();
        let now = Instant::now();
        if let Some(at) = s.at {
            let dt = total.saturating_sub(s.system_total) as f64;
            let didle = idle.saturating_sub(s.system_idle) as f64;
            s.system_load = sane(if dt > 0.0 { 1.0 - didle / dt } else { 0.0 });
            let wall_ms = now.duration_since(at).as_millis() as f64 * self.cores as f64;
            // A restarted worker's counter starts again from zero: never go negative.
            let used_ms = node_cpu_ms.saturating_sub(s.node_cpu_ms) as f64;
            s.node_load = sane(if wall_ms > 0.0 { used_ms / wall_ms } else { 0.0 });
        }
        s.at = Some(now);
        s.system_total = total;
        s.system_idle = idle;
        s.node_cpu_ms = node_cpu_ms;
        (s.system_load, s.node_load)
    }
}

fn sane(x: f64) -> f64 {
    if x.is_finite() {
        x.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// (RSS bytes, CPU ms) of this process.
fn own_usage() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<u64> = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("").split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0);
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100).max(1) as u64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
    (field(24) * page, (field(14) + field(15)) * 1000 / ticks)
}

/// (MemTotal, MemAvailable) in bytes.
fn meminfo() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (get("MemTotal:"), get("MemAvailable:"))
}

/// (total, idle) jiffies of all CPUs.
fn system_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else { return (0, 0) };
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (v.iter().sum(), idle)
}
