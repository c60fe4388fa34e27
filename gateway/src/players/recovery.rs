//! Crash recovery: a worker that went away has its players re-created on healthy workers from
//! the registry; a track that crashed two workers in a row is quarantined instead.
//!
//! Quarantine goes by evidence: only a worker that crashed by its own doing (a crash signal, a
//! non-zero exit, flooding its connection) marks the tracks it was playing. A worker killed from
//! outside (SIGKILL by an operator or the kernel), stopped (SIGSTOP, then killed for missed
//! pings) or jammed convicts nobody, and a mark expires once its track has played on for
//! [`MARK_EXPIRES_MS`]. When the crashing thread named what it was working on (crash evidence,
//! [`Culprit`]), only that track is marked: its neighbours on the worker are not, nor is anybody
//! when a load crashed it.

use super::player::{track_end, Player};
use super::{Commands, Players};
use crate::lavalink::{Event, Exception, Op, Severity};
use caldera_protocol::evidence::Culprit;
use caldera_protocol::{EndReason, PlayerCommand};
use std::collections::HashMap;
use tracing::{info, warn};

/// How long a crash mark holds: a track that plays this long after a crash is cleared.
pub const MARK_EXPIRES_MS: i64 = 60_000;

impl Players {
    /// A worker died: its players are re-created on healthy workers from the registry (same
    /// voice state, the track where it was when the worker went away, volume, filters, paused,
    /// end time) — unless the same track was playing in that player's previous crash too: then
    /// it is quarantined (TrackException `fault` + TrackEnd `loadFailed`) instead of crashing a
    /// third worker. For frameStats the lost minute counts as deficit, not as missing data (§4.4).
    /// Players no healthy worker can take are stranded until one is ready ([`Self::on_worker_ready`]).
    pub fn on_worker_lost(&self, worker: u32, crashed: bool, culprit: Option<Culprit>) {
        let now_ms = crate::clock::unix_ms();
        let mut guard = self.lock();
        let reg = &mut *guard;
        let mut load = self.worker_load(reg, Some(worker));
        for (sid, players) in reg.sessions.iter_mut() {
            for p in players.values_mut().filter(|p| p.worker == worker && !p.stranded) {
                p.report_frames(0, 0);
                p.state.connected = false;
                p.state.ping_ms = -1;
                // This crash is evidence against the player's track, unless the crashing thread
                // named something else.
                let current = p.track.as_ref().map(|t| t.seq);
                let convicted = crashed
                    && current.is_some_and(|track_seq| culprit.is_none_or(|c| c == Culprit::Track { player: p.id, track_seq }));
                // Quarantine: convicted, and the same track was playing in this player's previous
                // crash, not long ago.
                let marked = p.crashed_with.filter(|(_, at)| now_ms - at < MARK_EXPIRES_MS).map(|(seq, _)| seq);
                if convicted && current == marked {
                    if let Some(t) = p.track.take() {
                        p.live_tracks.remove(&t.seq);
                        let cause = "worker process exited during playback".to_string();
                        let exception = Exception {
                            message: "This track crashed its worker twice and was not restarted.".into(),
                            severity: Severity::Fault,
                            cause: cause.clone(),
                            cause_stack_trace: cause,
                        };
                        self.sessions.send(sid, &Op::Event(Event::TrackExceptionEvent { guild_id: p.guild(), track: t.wire(None), exception }));
                        self.sessions.send(sid, &track_end(p.guild(), &t, EndReason::LoadFailed));
                        warn!(guild = p.guild_id, "track quarantined after crashing two workers");
                    }
                }
                p.lost_with = p.track.as_ref().map(|t| t.seq);
                if convicted {
                    p.crashed_with = p.lost_with.map(|seq| (seq, now_ms));
                }
                p.state.position_ms = p.position_at_loss(now_ms, self.report_every_ms);
                p.state.time_ms = now_ms;
                p.stranded = true;
            }
        }
        let commands = self.restore_stranded(reg, &mut load, "player restored on another worker");
        drop(guard);
        self.send(commands);
    }

    /// A worker is ready (started or respawned): stranded players are restored on the least
    /// busy ready workers.
    pub fn on_worker_ready(&self, worker: u32) {
        let mut guard = self.lock();
        let reg = &mut *guard;
        let mut load = self.worker_load(reg, None);
        let commands = self.restore_stranded(reg, &mut load, "stranded player restored");
        drop(guard);
        if !commands.is_empty() {
            info!(ready = worker, "worker ready: stranded players restored");
        }
        self.send(commands);
    }

    /// Restores every stranded player on the least loaded workers of `load`, while they have
    /// room; the rest stay stranded.
    fn restore_stranded(&self, reg: &mut super::Registry, load: &mut HashMap<u32, usize>, why: &str) -> Commands {
        let mut commands = Commands::new();
        let mut waiting = 0;
        for (sid, players) in reg.sessions.iter_mut() {
            let Some(user_id) = self.sessions.user_id(sid) else { continue };
            for p in players.values_mut().filter(|p| p.stranded) {
                let Some(target) = self.least_loaded(load) else {
                    waiting += 1;
                    continue;
                };
                *load.entry(target).or_default() += 1;
                info!(guild = p.guild_id, from = p.worker, to = target, position_ms = p.state.position_ms, "{why}");
                commands.extend(restore(p, target, user_id));
            }
        }
        if waiting > 0 {
            warn!(players = waiting, "no healthy worker to restore the player on; waiting for one");
        }
        commands
    }
}

/// Moves a player to `target` and returns the commands that re-create it there from the
/// registry: voice, volume, filters and the current track at its last position. The repeated
/// TrackStart of the track that was playing at the crash is not sent again; a track set while
/// the player was stranded starts for real.
pub(super) fn restore(p: &mut Player, target: u32, user_id: u64) -> Commands {
    p.worker = target;
    p.stranded = false;
    let mut commands = vec![PlayerCommand::Create { guild_id: p.guild_id, user_id }];
    if let Some(v) = &p.voice {
        commands.push(PlayerCommand::Voice(v.clone()));
    }
    commands.push(PlayerCommand::Volume(p.volume));
    commands.push(PlayerCommand::Filters(p.filters.clone()));
    if let Some(t) = &p.track {
        p.restored_seq = (p.lost_with == Some(t.seq)).then_some(t.seq);
        commands.push(PlayerCommand::Play {
            track_seq: t.seq,
            track: t.data.clone(),
            start_ms: p.state.position_ms,
            end_ms: t.end_time,
            paused: p.paused,
        });
    }
    commands.into_iter().map(|c| (target, p.id, c)).collect()
}
