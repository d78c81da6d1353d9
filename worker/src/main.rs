//! `opta-lmx-worker`: the per-model process. The controller starts it; people may run its
//! diagnostic subcommands by hand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use opta_lmx_worker::tool_syntax::ToolSyntax;

#[derive(Parser)]
#[command(name = "opta-lmx-worker", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load a model folder's weights with MLX and print parameter counts and storage per
    /// tensor group.
    Inspect {
        /// An MLX model folder (config.json + *.safetensors)
        model: PathBuf,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Generate a chat answer from the command line (greedy unless --temperature is set)
    Generate {
        /// An MLX model folder
        model: PathBuf,
        /// The user message
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long)]
        seed: Option<u64>,
        /// Print prompt and generated token ids and timings as JSON
        #[arg(long)]
        json: bool,
        /// Run as one rank of a tensor-parallel group on MLX's distributed backend (ring,
        /// jaccl, mpi, nccl or any), its peers from MLX's environment (`MLX_RANK`,
        /// `MLX_HOSTFILE`); every rank runs this same command
        #[arg(long)]
        tensor_parallel: Option<String>,
    },
    /// Serve one model to the controller over its Unix socket (the controller starts this)
    Serve {
        /// The socket the controller bound; the worker connects to it
        #[arg(long)]
        socket: PathBuf,
        /// An MLX model folder
        #[arg(long)]
        model: PathBuf,
        /// Requests decoded together in one batch; more wait in the worker's queue
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
        max_batch: u32,
        /// Memory for the prompt (prefix) cache, in MiB; 0 turns it off
        #[arg(long, default_value_t = 512)]
        prompt_cache_mb: u64,
        /// A folder for the prompt cache's disk tier (a subfolder per model), which survives
        /// the worker; without it the cache lives in memory only
        #[arg(long)]
        prompt_cache_dir: Option<PathBuf>,
        /// The disk tier's size, in MiB (least recently used entries go first)
        #[arg(long, default_value_t = 4096)]
        prompt_cache_disk_mb: u64,
        /// Read and force tool calls in this syntax instead of the one the chat template
        /// implies: hermes, qwen3_coder, llama3, mistral, deepseek, harmony, kimi_k2, glm47 or
        /// gemma4
        #[arg(long, value_parser = parse_tool_syntax)]
        tool_syntax: Option<ToolSyntax>,
        /// Prompt tokens read per forward pass (mlx-lm's prefill step size); the worker
        /// reports progress after each such chunk
        #[arg(long, default_value_t = opta_lmx_worker::scheduler::PREFILL_STEP as u32,
              value_parser = clap::value_parser!(u32).range(1..))]
        prefill_step: u32,
        /// Serve as rank 0 of a tensor-parallel group on MLX's distributed backend (ring,
        /// jaccl, mpi, nccl or any); the peers come from MLX's environment unless
        /// --local-ranks starts them
        #[arg(long)]
        tensor_parallel: Option<String>,
        /// With --tensor-parallel ring: start this many ranks on this machine, this one
        /// included, over loopback
        #[arg(long, requires = "tensor_parallel", value_parser = clap::value_parser!(u32).range(2..))]
        local_ranks: Option<u32>,
    },
    /// Run one of the other ranks (1 and up) of a tensor-parallel model whose rank 0 is
    /// `serve --tensor-parallel`; MLX_RANK and MLX_HOSTFILE (or the backend's own settings)
    /// say which
    Follow {
        /// The same model folder as rank 0's, on this machine
        #[arg(long)]
        model: PathBuf,
        /// MLX's distributed backend, as rank 0 was given it
        #[arg(long)]
        tensor_parallel: String,
        /// Wait for one byte on stdin before each round (how `serve --local-ranks` starts
        /// its ranks, so that they do not poll while idle)
        #[arg(long)]
        doorbell: bool,
    },
}

fn parse_tool_syntax(name: &str) -> Result<ToolSyntax, String> {
    ToolSyntax::from_name(name).ok_or_else(|| {
        format!(
            "unknown tool syntax {name:?}; known: {}",
            opta_lmx_shared::TOOL_SYNTAXES.join(", ")
        )
    })
}

fn main() {
    let code = run(Cli::parse());
    // Leave without running MLX's and OpenBLAS's exit-time destructors (they can hang).
    opta_lmx_worker::process::exit_now(if code == ExitCode::SUCCESS { 0 } else { 1 })
}

fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Inspect { model, json } => match opta_lmx_worker::inspect::summarise(&model) {
            Ok(summary) if json => match serde_json::to_string_pretty(&summary) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            },
            Ok(summary) => {
                print!("{}", opta_lmx_worker::inspect::render(&summary));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("{e:#}")),
        },
        Command::Generate {
            model,
            prompt,
            max_tokens,
            temperature,
            seed,
            json,
            tensor_parallel,
        } => match generate(
            &model,
            &prompt,
            max_tokens,
            temperature,
            seed,
            json,
            tensor_parallel.as_deref(),
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("{e:#}")),
        },
        Command::Serve {
            socket,
            model,
            max_batch,
            prompt_cache_mb,
            prompt_cache_dir,
            prompt_cache_disk_mb,
            tool_syntax,
            prefill_step,
            tensor_parallel,
            local_ranks,
        } => {
            let limits = opta_lmx_worker::serve::Limits {
                max_batch: max_batch as usize,
                prompt_cache_bytes: prompt_cache_mb.saturating_mul(1024 * 1024),
                tool_syntax,
                prefill_step: prefill_step as usize,
                prompt_cache_dir,
                prompt_cache_disk_bytes: prompt_cache_disk_mb.saturating_mul(1024 * 1024),
                tensor_parallel: tensor_parallel.map(|backend| {
                    opta_lmx_worker::serve::TensorParallel {
                        backend,
                        local_ranks,
                    }
                }),
            };
            opta_lmx_worker::serve::run(&socket, &model, limits)
        }
        Command::Follow {
            model,
            tensor_parallel,
            doorbell,
        } => opta_lmx_worker::serve::follow(&model, &tensor_parallel, doorbell),
    }
}

fn generate(
    dir: &std::path::Path,
    prompt: &str,
    max_tokens: usize,
    temperature: f32,
    seed: Option<u64>,
    json: bool,
    tensor_parallel: Option<&str>,
) -> anyhow::Result<()> {
    use opta_lmx_worker::distributed::Group;
    use opta_lmx_worker::engine::Engine;
    use opta_lmx_worker::model::LoadOptions;
    use opta_lmx_worker::request::GenerateParams;
    use opta_lmx_worker::scheduler;
    use std::io::Write;

    let group = tensor_parallel
        .map(Group::init)
        .transpose()?
        .map(std::sync::Arc::new);
    let rank = group.as_ref().map_or(0, |g| g.rank());
    let engine = Engine::load_sharded(dir, LoadOptions::for_this_machine(), group)?;
    // Every rank computes the same tokens; only the first shows them as they come.
    let json = json || rank != 0;
    let messages = serde_json::json!([{"role": "user", "content": prompt}]);
    let ids = engine.chat_prompt(&messages, None, true)?;
    let params = GenerateParams {
        sampling: opta_lmx_shared::protocol::SamplingParams {
            temperature,
            seed,
            ..Default::default()
        },
        max_tokens: Some(max_tokens),
        ..Default::default()
    };
    let mut out_ids: Vec<u32> = Vec::new();
    let mut text = String::new();
    let outcome = scheduler::generate(&engine, &ids, &params, |chunk| {
        out_ids.extend(&chunk.token_ids);
        text.push_str(&chunk.text);
        if !json {
            print!("{}", chunk.text);
            let _ = std::io::stdout().flush();
        }
        std::ops::ControlFlow::Continue(())
    })?;
    let t = &outcome.timings;
    let gen_tps = if t.generation_ms > 0.0 {
        (outcome.usage.completion_tokens.saturating_sub(1)) as f64 / (t.generation_ms / 1e3)
    } else {
        0.0
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "prompt_ids": ids,
                "ids": out_ids,
                "text": text,
                "finish_reason": format!("{:?}", outcome.finish_reason),
                "prompt_tokens": outcome.usage.prompt_tokens,
                "completion_tokens": outcome.usage.completion_tokens,
                "time_to_first_token_ms": t.time_to_first_token_ms,
                "generation_tokens_per_s": gen_tps,
                "load_seconds": engine.load_seconds,
                "rank": rank,
            })
        );
    } else {
        eprintln!(
            "\n[{} prompt tokens, {} generated, first token {:.0} ms, {:.1} tokens/s, {:?}]",
            outcome.usage.prompt_tokens,
            outcome.usage.completion_tokens,
            t.time_to_first_token_ms,
            gen_tps,
            outcome.finish_reason
        );
    }
    Ok(())
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("opta-lmx-worker: {e}");
    ExitCode::FAILURE
}
