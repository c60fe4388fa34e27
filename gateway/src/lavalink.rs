//! Lavalink's wire model (v4 REST and WebSocket JSON) as serde types. The domain hands these
//! layers domain values; they become Lavalink's JSON only here, by serde (STYLE §16).
//!
//! Field names and order follow Lavalink's server; numbers stay numbers of the width Lavalink
//! uses (an f32 filter value renders as Java prints a float: `0.9`, not `0.8999999761581421`).

use caldera_protocol as protocol;
use serde::Serialize;
use serde_json::{Map, Value};

/// Lavalink's Track object.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Track {
    pub encoded: String,
    pub info: TrackInfo,
    pub plugin_info: Map<String, Value>,
    pub user_data: Value,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackInfo {
    pub identifier: String,
    pub is_seekable: bool,
    pub author: String,
    pub length: u64,
    pub is_stream: bool,
    pub position: u64,
    pub title: String,
    pub uri: Option<String>,
    pub artwork_url: Option<String>,
    pub isrc: Option<String>,
    pub source_name: String,
}

impl Track {
    /// A track whose encoding is known; `user_data` must be an object (Lavalink's `{}` when none).
    pub fn new(data: &protocol::TrackData, encoded: String, user_data: Value) -> Self {
        let i = &data.info;
        Self {
            encoded,
            info: TrackInfo {
                identifier: i.identifier.clone(),
                is_seekable: !i.is_stream,
                author: i.author.clone(),
                length: i.length,
                is_stream: i.is_stream,
                position: i.position,
                title: i.title.clone(),
                uri: i.uri.clone(),
                artwork_url: i.artwork_url.clone(),
                isrc: i.isrc.clone(),
                source_name: i.source_name.clone(),
            },
            plugin_info: Map::new(),
            user_data,
        }
    }

    /// A track as loaded, encoded here, without user data.
    pub fn encode(data: &protocol::TrackData) -> Result<Self, protocol::TrackError> {
        Ok(Self::new(data, data.encode()?, empty_object()))
    }
}

/// `{}`, Lavalink's empty userData and pluginInfo.
pub fn empty_object() -> Value {
    Value::Object(Map::new())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Severity {
    Common,
    Suspicious,
    Fault,
}

impl From<protocol::ExceptionSeverity> for Severity {
    fn from(s: protocol::ExceptionSeverity) -> Self {
        match s {
            protocol::ExceptionSeverity::Common => Self::Common,
            protocol::ExceptionSeverity::Suspicious => Self::Suspicious,
            protocol::ExceptionSeverity::Fault => Self::Fault,
        }
    }
}

/// Lavalink's exception object (load errors, TrackExceptionEvent).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Exception {
    pub message: String,
    pub severity: Severity,
    pub cause: String,
    pub cause_stack_trace: String,
}

impl From<&protocol::TrackException> for Exception {
    fn from(e: &protocol::TrackException) -> Self {
        Self { message: e.message.clone(), severity: e.severity.into(), cause: e.cause.clone(), cause_stack_trace: e.cause.clone() }
    }
}

/// `GET /v4/loadtracks`: `{loadType, data}`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "loadType", content = "data", rename_all = "camelCase")]
pub enum LoadResult {
    Track(Track),
    Playlist(Playlist),
    Search(Vec<Track>),
    /// `data: null`.
    Empty(()),
    Error(Exception),
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Playlist {
    pub info: PlaylistInfo,
    pub plugin_info: Map<String, Value>,
    pub tracks: Vec<Track>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaylistInfo {
    pub name: String,
    pub selected_track: i32,
}

impl From<&protocol::LoadResult> for LoadResult {
    /// A worker's answer; one whose tracks cannot be encoded (its frames are hostile input)
    /// becomes a load error.
    fn from(result: &protocol::LoadResult) -> Self {
        let tracks = |list: &[protocol::TrackData]| list.iter().map(Track::encode).collect::<Result<Vec<_>, _>>();
        let built = match result {
            protocol::LoadResult::Track(t) => Track::encode(t).map(Self::Track),
            protocol::LoadResult::Playlist { name, selected_track, tracks: list } => tracks(list).map(|tracks| {
                Self::Playlist(Playlist {
                    info: PlaylistInfo { name: name.clone(), selected_track: *selected_track },
                    plugin_info: Map::new(),
                    tracks,
                })
            }),
            protocol::LoadResult::Search(list) => tracks(list).map(Self::Search),
            protocol::LoadResult::Empty => Ok(Self::Empty(())),
            protocol::LoadResult::Error(e) => Ok(Self::Error(e.into())),
        };
        built.unwrap_or_else(|e| {
            Self::Error(Exception {
                message: "The loaded track could not be encoded.".into(),
                severity: Severity::Fault,
                cause: format!("Cannot encode track: {e}"),
                cause_stack_trace: format!("Cannot encode track: {e}"),
            })
        })
    }
}

/// A player's state (`playerUpdate` ops and the Player object).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PlayerState {
    pub time: i64,
    pub position: u64,
    pub connected: bool,
    pub ping: i64,
}

impl From<&protocol::PlayerState> for PlayerState {
    fn from(s: &protocol::PlayerState) -> Self {
        Self { time: s.time_ms, position: s.position_ms, connected: s.connected, ping: s.ping_ms }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VoiceState {
    pub token: String,
    pub endpoint: String,
    pub session_id: String,
    pub channel_id: Option<String>,
}

/// Lavalink's Player object.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Player {
    pub guild_id: String,
    pub track: Option<Track>,
    pub volume: u16,
    pub paused: bool,
    pub state: PlayerState,
    pub voice: VoiceState,
    pub filters: Filters,
}

/// Lavalink's filters object, rendered from the validated chain: filters that are off are
/// left out.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Filters {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<f32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub equalizer: Vec<Band>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub karaoke: Option<Karaoke>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timescale: Option<Timescale>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tremolo: Option<Lfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vibrato: Option<Lfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Rotation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distortion: Option<Distortion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_mix: Option<ChannelMix>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub low_pass: Option<LowPass>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Band {
    pub band: u8,
    pub gain: f32,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Karaoke {
    pub level: f32,
    pub mono_level: f32,
    pub filter_band: f32,
    pub filter_width: f32,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timescale {
    pub speed: f64,
    pub pitch: f64,
    pub rate: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Lfo {
    pub frequency: f32,
    pub depth: f32,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    pub rotation_hz: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Distortion {
    pub sin_offset: f32,
    pub sin_scale: f32,
    pub cos_offset: f32,
    pub cos_scale: f32,
    pub tan_offset: f32,
    pub tan_scale: f32,
    pub offset: f32,
    pub scale: f32,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelMix {
    pub left_to_left: f32,
    pub left_to_right: f32,
    pub right_to_left: f32,
    pub right_to_right: f32,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct LowPass {
    pub smoothing: f32,
}

impl From<&protocol::Filters> for Filters {
    fn from(f: &protocol::Filters) -> Self {
        let lfo = |l: &protocol::Lfo| Lfo { frequency: l.frequency, depth: l.depth };
        Self {
            volume: f.volume,
            equalizer: f.equalizer.iter().map(|&(band, gain)| Band { band, gain }).collect(),
            karaoke: f.karaoke.map(|k| Karaoke { level: k.level, mono_level: k.mono_level, filter_band: k.filter_band, filter_width: k.filter_width }),
            timescale: f.timescale.map(|t| Timescale { speed: t.speed, pitch: t.pitch, rate: t.rate }),
            tremolo: f.tremolo.as_ref().map(lfo),
            vibrato: f.vibrato.as_ref().map(lfo),
            rotation: f.rotation.map(|rotation_hz| Rotation { rotation_hz }),
            distortion: f.distortion.map(|d| Distortion {
                sin_offset: d.sin_offset,
                sin_scale: d.sin_scale,
                cos_offset: d.cos_offset,
                cos_scale: d.cos_scale,
                tan_offset: d.tan_offset,
                tan_scale: d.tan_scale,
                offset: d.offset,
                scale: d.scale,
            }),
            channel_mix: f.channel_mix.map(|[ll, lr, rl, rr]| ChannelMix { left_to_left: ll, left_to_right: lr, right_to_left: rl, right_to_right: rr }),
            low_pass: f.low_pass.map(|smoothing| LowPass { smoothing }),
        }
    }
}

/// Why a track ended (TrackEndEvent `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum EndReason {
    Finished,
    LoadFailed,
    Stopped,
    Replaced,
    Cleanup,
}

impl From<protocol::EndReason> for EndReason {
    fn from(r: protocol::EndReason) -> Self {
        match r {
            protocol::EndReason::Finished => Self::Finished,
            protocol::EndReason::LoadFailed => Self::LoadFailed,
            protocol::EndReason::Stopped => Self::Stopped,
            protocol::EndReason::Replaced => Self::Replaced,
            protocol::EndReason::Cleanup => Self::Cleanup,
        }
    }
}

/// The `event` op's payloads.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum Event {
    TrackStartEvent { guild_id: String, track: Track },
    TrackEndEvent { guild_id: String, track: Track, reason: EndReason },
    TrackExceptionEvent { guild_id: String, track: Track, exception: Exception },
    TrackStuckEvent { guild_id: String, track: Track, threshold_ms: u64 },
    WebSocketClosedEvent { guild_id: String, code: u16, reason: String, by_remote: bool },
}

/// Messages on the client WebSocket.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Op {
    Ready { resumed: bool, session_id: String },
    PlayerUpdate { guild_id: String, state: PlayerState },
    Stats(Stats),
    Event(Event),
}

impl Op {
    /// The op as the text frame sent to clients.
    pub fn to_text(&self) -> String {
        // Serializing these types cannot fail: no maps with non-string keys, no foreign Serialize impls.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Lavalink's stats (REST, and the `stats` op with `frameStats`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub players: usize,
    pub playing_players: usize,
    pub uptime: u64,
    pub memory: Memory,
    pub cpu: Cpu,
    pub frame_stats: Option<FrameStats>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    pub free: u64,
    pub used: u64,
    pub allocated: u64,
    pub reservable: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cpu {
    pub cores: usize,
    pub system_load: f64,
    pub lavalink_load: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FrameStats {
    pub sent: i64,
    pub nulled: i64,
    pub deficit: i64,
}

/// Lavalink's error body.
#[derive(Debug, Clone, Serialize)]
pub struct Error<'a> {
    pub timestamp: i64,
    pub status: u16,
    pub error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    pub message: String,
    pub path: &'a str,
}

/// `PATCH /v4/sessions/{id}`'s answer.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SessionSettings {
    pub resuming: bool,
    pub timeout: u64,
}

/// `GET /v4/routeplanner/status`.
#[derive(Debug, Clone, Serialize)]
pub struct RoutePlannerStatus {
    pub class: &'static str,
    pub details: RoutePlannerDetails,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutePlannerDetails {
    pub ip_block: IpBlock,
    pub failing_addresses: Vec<FailingAddress>,
    #[serde(flatten)]
    pub strategy: StrategyDetails,
}

/// Sizes are strings: Lavalink sends Java's BigInteger as text.
#[derive(Debug, Clone, Serialize)]
pub struct IpBlock {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub size: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailingAddress {
    pub failing_address: String,
    pub failing_timestamp: u64,
    pub failing_time: String,
}

/// The fields each planner class adds to its details.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged, rename_all_fields = "camelCase")]
pub enum StrategyDetails {
    Rotating { rotate_index: String, ip_index: String, current_address: String },
    RotatingNano { block_index: String, current_address_index: String },
    Nano { current_address_index: String },
    Balancing {},
}

/// `GET /v4/info`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    pub version: Version,
    pub build_time: i64,
    pub git: Git,
    pub jvm: String,
    pub lavaplayer: String,
    pub source_managers: Vec<&'static str>,
    pub filters: Vec<&'static str>,
    pub plugins: Vec<Value>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Version {
    pub semver: &'static str,
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    pub pre_release: Option<&'static str>,
    pub build: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Git {
    pub branch: &'static str,
    pub commit: &'static str,
    pub commit_time: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn track() -> Track {
        let info = protocol::TrackInfo {
            title: "t".into(),
            author: "a".into(),
            length: 1000,
            identifier: "i".into(),
            is_stream: false,
            uri: None,
            artwork_url: None,
            isrc: None,
            source_name: "http".into(),
            position: 0,
        };
        Track::new(&protocol::TrackData { info, source_data: Vec::new() }, "QA==".into(), json!({"k": 1}))
    }

    #[test]
    fn ops_and_events_have_lavalink_s_shape() {
        let ready = serde_json::to_value(Op::Ready { resumed: false, session_id: "abc".into() }).unwrap();
        assert_eq!(ready, json!({"op": "ready", "resumed": false, "sessionId": "abc"}));
        let end = Op::Event(Event::TrackEndEvent { guild_id: "1".into(), track: track(), reason: EndReason::LoadFailed }).to_text();
        assert!(end.starts_with(r#"{"op":"event","type":"TrackEndEvent","guildId":"1","track":{"encoded":"QA==","info":{"identifier":"i","isSeekable":true"#), "{end}");
        assert!(end.ends_with(r#""pluginInfo":{},"userData":{"k":1}},"reason":"loadFailed"}"#), "{end}");
        let closed = serde_json::to_value(Op::Event(Event::WebSocketClosedEvent { guild_id: "1".into(), code: 4014, reason: "x".into(), by_remote: true })).unwrap();
        assert_eq!(closed, json!({"op": "event", "type": "WebSocketClosedEvent", "guildId": "1", "code": 4014, "reason": "x", "byRemote": true}));
        let stuck = serde_json::to_value(Event::TrackStuckEvent { guild_id: "1".into(), track: track(), threshold_ms: 5 }).unwrap();
        assert_eq!(stuck["thresholdMs"], 5);
    }

    #[test]
    fn load_results_and_filters() {
        assert_eq!(serde_json::to_value(LoadResult::Empty(())).unwrap(), json!({"loadType": "empty", "data": null}));
        let error = LoadResult::from(&protocol::LoadResult::Error(protocol::TrackException {
            message: "m".into(),
            severity: protocol::ExceptionSeverity::Suspicious,
            cause: "c".into(),
        }));
        assert_eq!(
            serde_json::to_value(error).unwrap(),
            json!({"loadType": "error", "data": {"message": "m", "severity": "suspicious", "cause": "c", "causeStackTrace": "c"}})
        );
        let filters = protocol::Filters { volume: Some(0.9), equalizer: vec![(3, 0.25)], low_pass: Some(20.0), ..Default::default() };
        assert_eq!(
            serde_json::to_string(&Filters::from(&filters)).unwrap(),
            r#"{"volume":0.9,"equalizer":[{"band":3,"gain":0.25}],"lowPass":{"smoothing":20.0}}"#
        );
        let status = RoutePlannerDetails {
            ip_block: IpBlock { kind: "Inet4Address", size: "16".into() },
            failing_addresses: Vec::new(),
            strategy: StrategyDetails::Nano { current_address_index: "7".into() },
        };
        assert_eq!(
            serde_json::to_value(status).unwrap(),
            json!({"ipBlock": {"type": "Inet4Address", "size": "16"}, "failingAddresses": [], "currentAddressIndex": "7"})
        );
    }
}
