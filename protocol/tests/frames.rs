use caldera_protocol::frame::{self, read_frame, write_frame, FrameDecoder, FrameError};
use caldera_protocol::*;
use proptest::prelude::*;

fn hello() -> ToGateway {
    ToGateway::Hello(WorkerHello {
        protocol_version: build::PROTOCOL_VERSION,
        build_id: build::BUILD_ID.into(),
        worker_id: 3,
        pid: 4242,
        token: "t0k3n".into(),
    })
}

#[test]
fn round_trip_every_message() {
    let to_gateway = vec![
        hello(),
        ToGateway::Pong { seq: u64::MAX },
        ToGateway::Resources(ResourceReport { rss_bytes: 1 << 40, cpu_time_ms: 7, threads: 9 }),
        ToGateway::Log { severity: Severity::Error, message: "ünïcødé 🎵".into() },
        ToGateway::RouteAcquire { id: 3 },
        ToGateway::RouteFailed { id: 3, search: true },
    ];
    let to_worker = vec![
        ToWorker::Hello(GatewayHello { protocol_version: 1, build_id: "x".into(), worker_id: 0, pid: 1 }),
        ToWorker::Ping { seq: 0 },
        ToWorker::Shutdown { reason: String::new() },
        ToWorker::RouteLease { id: 3, address: Ok("2001:db8::1".parse().unwrap()) },
        ToWorker::RouteLease { id: 4, address: Err("Can't find a free ip".into()) },
    ];
    let mut stream = Vec::new();
    for m in &to_gateway {
        write_frame(&mut stream, m, MAX_FRAME_LEN).unwrap();
    }
    let mut cursor = std::io::Cursor::new(stream);
    for m in &to_gateway {
        assert_eq!(read_frame::<ToGateway>(&mut cursor, MAX_FRAME_LEN).unwrap().as_ref(), Some(m));
    }
    assert!(read_frame::<ToGateway>(&mut cursor, MAX_FRAME_LEN).unwrap().is_none());

    let mut dec = FrameDecoder::new(MAX_FRAME_LEN);
    for m in &to_worker {
        // Feed one byte at a time: partial frames must wait, not fail.
        for b in frame::encode(m, MAX_FRAME_LEN).unwrap() {
            dec.push(&[b]);
        }
        assert_eq!(dec.next_message::<ToWorker>().unwrap().as_ref(), Some(m));
        assert!(dec.next_message::<ToWorker>().unwrap().is_none());
    }
    dec.finish().unwrap();
}

#[test]
fn header_is_u32_little_endian_length() {
    let bytes = frame::encode(&ToWorker::Ping { seq: 5 }, MAX_FRAME_LEN).unwrap();
    let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    assert_eq!(len, bytes.len() - 4);
}

#[test]
fn truncated_frame_is_an_error() {
    let bytes = frame::encode(&hello(), MAX_FRAME_LEN).unwrap();
    for cut in 1..bytes.len() {
        let err = read_frame::<ToGateway>(&mut &bytes[..cut], MAX_FRAME_LEN).unwrap_err();
        assert!(matches!(err, FrameError::Truncated { .. }), "cut {cut}: {err}");
        let mut dec = FrameDecoder::new(MAX_FRAME_LEN);
        dec.push(&bytes[..cut]);
        assert!(dec.next_message::<ToGateway>().unwrap().is_none());
        assert!(matches!(dec.finish(), Err(FrameError::Truncated { .. })));
    }
}

#[test]
fn oversize_length_is_rejected_before_allocating() {
    // A header claiming 4 GiB with no payload behind it: must fail on the header alone.
    let bytes = u32::MAX.to_le_bytes();
    let err = read_frame::<ToGateway>(&mut &bytes[..], MAX_FRAME_LEN).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { len: u32::MAX, .. }));
    let mut dec = FrameDecoder::new(HELLO_MAX_FRAME_LEN);
    dec.push(&(HELLO_MAX_FRAME_LEN + 1).to_le_bytes());
    assert!(matches!(dec.next_message::<ToGateway>(), Err(FrameError::TooLarge { .. })));
    // And the encoder refuses to produce one.
    let big = ToGateway::Log { severity: Severity::Warn, message: "x".repeat(5000) };
    assert!(matches!(frame::encode(&big, HELLO_MAX_FRAME_LEN), Err(FrameError::TooLarge { .. })));
}

#[test]
fn garbage_and_trailing_bytes_are_errors() {
    let mut bytes = frame::encode(&ToWorker::Ping { seq: 1 }, MAX_FRAME_LEN).unwrap();
    bytes.push(0);
    let len = (bytes.len() - 4) as u32;
    bytes[..4].copy_from_slice(&len.to_le_bytes());
    assert!(matches!(
        read_frame::<ToWorker>(&mut &bytes[..], MAX_FRAME_LEN),
        Err(FrameError::TrailingBytes(1))
    ));
    // Variant index 200 does not exist.
    let bad = [1, 0, 0, 0, 200];
    assert!(matches!(read_frame::<ToWorker>(&mut &bad[..], MAX_FRAME_LEN), Err(FrameError::Decode(_))));
    // A string claiming far more bytes than the frame holds.
    let bad = [6, 0, 0, 0, 3, 1, 0xff, 0xff, 0xff, 0x0f];
    assert!(read_frame::<ToGateway>(&mut &bad[..], MAX_FRAME_LEN).is_err());
}

#[cfg(feature = "tokio")]
#[tokio::test]
async fn async_halves_round_trip() {
    use caldera_protocol::channel::{FrameReader, FrameWriter};
    let (a, b) = tokio::io::duplex(64);
    let mut w = FrameWriter::<ToGateway, _>::new(a, MAX_FRAME_LEN);
    let mut r = FrameReader::<ToGateway, _>::new(b, MAX_FRAME_LEN);
    let sent = hello();
    let expect = sent.clone();
    let writer = tokio::spawn(async move {
        w.send(&sent).await.unwrap();
        w.send(&ToGateway::Pong { seq: 9 }).await.unwrap();
    });
    assert_eq!(r.recv().await.unwrap(), Some(expect));
    assert_eq!(r.recv().await.unwrap(), Some(ToGateway::Pong { seq: 9 }));
    writer.await.unwrap();
    assert_eq!(r.recv().await.unwrap(), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary bytes never panic the decoders, whatever the limit.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), max in 0u32..1024) {
        let _ = read_frame::<ToGateway>(&mut &bytes[..], max);
        let _ = read_frame::<ToWorker>(&mut &bytes[..], max);
        let mut dec = FrameDecoder::new(max);
        dec.push(&bytes);
        while let Ok(Some(_)) = dec.next_message::<ToGateway>() {}
        let _ = dec.finish();
    }

    /// A valid frame with bytes flipped decodes to something or errors; never panics.
    #[test]
    fn mutated_frames_never_panic(seq in any::<u64>(), msg in ".{0,64}", flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut bytes = frame::encode(&ToGateway::Log { severity: Severity::Warn, message: msg }, MAX_FRAME_LEN).unwrap();
        bytes.extend(frame::encode(&ToGateway::Pong { seq }, MAX_FRAME_LEN).unwrap());
        for (i, v) in flips {
            let n = bytes.len();
            bytes[i % n] ^= v;
        }
        let mut cursor = &bytes[..];
        while let Ok(Some(_)) = read_frame::<ToGateway>(&mut cursor, MAX_FRAME_LEN) {}
    }

    #[test]
    fn round_trip_arbitrary(seq in any::<u64>(), rss in any::<u64>(), msg in ".{0,200}") {
        for m in [ToGateway::Pong { seq }, ToGateway::Resources(ResourceReport { rss_bytes: rss, cpu_time_ms: seq, threads: 1 }), ToGateway::Log { severity: Severity::Error, message: msg.clone() }] {
            let bytes = frame::encode(&m, MAX_FRAME_LEN).unwrap();
            prop_assert_eq!(read_frame::<ToGateway>(&mut &bytes[..], MAX_FRAME_LEN).unwrap(), Some(m));
        }
    }
}
