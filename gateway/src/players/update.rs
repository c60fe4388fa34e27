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
            return Err("Cannot specify both encodedTrack and identifier".into());
        }
        let (encoded, identifier, user_data) = match &self.track {
            Some(t) => (t.encoded.clone(), t.identifier.clone(), t.user_data.clone()),
            None => (self.encoded_track.clone(), self.identifier.clone(), None),
        };
        if encoded.is_some() && identifier.is_some() {
            return Err("Cannot specify both encoded and identifier".into());
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
                return Err(format!("End time must be greater than 0, got {e}"));
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
    let field = |value: &Option<String>, name: &str| -> Result<String, String> {
        match value.as_deref().map(str::trim) {
            Some(s) if !s.is_empty() => Ok(s.to_string()),
            _ => Err(format!("Partial Lavalink voice state: {name} is missing or blank; token, endpoint, sessionId and channelId are required")),
        }
    };
    let channel = field(&v.channel_id, "channelId")?;
    let channel_id = channel.parse::<u64>().ok().filter(|c| *c != 0).ok_or_else(|| format!("channelId must be a Discord snowflake, got `{channel}`"))?;
    Ok(VoiceServer {
        token: field(&v.token, "token")?,
        endpoint: field(&v.endpoint, "endpoint")?,
        session_id: field(&v.session_id, "sessionId")?,
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
    pub no_replace: bool,
}

#[derive(Debug, Clone)]
pub enum TrackChange {
    Keep,
    Stop,
    Play { data: Box<TrackData>, encoded: String },
}

impl Resolved {
    pub fn new(
        update: &PlayerUpdate,
        track: TrackChange,
        user_data: Option<Value>,
        filters: Option<Filters>,
        no_replace: bool,
    ) -> Self {
        Self {
            track,
            user_data,
            position: update.position.map(|p| p as u64),
            end_time: update.end_time.map(|e| e.map(|ms| ms as u64)),
            volume: update.volume.map(|v| v as u16),
            paused: update.paused,
            filters,
            voice: update.voice.as_ref().and_then(|v| voice_of(v).ok()),
            no_replace,
        }
    }

    /// Updates the registry's player and returns the commands for its worker, in order.
    pub fn apply_to(self, p: &mut Player, track_seq: &AtomicU64) -> Vec<PlayerCommand> {
        let mut commands = Vec::new();
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
            p.filters = filters.clone();
            commands.push(PlayerCommand::Filters(filters));
        }
        if let Some(end) = self.end_time {
            p.end_time = end;
        }
        let replace_blocked = self.no_replace && p.track.is_some();
        match self.track {
            TrackChange::Play { data, encoded } if !replace_blocked => {
                // Starting a track unpauses, unless `paused` is in the same request (§5.11).
                let paused = self.paused.unwrap_or(false);
                let start = self.position.unwrap_or(0);
                let seq = track_seq.fetch_add(1, Ordering::Relaxed);
                let t = PlayerTrack { seq, data: (*data).clone(), encoded, user_data: self.user_data.unwrap_or_else(|| serde_json::json!({})) };
                p.live_tracks.insert(seq, t.clone());
                p.track = Some(t);
                p.paused = paused;
                p.state.position_ms = start;
                p.state.time_ms = crate::clock::unix_ms();
                commands.push(PlayerCommand::Play { track_seq: seq, track: *data, start_ms: start, end_ms: p.end_time, paused });
            }
            TrackChange::Stop => {
                if p.track.take().is_some() {
                    commands.push(PlayerCommand::Stop);
                }
                if let Some(paused) = self.paused {
                    p.paused = paused;
                    commands.push(PlayerCommand::Pause(paused));
                }
            }
            _ => {
                if let (Some(u), Some(t)) = (self.user_data, p.track.as_mut()) {
                    t.user_data = u.clone();
                    if let Some(live) = p.live_tracks.get_mut(&t.seq) {
                        live.user_data = u;
                    }
                }
                if let Some(paused) = self.paused {
                    p.paused = paused;
                    commands.push(PlayerCommand::Pause(paused));
                }
                if let Some(end) = self.end_time {
                    commands.push(PlayerCommand::EndTime(end));
                }
                if let (Some(position), Some(_)) = (self.position, p.track.as_ref()) {
                    p.state.position_ms = position;
                    p.state.time_ms = crate::clock::unix_ms();
                    commands.push(PlayerCommand::Seek { position_ms: position });
                }
            }
        }
        commands
    }
}
