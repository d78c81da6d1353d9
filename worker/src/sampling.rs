//! Choosing the next token from a logit vector: penalties, logit bias, temperature, top-k,
//! top-p, min-p and a seeded random draw. Runs on the host over a copy of the logits (one
//! vocabulary-sized vector per token), which keeps it simple, exact to reason about and
//! reproducible across platforms for a given seed.

use std::collections::{HashMap, VecDeque};

use opta_lmx_shared::protocol::SamplingParams;

/// SplitMix64: small, fast and good enough for drawing tokens; seeded for reproducibility.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// How often each token was generated (presence and frequency penalties).
    counts: HashMap<u32, u32>,
    /// The most recent tokens, prompt included (repetition penalty).
    recent: VecDeque<u32>,
}

/// A seed for a request that gave none: the clock's nanoseconds.
pub fn fresh_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5EED)
}

impl Sampler {
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Self {
        let seed = params.seed.unwrap_or_else(fresh_seed);
        let keep = params.repetition_context as usize;
        let recent = prompt[prompt.len().saturating_sub(keep)..]
            .iter()
            .copied()
            .collect();
        Sampler {
            params,
            rng: Rng(seed),
            counts: HashMap::new(),
            recent,
        }
    }

    /// Greedy with no logit changes: the engine can take the argmax on the device, exactly
    /// as mlx-lm does, without copying the logits out.
    pub fn is_plain_greedy(&self) -> bool {
        let p = &self.params;
        p.temperature <= 0.0 && !self.changes_logits()
    }

    fn changes_logits(&self) -> bool {
        let p = &self.params;
        p.repetition_penalty != 1.0
            || p.presence_penalty != 0.0
            || p.frequency_penalty != 0.0
            || !p.logit_bias.is_empty()
    }

    /// Applies bias and penalties to `logits` in place.
    pub fn process(&self, logits: &mut [f32]) {
        let p = &self.params;
        for &(id, bias) in &p.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        if p.repetition_penalty != 1.0 && p.repetition_penalty > 0.0 {
            let mut seen: Vec<u32> = self.recent.iter().copied().collect();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    // llama.cpp / transformers: shrink the logit towards "less likely".
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&id, &n) in &self.counts {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l -= p.frequency_penalty * n as f32 + p.presence_penalty;
                }
            }
        }
    }

    /// Picks a token from processed logits.
    pub fn choose(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        let inv_t = 1.0 / f64::from(p.temperature);
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        // Candidates sorted by probability, best first.
        let mut cand: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, ((l as f64 - max) * inv_t).exp()))
            .collect();
        if cand.is_empty() {
            return argmax(logits);
        }
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            cand.truncate(p.top_k as usize);
        }
        let total: f64 = cand.iter().map(|c| c.1).sum();
        if p.min_p > 0.0 {
            let floor = cand[0].1 * f64::from(p.min_p);
            cand.retain(|c| c.1 >= floor);
        }
        if p.top_p < 1.0 && p.top_p > 0.0 {
            let mut acc = 0.0;
            let mut keep = 0;
            for c in &cand {
                acc += c.1 / total;
                keep += 1;
                if acc >= f64::from(p.top_p) {
                    break;
                }
            }
            cand.truncate(keep.max(1));
        }
        let total: f64 = cand.iter().map(|c| c.1).sum();
        let mut r = self.rng.next_f64() * total;
        for c in &cand {
            r -= c.1;
            if r < 0.0 {
                return c.0;
            }
        }
        cand[cand.len() - 1].0
    }

    /// Records a generated token for the penalties.
    pub fn accept(&mut self, id: u32) {
        *self.counts.entry(id).or_default() += 1;
        if self.params.repetition_context > 0 {
            if self.recent.len() == self.params.repetition_context as usize {
                self.recent.pop_front();
            }
            self.recent.push_back(id);
        }
    }
}

/// Index of the largest value; the first one on ties, as MLX's argmax.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Log-softmax in f64 for stable logprobs.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    logits.iter().map(|&l| (l as f64 - lse) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        }
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let draw = |seed| {
            let mut s = Sampler::new(
                SamplingParams {
                    seed: Some(seed),
                    ..params()
                },
                &[],
            );
            (0..40).map(|_| s.choose(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_one_and_zero_temperature_are_argmax() {
        let logits = [0.1, 2.0, 1.9, -3.0];
        let mut s = Sampler::new(
            SamplingParams {
                top_k: 1,
                seed: Some(1),
                ..params()
            },
            &[],
        );
        assert!((0..20).all(|_| s.choose(&logits) == 1));
        let mut g = Sampler::new(SamplingParams::greedy(), &[]);
        assert_eq!(g.choose(&logits), 1);
        assert!(g.is_plain_greedy());
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // Token 0 holds ~88% of the mass at temperature 1.
        let logits = [4.0, 2.0, 0.0, 0.0];
        for p in [
            SamplingParams {
                top_p: 0.5,
                seed: Some(3),
                ..params()
            },
            SamplingParams {
                min_p: 0.5,
                seed: Some(3),
                ..params()
            },
        ] {
            let mut s = Sampler::new(p, &[]);
            assert!((0..50).all(|_| s.choose(&logits) == 0));
        }
    }

    #[test]
    fn penalties_and_bias_move_logits() {
        let mut s = Sampler::new(
            SamplingParams {
                repetition_penalty: 2.0,
                repetition_context: 8,
                presence_penalty: 0.5,
                frequency_penalty: 0.25,
                logit_bias: vec![(3, -100.0)],
                ..params()
            },
            &[0],
        );
        s.accept(1);
        s.accept(1);
        let mut l = vec![2.0, -2.0, 1.0, 5.0];
        s.process(&mut l);
        assert_eq!(l[0], 1.0, "repetition penalty divides a positive logit");
        // -2 * 2 (repetition) - 2 * 0.25 (frequency) - 0.5 (presence)
        assert_eq!(l[1], -5.0);
        assert_eq!(l[2], 1.0, "untouched");
        assert_eq!(l[3], -95.0, "logit bias");
    }

    #[test]
    fn log_softmax_normalises() {
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let total: f64 = lp.iter().map(|&x| (x as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert_eq!(argmax(&lp), 2);
    }
}
