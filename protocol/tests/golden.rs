//! Golden bytes for every IPC message variant. The enums are append-only (postcard encodes a
//! variant by its index): renaming a field is free, but reordering, removing or retyping anything
//! changes these bytes and fails here — then either undo it, or bump `PROTOCOL_VERSION` and
//! write the new bytes down.
//!
//! The `match`es without a wildcard make a new variant fail to compile until it has a sample.

use caldera_protocol::track::TrackInfo;
use caldera_protocol::*;

fn track() -> TrackData {
    let info = TrackInfo {
        title: "T".into(),
        author: "A".into(),
        length: 1000,
        identifier: "i".into(),
        is_stream: false,
        uri: Some("u".into()),
        artwork_url: None,
        isrc: None,
        source_name: "http".into(),
        position: 0,
    };
    TrackData { info, source_data: vec![1] }
}

fn exception() -> TrackException {
    TrackException { message: "m".into(), severity: ExceptionSeverity::Suspicious, cause: "c".into() }
}

fn settings() -> WorkerSettings {
    WorkerSettings {
        max_probe_bytes: 1,
        load_timeout_ms: 2,
        max_playlist_entries: 3,
        player_update_interval_ms: 4,
        track_stuck_threshold_ms: 5,
        route_planner: Some(RoutePlanning { retry_limit: Some(6) }),
        http: HttpSettings { connect_timeout_ms: 3000, response_timeout_ms: 3000, read_timeout_ms: 3000, proxy: Some(Proxy { url: "http://p:1".into(), user: Some("u".into()), password: None }), deny: vec![("169.254.0.0".parse().unwrap(), 16)] },
        audio: AudioSettings { buffer_ms: 400, frame_buffer_ms: 5000, opus_quality: 10, resampling: ResamplingQuality::Low },
        sources: vec!["http".into()],
    }
}

fn command_name(c: &PlayerCommand) -> &'static str {
    match c {
        PlayerCommand::Create { .. } => "Create",
        PlayerCommand::Voice(_) => "Voice",
        PlayerCommand::Play { .. } => "Play",
        PlayerCommand::Stop => "Stop",
        PlayerCommand::Pause(_) => "Pause",
        PlayerCommand::Seek { .. } => "Seek",
        PlayerCommand::Volume(_) => "Volume",
        PlayerCommand::Destroy => "Destroy",
        PlayerCommand::EndTime(_) => "EndTime",
        PlayerCommand::Filters(_) => "Filters",
    }
}

fn event_name(e: &PlayerEvent) -> &'static str {
    match e {
        PlayerEvent::TrackStart { .. } => "TrackStart",
        PlayerEvent::TrackEnd { .. } => "TrackEnd",
        PlayerEvent::TrackException { .. } => "TrackException",
        PlayerEvent::TrackStuck { .. } => "TrackStuck",
        PlayerEvent::State(_) => "State",
        PlayerEvent::VoiceClosed { .. } => "VoiceClosed",
        PlayerEvent::Frames { .. } => "Frames",
    }
}

fn to_worker_name(m: &ToWorker) -> String {
    match m {
        ToWorker::Hello(_) => "Hello".into(),
        ToWorker::Ping { .. } => "Ping".into(),
        ToWorker::Shutdown { .. } => "Shutdown".into(),
        ToWorker::Configure(_) => "Configure".into(),
        ToWorker::Load { request: LoadRequest::Http { .. }, .. } => "Load/Http".into(),
        ToWorker::Load { request: LoadRequest::Local { .. }, .. } => "Load/Local".into(),
        ToWorker::Player { command, .. } => format!("Player/{}", command_name(command)),
        ToWorker::RouteLease { .. } => "RouteLease".into(),
        ToWorker::Resolved { .. } => "Resolved".into(),
        ToWorker::Handover { .. } => "Handover".into(),
    }
}

fn to_gateway_name(m: &ToGateway) -> String {
    match m {
        ToGateway::Hello(_) => "Hello".into(),
        ToGateway::Pong { .. } => "Pong".into(),
        ToGateway::Resources(_) => "Resources".into(),
        ToGateway::Log { .. } => "Log".into(),
        ToGateway::Loaded { result, .. } => format!(
            "Loaded/{}",
            match result {
                LoadResult::Track(_) => "Track",
                LoadResult::Playlist { .. } => "Playlist",
                LoadResult::Search(_) => "Search",
                LoadResult::Empty => "Empty",
                LoadResult::Error(_) => "Error",
            }
        ),
        ToGateway::Player { event, .. } => format!("Player/{}", event_name(event)),
        ToGateway::RouteAcquire { .. } => "RouteAcquire".into(),
        ToGateway::RouteFailed { .. } => "RouteFailed".into(),
        ToGateway::Resolve { .. } => "Resolve".into(),
        ToGateway::HandedOver => "HandedOver".into(),
    }
}

fn to_worker_samples() -> Vec<ToWorker> {
    let player = |command| ToWorker::Player { player: 7, command };
    vec![
        ToWorker::Hello(GatewayHello { protocol_version: 3, build_id: "b".into(), worker_id: 1, pid: 2 }),
        ToWorker::Ping { seq: 9 },
        ToWorker::Shutdown { reason: "r".into() },
        ToWorker::Configure(settings()),
        ToWorker::Load { id: 1, request: LoadRequest::Http { url: "h".into() } },
        ToWorker::Load { id: 2, request: LoadRequest::Local { path: "/p".into() } },
        player(PlayerCommand::Create { guild_id: 1, user_id: 2 }),
        player(PlayerCommand::Voice(VoiceServer { token: "t".into(), endpoint: "e".into(), session_id: "s".into(), channel_id: 3 })),
        player(PlayerCommand::Play { track_seq: 4, track: track(), start_ms: 5, end_ms: Some(6), paused: true }),
        player(PlayerCommand::Stop),
        player(PlayerCommand::Pause(true)),
        player(PlayerCommand::Seek { position_ms: 8 }),
        player(PlayerCommand::Volume(150)),
        player(PlayerCommand::Destroy),
        player(PlayerCommand::EndTime(Some(9))),
        player(PlayerCommand::Filters(Filters {
            volume: Some(0.5),
            equalizer: vec![(1, 0.25)],
            karaoke: Some(Karaoke { level: 1.0, mono_level: 1.0, filter_band: 220.0, filter_width: 100.0 }),
            timescale: Some(Timescale { speed: 1.0, pitch: 2.0, rate: 1.0 }),
            tremolo: Some(Lfo { frequency: 2.0, depth: 0.5 }),
            vibrato: None,
            distortion: None,
            rotation: Some(0.25),
            channel_mix: Some([1.0, 0.0, 0.0, 1.0]),
            low_pass: Some(20.0),
        })),
        ToWorker::RouteLease { id: 3, address: Ok("127.0.0.1".parse().unwrap()) },
        ToWorker::Resolved {
            id: 5,
            result: Ok(ResolvedStream { url: "u".into(), headers: vec![("a".into(), "b".into())], hls: true, available_at_ms: Some(1), is_live: false }),
        },
        ToWorker::Handover { token: "k".into() },
    ]
}

fn to_gateway_samples() -> Vec<ToGateway> {
    let player = |event| ToGateway::Player { player: 7, event };
    let loaded = |result| ToGateway::Loaded { id: 1, result };
    vec![
        ToGateway::Hello(WorkerHello { protocol_version: 3, build_id: "b".into(), worker_id: 1, pid: 2, token: "k".into() }),
        ToGateway::Pong { seq: 9 },
        ToGateway::Resources(ResourceReport { rss_bytes: 1, cpu_time_ms: 2, threads: 3 }),
        ToGateway::Log { severity: Severity::Error, message: "l".into() },
        loaded(LoadResult::Track(track())),
        loaded(LoadResult::Playlist { name: "n".into(), selected_track: -1, tracks: vec![track()] }),
        loaded(LoadResult::Search(vec![])),
        loaded(LoadResult::Empty),
        loaded(LoadResult::Error(exception())),
        player(PlayerEvent::TrackStart { track_seq: 1 }),
        player(PlayerEvent::TrackEnd { track_seq: 1, reason: EndReason::Cleanup }),
        player(PlayerEvent::TrackException { track_seq: 1, exception: exception() }),
        player(PlayerEvent::TrackStuck { track_seq: 1, threshold_ms: 2 }),
        player(PlayerEvent::State(PlayerState { time_ms: 1, position_ms: 2, connected: true, ping_ms: -1 })),
        player(PlayerEvent::VoiceClosed { code: 4014, reason: "x".into(), by_remote: true }),
        player(PlayerEvent::Frames { sent: 1, nulled: 2 }),
        ToGateway::RouteAcquire { id: 4 },
        ToGateway::RouteFailed { id: 4, search: true },
        ToGateway::Resolve { id: 5, request: ResolveRequest { source_name: "youtube".into(), identifier: "i".into(), uri: None, lease: Some(4) } },
        ToGateway::HandedOver,
    ]
}

const TO_WORKER: &[(&str, &str)] = &[
    ("Hello", "000301620102"),
    ("Ping", "0109"),
    ("Shutdown", "020172"),
    ("Configure", "030102030405010106b817b817b817010a687474703a2f2f703a31010175000100a9fe000010900388270a00010468747470"),
    ("Load/Http", "0401000168"),
    ("Load/Local", "040201022f70"),
    ("Player/Create", "0507000102"),
    ("Player/Voice", "05070101740165017303"),
    ("Player/Play", "0507020401540141e8070169000101750000046874747000010105010601"),
    ("Player/Stop", "050703"),
    ("Player/Pause", "05070401"),
    ("Player/Seek", "05070508"),
    ("Player/Volume", "0507069601"),
    ("Player/Destroy", "050707"),
    ("Player/EndTime", "0507080109"),
    ("Player/Filters", "050709010000003f01010000803e010000803f0000803f00005c430000c84201000000000000f03f0000000000000040000000000000f03f01000000400000003f000001000000000000d03f010000803f00000000000000000000803f010000a041"),
    ("RouteLease", "060300007f000001"),
    ("Resolved", "0705000175010161016201010200"),
    ("Handover", "08016b"),
];

const TO_GATEWAY: &[(&str, &str)] = &[
    ("Hello", "000301620102016b"),
    ("Pong", "0109"),
    ("Resources", "02010203"),
    ("Log", "0301016c"),
    ("Loaded/Track", "04010001540141e80701690001017500000468747470000101"),
    ("Loaded/Playlist", "040101016e010101540141e80701690001017500000468747470000101"),
    ("Loaded/Search", "04010200"),
    ("Loaded/Empty", "040103"),
    ("Loaded/Error", "040104016d010163"),
    ("Player/TrackStart", "05070001"),
    ("Player/TrackEnd", "0507010104"),
    ("Player/TrackException", "05070201016d010163"),
    ("Player/TrackStuck", "0507030102"),
    ("Player/State", "05070402020101"),
    ("Player/VoiceClosed", "050705ae1f017801"),
    ("Player/Frames", "0507060102"),
    ("RouteAcquire", "0604"),
    ("RouteFailed", "070401"),
    ("Resolve", "080507796f75747562650169000104"),
    ("HandedOver", "09"),
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check<M: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
    samples: Vec<M>,
    name: impl Fn(&M) -> String,
    golden: &[(&str, &str)],
) {
    let actual: Vec<(String, String)> = samples.iter().map(|m| (name(m), hex(&postcard::to_allocvec(m).unwrap()))).collect();
    let listing: String = actual.iter().map(|(n, h)| format!("    (\"{n}\", \"{h}\"),\n")).collect();
    assert_eq!(actual.len(), golden.len(), "samples and golden bytes differ in number; the samples encode as:\n{listing}");
    for ((name, hex), (golden_name, golden_hex)) in actual.iter().zip(golden) {
        assert_eq!(name, golden_name, "the samples encode as:\n{listing}");
        assert_eq!(hex, golden_hex, "{name} encodes differently: an incompatible protocol change (see this file's doc)");
    }
    for m in samples {
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(postcard::from_bytes::<M>(&bytes).unwrap(), m);
    }
}

#[test]
fn every_to_worker_variant_has_its_golden_bytes() {
    check(to_worker_samples(), to_worker_name, TO_WORKER);
}

#[test]
fn every_to_gateway_variant_has_its_golden_bytes() {
    check(to_gateway_samples(), to_gateway_name, TO_GATEWAY);
}
