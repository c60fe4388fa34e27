//! A compromised worker, for the gateway's tests: the real worker's serving loop runs in-process
//! behind a relay to the gateway, and once worker slot 0 is given a player, the relay floods the
//! gateway with valid frames (state reports for a player it never had) as fast as the socket
//! takes them. Other slots behave as real workers. Started as `caldera.workerBinary`.

use caldera_protocol::channel::{FrameReader, FrameWriter};
use caldera_protocol::{PlayerCommand, PlayerEvent, PlayerState, ToGateway, ToWorker, MAX_FRAME_LEN};
use caldera_worker::WorkerConfig;
use std::sync::Arc;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Notify};

fn main() {
    let config = match WorkerConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flood-worker: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(relay(config));
}

async fn relay(config: WorkerConfig) {
    let gateway = UnixStream::connect(&config.socket).await.expect("connect to the gateway");
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let worker_config = config.clone();
    let worker = tokio::spawn(async move { caldera_worker::serve_connection(theirs, &worker_config).await });

    let (g_read, g_write) = gateway.into_split();
    let (o_read, o_write) = ours.into_split();
    let mut from_gateway = FrameReader::<ToWorker, _>::new(g_read, MAX_FRAME_LEN);
    let mut to_worker = FrameWriter::<ToWorker, _>::new(o_write, MAX_FRAME_LEN);
    let mut from_worker = FrameReader::<ToGateway, _>::new(o_read, MAX_FRAME_LEN);
    let mut to_gateway = FrameWriter::<ToGateway, _>::new(g_write, MAX_FRAME_LEN);
    let (up, mut up_rx) = mpsc::channel::<ToGateway>(1024);
    let flood = Arc::new(Notify::new());

    let floods = config.worker_id == 0;
    let trigger = flood.clone();
    tokio::spawn(async move {
        while let Ok(Some(msg)) = from_gateway.recv().await {
            if floods && matches!(msg, ToWorker::Player { command: PlayerCommand::Create { .. }, .. }) {
                trigger.notify_one();
            }
            if to_worker.send(&msg).await.is_err() {
                break;
            }
        }
    });
    let forward = up.clone();
    tokio::spawn(async move {
        while let Ok(Some(msg)) = from_worker.recv().await {
            if forward.send(msg).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        flood.notified().await;
        eprintln!("flood-worker: flooding the gateway");
        let state = PlayerState { time_ms: 0, position_ms: 0, connected: true, ping_ms: 1 };
        while up.send(ToGateway::Player { player: u64::MAX, event: PlayerEvent::State(state) }).await.is_ok() {}
    });
    while let Some(msg) = up_rx.recv().await {
        if to_gateway.send(&msg).await.is_err() {
            break;
        }
    }
    worker.abort();
}
