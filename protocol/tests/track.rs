use base64::Engine;
use caldera_protocol::track::{decode_modified_utf8, encode_modified_utf8, STREAM_LENGTH};
use caldera_protocol::{TrackData, TrackError, TrackInfo};
use proptest::prelude::*;

/// The example track in Lavalink's REST docs (a version 2 track).
const DOCS_EXAMPLE: &str = "QAAAjQIAJVJpY2sgQXN0bGV5IC0gTmV2ZXIgR29ubmEgR2l2ZSBZb3UgVXAADlJpY2tBc3RsZXlWRVZPAAAAAAADPCAAC2RRdzR3OVdnWGNRAAEAK2h0dHBzOi8vd3d3LnlvdXR1YmUuY29tL3dhdGNoP3Y9ZFF3NHc5V2dYY1EAB3lvdXR1YmUAAAAAAAAAAA==";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn raw(encoded: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(encoded).unwrap()
}

fn info(title: &str) -> TrackInfo {
    TrackInfo {
        title: title.into(),
        author: "Author".into(),
        length: 212_000,
        identifier: "https://example.com/a.mp3".into(),
        is_stream: false,
        uri: Some("https://example.com/a.mp3".into()),
        artwork_url: None,
        isrc: Some("USRC17607839".into()),
        source_name: "http".into(),
        position: 0,
    }
}

#[test]
fn docs_example_decodes_to_the_documented_fields() {
    let t = TrackData::decode(DOCS_EXAMPLE).unwrap();
    assert_eq!(t.info.title, "Rick Astley - Never Gonna Give You Up");
    assert_eq!(t.info.author, "RickAstleyVEVO");
    assert_eq!(t.info.length, 212_000);
    assert_eq!(t.info.identifier, "dQw4w9WgXcQ");
    assert!(!t.info.is_stream);
    assert_eq!(t.info.uri.as_deref(), Some("https://www.youtube.com/watch?v=dQw4w9WgXcQ"));
    assert_eq!(t.info.source_name, "youtube");
    assert_eq!(t.info.position, 0);
    // The docs show an artworkUrl, but this string is version 2, which has no artwork or ISRC
    // field: Lavaplayer decodes both as null, and so do we.
    assert_eq!(raw(DOCS_EXAMPLE)[4], 2);
    assert_eq!(t.info.artwork_url, None);
    assert_eq!(t.info.isrc, None);
    // youtube's source-specific part is empty.
    assert!(t.source_data.is_empty());
    // Re-encoded as version 3 it still decodes to the same track.
    let again = TrackData::decode(&t.encode().unwrap()).unwrap();
    assert_eq!(again, t);
}

#[test]
fn version_1_tracks_decode() {
    // Build a version 1 (unversioned) track by hand: flags 0, no version byte, no uri.
    let mut p = Vec::new();
    for s in ["Title", "Author"] {
        p.extend_from_slice(&(s.len() as u16).to_be_bytes());
        p.extend_from_slice(s.as_bytes());
    }
    p.extend_from_slice(&1234i64.to_be_bytes());
    p.extend_from_slice(&[0, 2, b'i', b'd', 1]);
    p.extend_from_slice(&[0, 4]);
    p.extend_from_slice(b"http");
    p.extend_from_slice(&[0, 3, b'm', b'p', b'3']);
    p.extend_from_slice(&5000i64.to_be_bytes());
    let mut bytes = (p.len() as u32).to_be_bytes().to_vec();
    bytes.extend(p);
    let t = TrackData::decode(&b64(&bytes)).unwrap();
    assert_eq!(t.info.title, "Title");
    assert_eq!(t.info.length, 1234);
    assert!(t.info.is_stream);
    assert_eq!(t.info.uri, None);
    assert_eq!(t.probe_info().as_deref(), Some("mp3"));
    assert_eq!(t.info.position, 5000);
}

#[test]
fn caldera_writes_version_3_with_probe_info() {
    let t = TrackData::with_probe_info(info("Song"), "mp3").unwrap();
    let encoded = t.encode().unwrap();
    let bytes = raw(&encoded);
    let header = u32::from_be_bytes(bytes[..4].try_into().unwrap());
    assert_eq!(header >> 30, 1, "versioned flag");
    assert_eq!((header & 0x3FFF_FFFF) as usize, bytes.len() - 4);
    assert_eq!(bytes[4], 3);
    let back = TrackData::decode(&encoded).unwrap();
    assert_eq!(back, t);
    assert_eq!(back.probe_info().as_deref(), Some("mp3"));
    // Encoding is deterministic: the same track gives the same string.
    assert_eq!(back.encode().unwrap(), encoded);
}

#[test]
fn round_trips_awkward_strings() {
    for title in ["", "🎵 emoji 🎶", "nul\0inside", "ünïcödé ß 漢字", "\u{FFFF}\u{10FFFF}"] {
        let mut i = info(title);
        i.author = title.into();
        i.artwork_url = Some(title.into());
        i.length = STREAM_LENGTH;
        i.is_stream = true;
        i.position = 999;
        let t = TrackData::with_probe_info(i, title).unwrap();
        assert_eq!(TrackData::decode(&t.encode().unwrap()).unwrap(), t, "{title:?}");
    }
    // NUL is written as C0 80, never as a raw zero byte; non-BMP as two 3-byte surrogates.
    assert_eq!(encode_modified_utf8("\0"), [0xC0, 0x80]);
    assert_eq!(encode_modified_utf8("🎵"), [0xED, 0xA0, 0xBC, 0xED, 0xBE, 0xB5]);
    assert_eq!(decode_modified_utf8(&[0xED, 0xA0, 0xBC, 0xED, 0xBE, 0xB5]).as_deref(), Some("🎵"));
}

#[test]
fn the_65535_byte_limit() {
    let fits = "a".repeat(65535);
    let t = TrackData::with_probe_info(info(&fits), "mp3").unwrap();
    assert_eq!(TrackData::decode(&t.encode().unwrap()).unwrap().info.title, fits);
    // 21845 three-byte characters are exactly 65535 bytes.
    let fits3 = "€".repeat(21845);
    let t = TrackData::with_probe_info(info(&fits3), "mp3").unwrap();
    assert_eq!(TrackData::decode(&t.encode().unwrap()).unwrap().info.title, fits3);
    let too_long = TrackData::with_probe_info(info(&"a".repeat(65536)), "mp3").unwrap();
    assert_eq!(too_long.encode(), Err(TrackError::TooLong("title", 65536)));
    // NUL takes two bytes: 32768 of them do not fit.
    let nuls = TrackData::with_probe_info(info(&"\0".repeat(32768)), "mp3").unwrap();
    assert!(matches!(nuls.encode(), Err(TrackError::TooLong("title", 65536))));
}

#[test]
fn malformed_input_gives_clean_errors() {
    assert!(matches!(TrackData::decode("not base64!!"), Err(TrackError::Base64(_))));
    assert!(matches!(TrackData::decode(""), Err(TrackError::TooShort(0))));
    assert!(matches!(TrackData::decode("QUJD"), Err(TrackError::TooShort(3))));

    let good = raw(&TrackData::with_probe_info(info("Song"), "mp3").unwrap().encode().unwrap());
    // Every truncation, with the header left as it was: the declared size no longer fits.
    for cut in 4..good.len() {
        let err = TrackData::decode(&b64(&good[..cut])).unwrap_err();
        assert!(matches!(err, TrackError::DeclaredTooLarge { .. }), "cut {cut}: {err}");
    }
    // Every truncation with the header fixed up: a field runs out. Source-specific bytes have no
    // length of their own (they end 8 bytes before the payload does), so a cut inside them or the
    // position can still parse — but then the http probe info is no longer valid.
    let fixed_fields_end = good.len() - 8 - 5; // probe info "mp3" is 2 + 3 bytes
    for cut in 5..good.len() {
        let mut bytes = good[..cut].to_vec();
        let header = ((cut - 4) as u32) | (1 << 30);
        bytes[..4].copy_from_slice(&header.to_be_bytes());
        match TrackData::decode(&b64(&bytes)) {
            Err(err) => assert!(matches!(err, TrackError::Truncated(_)), "cut {cut}: {err}"),
            Ok(t) => {
                assert!(cut >= fixed_fields_end, "cut {cut} parsed");
                assert_eq!(t.probe_info(), None, "cut {cut}");
            }
        }
    }
    // A huge declared size is refused before anything else.
    let mut huge = good.clone();
    huge[..4].copy_from_slice(&(0x3FFF_FFFFu32 | 1 << 30).to_be_bytes());
    assert!(matches!(TrackData::decode(&b64(&huge)), Err(TrackError::DeclaredTooLarge { declared: 0x3FFF_FFFF, .. })));
    // Unknown version.
    let mut v9 = good.clone();
    v9[4] = 9;
    assert_eq!(TrackData::decode(&b64(&v9)), Err(TrackError::Version(9)));
    // A title whose declared length overruns the payload.
    let mut long_title = good.clone();
    long_title[5..7].copy_from_slice(&60000u16.to_be_bytes());
    assert_eq!(TrackData::decode(&b64(&long_title)), Err(TrackError::Truncated("title")));
    // Invalid modified UTF-8 in the title ("Song" is at bytes 7..11).
    for bad in [[0x00, b'o', b'n', b'g'], [0xF0, 0x9F, 0x8E, 0xB5], [0x80, b'o', b'n', b'g'], [0xED, 0xA0, 0x80, b'g']] {
        let mut b = good.clone();
        b[7..11].copy_from_slice(&bad);
        assert_eq!(TrackData::decode(&b64(&b)), Err(TrackError::Utf("title")), "{bad:x?}");
    }
    // Negative length.
    let mut neg = good.clone();
    let at = 7 + 4 + 2 + 6; // title, then author "Author"
    neg[at..at + 8].copy_from_slice(&(-5i64).to_be_bytes());
    assert_eq!(TrackData::decode(&b64(&neg)), Err(TrackError::Negative("length")));
}

#[test]
fn trailing_bytes_after_the_payload_are_ignored_like_lavaplayer() {
    let t = TrackData::with_probe_info(info("Song"), "flac").unwrap();
    let mut bytes = raw(&t.encode().unwrap());
    bytes.extend_from_slice(b"junk");
    assert_eq!(TrackData::decode(&b64(&bytes)).unwrap(), t);
    // Unpadded base64 is accepted, as Java's decoder does.
    let unpadded = t.encode().unwrap().trim_end_matches('=').to_string();
    assert_eq!(TrackData::decode(&unpadded).unwrap(), t);
}

fn arb_text() -> impl Strategy<Value = String> {
    proptest::string::string_regex("(.|\\PC|\\x00){0,40}").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = TrackData::decode(&b64(&bytes));
    }

    #[test]
    fn decoder_never_panics_on_mutated_tracks(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let mut bytes = raw(&TrackData::with_probe_info(info("Song"), "mp3").unwrap().encode().unwrap());
        for (i, v) in flips {
            let n = bytes.len();
            bytes[i % n] ^= v;
        }
        let _ = TrackData::decode(&b64(&bytes));
    }

    #[test]
    fn arbitrary_tracks_round_trip(title in arb_text(), author in arb_text(), probe in arb_text(), uri in proptest::option::of(arb_text()),
                                   length in 0u64..=i64::MAX as u64, position in 0u64..=i64::MAX as u64, stream in any::<bool>()) {
        let i = TrackInfo { title, author, length, identifier: "x".into(), is_stream: stream, uri, artwork_url: None, isrc: None, source_name: "local".into(), position };
        let t = TrackData::with_probe_info(i, &probe).unwrap();
        let back = TrackData::decode(&t.encode().unwrap()).unwrap();
        prop_assert_eq!(back.probe_info(), Some(probe));
        prop_assert_eq!(back, t);
    }
}
