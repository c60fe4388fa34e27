//! The player registry: the gateway's mirror of every player (ARCHITECTURE: the gateway owns
//! everything a client can see), the WebSocket sessions they belong to, and the relay of worker
//! events to those sessions as Lavalink ops.

mod connections;
pub mod filters;
mod sessions;
mod update;

pub use connections::{ConnectionInfo, Traffic};
pub use sessions::SessionLink;
pub use update::{PlayerUpdate, Resolved, TrackChange, TrackRequest};

use crate::http::tracks::{exception_json, track_json_with};
use crate::supervisor::Supervisor;
use caldera_protocol::{EndReason, PlayerCommand, PlayerEvent, PlayerState, ToWorker, TrackData};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tracing::{debug, info, warn};

/// A track given to a player, numbered so worker events can be matched to it.
#[derive(Debug, Clone)]
pub struct PlayerTrack {
    pub seq: u64,
    pub data: TrackData,
    pub encoded: String,
    pub user_data: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voice {
    pub token: String,
    pub endpoint: String,
    pub session_id: String,
    pub channel_id: String,
}

#[derive(Debug, Clone)]
pub struct Player {
    pub id: u64,
    pub worker: u32,
    pub guild_id: u64,
    /// The current track, if any.
    pub track: Option<PlayerTrack>,
    /// Tracks that started and have not ended yet (a replaced track ends after its successor
    /// was set), for their events.
    pub live_tracks: HashMap<u64, PlayerTrack>,
    pub volume: u16,
    pub paused: bool,
    pub end_time: Option<u64>,
    pub voice: Option<Voice>,
    pub filters: Value,
    /// The same filters as the worker got them (to restore the player elsewhere).
    pub filters_parsed: caldera_protocol::Filters,
    pub state: PlayerState,
    /// The track that was playing when this player's worker last crashed (quarantine).
    pub crashed_with: Option<u64>,
    /// A track restored on a new worker: its repeated TrackStart is not sent again.
    pub restored_seq: Option<u64>,
    /// Its worker died while no healthy worker could take it: `worker` is stale, updates only
    /// change this registry, and the next ready worker (or update finding one) restores it.
    pub stranded: bool,
    /// Since when tracks have played back to back (switches under 100 ms keep it), for
    /// frameStats usability (lavalink-internals §4.4).
    pub playing_since: Option<std::time::Instant>,
    pub last_track_end: Option<std::time::Instant>,
    /// The last per-minute frame report: (when, sent, nulled, usable).
    pub frames: Option<(std::time::Instant, u32, u32, bool)>,
}

/// Per-worker figures from the registry.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerFigures {
    pub players: usize,
    pub playing: usize,
    pub frames_sent: u64,
    pub frames_nulled: u64,
}

pub struct Session {
    pub user_id: u64,
    pub client_name: String,
    pub conn: ConnectionInfo,
    pub link: SessionLink,
    pub players: HashMap<u64, Player>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Session>,
    /// Player id → (session id, guild id).
    by_id: HashMap<u64, (String, u64)>,
}

pub struct Registry {
    state: Mutex<State>,
    next_player: AtomicU64,
    next_track: AtomicU64,
    pub supervisor: Arc<Supervisor>,
    players_per_worker: usize,
    totals: connections::Totals,
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

impl Registry {
    pub fn new(supervisor: Arc<Supervisor>, players_per_worker: usize) -> Self {
        Self {
            state: Mutex::default(),
            next_player: AtomicU64::new(1),
            next_track: AtomicU64::new(1),
            supervisor,
            players_per_worker,
            totals: connections::Totals::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn has_session(&self, id: &str) -> bool {
        self.lock().sessions.contains_key(id)
    }

    /// Removes a session and destroys its players.
    pub fn remove_session(&self, id: &str) {
        let removed = {
            let mut st = self.lock();
            let session = st.sessions.remove(id);
            if let Some(s) = &session {
                for p in s.players.values() {
                    st.by_id.remove(&p.id);
                }
            }
            session
        };
        if let Some(s) = removed {
            for p in s.players.values() {
                self.supervisor.send(p.worker, ToWorker::Player { player: p.id, command: PlayerCommand::Destroy });
            }
        }
    }

    pub fn player_json(&self, session: &str, guild: u64) -> Result<Value, PlayerError> {
        let st = self.lock();
        let s = st.sessions.get(session).ok_or(PlayerError::SessionNotFound)?;
        s.players.get(&guild).map(player_json).ok_or(PlayerError::PlayerNotFound)
    }

    pub fn players_json(&self, session: &str) -> Result<Value, PlayerError> {
        let st = self.lock();
        let s = st.sessions.get(session).ok_or(PlayerError::SessionNotFound)?;
        let mut players: Vec<&Player> = s.players.values().collect();
        players.sort_by_key(|p| p.guild_id);
        Ok(Value::Array(players.into_iter().map(player_json).collect()))
    }

    /// Destroys a player (no error if it does not exist).
    pub fn destroy(&self, session: &str, guild: u64) -> Result<(), PlayerError> {
        let removed = {
            let mut st = self.lock();
            let s = st.sessions.get_mut(session).ok_or(PlayerError::SessionNotFound)?;
            let p = s.players.remove(&guild);
            if let Some(p) = &p {
                st.by_id.remove(&p.id);
            }
            p
        };
        if let Some(p) = removed {
            self.supervisor.send(p.worker, ToWorker::Player { player: p.id, command: PlayerCommand::Destroy });
        }
        Ok(())
    }

    /// Applies a validated update: creates the player if needed, records the new state and
    /// sends the worker its commands. Returns the player's JSON.
    pub fn apply(&self, session: &str, guild: u64, update: Resolved) -> Result<Value, PlayerError> {
        let mut commands = Vec::new();
        let json = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let s = st.sessions.get_mut(session).ok_or(PlayerError::SessionNotFound)?;
            let user_id = s.user_id;
            if !s.players.contains_key(&guild) {
                let worker = self.place(&st.sessions)?;
                let id = self.next_player.fetch_add(1, Ordering::Relaxed);
                commands.push((worker, id, PlayerCommand::Create { guild_id: guild, user_id }));
                st.by_id.insert(id, (session.to_string(), guild));
                let s = st.sessions.get_mut(session).ok_or(PlayerError::SessionNotFound)?;
                s.players.insert(guild, Player::new(id, worker, guild));
            }
            let stranded = st.sessions.get(session).and_then(|s| s.players.get(&guild)).is_some_and(|p| p.stranded);
            let load = if stranded { self.worker_load(&st.sessions, None) } else { HashMap::new() };
            let s = st.sessions.get_mut(session).ok_or(PlayerError::SessionNotFound)?;
            let user_id = s.user_id;
            let p = s.players.get_mut(&guild).ok_or(PlayerError::PlayerNotFound)?;
            let updates = update.apply_to(p, &self.next_track);
            let mut ended = Vec::new();
            if p.stranded {
                // Its worker is gone: the update is recorded, and restoring sends all of it. A
                // track it replaced or stopped has no worker to report its end: the gateway does.
                let current = p.track.as_ref().map(|t| t.seq);
                let reason = if current.is_some() { "replaced" } else { "stopped" };
                let gone: Vec<u64> = p.live_tracks.keys().copied().filter(|seq| Some(*seq) != current).collect();
                for seq in gone {
                    if let Some(t) = p.live_tracks.remove(&seq) {
                        let track = track_json_with(&t.data, t.encoded.clone(), &t.user_data);
                        ended.push(json!({"op": "event", "type": "TrackEndEvent", "guildId": guild.to_string(), "track": track, "reason": reason}).to_string());
                    }
                }
                if let Some(target) = self.least_loaded(&load) {
                    commands.extend(restore(p, target, user_id));
                    info!(guild = p.guild_id, to = target, "stranded player restored on an update");
                }
            } else {
                commands.extend(updates.into_iter().map(|c| (p.worker, p.id, c)));
            }
            let json = player_json(p);
            for event in ended {
                s.link.send(event, false);
            }
            json
        };
        for (worker, player, command) in commands {
            if !self.supervisor.send(worker, ToWorker::Player { player, command }) {
                warn!(worker, player, "could not reach the player's worker");
            }
        }
        Ok(json)
    }

    /// The ready worker with the fewest players, below the per-worker cap.
    fn place(&self, sessions: &HashMap<String, Session>) -> Result<u32, PlayerError> {
        self.least_loaded(&self.worker_load(sessions, None)).ok_or(PlayerError::NoCapacity)
    }

    /// Players per ready worker (`except` left out).
    fn worker_load(&self, sessions: &HashMap<String, Session>, except: Option<u32>) -> HashMap<u32, usize> {
        let mut load: HashMap<u32, usize> =
            self.supervisor.ready_workers().into_iter().filter(|w| Some(*w) != except).map(|w| (w, 0)).collect();
        for p in sessions.values().flat_map(|s| s.players.values()).filter(|p| !p.stranded) {
            if let Some(n) = load.get_mut(&p.worker) {
                *n += 1;
            }
        }
        load
    }

    /// The worker with the fewest players, below the per-worker cap.
    fn least_loaded(&self, load: &HashMap<u32, usize>) -> Option<u32> {
        load.iter().filter(|(_, n)| **n < self.players_per_worker).min_by_key(|(w, n)| (**n, **w)).map(|(w, _)| *w)
    }

    /// Players, playing players and last-minute frames of each worker.
    pub fn worker_figures(&self) -> HashMap<u32, WorkerFigures> {
        let st = self.lock();
        let mut figures: HashMap<u32, WorkerFigures> = HashMap::new();
        for p in st.sessions.values().flat_map(|s| s.players.values()).filter(|p| !p.stranded) {
            let f = figures.entry(p.worker).or_default();
            f.players += 1;
            f.playing += usize::from(p.track.is_some() && !p.paused);
            if let Some((_, sent, nulled, _)) = p.frames {
                f.frames_sent += sent as u64;
                f.frames_nulled += nulled as u64;
            }
        }
        figures
    }

    /// (players, playing players) over every session (§5.3).
    pub fn player_counts(&self) -> (usize, usize) {
        let st = self.lock();
        let all = st.sessions.values().flat_map(|s| s.players.values());
        all.fold((0, 0), |(n, playing), p| (n + 1, playing + usize::from(p.track.is_some() && !p.paused)))
    }

    /// A session's frameStats: averages over its players whose last minute is usable (§4.4);
    /// `None` when no player's is.
    pub fn frame_stats(&self, session: &str) -> Option<Value> {
        let st = self.lock();
        let s = st.sessions.get(session)?;
        let fresh = std::time::Duration::from_secs(120);
        let usable: Vec<(i64, i64)> = s
            .players
            .values()
            .filter_map(|p| p.frames)
            .filter(|(at, _, _, usable)| *usable && at.elapsed() < fresh)
            .map(|(_, sent, nulled, _)| (sent as i64, nulled as i64))
            .collect();
        if usable.is_empty() {
            return None;
        }
        let n = usable.len() as i64;
        let sent: i64 = usable.iter().map(|u| u.0).sum();
        let nulled: i64 = usable.iter().map(|u| u.1).sum();
        let deficit = n * crate::stats::EXPECTED_FRAMES_PER_MINUTE - sent - nulled;
        Some(json!({"sent": sent / n, "nulled": nulled / n, "deficit": deficit / n}))
    }

    /// A worker died: its players are re-created on healthy workers from the registry (same
    /// voice state, the track where it was when the worker went away, volume, filters, paused,
    /// end time) — unless the same track was playing in that player's previous crash too: then
    /// it is quarantined (TrackException `fault` + TrackEnd `loadFailed`) instead of crashing a
    /// third worker. For frameStats the lost minute counts as deficit, not as missing data (§4.4).
    /// Players no healthy worker can take are stranded until one is ready ([`Self::on_worker_ready`]).
    pub fn on_worker_lost(&self, worker: u32) {
        let mut commands: Vec<(u32, u64, PlayerCommand)> = Vec::new();
        let mut guard = self.lock();
        let st = &mut *guard;
        let now = std::time::Instant::now();
        let now_ms = crate::http::error::now_ms();
        let report_every_ms = self.supervisor.settings().player_update_interval_ms;
        let mut load = self.worker_load(&st.sessions, Some(worker));
        for session in st.sessions.values_mut() {
            let user_id = session.user_id;
            for p in session.players.values_mut().filter(|p| p.worker == worker && !p.stranded) {
                p.frames = Some((now, 0, 0, p.played_last_minute(now)));
                p.state.connected = false;
                p.state.ping_ms = -1;
                // Quarantine: the same track was playing in this player's previous crash.
                let current = p.track.as_ref().map(|t| t.seq);
                if current.is_some() && current == p.crashed_with {
                    let t = p.track.take().expect("current track");
                    p.live_tracks.remove(&t.seq);
                    let track = track_json_with(&t.data, t.encoded.clone(), &t.user_data);
                    let guild = p.guild_id.to_string();
                    let exception = json!({"message": "This track crashed its worker twice and was not restarted.", "severity": "fault", "cause": "worker process exited during playback", "causeStackTrace": "worker process exited during playback"});
                    session.link.send(json!({"op": "event", "type": "TrackExceptionEvent", "guildId": guild, "track": track, "exception": exception}).to_string(), false);
                    session.link.send(json!({"op": "event", "type": "TrackEndEvent", "guildId": guild, "track": track, "reason": "loadFailed"}).to_string(), false);
                    warn!(guild = p.guild_id, "track quarantined after crashing two workers");
                }
                p.crashed_with = p.track.as_ref().map(|t| t.seq);
                p.state.position_ms = p.position_at_loss(now_ms, report_every_ms);
                p.state.time_ms = now_ms;
                let Some(target) = self.least_loaded(&load) else {
                    p.stranded = true;
                    warn!(guild = p.guild_id, "no healthy worker to restore the player on; it waits for one");
                    continue;
                };
                *load.get_mut(&target).expect("listed") += 1;
                commands.extend(restore(p, target, user_id));
                info!(guild = p.guild_id, from = worker, to = target, position_ms = p.state.position_ms, "player restored on another worker");
            }
        }
        drop(guard);
        self.send_restoring(commands);
    }

    /// A worker is ready (started or respawned): stranded players are restored on the least
    /// busy ready workers.
    pub fn on_worker_ready(&self, worker: u32) {
        let mut commands: Vec<(u32, u64, PlayerCommand)> = Vec::new();
        let mut guard = self.lock();
        let st = &mut *guard;
        let mut load = self.worker_load(&st.sessions, None);
        for session in st.sessions.values_mut() {
            let user_id = session.user_id;
            for p in session.players.values_mut().filter(|p| p.stranded) {
                let Some(target) = self.least_loaded(&load) else { break };
                *load.get_mut(&target).expect("listed") += 1;
                commands.extend(restore(p, target, user_id));
                info!(guild = p.guild_id, ready = worker, to = target, position_ms = p.state.position_ms, "stranded player restored");
            }
        }
        drop(guard);
        self.send_restoring(commands);
    }

    fn send_restoring(&self, commands: Vec<(u32, u64, PlayerCommand)>) {
        for (worker, player, command) in commands {
            if !self.supervisor.send(worker, ToWorker::Player { player, command }) {
                warn!(worker, player, "could not reach the worker restoring a player");
            }
        }
    }

    /// Handles an event a worker reported about one of its players.
    pub fn on_event(&self, worker: u32, player: u64, event: PlayerEvent) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some((sid, guild)) = st.by_id.get(&player).cloned() else {
            debug!(player, "event for a player that is gone");
            return;
        };
        let Some(s) = st.sessions.get_mut(&sid) else { return };
        let Some(p) = s.players.get_mut(&guild) else { return };
        if p.worker != worker {
            // Worker frames are hostile: a worker may only speak for its own players.
            warn!(worker, player, "worker reported on a player it does not host; ignored");
            return;
        }
        let guild_id = guild.to_string();
        let event_op = |kind: &str, track: &PlayerTrack, extra: Value| {
            let mut ev = json!({"op": "event", "type": kind, "guildId": guild_id, "track": track_json_with(&track.data, track.encoded.clone(), &track.user_data)});
            if let (Some(obj), Value::Object(more)) = (ev.as_object_mut(), extra) {
                obj.extend(more);
            }
            ev.to_string()
        };
        let is_update = matches!(event, PlayerEvent::State(_));
        let msg = match event {
            // A restored track starts again on its new worker; the client already heard its start.
            PlayerEvent::TrackStart { track_seq } if p.restored_seq.take() == Some(track_seq) => None,
            PlayerEvent::TrackStart { track_seq } => {
                let now = std::time::Instant::now();
                let back_to_back = p.last_track_end.is_some_and(|e| now.duration_since(e) < std::time::Duration::from_millis(100));
                if !(back_to_back && p.playing_since.is_some()) {
                    p.playing_since = Some(now);
                }
                p.live_tracks.get(&track_seq).map(|t| event_op("TrackStartEvent", t, json!({})))
            }
            PlayerEvent::TrackEnd { track_seq, reason } => {
                p.last_track_end = Some(std::time::Instant::now());
                if reason != EndReason::Replaced {
                    p.playing_since = None;
                }
                let ended = p.live_tracks.remove(&track_seq);
                if p.track.as_ref().is_some_and(|t| t.seq == track_seq) {
                    p.track = None;
                }
                ended.map(|t| event_op("TrackEndEvent", &t, json!({"reason": end_reason(reason)})))
            }
            PlayerEvent::TrackException { track_seq, exception } => p
                .live_tracks
                .get(&track_seq)
                .map(|t| event_op("TrackExceptionEvent", t, json!({"exception": exception_json(&exception)}))),
            PlayerEvent::TrackStuck { track_seq, threshold_ms } => {
                p.live_tracks.get(&track_seq).map(|t| event_op("TrackStuckEvent", t, json!({"thresholdMs": threshold_ms})))
            }
            PlayerEvent::State(state) => {
                p.state = state;
                Some(json!({"op": "playerUpdate", "guildId": guild_id, "state": state_json(&state)}).to_string())
            }
            PlayerEvent::VoiceClosed { code, reason, by_remote } => Some(
                json!({"op": "event", "type": "WebSocketClosedEvent", "guildId": guild_id, "code": code, "reason": reason, "byRemote": by_remote})
                    .to_string(),
            ),
            PlayerEvent::Frames { sent, nulled } => {
                let now = std::time::Instant::now();
                p.frames = Some((now, sent, nulled, p.played_last_minute(now)));
                None
            }
        };
        if let Some(msg) = msg {
            s.link.send(msg, is_update);
        }
    }
}

impl Player {
    /// Whether tracks played through the whole last minute, so its frame counts are usable
    /// (§4.4). A second of slack covers the moment between the player's creation and its first
    /// track.
    fn played_last_minute(&self, now: std::time::Instant) -> bool {
        self.playing_since.is_some_and(|since| now.duration_since(since) >= std::time::Duration::from_secs(59))
    }

    /// Where the current track was when its worker went away: the last reported position,
    /// advanced by the time since that report while playing — at most one report interval, since
    /// a worker alive for longer would have reported again — at the timescale's speed, and within
    /// the track and its end time.
    fn position_at_loss(&self, now_ms: i64, report_every_ms: u64) -> u64 {
        let Some(track) = &self.track else { return self.state.position_ms };
        let mut position = self.state.position_ms;
        if !self.paused {
            // The report's figures come from the worker: bounded, never trusted to be sane.
            let elapsed = now_ms.saturating_sub(self.state.time_ms).clamp(0, report_every_ms as i64) as f64;
            let speed = self.filters_parsed.timescale.map_or(1.0, |t| t.speed * t.rate);
            let speed = if speed.is_finite() { speed.clamp(0.0, 100.0) } else { 1.0 };
            position = position.saturating_add((elapsed * speed) as u64);
        }
        if !track.data.info.is_stream {
            position = position.min(track.data.info.length);
        }
        self.end_time.map_or(position, |end| position.min(end))
    }

    fn new(id: u64, worker: u32, guild_id: u64) -> Self {
        Self {
            id,
            worker,
            guild_id,
            track: None,
            live_tracks: HashMap::new(),
            volume: 100,
            paused: false,
            end_time: None,
            voice: None,
            filters: json!({}),
            filters_parsed: caldera_protocol::Filters::default(),
            crashed_with: None,
            restored_seq: None,
            stranded: false,
            playing_since: None,
            last_track_end: None,
            frames: None,
            state: PlayerState { time_ms: crate::http::error::now_ms(), position_ms: 0, connected: false, ping_ms: -1 },
        }
    }
}

/// Moves a player to `target` and returns the commands that re-create it there from the
/// registry: voice, volume, filters and the current track at its last position. The repeated
/// TrackStart of the track that was playing at the crash is not sent again; a track set while
/// the player was stranded starts for real.
fn restore(p: &mut Player, target: u32, user_id: u64) -> Vec<(u32, u64, PlayerCommand)> {
    p.worker = target;
    p.stranded = false;
    let mut commands = vec![PlayerCommand::Create { guild_id: p.guild_id, user_id }];
    if let Some(v) = &p.voice {
        commands.push(PlayerCommand::Voice(caldera_protocol::VoiceServer {
            token: v.token.clone(),
            endpoint: v.endpoint.clone(),
            session_id: v.session_id.clone(),
            channel_id: v.channel_id.parse().unwrap_or(0),
        }));
    }
    commands.push(PlayerCommand::Volume(p.volume));
    commands.push(PlayerCommand::Filters(p.filters_parsed.clone()));
    if let Some(t) = &p.track {
        p.restored_seq = (p.crashed_with == Some(t.seq)).then_some(t.seq);
        commands.push(PlayerCommand::Play {
            track_seq: t.seq,
            track: t.data.clone(),
            start_ms: p.state.position_ms,
            end_ms: p.end_time,
            paused: p.paused,
        });
    }
    commands.into_iter().map(|c| (target, p.id, c)).collect()
}

pub fn end_reason(r: EndReason) -> &'static str {
    match r {
        EndReason::Finished => "finished",
        EndReason::LoadFailed => "loadFailed",
        EndReason::Stopped => "stopped",
        EndReason::Replaced => "replaced",
        EndReason::Cleanup => "cleanup",
    }
}

pub fn state_json(s: &PlayerState) -> Value {
    json!({"time": s.time_ms, "position": s.position_ms, "connected": s.connected, "ping": s.ping_ms})
}

/// Lavalink's Player object.
pub fn player_json(p: &Player) -> Value {
    let track = p.track.as_ref().map(|t| {
        let mut data = t.data.clone();
        data.info.position = p.state.position_ms;
        track_json_with(&data, t.encoded.clone(), &t.user_data)
    });
    let voice = match &p.voice {
        Some(v) => json!({"token": v.token, "endpoint": v.endpoint, "sessionId": v.session_id, "channelId": v.channel_id}),
        None => json!({"token": "", "endpoint": "", "sessionId": "", "channelId": null}),
    };
    json!({
        "guildId": p.guild_id.to_string(),
        "track": track,
        "volume": p.volume,
        "paused": p.paused,
        "state": state_json(&p.state),
        "voice": voice,
        "filters": p.filters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use caldera_protocol::{Timescale, TrackInfo};

    fn playing(position_ms: u64, reported_at: i64, length: u64) -> Player {
        let mut p = Player::new(1, 0, 1);
        let info = TrackInfo {
            title: "t".into(),
            author: "a".into(),
            length,
            identifier: "i".into(),
            is_stream: false,
            uri: None,
            artwork_url: None,
            isrc: None,
            source_name: "http".into(),
            position: 0,
        };
        p.track = Some(PlayerTrack { seq: 1, data: TrackData { info, source_data: Vec::new() }, encoded: String::new(), user_data: json!({}) });
        p.state.position_ms = position_ms;
        p.state.time_ms = reported_at;
        p
    }

    #[test]
    fn a_lost_worker_s_position_is_the_report_plus_the_time_since() {
        let p = playing(10_000, 1_000_000, 60_000);
        assert_eq!(p.position_at_loss(1_000_700, 5_000), 10_700);
        // A worker that hung: it stopped within one report interval of its last report.
        assert_eq!(p.position_at_loss(1_009_000, 5_000), 15_000);
        let mut paused = playing(10_000, 1_000_000, 60_000);
        paused.paused = true;
        assert_eq!(paused.position_at_loss(1_000_700, 5_000), 10_000);
        let mut fast = playing(10_000, 1_000_000, 60_000);
        fast.filters_parsed.timescale = Some(Timescale { speed: 2.0, pitch: 1.0, rate: 1.0 });
        assert_eq!(fast.position_at_loss(1_000_700, 5_000), 11_400);
        let mut ending = playing(59_900, 1_000_000, 60_000);
        assert_eq!(ending.position_at_loss(1_000_700, 5_000), 60_000, "within the track");
        ending.end_time = Some(59_950);
        assert_eq!(ending.position_at_loss(1_000_700, 5_000), 59_950, "within the end time");
        let mut hostile = playing(u64::MAX - 5, i64::MIN, u64::MAX);
        hostile.filters_parsed.timescale = Some(Timescale { speed: f64::MAX, pitch: 1.0, rate: f64::MAX });
        assert_eq!(hostile.position_at_loss(i64::MAX, 5_000), u64::MAX);
    }
}
