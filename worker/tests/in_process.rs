//! The in-process tier (STYLE §14): the worker's serving loop over a socket pair, this test
//! playing the gateway's side of the protocol — no processes, no sandbox.

use caldera_protocol::channel::{FrameReader, FrameWriter};
use caldera_protocol::{
    build, AudioSettings, EndReason, GatewayHello, HttpSettings, LoadRequest, LoadResult, PlayerCommand, PlayerEvent, ResamplingQuality,
    ToGateway, ToWorker, WorkerSettings, MAX_FRAME_LEN,
};
use caldera_worker::{sandbox, serve_connection, WorkerConfig};
use std::path::Path;
use std::time::Duration;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

struct Gateway {
    reader: FrameReader<ToGateway, OwnedReadHalf>,
    writer: FrameWriter<ToWorker, OwnedWriteHalf>,
}

impl Gateway {
    async fn send(&mut self, msg: ToWorker) {
        self.writer.send(&msg).await.unwrap();
    }

    /// The next message that `pick` accepts (resource reports and the like are skipped).
    async fn next<T>(&mut self, mut pick: impl FnMut(ToGateway) -> Option<T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let msg = self.reader.recv().await.unwrap().expect("the worker closed the connection");
                if let Some(v) = pick(msg) {
                    return v;
                }
            }
        })
        .await
        .expect("no such message from the worker within 10 s")
    }
}

fn fixtures() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").canonicalize().unwrap().display().to_string()
}

async fn start() -> (Gateway, tokio::task::JoinHandle<Result<(), caldera_worker::IpcError>>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let config = WorkerConfig {
        socket: "/nonexistent".into(),
        token: "in-process".into(),
        worker_id: 4,
        gateway_pid: std::process::id() as i32,
        sandbox: sandbox::Mode::Off,
        local_dirs: vec![fixtures()],
        evidence_fd: None,
        orphan_wait: Duration::ZERO,
    };
    let worker = tokio::spawn(async move { serve_connection(theirs, &config).await });
    let (read, write) = ours.into_split();
    let mut gw = Gateway { reader: FrameReader::new(read, MAX_FRAME_LEN), writer: FrameWriter::new(write, MAX_FRAME_LEN) };
    let hello = gw.next(|m| match m {
        ToGateway::Hello(h) => Some(h),
        _ => None,
    });
    let hello = hello.await;
    assert_eq!((hello.token.as_str(), hello.worker_id, hello.protocol_version), ("in-process", 4, build::PROTOCOL_VERSION));
    gw.send(ToWorker::Hello(GatewayHello { protocol_version: build::PROTOCOL_VERSION, build_id: build::BUILD_ID.into(), worker_id: 4, pid: 1 })).await;
    gw.send(ToWorker::Configure(WorkerSettings {
        max_probe_bytes: 64 << 20,
        load_timeout_ms: 10_000,
        max_playlist_entries: 10,
        player_update_interval_ms: 200,
        track_stuck_threshold_ms: 10_000,
        route_planner: None,
        http: HttpSettings { connect_timeout_ms: 3000, response_timeout_ms: 3000, read_timeout_ms: 3000, proxy: None, deny: Vec::new() },
        audio: AudioSettings { buffer_ms: 400, frame_buffer_ms: 5000, opus_quality: 10, resampling: ResamplingQuality::Low },
        sources: vec!["http".into(), "local".into()],
    }))
    .await;
    (gw, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_in_process_loads_plays_answers_pings_and_stops() {
    let (mut gw, worker) = start().await;
    gw.send(ToWorker::Ping { seq: 41 }).await;
    assert_eq!(gw.next(|m| if let ToGateway::Pong { seq } = m { Some(seq) } else { None }).await, 41);

    let path = format!("{}/sine440.ogg", fixtures());
    gw.send(ToWorker::Load { id: 9, request: LoadRequest::Local { path: path.clone() } }).await;
    let (id, result) = gw.next(|m| if let ToGateway::Loaded { id, result } = m { Some((id, result)) } else { None }).await;
    let LoadResult::Track(track) = result else { panic!("{result:?}") };
    assert_eq!((id, track.info.source_name.as_str()), (9, "local"));
    let outside = LoadRequest::Local { path: "/etc/hostname".into() };
    gw.send(ToWorker::Load { id: 10, request: outside }).await;
    let result = gw.next(|m| if let ToGateway::Loaded { id: 10, result } = m { Some(result) } else { None }).await;
    assert!(matches!(result, LoadResult::Error(_) | LoadResult::Empty), "{result:?}");

    // A player (no voice connection here): its track starts, its state reports the start
    // position (where the first packet kept after the seek begins: up to a packet before the
    // asked position), and a stop ends it.
    let player = |command| ToWorker::Player { player: 3, command };
    gw.send(player(PlayerCommand::Create { guild_id: 1, user_id: 2 })).await;
    gw.send(player(PlayerCommand::Play { track_seq: 5, track, start_ms: 2_000, end_ms: None, paused: false })).await;
    gw.next(|m| matches!(m, ToGateway::Player { player: 3, event: PlayerEvent::TrackStart { track_seq: 5 } }).then_some(())).await;
    let state = gw.next(|m| if let ToGateway::Player { player: 3, event: PlayerEvent::State(s) } = m { Some(s) } else { None }).await;
    assert!((1_940..3_000).contains(&state.position_ms) && !state.connected, "{state:?}");
    gw.send(player(PlayerCommand::Stop)).await;
    let reason = gw.next(|m| if let ToGateway::Player { player: 3, event: PlayerEvent::TrackEnd { track_seq: 5, reason } } = m { Some(reason) } else { None }).await;
    assert_eq!(reason, EndReason::Stopped);
    gw.send(player(PlayerCommand::Destroy)).await;

    gw.send(ToWorker::Shutdown { reason: "test".into() }).await;
    let result = tokio::time::timeout(Duration::from_secs(5), worker).await.expect("the worker stops").unwrap();
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_needs_its_settings_right_after_the_hello() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let config = WorkerConfig {
        socket: "/nonexistent".into(),
        token: "t".into(),
        worker_id: 0,
        gateway_pid: 1,
        sandbox: sandbox::Mode::Off,
        local_dirs: Vec::new(),
        evidence_fd: None,
        orphan_wait: Duration::ZERO,
    };
    let worker = tokio::spawn(async move { serve_connection(theirs, &config).await });
    let (read, write) = ours.into_split();
    let mut gw = Gateway { reader: FrameReader::new(read, MAX_FRAME_LEN), writer: FrameWriter::new(write, MAX_FRAME_LEN) };
    gw.next(|m| matches!(m, ToGateway::Hello(_)).then_some(())).await;
    gw.send(ToWorker::Hello(GatewayHello { protocol_version: build::PROTOCOL_VERSION, build_id: build::BUILD_ID.into(), worker_id: 0, pid: 1 })).await;
    gw.send(ToWorker::Ping { seq: 1 }).await;
    let result = tokio::time::timeout(Duration::from_secs(5), worker).await.unwrap().unwrap();
    assert!(matches!(result, Err(caldera_worker::IpcError::NoSettings)), "{result:?}");
}
