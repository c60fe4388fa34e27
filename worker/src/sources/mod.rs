//! Track sources: http(s) URLs and local files. Loading probes the media (untrusted bytes, which
//! is why it runs in a worker) and answers with Lavalink's load result.
//!
//! Messages and severities follow Lavaplayer's (lavalink-internals; research notes in the tracks
//! issue): a 404 or a missing local file is `empty`, an unreachable host is "Connecting to the URL
//! failed." (suspicious), unrecognised bytes are "Unknown file format." (common).

pub mod container;
#[cfg(test)]
mod fuzz;
mod hls;
mod playlist;
pub mod probe;
mod rewind;

use caldera_protocol::track::STREAM_LENGTH;
use caldera_protocol::{ExceptionSeverity, LoadRequest, LoadResult, TrackData, TrackException, TrackInfo};
use crate::net::{Net, Request, Via};
use container::Container;
use rewind::Rewind;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};
use symphonia::core::formats::FormatReader;
use symphonia::core::io::MediaSource;

/// Bytes read to recognise a container (and to find a stream's ICY title).
const HEAD_LEN: usize = 64 * 1024;
/// Entries of a radio playlist tried before giving up.
const MAX_RADIO_ATTEMPTS: usize = 5;
const UNKNOWN_TITLE: &str = "Unknown title";
const UNKNOWN_ARTIST: &str = "Unknown artist";
/// Sources whose tracks the gateway's resolver (yt-dlp) finds the media of at play time.
pub const PLATFORMS: &[&str] = &["youtube", "soundcloud", "bandcamp", "twitch", "vimeo", "yt-dlp"];
/// Platform media is read in ranged requests of this size: YouTube throttles or cuts longer ones.
const PLATFORM_CHUNK: u64 = 10 << 20;
/// The longest pre-roll (`available_at`) a track waits out before playing.
const MAX_PREROLL: Duration = Duration::from_secs(60);

/// Why a load failed, as Lavalink's exception object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadFailure {
    pub message: String,
    pub severity: ExceptionSeverity,
    pub cause: String,
}

impl LoadFailure {
    pub fn new(message: &str, severity: ExceptionSeverity, cause: String) -> Self {
        Self { message: message.into(), severity, cause }
    }

    pub fn common(message: &str, cause: String) -> Self {
        Self::new(message, ExceptionSeverity::Common, cause)
    }

    pub fn suspicious(message: &str, cause: String) -> Self {
        Self::new(message, ExceptionSeverity::Suspicious, cause)
    }

    pub fn fault(message: &str, cause: String) -> Self {
        Self::new(message, ExceptionSeverity::Fault, cause)
    }

    /// The failure carried through an I/O error (a reader's), to be found again by [`Self::of_io`].
    pub fn into_io(self) -> std::io::Error {
        std::io::Error::other(self)
    }

    /// The failure an I/O error carries, if it carries one.
    pub fn of_io(e: &std::io::Error) -> Option<&LoadFailure> {
        e.get_ref()?.downcast_ref()
    }

    fn into_exception(self) -> TrackException {
        TrackException { message: self.message, severity: self.severity, cause: self.cause }
    }
}

impl std::fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.cause)
    }
}

impl std::error::Error for LoadFailure {}

/// What loading can end in besides a result: "nothing here" is not an error (`empty`).
enum Loaded {
    Track(TrackData),
    Nothing,
}

/// Loads one identifier, within the load timeout (reads stop when it runs out). Blocking: run it
/// on a blocking thread.
pub fn load(request: &LoadRequest, settings: &crate::Settings, net: &Net) -> LoadResult {
    let deadline = Instant::now() + Duration::from_millis(settings.load_timeout_ms);
    let result = match request {
        LoadRequest::Http { url } => allowed("http", settings).and_then(|()| load_http(url, settings, net, deadline, true)),
        LoadRequest::Local { path } => allowed("local", settings).and_then(|()| load_local(path, settings)),
    };
    match result {
        Ok(Loaded::Track(t)) => LoadResult::Track(t),
        Ok(Loaded::Nothing) => LoadResult::Empty,
        Err(f) => LoadResult::Error(f.into_exception()),
    }
}

fn load_http(url: &str, settings: &crate::Settings, net: &Net, deadline: Instant, allow_playlist: bool) -> Result<Loaded, LoadFailure> {
    // Lavaplayer answers a 404 with "no matches".
    let request = Request { deadline: Some(deadline), ..Request::new(url, Via::HttpSource) };
    let Some(mut reader) = net.open(request, settings.max_probe_bytes)? else {
        return Ok(Loaded::Nothing);
    };
    let head = read_head(&mut reader, HEAD_LEN)?;
    let container = container::detect(&head).ok_or_else(|| unknown_format(&head))?;
    let meta = reader.meta().clone();
    if container.is_playlist() {
        let text = read_playlist(reader, head)?;
        if container == Container::M3u && hls::is_hls(&text) {
            return load_hls(url, &meta.final_url, &text, net, deadline);
        }
        if !allow_playlist {
            return Err(LoadFailure::common("Playlists inside playlists are not supported.", meta.final_url));
        }
        return load_radio(url, &meta.final_url, container, &text, settings, net, deadline);
    }
    let is_stream = meta.is_stream();
    let stream_title = reader.stream_title();
    let source: Box<dyn MediaSource> = Box::new(Rewind::new(reader, head));
    let probed = if is_stream { probe::probe_stream(source, container)? } else { probe::probe_file(source, container)? };
    let title = probed.title.or(stream_title).or_else(|| meta.icy_name.clone().filter(|_| is_stream));
    let author = probed.author.or_else(|| meta.icy_name.clone());
    let info = TrackInfo {
        title: title.unwrap_or_else(|| UNKNOWN_TITLE.into()),
        author: author.unwrap_or_else(|| UNKNOWN_ARTIST.into()),
        length: if is_stream { STREAM_LENGTH } else { probed.length_ms.unwrap_or(STREAM_LENGTH) },
        identifier: url.into(),
        is_stream,
        uri: Some(url.into()),
        artwork_url: None,
        isrc: probed.isrc,
        source_name: "http".into(),
        position: 0,
    };
    track(info, container)
}

fn load_local(path: &str, settings: &crate::Settings) -> Result<Loaded, LoadFailure> {
    // Like Lavaplayer: a path that is not a readable file is "no matches", not an error.
    let Some(canonical) = allowed_local_path(path, settings)? else { return Ok(Loaded::Nothing) };
    let mut file = std::fs::File::open(&canonical)
        .map_err(|e| LoadFailure::suspicious("Failed to open file for reading.", e.to_string()))?;
    let head = read_head(&mut file, HEAD_LEN)?;
    let container = container::detect(&head).ok_or_else(|| unknown_format(&head))?;
    if container.is_playlist() {
        return Err(LoadFailure::common("Local playlists are not supported.", canonical.display().to_string()));
    }
    let probed = probe::probe_file(Box::new(Rewind::new(file, head)), container)?;
    let info = TrackInfo {
        title: probed.title.unwrap_or_else(|| UNKNOWN_TITLE.into()),
        author: probed.author.unwrap_or_else(|| UNKNOWN_ARTIST.into()),
        length: probed.length_ms.unwrap_or(STREAM_LENGTH),
        identifier: path.into(),
        is_stream: false,
        uri: Some(path.into()),
        artwork_url: None,
        isrc: probed.isrc,
        source_name: "local".into(),
        position: 0,
    };
    track(info, container)
}

/// A track's media opened for playback.
pub struct Media {
    pub format: Box<dyn symphonia::core::formats::FormatReader>,
    pub container: Container,
    /// How much of a network source is buffered (a local file always is).
    pub gauge: Option<crate::net::Gauge>,
}

/// Opens a loaded track's media for playback: the source again (no probe budget), the container
/// from its first bytes, and a symphonia reader over it.
pub fn open_for_playback(track: &TrackData, settings: &crate::Settings, net: &Net) -> Result<Media, LoadFailure> {
    let location = track.info.uri.clone().unwrap_or_else(|| track.info.identifier.clone());
    let source = track.info.source_name.as_str();
    if source == "http" || source == "local" || PLATFORMS.contains(&source) {
        allowed(source, settings)?;
    }
    match source {
        "http" => {
            // Playback reads the whole stream: no deadline, only the timeouts of each request.
            let request = Request::new(&location, Via::HttpSource);
            let reader = net
                .open(request.clone(), u64::MAX)?
                .ok_or_else(|| LoadFailure::common("That URL is not playable.", "Status code 404".into()))?;
            open_reader(reader, net, &request)
        }
        name if PLATFORMS.contains(&name) => {
            let request = resolve(&track.info, net)?;
            let (info, renewing) = (track.info.clone(), net.clone());
            let reader = net
                .open(request.clone(), u64::MAX)?
                .ok_or_else(|| LoadFailure::common("The track is not available.", "its media answered 404".into()))?
                .with_renewal(Box::new(move || resolve(&info, &renewing)));
            open_reader(reader, net, &request)
        }
        "local" => {
            let path = allowed_local_path(&location, settings)?
                .ok_or_else(|| LoadFailure::common("The file does not exist.", location.clone()))?;
            let mut file = std::fs::File::open(&path)
                .map_err(|e| LoadFailure::suspicious("Failed to open file for reading.", e.to_string()))?;
            let head = read_head(&mut file, HEAD_LEN)?;
            let container = container::detect(&head).filter(|c| !c.is_playlist()).ok_or_else(|| unknown_format(&head))?;
            let (format, _) = probe::open_format(Box::new(Rewind::new(file, head)), container)?;
            Ok(Media { format, container, gauge: None })
        }
        other => Err(LoadFailure::common(
            "This track's source is not available on this node.",
            format!("Caldera cannot play tracks from the `{other}` source"),
        )),
    }
}

/// The gateway's source switches, checked again here: a track encoded elsewhere (or a gateway
/// bug) must not bring back a source the configuration turned off.
fn allowed(source: &str, settings: &crate::Settings) -> Result<(), LoadFailure> {
    if settings.sources.iter().any(|s| s == source) {
        return Ok(());
    }
    Err(LoadFailure::common("This track's source is disabled on this node.", format!("lavalink.server.sources turns `{source}` off")))
}

/// A network source opened for playback: an HLS playlist (known by its content) or media, every
/// further request made like `like`.
fn open_reader(mut reader: crate::net::HttpReader, net: &Net, like: &Request) -> Result<Media, LoadFailure> {
    let head = read_head(&mut reader, HEAD_LEN)?;
    if container::detect(&head) == Some(Container::M3u) {
        let final_url = reader.meta().final_url.clone();
        let text = read_playlist(reader, head)?;
        if !hls::is_hls(&text) {
            return Err(LoadFailure::common("Unknown file format.", "a playlist is not a track".into()));
        }
        let format = hls::HlsFormat::open(&final_url, &text, net, None, like)?;
        let gauge = Some(format.gauge());
        return Ok(Media { format: Box::new(format), container: Container::Hls, gauge });
    }
    let gauge = Some(reader.gauge());
    let container = container::detect(&head).filter(|c| !c.is_playlist()).ok_or_else(|| unknown_format(&head))?;
    let (format, _) = probe::open_format(Box::new(Rewind::new(reader, head)), container)?;
    Ok(Media { format, container, gauge })
}

/// Has the gateway's resolver find a platform track's media again (addresses expire and are
/// bound to the address that resolved them), waits out its pre-roll, and gives the request that
/// fetches it.
fn resolve(info: &TrackInfo, net: &Net) -> Result<Request, LoadFailure> {
    let (stream, local) = net.runtime().block_on(net.resolve(info))?;
    if let Some(at) = stream.available_at_ms {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let wait = Duration::from_millis(at.saturating_sub(now).max(0) as u64);
        if wait > MAX_PREROLL {
            return Err(LoadFailure::common("The track is not available yet.", format!("its media is available in {} s", wait.as_secs())));
        }
        std::thread::sleep(wait);
    }
    Ok(Request {
        headers: stream.headers,
        local,
        chunk: (!stream.hls && !stream.is_live).then_some(PLATFORM_CHUNK),
        ..Request::new(&stream.url, Via::Platform)
    })
}

/// The resolved path of a local file the settings allow; `None` if it is not a file. Whether a
/// path is allowed is decided on the path as given (`.` and `..` taken lexically) before the file
/// system is asked, so the answer for a path outside the allowed directories says nothing about
/// what is there; a symlink inside them that leads out is refused too.
fn allowed_local_path(path: &str, settings: &crate::Settings) -> Result<Option<std::path::PathBuf>, LoadFailure> {
    use std::path::Component;
    let given = Path::new(path);
    if !given.is_absolute() {
        return Ok(None);
    }
    let outside = || LoadFailure::common("This file is outside the directories the local source may read.", "caldera.localDirectories does not include it".into());
    let allowed = |p: &Path| settings.local_dirs.iter().any(|dir| p.starts_with(dir.as_str()));
    let mut lexical = std::path::PathBuf::from("/");
    for part in given.components() {
        match part {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::Normal(name) => lexical.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    if !allowed(&lexical) {
        return Err(outside());
    }
    let Ok(canonical) = given.canonicalize() else { return Ok(None) };
    if !canonical.is_file() {
        return Ok(None);
    }
    if !allowed(&canonical) {
        return Err(outside());
    }
    Ok(Some(canonical))
}

fn track(info: TrackInfo, container: Container) -> Result<Loaded, LoadFailure> {
    TrackData::with_probe_info(info, container.probe_name())
        .map(Loaded::Track)
        .map_err(|e| LoadFailure::suspicious("The track's metadata cannot be encoded.", e.to_string()))
}

/// An HLS stream: VOD has a length and seeks, live is a stream. Opening it fetches its first
/// segment, so a stream that cannot play fails here.
fn load_hls(url: &str, final_url: &str, text: &str, net: &Net, deadline: Instant) -> Result<Loaded, LoadFailure> {
    let format = hls::HlsFormat::open(final_url, text, net, Some(deadline), &Request::new(final_url, Via::HttpSource))?;
    let codec = format.tracks().first().map_or(symphonia::core::codecs::CODEC_TYPE_NULL, |t| t.codec_params.codec);
    if codec != symphonia::core::codecs::CODEC_TYPE_OPUS && symphonia::default::get_codecs().get_codec(codec).is_none() {
        return Err(LoadFailure::common("The track's audio format is not supported.", format!("HLS audio with codec {codec}")));
    }
    let info = TrackInfo {
        title: UNKNOWN_TITLE.into(),
        author: UNKNOWN_ARTIST.into(),
        length: format.length_ms().unwrap_or(STREAM_LENGTH),
        identifier: url.into(),
        is_stream: format.is_live(),
        uri: Some(url.into()),
        artwork_url: None,
        isrc: None,
        source_name: "http".into(),
        position: 0,
    };
    track(info, Container::Hls)
}

/// A radio playlist (M3U or PLS, known by its content) loads as Lavaplayer loads it: as one
/// track, its first entry that plays, titled from the list when the stream has no title.
fn load_radio(
    given_url: &str,
    final_url: &str,
    container: Container,
    text: &str,
    settings: &crate::Settings,
    net: &Net,
    deadline: Instant,
) -> Result<Loaded, LoadFailure> {
    let list = match container {
        Container::Pls => playlist::parse_pls(text),
        _ => playlist::parse_m3u(text),
    };
    let base = url::Url::parse(final_url).map_err(|e| LoadFailure::common("Not a valid URL.", e.to_string()))?;
    // Entries resolve against the playlist's URL; only http(s) entries are followed — a remote
    // playlist must never make the node read local files.
    let entries = list
        .entries
        .iter()
        .filter_map(|e| base.join(&e.location).ok().map(|u| (u, e.title.clone())))
        .filter(|(u, _)| matches!(u.scheme(), "http" | "https"))
        .take((settings.max_playlist_entries as usize).min(MAX_RADIO_ATTEMPTS));
    let mut first_failure = None;
    let mut tried = false;
    for (entry, listed_title) in entries {
        tried = true;
        match load_http(entry.as_str(), settings, net, deadline, false) {
            Ok(Loaded::Track(mut t)) => {
                if let Some(title) = listed_title.filter(|_| t.info.title == UNKNOWN_TITLE) {
                    t.info.title = title;
                }
                return Ok(Loaded::Track(t));
            }
            Ok(Loaded::Nothing) => {}
            Err(f) => {
                first_failure.get_or_insert(f);
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    if !tried {
        return Err(LoadFailure::common("The playlist file contains no links.", given_url.into()));
    }
    let cause = first_failure.map(|f| format!("{} ({})", f.message, f.cause)).unwrap_or_else(|| "no entry was found".into());
    Err(LoadFailure::common("None of the playlist's entries could be loaded.", cause))
}

/// The rest of a playlist after its first bytes, bounded.
fn read_playlist(reader: impl Read, mut text: Vec<u8>) -> Result<String, LoadFailure> {
    reader.take(hls::MAX_PLAYLIST_BYTES.saturating_sub(text.len()) as u64 + 1).read_to_end(&mut text).map_err(read_failed)?;
    if text.len() > hls::MAX_PLAYLIST_BYTES {
        return Err(LoadFailure::common("The playlist is too large.", format!("more than {} bytes", hls::MAX_PLAYLIST_BYTES)));
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

fn read_head(r: &mut impl Read, max: usize) -> Result<Vec<u8>, LoadFailure> {
    let mut head = Vec::with_capacity(max.min(64 * 1024));
    r.take(max as u64).read_to_end(&mut head).map_err(read_failed)?;
    Ok(head)
}

fn read_failed(e: std::io::Error) -> LoadFailure {
    LoadFailure::suspicious("Could not read the file for detecting file type.", e.to_string())
}

fn unknown_format(head: &[u8]) -> LoadFailure {
    let cause = if head.is_empty() { "the response is empty".to_string() } else { format!("{} bytes match no known container", head.len()) };
    LoadFailure::common("Unknown file format.", cause)
}
