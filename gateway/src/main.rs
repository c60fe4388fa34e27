//! `caldera`: the gateway binary. See the README for configuration.

use anyhow::Context;
use caldera_gateway::config::Loaded;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "caldera", version, about = "Lavalink v4-compatible audio node with sandboxed workers")]
struct Cli {
    /// Lavalink-style application.yml (default: ./application.yml if present, else built-in defaults).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and exit 0 (valid) or 1 (invalid).
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match Loaded::load(cli.config.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("caldera: invalid configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::CheckConfig) => check_config(&loaded),
        None => match serve(loaded) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("caldera: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check_config(loaded: &Loaded) -> ExitCode {
    for key in &loaded.unknown_keys {
        println!("note: unknown key `{key}` is ignored");
    }
    for key in &loaded.not_acted_on {
        println!("note: `{key}` is accepted but has no effect in Caldera");
    }
    let worker = &loaded.settings.worker_binary;
    if !worker.is_file() {
        eprintln!("caldera: worker binary {} not found; Hint: set caldera.workerBinary", worker.display());
        return ExitCode::FAILURE;
    }
    println!("configuration OK ({})", loaded.source);
    ExitCode::SUCCESS
}

fn serve(loaded: Loaded) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&loaded.settings.log_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    tracing::info!(source = %loaded.source, version = env!("CARGO_PKG_VERSION"), "configuration loaded");
    for key in &loaded.unknown_keys {
        tracing::warn!(key = %key, "unknown configuration key ignored");
    }
    for var in &loaded.env_overrides {
        tracing::info!(variable = %var, "configuration set from the environment");
    }
    if !loaded.not_acted_on.is_empty() {
        tracing::info!(keys = %loaded.not_acted_on.join(", "), "configuration keys accepted but not acted on by Caldera");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("caldera")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(caldera_gateway::run(loaded.settings))?;
    Ok(())
}
