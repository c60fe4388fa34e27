//! The worker's decode pool: a few threads (one per core, two at least) that decode every
//! player's audio in turns, instead of a thread per player. The audio clock asks for a track's
//! buffer to be refilled when it runs low; a request already queued is not queued twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// Work the pool does for one track: decode until its buffer is full (or input runs short).
pub trait Fill: Send + Sync + 'static {
    fn fill(&self);
}

struct Job {
    work: Arc<dyn Fill>,
    queued: Arc<AtomicBool>,
}

#[derive(Clone)]
pub struct DecodePool {
    tx: mpsc::Sender<Job>,
}

impl DecodePool {
    /// Starts `threads` decode threads; they end when every handle is dropped.
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("caldera-decode-{i}")).spawn(move || loop {
                let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                    Ok(job) => job,
                    Err(_) => return,
                };
                // Cleared before the work, so a request made while it runs queues it again.
                job.queued.store(false, Ordering::Release);
                // Media bytes are hostile: a decoder that panics fails its track, not the pool.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.work.fill())).is_err() {
                    tracing::error!("a decoder panicked; its track fails");
                }
            })?;
        }
        Ok(Self { tx })
    }

    /// Threads for this machine: one per core, two at least.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get()).max(2)
    }
}

/// A track's place in the pool's queue.
#[derive(Clone)]
pub struct Ticket {
    pool: DecodePool,
    work: Arc<dyn Fill>,
    queued: Arc<AtomicBool>,
}

impl Ticket {
    pub fn new(pool: &DecodePool, work: Arc<dyn Fill>) -> Self {
        Self { pool: pool.clone(), work, queued: Arc::default() }
    }

    /// Queues the track's work unless it is queued already.
    pub fn request(&self) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            let job = Job { work: self.work.clone(), queued: self.queued.clone() };
            if self.pool.tx.send(job).is_err() {
                self.queued.store(false, Ordering::Release);
            }
        }
    }
}
