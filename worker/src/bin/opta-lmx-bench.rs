//! `opta-lmx-bench`: measures the engine on one model. See worker/src/bench.rs, and
//! tools/bench_vs_mlx_lm.py for the side-by-side comparison with mlx-lm.

use std::path::PathBuf;

use clap::Parser;
use opta_lmx_worker::model::LoadOptions;

#[derive(Parser)]
#[command(
    name = "opta-lmx-bench",
    version,
    about = "Prompt/generation speed of the Opta-LMX engine"
)]
struct Cli {
    /// An MLX model folder
    model: PathBuf,
    #[arg(long, default_value_t = 256)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 256)]
    gen_tokens: usize,
    /// A JSON file holding the prompt's token ids (overrides --prompt-tokens)
    #[arg(long)]
    prompt_ids: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Keep the files' dtypes (mlx-lm's arithmetic) instead of this machine's defaults
    #[arg(long)]
    exact: bool,
    /// One JSON object per run instead of a table
    #[arg(long)]
    json: bool,
    /// Instead: N concurrent sampled streams, free and JSON-schema constrained in turn,
    /// and the constrained/free throughput ratio
    #[arg(long, value_name = "N")]
    constrained_batch: Option<usize>,
    /// Instead: a --prompt-tokens conversation answered with --gen-tokens, then resent with
    /// its answer and a new turn, timed with the prompt cache and without
    #[arg(long)]
    resend: bool,
}

fn main() {
    let cli = Cli::parse();
    let code = match run(&cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("opta-lmx-bench: {e:#}");
            1
        }
    };
    // Leave without running MLX's and OpenBLAS's exit-time destructors (they can hang).
    opta_lmx_worker::process::exit_now(code)
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if let Some(streams) = cli.constrained_batch {
        return run_constrained(cli, streams);
    }
    if cli.resend {
        return run_resend(cli);
    }
    let prompt = match &cli.prompt_ids {
        Some(path) => Some(serde_json::from_str(&std::fs::read_to_string(path)?)?),
        None => None,
    };
    let results = opta_lmx_worker::bench::bench_model(
        &cli.model,
        prompt,
        cli.prompt_tokens,
        cli.gen_tokens,
        cli.runs,
        if cli.exact {
            LoadOptions::EXACT
        } else {
            LoadOptions::for_this_machine()
        },
    )?;
    if !cli.json {
        println!(
            "{:>8} {:>8} {:>14} {:>14} {:>10} {:>10}",
            "prompt", "gen", "prompt tok/s", "gen tok/s", "TTFT ms", "peak MB"
        );
    }
    for r in &results {
        if cli.json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            println!(
                "{:>8} {:>8} {:>14.1} {:>14.2} {:>10.0} {:>10.0}",
                r.prompt_tokens,
                r.generated_tokens,
                r.prompt_tokens_per_s,
                r.generation_tokens_per_s,
                r.time_to_first_token_ms,
                r.peak_memory_bytes as f64 / 1e6
            );
        }
    }
    Ok(())
}

/// The resend comparison, `runs` times.
fn run_resend(cli: &Cli) -> anyhow::Result<()> {
    use opta_lmx_worker::engine::Engine;

    let options = if cli.exact {
        LoadOptions::EXACT
    } else {
        LoadOptions::for_this_machine()
    };
    let engine = Engine::load_with(&cli.model, options)?;
    for _ in 0..cli.runs.max(1) {
        let r = opta_lmx_worker::bench::run_resend(&engine, cli.prompt_tokens, cli.gen_tokens)?;
        if cli.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "resent {} tokens ({} cached): first token after {:.0} ms from the cache, \
                 {:.0} ms computed afresh ({:.1}x)",
                r.resent_prompt_tokens,
                r.cached_tokens,
                r.cached_ttft_ms,
                r.fresh_ttft_ms,
                r.fresh_ttft_ms / r.cached_ttft_ms.max(1e-9)
            );
        }
    }
    Ok(())
}

/// Free and constrained batches alternate `runs` times (after one warm-up of each, which
/// also builds the grammar engine's token space); the ratio compares their medians.
fn run_constrained(cli: &Cli, streams: usize) -> anyhow::Result<()> {
    use opta_lmx_worker::bench::{filler_prompt, run_batch};
    use opta_lmx_worker::engine::Engine;

    let options = if cli.exact {
        LoadOptions::EXACT
    } else {
        LoadOptions::for_this_machine()
    };
    let engine = Engine::load_with(&cli.model, options)?;
    let prompt = filler_prompt(&engine, cli.prompt_tokens)?;
    let built = std::time::Instant::now();
    engine
        .token_space()
        .map_err(|e| anyhow::anyhow!("token space: {e}"))?;
    println!(
        "token space (first constrained request only): {:.0} ms",
        built.elapsed().as_secs_f64() * 1e3
    );
    run_batch(&engine, &prompt, streams, 8, false)?;
    run_batch(&engine, &prompt, streams, 8, true)?;
    let (mut free, mut constrained) = (Vec::new(), Vec::new());
    for _ in 0..cli.runs.max(1) {
        for (is_constrained, into) in [(false, &mut free), (true, &mut constrained)] {
            let r = run_batch(&engine, &prompt, streams, cli.gen_tokens, is_constrained)?;
            if cli.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{:>12} {:>8} streams {:>6} tokens {:>8.2} s {:>10.1} tok/s",
                    if is_constrained {
                        "constrained"
                    } else {
                        "free"
                    },
                    r.streams,
                    r.generated_tokens,
                    r.seconds,
                    r.tokens_per_s
                );
            }
            into.push(r.tokens_per_s);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (f, c) = (median(&mut free), median(&mut constrained));
    println!(
        "median: free {f:.1} tok/s, constrained {c:.1} tok/s, constrained/free {:.3}",
        c / f
    );
    Ok(())
}
