//! The worker's side of the IPC: connect, hello, then answer the gateway until told to stop.

use crate::net::Net;
use crate::routes::Routes;
use crate::{process, Settings, WorkerConfig};
use caldera_protocol::evidence::Culprit;
use caldera_protocol::channel::{FrameReader, FrameWriter};
use caldera_protocol::{
    build, ExceptionSeverity, FrameError, LoadRequest, LoadResult, PlayerCommand, ToGateway, ToWorker, TrackException, WorkerHello,
    WorkerSettings, MAX_FRAME_LEN,
};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const RESOURCE_INTERVAL: Duration = Duration::from_secs(2);
/// Free heap pages go back to the kernel every this many reports (10 s; a trim takes < 1 ms).
const TRIM_EVERY: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("cannot connect to the gateway at {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("IPC with the gateway failed: {0}")]
    Frame(#[from] FrameError),
    #[error("the gateway did not answer our hello")]
    NoHello,
    #[error("the gateway did not send its settings after the hello")]
    NoSettings,
    #[error("cannot start the decode threads: {0}")]
    Threads(std::io::Error),
    #[error("cannot outlive the gateway for a handover: {0}")]
    Handover(String),
    #[error("the gateway speaks protocol {theirs}/{theirs_build}, we speak {ours}/{ours_build}")]
    Mismatch { ours: u32, theirs: u32, ours_build: &'static str, theirs_build: String },
}

/// How long a worker handed over to a new gateway keeps trying to reach it.
const HANDOVER_WAIT: Duration = Duration::from_secs(30);

type Reader = FrameReader<ToWorker, Box<dyn tokio::io::AsyncRead + Send + Unpin>>;
type Writer = FrameWriter<ToGateway, Box<dyn tokio::io::AsyncWrite + Send + Unpin>>;

/// Connects to the gateway's socket and serves it.
pub async fn serve(config: WorkerConfig) -> Result<(), IpcError> {
    let stream = UnixStream::connect(&config.socket)
        .await
        .map_err(|source| IpcError::Connect { path: config.socket.display().to_string(), source })?;
    serve_connection(stream, &config).await
}

fn framed<S>(stream: S) -> (Reader, Writer)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(stream);
    (FrameReader::new(Box::new(read), MAX_FRAME_LEN), FrameWriter::new(Box::new(write), MAX_FRAME_LEN))
}

/// Says hello with `token`, checks the gateway's, and takes the settings that follow it.
async fn greet(reader: &mut Reader, writer: &mut Writer, config: &WorkerConfig, token: &str) -> Result<WorkerSettings, IpcError> {
    writer
        .send(&ToGateway::Hello(WorkerHello {
            protocol_version: build::PROTOCOL_VERSION,
            build_id: build::BUILD_ID.into(),
            worker_id: config.worker_id,
            pid: std::process::id(),
            token: token.into(),
        }))
        .await?;
    match tokio::time::timeout(HELLO_TIMEOUT, reader.recv()).await {
        // A gateway of another build adopts us only when the protocol matches (a handover
        // across an upgrade); the first one is of our build.
        Ok(Ok(Some(ToWorker::Hello(h)))) => {
            if h.protocol_version != build::PROTOCOL_VERSION || (h.build_id != build::BUILD_ID && token == config.token) {
                return Err(IpcError::Mismatch {
                    ours: build::PROTOCOL_VERSION,
                    theirs: h.protocol_version,
                    ours_build: build::BUILD_ID,
                    theirs_build: h.build_id,
                });
            }
        }
        Ok(Err(e)) => return Err(e.into()),
        _ => return Err(IpcError::NoHello),
    }
    // The settings come right after the hello, before any request.
    match tokio::time::timeout(HELLO_TIMEOUT, reader.recv()).await {
        Ok(Ok(Some(ToWorker::Configure(s)))) => Ok(s),
        Ok(Err(e)) => Err(e.into()),
        _ => Err(IpcError::NoSettings),
    }
}

/// Connects to the next gateway (it listens at the same socket path) and greets it, trying for
/// up to `wait`.
async fn reconnect(config: &WorkerConfig, token: &str, wait: Duration) -> Result<(Reader, Writer, WorkerSettings), IpcError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let attempt = async {
            let stream = UnixStream::connect(&config.socket)
                .await
                .map_err(|source| IpcError::Connect { path: config.socket.display().to_string(), source })?;
            let (mut reader, mut writer) = framed(stream);
            let settings = greet(&mut reader, &mut writer, config, token).await?;
            Ok::<_, IpcError>((reader, writer, settings))
        };
        match attempt.await {
            Ok(connected) => return Ok(connected),
            // Nobody listening yet, or a gateway that is not ready for us yet: try again.
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(e) => {
                debug!(error = %e, "no gateway to reconnect to yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Moves the serving loop to the next gateway's connection, once [`reconnect`] made it: its
/// reader, its settings, and its writer for the writer task. False when the writer task is gone.
async fn switch(
    connected: Result<(Reader, Writer, WorkerSettings), IpcError>,
    reader: &mut Reader,
    net: &Net,
    settings: &RwLock<Settings>,
    next_writer: &mpsc::Sender<Writer>,
) -> Result<bool, IpcError> {
    let (next_reader, writer, next_settings) = connected?;
    *reader = next_reader;
    net.configure(&next_settings);
    settings.write().unwrap_or_else(|e| e.into_inner()).ipc = next_settings;
    Ok(next_writer.send(writer).await.is_ok())
}

/// The whole serving loop over a connected stream: hello, settings, then requests until the
/// gateway says stop or goes away. Any stream will do, so tests can run a worker in-process over
/// a socket pair (the in-process tier) as well as the real binary. A handover moves the loop to
/// a new connection with the players left playing.
pub async fn serve_connection<S>(stream: S, config: &WorkerConfig) -> Result<(), IpcError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = framed(stream);
    let ipc_settings = greet(&mut reader, &mut writer, config, &config.token).await?;
    info!(worker_id = config.worker_id, "connected to gateway");
    let local_dirs: Arc<[String]> = config.local_dirs.clone().into();
    let settings = Arc::new(RwLock::new(Settings { ipc: ipc_settings, local_dirs }));

    // One writer task owns the socket's write half; everything else sends through `out`. After
    // a `HandedOver`, or when the gateway is gone, it waits for the next connection's (what is
    // sent meanwhile waits in `out`).
    let (out, mut out_rx) = mpsc::channel::<ToGateway>(1024);
    let (next_writer, mut next_writers) = mpsc::channel::<Writer>(1);
    let mut writer_task = tokio::spawn(
        async move {
            let mut writer = Some(writer);
            while let Some(msg) = out_rx.recv().await {
                if writer.is_none() {
                    writer = next_writers.recv().await;
                }
                let Some(w) = writer.as_mut() else { break };
                if w.send(&msg).await.is_err() {
                    writer = None;
                    continue;
                }
                if msg == ToGateway::HandedOver {
                    let _ = w.shutdown().await;
                    writer = None;
                }
            }
        }
        .instrument(info_span!("ipc_writer")),
    );
    // The other tasks of this connection; all of them end (or are aborted) with it.
    let mut tasks = tokio::task::JoinSet::new();
    let reporter = out.clone();
    tasks.spawn(
        async move {
            let mut tick = tokio::time::interval(RESOURCE_INTERVAL);
            for report in 0u64.. {
                tick.tick().await;
                if report % TRIM_EVERY == 0 {
                    process::release_free_memory();
                }
                if reporter.send(ToGateway::Resources(process::resources())).await.is_err() {
                    break;
                }
            }
        }
        .instrument(info_span!("resource_reporter")),
    );

    let routes = Arc::new(Routes::new(out.clone()));
    let net = Net::new(routes.clone(), &settings.read().unwrap_or_else(|e| e.into_inner()).ipc);
    let pool = crate::player::pool::DecodePool::start(crate::player::pool::DecodePool::default_threads()).map_err(IpcError::Threads)?;
    let services = crate::player::Services { net: net.clone(), pool, disposer: songbird::driver::DisposalThread::run() };
    let mut loads = tokio::task::JoinSet::new();
    // Players being destroyed: each gets a moment to leave its voice channel.
    let mut leaving = tokio::task::JoinSet::new();
    let mut players: HashMap<u64, crate::player::PlayerHandle> = HashMap::new();
    let current = |settings: &RwLock<Settings>| settings.read().unwrap_or_else(|e| e.into_inner()).clone();
    // What this worker says hello with to the next gateway: a handover gives it a new one.
    let mut token = config.token.clone();
    let result = loop {
        // Reap finished tasks so the sets stay small.
        while loads.try_join_next().is_some() || leaving.try_join_next().is_some() {}
        match reader.recv().await {
            Ok(Some(ToWorker::Configure(s))) => {
                debug!(?s, "settings received");
                net.configure(&s);
                settings.write().unwrap_or_else(|e| e.into_inner()).ipc = s;
            }
            Ok(Some(ToWorker::Player { player, command })) => {
                match command {
                    PlayerCommand::Create { guild_id, user_id } => {
                        // Re-creating an existing player replaces it (its old handle aborts its task).
                        players.insert(player, crate::player::spawn(player, guild_id, user_id, current(&settings), services.clone(), out.clone()));
                    }
                    PlayerCommand::Destroy => {
                        if let Some(mut p) = players.remove(&player) {
                            let _ = p.commands.send(PlayerCommand::Destroy);
                            // Let it leave the voice channel cleanly; dropping the handle aborts it if it hangs.
                            leaving.spawn(async move {
                                let _ = tokio::time::timeout(Duration::from_secs(2), &mut p.task).await;
                            });
                        }
                    }
                    command => match players.get(&player) {
                        Some(p) => {
                            let _ = p.commands.send(command);
                        }
                        None => debug!(player, "command for an unknown player ignored"),
                    },
                }
            }
            Ok(Some(ToWorker::Load { id, request })) => {
                let settings = current(&settings);
                let (out, net) = (out.clone(), net.clone());
                loads.spawn(
                    async move {
                        let result = load(request, settings, net).await;
                        let _ = out.send(ToGateway::Loaded { id, result }).await;
                    }
                    .instrument(info_span!("load", id)),
                );
            }
            Ok(Some(ToWorker::Ping { seq })) => {
                if out.send(ToGateway::Pong { seq }).await.is_err() {
                    break Ok(());
                }
            }
            Ok(Some(ToWorker::Shutdown { reason })) => {
                info!(%reason, "shutdown requested");
                break Ok(());
            }
            Ok(Some(ToWorker::RouteLease { id, address })) => routes.deliver(id, address),
            Ok(Some(ToWorker::Resolved { id, result })) => routes.deliver_resolved(id, result),
            Ok(Some(ToWorker::Handover { token: next })) => {
                info!("handing over to a new gateway; the players keep playing");
                if let Err(e) = process::outlive_parent() {
                    break Err(IpcError::Handover(e.to_string()));
                }
                if out.send(ToGateway::HandedOver).await.is_err() {
                    break Ok(());
                }
                token = next;
                match switch(reconnect(config, &token, HANDOVER_WAIT.max(config.orphan_wait)).await, &mut reader, &net, &settings, &next_writer).await {
                    Ok(true) => {
                        info!(worker_id = config.worker_id, "connected to the new gateway");
                    }
                    Ok(false) => break Ok(()),
                    Err(e) => break Err(e),
                }
            }
            Ok(Some(ToWorker::Hello(_))) => debug!("ignoring a second hello"),
            // The gateway is gone without a handover (killed, crashed): play on for a while if
            // the next one may adopt us, else there is nothing to serve any more.
            Ok(None) | Err(FrameError::Io(_) | FrameError::Truncated { .. }) if !config.orphan_wait.is_zero() => {
                warn!(wait_ms = config.orphan_wait.as_millis() as u64, "the gateway is gone; playing on, waiting for the next one");
                match switch(reconnect(config, &token, config.orphan_wait).await, &mut reader, &net, &settings, &next_writer).await {
                    Ok(true) => {
                        info!(worker_id = config.worker_id, "adopted by the next gateway");
                    }
                    Ok(false) => break Ok(()),
                    Err(e) => {
                        warn!(error = %e, "no gateway came back; stopping");
                        break Ok(());
                    }
                }
            }
            Ok(None) => {
                info!("gateway closed the connection");
                break Ok(());
            }
            Err(e) => break Err(IpcError::Frame(e)),
        }
    };
    tasks.shutdown().await;
    loads.shutdown().await;
    drop(players);
    leaving.shutdown().await;
    drop(out);
    drop(services);
    drop(net);
    drop(routes);
    // The writer drains what is queued (bounded in time), then stops.
    if tokio::time::timeout(Duration::from_secs(1), &mut writer_task).await.is_err() {
        writer_task.abort();
    }
    result
}

/// Runs one load on a blocking thread, bounded by the configured timeout.
async fn load(request: LoadRequest, settings: Settings, net: Net) -> LoadResult {
    let timeout = Duration::from_millis(settings.load_timeout_ms);
    let task = tokio::task::spawn_blocking(move || crate::crash::working_on(Culprit::Load, || crate::sources::load(&request, &settings, &net)));
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => LoadResult::Error(TrackException {
            message: "Something went wrong while looking up the track.".into(),
            severity: ExceptionSeverity::Fault,
            cause: format!("probe task failed: {e}"),
        }),
        Err(_) => LoadResult::Error(TrackException {
            message: "Loading the track timed out.".into(),
            severity: ExceptionSeverity::Common,
            cause: format!("no result within {} ms", timeout.as_millis()),
        }),
    }
}
