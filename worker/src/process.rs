//! Facts about this process: tying its life to the gateway's, and its resource figures.

use crate::WorkerError;
use caldera_protocol::ResourceReport;
use nix::sys::signal::Signal;

/// Makes sure the parent is still the gateway (it may have died before we got here, leaving us
/// re-parented); with `die_with_it`, SIGKILL on its death first. A worker that may outlive its
/// gateway instead waits for the next one when the connection ends (see `ipc`).
pub fn check_parent(gateway_pid: i32, die_with_it: bool) -> Result<(), WorkerError> {
    if die_with_it {
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(WorkerError::ParentDeathSignal)?;
    }
    let actual = nix::unistd::getppid().as_raw();
    if actual != gateway_pid {
        return Err(WorkerError::ParentGone { expected: gateway_pid, actual });
    }
    Ok(())
}

/// Outlive the gateway that spawned us: another gateway is taking over (a planned upgrade).
/// From now on the connection's end is what ends this worker.
pub fn outlive_parent() -> Result<(), WorkerError> {
    nix::sys::prctl::set_pdeathsig(None).map_err(WorkerError::ParentDeathSignal)
}

/// glibc gives every thread that allocates an arena of its own (up to 8 per core), and memory
/// freed in one arena is not reused by the others: with decode, mixer and runtime threads all
/// allocating per-player buffers, that fragments a worker's heap. Two arenas keep it compact.
pub fn limit_malloc_arenas() {
    // SAFETY: mallopt only changes an allocator setting; it is called before any other thread
    // exists and takes no pointers.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Reads RSS, CPU time and thread count from `/proc/self`.
/// Gives the kernel back the heap pages that are free: tracks start and end, and what their
/// probing and decoders freed would otherwise stay resident as holes in glibc's heaps.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn resources() -> ResourceReport {
    let mut report = ResourceReport::default();
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the parenthesised command name (which may contain spaces).
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // rest starts at field 3 (state); utime=14, stime=15, num_threads=20, rss=24.
            let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100).max(1) as u64;
            let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
            report.cpu_time_ms = (field(14) + field(15)) * 1000 / ticks;
            report.threads = field(20) as u32;
            report.rss_bytes = field(24) * page;
        }
    }
    report
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_resources() {
        let r = super::resources();
        assert!(r.rss_bytes > 1024 * 1024, "{r:?}");
        assert!(r.threads >= 1, "{r:?}");
    }
}
