//! Which source loads an identifier, and loading it: the http and local sources probe in a worker
//! (untrusted media bytes), platform URLs and searches go to the resolver (yt-dlp), and web pages
//! the http source cannot play get a second try through yt-dlp's generic extractor.

use super::resolver::Family;
use super::Supervisor;
use crate::config::Settings;
use caldera_protocol::{ExceptionSeverity, LoadRequest, LoadResult, TrackException};
use std::time::Duration;

/// Results a search asks yt-dlp for (YouTube's first page of results).
const SEARCH_RESULTS: usize = 20;
/// The longest identifier loaded (URLs past a few KiB are not links anyone shares); longer ones
/// are refused without being echoed back.
pub const MAX_IDENTIFIER_LEN: usize = 8192;
/// Caldera's own prefix: any site yt-dlp supports (`ytdlp:https://...`).
const YTDLP_PREFIX: &str = "ytdlp:";

/// Where an identifier is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Worker(LoadRequest),
    Resolver { query: String, family: Family },
}

/// Which source handles an identifier, if any (lavalink-internals: sources are tried in order;
/// one that does not recognise the identifier passes). Platform sources need the resolver.
pub fn classify(identifier: &str, settings: &Settings, resolver: bool) -> Option<Source> {
    let id = identifier.trim();
    let sources = &settings.sources;
    let r = &settings.resolver;
    let search = |prefix: &str| id.get(..prefix.len()).filter(|p| p.eq_ignore_ascii_case(prefix)).map(|_| id[prefix.len()..].trim());
    if resolver {
        if let Some(q) = search("ytsearch:").filter(|q| !q.is_empty()) {
            return (sources.youtube && r.youtube_search).then(|| Source::Resolver { query: format!("ytsearch{SEARCH_RESULTS}:{q}"), family: Family::Youtube });
        }
        if let Some(q) = search("ytmsearch:").filter(|q| !q.is_empty()) {
            let url = url::Url::parse_with_params("https://music.youtube.com/search", [("q", q)]).ok()?;
            return (sources.youtube && r.youtube_search).then(|| Source::Resolver { query: url.into(), family: Family::Youtube });
        }
        if let Some(q) = search("scsearch:").filter(|q| !q.is_empty()) {
            return (sources.soundcloud && r.soundcloud_search).then(|| Source::Resolver { query: format!("scsearch{SEARCH_RESULTS}:{q}"), family: Family::Soundcloud });
        }
        if let Some(u) = search(YTDLP_PREFIX) {
            let url = url::Url::parse(u).ok().filter(|u| matches!(u.scheme(), "http" | "https"))?;
            return Family::Any.enabled(sources, r.generic_pages).then(|| Source::Resolver { query: url.into(), family: Family::Any });
        }
    }
    let lower = id.get(..8).unwrap_or(id).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let platform = url::Url::parse(id).ok().and_then(|u| Family::of_url(&u));
        if let (true, Some(family)) = (resolver, platform) {
            return family.enabled(sources, r.generic_pages).then(|| Source::Resolver { query: id.to_string(), family });
        }
        return sources.http.then(|| Source::Worker(LoadRequest::Http { url: id.to_string() }));
    }
    if lower.starts_with("icy://") {
        // Lavaplayer treats icy:// as http://.
        return sources.http.then(|| Source::Worker(LoadRequest::Http { url: format!("http://{}", &id[6..]) }));
    }
    if id.starts_with('/') {
        return sources.local.then(|| Source::Worker(LoadRequest::Local { path: id.to_string() }));
    }
    None
}

/// Whether a track names a source Caldera knows but the configuration switched off (a track
/// encoded elsewhere may name any source; unknown ones fail when they play).
pub fn is_disabled(source_name: &str, settings: &Settings) -> bool {
    let known = matches!(source_name, "http" | "local") || Family::of_source(source_name).is_some();
    known && !settings.enabled_sources().iter().any(|s| s == source_name)
}

impl Supervisor {
    /// Loads an identifier from whichever source takes it (`Empty` when none does).
    pub async fn load_identifier(&self, identifier: &str, settings: &Settings) -> LoadResult {
        if identifier.len() > MAX_IDENTIFIER_LEN {
            return LoadResult::Error(TrackException {
                message: "The identifier is too long.".into(),
                severity: ExceptionSeverity::Common,
                cause: format!("{} bytes; at most {MAX_IDENTIFIER_LEN}", identifier.len()),
            });
        }
        let resolver = self.resolver();
        let Some(source) = classify(identifier, settings, resolver.is_some()) else { return LoadResult::Empty };
        // The worker enforces the load timeout itself; this one guards against a silent worker.
        let deadline = settings.load_timeout + Duration::from_secs(5);
        match source {
            Source::Worker(request) => {
                let page = match &request {
                    LoadRequest::Http { url } if settings.resolver.generic_pages => Some(url.clone()),
                    _ => None,
                };
                let result = self.load(request, deadline).await;
                let unknown = matches!(&result, LoadResult::Error(e) if e.message == "Unknown file format.");
                match (page, resolver) {
                    // A web page: yt-dlp may find the audio it embeds; if not, the http source's answer stands.
                    (Some(url), Some(r)) if unknown && r.is_ready() => match r.load(&url, Family::Generic, self.lease()).await {
                        found @ (LoadResult::Track(_) | LoadResult::Playlist { .. } | LoadResult::Search(_)) => found,
                        _ => result,
                    },
                    _ => result,
                }
            }
            Source::Resolver { query, family } => match resolver {
                Some(r) => self.look_up(r, &query, family).await,
                None => LoadResult::Empty,
            },
        }
    }

    /// A lookup through the resolver, from a route planner address when there is a planner; a
    /// platform that rate limits the address gets it marked failing.
    async fn look_up(&self, resolver: &super::resolver::Resolver, query: &str, family: Family) -> LoadResult {
        let Some(planner) = self.route_planner() else { return resolver.load(query, family, None).await };
        let address = match planner.acquire() {
            Ok(a) => a,
            Err(why) => {
                let message = "No outbound address is free to make the request from.".into();
                return LoadResult::Error(TrackException { message, severity: ExceptionSeverity::Suspicious, cause: why });
            }
        };
        let result = resolver.load(query, family, Some(address)).await;
        if let LoadResult::Error(e) = &result {
            let search = query.starts_with("ytsearch") || query.starts_with("scsearch") || query.contains("/search?");
            super::resolver::mark_if_rate_limited(planner, address, e, search);
        }
        result
    }

    /// An address from the route planner for one lookup, if it has one.
    fn lease(&self) -> Option<std::net::IpAddr> {
        self.route_planner()?.acquire().ok()
    }
}
