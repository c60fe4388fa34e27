//! Stamps the build with the git commit so a gateway and a worker from different builds refuse
//! each other at the hello (ARCHITECTURE: "a mismatch ends the connection").
use std::path::Path;
use std::process::Command;

fn main() {
    let git_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.git");
    // Re-run when HEAD moves (a checkout) or the branch it names moves (a commit).
    println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
    if let Ok(head) = std::fs::read_to_string(git_dir.join("HEAD")) {
        if let Some(reference) = head.strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed={}", git_dir.join(reference.trim()).display());
        }
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let branch = git(&["rev-parse", "--abbrev-ref", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let commit_time = git(&["log", "-1", "--format=%ct"])
        .and_then(|s| s.parse::<i64>().ok())
        .map(|s| s * 1000)
        .unwrap_or(0);
    let build_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "rustc (unknown version)".into());
    println!("cargo:rustc-env=CALDERA_RUSTC_VERSION={rustc_version}");
    println!("cargo:rustc-env=CALDERA_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=CALDERA_GIT_BRANCH={branch}");
    println!("cargo:rustc-env=CALDERA_GIT_COMMIT_TIME={commit_time}");
    println!("cargo:rustc-env=CALDERA_BUILD_TIME={build_time}");
}
