//! HLS and radio playlists, heard at the voice double. Fixtures are made by ffmpeg's HLS muxer at
//! test time (MPEG-TS with AAC or MP3, fragmented MP4 with AAC, AES-128) and served by the test
//! server; a live playlist is a window the test slides over a long rendition.

use caldera_tests::http_server::Route;
use caldera_tests::media::{self, hls};
use caldera_tests::rig::{rig, Rig};
use caldera_tests::voice::{Audio, Connection};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const SECONDS: u32 = 12;
/// The longest silence allowed inside a track's audio at the double. A segment boundary that
/// stalls the stream leaves far more; a loaded 2-core CI machine delays single packets by up to
/// ~50 ms, which is not the stream's doing (packet counts check that nothing is missing).
const MAX_GAP: Duration = Duration::from_millis(100);

fn sine(freq: u32, seconds: u32) -> Vec<String> {
    vec!["-f".into(), "lavfi".into(), "-i".into(), format!("sine=frequency={freq}:sample_rate=44100:duration={seconds}")]
}

/// Makes a rendition with ffmpeg and serves it under `/{name}/`; returns the playlist's URL and
/// the paths of the files it refers to.
fn serve_files(rig: &Rig, name: &str, input: &[String], args: &[&str]) -> (String, Vec<String>) {
    let input: Vec<&str> = input.iter().map(String::as_str).collect();
    let (text, files) = hls(name, &input, args);
    rig.media.route(&format!("/{name}/index.m3u8"), Route::file(text.into_bytes(), "application/vnd.apple.mpegurl"));
    let mut paths = Vec::new();
    for (file, bytes) in files {
        let path = format!("/{name}/{file}");
        rig.media.route(&path, Route::file(bytes, "application/octet-stream"));
        paths.push(path);
    }
    (rig.media.url(&format!("/{name}/index.m3u8")), paths)
}

fn serve(rig: &Rig, name: &str, input: &[String], args: &[&str]) -> String {
    serve_files(rig, name, input, args).0
}

fn load_track(rig: &Rig, url: &str) -> Value {
    let res = rig.node.load(url);
    assert_eq!(res["loadType"], "track", "{url}: {res}");
    res["data"].clone()
}

fn play(rig: &Rig, guild: u64, url: &str) -> Connection {
    let (status, body) = rig.session.patch(guild, json!({"voice": rig.voice_state(guild), "track": {"identifier": url}}));
    assert_eq!(status, 200, "{body}");
    rig.voice.wait_audio(guild, 25, Duration::from_secs(15))
}

/// The audible part of what arrived, and the longest gap inside it.
fn heard(conn: &Connection) -> (Audio, Duration) {
    let audio = conn.audio();
    let tone = audio.non_silent();
    let start = tone.first_arrival().unwrap() - audio.first_arrival().unwrap();
    let end = tone.last_arrival().unwrap() - audio.first_arrival().unwrap();
    let gap = audio.slice(start, end).max_gap();
    (tone, gap)
}

#[test]
fn vod_playlists_of_every_segment_kind_play_through_and_finish() {
    let rig = rig(2);
    let vod = ["-hls_time", "2", "-hls_playlist_type", "vod"];
    let kinds: [(&str, u32, Vec<&str>); 4] = [
        ("ts_aac", 440, [&["-c:a", "aac", "-b:a", "128k"][..], &vod].concat()),
        ("ts_mp3", 550, [&["-c:a", "libmp3lame", "-b:a", "128k"][..], &vod].concat()),
        ("fmp4_aac", 660, [&["-c:a", "aac", "-b:a", "128k", "-hls_segment_type", "fmp4"][..], &vod].concat()),
        ("ts_aac_mono", 770, [&["-c:a", "aac", "-ac", "1", "-b:a", "64k"][..], &vod].concat()),
    ];
    let mut playing = Vec::new();
    for (i, (name, freq, args)) in kinds.iter().enumerate() {
        let url = serve(&rig, name, &sine(*freq, SECONDS), args);
        let t = load_track(&rig, &url);
        let info = &t["info"];
        assert_eq!((info["isStream"].as_bool(), info["isSeekable"].as_bool()), (Some(false), Some(true)), "{name}: {info}");
        let length = info["length"].as_i64().unwrap();
        assert!((length - SECONDS as i64 * 1000).abs() <= 100, "{name}: length {length}");
        assert_eq!((info["uri"].as_str(), info["sourceName"].as_str()), (Some(url.as_str()), Some("http")));
        let guild = 7100 + i as u64;
        playing.push((guild, *name, *freq, play(&rig, guild, &url), length));
    }
    for (guild, name, freq, conn, length) in playing {
        let (_, end) = rig.session.wait_event("TrackEndEvent", guild, Duration::from_secs(60)).unwrap_or_else(|| panic!("{name} did not end"));
        assert_eq!(end["reason"], "finished", "{name}: {end}");
        let (tone, gap) = heard(&conn);
        // The whole length is heard, segment after segment, with no gap at their boundaries.
        let expected = length as usize / 20;
        assert!(tone.packets().abs_diff(expected) <= 15, "{name}: {} audible packets of {expected}", tone.packets());
        assert!(gap < MAX_GAP, "{name}: a gap of {gap:?}");
        let f = tone.dominant_frequency();
        assert!((f - freq as f64).abs() < freq as f64 * 0.02, "{name}: {f:.1} Hz, expected {freq}");
        assert!(rig.session.messages().iter().all(|m| m["type"] != "TrackExceptionEvent" || m["guildId"] != guild.to_string()), "{name}");
    }
}

#[test]
fn a_master_playlist_plays_its_best_audio_variant_and_an_aes_playlist_plays() {
    let rig = rig(1);
    let vod = ["-hls_time", "2", "-hls_playlist_type", "vod"];
    let low = serve(&rig, "var_low", &sine(330, SECONDS), &[&["-c:a", "aac", "-b:a", "48k"][..], &vod].concat());
    let high = serve(&rig, "var_high", &sine(880, SECONDS), &[&["-c:a", "aac", "-b:a", "160k"][..], &vod].concat());
    let video = rig.media.url("/no-such-video.m3u8");
    let master = format!(
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=2000000,RESOLUTION=1280x720,CODECS=\"avc1.64001f,mp4a.40.2\"\n{video}\n\
         #EXT-X-STREAM-INF:BANDWIDTH=64000,CODECS=\"mp4a.40.2\"\n{low}\n#EXT-X-STREAM-INF:BANDWIDTH=192000,CODECS=\"mp4a.40.2\"\n{high}\n"
    );
    rig.media.route("/master.m3u8", Route::file(master.into_bytes(), "application/vnd.apple.mpegurl"));
    let url = rig.media.url("/master.m3u8");
    let t = load_track(&rig, &url);
    assert_eq!(t["info"]["isStream"], false);
    let conn = play(&rig, 7201, &url);
    assert!(conn.wait_packets(150, Duration::from_secs(10)));
    let f = conn.audio().non_silent().dominant_frequency();
    assert!((f - 880.0).abs() < 15.0, "the 160k audio variant plays: {f:.1} Hz");
    assert!(rig.media.hits("/var_low/index.m3u8").is_empty(), "the low variant is never fetched");

    // AES-128: ffmpeg encrypts each segment with the key (IV from the sequence number).
    std::fs::write(media::path("aes.key"), [0x42u8; 16]).unwrap();
    std::fs::write(media::path("aes.keyinfo"), format!("aes.key\n{}\n", media::path("aes.key").display())).unwrap();
    let keyinfo = media::path("aes.keyinfo").display().to_string();
    let (url, files) = serve_files(&rig, "aes", &sine(520, 8), &[&["-c:a", "aac", "-b:a", "128k", "-hls_key_info_file", &keyinfo][..], &vod].concat());
    assert!(files.iter().any(|n| n == "/aes/aes.key"), "the playlist names its key: {files:?}");
    let conn = play(&rig, 7202, &url);
    let (_, end) = rig.session.wait_event("TrackEndEvent", 7202, Duration::from_secs(20)).expect("the AES track ends");
    assert_eq!(end["reason"], "finished", "{end}");
    let (tone, gap) = heard(&conn);
    assert!(tone.packets().abs_diff(400) <= 15, "{} audible packets of 400", tone.packets());
    assert!(gap < MAX_GAP, "a gap of {gap:?}");
    assert!((tone.dominant_frequency() - 520.0).abs() < 10.0);
    // Fetched once, not once per segment.
    assert_eq!(rig.media.hits("/aes/aes.key").len(), 2, "one load, one play");
}

#[test]
fn seek_inside_a_vod_playlist_lands_within_100_ms() {
    let rig = rig(1);
    // The tone steps up 100 Hz every second: 400 Hz in second 0, 1100 Hz in second 7...
    let input: Vec<String> = ["-f", "lavfi", "-i", "aevalsrc=0.5*sin(2*PI*(400+100*floor(t))*t):s=44100:d=12", "-ac", "2"].map(String::from).to_vec();
    let url = serve(&rig, "steps", &input, &["-c:a", "aac", "-b:a", "160k", "-hls_time", "2", "-hls_playlist_type", "vod"]);
    let conn = play(&rig, 7301, &url);
    assert!(conn.wait_packets(100, Duration::from_secs(10)));
    let before = conn.audio().packets();
    let (status, player) = rig.session.patch(7301, json!({"position": 7300}));
    assert_eq!(status, 200, "{player}");
    let seeked = Instant::now();
    assert!(conn.wait_packets(before + 120, Duration::from_secs(10)));
    let frames = conn.audio().frames()[before..].to_vec();
    let freq = |f: &caldera_tests::voice::Frame| Audio::new_from(vec![f.clone()]).dominant_frequency();
    let near = |f: f64, want: f64| (f - want).abs() < 40.0;
    // Skip what was on its way before the seek; then 1100 Hz should last 700 ms (35 frames).
    let start = frames.iter().take(15).position(|f| near(freq(f), 1100.0)).expect("the seek lands in second 7");
    let run = frames[start..].iter().take_while(|f| !near(freq(f), 1200.0)).count();
    assert!(run.abs_diff(35) <= 5, "second 7 lasted {run} frames after the seek to 7.3 s (35 expected)");
    // The position runs on from the target.
    let (_, p) = rig.session.get_player(7301);
    let expected = 7300 + seeked.elapsed().as_millis() as i64;
    let position = p["state"]["position"].as_i64().unwrap();
    assert!((position - expected).abs() < 300, "position {position}, expected about {expected}");
}

#[test]
fn a_live_playlist_plays_continuously_and_follows_its_edge() {
    let rig = rig(1);
    // 60 s of 2 s segments; the "live" playlist shows a window of 6 of them that moves by one
    // every 2 s, as a live origin does.
    let (_, files) = hls("live_src", &sine(600, 60).iter().map(String::as_str).collect::<Vec<_>>(), &["-c:a", "aac", "-b:a", "128k", "-hls_time", "2", "-hls_playlist_type", "vod"]);
    let segments: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    for (name, bytes) in files {
        rig.media.route(&format!("/live/{name}"), Route::file(bytes, "video/mp2t"));
    }
    let window = |first: usize| {
        let mut text = format!("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:{first}\n");
        for s in &segments[first..first + 6] {
            text.push_str(&format!("#EXTINF:2.0,\n{s}\n"));
        }
        text
    };
    let publish = |first: usize| rig.media.route("/live/index.m3u8", Route::file(window(first).into_bytes(), "application/vnd.apple.mpegurl"));
    publish(0);
    let url = rig.media.url("/live/index.m3u8");
    let t = load_track(&rig, &url);
    assert_eq!((t["info"]["isStream"].as_bool(), t["info"]["isSeekable"].as_bool()), (Some(true), Some(false)), "{t}");
    let started = Instant::now();
    let conn = std::thread::scope(|s| {
        let origin = s.spawn(|| {
            for first in 1..=18 {
                std::thread::sleep(Duration::from_secs(2));
                publish(first);
            }
        });
        let conn = play(&rig, 7401, &url);
        assert!(conn.wait_packets(1500, Duration::from_secs(40)), "30 s of live audio");
        origin.join().unwrap();
        conn
    });
    let audio = conn.audio();
    let steady = audio.slice(Duration::ZERO, Duration::from_secs(30));
    assert!(steady.max_gap() < MAX_GAP, "a gap of {:?}", steady.max_gap());
    assert!(steady.non_silent().packets() >= 1480, "{} audible packets in 30 s", steady.non_silent().packets());
    assert!((steady.non_silent().dominant_frequency() - 600.0).abs() < 10.0);
    // It started three target durations from the end of the first window (segment 3), not at
    // its start, and fetched every segment after that once, in order.
    let fetched: Vec<usize> = segments.iter().enumerate().filter(|(_, s)| !rig.media.hits(&format!("/live/{s}")).is_empty()).map(|(i, _)| i).collect();
    assert_eq!(fetched.first(), Some(&3), "{fetched:?}");
    assert!(fetched.windows(2).all(|w| w[1] == w[0] + 1), "{fetched:?}");
    assert!(*fetched.last().unwrap() >= 16, "followed the edge: {fetched:?} after {:?}", started.elapsed());
    let reloads = rig.media.hits("/live/index.m3u8").len();
    assert!((10..=40).contains(&reloads), "{reloads} playlist loads in ~32 s (target duration 2 s)");
}

#[test]
fn a_segment_that_keeps_failing_ends_the_track_with_an_exception() {
    let rig = rig(1);
    let url = serve(&rig, "broken", &sine(450, SECONDS), &["-c:a", "aac", "-b:a", "128k", "-hls_time", "2", "-hls_playlist_type", "vod"]);
    rig.media.route("/broken/broken_003.ts", Route::Status(404));
    let conn = play(&rig, 7501, &url);
    let (_, exception) = rig.session.wait_event("TrackExceptionEvent", 7501, Duration::from_secs(20)).expect("an exception");
    assert_eq!(exception["exception"]["severity"], "suspicious", "{exception}");
    assert!(exception["exception"]["cause"].as_str().unwrap().contains("broken_003.ts"), "{exception}");
    let (_, end) = rig.ended(7501, Duration::from_secs(5));
    assert_eq!(end["reason"], "loadFailed", "{end}");
    // The three segments before it played; the request was tried more than once.
    let (tone, _) = heard(&conn);
    assert!(tone.packets() >= 280, "{} audible packets before the failure", tone.packets());
    assert!(rig.media.hits("/broken/broken_003.ts").len() >= 3);
}

#[test]
fn malformed_playlists_fail_cleanly() {
    let rig = rig(1);
    let error = |path: &str, text: String| {
        rig.media.route(path, Route::file(text.into_bytes(), "application/vnd.apple.mpegurl"));
        let res = rig.node.load(&rig.media.url(path));
        assert_eq!(res["loadType"], "error", "{path}: {res}");
        res["data"]["message"].as_str().unwrap().to_string()
    };
    // A master playlist whose variant is a master playlist (a loop).
    let own = rig.media.url("/loop.m3u8");
    assert_eq!(error("/loop.m3u8", format!("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n{own}\n")), "The HLS playlist is malformed.");
    assert_eq!(error("/absurd.m3u8", "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:1e308,\ns.ts\n#EXT-X-ENDLIST\n".into()), "The HLS playlist is malformed.");
    let million = format!("#EXTM3U\n#EXT-X-TARGETDURATION:2\n{}", "#EXTINF:2,\ns.ts\n".repeat(1_000_000));
    assert_eq!(error("/million.m3u8", million), "The playlist is too large.");
    let many = format!("#EXTM3U\n#EXT-X-TARGETDURATION:2\n{}", "#EXTINF:2,\ns.ts\n".repeat(60_000));
    assert_eq!(error("/many.m3u8", many), "The HLS playlist is malformed.");
    assert_eq!(error("/empty.m3u8", "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-ENDLIST\n".into()), "The HLS playlist is empty.");
    // Segments that are not audio.
    rig.media.route("/junk/s.ts", Route::file(vec![0x47; 188 * 10], "video/mp2t"));
    assert_eq!(error("/junk/index.m3u8", "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\ns.ts\n#EXT-X-ENDLIST\n".into()), "An HLS segment could not be read.");
    // The node carries on.
    let (status, _) = rig.session.patch(7601, json!({"volume": 50}));
    assert_eq!(status, 200);
}

#[test]
fn radio_links_play_by_identifier() {
    let rig = rig(1);
    let mp3 = media::tone("radio.mp3", 700, 30, &["-c:a", "libmp3lame", "-b:a", "128k"]);
    rig.media.route("/station.mp3", Route::file(mp3, "audio/mpeg"));
    let m3u = format!("#EXTM3U\n#EXTINF:-1,Caldera FM\n{}\n", rig.media.url("/station.mp3"));
    rig.media.route("/listen.m3u", Route::file(m3u.into_bytes(), "audio/x-mpegurl"));
    let pls = format!("[playlist]\nNumberOfEntries=1\nFile1={}\nTitle1=Caldera FM\n", rig.media.url("/station.mp3"));
    rig.media.route("/listen.pls", Route::file(pls.into_bytes(), "audio/x-scpls"));
    for (guild, link) in [(7701u64, "/listen.m3u"), (7702, "/listen.pls")] {
        let url = rig.media.url(link);
        let t = load_track(&rig, &url);
        assert_eq!(t["info"]["uri"], rig.media.url("/station.mp3"), "{link}: {t}");
        assert_eq!(t["info"]["title"], "Caldera FM", "{link}: the listed title fills in");
        let conn = play(&rig, guild, &url);
        assert!(conn.wait_packets(100, Duration::from_secs(10)));
        let f = conn.audio().non_silent().dominant_frequency();
        assert!((f - 700.0).abs() < 10.0, "{link}: {f:.1} Hz");
    }
}

#[test]
fn every_hls_request_leaves_from_the_route_planners_address() {
    let planner = "    ratelimit:\n      ipBlocks: [\"127.0.0.0/28\"]\n      excludedIps: [\"127.0.0.1\"]\n      strategy: RotateOnBan\n";
    let rig = caldera_tests::rig::rig_with(1, planner);
    // The planner's first address is rate limited: it moves on to the next, and stays there.
    let banned: std::net::IpAddr = "127.0.0.0".parse().unwrap();
    rig.media.rate_limit(move |peer| peer == banned);
    let (url, files) = serve_files(&rig, "planned", &sine(480, 6), &["-c:a", "aac", "-b:a", "96k", "-hls_time", "2", "-hls_playlist_type", "vod"]);
    load_track(&rig, &url);
    let conn = play(&rig, 7801, &url);
    rig.ended(7801, Duration::from_secs(20));
    assert!(conn.audio().non_silent().packets() >= 280);
    let mut paths = vec!["/planned/index.m3u8".to_string()];
    paths.extend(files);
    let used: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    for path in paths {
        let peers = rig.media.peers(&path);
        assert!(!peers.is_empty(), "{path} was fetched");
        assert!(peers.iter().all(|p| *p == used || *p == banned), "{path}: {peers:?}");
        assert_eq!(peers.last(), Some(&used), "{path}: {peers:?}");
    }
}

#[test]
fn fmp4_opus_segments_pass_through_untouched() {
    let rig = rig(1);
    let input: Vec<String> = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=8", "-ac", "2"].map(String::from).to_vec();
    let args = ["-c:a", "libopus", "-b:a", "96k", "-frame_duration", "20", "-hls_segment_type", "fmp4", "-hls_time", "2", "-hls_playlist_type", "vod"];
    let (text, files) = hls("fmp4_opus", &input.iter().map(String::as_str).collect::<Vec<_>>(), &args);
    assert!(text.contains("#EXT-X-MAP"), "{text}");
    // The source's Opus packets: the init section and the fragments read as one file.
    let whole: Vec<u8> = files.iter().flat_map(|(_, b)| b.clone()).collect();
    let source: std::collections::HashSet<Vec<u8>> = media::packets(&whole, "mp4").into_iter().collect();
    assert!(!source.is_empty());
    let url = serve(&rig, "fmp4_opus", &input, &args);
    let conn = play(&rig, 7901, &url);
    rig.ended(7901, Duration::from_secs(20));
    let (tone, gap) = heard(&conn);
    let same = tone.frames().iter().filter(|f| source.contains(&*f.opus)).count();
    assert!(tone.packets() >= 390 && same == tone.packets(), "{same} of {} audible frames were the source's own", tone.packets());
    assert!(gap < MAX_GAP, "a gap of {gap:?}");
    assert!((tone.dominant_frequency() - 440.0).abs() < 9.0);
}

#[test]
fn a_live_playlist_that_stops_advancing_is_stuck_then_ends() {
    let rig = rig(1);
    let (text, files) = hls("frozen_src", &sine(620, 12).iter().map(String::as_str).collect::<Vec<_>>(), &["-c:a", "aac", "-b:a", "96k", "-hls_time", "2", "-hls_playlist_type", "vod"]);
    for (name, bytes) in files {
        rig.media.route(&format!("/frozen/{name}"), Route::file(bytes, "video/mp2t"));
    }
    // The same segments as a live playlist that never changes.
    let live: String = text.lines().filter(|l| !l.contains("ENDLIST") && !l.contains("PLAYLIST-TYPE")).map(|l| format!("{l}\n")).collect();
    rig.media.route("/frozen/index.m3u8", Route::file(live.into_bytes(), "application/vnd.apple.mpegurl"));
    // It starts three target durations (6 s) from the end: what is after that plays.
    let durations: Vec<f64> = text.lines().filter_map(|l| l.strip_prefix("#EXTINF:")?.trim_end_matches(',').parse().ok()).collect();
    let mut edge = 0.0;
    for d in durations.iter().rev() {
        edge += d;
        if edge >= 6.0 {
            break;
        }
    }
    let url = rig.media.url("/frozen/index.m3u8");
    let started = Instant::now();
    let conn = play(&rig, 7951, &url);
    rig.session.wait_event("TrackStuckEvent", 7951, Duration::from_secs(30)).expect("stuck once the live edge is played");
    let (_, exception) = rig.session.wait_event("TrackExceptionEvent", 7951, Duration::from_secs(40)).expect("then an exception");
    assert_eq!(exception["exception"]["message"], "The live stream stopped updating.", "{exception}");
    let (_, end) = rig.ended(7951, Duration::from_secs(5));
    assert_eq!(end["reason"], "loadFailed");
    assert!(started.elapsed() >= Duration::from_secs(30), "the stream was given 30 s to advance");
    let expected = (edge * 50.0).round() as usize;
    assert!(conn.audio().non_silent().packets().abs_diff(expected) <= 15, "{} audible packets of {expected}", conn.audio().non_silent().packets());
}
