//! `caldera-worker`: started by the `caldera` gateway, never by hand.

use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
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
