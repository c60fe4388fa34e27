//! Handing the gateway over to a new process (SIGUSR2) while every guild plays, heard at the voice
//! double: the workers keep their pids and their audio, the client's session resumes with every
//! player, and a new gateway that cannot start leaves the old one serving.

use caldera_tests::client::Session;
use caldera_tests::http_server::Route;
use caldera_tests::media::tone;
use caldera_tests::procfs::{self, alive};
use caldera_tests::rig::rig;
use caldera_tests::systemd::NotifySocket;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The gateway a handover started: not the test's child, so it is stopped here (its workers
/// stop with it).
struct Successor(u32);


impl Drop for Successor {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while alive(self.0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
    }
}


#[test]
fn sigusr2_hands_over_to_a_new_gateway_while_every_guild_plays() {
    let mut rig = rig(2);
    rig.session.configure(json!({"resuming": true, "timeout": 30}));
    let guilds: Vec<u64> = (9201..9221).collect();
    play_through(&rig.session, &rig.voice, &guilds);
    let workers = node_worker_pids(&rig.node);
    assert_eq!(workers.len(), 2, "{workers:?}");
    let hosts: std::collections::HashSet<u64> = guilds.iter().map(|g| rig.worker_of(*g)).collect();
    assert_eq!(hosts.len(), 2, "the players are spread over both workers");
    let before = rig.session.get_player(guilds[0]).1["state"]["position"].as_u64().unwrap();
    let old = rig.node.pid();
    std::thread::sleep(Duration::from_millis(1000));
    let uptime = |node: &caldera_tests::Node| node.get("/v4/stats").json::<Value>().unwrap()["uptime"].as_u64().unwrap();
    let uptime_before = uptime(&rig.node);

    let asked = Instant::now();
    rig.node.signal(Signal::SIGUSR2);
    let line = rig.node.logs.wait_for("handed over to the new gateway", Duration::from_secs(30)).expect("no handover");
    let pid: u32 = line.split("pid=").nth(1).and_then(|p| p.split_whitespace().next()).and_then(|p| p.parse().ok()).expect("the new gateway's pid");
    let successor = Successor(pid);
    let status = rig.node.wait_exit(Duration::from_secs(10)).expect("the old gateway exits");
    assert!(status.success(), "the old gateway exited with {status:?}");
    println!("handover took {:?} (old gateway {old} → new {pid})", asked.elapsed());
    assert!(alive(successor.0));
    assert!(rig.node.logs.wait_for("took over from the previous gateway", Duration::from_secs(5)).is_some());

    // The client's socket closed with 1001; it resumes with every player intact.
    let closed = caldera_tests::eventually(Duration::from_secs(5), "the client socket to close", || rig.session.closed());
    assert_eq!(closed.0, 1001, "{closed:?}");
    let resumed = Session::connect_with(&rig.node, &[("Session-Id", Some(&rig.session.id))]).expect("resume at the new gateway");
    assert_eq!(resumed.resumed_header.as_deref(), Some("true"));
    assert_eq!(resumed.ready["resumed"], true);
    caldera_tests::eventually(Duration::from_secs(5), "a playerUpdate per player after the resume", || {
        (resumed.messages().iter().filter(|m| m["op"] == "playerUpdate").count() >= guilds.len()).then_some(())
    });
    let players: Value = rig.node.client().get(rig.node.url(&format!("/v4/sessions/{}/players", rig.session.id))).header("Authorization", caldera_tests::PASSWORD).send().unwrap().json().unwrap();
    let players = players.as_array().expect("players");
    assert_eq!(players.len(), guilds.len());
    for p in players {
        let guild: u64 = p["guildId"].as_str().unwrap().parse().unwrap();
        assert_eq!(p["track"]["userData"]["guild"], guild, "{p}");
        assert_eq!(p["voice"]["channelId"], caldera_tests::rig::CHANNEL);
    }
    let after = resumed.get_player(guilds[0]).1["state"]["position"].as_u64().unwrap();
    assert!(after > before, "position {before} → {after}");
    let uptime_after = uptime(&rig.node);
    assert!(uptime_after > uptime_before, "the node's uptime went on across the handover: {uptime_before} → {uptime_after}");

    // The same worker processes, never restarted, now the new gateway's.
    assert_eq!(node_worker_pids(&rig.node), workers);
    assert!(workers.iter().all(|p| alive(*p as u32)));
    assert_eq!(procfs::live_children(pid, "caldera-worker").len(), 0, "no worker was spawned anew");

    // At the voice double: one connection per guild all along, and no gap over 200 ms.
    std::thread::sleep(Duration::from_millis(1000));
    let mut worst = Duration::ZERO;
    for &g in &guilds {
        let conns = rig.voice.connections(g);
        assert_eq!(conns.len(), 1, "guild {g} reconnected its voice");
        let audio = conns[0].audio();
        assert!(audio.last_arrival().is_some_and(|t| t > asked + Duration::from_millis(500)), "guild {g} fell silent");
        let steady = audio.range(25..audio.packets());
        worst = worst.max(steady.max_gap());
        assert!((audio.non_silent().dominant_frequency() - 440.0).abs() < 9.0);
    }
    println!("worst gap across the handover: {worst:?}");
    assert!(worst <= Duration::from_millis(200), "a guild's audio gapped {worst:?} across the handover");

    // The adopted workers take commands from the new gateway.
    pauses(&resumed, guilds[0], &rig.voice.latest(guilds[0]).unwrap());
}

#[test]
fn a_new_gateway_that_cannot_start_leaves_the_old_one_serving() {
    let rig = rig(1);
    let guild = 9301;
    let conn = play_through(&rig.session, &rig.voice, &[guild]).remove(0);
    // The binary on disk reads the configuration anew: a broken one stops it before anything
    // changed.
    std::fs::write(rig.node.dir.path().join("application.yml"), "server: [this is not\n").unwrap();
    rig.node.signal(Signal::SIGUSR2);
    assert!(rig.node.logs.wait_for("handover failed, serving on", Duration::from_secs(30)).is_some());
    let at = Instant::now();
    assert_eq!(rig.node.get("/version").status(), 200);
    assert!(rig.session.closed().is_none(), "the client's socket was closed");
    assert_eq!(rig.session.get_player(guild).0, 200);
    assert!(conn.wait_packets(conn.packets() + 25, Duration::from_secs(5)));
    let audio = conn.audio();
    let steady = audio.range(25..audio.packets());
    assert!(steady.max_gap() < Duration::from_millis(200), "gap {:?}", steady.max_gap());
    assert!(audio.last_arrival().is_some_and(|t| t > at));
}

#[test]
fn under_systemd_the_new_gateway_becomes_the_main_process_and_pings_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(dir.path());
    let voice = caldera_tests::voice::VoiceServer::start();
    let mut node = caldera_tests::Node::start_with(caldera_tests::NodeOptions {
        workers: 1,
        env: vec![
            notify.env(),
            ("WATCHDOG_USEC".into(), "400000".into()),
            ("SSL_CERT_FILE".into(), voice.ca_file().display().to_string()),
        ],
        ..Default::default()
    });
    notify.wait_for("READY=1", Duration::from_secs(30));
    let session = Session::connect(&node);
    let guild = 9401;
    let conn = play_through(&session, &voice, &[guild]).remove(0);

    let sources = |node: &caldera_tests::Node| node.get("/v4/info").json::<Value>().unwrap()["sourceManagers"].clone();
    assert!(sources(&node).as_array().unwrap().contains(&json!("http")));
    // The configuration changes, then `systemctl reload` (ExecReload=/bin/kill -USR2 $MAINPID):
    // the new gateway reads it again.
    let config = node.dir.path().join("application.yml");
    let yaml = std::fs::read_to_string(&config).unwrap() + "lavalink:\n  server:\n    sources:\n      http: false\n";
    std::fs::write(&config, yaml).unwrap();
    node.signal(Signal::SIGUSR2);
    let mainpid = notify.wait_for("MAINPID=", Duration::from_secs(30));
    let pid: u32 = mainpid.split("MAINPID=").nth(1).and_then(|p| p.lines().next()).and_then(|p| p.trim().parse().ok()).expect("a pid");
    let successor = Successor(pid);
    assert!(node.wait_exit(Duration::from_secs(10)).expect("the old gateway exits").success());
    assert!(alive(successor.0));
    // The new main process keeps the watchdog fed.
    let pings = notify.count_during("WATCHDOG=1", Duration::from_secs(1));
    assert!(pings >= 3, "{pings} watchdog pings in 1 s from the new gateway");
    assert!(!sources(&node).as_array().unwrap().contains(&json!("http")), "the configuration was read again: {}", sources(&node));
    assert!(conn.wait_packets(conn.packets() + 25, Duration::from_secs(5)));
    let audio = conn.audio();
    let steady = audio.range(25..audio.packets());
    assert!(steady.max_gap() < Duration::from_millis(200), "gap {:?}", steady.max_gap());
    assert_eq!(voice.connections(guild).len(), 1);
}

/// A node whose workers outlive it for `wait_ms`, in the runtime directory `runtime` (as under
/// systemd, which also gives it a notify socket: `notify`).
fn outliving_node(runtime: &std::path::Path, voice: &caldera_tests::voice::VoiceServer, wait_ms: u64, notify: Option<&NotifySocket>) -> caldera_tests::Node {
    let mut env = vec![
        ("RUNTIME_DIRECTORY".into(), runtime.display().to_string()),
        ("SSL_CERT_FILE".into(), voice.ca_file().display().to_string()),
    ];
    env.extend(notify.map(NotifySocket::env));
    caldera_tests::Node::start_with(caldera_tests::NodeOptions {
        workers: 2,
        env,
        yaml: format!("lavalink:\n  server:\n    playerUpdateInterval: 1\ncaldera:\n  workers: 2\n  worker:\n    orphanWaitMs: {wait_ms}\n"),
        ..Default::default()
    })
}

/// Pauses `guild` through `session`: its audio stops at the voice double.
fn pauses(session: &Session, guild: u64, conn: &caldera_tests::voice::Connection) {
    let (status, body) = session.patch(guild, json!({"paused": true}));
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(Duration::from_millis(400));
    let paused_at = conn.packets();
    std::thread::sleep(Duration::from_millis(600));
    assert!(conn.packets() <= paused_at + 5, "still playing after the pause: {paused_at} → {}", conn.packets());
}

fn node_worker_pids(node: &caldera_tests::Node) -> Vec<u64> {
    let workers: Value = node.get("/v4/caldera/workers").json().unwrap();
    let mut pids: Vec<u64> = workers["workers"].as_array().unwrap().iter().filter_map(|w| w["pid"].as_u64()).collect();
    pids.sort_unstable();
    pids
}

/// Plays a 30 s Ogg Opus tone (passed through: 20 players stay cheap on a small machine) in
/// `guilds`, each with its guild number as userData; returns the voice connections.
fn play_through(session: &Session, voice: &caldera_tests::voice::VoiceServer, guilds: &[u64]) -> Vec<caldera_tests::voice::Connection> {
    let media = caldera_tests::http_server::TestServer::start();
    media.route("/tone.opus", Route::file(tone("handover440.opus", 440, 30, &["-c:a", "libopus", "-b:a", "96k", "-frame_duration", "20", "-f", "ogg"]), "audio/ogg"));
    for &g in guilds {
        let voice_state = json!({"token": format!("t{g}"), "endpoint": voice.endpoint(), "sessionId": format!("s{g}"), "channelId": caldera_tests::rig::CHANNEL});
        let (status, body) = session.patch(g, json!({"voice": voice_state, "track": {"identifier": media.url("/tone.opus"), "userData": {"guild": g}}}));
        assert_eq!(status, 200, "{body}");
    }
    let conns = guilds.iter().map(|g| voice.wait_audio(*g, 25, Duration::from_secs(30))).collect();
    // The media server may go: the tracks are buffered well past the test.
    std::mem::forget(media);
    conns
}

#[test]
fn a_gateway_killed_outright_leaves_its_workers_playing_for_the_next_one() {
    let runtime = tempfile::tempdir().unwrap();
    let voice = caldera_tests::voice::VoiceServer::start();
    // As systemd runs it: Restart=on-failure starts the next gateway in the same runtime
    // directory, which says READY=1 once it serves.
    let notify = NotifySocket::bind(runtime.path());
    let ready = || {
        notify.wait_for("READY=1", Duration::from_secs(30));
    };
    let mut node = outliving_node(runtime.path(), &voice, 20_000, Some(&notify));
    ready();
    let session = Session::connect(&node);
    session.configure(json!({"resuming": true, "timeout": 30}));
    let guilds = [9501, 9502, 9503, 9504];
    let conns = play_through(&session, &voice, &guilds);
    let workers = node_worker_pids(&node);
    assert_eq!(workers.len(), 2);
    // The state for the next gateway is kept every second.
    std::thread::sleep(Duration::from_millis(1500));

    node.signal(Signal::SIGKILL);
    node.wait_exit(Duration::from_secs(5)).expect("the gateway died");
    // Its workers play on without it.
    for c in &conns {
        assert!(c.wait_packets(c.packets() + 50, Duration::from_secs(5)), "guild {} fell silent without its gateway", c.guild_id());
    }
    assert!(workers.iter().all(|p| alive(*p as u32)));

    let next = outliving_node(runtime.path(), &voice, 20_000, Some(&notify));
    assert!(next.logs.wait_for("taking over the workers of a gateway that died", Duration::from_secs(5)).is_some());
    ready();
    caldera_tests::eventually(Duration::from_secs(5), "the next gateway to adopt the same workers", || (node_worker_pids(&next) == workers).then_some(()));
    let resumed = Session::connect_with(&next, &[("Session-Id", Some(&session.id))]).expect("resume at the next gateway");
    assert_eq!(resumed.ready["resumed"], true);
    for &g in &guilds {
        let (status, p) = resumed.get_player(g);
        assert_eq!(status, 200, "{p}");
        assert_eq!(p["track"]["userData"]["guild"], g);
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut worst = Duration::ZERO;
    for (c, g) in conns.iter().zip(guilds) {
        assert_eq!(voice.connections(g).len(), 1, "guild {g} reconnected its voice");
        let audio = c.audio();
        worst = worst.max(audio.range(25..audio.packets()).max_gap());
    }
    println!("worst gap while the gateway was dead and replaced: {worst:?}");
    assert!(worst <= Duration::from_millis(200), "audio gapped {worst:?}");
    // The adopted workers take commands.
    pauses(&resumed, guilds[0], &conns[0]);
    // A clean stop takes the workers with it.
    next.signal(Signal::SIGTERM);
    caldera_tests::eventually(Duration::from_secs(10), "the workers to stop with the gateway", || workers.iter().all(|p| !alive(*p as u32)).then_some(()));
}

#[test]
fn workers_left_without_a_gateway_stop_after_their_wait() {
    let runtime = tempfile::tempdir().unwrap();
    let voice = caldera_tests::voice::VoiceServer::start();
    let mut node = outliving_node(runtime.path(), &voice, 2_000, None);
    let session = Session::connect(&node);
    let conns = play_through(&session, &voice, &[9601]);
    let workers = node_worker_pids(&node);
    node.signal(Signal::SIGKILL);
    node.wait_exit(Duration::from_secs(5)).expect("the gateway died");
    let killed = Instant::now();
    assert!(conns[0].wait_packets(conns[0].packets() + 25, Duration::from_secs(2)), "fell silent at once");
    caldera_tests::eventually(Duration::from_secs(8), "the orphaned workers to stop", || workers.iter().all(|p| !alive(*p as u32)).then_some(()));
    let gone = killed.elapsed();
    println!("workers stopped {gone:?} after their gateway died");
    assert!(gone >= Duration::from_millis(1500), "stopped before their wait: {gone:?}");
    assert!(conns[0].wait_closed(Duration::from_secs(5)).is_some() || !conns[0].ws_open());
}

/// A copy of the binary `name` just built that says it is of another build: the commit in its
/// build id (`0.1.0+<commit>`) rewritten in place, same length. Gateway and worker copies made
/// alike say hello to each other as one build, and to the real binaries as a previous one.
fn previous_build(name: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let bytes = std::fs::read(caldera_tests::bin(name)).unwrap();
    // The binary's own build id: the version, `+`, and a commit as long as ours (it may have
    // been built at another commit than this test).
    let ours = caldera_protocol::build::BUILD_ID;
    let prefix = &ours.as_bytes()[..=ours.find('+').unwrap()];
    let at = bytes.windows(prefix.len()).position(|w| w == prefix).unwrap_or_else(|| panic!("{name} carries no build id"));
    let from = bytes[at..at + ours.len()].to_vec();
    let to: Vec<u8> = from.iter().enumerate().map(|(i, c)| if i < prefix.len() { *c } else if *c == b'e' { b'd' } else { b'e' }).collect();
    let (from, to) = (from.as_slice(), to.as_slice());
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let mut replaced = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
            replaced += 1;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    assert!(replaced > 0);
    let path = dir.join(name);
    std::fs::write(&path, out).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// Installs the binary `name` just built at `path`, as an upgrade does: a new file renamed over
/// the old one (the running process keeps its own).
fn install(name: &str, path: &std::path::Path) {
    let temp = path.with_extension("new");
    std::fs::copy(caldera_tests::bin(name), &temp).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

#[test]
fn a_new_build_adopts_the_previous_builds_workers_and_retires_them_as_they_empty() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, worker) = (previous_build("caldera", dir.path()), previous_build("caldera-worker", dir.path()));
    let voice = caldera_tests::voice::VoiceServer::start();
    let mut node = caldera_tests::Node::start_with(caldera_tests::NodeOptions {
        workers: 1,
        binary: Some(gateway.clone()),
        env: vec![("SSL_CERT_FILE".into(), voice.ca_file().display().to_string())],
        yaml: format!("caldera:\n  workers: 1\n  workerBinary: {}\n", worker.display()),
        ..Default::default()
    });
    let session = Session::connect(&node);
    session.configure(json!({"resuming": true, "timeout": 30}));
    let old_players = [9701, 9702];
    let conns = play_through(&session, &voice, &old_players);
    let old = node_worker_pids(&node);
    assert_eq!(old.len(), 1);

    // The upgrade: the new build installed over the old one, then a reload.
    install("caldera", &gateway);
    install("caldera-worker", &worker);
    node.signal(Signal::SIGUSR2);
    let line = node.logs.wait_for("handed over to the new gateway", Duration::from_secs(30)).expect("no handover");
    let successor = Successor(line.split("pid=").nth(1).and_then(|p| p.split_whitespace().next()).and_then(|p| p.parse().ok()).expect("pid"));
    assert!(node.wait_exit(Duration::from_secs(10)).expect("the old gateway exits").success());
    let workers = |node: &caldera_tests::Node| -> Vec<Value> { node.get("/v4/caldera/workers").json::<Value>().unwrap()["workers"].as_array().unwrap().clone() };
    // The old build's worker plays on, retiring; a worker of the new build joins for new players.
    let listed = caldera_tests::eventually(Duration::from_secs(10), "a worker of the new build beside the old one", || {
        let w = workers(&node);
        (w.iter().filter(|w| w["state"] == "ready").count() == 2).then_some(w)
    });
    let retiring: Vec<&Value> = listed.iter().filter(|w| w["retiring"] == true).collect();
    assert_eq!(retiring.len(), 1, "{listed:?}");
    assert_eq!(retiring[0]["pid"].as_u64(), Some(old[0]), "the old worker was adopted, not restarted");
    assert_ne!(retiring[0]["build"], caldera_protocol::build::BUILD_ID);
    let resumed = Session::connect_with(&node, &[("Session-Id", Some(&session.id))]).expect("resume");
    let fresh = play_through(&resumed, &voice, &[9703]);
    let by_build = |w: &[Value], retiring: bool| w.iter().find(|w| w["retiring"] == retiring).map(|w| w["players"].as_u64().unwrap());
    let now = workers(&node);
    assert_eq!((by_build(&now, true), by_build(&now, false)), (Some(2), Some(1)), "new players go to the new build: {now:?}");

    // Its last player gone, the old worker stops and its slot ends; audio never stopped.
    for g in old_players {
        let gap = conns[(g - 9701) as usize].audio().range(25..conns[(g - 9701) as usize].packets()).max_gap();
        assert!(gap < Duration::from_millis(200), "guild {g} gapped {gap:?} across the upgrade");
        assert_eq!(resumed.delete_player(g), 204);
    }
    let after = caldera_tests::eventually(Duration::from_secs(10), "the old build's worker to retire", || {
        let w = workers(&node);
        (!alive(old[0] as u32) && w.iter().filter(|w| w["state"] == "ready").count() == 1).then_some(w)
    });
    assert!(after.iter().all(|w| w["retiring"] == false || w["state"] == "stopped"), "{after:?}");
    assert!(fresh[0].wait_packets(fresh[0].packets() + 25, Duration::from_secs(5)), "the new build's player plays on");
    drop(successor);
}

#[test]
fn a_bot_on_lavalink_client_resumes_across_a_handover() {
    use std::io::BufRead;
    let mut rig = rig(1);
    let guild = 9801u64;
    rig.media.route("/bot.wav", Route::file(caldera_tests::audio::sine_wav(440.0, 8.0, 48_000, 2, 0.5), "audio/wav"));
    let addr = rig.node.addr.unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("node");
    let mut bot = std::process::Command::new("node")
        .arg(dir.join("handover.mjs"))
        .args([addr.ip().to_string(), addr.port().to_string(), caldera_tests::PASSWORD.into(), rig.media.url("/bot.wav"), rig.voice.endpoint(), guild.to_string()])
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node (scripts/setup.sh installs the npm packages)");
    let mut lines = std::io::BufReader::new(bot.stdout.take().unwrap()).lines();
    let marker = lines.next().and_then(Result::ok);
    assert_eq!(marker.as_deref(), Some("HANDOVER"), "the bot did not get to play");
    rig.node.signal(Signal::SIGUSR2);
    let line = rig.node.logs.wait_for("handed over to the new gateway", Duration::from_secs(30)).expect("no handover");
    let _successor = Successor(line.split("pid=").nth(1).and_then(|p| p.split_whitespace().next()).and_then(|p| p.parse().ok()).expect("pid"));
    assert!(rig.node.wait_exit(Duration::from_secs(10)).is_some());
    let report = lines.map_while(Result::ok).last().expect("the bot's report");
    assert!(bot.wait().unwrap().success(), "the bot failed: {report}");
    println!("the bot saw: {report}");
    let seen: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(seen["closeCode"], 1001, "{seen}");
    assert_eq!(seen["sameSession"], true, "{seen}");
    assert_eq!(seen["resumed"], true, "{seen}");
    assert_eq!(seen["endReason"], "finished", "the track played on to its end: {seen}");
    let starts = seen["seen"].as_array().unwrap().iter().filter(|e| e["event"] == "trackStart").count();
    assert_eq!(starts, 1, "the track did not start again: {seen}");
    let conns = rig.voice.connections(guild);
    assert_eq!(conns.len(), 1, "the voice connection was not re-made");
    let audio = conns[0].audio().non_silent();
    assert!(audio.packets() >= 370, "{} of 400 frames of the 8 s track arrived", audio.packets());
    assert!(audio.max_gap() < Duration::from_millis(200), "gap {:?}", audio.max_gap());
}
