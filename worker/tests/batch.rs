//! Continuous batching and the prompt cache on the real 4-bit test model, loaded as the server
//! loads it: requests in a batch produce what they produce alone, prompts are read in chunks
//! between decode steps, and a resent conversation reuses its cached prefix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use opta_lmx_shared::protocol::{FinishReason, SamplingParams};
use opta_lmx_worker::engine::Engine;
use opta_lmx_worker::request::{GenerateParams, Outcome};
use opta_lmx_worker::scheduler::{generate, Admitted, Event, Scheduler, SchedulerConfig};
use serde_json::{json, Value};

fn engine() -> Engine {
    load("SmolLM2-135M-Instruct-4bit")
}

fn load(name: &str) -> Engine {
    let dir = std::env::var_os("OPTA_LMX_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/models/opta"));
    let engine = Engine::load(&dir.join(name)).unwrap();
    // MLX's exit-time destructors can crash once the tests are done: leave without them.
    opta_lmx_worker::process::skip_exit_destructors();
    engine
}

fn run_all(sched: &mut Scheduler, log: &mut Log) {
    let mut n = log.chunks.last().map_or(0, |c| c.1 + 1);
    while !sched.is_empty() {
        step(sched, log, n);
        n += 1;
    }
}

/// The newer families in the scheduler, decoded together one token each, give what they give
/// alone, as loaded by the server (quantized experts expanded on a CPU): Qwen3 MoE and GLM-4.5
/// expert layers (prompts long enough that their (token, expert) pairs are sorted by expert),
/// Ministral 3's per-position query scale and sliding layer, Phi-3's LongRoPE, Granite's
/// multipliers, and MXFP4/NVFP4 weights (expanded at load through the mode-aware dequantize).
#[test]
fn newer_families_batch_as_they_run_alone() {
    for name in [
        "tiny-random-qwen3-moe-4bit",
        "tiny-random-qwen3-moe",
        "tiny-random-glm4-moe",
        "tiny-random-ministral3",
        "tiny-random-phi3",
        "tiny-random-granite",
        "tiny-random-llama-mxfp4",
        "tiny-random-llama-nvfp4",
        "tiny-random-gpt-oss-mxfp4",
        "tiny-random-qwen3.5-moe-4bit",
        "tiny-random-smollm3",
        "tiny-random-deepseek-v3-4bit",
        "tiny-random-gemma4-moe-4bit",
        "tiny-random-nemotron-h-4bit",
    ] {
        let engine = load(name);
        let prompts: Vec<Vec<u32>> = [
            "hi",
            "Write a haiku about the sea.",
            "Name three colours of the rainbow.",
        ]
        .iter()
        .map(|t| prompt(&engine, &user(t)))
        .collect();
        let mut sched = Scheduler::new(&engine, config(8, 0));
        batched_as_alone(&engine, &mut sched, &prompts, name);
    }
}

/// Runs `prompts` together (12 greedy tokens each, ids 0..) and checks each against itself
/// alone; returns the log.
fn batched_as_alone(
    engine: &Engine,
    sched: &mut Scheduler,
    prompts: &[Vec<u32>],
    what: &str,
) -> Log {
    let mut log = Log::default();
    for (i, p) in prompts.iter().enumerate() {
        sched
            .add(i as u64, p.clone(), greedy(12), Instant::now())
            .unwrap();
    }
    run_all(sched, &mut log);
    for (i, p) in prompts.iter().enumerate() {
        assert_eq!(
            log.ids[&(i as u64)],
            alone(engine, p, &greedy(12)),
            "{what}: prompt {i}"
        );
    }
    log
}

/// Gemma 3's sliding-window layers (window 8 in the tiny model) in the scheduler: prompts
/// shorter and far longer than the window, one long enough that its local layers' caches
/// drop old positions, batched together; then each conversation resent with a new turn, which
/// must reuse its cached prefix (the trimmed one included) and still answer as alone.
#[test]
fn sliding_window_layers_batch_and_reuse_cached_prefixes() {
    // Gemma 3's local layers, gpt-oss's alternating windows with attention sinks,
    // OLMo 3's three sliding layers to one full, and Gemma 4's, whose last layers attend over
    // earlier layers' caches (sliding and global).
    for name in [
        "tiny-random-gemma3",
        "tiny-random-gpt-oss",
        "tiny-random-olmo3",
        "tiny-random-gemma4",
    ] {
        windowed_model_batches_and_reuses(name);
    }
}

/// Recurrent hybrids the same way (Gated DeltaNet, LFM2's short convolutions, Mamba-2): each
/// sequence's recurrent state and convolution window through batched decode steps, and a resent conversation served from the snapshot
/// taken where its prompt ended (a recurrent state cannot be cut back like keys and values).
#[test]
fn recurrent_layers_batch_and_reuse_their_snapshots() {
    for name in [
        "tiny-random-qwen3.5",
        "tiny-random-qwen3-next",
        "tiny-random-lfm2",
        "tiny-random-nemotron-h",
    ] {
        windowed_model_batches_and_reuses(name);
    }
}

/// DeepSeek-V3's latent cache the same way: a batch mixes prompts (expanded keys and values)
/// and single-token steps (the absorbed form), and resent conversations reuse their latents.
#[test]
fn latent_attention_batches_and_reuses_cached_prefixes() {
    windowed_model_batches_and_reuses("tiny-random-deepseek-v3");
}

fn windowed_model_batches_and_reuses(name: &str) {
    let engine = load(name);
    let texts = [
        "hi".to_string(),
        "Write a haiku about the sea.".to_string(),
        "The quick brown fox jumps over the lazy dog. ".repeat(70),
    ];
    let turns: Vec<Value> = texts.iter().map(|t| user(t)).collect();
    let prompts: Vec<Vec<u32>> = turns.iter().map(|t| prompt(&engine, t)).collect();
    assert!(prompts[2].len() > 600, "{} tokens", prompts[2].len());
    let mut sched = Scheduler::new(&engine, config(8, 256));
    let mut log = batched_as_alone(&engine, &mut sched, &prompts, name);
    for (i, turn) in turns.iter().enumerate() {
        let answer = engine.tokenizer.decode(&log.ids[&(i as u64)]).unwrap();
        let mut next = turn.as_array().unwrap().clone();
        next.push(json!({"role": "assistant", "content": answer}));
        next.push(json!({"role": "user", "content": "And then?"}));
        let p = prompt(&engine, &Value::Array(next));
        let id = 10 + i as u64;
        sched
            .add(id, p.clone(), greedy(12), Instant::now())
            .unwrap();
        run_all(&mut sched, &mut log);
        let cached = log.done[&id].usage.cached_prompt_tokens as usize;
        // Keys and values serve any prefix; recurrent states at least the snapshot where the
        // prompt's prefill ended, one token before its end.
        let least = if engine.model.has_recurrent_layers() {
            prompts[i].len() - 1
        } else {
            prompts[i].len()
        };
        assert!(
            cached >= least,
            "{name}: prompt {i}: reused {cached} tokens"
        );
        assert_eq!(
            log.ids[&id],
            alone(&engine, &p, &greedy(12)),
            "resent prompt {i}"
        );
    }
}

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: Some(max_tokens),
        ..Default::default()
    }
}

fn prompt(engine: &Engine, messages: &Value) -> Vec<u32> {
    engine.chat_prompt(messages, None, true).unwrap()
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

fn alone(engine: &Engine, prompt: &[u32], params: &GenerateParams) -> Vec<u32> {
    let mut ids = Vec::new();
    generate(engine, prompt, params, |c| {
        ids.extend(c.token_ids);
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    ids
}

/// What happened to each request, in event order.
#[derive(Default)]
struct Log {
    ids: HashMap<u64, Vec<u32>>,
    done: HashMap<u64, Outcome>,
    /// (request, step number) for every chunk.
    chunks: Vec<(u64, usize)>,
    /// (request, tokens read, prompt tokens) after every prefill chunk.
    progress: Vec<(u64, usize, usize)>,
}

fn step(sched: &mut Scheduler, log: &mut Log, step_no: usize) {
    sched.step(&mut |ev| match ev {
        Event::Chunk(id, c) => {
            log.ids.entry(id).or_default().extend(c.token_ids);
            log.chunks.push((id, step_no));
        }
        Event::Done(id, o) => {
            log.done.insert(id, o);
        }
        Event::Progress { id, done, total } => log.progress.push((id, done, total)),
        Event::Error(id, e) => panic!("request {id} failed: {e}"),
    });
}

fn config(max_batch: usize, cache_mb: usize) -> SchedulerConfig {
    SchedulerConfig::new(max_batch, cache_mb << 20)
}

#[test]
fn greedy_output_in_a_batch_is_the_output_alone() {
    let engine = engine();
    let cases = [
        ("What is the capital of France?", 24),
        ("Write a haiku about the sea.", 40),
        ("Count from one to ten.", 8),
        (
            "Name three colours of the rainbow and explain where rainbows come from.",
            32,
        ),
        ("hi", 16),
    ];
    let prompts: Vec<Vec<u32>> = cases
        .iter()
        .map(|(t, _)| prompt(&engine, &user(t)))
        .collect();
    let expected: Vec<Vec<u32>> = prompts
        .iter()
        .zip(&cases)
        .map(|(p, (_, n))| alone(&engine, p, &greedy(*n)))
        .collect();

    let mut sched = Scheduler::new(&engine, config(8, 0));
    let mut log = Log::default();
    // Three start together; the others join while those are generating.
    for (i, p) in prompts.iter().enumerate().take(3) {
        let admitted = sched
            .add(i as u64, p.clone(), greedy(cases[i].1), Instant::now())
            .unwrap();
        assert!(matches!(admitted, Admitted::Running));
    }
    let mut n = 0;
    while !sched.is_empty() {
        if n == 3 || n == 6 {
            let i = n / 3 + 2;
            sched
                .add(
                    i as u64,
                    prompts[i].clone(),
                    greedy(cases[i].1),
                    Instant::now(),
                )
                .unwrap();
        }
        step(&mut sched, &mut log, n);
        n += 1;
    }
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(&log.ids[&(i as u64)], want, "request {i} ({})", cases[i].0);
        assert_ne!(log.done[&(i as u64)].finish_reason, FinishReason::Cancelled);
    }
    // They really ran together: fewer steps than tokens generated.
    let total: usize = expected.iter().map(Vec::len).sum();
    assert!(n < total, "{n} steps for {total} tokens");
}

#[test]
fn a_long_prompt_is_read_in_chunks_while_others_keep_generating() {
    let engine = engine();
    let short = prompt(&engine, &user("Tell me a long story about a dragon."));
    let long_text = "The quick brown fox jumps over the lazy dog. ".repeat(40);
    let long = prompt(&engine, &user(&long_text));
    assert!(long.len() > 300, "{} prompt tokens", long.len());

    let mut sched = Scheduler::new(&engine, config(8, 0));
    let mut log = Log::default();
    let endless = GenerateParams {
        ignore_eos: true,
        ..greedy(400)
    };
    sched.add(1, short, endless, Instant::now()).unwrap();
    for n in 0..3 {
        step(&mut sched, &mut log, n);
    }
    sched
        .add(2, long.clone(), greedy(4), Instant::now())
        .unwrap();
    let mut n = 3;
    while !log.done.contains_key(&2) {
        step(&mut sched, &mut log, n);
        n += 1;
    }
    let first_of_2 = log
        .chunks
        .iter()
        .find(|(id, _)| *id == 2)
        .map(|c| c.1)
        .unwrap();
    let tokens_of_1_meanwhile = log
        .chunks
        .iter()
        .filter(|(id, s)| *id == 1 && (3..first_of_2).contains(s))
        .count();
    // Request 1 got a token in every step while request 2's prompt was being read.
    assert!(first_of_2 > 4, "the long prompt took a single step");
    assert_eq!(tokens_of_1_meanwhile, first_of_2 - 3);
    // And the chunked prompt gives the same answer as reading it whole.
    assert_eq!(log.ids[&2], alone(&engine, &long, &greedy(4)));
}

/// A prompt read alone in configured steps reports its progress after every chunk, rising to
/// the whole prompt, and gives the answer it gives read in mlx-lm's step.
#[test]
fn a_prefill_reports_progress_after_every_chunk() {
    let engine = engine();
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(30);
    let long = prompt(&engine, &user(&text));
    let step_size = 64;
    let mut sched = Scheduler::new(
        &engine,
        SchedulerConfig {
            prefill_step: step_size,
            ..config(1, 0)
        },
    );
    let mut log = Log::default();
    sched
        .add(7, long.clone(), greedy(3), Instant::now())
        .unwrap();
    run_all(&mut sched, &mut log);
    let chunks = (long.len() - 1).div_ceil(step_size);
    assert_eq!(log.progress.len(), chunks, "one report per chunk");
    let done: Vec<usize> = log.progress.iter().map(|p| p.1).collect();
    assert!(done.windows(2).all(|w| w[0] < w[1]), "{done:?}");
    assert_eq!(done[0], step_size);
    assert!(log.progress.iter().all(|p| p.0 == 7 && p.2 == long.len()));
    assert_eq!(log.progress.last().map(|p| p.1), Some(long.len()));
    assert_eq!(log.ids[&7], alone(&engine, &long, &greedy(3)));
}

#[test]
fn a_resent_conversation_reuses_its_prefix_with_the_same_answer() {
    let engine = engine();
    let turn1 = json!([
        {"role": "system", "content": "You are a helpful assistant who answers briefly."},
        {"role": "user", "content": "What is the capital of France?"}
    ]);
    let mut sched = Scheduler::new(&engine, config(8, 64));
    let mut log = Log::default();
    let p1 = prompt(&engine, &turn1);
    sched
        .add(1, p1.clone(), greedy(16), Instant::now())
        .unwrap();
    let mut n = 0;
    while !sched.is_empty() {
        step(&mut sched, &mut log, n);
        n += 1;
    }
    assert_eq!(log.done[&1].usage.cached_prompt_tokens, 0);
    let answer = engine.tokenizer.decode(&log.ids[&1]).unwrap();

    let mut turn2 = turn1.as_array().unwrap().clone();
    turn2.push(json!({"role": "assistant", "content": answer}));
    turn2.push(json!({"role": "user", "content": "And of Germany?"}));
    let turn2 = Value::Array(turn2);
    let p2 = prompt(&engine, &turn2);
    sched
        .add(2, p2.clone(), greedy(16), Instant::now())
        .unwrap();
    while !sched.is_empty() {
        step(&mut sched, &mut log, n);
        n += 1;
    }
    let cached = log.done[&2].usage.cached_prompt_tokens as usize;
    assert!(cached >= p1.len(), "reused {cached} of {} tokens", p2.len());
    assert!(cached < p2.len());
    assert_eq!(sched.prefix_cache.hits, 1);
    assert_eq!(sched.prefix_cache.hit_tokens, cached as u64);
    // The same answer as computing the whole prompt.
    assert_eq!(log.ids[&2], alone(&engine, &p2, &greedy(16)));
}

/// Constrained and free requests share decode steps: the free ones still produce exactly
/// what they produce alone, the constrained ones valid JSON that ends their generation, and
/// a constrained request that repeats a cached conversation starts from the prompt cache.
#[test]
fn constrained_and_free_rows_share_a_batch_and_the_prompt_cache() {
    use opta_lmx_shared::protocol::{answer_text, AnswerFormat, OutputSpec, Prompt};
    use opta_lmx_worker::prepare::prepare;

    let engine = engine();
    let free_prompts = [
        prompt(&engine, &user("Write a haiku about the sea.")),
        prompt(&engine, &user("Count from one to ten.")),
    ];
    let expected: Vec<Vec<u32>> = free_prompts
        .iter()
        .map(|p| alone(&engine, p, &greedy(24)))
        .collect();
    let schema = json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150}},
        "required": ["name", "age"]});
    let constrained = |id: u64| {
        let spec = OutputSpec {
            format: AnswerFormat::JsonSchema {
                schema_json: schema.to_string(),
                strict: false,
            },
            ..OutputSpec::default()
        };
        prepare(
            &engine,
            Prompt::user("Describe a person as JSON."),
            &spec,
            id,
        )
        .unwrap()
    };

    let mut sched = Scheduler::new(&engine, config(8, 64));
    let mut text: HashMap<u64, String> = HashMap::new();
    let mut ids: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut done: HashMap<u64, Outcome> = HashMap::new();
    for (i, p) in free_prompts.iter().enumerate() {
        sched
            .add(i as u64, p.clone(), greedy(24), Instant::now())
            .unwrap();
    }
    for id in [10, 11] {
        let c = constrained(id);
        let params = GenerateParams {
            sampling: SamplingParams {
                temperature: if id == 10 { 0.0 } else { 0.8 },
                seed: Some(id),
                ..SamplingParams::default()
            },
            max_tokens: Some(60),
            ..Default::default()
        };
        sched
            .add_with(id, c.ids, params, c.output, Instant::now())
            .unwrap();
    }
    while !sched.is_empty() {
        sched.step(&mut |ev| match ev {
            Event::Chunk(id, c) => {
                ids.entry(id).or_default().extend(c.token_ids);
                text.entry(id)
                    .or_default()
                    .push_str(&answer_text(&c.deltas));
            }
            Event::Done(id, o) => {
                done.insert(id, o);
            }
            Event::Progress { .. } => {}
            Event::Error(id, e) => panic!("request {id} failed: {e}"),
        });
    }
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(
            &ids[&(i as u64)],
            want,
            "free request {i} changed in the batch"
        );
    }
    for id in [10, 11] {
        let v: Value = serde_json::from_str(&text[&id])
            .unwrap_or_else(|e| panic!("request {id}: {:?}: {e}", text[&id]));
        assert!(v["name"].is_string() && v["age"].is_i64(), "{v}");
        assert_eq!(
            done[&id].finish_reason,
            FinishReason::Stop,
            "the grammar ended it"
        );
    }

    // The same conversation again, constrained: its prompt comes from the cache.
    let c = constrained(12);
    sched
        .add_with(12, c.ids, greedy(60), c.output, Instant::now())
        .unwrap();
    let mut cached = 0;
    while !sched.is_empty() {
        sched.step(&mut |ev| {
            if let Event::Done(_, o) = ev {
                cached = o.usage.cached_prompt_tokens;
            }
        });
    }
    assert!(cached > 10, "cached prompt tokens: {cached}");
}
