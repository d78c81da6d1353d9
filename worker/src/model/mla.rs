//! Multi-head latent attention (DeepSeek-V3, Kimi K2): keys and values are one small latent
//! per token (`kv_lora_rank` wide, RMS-normed) plus a shared rotary key part, and that is all
//! the cache holds. Queries read the latent through per-head `embed_q` matrices and the output
//! leaves it through `unembed_out`; a single new token uses the absorbed form (the query moved
//! into latent space), a prompt expands keys and values per head. Op for op as mlx-lm's
//! `DeepseekV3Attention`.

use std::collections::HashMap;

use mlx_rs::fast::{self, ScaledDotProductAttentionMask};
use mlx_rs::ops::{self, indexing::IndexOp};
use mlx_rs::{Array, Dtype};

use super::*;
use crate::cache::{KvCache, LayerCache};

/// Per-head matrices [heads, out, in], dense or quantized (mlx-lm's `MultiLinear`).
pub struct MultiLinear(pub(crate) Linear);

impl MultiLinear {
    /// `x @ w^T` per head, or `x @ w` without `transpose`.
    fn forward(&self, x: &Array, transpose: bool) -> Result<Array> {
        Ok(match &self.0 {
            Linear::Dense { weight, .. } => {
                if transpose {
                    ops::matmul(x, weight.swap_axes(-1, -2)?)?
                } else {
                    ops::matmul(x, weight)?
                }
            }
            Linear::Quantized {
                weight,
                scales,
                biases,
                group_size,
                bits,
                mode,
                ..
            } => quant::quantized_matmul(
                x,
                weight,
                scales,
                biases.as_ref(),
                transpose,
                *group_size,
                *bits,
                *mode,
            )?,
        })
    }
}

/// How queries are projected: directly, or through a low-rank bottleneck with a norm.
pub enum MlaQuery {
    Direct(Linear),
    LowRank { a: Linear, norm: RmsNorm, b: Linear },
}

pub struct Mla {
    pub(crate) query: MlaQuery,
    pub(crate) kv_a: Linear,
    pub(crate) kv_norm: RmsNorm,
    pub(crate) embed_q: MultiLinear,
    pub(crate) unembed_out: MultiLinear,
    pub(crate) o_proj: Linear,
    pub(crate) heads: i32,
    pub(crate) nope_dim: i32,
    pub(crate) rope_dim: i32,
    pub(crate) rank: i32,
    pub(crate) scale: f32,
    pub(crate) rope: Rope,
}

impl Mla {
    /// `x` is [1, n, hidden], as `Attention::forward` takes it.
    pub(crate) fn forward(&self, x: &Array, caches: &mut [&mut LayerCache]) -> Result<Array> {
        let n = x.shape()[1];
        let q = match &self.query {
            MlaQuery::Direct(p) => p.forward(x)?,
            MlaQuery::LowRank { a, norm, b } => b.forward(&norm.forward(&a.forward(x)?)?)?,
        };
        let q = q.reshape(&[1, n, self.heads, -1])?;
        let compressed = self.kv_a.forward(x)?;
        let latent = self
            .kv_norm
            .forward(&compressed.index((.., .., ..self.rank)))?;
        let k_pe = compressed.index((.., .., self.rank..));
        let out = per_sequence(caches, &[&q, &latent, &k_pe], |t, cache| {
            self.attend(&t[0], &t[1], &t[2], kv(cache)?)
        })?;
        self.o_proj.forward(&out)
    }

    /// One sequence's `l` new tokens: queries [1, l, heads, nope + rope], normed latents
    /// [1, l, rank] and rotary keys [1, l, rope]; returns [1, l, heads * v_dim].
    fn attend(
        &self,
        q: &Array,
        latent: &Array,
        k_pe: &Array,
        cache: &mut KvCache,
    ) -> Result<Array> {
        let l = q.shape()[1];
        let q = q.transpose_axes(&[0, 2, 1, 3])?;
        let q_nope = q.index((.., .., .., ..self.nope_dim));
        let q_pe = q.index((.., .., .., self.nope_dim..));
        let k_pe = k_pe
            .reshape(&[1, l, 1, self.rope_dim])?
            .transpose_axes(&[0, 2, 1, 3])?;
        let offset = cache.offset();
        let q_pe = self.rope.forward(&q_pe, offset)?;
        let k_pe = self.rope.forward(&k_pe, offset)?;
        let (latent, k_pe, _) = cache.update_and_fetch(&latent.expand_dims(1)?, &k_pe)?;
        let scale = Array::from_f32(self.scale).as_dtype(q_pe.dtype())?;
        let mut pe_scores = ops::matmul(q_pe.multiply(&scale)?, k_pe.swap_axes(-1, -2)?)?;
        if l > 1 {
            // mlx-lm's causal mask for l new tokens after `offset` cached ones, applied by
            // setting the rotary scores of hidden keys to the dtype's lowest value.
            let queries = ops::arange::<_, i32>(offset, offset + l, None)?.reshape(&[l, 1])?;
            let keys = ops::arange::<_, i32>(0, offset + l, None)?.reshape(&[1, -1])?;
            let lowest = Array::from_f32(lowest(pe_scores.dtype())).as_dtype(pe_scores.dtype())?;
            pe_scores = ops::select(&queries.ge(&keys)?, &pe_scores, &lowest)?;
        }
        let (q_nope, k, v) = if l == 1 {
            (self.embed_q.forward(&q_nope, true)?, latent.clone(), latent)
        } else {
            (
                q_nope,
                self.embed_q.forward(&latent, false)?,
                self.unembed_out.forward(&latent, true)?,
            )
        };
        let mask = ScaledDotProductAttentionMask::Array(&pe_scores);
        let mut out = fast::scaled_dot_product_attention(&q_nope, &k, &v, self.scale, mask, None)?;
        if l == 1 {
            out = self.unembed_out.forward(&out, true)?;
        }
        Ok(out.transpose_axes(&[0, 2, 1, 3])?.reshape(&[1, l, -1])?)
    }

    pub(crate) fn arrays(&self) -> Vec<&Array> {
        let mut out = vec![&self.kv_norm.weight];
        let mut linears = vec![
            &self.kv_a,
            &self.embed_q.0,
            &self.unembed_out.0,
            &self.o_proj,
        ];
        match &self.query {
            MlaQuery::Direct(p) => linears.push(p),
            MlaQuery::LowRank { a, norm, b } => {
                linears.extend([a, b]);
                out.push(&norm.weight);
            }
        }
        out.extend(linears.into_iter().flat_map(Linear::arrays));
        out
    }
}

/// The lowest finite value of a float dtype (`mx.finfo(dtype).min`).
fn lowest(dtype: Dtype) -> f32 {
    match dtype {
        Dtype::Float16 => -65504.0,
        // bfloat16's lowest, exactly representable in f32.
        Dtype::Bfloat16 => -3.389_531_4e38,
        _ => f32::MIN,
    }
}

/// Reads an MLA layer under `module` (`model.layers.{i}.self_attn`).
pub(crate) fn load(w: &mut TensorSource, module: &str, config: &ModelConfig) -> Result<Mla> {
    let need = |v: Option<usize>, name: &'static str| {
        v.map(|v| v as i32).ok_or(ModelError::MissingConfig(name))
    };
    let rank = need(config.kv_lora_rank, "kv_lora_rank")?;
    let rope_dim = need(config.qk_rope_head_dim, "qk_rope_head_dim")?;
    let nope_dim = need(config.qk_nope_head_dim, "qk_nope_head_dim")?;
    let v_dim = need(config.v_head_dim, "v_head_dim")?;
    let heads = config.num_attention_heads as i32;
    let hidden = config.hidden_size as i32;
    let bias = config.attention_bias.unwrap_or(false);
    let q_dim = nope_dim + rope_dim;
    let name = |part: &str| format!("{module}.{part}");
    // GLM-4.7-Flash norms its latents with the model's epsilon; DeepSeek with 1e-6.
    let eps = if config.model_type == "glm4_moe_lite" {
        config.rms_norm_eps
    } else {
        1e-6
    };
    let query = match config.q_lora_rank {
        None => MlaQuery::Direct(w.linear(&name("q_proj"), heads * q_dim, hidden, false)?),
        Some(q_rank) => {
            let q_rank = q_rank as i32;
            MlaQuery::LowRank {
                a: w.linear(&name("q_a_proj"), q_rank, hidden, bias)?,
                norm: w.norm(&name("q_a_layernorm"), q_rank, eps)?,
                b: w.linear(&name("q_b_proj"), heads * q_dim, q_rank, false)?,
            }
        }
    };
    // YaRN's attention scale, squared into the softmax scale (mlx-lm's DeepseekV3Attention).
    let mut scale = (q_dim as f64).powf(-0.5);
    if let Some(scaling) = config.rope_scaling.as_ref() {
        let get = |k: &str| scaling.get(k).and_then(|v| v.as_f64());
        if let (Some(all_dim), Some(factor)) = (get("mscale_all_dim"), get("factor")) {
            if all_dim != 0.0 && factor > 1.0 {
                let s = 0.1 * all_dim * factor.ln() + 1.0;
                scale *= s * s;
            }
        }
    }
    let mut rope = Rope::new(config, rope_dim)?;
    rope.traditional = true;
    Ok(Mla {
        query,
        kv_a: w.linear(&name("kv_a_proj_with_mqa"), rank + rope_dim, hidden, bias)?,
        kv_norm: w.norm(&name("kv_a_layernorm"), rank, eps)?,
        embed_q: MultiLinear(w.linear_stacked(
            &name("embed_q"),
            &[heads],
            rank,
            nope_dim,
            false,
        )?),
        unembed_out: MultiLinear(w.linear_stacked(
            &name("unembed_out"),
            &[heads],
            v_dim,
            rank,
            false,
        )?),
        o_proj: w.linear(&name("o_proj"), hidden, heads * v_dim, bias)?,
        heads,
        nope_dim,
        rope_dim,
        rank,
        scale: scale as f32,
        rope,
    })
}

/// Hugging Face's `kv_b_proj` ([heads * (nope + v), rank], dense) split into mlx-lm's
/// `embed_q` ([heads, rank, nope]) and `unembed_out` ([heads, v, rank]), as its `sanitize`
/// does.
pub(crate) fn split_kv_b(tensors: &mut HashMap<String, Array>, config: &ModelConfig) -> Result<()> {
    let (Some(nope), Some(v_dim)) = (config.qk_nope_head_dim, config.v_head_dim) else {
        return Ok(());
    };
    let (nope, v_dim) = (nope as i32, v_dim as i32);
    let heads = config.num_attention_heads as i32;
    for l in 0..config.num_hidden_layers {
        let p = format!("model.layers.{l}.self_attn");
        let Some(kv_b) = tensors.remove(&format!("{p}.kv_b_proj.weight")) else {
            continue;
        };
        if tensors.contains_key(&format!("{p}.kv_b_proj.scales")) {
            let why = format!(
                "{p}.kv_b_proj is quantized: convert the checkpoint with mlx-lm, which splits it"
            );
            return Err(Exception::custom(why).into());
        }
        let v = kv_b.reshape(&[heads, nope + v_dim, -1])?;
        let wk = v.index((.., ..nope, ..)).swap_axes(-1, -2)?;
        let wv = v.index((.., nope.., ..));
        tensors.insert(format!("{p}.embed_q.weight"), wk);
        tensors.insert(format!("{p}.unembed_out.weight"), wv);
    }
    Ok(())
}
