//! `PATCH /v4/sessions/{sessionId}/players/{guildId}`: parsing, validation (Lavalink's 400s) and
//! applying an update to a player (lavalink-internals §1.2–1.5, §5.11).

use super::player::{Player, PlayerTrack};
use caldera_protocol::{Filters, PlayerCommand, TrackData, VoiceServer};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};

/// `Some(None)` for an explicit `null`, `None` when the key is absent.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlayerUpdate {
    #[serde(default)]
    pub track: Option<TrackUpdate>,
    /// Deprecated top-level form of `track.encoded`.
    #[serde(default, deserialize_with = "nullable")]
    pub encoded_track: Option<Option<String>>,
    /// Deprecated top-level form of `track.identifier`.
    pub identifier: Option<String>,
    pub position: Option<i64>,
    #[serde(default, deserialize_with = "nullable")]
    pub end_time: Option<Option<i64>>,
    pub volume: Option<i64>,
    pub paused: Option<bool>,
    pub filters: Option<Value>,
    pub voice: Option<VoiceUpdate>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackUpdate {
    #[serde(default, deserialize_with = "nullable")]
    pub encoded: Option<Option<String>>,
    pub identifier: Option<String>,
    pub user_data: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoiceUpdate {
    pub token: Option<String>,
    pub endpoint: Option<String>,
    pub session_id: Option<String>,
    pub channel_id: Option<String>,
}

/// Lavalink's messages, word for word.
const BOTH: &str = "Cannot specify both encodedTrack and identifier";
const VOICE_INCOMPLETE: &str = "token, endpoint, sessionId and channelId must be provided in voice state";

/// What the update asks of the track.
#[derive(Debug, Clone)]
pub enum TrackRequest {
    Keep,
    Stop,
    Encoded(String),
    Identifier(String),
}

impl PlayerUpdate {
    /// Checks everything that can be checked without loading; the message is the 400's.
    pub fn validate(&self) -> Result<(TrackRequest, Option<Value>), String> {
        let deprecated = self.encoded_track.is_some() || self.identifier.is_some();
        if self.track.is_some() && deprecated {
            return Err("Cannot specify both track and encodedTrack/identifier".into());
        }
        if self.encoded_track.is_some() && self.identifier.is_some() {
            return Err(BOTH.into());
        }
        let (encoded, identifier, user_data) = match &self.track {
            Some(t) => (t.encoded.clone(), t.identifier.clone(), t.user_data.clone()),
            None => (self.encoded_track.clone(), self.identifier.clone(), None),
        };
        if encoded.is_some() && identifier.is_some() {
            return Err(BOTH.into());
        }
        if let Some(v) = self.volume {
            if !(0..=1000).contains(&v) {
                return Err(format!("Volume must be between 0 and 1000, got {v}"));
            }
        }
        if let Some(p) = self.position {
            if p < 0 {
                return Err(format!("Position must not be negative, got {p}"));
            }
        }
        if let Some(Some(e)) = self.end_time {
            if e <= 0 {
                return Err("End time must be greater than 0".into());
            }
        }
        if let Some(u) = &user_data {
            if !u.is_object() {
                return Err("userData must be a JSON object".into());
            }
        }
        if let Some(v) = &self.voice {
            voice_of(v)?;
        }
        let track = match (encoded, identifier) {
            (Some(None), _) => TrackRequest::Stop,
            (Some(Some(e)), _) => TrackRequest::Encoded(e),
            (None, Some(i)) => TrackRequest::Identifier(i),
            (None, None) => TrackRequest::Keep,
        };
        Ok((track, user_data))
    }
}

fn voice_of(v: &VoiceUpdate) -> Result<VoiceServer, String> {
    let field = |value: &Option<String>| -> Result<String, String> {
        match value.as_deref().map(str::trim) {
            Some(s) if !s.is_empty() => Ok(s.to_string()),
            _ => Err(VOICE_INCOMPLETE.into()),
        }
    };
    let channel = field(&v.channel_id)?;
    let channel_id = channel.parse::<u64>().ok().filter(|c| *c != 0).ok_or_else(|| format!("channelId must be a Discord snowflake, got `{channel}`"))?;
    Ok(VoiceServer {
        token: field(&v.token)?,
        endpoint: field(&v.endpoint)?,
        session_id: field(&v.session_id)?,
        channel_id,
    })
}

/// A validated update whose track (if any) has been resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub track: TrackChange,
    pub user_data: Option<Value>,
    pub position: Option<u64>,
    pub end_time: Option<Option<u64>>,
    pub volume: Option<u16>,
    pub paused: Option<bool>,
    pub filters: Option<Filters>,
    pub voice: Option<VoiceServer>,
}

#[derive(Debug, Clone)]
pub enum TrackChange {
    Keep,
    Stop,
    Play { data: Box<TrackData>, encoded: String },
}

impl Resolved {
    pub fn new(update: &PlayerUpdate, track: TrackChange, user_data: Option<Value>, filters: Option<Filters>) -> Self {
        Self {
            track,
            user_data,
            position: update.position.map(|p| p as u64),
            end_time: update.end_time.map(|e| e.map(|ms| ms as u64)),
            volume: update.volume.map(|v| v as u16),
            paused: update.paused,
            filters,
            voice: update.voice.as_ref().and_then(|v| voice_of(v).ok()),
        }
    }

    /// The update `noReplace` leaves of a request whose track part is skipped: what Lavalink's
    /// server applies before looking at the track (voice, volume, filters). Pause, position, end
    /// time and user data would have gone with the new track, so they go with it.
    pub fn without_track(self) -> Self {
        Self { track: TrackChange::Keep, user_data: None, position: None, end_time: None, paused: None, ..self }
    }

    /// Updates the registry's player and returns the commands for its worker, in order
    /// (lavalink-internals §1.2–1.5, Lavalink's PlayerRestHandler).
    pub fn apply_to(self, p: &mut Player, track_seq: &AtomicU64) -> Vec<PlayerCommand> {
        let mut commands = Vec::new();
        let now_ms = crate::clock::unix_ms();
        if let Some(v) = self.voice {
            if p.voice.as_ref() != Some(&v) {
                commands.push(PlayerCommand::Voice(v.clone()));
                p.voice = Some(v);
            }
        }
        if let Some(volume) = self.volume {
            p.volume = volume;
            commands.push(PlayerCommand::Volume(volume));
        }
        if let Some(filters) = self.filters {
            // The position so far counts at the old speed.
            p.settle(now_ms);
            p.filters = filters.clone();
            commands.push(PlayerCommand::Filters(filters));
        }
        match self.track {
            TrackChange::Play { data, encoded } => {
                // Starting a track unpauses, unless `paused` is in the same request (§5.11); the
                // end time and position of the request belong to the new track.
                let paused = self.paused.unwrap_or(false);
                let start = self.position.unwrap_or(0);
                let end_time = self.end_time.flatten();
                let seq = track_seq.fetch_add(1, Ordering::Relaxed);
                let user_data = self.user_data.unwrap_or_else(crate::lavalink::empty_object);
                let t = PlayerTrack { seq, data: (*data).clone(), encoded, user_data, end_time };
                p.live_tracks.insert(seq, t.clone());
                p.track = Some(t);
                p.paused = paused;
                p.state.position_ms = start;
                p.state.time_ms = now_ms;
                commands.push(PlayerCommand::Play { track_seq: seq, track: *data, start_ms: start, end_ms: end_time, paused });
            }
            TrackChange::Stop => {
                if p.track.take().is_some() {
                    commands.push(PlayerCommand::Stop);
                }
                p.paused = self.paused.unwrap_or(false);
                commands.push(PlayerCommand::Pause(p.paused));
            }
            TrackChange::Keep => {
                if let (Some(u), Some(t)) = (self.user_data, p.track.as_mut()) {
                    t.user_data = u.clone();
                    if let Some(live) = p.live_tracks.get_mut(&t.seq) {
                        live.user_data = u;
                    }
                }
                if let Some(paused) = self.paused {
                    p.settle(now_ms);
                    p.paused = paused;
                    commands.push(PlayerCommand::Pause(paused));
                }
                if let (Some(end), Some(t)) = (self.end_time, p.track.as_mut()) {
                    t.end_time = end;
                    if let Some(live) = p.live_tracks.get_mut(&t.seq) {
                        live.end_time = end;
                    }
                    commands.push(PlayerCommand::EndTime(end));
                }
                // A track that cannot seek (a stream) ignores seeks, as Lavaplayer does.
                if let (Some(position), Some(t)) = (self.position, p.track.as_ref()) {
                    if !t.data.info.is_stream {
                        p.state.position_ms = position;
                        p.state.time_ms = now_ms;
                        commands.push(PlayerCommand::Seek { position_ms: position });
                    }
                }
            }
        }
        commands
    }
}
