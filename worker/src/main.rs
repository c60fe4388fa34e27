//! `caldera-worker`: started by the `caldera` gateway, never by hand.

use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "--exec-sandboxed") {
        // Only returns when the program could not be confined or started.
        let e = caldera_worker::sandbox::exec_sandboxed(&args[2..]);
        eprintln!("caldera-worker --exec-sandboxed: {e}");
        return ExitCode::FAILURE;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = caldera_worker::WorkerConfig::from_env().and_then(caldera_worker::run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("caldera-worker: {e}");
            ExitCode::FAILURE
        }
    }
}
