//! Track routes: `/v4/loadtracks`, `/v4/decodetrack`, `/v4/decodetracks` (Lavalink rest.md).
//!
//! Loading probes untrusted media, so the gateway only picks the source from the identifier and
//! hands the probing to a worker. Decoding is pure and happens here.

use super::error::ApiError;
use super::AppState;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::Json;
use caldera_protocol::{ExceptionSeverity, LoadRequest, LoadResult, TrackData, TrackException};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

/// Lavalink's Track object.
pub fn track_json(track: &TrackData, user_data: &Value) -> Result<Value, ApiError> {
    let encoded = track
        .encode()
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, format!("Cannot encode track: {e}")))?;
    Ok(track_json_with(track, encoded, user_data))
}

/// Lavalink's Track object for a track whose encoding is already known.
pub fn track_json_with(track: &TrackData, encoded: String, user_data: &Value) -> Value {
    let i = &track.info;
    json!({
        "encoded": encoded,
        "info": {
            "identifier": i.identifier,
            "isSeekable": !i.is_stream,
            "author": i.author,
            "length": i.length,
            "isStream": i.is_stream,
            "position": i.position,
            "title": i.title,
            "uri": i.uri,
            "artworkUrl": i.artwork_url,
            "isrc": i.isrc,
            "sourceName": i.source_name,
        },
        "pluginInfo": {},
        "userData": user_data,
    })
}

fn severity_name(s: ExceptionSeverity) -> &'static str {
    match s {
        ExceptionSeverity::Common => "common",
        ExceptionSeverity::Suspicious => "suspicious",
        ExceptionSeverity::Fault => "fault",
    }
}

/// Lavalink's exception object (load errors, TrackExceptionEvent).
pub fn exception_json(e: &TrackException) -> Value {
    json!({
        "message": e.message,
        "severity": severity_name(e.severity),
        "cause": e.cause,
        "causeStackTrace": e.cause,
    })
}

/// Which source handles an identifier, if any (lavalink-internals: sources are tried in order;
/// one that does not recognise the identifier passes).
pub fn classify(identifier: &str, state: &AppState) -> Option<LoadRequest> {
    let id = identifier.trim();
    let sources = &state.config.lavalink.server.sources;
    let lower = id.get(..8).unwrap_or(id).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return sources.http.then(|| LoadRequest::Http { url: id.to_string() });
    }
    if lower.starts_with("icy://") {
        // Lavaplayer treats icy:// as http://.
        return sources.http.then(|| LoadRequest::Http { url: format!("http://{}", &id[6..]) });
    }
    if id.starts_with('/') {
        return sources.local.then(|| LoadRequest::Local { path: id.to_string() });
    }
    // Search prefixes (ytsearch:, scsearch:, ...) and anything else: no source of ours matches.
    None
}

#[derive(Deserialize)]
pub struct LoadQuery {
    identifier: Option<String>,
}

pub async fn load_tracks(State(state): State<AppState>, Query(q): Query<LoadQuery>) -> Result<Json<Value>, ApiError> {
    let identifier = q.identifier.filter(|i| !i.trim().is_empty()).ok_or_else(|| ApiError::bad_request("No identifier provided"))?;
    let result = match classify(&identifier, &state) {
        None => LoadResult::Empty,
        Some(request) => {
            // The worker enforces the load timeout itself; this one only guards against a worker
            // that stops answering.
            let timeout = Duration::from_millis(state.config.caldera.load_timeout_ms) + Duration::from_secs(5);
            state.supervisor.load(request, timeout).await
        }
    };
    Ok(Json(load_result_json(&result)))
}

pub fn load_result_json(result: &LoadResult) -> Value {
    let no_user_data = json!({});
    let tracks = |list: &[TrackData]| -> Result<Vec<Value>, ApiError> { list.iter().map(|t| track_json(t, &no_user_data)).collect() };
    let built: Result<Value, ApiError> = match result {
        LoadResult::Track(t) => track_json(t, &no_user_data).map(|data| json!({"loadType": "track", "data": data})),
        LoadResult::Playlist { name, selected_track, tracks: list } => tracks(list).map(|list| {
            json!({
                "loadType": "playlist",
                "data": {"info": {"name": name, "selectedTrack": selected_track}, "pluginInfo": {}, "tracks": list},
            })
        }),
        LoadResult::Search(list) => tracks(list).map(|list| json!({"loadType": "search", "data": list})),
        LoadResult::Empty => Ok(json!({"loadType": "empty", "data": null})),
        LoadResult::Error(e) => Ok(json!({"loadType": "error", "data": exception_json(e)})),
    };
    // A worker's answer that cannot be encoded (its frames are hostile input) becomes a load error.
    built.unwrap_or_else(|e| {
        json!({"loadType": "error", "data": exception_json(&TrackException {
            message: "The loaded track could not be encoded.".into(),
            severity: ExceptionSeverity::Fault,
            cause: e.message,
        })})
    })
}

/// Decodes one track for the routes; errors are 400s naming the reason.
fn decode_one(encoded: &str) -> Result<Value, ApiError> {
    let track = TrackData::decode(encoded).map_err(|e| ApiError::bad_request(format!("Failed to decode track: {e}")))?;
    Ok(track_json_with(&track, encoded.to_string(), &json!({})))
}

pub async fn decode_track(Query(q): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let encoded = q
        .get("encodedTrack")
        .or_else(|| q.get("track"))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request("No track to decode provided"))?;
    decode_one(encoded).map(Json)
}

pub async fn decode_tracks(body: Bytes) -> Result<Json<Value>, ApiError> {
    let list: Vec<String> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("Expected a JSON array of encoded tracks: {e}")))?;
    if list.is_empty() {
        return Err(ApiError::bad_request("No tracks to decode provided"));
    }
    list.iter().map(|t| decode_one(t)).collect::<Result<Vec<_>, _>>().map(|v| Json(Value::Array(v)))
}
