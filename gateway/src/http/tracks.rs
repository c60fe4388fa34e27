//! Track routes: `/v4/loadtracks`, `/v4/decodetrack`, `/v4/decodetracks` (Lavalink rest.md).
//!
//! Loading probes untrusted media, so the gateway only picks the source from the identifier and
//! hands the probing to a worker. Decoding is pure and happens here.

use super::error::ApiError;
use super::AppState;
use crate::lavalink::{self, Track};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::Json;
use caldera_protocol::{LoadRequest, TrackData};
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

/// How long the gateway waits for a worker's load answer: the worker enforces the load timeout
/// itself; this one only guards against a worker that stops answering.
pub fn load_deadline(state: &AppState) -> Duration {
    state.node.settings.load_timeout + Duration::from_secs(5)
}

/// Which source handles an identifier, if any (lavalink-internals: sources are tried in order;
/// one that does not recognise the identifier passes).
pub fn classify(identifier: &str, state: &AppState) -> Option<LoadRequest> {
    let id = identifier.trim();
    let sources = &state.node.settings.sources;
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

pub async fn load_tracks(State(state): State<AppState>, Query(q): Query<LoadQuery>) -> Result<Json<lavalink::LoadResult>, ApiError> {
    let identifier = q.identifier.filter(|i| !i.trim().is_empty()).ok_or_else(|| ApiError::bad_request("No identifier provided"))?;
    let result = match classify(&identifier, &state) {
        None => lavalink::LoadResult::Empty(()),
        Some(request) => (&state.node.supervisor.load(request, load_deadline(&state)).await).into(),
    };
    Ok(Json(result))
}

/// Decodes one track for the routes; errors are 400s naming the reason.
fn decode_one(encoded: &str) -> Result<Track, ApiError> {
    let track = TrackData::decode(encoded).map_err(|e| ApiError::bad_request(format!("Failed to decode track: {e}")))?;
    Ok(Track::new(&track, encoded.to_string(), lavalink::empty_object()))
}

pub async fn decode_track(Query(q): Query<HashMap<String, String>>) -> Result<Json<Track>, ApiError> {
    let encoded = q
        .get("encodedTrack")
        .or_else(|| q.get("track"))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request("No track to decode provided"))?;
    decode_one(encoded).map(Json)
}

pub async fn decode_tracks(body: Bytes) -> Result<Json<Vec<Track>>, ApiError> {
    let list: Vec<String> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("Expected a JSON array of encoded tracks: {e}")))?;
    if list.is_empty() {
        return Err(ApiError::bad_request("No tracks to decode provided"));
    }
    list.iter().map(|t| decode_one(t)).collect::<Result<Vec<_>, _>>().map(Json)
}
