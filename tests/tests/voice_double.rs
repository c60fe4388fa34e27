//! Self-test of the fake Discord voice server: songbird 0.6.1 itself connects to it and plays.

use std::io::Cursor;
use std::num::NonZeroU64;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use caldera_tests::voice::{Audio, Connection, VoiceServer, MODE_AES256_GCM, MODE_XCHACHA20};
use songbird::driver::CryptoMode;
use songbird::id::{ChannelId, GuildId, UserId};
use songbird::input::RawAdapter;
use songbird::{Config, ConnectionInfo, Driver};

const USER_ID: u64 = 4242;

/// The one tokio runtime of all songbird drivers of this process: songbird's default mixer
/// scheduler is a process-wide static whose task lives on the runtime that created the first
/// `Driver`; dropping that runtime breaks every later `Driver` ("SendError" panics).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
    })
}

/// A songbird driver, as the worker runs one.
struct Client {
    rt: &'static tokio::runtime::Runtime,
    driver: Option<Driver>,
}

impl Client {
    fn connect(voice: &VoiceServer, guild: u64, mode: CryptoMode) -> Client {
        voice.trust_in_this_process();
        let rt = runtime();
        let info = ConnectionInfo {
            channel_id: ChannelId(NonZeroU64::new(guild + 1).unwrap()),
            endpoint: voice.endpoint(),
            guild_id: GuildId(NonZeroU64::new(guild).unwrap()),
            session_id: format!("session-{guild}"),
            token: format!("token-{guild}"),
            user_id: UserId(NonZeroU64::new(USER_ID).unwrap()),
        };
        let started = Instant::now();
        let driver = rt.block_on(async {
            let mut driver = Driver::new(Config::default().crypto_mode(mode));
            if let Err(e) = driver.connect(info).await {
                panic!("songbird could not connect: {e:?}; {}", voice.diagnostics());
            }
            driver
        });
        eprintln!("guild {guild}: songbird connected in {:?}", started.elapsed());
        Client { rt, driver: Some(driver) }
    }

    /// Plays `secs` of a stereo sine (f32 interleaved PCM through `RawAdapter`).
    fn play_sine(&mut self, freq: f64, secs: f64, amplitude: f32) {
        let n = (secs * 48_000.0) as usize;
        let mut bytes = Vec::with_capacity(n * 8);
        for i in 0..n {
            let v = (2.0 * std::f64::consts::PI * freq * i as f64 / 48_000.0).sin() as f32 * amplitude;
            bytes.extend_from_slice(&v.to_le_bytes());
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let _guard = self.rt.enter();
        let input = RawAdapter::new(Cursor::new(bytes), 48_000, 2);
        self.driver.as_mut().unwrap().play_input(input.into());
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _guard = self.rt.enter();
        if let Some(mut d) = self.driver.take() {
            d.leave();
        }
    }
}

fn assert_sine(conn: &Connection, freq: f64) -> Audio {
    assert!(conn.wait_packets(90, Duration::from_secs(15)), "only {} packets", conn.packets());
    // The 2 s track is over once songbird sends its 5 trailing silence frames.
    assert!(
        conn.wait_for(Duration::from_secs(10), |c| c.silence_frames() >= 5),
        "no trailing silence frames: {conn:?}"
    );
    let audio = conn.audio();
    let sound = audio.non_silent();
    let f = sound.dominant_frequency();
    let (l, r) = (sound.rms_dbfs(0), sound.rms_dbfs(1));
    let (p50, p99) = audio.jitter_ms();
    eprintln!(
        "ssrc {}: {} packets ({} audible, {} silence frames), {f:.2} Hz, RMS {l:.2}/{r:.2} dBFS, \
         max gap {:?}, jitter p50 {p50:.2} ms p99 {p99:.2} ms, {} seq gaps",
        conn.ssrc(),
        audio.packets(),
        sound.packets(),
        audio.silence_frames(),
        audio.max_gap(),
        audio.seq_gaps(),
    );
    assert!(audio.packets() >= 90, "{} packets", audio.packets());
    assert!(sound.packets() >= 90, "{} audible packets", sound.packets());
    assert!((f - freq).abs() < freq * 0.02, "dominant frequency {f} Hz, expected {freq}");
    // amplitude 0.5 sine: -9 dBFS.
    for rms in [l, r] {
        assert!((-12.0..-6.0).contains(&rms), "RMS {rms} dBFS");
    }
    assert!(audio.max_gap() < Duration::from_millis(100), "max gap {:?}", audio.max_gap());
    assert_eq!(conn.decrypt_errors(), 0);
    assert_eq!(conn.decode_errors(), 0);
    assert_eq!(audio.seq_gaps(), 0);
    let fr = &audio.frames()[0];
    assert_eq!(fr.pcm.len(), 960 * 2);
    for w in audio.frames().windows(2) {
        assert_eq!(w[1].timestamp.wrapping_sub(w[0].timestamp), 960);
    }
    audio
}

fn sine_with_mode(guild: u64, mode: CryptoMode, mode_name: &str) {
    let voice = VoiceServer::start();
    let mut client = Client::connect(&voice, guild, mode);
    let conn = voice.wait_connection(guild, Duration::from_secs(5));
    let id = conn.identify();
    assert_eq!(id.server_id, guild);
    assert_eq!(id.user_id, USER_ID);
    assert_eq!(id.session_id, format!("session-{guild}"));
    assert_eq!(id.token, format!("token-{guild}"));
    assert_eq!(id.max_dave_protocol_version, Some(1));
    assert_eq!(conn.ws_path(), "/?v=4");
    assert!(conn.wait_session(Duration::from_secs(5)));
    assert_eq!(conn.mode(), mode_name);
    assert_eq!(conn.selected_address().map(|a| a.0), Some("127.0.0.1".to_string()));
    assert!(conn.client_udp_addr().is_some());

    client.play_sine(440.0, 2.0, 0.5);
    assert_sine(&conn, 440.0);
    assert!(!conn.speaking_events().is_empty(), "no op 5 Speaking");
    assert_eq!(voice.unknown_packets(), 0);
    assert_eq!(voice.tls_failures(), 0);
    assert!(conn.heartbeats() >= 1, "no heartbeat in ~3 s with a 1 s interval");
    assert_eq!(conn.ws_closed(), None);
    drop(client);
}

#[test]
fn sine_aes256_gcm() {
    sine_with_mode(1001, CryptoMode::Aes256Gcm, MODE_AES256_GCM);
}

#[test]
fn sine_xchacha20_poly1305() {
    sine_with_mode(1002, CryptoMode::XChaCha20Poly1305, MODE_XCHACHA20);
}

#[test]
fn two_guilds_concurrently_have_separate_stats() {
    let voice = VoiceServer::start();
    let (g1, g2) = (2001, 2002);
    let (mut c1, mut c2) = std::thread::scope(|s| {
        let a = s.spawn(|| Client::connect(&voice, g1, CryptoMode::Aes256Gcm));
        let b = s.spawn(|| Client::connect(&voice, g2, CryptoMode::XChaCha20Poly1305));
        (a.join().unwrap(), b.join().unwrap())
    });
    let conn1 = voice.wait_connection(g1, Duration::from_secs(5));
    let conn2 = voice.wait_connection(g2, Duration::from_secs(5));
    assert_ne!(conn1.ssrc(), conn2.ssrc());
    assert!(conn1.wait_session(Duration::from_secs(5)) && conn2.wait_session(Duration::from_secs(5)));
    assert_eq!((conn1.mode().as_str(), conn2.mode().as_str()), (MODE_AES256_GCM, MODE_XCHACHA20));

    c1.play_sine(440.0, 2.0, 0.5);
    c2.play_sine(660.0, 2.0, 0.5);
    assert_sine(&conn1, 440.0);
    assert_sine(&conn2, 660.0);
    assert_eq!(voice.connections(g1).len(), 1);
    assert_eq!(voice.connections(g2).len(), 1);
    assert!(voice.connections(3003).is_empty());
}

#[test]
fn close_4014_ends_the_connection() {
    let voice = VoiceServer::start();
    let guild = 3001;
    let client = Client::connect(&voice, guild, CryptoMode::Aes256Gcm);
    let conn = voice.wait_connection(guild, Duration::from_secs(5));
    assert!(conn.wait_session(Duration::from_secs(5)));
    voice.close(guild, 4014, "Disconnected");
    assert_eq!(conn.ws_closed(), Some((4014, "Disconnected".to_string())));
    // 4014 is final for songbird: no resume, no new Identify.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(conn.resumes(), 0);
    assert!(!conn.ws_open());
    assert_eq!(voice.connections(guild).len(), 1);
    drop(client);
}

#[test]
fn close_4015_makes_songbird_resume() {
    let voice = VoiceServer::start();
    let guild = 3002;
    let mut client = Client::connect(&voice, guild, CryptoMode::Aes256Gcm);
    let conn = voice.wait_connection(guild, Duration::from_secs(5));
    assert!(conn.wait_session(Duration::from_secs(5)));
    voice.close(guild, 4015, "Voice server crashed");
    assert!(conn.wait_resumes(1, Duration::from_secs(10)), "no resume: {conn:?}");
    assert_eq!(conn.ws_closed(), None);
    assert_eq!(conn.ws_closes(), vec![(4015, "Voice server crashed".to_string())]);
    assert_eq!(voice.connections(guild).len(), 1);
    // Media keeps flowing on the same SSRC and key after the resume.
    client.play_sine(440.0, 2.0, 0.5);
    assert_sine(&conn, 440.0);
}

#[test]
fn wait_connection_explains_a_timeout() {
    let voice = VoiceServer::start();
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        voice.wait_connection(9, Duration::from_millis(50))
    }))
    .unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(msg.contains("guild 9") && msg.contains("TLS handshakes failed: 0"), "{msg}");
}
