//! Track routes: `/v4/loadtracks`, `/v4/decodetrack`, `/v4/decodetracks` (Lavalink rest.md).
//!
//! Loading probes untrusted media or asks the resolver, so the gateway only picks the source
//! (`supervisor::sources`) and hands the work on. Decoding is pure and happens here.

use super::error::ApiError;
use super::AppState;
use crate::lavalink::{self, Track};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::Json;
use caldera_protocol::TrackData;
use serde::Deserialize;
use std::collections::HashMap;

#[derive(Deserialize)]
pub struct LoadQuery {
    identifier: Option<String>,
}

pub async fn load_tracks(State(state): State<AppState>, Query(q): Query<LoadQuery>) -> Result<Json<lavalink::LoadResult>, ApiError> {
    let identifier = q.identifier.filter(|i| !i.trim().is_empty()).ok_or_else(|| ApiError::bad_request("No identifier provided"))?;
    let result = state.node.supervisor.load_identifier(&identifier, &state.node.settings).await;
    Ok(Json((&result).into()))
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
