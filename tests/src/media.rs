//! Media made by ffmpeg at test time (the setup installs it): longer or odder files than the
//! committed fixtures, made once per test process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

fn dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("media tempdir")).path()
}

/// Runs `ffmpeg` with `args` (the output is `{out}`, replaced by a path in the media directory)
/// once per process per `name`, and returns the path of the output.
pub fn ffmpeg(name: &str, args: &[&str]) -> PathBuf {
    static MADE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let made = MADE.get_or_init(Mutex::default);
    let mut made = made.lock().unwrap();
    if let Some(p) = made.get(name) {
        return p.clone();
    }
    let out = dir().join(name);
    let args: Vec<String> = args.iter().map(|a| a.replace("{out}", &out.display().to_string()).replace("{dir}", &dir().display().to_string())).collect();
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(&args)
        .status()
        .expect("ffmpeg (scripts/setup.sh installs it)");
    assert!(status.success(), "ffmpeg {args:?} failed");
    made.insert(name.to_string(), out.clone());
    out
}

/// A stereo sine of `seconds` at `freq` Hz encoded by ffmpeg with `codec_args` into `name`.
pub fn tone(name: &str, freq: u32, seconds: u32, codec_args: &[&str]) -> Vec<u8> {
    let source = format!("sine=frequency={freq}:sample_rate=48000:duration={seconds}");
    let mut args = vec!["-f", "lavfi", "-i", &source, "-af", "volume=-6dB,aformat=channel_layouts=stereo"];
    args.extend_from_slice(codec_args);
    args.push("{out}");
    std::fs::read(ffmpeg(name, &args)).expect("read ffmpeg output")
}

/// The packets of the first audio track of `bytes` (a container symphonia reads), in order.
pub fn packets(bytes: &[u8], extension: &str) -> Vec<Vec<u8>> {
    use symphonia::core::io::MediaSourceStream;
    let mut hint = symphonia::core::probe::Hint::new();
    hint.with_extension(extension);
    let mss = MediaSourceStream::new(Box::new(std::io::Cursor::new(bytes.to_vec())), Default::default());
    let mut probed = symphonia::default::get_probe().format(&hint, mss, &Default::default(), &Default::default()).expect("probe");
    let track = probed.format.default_track().expect("a track").id;
    let mut out = Vec::new();
    while let Ok(p) = probed.format.next_packet() {
        if p.track_id() == track {
            out.push(p.buf().to_vec());
        }
    }
    out
}

/// A path in the media directory (for files a test writes for ffmpeg, e.g. key info).
pub fn path(name: &str) -> PathBuf {
    dir().join(name)
}

/// An HLS rendition made by ffmpeg's HLS muxer: `name` is the playlist's file name and the
/// prefix of its segments; `args` go between the input and the output (codec, `-hls_*`
/// options). Returns the playlist's text and every file it refers to (segments, init section,
/// key), by the name the playlist uses.
pub fn hls(name: &str, input: &[&str], args: &[&str]) -> (String, Vec<(String, Vec<u8>)>) {
    let segments = format!("{{dir}}/{name}_%03d.{}", if args.contains(&"fmp4") { "m4s" } else { "ts" });
    let init = format!("{name}_init.mp4");
    let mut all: Vec<&str> = input.to_vec();
    all.extend_from_slice(args);
    all.extend_from_slice(&["-f", "hls", "-hls_segment_filename", &segments, "-hls_fmp4_init_filename", &init, "{out}"]);
    let playlist = ffmpeg(name, &all);
    let text = std::fs::read_to_string(&playlist).expect("playlist");
    let mut files = Vec::new();
    for line in text.lines() {
        let refs: Vec<&str> = if line.starts_with('#') {
            line.split("URI=\"").skip(1).filter_map(|r| r.split('"').next()).collect()
        } else if line.trim().is_empty() {
            vec![]
        } else {
            vec![line.trim()]
        };
        for r in refs {
            if !files.iter().any(|(n, _): &(String, Vec<u8>)| n == r) {
                files.push((r.to_string(), std::fs::read(dir().join(r)).unwrap_or_else(|e| panic!("{r}: {e}"))));
            }
        }
    }
    (text, files)
}
