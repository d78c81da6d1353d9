//! `opta-lmx`: the server (`serve`) and `lms`-style client subcommands that talk to a running
//! server (`ps`, `ls`, `load`, `unload`, `status`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use opta_lmx::admission::Admission;
use opta_lmx::client;
use opta_lmx::config::{ApiKey, Config, LogFormat};
use opta_lmx::discovery::Discovery;
use opta_lmx::download::Downloader;
use opta_lmx::manager::{ManagerConfig, ModelManager};
use opta_lmx::resolve;
use opta_lmx::server::app;
use opta_lmx::state::AppState;
use serde_json::{json, Value};

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

#[derive(Args, Clone)]
struct Target {
    /// Server to talk to
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1234)]
    port: u16,
    /// API key, when the server requires one
    #[arg(long, env = "OPTA_LMX_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Print the server's JSON answer
    #[arg(long)]
    json: bool,
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
    /// Loaded models and their worker processes
    Ps(Target),
    /// Every model the server could load
    Ls(Target),
    /// Load a model
    Load {
        model: String,
        /// Unload after this many idle seconds
        #[arg(long)]
        ttl: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// Unload a model, or all of them
    Unload {
        model: Option<String>,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Server health, uptime and memory
    Status(Target),
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(async {
        match Cli::parse().command {
            Command::Serve {
                config,
                host,
                port,
                models_dir,
            } => serve(config, host, port, models_dir).await,
            Command::Ps(t) => ps(&t).await,
            Command::Ls(t) => ls(&t).await,
            Command::Load { model, ttl, target } => load(&target, &model, ttl).await,
            Command::Unload { model, all, target } => unload(&target, model, all).await,
            Command::Status(t) => status(&t).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("{e:#}")),
    }
}

fn fail(e: &str) -> ExitCode {
    eprintln!("opta-lmx: {e}");
    ExitCode::FAILURE
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.logging.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let file = cfg.logging.file.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    match (cfg.logging.format, file) {
        (LogFormat::Structured, Some(f)) => builder.json().with_writer(Arc::new(f)).init(),
        (LogFormat::Structured, None) => builder.json().with_writer(std::io::stderr).init(),
        (LogFormat::Text, Some(f)) => builder.with_ansi(false).with_writer(Arc::new(f)).init(),
        (LogFormat::Text, None) => builder.with_writer(std::io::stderr).init(),
    }
}

/// The worker binary: `OPTA_LMX_WORKER`, or `opta-lmx-worker` next to this binary.
fn worker_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("OPTA_LMX_WORKER") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name("opta-lmx-worker");
    anyhow::ensure!(
        path.exists(),
        "the worker binary {} is missing (build it, or set OPTA_LMX_WORKER)",
        path.display()
    );
    Ok(path)
}

async fn serve(
    config: Option<PathBuf>,
    host: Option<String>,
    port: Option<u16>,
    models_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut cfg = match config.as_deref() {
        Some(path) => Config::load(path)?,
        None => Config::default(),
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
    if let Some(key) = std::env::var("OPTA_LMX_API_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty())
    {
        cfg.server.api_keys.push(ApiKey::Any(key));
    }
    init_logging(&cfg);

    let addr = format!("{}:{}", cfg.server.host, cfg.server.port);
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| anyhow::anyhow!("{addr} is not a valid listen address"))?;
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "port {} is already in use on {} (is LM Studio or another opta-lmx running?)",
            addr.port(),
            addr.ip()
        ),
        Err(e) => anyhow::bail!("cannot listen on {addr}: {e}"),
    };
    let manager = ModelManager::new(ManagerConfig {
        worker_bin: worker_binary()?,
        socket_dir: None,
        load_timeout: Duration::from_secs(
            cfg.server
                .load_timeout_sec
                .unwrap_or(cfg.server.timeout_sec),
        ),
        request_timeout: Duration::from_secs(cfg.server.timeout_sec),
        stop_grace: Duration::from_secs(3),
        max_memory_percent: cfg.memory.max_memory_percent,
        auto_evict_lru: cfg.memory.auto_evict_lru,
        // Without batching the worker decodes one request at a time.
        max_batch: if cfg.models.use_batching {
            cfg.models.max_concurrent_per_model
        } else {
            1
        },
        prompt_cache_mb: cfg.models.prompt_cache_mb,
        prompt_cache_dir: cfg.prompt_cache_dir(),
        prompt_cache_disk_mb: cfg.models.prompt_cache_disk_mb,
        prefill_step: cfg.models.prefill_step_size,
        tool_syntax: cfg.models.tool_call_format.clone(),
        tensor_parallel: cfg.models.tensor_parallel.clone(),
    });
    let discovery = Discovery::new(cfg.models_directory(), cfg.models.allow_paths);
    tracing::info!(%addr, version = opta_lmx::VERSION, models = %discovery.models_dir.display(), "opta-lmx listening");
    if !addr.ip().is_loopback() && cfg.server.api_keys.is_empty() {
        tracing::warn!(
            "listening on {} without API keys: anyone on the network can use and manage this \
             server (set server.api_keys or OPTA_LMX_API_KEY)",
            addr.ip()
        );
    }
    let downloader = Downloader::from_env(discovery.hf_cache.clone());
    if cfg.models.allow_download {
        tracing::info!(endpoint = %downloader.endpoint(), "models missing locally are downloaded from Hugging Face");
    }
    let state = Arc::new(AppState {
        config: cfg.clone(),
        discovery,
        downloader,
        manager: manager.clone(),
        admission: Admission::new(&cfg.models),
        responses: opta_lmx::api::responses::ResponseStore::new(cfg.server.response_store_size),
        lms_chats: opta_lmx::api::responses::ResponseStore::new(cfg.server.response_store_size),
        started: Instant::now(),
    });

    for id in &cfg.models.auto_load {
        let state = state.clone();
        let id = id.clone();
        // In the background: a model may first have to be downloaded (models.allow_download).
        tokio::spawn(async move {
            match resolve::find(&state, &id, true).await {
                Ok(entry) => {
                    if let Err(e) = state.manager.load(&entry.id, &entry.dir, None).await {
                        tracing::error!(model = %id, error = %e, "auto_load failed");
                    }
                }
                Err(e) => tracing::error!(model = %id, error = %e, "auto_load: model unavailable"),
            }
        });
    }

    // On a signal: stop accepting and let running requests finish, for up to the grace
    // period; then stop every worker, whatever is still running.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopping = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let grace = Duration::from_secs(cfg.server.shutdown_grace_sec);
    let served =
        axum::serve(listener, app(state)).with_graceful_shutdown(stopping(stop_rx.clone()));
    let deadline = async {
        stopping(stop_rx).await;
        tokio::time::sleep(grace).await;
    };
    let served = tokio::select! {
        served = std::future::IntoFuture::into_future(served) => served.map_err(Into::into),
        () = deadline => {
            tracing::warn!(grace_sec = grace.as_secs(), "requests still running after the shutdown grace period are cut off");
            Ok(())
        }
    };
    // Stop every worker before exiting, whatever ended the server.
    manager.shutdown().await;
    served
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

async fn get_ok(t: &Target, path: &str) -> anyhow::Result<Value> {
    let (code, body) =
        client::call(&t.host, t.port, t.api_key.as_deref(), "GET", path, None).await?;
    anyhow::ensure!(code == 200, "{}", client::error_message(&body));
    Ok(body)
}

async fn post_ok(t: &Target, path: &str, body: &Value) -> anyhow::Result<Value> {
    let (code, resp) = client::call(
        &t.host,
        t.port,
        t.api_key.as_deref(),
        "POST",
        path,
        Some(body),
    )
    .await?;
    anyhow::ensure!(code == 200, "{}", client::error_message(&resp));
    Ok(resp)
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn mb(v: &Value) -> String {
    v.as_u64()
        .map(|b| format!("{:.0} MB", b as f64 / 1e6))
        .unwrap_or_else(|| "-".into())
}

async fn ps(t: &Target) -> anyhow::Result<()> {
    let body = get_ok(t, "/admin/status").await?;
    if t.json {
        print_json(&body["workers"]);
        return Ok(());
    }
    let workers = body["workers"].as_array().cloned().unwrap_or_default();
    if workers.is_empty() {
        println!("No models are loaded.");
        return Ok(());
    }
    println!(
        "{:<48} {:<10} {:>8} {:>10}",
        "MODEL", "STATE", "PID", "MEMORY"
    );
    for w in workers {
        println!(
            "{:<48} {:<10} {:>8} {:>10}",
            w["model_id"].as_str().unwrap_or("?"),
            w["state"].as_str().unwrap_or("?"),
            w["pid"]
                .as_u64()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            mb(&w["resident_bytes"])
        );
    }
    Ok(())
}

async fn ls(t: &Target) -> anyhow::Result<()> {
    let body = get_ok(t, "/api/v0/models").await?;
    if t.json {
        print_json(&body["data"]);
        return Ok(());
    }
    println!(
        "{:<48} {:<8} {:<8} {:<12}",
        "MODEL", "ARCH", "QUANT", "STATE"
    );
    for m in body["data"].as_array().cloned().unwrap_or_default() {
        println!(
            "{:<48} {:<8} {:<8} {:<12}",
            m["id"].as_str().unwrap_or("?"),
            m["arch"].as_str().unwrap_or("?"),
            m["quantization"].as_str().unwrap_or("?"),
            m["state"].as_str().unwrap_or("?")
        );
    }
    let unloadable = body["unloadable"].as_array().cloned().unwrap_or_default();
    if !unloadable.is_empty() {
        println!("\ncannot load:");
        for u in unloadable {
            println!(
                "{:<48} {}",
                u["id"].as_str().unwrap_or("?"),
                u["reason"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}

async fn load(t: &Target, model: &str, ttl: Option<u64>) -> anyhow::Result<()> {
    let body = post_ok(
        t,
        "/admin/models/load",
        &json!({"model_id": model, "ttl": ttl}),
    )
    .await?;
    if t.json {
        print_json(&body);
    } else {
        println!(
            "Loaded {model} in {:.1} s (worker pid {}).",
            body["time_to_load_ms"].as_f64().unwrap_or(0.0) / 1e3,
            body["pid"]
        );
    }
    Ok(())
}

async fn unload(t: &Target, model: Option<String>, all: bool) -> anyhow::Result<()> {
    let models: Vec<String> = match (model, all) {
        (Some(m), false) => vec![m],
        (None, true) => get_ok(t, "/admin/status").await?["models"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        _ => anyhow::bail!("name one model, or pass --all"),
    };
    for m in &models {
        let body = post_ok(t, "/admin/models/unload", &json!({"model_id": m})).await?;
        if t.json {
            print_json(&body);
        } else {
            println!("Unloaded {m}.");
        }
    }
    if models.is_empty() && !t.json {
        println!("No models are loaded.");
    }
    Ok(())
}

async fn status(t: &Target) -> anyhow::Result<()> {
    let body = get_ok(t, "/admin/status").await?;
    if t.json {
        print_json(&body);
        return Ok(());
    }
    let m = &body["memory"];
    println!(
        "opta-lmx {} on {}:{}, up {} s, {} model(s) loaded, memory {:.1}/{:.1} GB ({}%, cap {}%)",
        body["version"].as_str().unwrap_or("?"),
        t.host,
        t.port,
        body["uptime_seconds"],
        body["loaded_models"],
        m["used_gb"].as_f64().unwrap_or(0.0),
        m["total_gb"].as_f64().unwrap_or(0.0),
        m["usage_percent"],
        m["threshold_percent"]
    );
    Ok(())
}
