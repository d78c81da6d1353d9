//! The shared layers: linear (dense or affine-quantized), embedding, RMSNorm, attention (with
//! sliding windows and per-family query scales), the gated MLP, and the transformer block.

use mlx_rs::fast::{self, ScaledDotProductAttentionMask};
use mlx_rs::ops::{self, indexing::IndexOp};
use mlx_rs::{Array, Dtype};

use std::sync::Arc;

use opta_lmx_shared::model_dir::QuantMode;

use super::*;
use crate::cache::{KvCache, LayerCache};
use crate::distributed::Group;

/// A linear layer, dense or MLX-quantized (affine with per-group biases, or a floating-point
/// mode without them).
pub enum Linear {
    Dense {
        weight: Array,
        bias: Option<Array>,
    },
    Quantized {
        weight: Array,
        scales: Array,
        biases: Option<Array>,
        bias: Option<Array>,
        group_size: i32,
        bits: i32,
        mode: QuantMode,
    },
}

impl Linear {
    /// Every array it holds, to evaluate at load time.
    pub(crate) fn arrays(&self) -> Vec<&Array> {
        match self {
            Linear::Dense { weight, bias } => std::iter::once(weight).chain(bias).collect(),
            Linear::Quantized {
                weight,
                scales,
                biases,
                bias,
                ..
            } => [weight, scales]
                .into_iter()
                .chain(biases)
                .chain(bias)
                .collect(),
        }
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        Ok(match self {
            // mlx.nn.Linear: addmm when there is a bias, a plain matmul otherwise.
            Linear::Dense { weight, bias: None } => ops::matmul(x, weight.t())?,
            Linear::Dense {
                weight,
                bias: Some(b),
            } => ops::addmm(b, x, weight.t(), None, None)?,
            Linear::Quantized {
                weight,
                scales,
                biases,
                bias,
                group_size,
                bits,
                mode,
            } => {
                let (g, b) = (*group_size, *bits);
                let y =
                    quant::quantized_matmul(x, weight, scales, biases.as_ref(), true, g, b, *mode)?;
                match bias {
                    Some(b) => y.add(b)?,
                    None => y,
                }
            }
        })
    }
}

/// Token embedding; with tied weights it doubles as the output projection.
pub struct Embedding {
    pub(crate) table: Linear,
}

impl Embedding {
    pub(crate) fn lookup(&self, ids: &Array) -> Result<Array> {
        Ok(match &self.table {
            Linear::Dense { weight, .. } => weight.take_axis(ids, 0)?,
            Linear::Quantized {
                weight,
                scales,
                biases,
                group_size,
                bits,
                mode,
                ..
            } => {
                let biases = biases.as_ref().map(|b| b.take_axis(ids, 0)).transpose()?;
                quant::dequantize(
                    &weight.take_axis(ids, 0)?,
                    &scales.take_axis(ids, 0)?,
                    biases.as_ref(),
                    *group_size,
                    *bits,
                    *mode,
                    false,
                )?
            }
        })
    }

    pub(crate) fn as_linear(&self, x: &Array) -> Result<Array> {
        self.table.forward(x)
    }
}

pub struct RmsNorm {
    pub(crate) weight: Array,
    pub(crate) eps: f32,
}

impl RmsNorm {
    pub(crate) fn forward(&self, x: &Array) -> Result<Array> {
        Ok(fast::rms_norm(x, Some(&self.weight), self.eps)?)
    }
}

pub struct Attention {
    pub(crate) q_proj: Linear,
    /// None in a layer that attends over an earlier layer's cache (Gemma 4's KV-shared
    /// layers), which projects only queries.
    pub(crate) k_proj: Option<Linear>,
    /// None where the values are the keys' projection before its norm (Gemma 4's
    /// `attention_k_eq_v`).
    pub(crate) v_proj: Option<Linear>,
    pub(crate) o_proj: Linear,
    pub(crate) q_norm: Option<RmsNorm>,
    pub(crate) k_norm: Option<RmsNorm>,
    /// Values RMS-normed without a scale, with this epsilon (Gemma 4).
    pub(crate) v_norm: Option<f32>,
    /// The q/k norms span all heads at once, before the split into heads (OLMo 2/3).
    pub(crate) full_qk_norm: bool,
    pub(crate) n_heads: i32,
    pub(crate) n_kv_heads: i32,
    pub(crate) scale: f32,
    pub(crate) rope: Rope,
    /// A sliding-window layer's window: each token attends to itself and the `window - 1`
    /// before it.
    pub(crate) window: Option<i32>,
    /// Each token attends only to those before it; off for bidirectional embedders.
    pub(crate) causal: bool,
    /// Ministral 3's position-dependent query scale: (beta, original context).
    pub(crate) query_scale: Option<(f32, f32)>,
    /// gpt-oss: per head, a logit that joins every softmax without a value ([heads]).
    pub(crate) sinks: Option<Array>,
    /// Qwen3-Next/3.5: `q_proj` also yields, per head, a gate whose sigmoid scales the
    /// attention output before `o_proj`.
    pub(crate) output_gate: bool,
    /// Tensor parallel: this rank holds some heads; outputs are summed over the group.
    pub(crate) group: Option<Arc<Group>>,
}

impl Attention {
    /// `x` is [1, n, hidden]: n tokens of one sequence when `caches` holds one cache, or one
    /// token from each of n sequences when it holds n. The projections run once over all n
    /// rows (where batching pays); RoPE, the cache and attention run per sequence, so each
    /// keeps its own length and no padding or mask is needed.
    /// A layer without key/value projections gets the cache of the layer it shares keys and
    /// values with, which that layer has already extended by these tokens.
    pub(crate) fn forward(&self, x: &Array, caches: &mut [&mut LayerCache]) -> Result<Array> {
        let (q, kv_new, gate) = self.project(x)?;
        let out = match &kv_new {
            Some((k, v)) => per_sequence(caches, &[&q, k, v], |t, cache| {
                self.attend(&t[0], &t[1], &t[2], kv(cache)?)
            })?,
            None => per_sequence(caches, &[&q], |t, cache| {
                self.attend_shared(&t[0], kv(cache)?)
            })?,
        };
        reduce(&self.group, self.o_proj.forward(&gated(out, gate)?)?)
    }

    /// Queries, keys and values of `x` ([b, l, hidden]) as [b, l, heads, head_dim], with the
    /// per-head norms of the families that have them (Qwen3, Gemma 3), and the output gate
    /// ([b, l, heads * head_dim]) of those that have one. No keys and values in a layer that
    /// shares an earlier one's.
    #[allow(clippy::type_complexity)]
    fn project(&self, x: &Array) -> Result<(Array, Option<(Array, Array)>, Option<Array>)> {
        let (b, l) = (x.shape()[0], x.shape()[1]);
        let split = |y: Array, n: i32| -> Result<Array> { Ok(y.reshape(&[b, l, n, -1])?) };
        let full = |y: Array, norm: &Option<RmsNorm>| -> Result<Array> {
            match norm {
                Some(n) if self.full_qk_norm => n.forward(&y),
                _ => Ok(y),
            }
        };
        let mut q = split(full(self.q_proj.forward(x)?, &self.q_norm)?, self.n_heads)?;
        let mut gate = None;
        if self.output_gate {
            // Each head's rows hold its queries, then its gate.
            let halves = q.split_equal(2, -1)?;
            if let [queries, g] = halves.as_slice() {
                gate = Some(g.reshape(&[b, l, -1])?);
                q = queries.clone();
            }
        }
        if !self.full_qk_norm {
            if let Some(norm) = &self.q_norm {
                q = norm.forward(&q)?;
            }
        }
        let Some(k_proj) = &self.k_proj else {
            return Ok((q, None, gate));
        };
        let keys = k_proj.forward(x)?;
        let mut v = match &self.v_proj {
            Some(v_proj) => split(v_proj.forward(x)?, self.n_kv_heads)?,
            None => split(keys.clone(), self.n_kv_heads)?,
        };
        let mut k = split(full(keys, &self.k_norm)?, self.n_kv_heads)?;
        if !self.full_qk_norm {
            if let Some(norm) = &self.k_norm {
                k = norm.forward(&k)?;
            }
        }
        if let Some(eps) = self.v_norm {
            v = gemma4::unscaled_norm(&v, eps)?;
        }
        Ok((q, Some((k, v)), gate))
    }

    /// A padded batch read whole, without a cache (embedders): `x` is [b, l, hidden], every
    /// sequence starts at position 0 and is padded at its end. `keys` None: causal (a real
    /// token never sees the padding after it); `keys` Some: bidirectional, padding keys
    /// hidden by that mask ([b, 1, 1, l], true for real tokens).
    pub(crate) fn forward_padded(&self, x: &Array, keys: Option<&Array>) -> Result<Array> {
        let (b, l) = (x.shape()[0], x.shape()[1]);
        let (q, kv_new, gate) = self.project(x)?;
        let Some((k, v)) = kv_new else {
            return Err(Exception::custom("a KV-shared layer reads only through a cache").into());
        };
        let heads = |a: &Array| a.transpose_axes(&[0, 2, 1, 3]);
        let q = self.rope.forward(&heads(&q)?, 0)?;
        let k = self.rope.forward(&heads(&k)?, 0)?;
        let mask = match keys {
            Some(m) => Some(ScaledDotProductAttentionMask::Array(m)),
            None => (l > 1).then_some(ScaledDotProductAttentionMask::Causal),
        };
        let out = fast::scaled_dot_product_attention(
            &q,
            &k,
            &heads(&v)?,
            self.scale,
            mask,
            self.sinks.as_ref(),
        )?;
        let out = out.transpose_axes(&[0, 2, 1, 3])?.reshape(&[b, l, -1])?;
        let out = self.o_proj.forward(&gated(out, gate)?)?;
        reduce(&self.group, out)
    }

    /// Attention of one sequence's new tokens (`q`, `k`, `v`: [1, l, heads, head_dim]) over
    /// its cached history; returns [1, l, heads * head_dim].
    pub(crate) fn attend(
        &self,
        q: &Array,
        k: &Array,
        v: &Array,
        cache: &mut KvCache,
    ) -> Result<Array> {
        let heads = |a: &Array| a.transpose_axes(&[0, 2, 1, 3]);
        let offset = cache.offset();
        let q = self.rotate_queries(q, offset)?;
        let k = self.rope.forward(&heads(k)?, offset)?;
        let (k, v, first) = cache.update_and_fetch(&k, &heads(v)?)?;
        self.attend_cached(&q, k, v, first, offset)
    }

    /// Attention of one sequence's new queries over a cache that an earlier layer has
    /// already extended by these tokens (Gemma 4's KV-shared layers).
    fn attend_shared(&self, q: &Array, cache: &mut KvCache) -> Result<Array> {
        let state = cache.filled().ok_or(ModelError::CacheLayers)?;
        let offset = cache.offset() - q.shape()[1];
        let q = self.rotate_queries(q, offset)?;
        self.attend_cached(&q, state.keys, state.values, state.start, offset)
    }

    /// Queries ([1, l, heads, head_dim]) as [1, heads, l, head_dim], rotated from `offset`,
    /// with Ministral 3's position-dependent scale.
    fn rotate_queries(&self, q: &Array, offset: i32) -> Result<Array> {
        let l = q.shape()[1];
        let mut q = self
            .rope
            .forward(&q.transpose_axes(&[0, 2, 1, 3])?, offset)?;
        if let Some((beta, original)) = self.query_scale {
            // 1 + beta * ln(1 + floor(position / original)), per new token, in float32 as
            // mlx-lm computes it, then in the queries' dtype.
            let positions = ops::arange::<_, i32>(offset, offset + l, None)?;
            let steps = ops::floor(&positions.divide(Array::from_f32(original))?)?;
            let scale = ops::log(&steps.add(Array::from_f32(1.0))?)?
                .multiply(Array::from_f32(beta))?
                .add(Array::from_f32(1.0))?
                .as_dtype(q.dtype())?
                .reshape(&[l, 1])?;
            q = q.multiply(&scale)?;
        }
        Ok(q)
    }

    /// Rotated queries ([1, heads, l, head_dim], the first at `offset`) over the cached keys
    /// and values from position `first` on; returns [1, l, heads * head_dim].
    fn attend_cached(
        &self,
        q: &Array,
        mut k: Array,
        mut v: Array,
        mut first: i32,
        offset: i32,
    ) -> Result<Array> {
        let l = q.shape()[2];
        let window_mask;
        // One new token attends to everything before it: no mask needed.
        let mut mask = (l > 1 && self.causal).then_some(ScaledDotProductAttentionMask::Causal);
        if let Some(w) = self.window {
            // Keys before the first new token's window are never attended: leave them out,
            // as mlx-lm's rotating cache holds at most `window - 1` old positions.
            let from = (offset - (w - 1)).max(first);
            if from > first {
                k = k.index((.., .., (from - first)..));
                v = v.index((.., .., (from - first)..));
                first = from;
            }
            // Several new tokens whose keys span more than one window need the window in
            // the mask: key j is seen by query i when i - w < j <= i (mlx-lm's causal mask).
            if l > 1 && offset + l - first > w {
                let queries = ops::arange::<_, i32>(offset, offset + l, None)?.reshape(&[l, 1])?;
                let keys = ops::arange::<_, i32>(first, offset + l, None)?.reshape(&[1, -1])?;
                window_mask = queries
                    .ge(&keys)?
                    .logical_and(&queries.lt(&keys.add(Array::from_int(w))?)?)?;
                mask = Some(ScaledDotProductAttentionMask::Array(&window_mask));
            }
        }
        let out =
            fast::scaled_dot_product_attention(q, &k, &v, self.scale, mask, self.sinks.as_ref())?;
        Ok(out.transpose_axes(&[0, 2, 1, 3])?.reshape(&[1, l, -1])?)
    }
}

/// `f` per sequence, as every mixer runs its cached part: on the whole of `inputs` with the one
/// cache of a single sequence, or on row i of each input ([1, n, ...]) with cache i of n
/// sequences decoding together, the outputs joined along the sequence axis.
pub(crate) fn per_sequence(
    caches: &mut [&mut LayerCache],
    inputs: &[&Array],
    mut f: impl FnMut(&[Array], &mut LayerCache) -> Result<Array>,
) -> Result<Array> {
    if let [cache] = caches {
        let whole: Vec<Array> = inputs.iter().map(|&a| a.clone()).collect();
        return f(&whole, cache);
    }
    let mut rows = Vec::with_capacity(caches.len());
    for (i, cache) in caches.iter_mut().enumerate() {
        let i = i as i32;
        let row: Vec<Array> = inputs.iter().map(|a| a.index((.., i..i + 1))).collect();
        rows.push(f(&row, cache)?);
    }
    Ok(ops::concatenate(&rows, 1)?)
}

pub(crate) fn kv(cache: &mut LayerCache) -> Result<&mut KvCache> {
    cache.kv().ok_or(ModelError::CacheLayers)
}

/// The attention output scaled by sigmoid(gate), when there is a gate.
fn gated(out: Array, gate: Option<Array>) -> Result<Array> {
    match gate {
        Some(g) => Ok(out.multiply(ops::sigmoid(&g)?)?),
        None => Ok(out),
    }
}

pub struct Mlp {
    /// None for an ungated activation (Nemotron-H's relu²).
    pub(crate) gate_proj: Option<Linear>,
    pub(crate) up_proj: Linear,
    pub(crate) down_proj: Linear,
    pub(crate) activation: Activation,
    /// Tensor parallel: this rank holds some hidden units; outputs are summed over the group.
    pub(crate) group: Option<Arc<Group>>,
}

impl Mlp {
    pub(crate) fn forward(&self, x: &Array) -> Result<Array> {
        let up = self.up_proj.forward(x)?;
        let act = match (&self.gate_proj, self.activation) {
            // swiglu: silu(gate) * up, with silu(x) = x * sigmoid(x) as in MLX.
            (Some(g), Activation::Silu) => {
                let gate = g.forward(x)?;
                gate.multiply(ops::sigmoid(&gate)?)?.multiply(&up)?
            }
            (Some(g), Activation::GeluApprox) => gelu_approx(&g.forward(x)?)?.multiply(&up)?,
            (None, Activation::Relu2) => relu2(&up)?,
            _ => return Err(Exception::custom("an MLP's gate does not fit its activation").into()),
        };
        reduce(&self.group, self.down_proj.forward(&act)?)
    }

    pub(crate) fn arrays(&self) -> Vec<&Array> {
        let linears = [
            self.gate_proj.as_ref(),
            Some(&self.up_proj),
            Some(&self.down_proj),
        ];
        linears
            .into_iter()
            .flatten()
            .flat_map(Linear::arrays)
            .collect()
    }
}

/// MLX's `nn.relu2`: relu(x) squared.
pub(crate) fn relu2(x: &Array) -> Result<Array> {
    let relu = ops::maximum(x, Array::from_f32(0.0).as_dtype(x.dtype())?)?;
    Ok(ops::square(&relu)?)
}

/// MLX's `nn.gelu_approx`, op for op: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))),
/// every constant in x's dtype.
pub(crate) fn gelu_approx(x: &Array) -> Result<Array> {
    let c = |v: f64| Array::from_f32(v as f32).as_dtype(x.dtype());
    let cubic = ops::power(x, c(3.0)?)?.multiply(c(0.044715)?)?;
    let inner = x
        .add(&cubic)?
        .multiply(c((2.0 / std::f64::consts::PI).sqrt())?)?;
    let gate = ops::tanh(&inner)?.add(c(1.0)?)?;
    Ok(x.multiply(c(0.5)?)?.multiply(&gate)?)
}

/// A block's feed-forward part: one MLP, or a mixture of experts.
pub enum FeedForward {
    Dense(Mlp),
    Experts(Box<MoeBlock>),
    /// Gemma 4's 26B: both, each between its own norms.
    DenseAndExperts(Box<gemma4::DenseAndExperts>),
}

impl FeedForward {
    pub(crate) fn forward(&self, x: &Array) -> Result<Array> {
        match self {
            FeedForward::Dense(mlp) => mlp.forward(x),
            FeedForward::Experts(moe) => moe.forward(x),
            FeedForward::DenseAndExperts(both) => both.forward(x),
        }
    }
}

/// The two extra norms of a Gemma block: after attention (before the residual add) and
/// before the MLP; the block's `post_attn_norm` then follows the MLP.
pub struct SandwichNorms {
    pub(crate) post_attn: RmsNorm,
    /// Absent in OLMo 3, whose blocks norm only the branches' outputs.
    pub(crate) pre_mlp: Option<RmsNorm>,
    /// Gemma's float16 residual adds in float32, clipped (see `residual`).
    pub(crate) clip: bool,
}

/// What mixes information across positions in a block, each with its own cache kind.
pub enum Mixer {
    /// Softmax attention over a key/value cache.
    Attention(Attention),
    /// Gated DeltaNet over a recurrent state (Qwen3-Next, Qwen3.5).
    GatedDelta(delta::GatedDelta),
    /// Multi-head latent attention over a cache of latents (DeepSeek-V3, Kimi K2).
    Mla(mla::Mla),
    /// A gated short convolution whose state is its last inputs (LFM2).
    ShortConv(delta::ShortConv),
    /// Mamba-2's state-space scan over a recurrent state (Nemotron-H).
    Mamba2(nemotron::Mamba2),
    /// A feed-forward part on each position alone, as a block's only part (Nemotron-H).
    FeedForward(FeedForward),
}

impl Mixer {
    pub(crate) fn forward(&self, x: &Array, caches: &mut [&mut LayerCache]) -> Result<Array> {
        match self {
            Mixer::Attention(a) => a.forward(x, caches),
            Mixer::GatedDelta(d) => d.forward(x, caches),
            Mixer::Mla(m) => m.forward(x, caches),
            Mixer::ShortConv(c) => c.forward(x, caches),
            Mixer::Mamba2(m) => m.forward(x, caches),
            Mixer::FeedForward(f) => f.forward(x),
        }
    }

    /// A fresh cache of this mixer's kind.
    pub(crate) fn new_cache(&self) -> LayerCache {
        match self {
            Mixer::Attention(a) if a.k_proj.is_none() => LayerCache::Stateless,
            Mixer::Attention(a) => LayerCache::Kv(KvCache::new(a.window)),
            Mixer::GatedDelta(_) | Mixer::ShortConv(_) | Mixer::Mamba2(_) => {
                LayerCache::Recurrent(Default::default())
            }
            Mixer::FeedForward(_) => LayerCache::Stateless,
            Mixer::Mla(_) => LayerCache::Kv(KvCache::new(None)),
        }
    }

    pub(crate) fn attention(&self) -> Option<&Attention> {
        match self {
            Mixer::Attention(a) => Some(a),
            _ => None,
        }
    }

    pub(crate) fn attention_mut(&mut self) -> Option<&mut Attention> {
        match self {
            Mixer::Attention(a) => Some(a),
            _ => None,
        }
    }
}

pub struct Block {
    pub(crate) mixer: Mixer,
    pub(crate) mlp: Option<FeedForward>,
    /// None in OLMo 3, which norms the attention's output instead of its input.
    pub(crate) input_norm: Option<RmsNorm>,
    /// The feed-forward part and the norm before it (after it, in a Gemma block); None in a
    /// block that has only its mixer (Nemotron-H).
    pub(crate) post_attn_norm: Option<RmsNorm>,
    pub(crate) sandwich: Option<SandwichNorms>,
    /// Granite scales each residual branch before adding it.
    pub(crate) residual_scale: Option<f32>,
    /// Gemma 4: the layer's per-layer input, gated into the stream after the MLP.
    pub(crate) per_layer: Option<gemma4::PerLayerGate>,
    /// Gemma 4: the block's output scaled by this ([1]).
    pub(crate) layer_scalar: Option<Array>,
    /// Gemma 4: the earlier layer whose keys and values this one attends over.
    pub(crate) kv_source: Option<usize>,
}

impl Block {
    /// `per_layer_input`: this layer's slice of the model's per-layer inputs (Gemma 4).
    pub(crate) fn forward(
        &self,
        x: &Array,
        caches: &mut [&mut LayerCache],
        per_layer_input: Option<&Array>,
    ) -> Result<Array> {
        let r = self.mixer.forward(&self.normed(x)?, caches)?;
        let mut h = self.finish(x, r)?;
        if let (Some(gate), Some(input)) = (&self.per_layer, per_layer_input) {
            h = gate.forward(&h, input)?;
        }
        if let Some(s) = &self.layer_scalar {
            h = h.multiply(s)?;
        }
        Ok(h)
    }

    /// The block over a padded batch without caches (see `Attention::forward_padded`).
    pub(crate) fn forward_padded(&self, x: &Array, keys: Option<&Array>) -> Result<Array> {
        let Mixer::Attention(attn) = &self.mixer else {
            return Err(
                Exception::custom("embeddings are read through attention layers only").into(),
            );
        };
        let r = attn.forward_padded(&self.normed(x)?, keys)?;
        self.finish(x, r)
    }

    /// The mixer's input: `x` through the input norm, if the block has one.
    fn normed(&self, x: &Array) -> Result<Array> {
        match &self.input_norm {
            Some(n) => n.forward(x),
            None => Ok(x.clone()),
        }
    }

    /// Everything after attention: residuals, norms and the feed-forward part.
    fn finish(&self, x: &Array, r: Array) -> Result<Array> {
        let scaled = |r: Array| -> Result<Array> {
            match self.residual_scale {
                Some(m) => Ok(r.multiply(Array::from_f32(m).as_dtype(r.dtype())?)?),
                None => Ok(r),
            }
        };
        let (Some(mlp), Some(post)) = (&self.mlp, &self.post_attn_norm) else {
            // A block with only its mixer (Nemotron-H).
            return Ok(x.add(scaled(r)?)?);
        };
        match &self.sandwich {
            None => {
                let h = x.add(scaled(r)?)?;
                let r = mlp.forward(&post.forward(&h)?)?;
                Ok(h.add(scaled(r)?)?)
            }
            Some(n) => {
                let add = |a: &Array, b: &Array| {
                    if n.clip {
                        residual(a, b)
                    } else {
                        Ok(a.add(b)?)
                    }
                };
                let h = add(x, &n.post_attn.forward(&r)?)?;
                let r = match &n.pre_mlp {
                    Some(pre) => mlp.forward(&pre.forward(&h)?)?,
                    None => mlp.forward(&h)?,
                };
                add(&h, &post.forward(&r)?)
            }
        }
    }
}

/// Gemma's residual add: in float16 it is done in float32 and clipped to float16's range
/// (mlx-lm's `clip_residual`), in any other dtype it is a plain add.
pub(crate) fn residual(x: &Array, y: &Array) -> Result<Array> {
    if x.dtype() != Dtype::Float16 {
        return Ok(x.add(y)?);
    }
    let sum = x
        .as_dtype(Dtype::Float32)?
        .add(y.as_dtype(Dtype::Float32)?)?;
    let bound = 65504.0; // float16's largest finite value
    Ok(ops::clip(&sum, (-bound, bound))?.as_dtype(Dtype::Float16)?)
}

/// `x` rounded to the nearest bfloat16 (ties to even), as a cast to bfloat16 rounds.
pub(crate) fn round_to_bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000;
    f32::from_bits(rounded)
}
