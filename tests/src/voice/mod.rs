//! A fake Discord voice server (voice gateway v4 + UDP media) for end-to-end tests, speaking
//! exactly what songbird 0.6.1 needs (see `discord-voice-notes.md`).
//!
//! ```no_run
//! use std::time::Duration;
//! use caldera_tests::voice::VoiceServer;
//!
//! let voice = VoiceServer::start();
//! // Give the connecting process the test CA: SSL_CERT_FILE=<voice.ca_file()>
//! // (voice.ssl_cert_env() for a child process, voice.trust_in_this_process() for an
//! // in-process client), and use voice.endpoint() as the Lavalink `voice.endpoint`.
//! let conn = voice.wait_connection(1234, Duration::from_secs(10));
//! assert!(conn.wait_packets(100, Duration::from_secs(10)));
//! let audio = conn.audio().non_silent();
//! assert!((audio.dominant_frequency() - 440.0).abs() < 8.8);
//! ```
//!
//! What it does:
//! * TLS websocket on `127.0.0.1:<port>` with a certificate for `localhost`/`127.0.0.1` issued by
//!   a per-process test CA; any request path is accepted (recorded in [`Connection::ws_path`]).
//! * op 0 Identify → op 8 Hello `{heartbeat_interval: 1000}` + op 2 Ready `{ssrc, ip: 127.0.0.1,
//!   port, modes: [aead_aes256_gcm_rtpsize, aead_xchacha20_poly1305_rtpsize]}`; a new
//!   [`Connection`] (distinct SSRC) per Identify.
//! * op 1 Select Protocol → op 4 Session Description `{mode, secret_key (random), dave_protocol_version: 0}`
//!   (unknown mode → close 4016); op 3 → op 6 with the same nonce; op 5 recorded; op 7 Resume of a
//!   known `(server_id, session_id)` → op 8 + op 9, re-attaching the websocket to the existing
//!   [`Connection`] (unknown session → close 4006). Other ops are recorded in
//!   [`Connection::other_messages`].
//! * DAVE (end-to-end encryption over MLS) when a test asks for it
//!   ([`VoiceServer::enable_dave`]): op 4 offers protocol 1, and the double is the call's voice
//!   server and its other member ([`PEER_USER_ID`]): it welcomes the client into the MLS group,
//!   decrypts its frames and counts what arrived encrypted and plain ([`Connection::dave`]); tests
//!   can add a member, downgrade, prepare a new epoch or send an invalid commit. See `dave.rs`.
//! * One UDP socket for every connection: IP discovery answered from it, 4-byte keepalives
//!   counted and echoed, RTP routed by SSRC, decrypted, decoded by libopus (48 kHz stereo) and
//!   stored (capped at 10 minutes per connection, see [`VoiceServer::set_audio_cap`]).

mod analysis;
mod connection;
mod dave;
mod dave_peer;
mod rtp;
mod server;
mod tls;

pub use analysis::{dominant_frequency, Audio, Frame, FRAME_SAMPLES, SAMPLE_RATE, SILENCE_DBFS};
pub use connection::{Connection, DaveCounters, Identify};
pub use dave::{FIRST_ADDED_USER_ID, PEER_USER_ID};
pub use rtp::{MODE_AES256_GCM, MODE_XCHACHA20};
pub use server::{VoiceServer, DEFAULT_AUDIO_CAP, HEARTBEAT_INTERVAL_MS};
