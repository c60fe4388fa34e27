//! Per-frame cost of one player's audio path, by stage: decode (symphonia, through the worker's
//! own container detection and reader), resample 44.1 → 48 kHz (rubato, as the decoder thread
//! does), Opus encode (libopus via opus2, as the worker does: 48 kHz stereo, Audio).
//!
//!   cargo bench -p caldera-worker --bench frame_cost
//!
//! Prints nanoseconds per 20 ms frame and the share of the 20 ms budget of one core.

use caldera_worker::sources::{container, probe};
use rubato::{FftFixedIn, Resampler};
use std::io::Cursor;
use std::time::Instant;
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::DecoderOptions;

const FRAME: usize = 960;

fn main() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sine440.mp3");
    let bytes = std::fs::read(&path).expect("fixture");
    let rounds = 40;

    // Decode.
    let t = Instant::now();
    let mut pcm: Vec<f32> = Vec::new();
    let mut decoded_frames = 0usize;
    for round in 0..rounds {
        let c = container::detect(&bytes).expect("mp3");
        let (mut format, _) = probe::open_format(Box::new(Cursor::new(bytes.clone())), c).expect("open");
        let track = format.default_track().expect("track").clone();
        let mut dec = symphonia::default::get_codecs().make(&track.codec_params, &DecoderOptions::default()).expect("decoder");
        while let Ok(packet) = format.next_packet() {
            let buf = dec.decode(&packet).expect("decode");
            let mut sb = SampleBuffer::<f32>::new(buf.frames() as u64, *buf.spec());
            sb.copy_interleaved_ref(buf);
            decoded_frames += sb.samples().len() / 2;
            if round == 0 {
                pcm.extend_from_slice(sb.samples());
            }
        }
    }
    let decode_ns = t.elapsed().as_nanos() as f64 / (decoded_frames as f64 / 44_100.0 * 50.0);

    // Resample.
    let left: Vec<f32> = pcm.iter().step_by(2).copied().collect();
    let right: Vec<f32> = pcm.iter().skip(1).step_by(2).copied().collect();
    let mut resampler = FftFixedIn::<f32>::new(44_100, 48_000, 1024, 2, 2).expect("resampler");
    let t = Instant::now();
    let mut out_frames = 0usize;
    let mut out48: Vec<f32> = Vec::new();
    for round in 0..rounds {
        let mut pos = 0;
        loop {
            let need = resampler.input_frames_next();
            if pos + need > left.len() {
                break;
            }
            let out = resampler.process(&[&left[pos..pos + need], &right[pos..pos + need]], None).expect("resample");
            out_frames += out[0].len();
            if round == 0 {
                for (l, r) in out[0].iter().zip(&out[1]) {
                    out48.push(*l);
                    out48.push(*r);
                }
            }
            pos += need;
        }
    }
    let resample_ns = t.elapsed().as_nanos() as f64 / (out_frames as f64 / FRAME as f64);

    // Encode at three complexities: the general "audio" application (as the worker) and CELT
    // only, at 128 kbit/s (songbird's default) and at libopus's automatic bitrate (lavaplayer's).
    let frames: Vec<&[f32]> = out48.chunks_exact(FRAME * 2).collect();
    let encode = |application, complexity, bitrate| {
        let mut enc = opus2::Encoder::new(48_000, opus2::Channels::Stereo, application).expect("encoder");
        enc.set_bitrate(bitrate).expect("bitrate");
        enc.set_complexity(complexity).expect("complexity");
        let mut packet = vec![0u8; 4000];
        let t = Instant::now();
        let mut encoded = 0usize;
        for _ in 0..rounds {
            for f in &frames {
                enc.encode_float(f, &mut packet).expect("encode");
                encoded += 1;
            }
        }
        t.elapsed().as_nanos() as f64 / encoded as f64
    };
    let encode_ns = encode(opus2::Application::Audio, 10, opus2::Bitrate::Auto);
    for (name, app) in [("audio", opus2::Application::Audio), ("celt only", opus2::Application::LowDelay)] {
        for (rate, bitrate) in [("auto", opus2::Bitrate::Auto), ("128k", opus2::Bitrate::Bits(128_000))] {
            for c in [0, 5, 10] {
                println!("  opus encode, {name}, {rate}, complexity {c:>2}: {:>6.1} us", encode(app, c, bitrate) / 1000.0);
            }
        }
    }

    let total = decode_ns + resample_ns + encode_ns;
    println!("per 20 ms frame (one player, one core):");
    for (name, ns) in [("decode mp3", decode_ns), ("resample 44.1->48 kHz", resample_ns), ("opus encode", encode_ns), ("total", total)] {
        println!("  {name:<22} {:>8.1} us  {:>5.2}% of the 20 ms budget", ns / 1000.0, ns / 20_000_000.0 * 100.0);
    }
    println!("  => at most {:.0} players per core on this path alone", 20_000_000.0 / total);
}
