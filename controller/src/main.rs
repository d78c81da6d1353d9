//! `opta-lmx`: the server binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};
use opta_lmx::config::Config;
use opta_lmx::server::{app, AppState};

#[derive(Parser)]
#[command(
    name = "opta-lmx",
    version,
    about = "A local LLM server that answers LM Studio's clients"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (default 127.0.0.1:1234)
    Serve {
        /// YAML configuration file (see config/default-config.yaml)
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        port: Option<u16>,
        /// Folder of models in LM Studio's layout (<publisher>/<name>)
        #[arg(long)]
        models_dir: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let Command::Serve {
        config,
        host,
        port,
        models_dir,
    } = Cli::parse().command;
    let mut cfg = match config.as_deref().map(Config::load).transpose() {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => return fail(&e),
    };
    if let Some(h) = host {
        cfg.server.host = h;
    }
    if let Some(p) = port {
        cfg.server.port = p;
    }
    if let Some(d) = models_dir {
        cfg.models.models_directory = d;
    }
    tracing_subscriber::fmt()
        .with_env_filter(cfg.logging.level.clone())
        .with_writer(std::io::stderr)
        .init();

    let addr = format!("{}:{}", cfg.server.host, cfg.server.port);
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(_) => return fail(&format!("{addr} is not a valid listen address")),
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return fail(&format!(
                "port {} is already in use on {} (is LM Studio or another opta-lmx running?)",
                addr.port(),
                addr.ip()
            ))
        }
        Err(e) => return fail(&format!("cannot listen on {addr}: {e}")),
    };
    tracing::info!(%addr, version = opta_lmx::VERSION, "opta-lmx listening");
    let state = Arc::new(AppState {
        config: cfg,
        started: Instant::now(),
    });
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("opta-lmx: {e}");
    ExitCode::FAILURE
}
