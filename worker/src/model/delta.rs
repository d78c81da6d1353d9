//! Gated DeltaNet, the linear-attention mixer of Qwen3-Next and Qwen3.5/3.6: a short causal
//! depthwise convolution over the q/k/v channels, then per value head a recurrent matrix that
//! decays by a learned gate and is corrected towards each new key/value pair (the delta rule).
//! The output is RMS-normed and gated by silu(z). Op for op as mlx-lm's `gated_delta_ops`
//! (its CPU path), so that greedy output is token-identical.

use mlx_rs::ops::{self, indexing::IndexOp};
use mlx_rs::{fast, Array, Dtype};

use super::*;
use crate::cache::{LayerCache, RecurrentCache};

/// How the input projections are stored.
pub enum DeltaInput {
    /// Qwen3.5: q, k and v in one projection (`in_proj_qkv`), z, b and a each on their own.
    Split {
        qkv: Linear,
        z: Linear,
        b: Linear,
        a: Linear,
    },
    /// Qwen3-Next: `in_proj_qkvz` and `in_proj_ba`, each grouped by key head
    /// (q, k, then that group's values and gates).
    Grouped { qkvz: Linear, ba: Linear },
}

pub struct GatedDelta {
    pub(crate) input: DeltaInput,
    /// Depthwise convolution weights, [channels, kernel, 1] as MLX's conv1d takes them.
    pub(crate) conv: Array,
    pub(crate) dt_bias: Array,
    pub(crate) a_log: Array,
    /// The gated RMSNorm's weight ([value_dim]).
    pub(crate) norm: RmsNorm,
    pub(crate) out_proj: Linear,
    pub(crate) k_heads: i32,
    pub(crate) v_heads: i32,
    pub(crate) k_dim: i32,
    pub(crate) v_dim: i32,
    pub(crate) kernel: i32,
}

impl GatedDelta {
    /// `x` is [1, n, hidden]: n tokens of one sequence, or one token from each of n sequences
    /// (as `Attention::forward`). Projections run over all rows; the convolution and the
    /// recurrence per sequence.
    pub(crate) fn forward(&self, x: &Array, caches: &mut [&mut LayerCache]) -> Result<Array> {
        let (qkv, z, b, a) = self.project(x)?;
        let out = per_sequence(caches, &[&qkv, &b, &a], |t, cache| {
            self.mix(&t[0], &t[1], &t[2], recurrent(cache)?)
        })?;
        // RMSNorm, then silu(z) times it in float32, back in the output's dtype (mlx-lm's
        // `precise_swiglu`).
        let normed = self.norm.forward(&out)?;
        let z = z.as_dtype(Dtype::Float32)?;
        let gated = z
            .multiply(ops::sigmoid(&z)?)?
            .multiply(normed.as_dtype(Dtype::Float32)?)?
            .as_dtype(out.dtype())?;
        let n = x.shape()[1];
        self.out_proj.forward(&gated.reshape(&[1, n, -1])?)
    }

    /// The convolution's input channels (q, k, v) [1, n, channels], the gate z
    /// [1, n, v_heads, v_dim], and b and a [1, n, v_heads].
    fn project(&self, x: &Array) -> Result<(Array, Array, Array, Array)> {
        let n = x.shape()[1];
        let (nk, nv, dk, dv) = (self.k_heads, self.v_heads, self.k_dim, self.v_dim);
        match &self.input {
            DeltaInput::Split { qkv, z, b, a } => Ok((
                qkv.forward(x)?,
                z.forward(x)?.reshape(&[1, n, nv, dv])?,
                b.forward(x)?,
                a.forward(x)?,
            )),
            DeltaInput::Grouped { qkvz, ba } => {
                let per = nv / nk;
                let mixed = qkvz.forward(x)?.reshape(&[1, n, nk, -1])?;
                let [q, k, v, z] = pieces(&mixed, &[dk, 2 * dk, 2 * dk + per * dv])?;
                let flat = |t: &Array| t.reshape(&[1, n, -1]);
                let qkv = ops::concatenate(&[flat(&q)?, flat(&k)?, flat(&v)?], -1)?;
                let ba = ba.forward(x)?.reshape(&[1, n, nk, -1])?;
                let [b, a] = pieces(&ba, &[per])?;
                Ok((
                    qkv,
                    z.reshape(&[1, n, nv, dv])?,
                    b.reshape(&[1, n, nv])?,
                    a.reshape(&[1, n, nv])?,
                ))
            }
        }
    }

    /// One sequence's new tokens through the convolution and the recurrence, updating its
    /// cache; returns [1, l, v_heads, v_dim].
    fn mix(&self, qkv: &Array, b: &Array, a: &Array, cache: &mut RecurrentCache) -> Result<Array> {
        let l = qkv.shape()[1];
        let (nk, nv, dk, dv) = (self.k_heads, self.v_heads, self.k_dim, self.v_dim);
        let conv = causal_conv(cache, qkv, &self.conv, None, self.kernel)?;
        let conv = conv.multiply(ops::sigmoid(&conv)?)?;
        let key_dim = nk * dk;
        let [q, k, v] = pieces(&conv, &[key_dim, 2 * key_dim])?;
        let q = q.reshape(&[1, l, nk, dk])?;
        let k = k.reshape(&[1, l, nk, dk])?;
        let v = v.reshape(&[1, l, nv, dv])?;
        // L2-normalised q and k with the 1/sqrt(dk) readout folded into q, through rms_norm
        // with the eps rescaled (mlx-lm's `normalize_qk`).
        let inv = (dk as f32).powf(-0.5);
        let eps = 1e-6 * inv * inv;
        let scalar = |s: f32, like: &Array| Array::from_f32(s).as_dtype(like.dtype());
        let q = fast::rms_norm(&q, None, eps)?;
        let q = q.multiply(scalar(inv * inv, &q)?)?;
        let k = fast::rms_norm(&k, None, eps)?;
        let k = k.multiply(scalar(inv, &k)?)?;
        // beta = sigmoid(b); g = exp(-exp(A_log) * softplus(a + dt_bias)), in float32.
        let beta = ops::sigmoid(b)?;
        let shifted = a.add(&self.dt_bias)?;
        let softplus = ops::logaddexp(&shifted, scalar(0.0, &shifted)?)?;
        let g = ops::exp(
            &ops::exp(self.a_log.as_dtype(Dtype::Float32)?)?
                .negative()?
                .multiply(&softplus)?,
        )?;
        let mut state = match cache.state.take() {
            Some(s) => s,
            None => ops::zeros_dtype(&[1, nv, dv, dk], Dtype::Float32)?,
        };
        let (q, k) = if nv / nk > 1 {
            (
                ops::repeat_axis::<f32>(q, nv / nk, -2)?,
                ops::repeat_axis::<f32>(k, nv / nk, -2)?,
            )
        } else {
            (q, k)
        };
        let mut ys = Vec::with_capacity(l as usize);
        for t in 0..l {
            let at = |x: &Array| x.index((.., t));
            let (qt, kt, vt, gt, bt) = (at(&q), at(&k), at(&v), at(&g), at(&beta));
            state = state.multiply(gt.expand_dims_axes(&[-1, -2])?)?;
            let kt = kt.expand_dims(-2)?;
            let memory = state.multiply(&kt)?.sum_axis(-1, false)?;
            let delta = vt.subtract(&memory)?.multiply(bt.expand_dims(-1)?)?;
            state = state.add(kt.multiply(delta.expand_dims(-1)?)?)?;
            let y = state.multiply(qt.expand_dims(-2)?)?.sum_axis(-1, false)?;
            ys.push(y.as_dtype(q.dtype())?);
        }
        cache.state = Some(state);
        cache.advance(l);
        Ok(ops::stack(&ys, 1)?)
    }

    pub(crate) fn arrays(&self) -> Vec<&Array> {
        let mut out = vec![&self.conv, &self.dt_bias, &self.a_log, &self.norm.weight];
        let linears: Vec<&Linear> = match &self.input {
            DeltaInput::Split { qkv, z, b, a } => vec![qkv, z, b, a],
            DeltaInput::Grouped { qkvz, ba } => vec![qkvz, ba],
        };
        for l in linears.into_iter().chain([&self.out_proj]) {
            out.extend(l.arrays());
        }
        out
    }
}

/// One sequence's new inputs `x` ([1, l, channels]) through a depthwise causal convolution
/// (`weight` [channels, kernel, 1], plus `bias`), continuing from the last `kernel - 1`
/// inputs its cache holds, which it then replaces (mlx-lm's conv caches).
pub(crate) fn causal_conv(
    cache: &mut RecurrentCache,
    x: &Array,
    weight: &Array,
    bias: Option<&Array>,
    kernel: i32,
) -> Result<Array> {
    let channels = x.shape()[2];
    let keep = kernel - 1;
    let state = match cache.conv.take() {
        Some(s) => s,
        None => ops::zeros_dtype(&[1, keep, channels], x.dtype())?,
    };
    let input = ops::concatenate(&[state, x.clone()], 1)?;
    // A fresh copy of the last inputs (times one, exact): a slice would keep the whole
    // chunk's buffer alive in every snapshot.
    let total = input.shape()[1];
    let tail = input.index((.., (total - keep)..));
    cache.conv = Some(tail.multiply(Array::from_f32(1.0).as_dtype(tail.dtype())?)?);
    let y = ops::conv1d(&input, weight, 1, 0, 1, channels)?;
    Ok(match bias {
        Some(b) => y.add(b)?,
        None => y,
    })
}

/// `x` split along its last axis at `at` into exactly `N` parts.
fn pieces<const N: usize>(x: &Array, at: &[i32]) -> Result<[Array; N]> {
    let parts = ops::split_at_indices(x, at, -1)?;
    <[Array; N]>::try_from(parts).map_err(|_| Exception::custom("split: wrong part count").into())
}

fn recurrent(cache: &mut LayerCache) -> Result<&mut RecurrentCache> {
    cache.recurrent().ok_or(ModelError::CacheLayers)
}

/// Which input projections a family's Gated DeltaNet stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeltaLayout {
    /// Qwen3.5/3.6.
    Split,
    /// Qwen3-Next.
    Grouped,
}

/// Reads a Gated DeltaNet layer under `module` (`model.layers.{i}.linear_attn`).
pub(crate) fn load(
    w: &mut TensorSource,
    module: &str,
    config: &ModelConfig,
    layout: DeltaLayout,
) -> Result<GatedDelta> {
    let need = |v: Option<usize>, name: &'static str| {
        v.map(|v| v as i32).ok_or(ModelError::MissingConfig(name))
    };
    let nk = need(config.linear_num_key_heads, "linear_num_key_heads")?;
    let nv = need(config.linear_num_value_heads, "linear_num_value_heads")?;
    let dk = need(config.linear_key_head_dim, "linear_key_head_dim")?;
    let dv = need(config.linear_value_head_dim, "linear_value_head_dim")?;
    let kernel = config.linear_conv_kernel_dim.unwrap_or(4) as i32;
    if nk <= 0 || nv % nk != 0 || kernel < 1 {
        return Err(ModelError::MissingConfig(
            "linear_num_value_heads divisible by linear_num_key_heads",
        ));
    }
    let hidden = config.hidden_size as i32;
    let (key_dim, value_dim) = (nk * dk, nv * dv);
    let channels = 2 * key_dim + value_dim;
    let name = |part: &str| format!("{module}.{part}");
    let input = match layout {
        DeltaLayout::Split => DeltaInput::Split {
            qkv: w.linear(&name("in_proj_qkv"), channels, hidden, false)?,
            z: w.linear(&name("in_proj_z"), value_dim, hidden, false)?,
            b: w.linear(&name("in_proj_b"), nv, hidden, false)?,
            a: w.linear(&name("in_proj_a"), nv, hidden, false)?,
        },
        DeltaLayout::Grouped => DeltaInput::Grouped {
            qkvz: w.linear(&name("in_proj_qkvz"), channels + value_dim, hidden, false)?,
            ba: w.linear(&name("in_proj_ba"), 2 * nv, hidden, false)?,
        },
    };
    Ok(GatedDelta {
        input,
        conv: w.take_shaped(&name("conv1d.weight"), &[channels, kernel, 1])?,
        dt_bias: w.take_shaped(&name("dt_bias"), &[nv])?,
        a_log: w.take_shaped(&name("A_log"), &[nv])?,
        norm: w.norm(&name("norm"), dv, config.rms_norm_eps)?,
        out_proj: w.linear(&name("out_proj"), hidden, value_dim, false)?,
        k_heads: nk,
        v_heads: nv,
        k_dim: dk,
        v_dim: dv,
        kernel,
    })
}

/// Hugging Face's Qwen3-Next/3.5 checkpoints, renamed and rescaled as mlx-lm's `sanitize`
/// does: convolution weights [channels, 1, kernel] moved to [channels, kernel, 1], the
/// zero-centred RMSNorm weights of the blocks stored as `w` for `1 + w` (recognised, as
/// mlx-lm does, by the unconverted convolutions), and Qwen3.5 MoE's fused experts
/// (`experts.gate_up_proj`, gate rows first, and `experts.down_proj`) split and named as
/// `switch_mlp`.
pub(crate) fn hugging_face_hybrid(
    tensors: &mut std::collections::HashMap<String, Array>,
    layers: usize,
) -> Result<()> {
    let unconverted = tensors
        .iter()
        .any(|(k, v)| k.contains("conv1d.weight") && v.shape().last() != Some(&1));
    if unconverted {
        const NORMS: [&str; 5] = [
            ".input_layernorm.weight",
            ".post_attention_layernorm.weight",
            "model.norm.weight",
            ".q_norm.weight",
            ".k_norm.weight",
        ];
        for (k, v) in tensors.iter_mut() {
            if k.contains("conv1d.weight") && v.shape().last() != Some(&1) {
                *v = v.swap_axes(1, 2)?;
            } else if v.ndim() == 1 && NORMS.iter().any(|n| k.ends_with(n)) {
                *v = v.add(Array::from_f32(1.0).as_dtype(v.dtype())?)?;
            }
        }
    }
    for l in 0..layers {
        let p = format!("model.layers.{l}.mlp");
        if let Some(gate_up) = tensors.remove(&format!("{p}.experts.gate_up_proj")) {
            let rows = gate_up.shape()[gate_up.ndim() - 2];
            let mid = rows / 2;
            tensors.insert(
                format!("{p}.switch_mlp.gate_proj.weight"),
                gate_up.index((.., ..mid, ..)),
            );
            tensors.insert(
                format!("{p}.switch_mlp.up_proj.weight"),
                gate_up.index((.., mid.., ..)),
            );
        }
        if let Some(down) = tensors.remove(&format!("{p}.experts.down_proj")) {
            tensors.insert(format!("{p}.switch_mlp.down_proj.weight"), down);
        }
    }
    Ok(())
}

/// LFM2's short convolution: `in_proj` yields gates B and C and the input x; B·x runs
/// through a depthwise causal convolution (kernel `conv_L_cache`) whose last inputs are the
/// layer's whole state, and C gates its output (mlx-lm's `ShortConv`).
pub struct ShortConv {
    pub(crate) in_proj: Linear,
    pub(crate) out_proj: Linear,
    /// [hidden, kernel, 1].
    pub(crate) conv: Array,
    pub(crate) conv_bias: Option<Array>,
    pub(crate) kernel: i32,
}

impl ShortConv {
    pub(crate) fn forward(&self, x: &Array, caches: &mut [&mut LayerCache]) -> Result<Array> {
        let [b, c, v] = <[Array; 3]>::try_from(self.in_proj.forward(x)?.split_equal(3, -1)?)
            .map_err(|_| Exception::custom("split: wrong part count"))?;
        let bx = b.multiply(&v)?;
        let out = per_sequence(caches, &[&bx], |t, cache| {
            self.mix(&t[0], recurrent(cache)?)
        })?;
        self.out_proj.forward(&c.multiply(&out)?)
    }

    /// One sequence's B·x [1, l, hidden] through the convolution, updating its cache.
    fn mix(&self, bx: &Array, cache: &mut RecurrentCache) -> Result<Array> {
        let y = causal_conv(cache, bx, &self.conv, self.conv_bias.as_ref(), self.kernel)?;
        cache.advance(bx.shape()[1]);
        Ok(y)
    }

    pub(crate) fn arrays(&self) -> Vec<&Array> {
        let mut out = vec![&self.conv];
        out.extend(&self.conv_bias);
        out.extend(self.in_proj.arrays());
        out.extend(self.out_proj.arrays());
        out
    }
}

/// Reads LFM2's short-convolution layer under `module` (`model.layers.{i}.conv`).
pub(crate) fn load_short_conv(
    w: &mut TensorSource,
    module: &str,
    config: &ModelConfig,
) -> Result<ShortConv> {
    let hidden = config.hidden_size as i32;
    let kernel = config.conv_l_cache.unwrap_or(3) as i32;
    let bias = config.conv_bias.unwrap_or(false);
    let name = |part: &str| format!("{module}.{part}");
    let mut conv = w.take(&name("conv.weight"))?;
    // Hugging Face stores [hidden, 1, kernel].
    if conv.shape().last() != Some(&1) {
        conv = conv.swap_axes(1, 2)?;
    }
    if conv.shape() != [hidden, kernel, 1] {
        return Err(ModelError::Shape {
            name: name("conv.weight"),
            actual: conv.shape().to_vec(),
            expected: vec![hidden, kernel, 1],
        });
    }
    Ok(ShortConv {
        in_proj: w.linear(&name("in_proj"), 3 * hidden, hidden, bias)?,
        out_proj: w.linear(&name("out_proj"), hidden, hidden, bias)?,
        conv,
        conv_bias: if bias {
            Some(w.take_shaped(&name("conv.bias"), &[hidden])?)
        } else {
            None
        },
        kernel,
    })
}
