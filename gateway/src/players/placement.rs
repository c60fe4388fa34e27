//! Where players go: the ready worker with the fewest players, below the per-worker cap.

use super::{Players, Registry};
use std::collections::HashMap;

impl Players {
    /// Players per worker that takes new ones (`except` left out; see
    /// [`crate::supervisor::Supervisor::placeable_workers`]).
    pub(super) fn worker_load(&self, reg: &Registry, except: Option<u32>) -> HashMap<u32, usize> {
        let mut load: HashMap<u32, usize> =
            self.supervisor.placeable_workers().into_iter().filter(|w| Some(*w) != except).map(|w| (w, 0)).collect();
        for p in reg.players().filter(|p| !p.stranded) {
            if let Some(n) = load.get_mut(&p.worker) {
                *n += 1;
            }
        }
        load
    }

    /// The worker with the fewest players, below the per-worker cap.
    pub(super) fn least_loaded(&self, load: &HashMap<u32, usize>) -> Option<u32> {
        load.iter().filter(|(_, n)| **n < self.players_per_worker).min_by_key(|(w, n)| (**n, **w)).map(|(w, _)| *w)
    }
}
