//! The engine benchmark: prompt and generation speed, time to first token and peak memory for
//! one model, prompt length and generation length. A program prints the figures (and
//! tools/bench_vs_mlx_lm.py puts them beside mlx-lm's); no test asserts on timings.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use opta_lmx_shared::protocol::SamplingParams;
use serde::Serialize;

use crate::engine::Engine;
use crate::model::LoadOptions;
use crate::request::GenerateParams;
use crate::scheduler::generate;

/// A fixed English passage, repeated to build prompts of any length.
const FILLER: &str = "The history of astronomy spans thousands of years, from the first \
people who tracked the moon and the planets to modern observatories that measure light from \
galaxies billions of light years away. Each generation built new instruments and asked new \
questions about the sky. ";

#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Prompt tokens over the time to the first generated token (mlx-lm's definition).
    pub prompt_tokens_per_s: f64,
    /// Tokens after the first over the time after the first (mlx-lm's definition).
    pub generation_tokens_per_s: f64,
    pub time_to_first_token_ms: f64,
    pub peak_memory_bytes: usize,
}

/// `n` prompt token ids from the filler passage.
pub fn filler_prompt(engine: &Engine, n: usize) -> anyhow::Result<Vec<u32>> {
    let mut text = String::new();
    let mut ids = Vec::new();
    while ids.len() < n {
        text.push_str(FILLER);
        ids = engine.tokenizer.encode(&text)?;
    }
    ids.truncate(n);
    Ok(ids)
}

/// Generates exactly `gen_tokens` greedy tokens after `prompt` and measures it.
pub fn run(engine: &Engine, prompt: &[u32], gen_tokens: usize) -> anyhow::Result<BenchResult> {
    mlx_rs::memory::reset_peak_memory()?;
    let params = GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: Some(gen_tokens),
        ignore_eos: true,
        ..Default::default()
    };
    let start = Instant::now();
    let mut first = None;
    let mut n = 0usize;
    generate(engine, prompt, &params, |chunk| {
        if chunk.tokens() > 0 {
            first.get_or_insert_with(Instant::now);
            n += chunk.tokens();
        }
        ControlFlow::Continue(())
    })?;
    let end = Instant::now();
    let first = first.unwrap_or(end);
    let ttft = first.duration_since(start).as_secs_f64();
    let gen_secs = end.duration_since(first).as_secs_f64();
    Ok(BenchResult {
        prompt_tokens: prompt.len(),
        generated_tokens: n,
        prompt_tokens_per_s: prompt.len() as f64 / ttft,
        generation_tokens_per_s: if gen_secs > 0.0 {
            n.saturating_sub(1) as f64 / gen_secs
        } else {
            0.0
        },
        time_to_first_token_ms: ttft * 1e3,
        peak_memory_bytes: mlx_rs::memory::peak_memory()?,
    })
}

/// Loads `dir` and runs the benchmark `runs` times on the same prompt.
pub fn bench_model(
    dir: &Path,
    prompt: Option<Vec<u32>>,
    prompt_tokens: usize,
    gen_tokens: usize,
    runs: usize,
    options: LoadOptions,
) -> anyhow::Result<Vec<BenchResult>> {
    let engine = Engine::load_with(dir, options)?;
    let prompt = match prompt {
        Some(p) => p,
        None => filler_prompt(&engine, prompt_tokens)?,
    };
    (0..runs.max(1))
        .map(|_| run(&engine, &prompt, gen_tokens))
        .collect()
}

/// One batch of concurrent streams: what they generated together and how fast.
#[derive(Debug, Serialize)]
pub struct BatchResult {
    pub streams: usize,
    pub constrained: bool,
    pub generated_tokens: usize,
    pub seconds: f64,
    /// All streams' tokens over the wall time of the batch.
    pub tokens_per_s: f64,
}

/// The grammar the constrained streams follow: a JSON array of many short records, so they
/// keep generating (and the grammar keeps branching) rather than finish early.
pub const BATCH_SCHEMA: &str = r#"{"type": "array", "minItems": 1000, "items": {"type": "object",
    "properties": {"name": {"type": "string", "maxLength": 16}, "city": {"type": "string",
    "maxLength": 16}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
    "required": ["name", "city", "age"]}}"#;

/// Runs `streams` sampled generations of `gen_tokens` together in one scheduler, each
/// constrained to [`BATCH_SCHEMA`] or free. Both kinds sample on the host (temperature 0.8,
/// seeded), so the difference between them is the grammar's cost alone.
pub fn run_batch(
    engine: &Engine,
    prompt: &[u32],
    streams: usize,
    gen_tokens: usize,
    constrained: bool,
) -> anyhow::Result<BatchResult> {
    use crate::output::OutputParser;
    use crate::prepare::Output;
    use crate::scheduler::{Event, Scheduler, SchedulerConfig};

    let mut sched = Scheduler::new(engine, SchedulerConfig::new(streams, 0));
    let start = Instant::now();
    for i in 0..streams {
        let params = GenerateParams {
            sampling: SamplingParams {
                temperature: 0.8,
                seed: Some(i as u64),
                ..SamplingParams::default()
            },
            max_tokens: Some(gen_tokens),
            ignore_eos: !constrained,
            ..Default::default()
        };
        let constraint = if constrained {
            let schema: serde_json::Value = serde_json::from_str(BATCH_SCHEMA)?;
            let grammar = crate::grammar::json_grammar(schema, false);
            let space = engine.token_space().map_err(|e| anyhow::anyhow!("{e}"))?;
            Some(space.constraint(grammar).map_err(|e| anyhow::anyhow!(e))?)
        } else {
            None
        };
        let output = Output {
            constraint,
            parser: OutputParser::plain(),
        };
        sched.add_with(i as u64, prompt.to_vec(), params, output, Instant::now())?;
    }
    let mut tokens = 0usize;
    let mut failure = None;
    while !sched.is_empty() {
        sched.step(&mut |ev| match ev {
            Event::Chunk(_, c) => tokens += c.tokens(),
            Event::Done(_, _) | Event::Progress { .. } => {}
            Event::Error(_, e) => failure = Some(e.to_string()),
        });
        if let Some(e) = failure.take() {
            anyhow::bail!("a stream failed: {e}");
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(BatchResult {
        streams,
        constrained,
        generated_tokens: tokens,
        seconds,
        tokens_per_s: tokens as f64 / seconds,
    })
}

/// A resent conversation's cost with and without the prompt cache.
#[derive(Debug, Serialize)]
pub struct ResendResult {
    pub first_prompt_tokens: usize,
    pub resent_prompt_tokens: usize,
    /// Prompt tokens the second request took from the prompt cache.
    pub cached_tokens: usize,
    /// Time to the resent request's first token, served from the cache and computed afresh.
    pub cached_ttft_ms: f64,
    pub fresh_ttft_ms: f64,
}

/// Sends a `prompt_tokens`-token conversation, lets it answer `gen_tokens` greedy tokens, then
/// resends it with the answer and 32 more tokens: once to the same scheduler (its prompt cache:
/// key/value prefixes, or a recurrent model's snapshots) and once to a fresh one without a
/// cache.
pub fn run_resend(
    engine: &Engine,
    prompt_tokens: usize,
    gen_tokens: usize,
) -> anyhow::Result<ResendResult> {
    use crate::scheduler::{Event, Scheduler, SchedulerConfig};

    let first = filler_prompt(engine, prompt_tokens)?;
    let params = |n| GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: Some(n),
        ignore_eos: true,
        ..Default::default()
    };
    // Returns the generated ids, the time to the first one and the cached prompt tokens.
    let ask = |sched: &mut Scheduler, id: u64, prompt: Vec<u32>, n: usize| {
        let start = Instant::now();
        sched.add(id, prompt, params(n), start)?;
        let (mut ids, mut ttft, mut cached, mut failure) = (Vec::new(), None, 0, None);
        while !sched.is_empty() {
            sched.step(&mut |ev| match ev {
                Event::Chunk(_, c) => {
                    ttft.get_or_insert_with(|| start.elapsed());
                    ids.extend(c.token_ids);
                }
                Event::Done(_, outcome) => cached = outcome.usage.cached_prompt_tokens as usize,
                Event::Progress { .. } => {}
                Event::Error(_, e) => failure = Some(e.to_string()),
            });
        }
        if let Some(e) = failure {
            anyhow::bail!("the request failed: {e}");
        }
        let ms = ttft.map_or(0.0, |t| t.as_secs_f64() * 1e3);
        anyhow::Ok((ids, ms, cached))
    };
    let mut cached_sched = Scheduler::new(engine, SchedulerConfig::new(1, 4 << 30));
    let (answer, _, _) = ask(&mut cached_sched, 1, first.clone(), gen_tokens)?;
    let mut resent = first.clone();
    resent.extend(&answer);
    resent.extend(filler_prompt(engine, 32)?);
    let (_, cached_ttft_ms, cached_tokens) = ask(&mut cached_sched, 2, resent.clone(), 1)?;
    let mut fresh = Scheduler::new(engine, SchedulerConfig::new(1, 0));
    let (_, fresh_ttft_ms, _) = ask(&mut fresh, 3, resent.clone(), 1)?;
    Ok(ResendResult {
        first_prompt_tokens: first.len(),
        resent_prompt_tokens: resent.len(),
        cached_tokens,
        cached_ttft_ms,
        fresh_ttft_ms,
    })
}
