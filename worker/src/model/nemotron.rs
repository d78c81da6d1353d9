//! Nemotron-H (`nemotron_h`: NVIDIA Nemotron Nano 2, Nemotron 3), as mlx-lm's `nemotron_h`
//! runs it. Its blocks each hold one part after one norm, added to the stream, placed by a
//! pattern (`M` Mamba-2, `*` attention without positions, `-` a relu² MLP, `E` experts):
//! - the Mamba-2 mixer: one projection yields a gate, the convolution's input and a step size
//!   per head; a depthwise causal convolution (silu) yields x, B and C; the state-space scan
//!   runs in mlx-lm's chunked SSD form (`ssm_attn`, its CPU path, for prompts and single
//!   tokens alike), with a float32 state per head; a grouped RMSNorm gated by silu(gate);
//! - experts behind the grouped sigmoid router, relu² without a gate, optionally inside a
//!   narrower latent space, with a relu² shared expert.

use mlx_rs::ops::{self, indexing::IndexOp};
use mlx_rs::{fast, Array, Dtype};

use super::delta::causal_conv;
use super::*;
use crate::cache::{LayerCache, RecurrentCache};

/// The scan's chunk: mlx-lm's `ssm_attn` step, which also fixes where rounding happens.
const SSD_STEP: i32 = 256;

pub struct Mamba2 {
    pub(crate) in_proj: Linear,
    /// [channels, kernel, 1].
    pub(crate) conv: Array,
    pub(crate) conv_bias: Option<Array>,
    pub(crate) dt_bias: Array,
    pub(crate) a_log: Array,
    pub(crate) d: Array,
    /// The gated norm's weight ([heads * head_dim]).
    pub(crate) norm: Array,
    pub(crate) out_proj: Linear,
    pub(crate) heads: i32,
    pub(crate) head_dim: i32,
    pub(crate) groups: i32,
    pub(crate) state_size: i32,
    pub(crate) kernel: i32,
    pub(crate) eps: f32,
    /// Bounds of the step size after softplus.
    pub(crate) dt_limit: (f32, f32),
}

impl Mamba2 {
    fn inner(&self) -> i32 {
        self.heads * self.head_dim
    }

    /// `x` is [1, n, hidden]: n tokens of one sequence, or one token of each of n sequences
    /// (as `Attention::forward`).
    pub(crate) fn forward(&self, x: &Array, caches: &mut [&mut LayerCache]) -> Result<Array> {
        let inner = self.inner();
        let channels = inner + 2 * self.groups * self.state_size;
        let projected = self.in_proj.forward(x)?;
        let parts = ops::split_at_indices(&projected, &[inner, inner + channels], -1)?;
        let [gate, conv_in, dt] = <[Array; 3]>::try_from(parts)
            .map_err(|_| Exception::custom("split: wrong part count"))?;
        let y = per_sequence(caches, &[&conv_in, &dt], |t, cache| {
            let cache = cache.recurrent().ok_or(ModelError::CacheLayers)?;
            self.mix(&t[0], &t[1], cache)
        })?;
        self.out_proj.forward(&self.gated_norm(&y, &gate)?)
    }

    /// One sequence's new tokens through the convolution and the scan, updating its cache;
    /// returns [1, l, heads * head_dim].
    fn mix(&self, conv_in: &Array, dt: &Array, cache: &mut RecurrentCache) -> Result<Array> {
        let l = conv_in.shape()[1];
        let inner = self.inner();
        let bc = self.groups * self.state_size;
        let conv = causal_conv(
            cache,
            conv_in,
            &self.conv,
            self.conv_bias.as_ref(),
            self.kernel,
        )?;
        let conv = conv.multiply(ops::sigmoid(&conv)?)?;
        let parts = ops::split_at_indices(&conv, &[inner, inner + bc], -1)?;
        let [xs, b, c] = <[Array; 3]>::try_from(parts)
            .map_err(|_| Exception::custom("split: wrong part count"))?;
        let xs = xs.reshape(&[1, l, self.heads, self.head_dim])?;
        let b = b.reshape(&[1, l, self.groups, self.state_size])?;
        let c = c.reshape(&[1, l, self.groups, self.state_size])?;
        let (y, state) = self.scan(&xs, &b, &c, dt, cache.state.take())?;
        cache.state = Some(state);
        cache.advance(l);
        Ok(y.reshape(&[1, l, inner])?)
    }

    /// mlx-lm's `ssm_attn`: the SSD scan over `x` [1, l, heads, head_dim] in chunks of
    /// `SSD_STEP`, from `state` ([1, heads, head_dim, state_size], float32) if any. Returns
    /// the outputs (with the skip term D·x) and the state after the last token.
    fn scan(
        &self,
        x: &Array,
        b: &Array,
        c: &Array,
        dt: &Array,
        mut state: Option<Array>,
    ) -> Result<(Array, Array)> {
        let (l, h, dh) = (x.shape()[1], self.heads, self.head_dim);
        let (g, n) = (self.groups, self.state_size);
        let repeats = h / g;
        let f32c = |v: f32| Array::from_f32(v);
        // dt = clip(softplus(dt + dt_bias), limits), in float32.
        let shifted = dt.as_dtype(Dtype::Float32)?.add(&self.dt_bias)?;
        let dt = ops::logaddexp(&shifted, f32c(0.0))?;
        let dt = ops::clip(&dt, (self.dt_limit.0, self.dt_limit.1))?;
        let a = ops::exp(&self.a_log)?.negative()?.as_dtype(dt.dtype())?;
        let dt_a = dt.multiply(a.reshape(&[1, 1, -1])?)?;
        let dtx = dt.reshape(&[1, l, h, 1])?.multiply(x)?;
        let mut ys = Vec::new();
        let mut at = 0;
        while at < l {
            let end = (at + SSD_STEP).min(l);
            let s = end - at;
            let dtx = dtx.index((.., at..end));
            let dt_a = dt_a.index((.., at..end));
            let b = b.index((.., at..end));
            let c = c.index((.., at..end));
            let bt = b.transpose_axes(&[0, 2, 3, 1])?; // [1, g, n, s]
            let cb = c.swap_axes(1, 2)?.matmul(&bt)?; // [1, g, s, s]
            let cb = ops::repeat_axis::<f32>(cb, repeats, 1)?;
            let decay = ops::exp(&segsum(&dt_a.swap_axes(1, 2)?)?)?; // [1, h, s, s]
            let attention = ops::tril(&cb.multiply(&decay)?, 0)?;
            let mut y = attention.matmul(&dtx.swap_axes(1, 2)?)?.swap_axes(1, 2)?;
            let last = decay
                .index((.., .., (s - 1)..s, ..))
                .transpose_axes(&[0, 3, 1, 2])?; // [1, s, h, 1]
            let bt = ops::repeat_axis::<f32>(bt, repeats, 1)?.swap_axes(2, 3)?; // [1, h, s, n]
            let weighted = dtx.multiply(&last)?.swap_axes(1, 2)?.swap_axes(2, 3)?;
            let mut next = weighted.matmul(&bt)?; // [1, h, dh, n]
            if let Some(prev) = &state {
                let grown = ops::exp(&ops::cumsum(&dt_a, -2, None, None)?)?; // [1, s, h]
                let carried = grown
                    .index((.., (s - 1)..s, ..))
                    .reshape(&[1, h, 1, 1])?
                    .multiply(prev)?;
                next = next.add(&carried)?;
                let c = c.reshape(&[1, s, g, 1, n, 1])?;
                let y_prev = prev
                    .reshape(&[1, 1, g, repeats, dh, n])?
                    .matmul(&c)?
                    .squeeze_axes(&[-1])?
                    .reshape(&[1, s, h, dh])?;
                y = y.add(grown.expand_dims(-1)?.multiply(&y_prev)?)?;
            }
            ys.push(y.as_dtype(x.dtype())?);
            state = Some(next);
            at = end;
        }
        let state = state.ok_or_else(|| Exception::custom("an empty scan"))?;
        let y = ops::concatenate(&ys, 1)?;
        let d = self.d.as_dtype(x.dtype())?.reshape(&[1, 1, h, 1])?;
        Ok((y.add(x.multiply(&d)?)?, state))
    }

    /// silu(gate) · y, RMS-normed per group without a scale, then times the weight.
    fn gated_norm(&self, y: &Array, gate: &Array) -> Result<Array> {
        let shape = y.shape().to_vec();
        let gated = gate.multiply(ops::sigmoid(gate)?)?.multiply(y)?;
        let group = self.inner() / self.groups;
        let mut grouped = shape.clone();
        grouped.pop();
        grouped.extend([self.groups, group]);
        let normed = fast::rms_norm(&gated.reshape(&grouped)?, None, self.eps)?;
        Ok(self.norm.multiply(normed.reshape(&shape)?)?)
    }

    pub(crate) fn arrays(&self) -> Vec<&Array> {
        let mut out = vec![&self.conv, &self.dt_bias, &self.a_log, &self.d, &self.norm];
        out.extend(&self.conv_bias);
        out.extend(self.in_proj.arrays());
        out.extend(self.out_proj.arrays());
        out
    }
}

/// mlx-lm's `segsum` without a mask: for x [.., s], [.., s, s] whose (i, j) entry is the sum
/// of x over j < k <= i (zero on and above the diagonal).
fn segsum(x: &Array) -> Result<Array> {
    let s = *x.shape().last().unwrap_or(&0);
    let x = ops::repeat_axis::<f32>(x.expand_dims(-1)?, s, -1)?;
    let x = ops::tril(&x, -1)?;
    Ok(ops::cumsum(&x, -2, None, None)?)
}

/// The layer kinds in order, one character each, from `block_pattern` (see
/// `model_dir::read_config`).
pub(crate) fn pattern(config: &ModelConfig) -> Result<Vec<char>> {
    let p: Vec<char> = config
        .block_pattern
        .as_deref()
        .ok_or(ModelError::MissingConfig("hybrid_override_pattern"))?
        .chars()
        .collect();
    if p.len() != config.num_hidden_layers {
        return Err(ModelError::MissingConfig(
            "hybrid_override_pattern with one entry per layer",
        ));
    }
    Ok(p)
}

/// The Mamba-2 mixer under `module` (`model.layers.{i}.mixer`).
pub(crate) fn load_mamba(
    w: &mut TensorSource,
    module: &str,
    config: &ModelConfig,
) -> Result<Mamba2> {
    let need = |v: Option<usize>, name: &'static str| {
        v.map(|v| v as i32).ok_or(ModelError::MissingConfig(name))
    };
    let heads = need(config.mamba_num_heads, "mamba_num_heads")?;
    let head_dim = need(config.mamba_head_dim, "mamba_head_dim")?;
    let groups = need(config.n_groups, "n_groups")?;
    let state_size = need(config.ssm_state_size, "ssm_state_size")?;
    let kernel = config.conv_kernel.unwrap_or(4) as i32;
    if groups <= 0 || heads % groups != 0 || kernel < 1 {
        return Err(ModelError::MissingConfig(
            "mamba_num_heads divisible by n_groups",
        ));
    }
    let hidden = config.hidden_size as i32;
    let inner = heads * head_dim;
    let channels = inner + 2 * groups * state_size;
    let bias = config.mamba_proj_bias.unwrap_or(false);
    let name = |part: &str| format!("{module}.{part}");
    let mut conv = w.take(&name("conv1d.weight"))?;
    // Hugging Face stores [channels, 1, kernel].
    if conv.shape().last() != Some(&1) {
        conv = conv.swap_axes(1, 2)?;
    }
    if conv.shape() != [channels, kernel, 1] {
        return Err(ModelError::Shape {
            name: name("conv1d.weight"),
            actual: conv.shape().to_vec(),
            expected: vec![channels, kernel, 1],
        });
    }
    let limit = config.time_step_limit.as_deref().unwrap_or(&[]);
    Ok(Mamba2 {
        in_proj: w.linear(&name("in_proj"), inner + channels + heads, hidden, bias)?,
        conv,
        conv_bias: if config.use_conv_bias.unwrap_or(true) {
            Some(w.take_shaped(&name("conv1d.bias"), &[channels])?)
        } else {
            None
        },
        dt_bias: w.take_shaped(&name("dt_bias"), &[heads])?,
        a_log: w.take_shaped(&name("A_log"), &[heads])?,
        d: w.take_shaped(&name("D"), &[heads])?,
        norm: w.take_shaped(&name("norm.weight"), &[inner])?,
        out_proj: w.linear(&name("out_proj"), hidden, inner, bias)?,
        heads,
        head_dim,
        groups,
        state_size,
        kernel,
        eps: config.rms_norm_eps,
        dt_limit: (
            limit.first().copied().unwrap_or(0.0),
            limit.get(1).copied().unwrap_or(f32::INFINITY),
        ),
    })
}

/// A relu² MLP (`-` blocks and the shared expert) under `module`.
pub(crate) fn load_mlp(
    w: &mut TensorSource,
    module: &str,
    config: &ModelConfig,
    width: i32,
) -> Result<Mlp> {
    let hidden = config.hidden_size as i32;
    let b = config.mlp_bias.unwrap_or(false);
    Ok(Mlp {
        gate_proj: None,
        up_proj: w.linear(&format!("{module}.up_proj"), width, hidden, b)?,
        down_proj: w.linear(&format!("{module}.down_proj"), hidden, width, b)?,
        activation: Activation::Relu2,
        group: None,
    })
}

/// The experts block (`E`) under `module`: the grouped sigmoid router (a plain weight and a
/// correction bias), stacked relu² experts (`switch_mlp.fc1`/`fc2`, or Hugging Face's
/// `experts.{e}.up_proj`/`down_proj`), the latent projections and the shared expert.
pub(crate) fn load_experts(
    w: &mut TensorSource,
    module: &str,
    config: &ModelConfig,
) -> Result<MoeBlock> {
    let hidden = config.hidden_size as i32;
    let experts = config.experts() as i32;
    let inter = config
        .moe_intermediate_size
        .ok_or(ModelError::MissingConfig("moe_intermediate_size"))? as i32;
    let latent_dim = config.moe_latent_size.map(|d| d as i32);
    let width = latent_dim.unwrap_or(hidden);
    let b = config.mlp_bias.unwrap_or(false);
    let mut stacked = |hf: &str, mlx: &str, out: i32, inp: i32| -> Result<ExpertLinear> {
        let base = format!("{module}.switch_mlp.{mlx}");
        if w.tensors
            .contains_key(&format!("{module}.experts.0.{hf}.weight"))
        {
            let parts = (0..experts)
                .map(|e| w.take(&format!("{module}.experts.{e}.{hf}.weight")))
                .collect::<Result<Vec<_>>>()?;
            w.tensors
                .insert(format!("{base}.weight"), ops::stack(&parts, 0)?);
        }
        Ok(w.linear_stacked(&base, &[experts], out, inp, false)?.into())
    };
    let up_proj = stacked("up_proj", "fc1", inter, width)?;
    let down_proj = stacked("down_proj", "fc2", width, inter)?;
    let latent = match latent_dim {
        Some(d) => Some((
            w.linear(&format!("{module}.fc1_latent_proj"), d, hidden, b)?,
            w.linear(&format!("{module}.fc2_latent_proj"), hidden, d, b)?,
        )),
        None => None,
    };
    let shared = match (
        config.n_shared_experts,
        config.moe_shared_expert_intermediate_size,
    ) {
        (Some(_), Some(size)) => Some(load_mlp(
            w,
            &format!("{module}.shared_experts"),
            config,
            size as i32,
        )?),
        _ => None,
    };
    Ok(MoeBlock {
        gate: w.linear(&format!("{module}.gate"), experts, hidden, false)?,
        router: Router::SigmoidGrouped {
            correction: w.take_shaped(
                &format!("{module}.gate.e_score_correction_bias"),
                &[experts],
            )?,
            guard: 1e-20,
            n_group: config.n_group.unwrap_or(1).max(1) as i32,
            topk_group: config.topk_group.unwrap_or(1).max(1) as i32,
            scale: config.routed_scaling_factor.unwrap_or(1.0),
        },
        gate_proj: None,
        up_proj,
        down_proj,
        activation: ExpertActivation::Relu2,
        top_k: config
            .num_experts_per_tok
            .unwrap_or(1)
            .clamp(1, experts.max(1) as usize) as i32,
        norm_topk_prob: config.norm_topk_prob.unwrap_or(false),
        shared,
        shared_gate: None,
        latent,
        group: None,
    })
}

/// Block `i` of kind `kind` under `p` (`model.layers.{i}`): its norm, then one part.
pub(crate) fn block(
    w: &mut TensorSource,
    p: &str,
    config: &ModelConfig,
    kind: char,
) -> Result<Block> {
    let hidden = config.hidden_size as i32;
    let m = format!("{p}.mixer");
    let mixer = match kind {
        'M' => Mixer::Mamba2(load_mamba(w, &m, config)?),
        '*' => {
            let (heads, kv, dim) = (
                config.num_attention_heads as i32,
                config.num_kv_heads() as i32,
                config.head_dim() as i32,
            );
            let bias = config.attention_bias.unwrap_or(false);
            Mixer::Attention(Attention {
                q_proj: w.linear(&format!("{m}.q_proj"), heads * dim, hidden, bias)?,
                k_proj: Some(w.linear(&format!("{m}.k_proj"), kv * dim, hidden, bias)?),
                v_proj: Some(w.linear(&format!("{m}.v_proj"), kv * dim, hidden, bias)?),
                o_proj: w.linear(&format!("{m}.o_proj"), hidden, heads * dim, bias)?,
                q_norm: None,
                k_norm: None,
                v_norm: None,
                full_qk_norm: false,
                n_heads: heads,
                n_kv_heads: kv,
                scale: (dim as f32).powf(-0.5),
                // Positions come from the Mamba layers: no RoPE.
                rope: Rope::none(),
                window: None,
                causal: true,
                query_scale: None,
                sinks: None,
                output_gate: false,
                group: None,
            })
        }
        '-' => Mixer::FeedForward(FeedForward::Dense(load_mlp(
            w,
            &m,
            config,
            config.intermediate_size as i32,
        )?)),
        'E' => Mixer::FeedForward(FeedForward::Experts(Box::new(load_experts(w, &m, config)?))),
        other => {
            return Err(ModelError::BadConfig(format!(
                "unknown Nemotron-H block kind {other:?} (expected M, *, - or E)"
            )))
        }
    };
    Ok(Block {
        mixer,
        mlp: None,
        input_norm: Some(w.norm(&format!("{p}.input_layernorm"), hidden, config.rms_norm_eps)?),
        post_attn_norm: None,
        sandwich: None,
        residual_scale: None,
        per_layer: None,
        layer_scalar: None,
        kv_source: None,
    })
}

/// Nemotron-H's tensor names as the shared model calls them (`backbone.*` → `model.*`, each
/// block's norm as its input norm), the MTP head dropped.
pub(crate) fn names(tensors: &mut HashMap<String, Array>) {
    let renamed = std::mem::take(tensors)
        .into_iter()
        .filter(|(k, _)| !k.starts_with("mtp."))
        .map(|(k, v)| {
            let k = k
                .replace("backbone.embeddings.", "model.embed_tokens.")
                .replace("backbone.norm_f.", "model.norm.")
                .replace("backbone.layers.", "model.layers.");
            // `model.layers.{i}.norm.weight`, not the mixer's own norm.
            let block_norm = k
                .strip_prefix("model.layers.")
                .and_then(|rest| rest.strip_suffix(".norm.weight"))
                .is_some_and(|i| i.bytes().all(|b| b.is_ascii_digit()));
            if block_norm {
                (k.replace(".norm.weight", ".input_layernorm.weight"), v)
            } else {
                (k, v)
            }
        })
        .collect();
    *tensors = renamed;
}
