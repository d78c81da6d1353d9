//! The scheduler: continuous batching, where many sequences share each decode step, and
//! [`generate`], one request run alone through the same machinery.
//!
//! Every call to [`Scheduler::step`] does at most one prefill chunk (of the oldest sequence
//! still reading its prompt) and then one decode step for every sequence that is generating,
//! as a single batched forward pass. Sequences join as soon as their prompt is read and leave
//! the moment they finish, so a long prompt never stalls the others for longer than a chunk.
//!
//! With one sequence the arithmetic is mlx-lm's `generate_step`: the prompt but its last token
//! is prefilled in chunks of [`PREFILL_STEP`] (or the configured step), the last token produces the first logits, and
//! greedy decoding takes the argmax of the log-probabilities on the device. When every running
//! sequence decodes greedily and nothing waits to join, the next step is queued before this
//! one's tokens are read back, so the host never waits for the device between tokens.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::time::Instant;

use mlx_rs::transforms::{async_eval, eval};
use mlx_rs::{ops, Array, Dtype};
use opta_lmx_shared::protocol::{FinishReason, Timings, TokenLogprob, TopLogprob, Usage};

use crate::cache::LayerCache;
use crate::detok::Detokenizer;
use crate::engine::Engine;
use crate::grammar::Constraint;
use crate::output::OutputParser;
use crate::prefix_cache::PrefixCache;
use crate::prepare::Output;
use crate::request::{Chunk, GenerateError, GenerateParams, Outcome};
use crate::sampling::{self, Sampler};

/// Prompt tokens per forward pass when nothing else is running (mlx-lm's default step).
pub const PREFILL_STEP: usize = 2048;

/// While other sequences are generating, a prefill chunk aims to take about this long, so
/// their streams pause for at most about this much per step.
const FAIR_CHUNK_SECONDS: f64 = 0.25;
/// Bounds for a fair chunk, in tokens.
const MIN_CHUNK: usize = 16;
/// The prefill chunk beside running streams when chunks may not depend on timing (ranks of a
/// tensor-parallel group must split every prompt alike).
const UNTIMED_CHUNK: usize = 256;

/// How a scheduler runs.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Sequences generating together; callers keep the rest waiting.
    pub max_batch: usize,
    /// Bytes for the prompt cache; 0 turns it off.
    pub prompt_cache_bytes: usize,
    /// Prompt tokens per prefill chunk when nothing else runs ([`PREFILL_STEP`] by default);
    /// smaller chunks report progress more often at some cost in speed.
    pub prefill_step: usize,
}

impl SchedulerConfig {
    /// `max_batch` sequences, a prompt cache of `prompt_cache_bytes`, mlx-lm's prefill step.
    pub fn new(max_batch: usize, prompt_cache_bytes: usize) -> Self {
        SchedulerConfig {
            max_batch,
            prompt_cache_bytes,
            prefill_step: PREFILL_STEP,
        }
    }
}

/// What a step produced for one request.
#[derive(Debug)]
pub enum Event {
    /// A prefill chunk finished: `done` of the prompt's `total` tokens are read.
    Progress {
        id: u64,
        done: usize,
        total: usize,
    },
    Chunk(u64, Chunk),
    Done(u64, Outcome),
    Error(u64, GenerateError),
}

/// The outcome of admitting a request.
#[derive(Debug)]
pub enum Admitted {
    /// It runs; its events will come from `step`.
    Running,
    /// It is complete already (`max_tokens: 0`).
    Finished(Outcome),
}

/// One request in the batch.
struct Sequence {
    id: u64,
    params: GenerateParams,
    /// The prompt, then every sampled token: what the cache holds is a prefix of this.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    cache: Vec<LayerCache>,
    sampler: Sampler,
    detok: Detokenizer,
    /// The grammar the output must follow, if any.
    constraint: Option<Constraint>,
    /// Reads reasoning and tool calls out of the text.
    output: OutputParser,
    /// Device-side argmax, with no host-side sampling to do.
    device_greedy: bool,
    max_tokens: usize,
    usage: Usage,
    arrived: Instant,
    started: Instant,
    first_token_at: Option<Instant>,
}

impl Sequence {
    /// Still reading its prompt (all but the last token go through prefill).
    fn prefilling(&self) -> bool {
        self.prefilled + 1 < self.prompt_len
    }

    fn outcome(&self, finish_reason: FinishReason) -> Outcome {
        let end = Instant::now();
        let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e3;
        let first = self.first_token_at.unwrap_or(end);
        Outcome {
            finish_reason,
            usage: self.usage,
            timings: Timings {
                queue_ms: ms(self.arrived, self.started),
                prompt_ms: ms(self.started, first),
                generation_ms: ms(first, end),
                time_to_first_token_ms: ms(self.arrived, first),
            },
        }
    }
}

/// A queued decode step: row i belongs to sequence `ids[i]`.
struct Step {
    ids: Vec<u64>,
    /// [rows, vocab] logits in the model's dtype.
    logits: Array,
    /// [rows, vocab] log-probabilities (what mlx-lm takes the argmax of).
    logprobs: Array,
    /// Device-side greedy choices, [rows]; only when every row decodes greedily.
    tokens: Option<Array>,
}

pub struct Scheduler<'e> {
    engine: &'e Engine,
    config: SchedulerConfig,
    /// Oldest first: prefill goes in arrival order.
    seqs: Vec<Sequence>,
    /// A step queued ahead of reading the previous one.
    ahead: Option<Step>,
    pub prefix_cache: PrefixCache,
    /// Measured prefill speed, to size fair chunks.
    prefill_tokens_per_second: Option<f64>,
    /// Prefill chunks sized from measured speed (off: `UNTIMED_CHUNK`, the same on every run).
    timed_chunks: bool,
}

impl<'e> Scheduler<'e> {
    pub fn new(engine: &'e Engine, config: SchedulerConfig) -> Self {
        Scheduler {
            engine,
            config,
            seqs: Vec::new(),
            ahead: None,
            prefix_cache: PrefixCache::new(config.prompt_cache_bytes),
            prefill_tokens_per_second: None,
            timed_chunks: true,
        }
    }

    /// Running sequences.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Makes every scheduling choice independent of timing, so that identical inputs give
    /// identical forward passes (the ranks of a tensor-parallel group).
    pub fn untimed(mut self) -> Self {
        self.timed_chunks = false;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Ids of the running requests.
    pub fn ids(&self) -> Vec<u64> {
        self.seqs.iter().map(|s| s.id).collect()
    }

    /// Whether another request may join now.
    pub fn has_room(&self) -> bool {
        self.seqs.len() < self.config.max_batch.max(1)
    }

    /// Adds a plain-text request. Invalid requests fail here, before any work is done (the
    /// server checks prompts on arrival already; this is the safety net for every other
    /// caller).
    pub fn add(
        &mut self,
        id: u64,
        prompt: Vec<u32>,
        params: GenerateParams,
        arrived: Instant,
    ) -> Result<Admitted, GenerateError> {
        self.add_with(id, prompt, params, Output::plain(), arrived)
    }

    /// Adds a request whose output is constrained or parsed as `output` says.
    pub fn add_with(
        &mut self,
        id: u64,
        prompt: Vec<u32>,
        params: GenerateParams,
        output: Output,
        arrived: Instant,
    ) -> Result<Admitted, GenerateError> {
        let started = Instant::now();
        self.engine.check_prompt(&prompt)?;
        let context = self.engine.context_length().unwrap_or(usize::MAX);
        let room = context - prompt.len();
        let max_tokens = params.max_tokens.unwrap_or(room).min(room);
        let (cache, reused) = match self.prefix_cache.lookup(&prompt) {
            Some(hit) => hit,
            None => (self.engine.model.new_cache(), 0),
        };
        let sampler = Sampler::new(params.sampling.clone(), &prompt);
        let prompt_len = prompt.len();
        let seq = Sequence {
            id,
            device_greedy: sampler.is_plain_greedy() && output.constraint.is_none(),
            sampler,
            detok: Detokenizer::new(params.stop.clone()),
            constraint: output.constraint,
            output: output.parser,
            params,
            prompt_len,
            tokens: prompt,
            prefilled: reused,
            cache,
            max_tokens,
            usage: Usage {
                prompt_tokens: prompt_len as u32,
                completion_tokens: 0,
                cached_prompt_tokens: reused as u32,
                reasoning_tokens: 0,
            },
            arrived,
            started,
            first_token_at: None,
        };
        if max_tokens == 0 {
            return Ok(Admitted::Finished(seq.outcome(FinishReason::Length)));
        }
        self.seqs.push(seq);
        Ok(Admitted::Running)
    }

    /// Stops a running request; its outcome says `Cancelled`. `None`: not running here.
    pub fn cancel(&mut self, id: u64) -> Option<Outcome> {
        let pos = self.seqs.iter().position(|s| s.id == id)?;
        let seq = self.seqs.remove(pos);
        let outcome = seq.outcome(FinishReason::Cancelled);
        self.retire(seq);
        Some(outcome)
    }

    /// Ends every running request with an error (after a panic in the engine, say).
    pub fn fail_all(&mut self, message: &str, emit: &mut dyn FnMut(Event)) {
        self.ahead = None;
        for seq in self.seqs.drain(..) {
            emit(Event::Error(
                seq.id,
                GenerateError::Panic(message.to_string()),
            ));
        }
    }

    /// One round: a prefill chunk if a prompt is being read, then one decode step for every
    /// generating sequence. Does nothing when nothing runs.
    pub fn step(&mut self, emit: &mut dyn FnMut(Event)) {
        if let Some(i) = self.seqs.iter().position(Sequence::prefilling) {
            match self.prefill_chunk(i) {
                Ok(()) => {
                    let seq = &self.seqs[i];
                    // The last prompt token is read by the first decode step, at once.
                    let done = if seq.prefilling() {
                        seq.prefilled
                    } else {
                        seq.prompt_len
                    };
                    emit(Event::Progress {
                        id: seq.id,
                        done,
                        total: seq.prompt_len,
                    });
                }
                Err(e) => {
                    let seq = self.seqs.remove(i);
                    emit(Event::Error(seq.id, e));
                }
            }
        }
        let step = match self.ahead.take() {
            Some(step) => step,
            None => match self.decode_rows() {
                rows if rows.is_empty() => return,
                rows => match self.queue_step(&rows, None) {
                    Ok(step) => step,
                    Err(e) => return self.fail_rows(&rows, &e, emit),
                },
            },
        };
        if let Err(e) = self.queue_ahead(&step) {
            return self.fail_rows(&step.ids, &e, emit);
        }
        self.prepare_masks(&step.ids, emit);
        if let Err(e) = self.read_step(&step, emit) {
            self.fail_rows(&step.ids, &e, emit);
        }
    }

    /// Reads the next chunk of sequence `i`'s prompt into its cache.
    fn prefill_chunk(&mut self, i: usize) -> Result<(), GenerateError> {
        let others_generating = self.seqs.iter().any(|s| !s.prefilling());
        let size = if others_generating {
            self.fair_chunk().min(self.config.prefill_step)
        } else {
            self.config.prefill_step
        }
        .max(1);
        let seq = &mut self.seqs[i];
        let end = (seq.prefilled + size).min(seq.prompt_len - 1);
        let ids: Vec<i32> = seq.tokens[seq.prefilled..end]
            .iter()
            .map(|&t| t as i32)
            .collect();
        let n = ids.len();
        let ids = Array::from_slice(&ids, &[1, n as i32]);
        let start = Instant::now();
        // Only the cache is needed; MLX never computes the unused hidden states.
        let _ = self.engine.model.forward_hidden(&ids, &mut seq.cache)?;
        eval(seq.cache.iter().flat_map(LayerCache::state))?;
        // Recurrent layers keep this state for the prompt cache (the prompt's end included);
        // without a prompt cache nobody would read it.
        if self.config.prompt_cache_bytes > 0 {
            seq.cache.iter_mut().for_each(LayerCache::mark);
        }
        seq.prefilled = end;
        let seconds = start.elapsed().as_secs_f64();
        if self.timed_chunks && n >= MIN_CHUNK && seconds > 0.0 {
            let rate = n as f64 / seconds;
            self.prefill_tokens_per_second = Some(match self.prefill_tokens_per_second {
                Some(old) => 0.5 * old + 0.5 * rate,
                None => rate,
            });
        }
        Ok(())
    }

    /// Tokens a prefill chunk may take while others generate.
    fn fair_chunk(&self) -> usize {
        if !self.timed_chunks {
            return UNTIMED_CHUNK;
        }
        let tokens = self
            .prefill_tokens_per_second
            .map_or(MIN_CHUNK, |rate| (rate * FAIR_CHUNK_SECONDS) as usize);
        tokens.clamp(MIN_CHUNK, PREFILL_STEP)
    }

    /// Ids of the sequences ready to decode, in batch order.
    fn decode_rows(&self) -> Vec<u64> {
        self.seqs
            .iter()
            .filter(|s| !s.prefilling())
            .map(|s| s.id)
            .collect()
    }

    /// Queues a decode step for `rows`. Inputs are each sequence's last token, or
    /// `device_inputs` ([rows]) when the previous step's choices are still on the device.
    fn queue_step(
        &mut self,
        rows: &[u64],
        device_inputs: Option<&Array>,
    ) -> Result<Step, GenerateError> {
        let inputs = match device_inputs {
            Some(tokens) => tokens.reshape(&[1, rows.len() as i32])?,
            None => {
                let ids: Vec<i32> = rows
                    .iter()
                    .filter_map(|id| self.seq(*id))
                    .map(|s| s.tokens.last().copied().unwrap_or(0) as i32)
                    .collect();
                Array::from_slice(&ids, &[1, ids.len() as i32])
            }
        };
        let mut greedy = true;
        let mut caches: Vec<&mut [LayerCache]> = Vec::with_capacity(rows.len());
        // `rows` follows `self.seqs`' order, so one pass finds them all.
        let mut wanted = rows.iter().peekable();
        for seq in self.seqs.iter_mut() {
            if wanted.peek() == Some(&&seq.id) {
                wanted.next();
                greedy &= seq.device_greedy;
                caches.push(&mut seq.cache);
            }
        }
        if caches.len() != rows.len() {
            return Err(GenerateError::Engine(
                "a decode row lost its sequence".into(),
            ));
        }
        let logits = self.engine.model.forward_batch(&inputs, &mut caches)?;
        let logprobs = logits.subtract(ops::logsumexp_axis(&logits, -1, true)?)?;
        let tokens = if greedy {
            Some(ops::indexing::argmax_axis(&logprobs, -1, None)?)
        } else {
            None
        };
        let mut outputs: Vec<&Array> = vec![&logprobs];
        outputs.extend(tokens.as_ref());
        async_eval(outputs)?;
        Ok(Step {
            ids: rows.to_vec(),
            logits,
            logprobs,
            tokens,
        })
    }

    /// Queues the step after `step` before `step` is read, when its inputs are already on the
    /// device (every row greedy) and the batch would not change: nobody is reading a prompt.
    /// Rows that finish when `step` is read simply go unread.
    fn queue_ahead(&mut self, step: &Step) -> Result<(), GenerateError> {
        let Some(tokens) = &step.tokens else {
            return Ok(());
        };
        let same_batch = self.seqs.len() == step.ids.len()
            && self.seqs.iter().zip(&step.ids).all(|(s, id)| s.id == *id);
        let room = self
            .seqs
            .iter()
            .all(|s| s.usage.completion_tokens as usize + 1 < s.max_tokens && !s.prefilling());
        if same_batch && room {
            self.ahead = Some(self.queue_step(&step.ids, Some(tokens))?);
        }
        Ok(())
    }

    /// Computes the grammar masks of the step's constrained rows, while the device is still
    /// busy with the forward pass. A grammar that fails ends its own request only.
    fn prepare_masks(&mut self, rows: &[u64], emit: &mut dyn FnMut(Event)) {
        let mut failed = Vec::new();
        for seq in self.seqs.iter_mut().filter(|s| rows.contains(&s.id)) {
            if let Some(c) = &mut seq.constraint {
                if let Err(e) = c.prepare() {
                    failed.push((seq.id, e));
                }
            }
        }
        for (id, e) in failed {
            self.seqs.retain(|s| s.id != id);
            emit(Event::Error(
                id,
                GenerateError::Engine(format!("grammar: {e}")),
            ));
        }
    }

    /// Reads a step's tokens and moves each of its sequences on.
    fn read_step(&mut self, step: &Step, emit: &mut dyn FnMut(Event)) -> Result<(), GenerateError> {
        let wants_dist = step.ids.iter().any(|id| {
            self.seq(*id)
                .is_some_and(|s| s.params.logprobs.is_some() || !s.device_greedy)
        });
        let device_ids: Option<Vec<u32>> = match &step.tokens {
            Some(t) => Some(host_u32(t)?),
            None => None,
        };
        // Greedy rows report logprobs from the device's log-probabilities; sampled rows
        // need the raw logits on the host.
        let host = if !wants_dist {
            None
        } else if device_ids.is_some() {
            Some(host_matrix(&step.logprobs)?)
        } else {
            Some(host_matrix(&step.logits)?)
        };
        let now = Instant::now();
        for (row, &id) in step.ids.iter().enumerate() {
            let Some(pos) = self.seqs.iter().position(|s| s.id == id) else {
                continue; // finished or cancelled since this step was queued
            };
            let host_row = host
                .as_ref()
                .map(|(data, vocab)| &data[row * vocab..(row + 1) * vocab]);
            let engine = self.engine;
            let seq = &mut self.seqs[pos];
            let (token, logprobs) = match &device_ids {
                Some(ids) => {
                    let token = ids.get(row).copied().ok_or_else(|| {
                        GenerateError::Engine("a decode step returned too few tokens".into())
                    })?;
                    let lp = match (seq.params.logprobs, host_row) {
                        (Some(n), Some(dist)) => vec![token_logprob(engine, token, dist, n)],
                        _ => Vec::new(),
                    };
                    (token, lp)
                }
                None => {
                    let Some(raw) = host_row else {
                        return Err(GenerateError::Engine("logits were not read".into()));
                    };
                    let mut logits = raw.to_vec();
                    seq.sampler.process(&mut logits);
                    let token = match sample(seq, &mut logits) {
                        Ok(token) => token,
                        Err(e) => {
                            // The grammar's failure is its own request's, not the batch's.
                            let seq = self.seqs.remove(pos);
                            emit(Event::Error(
                                seq.id,
                                GenerateError::Engine(format!("grammar: {e}")),
                            ));
                            continue;
                        }
                    };
                    let lp = match seq.params.logprobs {
                        Some(n) => {
                            let dist = sampling::log_softmax(&logits);
                            vec![token_logprob(engine, token, &dist, n)]
                        }
                        None => Vec::new(),
                    };
                    (token, lp)
                }
            };
            seq.first_token_at.get_or_insert(now);
            if let Some(reason) = advance(engine, seq, token, logprobs, emit)? {
                let seq = self.seqs.remove(pos);
                emit(Event::Done(seq.id, seq.outcome(reason)));
                self.retire(seq);
            }
        }
        Ok(())
    }

    /// Keeps a finished sequence's states for later prompts that share its prefix.
    fn retire(&mut self, seq: Sequence) {
        if !seq.prefilling() {
            self.prefix_cache.insert(&seq.tokens, &seq.cache);
        }
    }

    fn fail_rows(&mut self, rows: &[u64], e: &GenerateError, emit: &mut dyn FnMut(Event)) {
        self.ahead = None;
        self.seqs.retain(|s| {
            let failed = rows.contains(&s.id);
            if failed {
                emit(Event::Error(s.id, GenerateError::Engine(e.to_string())));
            }
            !failed
        });
    }

    fn seq(&self, id: u64) -> Option<&Sequence> {
        self.seqs.iter().find(|s| s.id == id)
    }
}

/// Picks the next token from processed logits, within the sequence's grammar if it has
/// one, and commits it to the grammar.
fn sample(seq: &mut Sequence, logits: &mut [f32]) -> Result<u32, String> {
    if let Some(c) = &mut seq.constraint {
        c.apply(logits)?;
        if logits.iter().all(|l| *l == f32::NEG_INFINITY) {
            return Err("the grammar allows no token of this model".into());
        }
    }
    let token = seq.sampler.choose(logits);
    if let Some(c) = &mut seq.constraint {
        c.commit(token)?;
    }
    Ok(token)
}

/// Moves a sequence on by one sampled token: streams its text, and returns why it finished,
/// if it did.
fn advance(
    engine: &Engine,
    seq: &mut Sequence,
    token: u32,
    logprobs: Vec<TokenLogprob>,
    emit: &mut dyn FnMut(Event),
) -> Result<Option<FinishReason>, GenerateError> {
    seq.usage.completion_tokens += 1;
    seq.sampler.accept(token);
    seq.tokens.push(token);
    let eos = !seq.params.ignore_eos && engine.tokenizer.eos_ids().contains(&token);
    let (text, stopped) = if eos {
        (seq.detok.finish(), false)
    } else {
        seq.detok.push(&engine.tokenizer, token)?
    };
    let out_of_room = seq.usage.completion_tokens as usize >= seq.max_tokens;
    // The grammar is complete, or the tool-call limit was reached: nothing more can follow.
    let complete =
        seq.constraint.as_ref().is_some_and(Constraint::is_finished) || seq.output.is_done();
    let mut chunk = Chunk {
        text,
        deltas: Vec::new(),
        token_ids: if eos { Vec::new() } else { vec![token] },
        logprobs: if eos { Vec::new() } else { logprobs },
    };
    let ending = eos || stopped || out_of_room || complete;
    if ending && !eos && !stopped {
        chunk.text.push_str(&seq.detok.finish());
    }
    chunk.deltas = seq
        .output
        .push(&chunk.text, chunk.token_ids.len() as u32, ending);
    seq.usage.reasoning_tokens = seq.output.reasoning_tokens;
    if !chunk.text.is_empty() || !chunk.token_ids.is_empty() || !chunk.deltas.is_empty() {
        emit(Event::Chunk(seq.id, chunk));
    }
    Ok(if eos || stopped || complete {
        Some(FinishReason::Stop)
    } else if out_of_room {
        Some(FinishReason::Length)
    } else {
        None
    })
}

/// The chosen token's logprob and the `n` most likely alternatives.
fn token_logprob(engine: &Engine, id: u32, dist: &[f32], n: usize) -> TokenLogprob {
    let entry = |tid: u32| {
        let bytes = engine.tokenizer.token_bytes(tid);
        TopLogprob {
            token_id: tid,
            token: String::from_utf8_lossy(&bytes).into_owned(),
            logprob: dist.get(tid as usize).copied().unwrap_or(f32::NEG_INFINITY),
            bytes,
        }
    };
    let mut order: Vec<u32> = (0..dist.len() as u32).collect();
    let n = n.min(order.len());
    if n > 0 {
        order.select_nth_unstable_by(n - 1, |&a, &b| {
            dist[b as usize].total_cmp(&dist[a as usize])
        });
    }
    order.truncate(n);
    order.sort_by(|&a, &b| dist[b as usize].total_cmp(&dist[a as usize]));
    let chosen = entry(id);
    TokenLogprob {
        token_id: id,
        token: chosen.token,
        logprob: chosen.logprob,
        bytes: chosen.bytes,
        top: order.into_iter().map(entry).collect(),
    }
}

/// A [rows, vocab] array on the host as f32, with its row length.
fn host_matrix(a: &Array) -> Result<(Vec<f32>, usize), GenerateError> {
    let vocab = a.shape().last().copied().unwrap_or(0) as usize;
    let a = if a.dtype() == Dtype::Float32 {
        a.clone()
    } else {
        a.as_dtype(Dtype::Float32)?
    };
    eval([&a])?;
    Ok((a.as_slice::<f32>().to_vec(), vocab))
}

fn host_u32(a: &Array) -> Result<Vec<u32>, GenerateError> {
    let a = a.as_dtype(Dtype::Uint32)?;
    eval([&a])?;
    Ok(a.as_slice::<u32>().to_vec())
}

/// Runs one generation alone, through a scheduler of one: the command line, the benchmark
/// and the tests use it. `on_chunk` receives text as it becomes final; returning
/// `ControlFlow::Break` cancels (finish reason `Cancelled`).
pub fn generate(
    engine: &Engine,
    prompt: &[u32],
    params: &GenerateParams,
    mut on_chunk: impl FnMut(Chunk) -> ControlFlow<()>,
) -> Result<Outcome, GenerateError> {
    let mut sched = Scheduler::new(engine, SchedulerConfig::new(1, 0));
    if let Admitted::Finished(outcome) =
        sched.add(0, prompt.to_vec(), params.clone(), Instant::now())?
    {
        return Ok(outcome);
    }
    let mut events = VecDeque::new();
    loop {
        sched.step(&mut |ev| events.push_back(ev));
        let mut cancel = false;
        while let Some(ev) = events.pop_front() {
            match ev {
                Event::Chunk(_, chunk) => cancel |= on_chunk(chunk).is_break(),
                Event::Progress { .. } => {}
                Event::Done(_, outcome) => return Ok(outcome),
                Event::Error(_, e) => return Err(e),
            }
        }
        if cancel {
            if let Some(outcome) = sched.cancel(0) {
                return Ok(outcome);
            }
        }
        if sched.is_empty() {
            return Err(GenerateError::Engine(
                "the request ended without an outcome".into(),
            ));
        }
    }
}
