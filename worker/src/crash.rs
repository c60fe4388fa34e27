//! Crash evidence (see [`caldera_protocol::evidence`]): threads that work on hostile media say
//! whose it is ([`working_on`]: loads, track opens, decode-pool turns, and each tick of a feed on
//! songbird's audio clock, which decodes an Opus source's frames when a filter is on). A crash
//! signal raised on such a thread (a fault in a decoder, an allocation past the memory ceiling
//! aborting, a panic while panicking) writes that culprit to the gateway's evidence pipe before
//! the signal takes its usual course. A crash on any other
//! thread, or a signal sent from outside, names nobody.

use caldera_protocol::evidence::Culprit;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::OnceLock;

/// The signals a crash raises on the crashing thread.
const CRASH_SIGNALS: [libc::c_int; 5] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGABRT];

thread_local! {
    static WORKING_ON: Cell<Option<Culprit>> = const { Cell::new(None) };
}

static EVIDENCE_FD: AtomicI32 = AtomicI32::new(-1);
static WRITTEN: AtomicBool = AtomicBool::new(false);
/// The handlers that were there before (the runtime's stack-overflow handler, or the default),
/// in [`CRASH_SIGNALS`] order.
static PREVIOUS: OnceLock<[libc::sigaction; CRASH_SIGNALS.len()]> = OnceLock::new();

/// Runs `f` with this thread working on `culprit`'s media.
pub fn working_on<R>(culprit: Culprit, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Culprit>);
    impl Drop for Restore {
        fn drop(&mut self) {
            WORKING_ON.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(WORKING_ON.with(|c| c.replace(Some(culprit))));
    f()
}

/// Installs the crash handlers writing to `fd` (the evidence pipe). Called once, before any
/// other thread exists.
pub fn install(fd: i32) -> std::io::Result<()> {
    EVIDENCE_FD.store(fd, Ordering::Relaxed);
    // SAFETY: plain sigaction(2) calls with zeroed, then filled structs; the handler only makes
    // async-signal-safe calls (write, sigaction, raise) and reads a const-initialised
    // thread-local and atomics.
    unsafe {
        let mut previous: [libc::sigaction; CRASH_SIGNALS.len()] = std::mem::zeroed();
        for (sig, old) in CRASH_SIGNALS.iter().zip(previous.iter_mut()) {
            if libc::sigaction(*sig, std::ptr::null(), old) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        let _ = PREVIOUS.set(previous);
        let mut action: libc::sigaction = std::mem::zeroed();
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_crash;
        action.sa_sigaction = handler as *const () as usize;
        // On the thread's alternate stack where it has one (a stack overflow leaves none).
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        for sig in CRASH_SIGNALS {
            if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

extern "C" fn on_crash(sig: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    let culprit = WORKING_ON.try_with(Cell::get).ok().flatten();
    let fd = EVIDENCE_FD.load(Ordering::Relaxed);
    if let Some(culprit) = culprit {
        if fd >= 0 && !WRITTEN.swap(true, Ordering::Relaxed) {
            let record = culprit.encode();
            // SAFETY: write(2) of a stack buffer; one record is far below PIPE_BUF, so atomic.
            unsafe { libc::write(fd, record.as_ptr().cast(), record.len()) };
        }
    }
    // The signal takes its usual course: the previous handler is back, and a signal sent by a
    // process (abort's raise, kill) is raised again, delivered once this returns; a fault
    // happens again when the faulting instruction re-runs.
    let index = CRASH_SIGNALS.iter().position(|s| *s == sig);
    // SAFETY: sigaction and raise are async-signal-safe; `info` is the kernel's.
    unsafe {
        match (index, PREVIOUS.get()) {
            (Some(i), Some(previous)) => libc::sigaction(sig, &previous[i], std::ptr::null_mut()),
            _ => libc::signal(sig, libc::SIG_DFL) as libc::c_int,
        };
        if info.is_null() || (*info).si_code <= 0 {
            libc::raise(sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_on_nests_and_restores() {
        let outer = Culprit::Track { player: 1, track_seq: 1 };
        working_on(outer, || {
            working_on(Culprit::Load, || assert_eq!(WORKING_ON.with(Cell::get), Some(Culprit::Load)));
            assert_eq!(WORKING_ON.with(Cell::get), Some(outer));
        });
        assert_eq!(WORKING_ON.with(Cell::get), None);
    }
}
