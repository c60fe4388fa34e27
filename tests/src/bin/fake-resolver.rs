//! A resolver that misbehaves, for the gateway's supervision tests: it stands in for the Python
//! interpreter (`caldera.resolver.python`) and is started as `fake-resolver-MODE SCRIPT` through a
//! symlink whose name picks the misbehaviour (the environment is cleared, the name is not):
//! `crash` exits on its first request, `hang` stops reading and answering after its hello,
//! `garbage` answers its first request with a line that is not JSON, `late` answers every lookup
//! 3 s late, `hog` grows past any sensible memory limit, `ratelimited` answers every lookup
//! with yt-dlp's error for a 429. Every mode says a valid hello first.

use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn main() {
    let name = std::env::args().next().unwrap_or_default();
    let mode = name.rsplit('/').next().unwrap_or_default().trim_start_matches("fake-resolver-").to_string();
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let send = |out: &Arc<Mutex<std::io::Stdout>>, v: Value| {
        let mut o = out.lock().unwrap();
        let _ = writeln!(o, "{v}");
        let _ = o.flush();
    };
    send(&out, json!({"type": "hello", "protocol": 1, "ytDlp": format!("fake-{mode}"), "python": null, "jsRuntime": null}));
    eprintln!("INFO fake resolver in mode {mode}");
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    if mode == "hog" {
        for _ in 0..300 {
            hoard.push(vec![1u8; 1 << 20]);
        }
    }
    if mode == "hang" {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let Ok(req) = serde_json::from_str::<Value>(&line) else { continue };
        match req["type"].as_str() {
            Some("ping") => send(&out, json!({"type": "pong", "seq": req["seq"]})),
            Some(kind @ ("load" | "resolve")) => {
                let answer = if kind == "load" { "loaded" } else { "resolved" };
                match mode.as_str() {
                    "crash" => std::process::exit(3),
                    "garbage" => {
                        let mut o = out.lock().unwrap();
                        let _ = writeln!(o, "<html>this is not the protocol</html>");
                        let _ = o.flush();
                    }
                    "late" => {
                        let out = out.clone();
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_secs(3));
                            send(&out, json!({"type": answer, "id": req["id"], "result": {"loadType": "empty"}}));
                        });
                    }
                    "ratelimited" => {
                        let error = json!({"message": "Something went wrong when looking up the track.", "severity": "suspicious",
                                           "cause": "[youtube] x: Unable to download API page: HTTP Error 429: Too Many Requests"});
                        send(&out, json!({"type": answer, "id": req["id"], "result": {"loadType": "error", "error": error}}));
                    }
                    _ => send(&out, json!({"type": answer, "id": req["id"], "result": {"loadType": "empty"}})),
                }
            }
            _ => {}
        }
    }
    drop(hoard);
}
