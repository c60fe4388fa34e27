//! Player routes: `GET/PATCH/DELETE /v4/sessions/{sessionId}/players[/{guildId}]`.

use super::error::ApiError;
use super::AppState;
use crate::supervisor::sources::is_disabled;
use crate::players::{PlayerError, PlayerUpdate, Resolved, TrackChange, TrackRequest};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use crate::lavalink;
use caldera_protocol::{LoadResult, TrackData};
use serde::Deserialize;

impl From<PlayerError> for ApiError {
    fn from(e: PlayerError) -> Self {
        let status = match e {
            PlayerError::SessionNotFound | PlayerError::PlayerNotFound => StatusCode::NOT_FOUND,
            PlayerError::NoCapacity => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

fn guild_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>().ok().filter(|g| *g != 0).ok_or_else(|| ApiError::bad_request(format!("Invalid guild id `{raw}`")))
}

pub async fn get_players(State(state): State<AppState>, Path(session): Path<String>) -> Result<Json<Vec<lavalink::Player>>, ApiError> {
    Ok(Json(state.node.players.list(&session)?))
}

pub async fn get_player(State(state): State<AppState>, Path((session, guild)): Path<(String, String)>) -> Result<Json<lavalink::Player>, ApiError> {
    let guild = guild_id(&guild)?;
    Ok(Json(state.node.players.get(&session, guild)?))
}

pub async fn delete_player(State(state): State<AppState>, Path((session, guild)): Path<(String, String)>) -> Result<StatusCode, ApiError> {
    let guild = guild_id(&guild)?;
    state.node.players.destroy(&session, guild)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateQuery {
    #[serde(default)]
    no_replace: bool,
}

pub async fn update_player(
    State(state): State<AppState>,
    Path((session, guild)): Path<(String, String)>,
    Query(query): Query<UpdateQuery>,
    body: Bytes,
) -> Result<Json<lavalink::Player>, ApiError> {
    let guild = guild_id(&guild)?;
    if !state.node.sessions.exists(&session) {
        return Err(PlayerError::SessionNotFound.into());
    }
    let update: PlayerUpdate = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("Invalid player update: {e}")))?;
    let (mut request, user_data) = update.validate().map_err(ApiError::bad_request)?;
    // Filters are checked before any track is loaded, so a bad request costs nothing.
    let filters = match &update.filters {
        Some(f) => Some(crate::players::filters::parse(f, &state.node.settings.filters).map_err(ApiError::bad_request)?),
        None => None,
    };
    // noReplace is decided before anything is loaded: with a track playing, the track part of
    // the request is skipped (`encoded: null` included), and a load that would fail is no error.
    let skip_track = query.no_replace && !matches!(request, TrackRequest::Keep) && state.node.players.has_track(&session, guild);
    if skip_track {
        tracing::debug!(guild, "noReplace: a track is playing; the request's track part is skipped");
        request = TrackRequest::Keep;
    }
    let track = match request {
        TrackRequest::Keep => TrackChange::Keep,
        TrackRequest::Stop => TrackChange::Stop,
        TrackRequest::Encoded(encoded) => {
            let data = TrackData::decode(&encoded).map_err(|e| ApiError::bad_request(format!("Failed to decode track: {e}")))?;
            // A track encoded elsewhere must not bring back a source the configuration turned off.
            if is_disabled(&data.info.source_name, &state.node.settings) {
                return Err(ApiError::bad_request(format!("The track's source `{}` is disabled on this node", data.info.source_name)));
            }
            TrackChange::Play { data: Box::new(data), encoded }
        }
        TrackRequest::Identifier(identifier) => {
            let data = load_single(&state, &identifier).await?;
            let encoded = data.encode().map_err(|e| ApiError::bad_request(format!("Cannot encode the loaded track: {e}")))?;
            TrackChange::Play { data: Box::new(data), encoded }
        }
    };
    let mut resolved = Resolved::new(&update, track, user_data, filters);
    if skip_track {
        resolved = resolved.without_track();
    }
    Ok(Json(state.node.players.apply(&session, guild, resolved)?))
}

/// Loads an identifier that must resolve to exactly one track.
async fn load_single(state: &AppState, identifier: &str) -> Result<TrackData, ApiError> {
    // Lavalink's messages, word for word; the cause goes to `?trace=true`.
    const NO_MATCHES: &str = "No matches found for identifier";
    match state.node.supervisor.load_identifier(identifier, &state.node.settings).await {
        LoadResult::Track(t) => Ok(t),
        LoadResult::Playlist { .. } | LoadResult::Search(_) => Err(ApiError::bad_request("Cannot play a playlist or search result")),
        LoadResult::Empty => Err(ApiError::bad_request(NO_MATCHES)),
        LoadResult::Error(e) => Err(ApiError::bad_request(e.message).with_trace(e.cause)),
    }
}
