//! Just enough `/proc` reading for tests about processes.

/// `(ppid, state, comm)` of a process, `None` if it does not exist.
pub fn stat(pid: u32) -> Option<(u32, char, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let mut rest = text[close + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((ppid, state, comm))
}

/// Whether the process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    matches!(stat(pid), Some((_, state, _)) if state != 'Z' && state != 'X')
}

/// Live children of `parent` whose command name is `comm`.
pub fn live_children(parent: u32, comm: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            matches!(stat(pid), Some((ppid, state, c)) if ppid == parent && c == comm && state != 'Z' && state != 'X')
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// The environment variable names of a process.
pub fn env_keys(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| String::from_utf8_lossy(kv.split(|b| *b == b'=').next().unwrap_or_default()).into_owned())
        .collect()
}

/// Resident memory of a process, in bytes (0 if it is gone).
pub fn rss_bytes(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok()).unwrap_or(0) * 1024
}

/// CPU time (user + system) of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

/// Proportional set size of a process, in bytes (shared pages divided among their users; 0 if
/// it is gone).
pub fn pss_bytes(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix("Pss:")).and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok()).unwrap_or(0) * 1024
}
