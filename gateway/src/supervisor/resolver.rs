//! The resolver: a long-lived Python program of ours embedding yt-dlp (`resolver/caldera_resolver.py`,
//! built into this binary and written to the runtime directory), supervised like the workers: it
//! must say hello, answer a ping every second, stay under its memory limit and write nothing but
//! protocol lines; otherwise it is killed and started again with backoff. It runs confined
//! through `caldera-worker --exec-sandboxed` (landlock: reads the system and its environment,
//! writes only its cache, executes only Python and the JavaScript runtime).
//!
//! Everything it says is hostile input: lines are bounded, answers are matched to requests we
//! made, tracks and stream addresses are checked before anything else sees them. Every request
//! has a deadline enforced here; requests stuck past theirs count against the process, and once
//! every slot of its pool is stuck it is restarted.

use super::spawn::{self, SpawnSpec, Spawner};
use super::Backoff;
use crate::config::{ResolverSettings, SandboxMode, SourcesConfig};
use crate::routeplanner::{Marked, RoutePlanner};
use caldera_protocol::track::{MAX_UTF_LEN, STREAM_LENGTH};
use caldera_protocol::{ExceptionSeverity, LoadResult, ResolveRequest, ResolvedStream, TrackData, TrackException, TrackInfo};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// The resolver protocol this gateway speaks (the Python program's `PROTOCOL`).
pub const PROTOCOL: u64 = 1;
const SCRIPT: &str = include_str!("../../../resolver/caldera_resolver.py");
/// Importing yt-dlp and checking the JavaScript runtime.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
const PING_INTERVAL: Duration = Duration::from_secs(1);
/// Pings are answered by the program's reading thread; one that is silent this long is hung.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest protocol line (a playlist of hundreds of tracks fits easily).
const MAX_LINE: usize = 16 << 20;
/// Longest log line kept; most log lines per second passed on.
const MAX_LOG_LINE: usize = 2000;
const MAX_LOG_LINES_PER_SECOND: u32 = 50;
/// Requests waiting for or in the resolver at once; more are refused at once.
const MAX_QUEUED: usize = 256;
/// A process that lived this long resets the restart backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Source names of the tracks the resolver gives (lavaplayer's names; `yt-dlp` for the rest).
pub const PLATFORM_SOURCES: &[&str] = &["youtube", "soundcloud", "bandcamp", "twitch", "vimeo", "yt-dlp"];
const MAX_HEADERS: usize = 64;

/// Which extractors a lookup may use: a family names them by prefix (so yt-dlp does not match a
/// URL against all of its ~1,800 patterns); `Generic` is yt-dlp's web-page extractor; `Any` lets
/// yt-dlp pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Youtube,
    Soundcloud,
    Bandcamp,
    Twitch,
    Vimeo,
    Generic,
    Any,
}

impl Family {
    fn wire(self) -> Value {
        match self {
            Family::Youtube => "youtube".into(),
            Family::Soundcloud => "soundcloud".into(),
            Family::Bandcamp => "bandcamp".into(),
            Family::Twitch => "twitch".into(),
            Family::Vimeo => "vimeo".into(),
            Family::Generic => "generic".into(),
            Family::Any => Value::Null,
        }
    }

    /// The family of a track's source name; `yt-dlp` tracks may come from any extractor.
    pub fn of_source(name: &str) -> Option<Self> {
        Some(match name {
            "youtube" => Family::Youtube,
            "soundcloud" => Family::Soundcloud,
            "bandcamp" => Family::Bandcamp,
            "twitch" => Family::Twitch,
            "vimeo" => Family::Vimeo,
            "yt-dlp" => Family::Any,
            _ => return None,
        })
    }

    /// The family of a platform URL, by its host.
    pub fn of_url(url: &url::Url) -> Option<Self> {
        let host = url.host_str()?.to_ascii_lowercase();
        // The domain or any name under it (www., m., music., an artist's bandcamp.com name).
        let is = |domain: &str| host == domain || host.ends_with(&format!(".{domain}"));
        Some(if is("youtube.com") || is("youtu.be") || is("youtube-nocookie.com") {
            Family::Youtube
        } else if is("soundcloud.com") || host == "snd.sc" {
            Family::Soundcloud
        } else if is("bandcamp.com") {
            Family::Bandcamp
        } else if is("twitch.tv") {
            Family::Twitch
        } else if is("vimeo.com") {
            Family::Vimeo
        } else {
            return None;
        })
    }

    /// Whether the configuration lets this family be used.
    pub fn enabled(self, sources: &SourcesConfig, generic_pages: bool) -> bool {
        match self {
            Family::Youtube => sources.youtube,
            Family::Soundcloud => sources.soundcloud,
            Family::Bandcamp => sources.bandcamp,
            Family::Twitch => sources.twitch,
            Family::Vimeo => sources.vimeo,
            // Arbitrary web pages: what the http source would fetch.
            Family::Generic => sources.http && generic_pages,
            Family::Any => sources.http,
        }
    }
}

/// What `/v4/caldera/resolver` shows.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolverStatus {
    /// `starting`, `ready`, `restarting` or `stopped`.
    pub state: &'static str,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub yt_dlp: Option<String>,
    pub python: Option<String>,
    pub js_runtime: Option<String>,
    pub last_exit: Option<String>,
    pub rss_bytes: Option<u64>,
    pub in_flight: usize,
    pub requests: u64,
    pub timeouts: u64,
}

/// How to start it.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    pub settings: ResolverSettings,
    /// The interpreter (checked to exist).
    pub python: PathBuf,
    /// `caldera-worker`, which confines the program and then runs it.
    pub launcher: PathBuf,
    pub sandbox: SandboxMode,
    /// Where the program and its cache live (inside the gateway's private runtime directory).
    pub dir: PathBuf,
    /// Networks its requests may not connect to (`caldera.outbound.denyNetworks`).
    pub deny: Vec<(IpAddr, u8)>,
}

/// The first line of a resolver.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Hello {
    protocol: u64,
    yt_dlp: Option<String>,
    python: Option<String>,
    js_runtime: Option<String>,
}

/// Any later line.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum Answer {
    Pong { seq: u64 },
    Loaded { id: u64, result: Value },
    Resolved { id: u64, result: Value },
}

pub struct Resolver {
    config: ResolverConfig,
    status: Mutex<ResolverStatus>,
    /// Lines for the running process, when there is one.
    conn: Mutex<Option<mpsc::Sender<String>>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Value>>>,
    /// Requests whose deadline passed unanswered, still occupying the program's pool.
    overdue: Mutex<HashSet<u64>>,
    next: AtomicU64,
    queued: Arc<Semaphore>,
    ready: watch::Sender<bool>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").field("python", &self.config.python).finish_non_exhaustive()
    }
}

fn fault(message: &str, cause: impl Into<String>) -> TrackException {
    TrackException { message: message.into(), severity: ExceptionSeverity::Fault, cause: cause.into() }
}

impl Resolver {
    pub fn new(config: ResolverConfig) -> std::io::Result<Arc<Self>> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(config.dir.join("cache"))?;
        let script = config.dir.join("caldera_resolver.py");
        std::fs::write(&script, SCRIPT)?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o400))?;
        Ok(Arc::new(Self {
            config,
            status: Mutex::new(ResolverStatus { state: "starting", ..Default::default() }),
            conn: Mutex::new(None),
            pending: Mutex::default(),
            overdue: Mutex::default(),
            next: AtomicU64::new(1),
            queued: Arc::new(Semaphore::new(MAX_QUEUED)),
            ready: watch::Sender::new(false),
        }))
    }

    pub fn status(&self) -> ResolverStatus {
        let mut s = self.lock_status().clone();
        s.in_flight = self.pending.lock().unwrap_or_else(|e| e.into_inner()).len();
        s
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the resolver has said hello, up to `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.ready.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r)).await.is_ok_and(|r| r.is_ok())
    }

    pub fn settings(&self) -> &ResolverSettings {
        &self.config.settings
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, ResolverStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks `query` up (a URL, or a search like `ytsearch20:...`): Lavalink's load result.
    pub async fn load(&self, query: &str, family: Family, address: Option<IpAddr>) -> LoadResult {
        let request = json!({
            "type": "load",
            "query": query,
            "family": family.wire(),
            "sourceAddress": address.map(|a| a.to_string()),
            "limit": self.config.settings.playlist_limit,
        });
        match self.call(request).await {
            Ok(result) => load_result(&result).unwrap_or_else(LoadResult::Error),
            Err(e) => LoadResult::Error(e),
        }
    }

    /// Finds the media of a platform track, from `address` (the one the stream will use).
    pub async fn resolve(&self, track: &ResolveRequest, address: Option<IpAddr>) -> Result<ResolvedStream, TrackException> {
        let family = Family::of_source(&track.source_name)
            .ok_or_else(|| TrackException { message: "This track's source is not a platform source.".into(), severity: ExceptionSeverity::Common, cause: track.source_name.clone() })?;
        let query = match (family, &track.uri) {
            // Lavalink's YouTube tracks are known by their video id.
            (Family::Youtube, _) if is_youtube_id(&track.identifier) => format!("https://www.youtube.com/watch?v={}", track.identifier),
            (_, Some(uri)) => uri.clone(),
            _ => track.identifier.clone(),
        };
        let url = url::Url::parse(&query)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| TrackException { message: "The track has no address to look up.".into(), severity: ExceptionSeverity::Common, cause: truncate(&query, 200) })?;
        let request = json!({
            "type": "resolve",
            "query": url.as_str(),
            "family": family.wire(),
            "sourceAddress": address.map(|a| a.to_string()),
        });
        let result = self.call(request).await?;
        if let Some(e) = error_of(&result) {
            return Err(e);
        }
        stream_of(&result).ok_or_else(|| fault("The resolver gave an unusable answer.", "the stream is missing or malformed"))
    }

    /// Sends one request and waits for its answer, within the lookup timeout.
    async fn call(&self, mut request: Value) -> Result<Value, TrackException> {
        let Ok(_queued) = self.queued.clone().try_acquire_owned() else {
            return Err(fault("The resolver is overloaded.", format!("more than {MAX_QUEUED} lookups are waiting")));
        };
        let Some(tx) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            let why = self.lock_status().last_exit.clone().unwrap_or_else(|| "it is starting".into());
            return Err(fault("The resolver is not running.", why));
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let timeout = self.config.settings.timeout;
        request["id"] = id.into();
        request["timeoutMs"] = (timeout.as_millis() as u64).into();
        let (reply, answer) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, reply);
        self.lock_status().requests += 1;
        if tx.try_send(request.to_string()).is_err() {
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return Err(fault("The resolver is overloaded.", "its input queue is full"));
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => {
                let why = self.lock_status().last_exit.clone().unwrap_or_default();
                Err(fault("The resolver stopped while looking up the track.", why))
            }
            Err(_) => {
                self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                self.overdue.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
                self.lock_status().timeouts += 1;
                Err(TrackException {
                    message: "Loading the track timed out.".into(),
                    severity: ExceptionSeverity::Common,
                    cause: format!("yt-dlp did not answer within {} ms", timeout.as_millis()),
                })
            }
        }
    }

    /// Keeps a resolver process running until `cancel`.
    pub async fn run(self: Arc<Self>, spawner: Spawner, cancel: CancellationToken) {
        let mut backoff = Backoff::new();
        loop {
            let started = Instant::now();
            let why = self.run_once(&spawner, &cancel).await;
            *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
            self.ready.send_replace(false);
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
            self.overdue.lock().unwrap_or_else(|e| e.into_inner()).clear();
            {
                let mut s = self.lock_status();
                s.pid = None;
                s.rss_bytes = None;
                s.last_exit = Some(why.clone());
                s.state = if cancel.is_cancelled() { "stopped" } else { "restarting" };
            }
            if cancel.is_cancelled() {
                info!("resolver stopped");
                return;
            }
            if started.elapsed() >= HEALTHY_AFTER {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            self.lock_status().restarts += 1;
            warn!(%why, delay_ms = delay.as_millis() as u64, "resolver ended; restarting it");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cancel.cancelled() => {
                    self.lock_status().state = "stopped";
                    return;
                }
            }
        }
    }

    fn spawn_spec(&self) -> SpawnSpec {
        let python = &self.config.python;
        let dir = &self.config.dir;
        let cache = dir.join("cache");
        // The virtual environment (python is `<venv>/bin/python`) and the installation it points to.
        let venv = python.parent().and_then(Path::parent).map(Path::to_path_buf);
        let real = python.canonicalize().unwrap_or_else(|_| python.clone());
        let prefix = real.parent().and_then(Path::parent).map(Path::to_path_buf);
        let read: Vec<PathBuf> = venv.iter().chain(prefix.iter()).cloned().chain([dir.join("caldera_resolver.py")]).collect();
        let bin = python.parent().map(Path::to_path_buf).unwrap_or_default();
        let exec = [real.clone(), bin.join("deno")];
        let lines = |paths: &[PathBuf]| -> OsString { paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join("\n").into() };
        let mut env: Vec<(String, OsString)> = vec![
            ("CALDERA_SANDBOX".into(), self.config.sandbox.as_str().into()),
            ("CALDERA_SANDBOX_READ".into(), lines(&read)),
            ("CALDERA_SANDBOX_WRITE".into(), lines(std::slice::from_ref(&cache))),
            ("CALDERA_SANDBOX_EXEC".into(), lines(&exec)),
            ("CALDERA_RESOLVER_CACHE".into(), cache.clone().into()),
            ("CALDERA_RESOLVER_CONCURRENCY".into(), self.config.settings.concurrency.to_string().into()),
            ("CALDERA_RESOLVER_DENY".into(), self.config.deny.iter().map(|(ip, len)| format!("{ip}/{len}")).collect::<Vec<_>>().join("\n").into()),
            ("PATH".into(), bin.into()),
            ("HOME".into(), cache.clone().into()),
            ("XDG_CACHE_HOME".into(), cache.clone().into()),
            ("DENO_DIR".into(), cache.join("deno").into()),
            ("DENO_NO_UPDATE_CHECK".into(), "1".into()),
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
            ("PYTHONUNBUFFERED".into(), "1".into()),
            ("PYTHONNOUSERSITE".into(), "1".into()),
        ];
        for key in ["SSL_CERT_FILE", "SSL_CERT_DIR"] {
            if let Some(v) = std::env::var_os(key) {
                env.push((key.into(), v));
            }
        }
        SpawnSpec {
            binary: self.config.launcher.clone(),
            args: vec!["--exec-sandboxed".into(), python.clone().into_os_string(), dir.join("caldera_resolver.py").into_os_string()],
            env,
            piped: true,
            evidence: false,
            die_with_gateway: true,
        }
    }

    /// Starts one process and serves it until it ends or must be killed; returns why it ended.
    async fn run_once(&self, spawner: &Spawner, cancel: &CancellationToken) -> String {
        self.lock_status().state = "starting";
        let mut child = match spawner.spawn(self.spawn_spec()).await {
            Ok(c) => c,
            Err(e) => return format!("cannot start {}: {e}", self.config.python.display()),
        };
        let pid = child.pid;
        self.lock_status().pid = Some(pid);
        let Some((stdin, stdout, stderr)) = child.pipes.take() else {
            spawn::kill(pid);
            return "started without pipes".into();
        };
        let (Ok(stdin), Ok(stdout), Ok(stderr)) = (
            tokio::process::ChildStdin::from_std(stdin),
            tokio::process::ChildStdout::from_std(stdout),
            tokio::process::ChildStderr::from_std(stderr),
        ) else {
            spawn::kill(pid);
            return "cannot use its pipes".into();
        };
        let logs = tokio::spawn(relay_logs(BufReader::new(stderr), pid));
        let (lines_tx, mut lines) = mpsc::channel::<std::io::Result<Vec<u8>>>(64);
        let reader = tokio::spawn(async move {
            let mut r = BufReader::new(stdout);
            loop {
                let line = read_line(&mut r, MAX_LINE).await.transpose();
                let end = !matches!(line, Some(Ok(_)));
                if let Some(line) = line {
                    if lines_tx.send(line).await.is_err() {
                        break;
                    }
                }
                if end {
                    break;
                }
            }
        });
        let (out_tx, mut out_rx) = mpsc::channel::<String>(MAX_QUEUED);
        let writer = tokio::spawn(async move {
            let mut stdin = stdin;
            while let Some(mut line) = out_rx.recv().await {
                line.push('\n');
                if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
                    break;
                }
            }
        });
        let _tasks = Aborting(vec![logs, reader, writer]);
        let kill = |why: String| {
            spawn::kill(pid);
            why
        };

        // The hello.
        let hello = tokio::select! {
            line = tokio::time::timeout(HELLO_TIMEOUT, lines.recv()) => line,
            _ = cancel.cancelled() => return kill("the gateway is stopping".into()),
        };
        let hello: Hello = match hello {
            Ok(Some(Ok(line))) => match serde_json::from_slice::<Value>(&line) {
                Ok(v) if v.get("type").and_then(Value::as_str) == Some("hello") => match serde_json::from_value(v) {
                    Ok(h) => h,
                    Err(e) => return kill(format!("its hello is malformed: {e}")),
                },
                _ => return kill(format!("it said `{}` instead of hello", truncate(&String::from_utf8_lossy(&line), 200))),
            },
            Ok(Some(Err(e))) => return kill(format!("its output is unreadable: {e}")),
            Ok(None) => {
                let status = (&mut child.exited).await.map(|s| spawn::describe(&s)).unwrap_or_else(|_| "unknown exit".into());
                return format!("it exited before its hello ({status})");
            }
            Err(_) => return kill(format!("no hello within {} s", HELLO_TIMEOUT.as_secs())),
        };
        if hello.protocol != PROTOCOL {
            return kill(format!("it speaks resolver protocol {}, this gateway {PROTOCOL}", hello.protocol));
        }
        let clip = |s: Option<String>| s.map(|s| truncate(&s, 200));
        {
            let mut s = self.lock_status();
            s.state = "ready";
            s.yt_dlp = clip(hello.yt_dlp);
            s.python = clip(hello.python);
            s.js_runtime = clip(hello.js_runtime);
            info!(pid, yt_dlp = ?s.yt_dlp, python = ?s.python, js_runtime = ?s.js_runtime, "resolver ready");
            if s.js_runtime.is_none() {
                warn!("the resolver has no JavaScript runtime (deno): YouTube gives fewer formats without one");
            }
        }
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(out_tx.clone());
        self.ready.send_replace(true);

        let mut tick = tokio::time::interval(PING_INTERVAL);
        let (mut sent, mut answered, mut answered_at) = (0u64, 0u64, Instant::now());
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    let _ = out_tx.try_send(json!({"type": "shutdown"}).to_string());
                    if tokio::time::timeout(SHUTDOWN_GRACE, &mut child.exited).await.is_err() {
                        spawn::kill(pid);
                    }
                    return "the gateway is stopping".into();
                }
                status = &mut child.exited => {
                    return status.map(|s| spawn::describe(&s)).unwrap_or_else(|_| "unknown exit".into());
                }
                line = lines.recv() => {
                    let line = match line {
                        Some(Ok(line)) => line,
                        Some(Err(e)) => return kill(format!("its output is unreadable: {e}")),
                        // Its stdout closed: it is exiting; wait for the status.
                        None => {
                            let status = tokio::time::timeout(SHUTDOWN_GRACE, &mut child.exited).await;
                            return match status {
                                Ok(Ok(s)) => spawn::describe(&s),
                                _ => kill("it closed its output".into()),
                            };
                        }
                    };
                    match serde_json::from_slice::<Answer>(&line) {
                        Ok(Answer::Pong { seq }) if seq <= sent && seq > answered => {
                            answered = seq;
                            answered_at = Instant::now();
                        }
                        Ok(Answer::Pong { .. }) => return kill("it answered a ping that was never sent".into()),
                        Ok(Answer::Loaded { id, result } | Answer::Resolved { id, result }) => self.deliver(id, result),
                        Err(e) => {
                            error!(pid, error = %e, "the resolver wrote something that is not a protocol line; killing it");
                            return kill(format!("it wrote garbage: {}", truncate(&String::from_utf8_lossy(&line), 200)));
                        }
                    }
                }
                _ = tick.tick() => {
                    if answered < sent && answered_at.elapsed() > PING_TIMEOUT {
                        return kill(format!("it did not answer pings for {} s", PING_TIMEOUT.as_secs()));
                    }
                    let rss = tree_rss(pid);
                    self.lock_status().rss_bytes = rss;
                    if let Some(rss) = rss.filter(|r| *r > self.config.settings.memory_limit) {
                        return kill(format!("it used {} MiB, over its limit of {} MiB", rss >> 20, self.config.settings.memory_limit >> 20));
                    }
                    let stuck = self.overdue.lock().unwrap_or_else(|e| e.into_inner()).len();
                    if stuck >= self.config.settings.concurrency {
                        return kill(format!("{stuck} lookups are stuck past their deadline"));
                    }
                    sent += 1;
                    if answered + 1 == sent {
                        answered_at = Instant::now();
                    }
                    if out_tx.try_send(json!({"type": "ping", "seq": sent}).to_string()).is_err() {
                        return kill("its input is not being read".into());
                    }
                }
            }
        }
    }

    /// An answer, for the request it names if we made it and still wait for it.
    fn deliver(&self, id: u64, result: Value) {
        if self.overdue.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
            debug!(id, "the resolver answered after the deadline; ignored");
            return;
        }
        match self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
            Some(reply) => {
                let _ = reply.send(result);
            }
            None => warn!(id, "the resolver answered a request it was not given; ignored"),
        }
    }
}

struct Aborting(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Aborting {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Passes the program's stderr on to the log, bounded in line length and rate.
async fn relay_logs(mut r: BufReader<tokio::process::ChildStderr>, pid: u32) {
    let (mut window, mut count) = (Instant::now(), 0u32);
    while let Ok(Some(line)) = read_line(&mut r, 64 * 1024).await {
        if window.elapsed() >= Duration::from_secs(1) {
            (window, count) = (Instant::now(), 0);
        }
        count += 1;
        if count > MAX_LOG_LINES_PER_SECOND {
            continue;
        }
        let text = truncate(&String::from_utf8_lossy(&line), MAX_LOG_LINE);
        match text.split_once(' ') {
            Some(("ERROR", rest)) => warn!(target: "caldera_resolver", pid, "{rest}"),
            Some(("WARN", rest)) => debug!(target: "caldera_resolver", pid, "{rest}"),
            _ => info!(target: "caldera_resolver", pid, "{text}"),
        }
    }
}

/// One line without its newline; `None` at the end. A line longer than `max` is an error.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        let (take, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        line.extend_from_slice(&available[..take]);
        r.consume(take);
        if line.len() > max + 1 {
            return Err(std::io::Error::other(format!("a line is longer than {max} bytes")));
        }
        if done {
            line.pop();
            return Ok(Some(line));
        }
    }
}

/// Resident memory of a process and its children (the JavaScript runtime), from /proc.
fn tree_rss(pid: u32) -> Option<u64> {
    let rss = |pid: &str| -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse::<u64>().ok()?;
        Some(kb * 1024)
    };
    let own = rss(&pid.to_string())?;
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    Some(own + children.split_whitespace().filter_map(rss).sum::<u64>())
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A lookup the platform rate limited (yt-dlp reports "HTTP Error 429" in its message) marks
/// the address it came from failing in the route planner, as the http source's 429s do.
pub fn mark_if_rate_limited(planner: &RoutePlanner, address: IpAddr, e: &TrackException, search: bool) {
    if e.cause.contains("HTTP Error 429") && planner.mark_failing(address, search) == Marked::New {
        warn!(%address, search, "route planner: the platform rate limited the address; marked failing");
    }
}

fn is_youtube_id(id: &str) -> bool {
    id.len() == 11 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A track as the program sends it (Lavalink's TrackInfo names).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireTrack {
    identifier: String,
    author: String,
    length: u64,
    is_stream: bool,
    title: String,
    uri: Option<String>,
    artwork_url: Option<String>,
    isrc: Option<String>,
    source_name: String,
}

/// Checks one track of the program's answer.
fn track_of(v: &Value) -> Option<TrackData> {
    let t: WireTrack = serde_json::from_value(v.clone()).ok()?;
    let fits = |s: &str| s.len() <= MAX_UTF_LEN / 3;
    let optional_fits = |s: &Option<String>| s.as_deref().is_none_or(fits);
    if !PLATFORM_SOURCES.contains(&t.source_name.as_str())
        || t.length > STREAM_LENGTH
        || ![&t.identifier, &t.author, &t.title].iter().all(|s| fits(s))
        || ![&t.uri, &t.artwork_url, &t.isrc].iter().all(|s| optional_fits(s))
    {
        return None;
    }
    let info = TrackInfo {
        title: t.title,
        author: t.author,
        length: t.length,
        identifier: t.identifier,
        is_stream: t.is_stream,
        uri: t.uri,
        artwork_url: t.artwork_url,
        isrc: t.isrc,
        source_name: t.source_name,
        position: 0,
    };
    // Lavaplayer's platform sources encode no source-specific bytes.
    Some(TrackData { info, source_data: Vec::new() })
}

fn error_of(result: &Value) -> Option<TrackException> {
    let e = result.get("error")?;
    let text = |key: &str| e.get(key).and_then(Value::as_str).map(|s| truncate(s, 2000));
    let severity = match e.get("severity").and_then(Value::as_str) {
        Some("common") => ExceptionSeverity::Common,
        Some("suspicious") => ExceptionSeverity::Suspicious,
        _ => ExceptionSeverity::Fault,
    };
    Some(TrackException {
        message: text("message").unwrap_or_else(|| "Something went wrong when looking up the track.".into()),
        severity,
        cause: text("cause").unwrap_or_default(),
    })
}

/// Lavalink's load result from the program's answer; a malformed answer is a fault.
fn load_result(result: &Value) -> Result<LoadResult, TrackException> {
    let malformed = |what: &str| fault("The resolver gave an unusable answer.", what.to_string());
    let tracks = |key: &str| -> Result<Vec<TrackData>, TrackException> {
        let list = result.get(key).and_then(Value::as_array).ok_or_else(|| malformed("the track list is missing"))?;
        list.iter().map(|t| track_of(t).ok_or_else(|| malformed("a track is malformed"))).collect()
    };
    match result.get("loadType").and_then(Value::as_str) {
        Some("track") => result.get("track").and_then(track_of).map(LoadResult::Track).ok_or_else(|| malformed("the track is malformed")),
        Some("playlist") => {
            let tracks = tracks("tracks")?;
            let selected = result.get("selectedTrack").and_then(Value::as_i64).filter(|i| *i >= -1 && *i < tracks.len() as i64).unwrap_or(-1);
            let name = result.get("name").and_then(Value::as_str).map(|s| truncate(s, 2000)).unwrap_or_else(|| "Unknown playlist".into());
            Ok(LoadResult::Playlist { name, selected_track: selected as i32, tracks })
        }
        Some("search") => Ok(LoadResult::Search(tracks("tracks")?)),
        Some("empty") => Ok(LoadResult::Empty),
        Some("error") => Err(error_of(result).unwrap_or_else(|| malformed("the error is malformed"))),
        _ => Err(malformed("unknown loadType")),
    }
}

/// The media of a resolved track, checked: an http(s) URL, a bounded set of headers.
fn stream_of(result: &Value) -> Option<ResolvedStream> {
    let s = result.get("stream")?;
    let url = url::Url::parse(s.get("url")?.as_str()?).ok().filter(|u| matches!(u.scheme(), "http" | "https"))?;
    if url.as_str().len() > 16 * 1024 {
        return None;
    }
    let headers: Vec<(String, String)> = s
        .get("headers")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|h| Some((h.get(0)?.as_str()?.to_string(), h.get(1)?.as_str()?.to_string())))
                .filter(|(k, v)| k.len() <= 256 && v.len() <= 8192 && k.bytes().all(|b| b.is_ascii_graphic() && b != b':') && v.bytes().all(|b| b >= 0x20 && b != 0x7f))
                .take(MAX_HEADERS)
                .collect()
        })
        .unwrap_or_default();
    let available_at_ms = s.get("availableAt").and_then(Value::as_f64).filter(|t| t.is_finite() && *t > 0.0 && *t < 1e11).map(|t| (t * 1000.0) as i64);
    Some(ResolvedStream {
        url: url.to_string(),
        headers,
        hls: s.get("hls").and_then(Value::as_bool).unwrap_or(false),
        available_at_ms,
        is_live: s.get("isLive").and_then(Value::as_bool).unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_by_host() {
        let f = |u: &str| Family::of_url(&url::Url::parse(u).unwrap());
        assert_eq!(f("https://www.youtube.com/watch?v=dQw4w9WgXcQ"), Some(Family::Youtube));
        assert_eq!(f("https://music.youtube.com/playlist?list=x"), Some(Family::Youtube));
        assert_eq!(f("https://youtu.be/dQw4w9WgXcQ"), Some(Family::Youtube));
        assert_eq!(f("https://m.soundcloud.com/a/b"), Some(Family::Soundcloud));
        assert_eq!(f("https://artist.bandcamp.com/track/x"), Some(Family::Bandcamp));
        assert_eq!(f("https://www.twitch.tv/someone"), Some(Family::Twitch));
        assert_eq!(f("https://vimeo.com/123"), Some(Family::Vimeo));
        assert_eq!(f("https://notyoutube.com/x"), None);
        assert_eq!(f("http://127.0.0.1/a.mp3"), None);
    }

    #[test]
    fn hostile_answers_are_refused() {
        let ok = json!({"identifier": "dQw4w9WgXcQ", "author": "a", "length": 1000, "isStream": false, "title": "t",
                        "uri": "https://www.youtube.com/watch?v=dQw4w9WgXcQ", "artworkUrl": null, "isrc": null, "sourceName": "youtube"});
        assert!(track_of(&ok).is_some());
        let mut bad = ok.clone();
        bad["sourceName"] = "local".into();
        assert!(track_of(&bad).is_none(), "a resolver cannot mint tracks of other sources");
        let mut bad = ok.clone();
        bad["length"] = json!(-5);
        assert!(track_of(&bad).is_none());
        let mut bad = ok.clone();
        bad["title"] = "x".repeat(100_000).into();
        assert!(track_of(&bad).is_none());
        assert!(matches!(load_result(&json!({"loadType": "nonsense"})), Err(e) if e.severity == ExceptionSeverity::Fault));
        let playlist = json!({"loadType": "playlist", "name": "p", "selectedTrack": 99, "tracks": [ok]});
        assert!(matches!(load_result(&playlist), Ok(LoadResult::Playlist { selected_track: -1, .. })));
        assert!(stream_of(&json!({"stream": {"url": "file:///etc/passwd"}})).is_none());
        let s = stream_of(&json!({"stream": {"url": "https://a/b", "headers": [["X-A", "1"], ["Bad\nName", "v"], ["Y", "line\r\nbreak"]], "availableAt": 1.5}})).unwrap();
        assert_eq!(s.headers, vec![("X-A".to_string(), "1".to_string())]);
        assert_eq!(s.available_at_ms, Some(1500));
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let mut r = BufReader::new(&b"short\nthis one is far too long\nlast"[..]);
        assert_eq!(read_line(&mut r, 10).await.unwrap().unwrap(), b"short");
        assert!(read_line(&mut r, 10).await.is_err());
    }
}
