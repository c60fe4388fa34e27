//! One player as the gateway mirrors it: what the client set (track, volume, filters, paused,
//! end time, voice) and what its worker last reported (state, frames), plus what recovery needs.

use crate::lavalink::{self, Event, Op};
use caldera_protocol::{EndReason, Filters, PlayerState, TrackData, VoiceServer};
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A track given to a player, numbered so worker events can be matched to it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PlayerTrack {
    pub seq: u64,
    pub data: TrackData,
    pub encoded: String,
    pub user_data: Value,
    /// Where this track ends early (`endTime`): it belongs to the track it was sent with.
    pub end_time: Option<u64>,
}

impl PlayerTrack {
    /// The track as Lavalink renders it, at `position` when given.
    pub fn wire(&self, position: Option<u64>) -> lavalink::Track {
        let mut track = lavalink::Track::new(&self.data, self.encoded.clone(), self.user_data.clone());
        if let Some(p) = position {
            track.info.position = p;
        }
        track
    }
}

/// A per-minute frame report from the worker (lavalink-internals §4.4).
#[derive(Debug, Clone, Copy)]
pub struct FrameReport {
    pub at: Instant,
    pub sent: u32,
    pub nulled: u32,
    /// Tracks played through the whole minute, so the counts say something.
    pub usable: bool,
}

/// Handed to the next gateway as it is (a planned upgrade), but for the frame bookkeeping, which
/// starts over.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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
    pub voice: Option<VoiceServer>,
    pub filters: Filters,
    pub state: PlayerState,
    /// The track that was playing when this player's worker last crashed by its own fault, and
    /// when (quarantine evidence; it expires).
    pub crashed_with: Option<(u64, i64)>,
    /// The track that was playing when this player's worker last went away, for any reason.
    pub lost_with: Option<u64>,
    /// A track restored on a new worker: its repeated TrackStart is not sent again.
    pub restored_seq: Option<u64>,
    /// Its worker died while no healthy worker could take it: `worker` is stale, updates only
    /// change this registry, and the next ready worker (or update finding one) restores it.
    pub stranded: bool,
    /// Since when tracks have played back to back (switches under 100 ms keep it), for
    /// frameStats usability (lavalink-internals §4.4).
    #[serde(skip)]
    pub playing_since: Option<Instant>,
    #[serde(skip)]
    pub last_track_end: Option<Instant>,
    #[serde(skip)]
    pub frames: Option<FrameReport>,
}

impl Player {
    pub fn new(id: u64, worker: u32, guild_id: u64) -> Self {
        Self {
            id,
            worker,
            guild_id,
            track: None,
            live_tracks: HashMap::new(),
            volume: 100,
            paused: false,
            voice: None,
            filters: Filters::default(),
            crashed_with: None,
            lost_with: None,
            restored_seq: None,
            stranded: false,
            playing_since: None,
            last_track_end: None,
            frames: None,
            state: PlayerState { time_ms: crate::clock::unix_ms(), position_ms: 0, connected: false, ping_ms: -1 },
        }
    }

    pub fn is_playing(&self) -> bool {
        self.track.is_some() && !self.paused
    }

    /// Whether tracks played through the whole last minute, so its frame counts are usable
    /// (§4.4). A second of slack covers the moment between the player's creation and its first
    /// track.
    pub fn played_last_minute(&self, now: Instant) -> bool {
        self.playing_since.is_some_and(|since| now.duration_since(since) >= Duration::from_secs(59))
    }

    /// Records a frame report taken now.
    pub fn report_frames(&mut self, sent: u32, nulled: u32) {
        let now = Instant::now();
        self.frames = Some(FrameReport { at: now, sent, nulled, usable: self.played_last_minute(now) });
    }

    /// Where the current track is at `now_ms`: the last reported (or set) position, advanced by
    /// the time since at the timescale's speed while it plays, within the track and its end
    /// time; 0 without a track. `at_most` bounds the time counted (a worker that went away
    /// stopped within one report interval of its last report).
    pub fn live_position(&self, now_ms: i64, at_most: Option<u64>) -> u64 {
        let Some(track) = &self.track else { return 0 };
        let mut position = self.state.position_ms;
        if !self.paused && !self.stranded {
            // The report's figures come from the worker: bounded, never trusted to be sane.
            let elapsed = now_ms.saturating_sub(self.state.time_ms).clamp(0, at_most.map_or(i64::MAX, |m| m.min(i64::MAX as u64) as i64)) as f64;
            let speed = self.filters.timescale.map_or(1.0, |t| t.speed * t.rate);
            let speed = if speed.is_finite() { speed.clamp(0.0, 100.0) } else { 1.0 };
            position = position.saturating_add((elapsed * speed) as u64);
        }
        if !track.data.info.is_stream {
            position = position.min(track.data.info.length);
        }
        track.end_time.map_or(position, |end| position.min(end))
    }

    /// Records the live position as the state at `now_ms`, before something changes how it
    /// advances (a pause, a speed change).
    pub fn settle(&mut self, now_ms: i64) {
        self.state.position_ms = self.live_position(now_ms, None);
        self.state.time_ms = now_ms;
    }

    /// Where the current track was when its worker went away (see [`Self::live_position`]).
    pub fn position_at_loss(&self, now_ms: i64, report_every_ms: u64) -> u64 {
        self.live_position(now_ms, Some(report_every_ms))
    }

    /// The state as of `now_ms`, with the live position.
    pub fn live_state(&self, now_ms: i64) -> lavalink::PlayerState {
        lavalink::PlayerState { time: now_ms, position: self.live_position(now_ms, None), ..(&self.state).into() }
    }

    /// Lavalink's Player object as of `now_ms`: the live state, and the track at its live
    /// position.
    pub fn wire(&self, now_ms: i64) -> lavalink::Player {
        let voice = match &self.voice {
            Some(v) => lavalink::VoiceState {
                token: v.token.clone(),
                endpoint: v.endpoint.clone(),
                session_id: v.session_id.clone(),
                channel_id: Some(v.channel_id.to_string()),
            },
            None => lavalink::VoiceState { token: String::new(), endpoint: String::new(), session_id: String::new(), channel_id: None },
        };
        let state = self.live_state(now_ms);
        lavalink::Player {
            guild_id: self.guild_id.to_string(),
            track: self.track.as_ref().map(|t| t.wire(Some(state.position))),
            volume: self.volume,
            paused: self.paused,
            state,
            voice,
            filters: (&self.filters).into(),
        }
    }

    /// The `playerUpdate` op of this player, as of `now_ms`.
    pub fn update_op(&self, now_ms: i64) -> Op {
        Op::PlayerUpdate { guild_id: self.guild_id.to_string(), state: self.live_state(now_ms) }
    }

    pub fn guild(&self) -> String {
        self.guild_id.to_string()
    }
}

/// TrackEndEvent for `track`.
pub fn track_end(guild: String, track: &PlayerTrack, reason: EndReason) -> Op {
    Op::Event(Event::TrackEndEvent { guild_id: guild, track: track.wire(None), reason: reason.into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use caldera_protocol::{Timescale, TrackInfo};
    use serde_json::json;

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
        p.track = Some(PlayerTrack { seq: 1, data: TrackData { info, source_data: Vec::new() }, encoded: String::new(), user_data: json!({}), end_time: None });
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
        fast.filters.timescale = Some(Timescale { speed: 2.0, pitch: 1.0, rate: 1.0 });
        assert_eq!(fast.position_at_loss(1_000_700, 5_000), 11_400);
        let mut ending = playing(59_900, 1_000_000, 60_000);
        assert_eq!(ending.position_at_loss(1_000_700, 5_000), 60_000, "within the track");
        ending.track.as_mut().unwrap().end_time = Some(59_950);
        assert_eq!(ending.position_at_loss(1_000_700, 5_000), 59_950, "within the end time");
        let mut hostile = playing(u64::MAX - 5, i64::MIN, u64::MAX);
        hostile.filters.timescale = Some(Timescale { speed: f64::MAX, pitch: 1.0, rate: f64::MAX });
        assert_eq!(hostile.position_at_loss(i64::MAX, 5_000), u64::MAX);
    }

    #[test]
    fn the_wire_player_shows_voice_and_live_track_position() {
        let mut p = playing(1_234, 0, 60_000);
        p.voice = Some(VoiceServer { token: "t".into(), endpoint: "e".into(), session_id: "s".into(), channel_id: 42 });
        let wire = serde_json::to_value(p.wire(500)).unwrap();
        assert_eq!(wire["voice"], json!({"token": "t", "endpoint": "e", "sessionId": "s", "channelId": "42"}));
        assert_eq!(wire["track"]["info"]["position"], 1_734, "live: the report plus the time since");
        assert_eq!(wire["state"]["position"], 1_734);
        assert_eq!(wire["state"]["time"], 500);
        assert_eq!(wire["filters"], json!({}));
        p.paused = true;
        assert_eq!(serde_json::to_value(p.wire(900)).unwrap()["state"]["position"], 1_234, "frozen while paused");
        let empty = serde_json::to_value(Player::new(2, 0, 7).wire(0)).unwrap();
        assert_eq!(empty["voice"]["channelId"], Value::Null);
        assert_eq!(empty["state"]["position"], 0);
        assert_eq!(empty["guildId"], "7");
    }
}
