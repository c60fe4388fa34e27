//! Handing the gateway over to a new process (SIGUSR2) while every guild plays, heard at the voice
//! double: the workers keep their pids and their audio, the client's session resumes with every
//! player, and a new gateway that cannot start leaves the old one serving.

use caldera_tests::client::Session;
use caldera_tests::http_server::Route;
use caldera_tests::media::tone;
use caldera_tests::procfs;
use caldera_tests::rig::{encoded_track, rig, Rig};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The gateway a handover started: not the test's child, so it is stopped here (its workers
/// stop with it).
struct Successor(u32);

impl Successor {
    fn alive(&self) -> bool {
        procfs::stat(self.0).is_some_and(|(_, state, _)| state != 'Z' && state != 'X')
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
    }
}

fn alive(pid: u32) -> bool {
    procfs::stat(pid).is_some_and(|(_, state, _)| state != 'Z' && state != 'X')
}

/// Plays a 30 s Ogg Opus tone (passed through: 20 players stay cheap on a small machine) in
/// `guilds`, each with its guild number as userData.
fn play_all(rig: &Rig, guilds: &[u64]) {
    rig.media.route("/tone.opus", Route::file(tone("handover440.opus", 440, 30, &["-c:a", "libopus", "-b:a", "96k", "-frame_duration", "20", "-f", "ogg"]), "audio/ogg"));
    let track = encoded_track(rig, "/tone.opus", "ogg");
    for &g in guilds {
        let (status, body) = rig.session.patch(g, json!({"voice": rig.voice_state(g), "track": {"encoded": track, "userData": {"guild": g}}}));
        assert_eq!(status, 200, "{body}");
    }
    for &g in guilds {
        rig.voice.wait_audio(g, 25, Duration::from_secs(30));
    }
}

fn worker_pids(rig: &Rig) -> Vec<u64> {
    let workers: Value = rig.node.get("/v4/caldera/workers").json().unwrap();
    let mut pids: Vec<u64> = workers["workers"].as_array().unwrap().iter().filter_map(|w| w["pid"].as_u64()).collect();
    pids.sort_unstable();
    pids
}

#[test]
fn sigusr2_hands_over_to_a_new_gateway_while_every_guild_plays() {
    let mut rig = rig(2);
    rig.session.configure(json!({"resuming": true, "timeout": 30}));
    let guilds: Vec<u64> = (9201..9221).collect();
    play_all(&rig, &guilds);
    let workers = worker_pids(&rig);
    assert_eq!(workers.len(), 2, "{workers:?}");
    let hosts: std::collections::HashSet<u64> = guilds.iter().map(|g| rig.worker_of(*g)).collect();
    assert_eq!(hosts.len(), 2, "the players are spread over both workers");
    let before = rig.session.get_player(guilds[0]).1["state"]["position"].as_u64().unwrap();
    let old = rig.node.pid();

    let asked = Instant::now();
    rig.node.signal(Signal::SIGUSR2);
    let line = rig.node.logs.wait_for("handed over to the new gateway", Duration::from_secs(30)).expect("no handover");
    let pid: u32 = line.split("pid=").nth(1).and_then(|p| p.split_whitespace().next()).and_then(|p| p.parse().ok()).expect("the new gateway's pid");
    let successor = Successor(pid);
    let status = rig.node.wait_exit(Duration::from_secs(10)).expect("the old gateway exits");
    assert!(status.success(), "the old gateway exited with {status:?}");
    println!("handover took {:?} (old gateway {old} → new {pid})", asked.elapsed());
    assert!(successor.alive());
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

    // The same worker processes, never restarted, now the new gateway's.
    assert_eq!(worker_pids(&rig), workers);
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
    let conn = rig.voice.latest(guilds[0]).unwrap();
    let (status, _) = resumed.patch(guilds[0], json!({"paused": true}));
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(400));
    let paused_at = conn.packets();
    std::thread::sleep(Duration::from_millis(600));
    assert!(conn.packets() <= paused_at + 5, "still playing after the pause: {} → {}", paused_at, conn.packets());
}

#[test]
fn a_new_gateway_that_cannot_start_leaves_the_old_one_serving() {
    let rig = rig(1);
    let guild = 9301;
    play_all(&rig, &[guild]);
    let conn = rig.voice.latest(guild).unwrap();
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
