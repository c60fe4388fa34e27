//! The player registry: the gateway's mirror of every player (ARCHITECTURE: the gateway owns
//! everything a client can see), where each one lives, how updates reach its worker, how worker
//! events become Lavalink events for its session, and how players are restored when a worker
//! goes away.
//!
//! Locking: the registry's lock is taken before the sessions' (events are sent to a session
//! while the player they concern is held); the sessions layer never calls back up.

pub mod filters;
mod placement;
mod player;
mod recovery;
mod update;

pub use player::{FrameReport, Player, PlayerTrack};
pub use update::{PlayerUpdate, Resolved, TrackChange, TrackRequest};

use crate::config::Settings;
use crate::lavalink::{self, Event, FrameStats, Op};
use crate::sessions::Sessions;
use crate::supervisor::{SendError, Supervisor};
use caldera_protocol::{EndReason, PlayerCommand, PlayerEvent, ToWorker};
use player::track_end;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Frames expected per player per minute (20 ms each).
pub const EXPECTED_FRAMES_PER_MINUTE: i64 = 3000;

/// Per-worker figures from the registry.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerFigures {
    pub players: usize,
    pub playing: usize,
    pub frames_sent: u64,
    pub frames_nulled: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PlayerError {
    #[error("Session not found")]
    SessionNotFound,
    #[error("Player not found")]
    PlayerNotFound,
    #[error("No worker has room for another player")]
    NoCapacity,
}

/// Every player as one gateway hands them to the next (a planned upgrade), with the numbers
/// the next ones get.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PlayersRecord {
    /// (session id, player).
    pub players: Vec<(String, Player)>,
    pub next_player: u64,
    pub next_track: u64,
}

/// Commands for workers, gathered under the lock and sent after it: (worker, player, command).
type Commands = Vec<(u32, u64, PlayerCommand)>;

#[derive(Default)]
struct Registry {
    /// Session id → guild id → player.
    sessions: HashMap<String, HashMap<u64, Player>>,
    /// Player id → (session id, guild id).
    by_id: HashMap<u64, (String, u64)>,
}

impl Registry {
    fn players(&self) -> impl Iterator<Item = &Player> {
        self.sessions.values().flat_map(|s| s.values())
    }

    fn remove(&mut self, session: &str, guild: u64) -> Option<Player> {
        let p = self.sessions.get_mut(session)?.remove(&guild)?;
        self.by_id.remove(&p.id);
        Some(p)
    }
}

pub struct Players {
    registry: Mutex<Registry>,
    next_player: AtomicU64,
    next_track: AtomicU64,
    supervisor: Arc<Supervisor>,
    sessions: Arc<Sessions>,
    players_per_worker: usize,
    /// How often workers report each player's state.
    report_every_ms: u64,
}

impl Players {
    pub fn new(supervisor: Arc<Supervisor>, sessions: Arc<Sessions>, settings: &Settings) -> Self {
        Self {
            registry: Mutex::default(),
            next_player: AtomicU64::new(1),
            next_track: AtomicU64::new(1),
            supervisor,
            sessions,
            players_per_worker: settings.players_per_worker,
            report_every_ms: settings.player_update_interval.as_millis() as u64,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends commands gathered under the lock. One that cannot be queued is not lost: a worker
    /// whose queue is full is killed, and every worker that goes away has its players restored
    /// from this registry, which already holds what the command said.
    fn send(&self, commands: Commands) {
        for (worker, player, command) in commands {
            match self.supervisor.send(worker, &ToWorker::Player { player, command }) {
                Ok(()) => {}
                Err(SendError::NotConnected) => debug!(worker, player, "worker went away; its players will be restored"),
                Err(e) => warn!(worker, player, error = %e, "could not reach the player's worker"),
            }
        }
    }

    pub fn get(&self, session: &str, guild: u64) -> Result<lavalink::Player, PlayerError> {
        let reg = self.lock();
        if !self.sessions.exists(session) {
            return Err(PlayerError::SessionNotFound);
        }
        let now = crate::clock::unix_ms();
        reg.sessions.get(session).and_then(|s| s.get(&guild)).map(|p| p.wire(now)).ok_or(PlayerError::PlayerNotFound)
    }

    pub fn list(&self, session: &str) -> Result<Vec<lavalink::Player>, PlayerError> {
        let reg = self.lock();
        if !self.sessions.exists(session) {
            return Err(PlayerError::SessionNotFound);
        }
        let mut players: Vec<&Player> = reg.sessions.get(session).map(|s| s.values().collect()).unwrap_or_default();
        players.sort_by_key(|p| p.guild_id);
        let now = crate::clock::unix_ms();
        Ok(players.into_iter().map(|p| p.wire(now)).collect())
    }

    /// Destroys a player (no error if it does not exist). A track it was playing ends
    /// `stopped`, as in Lavalink.
    pub fn destroy(&self, session: &str, guild: u64) -> Result<(), PlayerError> {
        let removed = {
            let mut reg = self.lock();
            if !self.sessions.exists(session) {
                return Err(PlayerError::SessionNotFound);
            }
            let removed = reg.remove(session, guild);
            if let Some(t) = removed.as_ref().and_then(|p| p.track.as_ref()) {
                self.sessions.send(session, &track_end(guild.to_string(), t, EndReason::Stopped));
            }
            removed
        };
        if let Some(p) = removed.filter(|p| !p.stranded) {
            self.send(vec![(p.worker, p.id, PlayerCommand::Destroy)]);
        }
        Ok(())
    }

    /// Whether the player has a current track (for `noReplace`, decided before any load).
    pub fn has_track(&self, session: &str, guild: u64) -> bool {
        self.lock().sessions.get(session).and_then(|s| s.get(&guild)).is_some_and(|p| p.track.is_some())
    }

    /// A session is gone: its players are destroyed.
    pub fn destroy_session(&self, session: &str) {
        let removed = {
            let mut reg = self.lock();
            let players = reg.sessions.remove(session).unwrap_or_default();
            for p in players.values() {
                reg.by_id.remove(&p.id);
            }
            players
        };
        self.send(removed.values().filter(|p| !p.stranded).map(|p| (p.worker, p.id, PlayerCommand::Destroy)).collect());
    }

    /// Applies a validated update: creates the player if needed, records the new state and
    /// sends the worker its commands. Returns the player as Lavalink renders it.
    pub fn apply(&self, session: &str, guild: u64, update: Resolved) -> Result<lavalink::Player, PlayerError> {
        let mut commands = Commands::new();
        let mut guard = self.lock();
        let reg = &mut *guard;
        let user_id = self.sessions.user_id(session).ok_or(PlayerError::SessionNotFound)?;
        if !reg.sessions.get(session).is_some_and(|s| s.contains_key(&guild)) {
            let worker = self.least_loaded(&self.worker_load(reg, None)).ok_or(PlayerError::NoCapacity)?;
            let id = self.next_player.fetch_add(1, Ordering::Relaxed);
            commands.push((worker, id, PlayerCommand::Create { guild_id: guild, user_id }));
            reg.by_id.insert(id, (session.to_string(), guild));
            reg.sessions.entry(session.to_string()).or_default().insert(guild, Player::new(id, worker, guild));
        }
        let stranded = reg.sessions.get(session).and_then(|s| s.get(&guild)).is_some_and(|p| p.stranded);
        let load = if stranded { self.worker_load(reg, None) } else { HashMap::new() };
        let p = reg.sessions.get_mut(session).and_then(|s| s.get_mut(&guild)).ok_or(PlayerError::PlayerNotFound)?;
        let updates = update.apply_to(p, &self.next_track);
        if p.stranded {
            // Its worker is gone: the update is recorded, and restoring sends all of it. A
            // track it replaced or stopped has no worker to report its end: the gateway does.
            let current = p.track.as_ref().map(|t| t.seq);
            let reason = if current.is_some() { EndReason::Replaced } else { EndReason::Stopped };
            let gone: Vec<u64> = p.live_tracks.keys().copied().filter(|seq| Some(*seq) != current).collect();
            for seq in gone {
                if let Some(t) = p.live_tracks.remove(&seq) {
                    self.sessions.send(session, &track_end(p.guild(), &t, reason));
                }
            }
            if let Some(target) = self.least_loaded(&load) {
                commands.extend(recovery::restore(p, target, user_id));
                info!(guild = p.guild_id, to = target, "stranded player restored on an update");
            }
        } else {
            commands.extend(updates.into_iter().map(|c| (p.worker, p.id, c)));
        }
        let wire = p.wire(crate::clock::unix_ms());
        drop(guard);
        self.send(commands);
        Ok(wire)
    }

    /// Every player, for the next gateway.
    pub fn record(&self) -> PlayersRecord {
        let reg = self.lock();
        let players = reg.sessions.iter().flat_map(|(sid, s)| s.values().map(|p| (sid.clone(), p.clone()))).collect();
        PlayersRecord {
            players,
            next_player: self.next_player.load(Ordering::Relaxed),
            next_track: self.next_track.load(Ordering::Relaxed),
        }
    }

    /// Takes the players the previous gateway handed over. Those on workers that came along
    /// (`adopted`) stay where they play; the others are restored as when a worker goes away.
    pub fn restore(&self, record: PlayersRecord, adopted: &[u32]) {
        let mut lost: Vec<u32> = Vec::new();
        {
            let mut reg = self.lock();
            for (sid, p) in record.players {
                if !p.stranded && !adopted.contains(&p.worker) && !lost.contains(&p.worker) {
                    lost.push(p.worker);
                }
                reg.by_id.insert(p.id, (sid.clone(), p.guild_id));
                reg.sessions.entry(sid).or_default().insert(p.guild_id, p);
            }
            self.next_player.fetch_max(record.next_player, Ordering::Relaxed);
            self.next_track.fetch_max(record.next_track, Ordering::Relaxed);
        }
        for worker in lost {
            self.on_worker_lost(worker, false, None);
        }
    }

    /// Players, playing players and last-minute frames of each worker.
    pub fn worker_figures(&self) -> HashMap<u32, WorkerFigures> {
        let reg = self.lock();
        let mut figures: HashMap<u32, WorkerFigures> = HashMap::new();
        for p in reg.players().filter(|p| !p.stranded) {
            let f = figures.entry(p.worker).or_default();
            f.players += 1;
            f.playing += usize::from(p.is_playing());
            if let Some(r) = p.frames {
                f.frames_sent += r.sent as u64;
                f.frames_nulled += r.nulled as u64;
            }
        }
        figures
    }

    /// (players, playing players) over every session (§5.3).
    pub fn counts(&self) -> (usize, usize) {
        let reg = self.lock();
        reg.players().fold((0, 0), |(n, playing), p| (n + 1, playing + usize::from(p.is_playing())))
    }

    /// Players per session.
    pub fn per_session(&self) -> HashMap<String, usize> {
        self.lock().sessions.iter().map(|(id, s)| (id.clone(), s.len())).collect()
    }

    /// The playerUpdates a resumed session gets after its replay, one per player (§3.8).
    pub fn resume_updates(&self, session: &str) -> Vec<Op> {
        let reg = self.lock();
        let mut players: Vec<&Player> = reg.sessions.get(session).map(|s| s.values().collect()).unwrap_or_default();
        players.sort_by_key(|p| p.guild_id);
        let now = crate::clock::unix_ms();
        players.into_iter().map(|p| p.update_op(now)).collect()
    }

    /// A session's frameStats: averages over its players whose last minute is usable (§4.4);
    /// `None` when no player's is.
    pub fn frame_stats(&self, session: &str) -> Option<FrameStats> {
        let reg = self.lock();
        let fresh = Duration::from_secs(120);
        let usable: Vec<(i64, i64)> = reg
            .sessions
            .get(session)?
            .values()
            .filter_map(|p| p.frames)
            .filter(|r| r.usable && r.at.elapsed() < fresh)
            .map(|r| (r.sent as i64, r.nulled as i64))
            .collect();
        if usable.is_empty() {
            return None;
        }
        let n = usable.len() as i64;
        let sent: i64 = usable.iter().map(|u| u.0).sum();
        let nulled: i64 = usable.iter().map(|u| u.1).sum();
        let deficit = n * EXPECTED_FRAMES_PER_MINUTE - sent - nulled;
        Some(FrameStats { sent: sent / n, nulled: nulled / n, deficit: deficit / n })
    }

    /// Handles an event a worker reported about one of its players.
    pub fn on_event(&self, worker: u32, player: u64, event: PlayerEvent) {
        let mut guard = self.lock();
        let reg = &mut *guard;
        let Some((sid, guild)) = reg.by_id.get(&player).cloned() else {
            debug!(player, "event for a player that is gone");
            return;
        };
        let Some(p) = reg.sessions.get_mut(&sid).and_then(|s| s.get_mut(&guild)) else { return };
        if p.worker != worker || p.stranded {
            // Worker frames are hostile: a worker may only speak for its own players.
            warn!(worker, player, "worker reported on a player it does not host; ignored");
            return;
        }
        let guild_id = p.guild();
        let op = match event {
            // A restored track starts again on its new worker; the client already heard its start.
            PlayerEvent::TrackStart { track_seq } if p.restored_seq.take() == Some(track_seq) => None,
            PlayerEvent::TrackStart { track_seq } => {
                let now = Instant::now();
                let back_to_back = p.last_track_end.is_some_and(|e| now.duration_since(e) < Duration::from_millis(100));
                if !(back_to_back && p.playing_since.is_some()) {
                    p.playing_since = Some(now);
                }
                p.live_tracks.get(&track_seq).map(|t| Op::Event(Event::TrackStartEvent { guild_id, track: t.wire(None) }))
            }
            PlayerEvent::TrackEnd { track_seq, reason } => {
                p.last_track_end = Some(Instant::now());
                if reason != EndReason::Replaced {
                    p.playing_since = None;
                }
                let ended = p.live_tracks.remove(&track_seq);
                if p.track.as_ref().is_some_and(|t| t.seq == track_seq) {
                    p.track = None;
                }
                ended.map(|t| track_end(guild_id, &t, reason))
            }
            PlayerEvent::TrackException { track_seq, exception } => p
                .live_tracks
                .get(&track_seq)
                .map(|t| Op::Event(Event::TrackExceptionEvent { guild_id, track: t.wire(None), exception: (&exception).into() })),
            PlayerEvent::TrackStuck { track_seq, threshold_ms } => {
                p.live_tracks.get(&track_seq).map(|t| Op::Event(Event::TrackStuckEvent { guild_id, track: t.wire(None), threshold_ms }))
            }
            PlayerEvent::State(state) => {
                p.state = state;
                Some(Op::PlayerUpdate { guild_id, state: (&state).into() })
            }
            PlayerEvent::VoiceClosed { code, reason, by_remote } => {
                Some(Op::Event(Event::WebSocketClosedEvent { guild_id, code, reason, by_remote }))
            }
            PlayerEvent::Frames { sent, nulled } => {
                p.report_frames(sent, nulled);
                None
            }
        };
        if let Some(op) = op {
            self.sessions.send(&sid, &op);
        }
    }
}
