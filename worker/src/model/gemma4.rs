//! Gemma 4 (`gemma4_text`, and the text model of the `gemma4` wrapper), as mlx-lm's
//! `gemma4_text` runs it. What it adds to the shared layers, all here:
//! - global layers with their own head size (and, with `attention_k_eq_v`, their own key-value
//!   heads whose values are the keys' projection), proportional partial RoPE, and sliding
//!   layers with plain RoPE;
//! - values RMS-normed without a scale, attention unscaled (the q/k norms carry the scale);
//! - the last `num_kv_shared_layers` layers project only queries and attend over the cache of
//!   the last earlier layer of their kind, and have MLPs twice as wide;
//! - per-layer input embeddings: a second embedding table, plus a projection of the
//!   embeddings, gives every layer a small extra input, gated into its residual stream after
//!   the MLP; then each layer's output is scaled by a learned scalar;
//! - the 26B's feed-forward: a dense MLP and experts side by side, each between its own norms,
//!   the experts routed from the un-normed stream with a per-expert scale;
//! - logits soft-capped by `tanh(x / c) * c`.

use mlx_rs::ops::{self, indexing::IndexOp};
use mlx_rs::{fast, Array};
use serde_json::Value;

use super::*;

/// Whether layer `i` of `config` is a sliding-window layer: from `layer_types`, or else every
/// `sliding_window_pattern`-th layer global (mlx-lm's default).
pub(crate) fn sliding(config: &ModelConfig, i: usize) -> bool {
    match config.layer_types.as_ref().and_then(|t| t.get(i)) {
        Some(kind) => kind == "sliding_attention",
        None => {
            let pattern = config.sliding_window_pattern.unwrap_or(5).max(1);
            !(i + 1).is_multiple_of(pattern)
        }
    }
}

/// The first layer that reuses an earlier layer's keys and values (none: the layer count).
fn first_shared(config: &ModelConfig) -> usize {
    let n = config.num_hidden_layers;
    n - config.num_kv_shared_layers.unwrap_or(0).min(n)
}

/// For each layer, the earlier layer whose cache it attends over (None: its own): the last
/// layer of its kind before the shared ones.
pub(crate) fn kv_sources(config: &ModelConfig) -> Vec<Option<usize>> {
    let first = first_shared(config);
    (0..config.num_hidden_layers)
        .map(|i| {
            if i < first || first == 0 {
                return None;
            }
            (0..first)
                .rev()
                .find(|&j| sliding(config, j) == sliding(config, i))
        })
        .collect()
}

/// The RoPE of a layer kind from `rope_parameters[kind]`, over `dims` per head: plain, or
/// "proportional", which rotates the first `partial_rotary_factor` share of the frequency
/// pairs, with exponents over the whole head, and leaves the rest (infinite frequencies).
pub(crate) fn rope(config: &ModelConfig, sliding: bool, dims: i32) -> Result<Rope> {
    let kind = if sliding {
        "sliding_attention"
    } else {
        "full_attention"
    };
    let params = config
        .rope_parameters
        .as_ref()
        .and_then(|p| p.get(kind))
        .cloned()
        .unwrap_or(Value::Null);
    let get = |k: &str, d: f64| params.get(k).and_then(Value::as_f64).unwrap_or(d);
    let base = get("rope_theta", 10_000.0) as f32;
    match params
        .get("rope_type")
        .or_else(|| params.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default")
    {
        "default" => Ok(Rope::plain(dims, base)),
        "proportional" => {
            let rotated = (dims as f64 * get("partial_rotary_factor", 1.0)) as i32;
            let exps =
                ops::arange::<_, f32>(0, rotated, 2)?.divide(Array::from_f32(dims as f32))?;
            let freqs = ops::power(Array::from_f32(base), &exps)?
                .multiply(Array::from_f32(get("factor", 1.0) as f32))?;
            let still = ops::full::<f32>(&[(dims - rotated) / 2], Array::from_f32(f32::INFINITY))?;
            Ok(Rope {
                freqs: Some(ops::concatenate(&[freqs, still], 0)?),
                ..Rope::plain(dims, base)
            })
        }
        other => Err(ModelError::RopeScaling(format!("{kind}: {other}"))),
    }
}

/// The attention of layer `i` (`p`: its `….self_attn` prefix).
pub(crate) fn attention(
    w: &mut TensorSource,
    p: &str,
    config: &ModelConfig,
    i: usize,
) -> Result<Attention> {
    let hidden = config.hidden_size as i32;
    let eps = config.rms_norm_eps;
    let local = sliding(config, i);
    let head_dim = match config.global_head_dim {
        Some(d) if !local && d > 0 => d,
        _ => config.head_dim(),
    } as i32;
    let k_eq_v = config.attention_k_eq_v.unwrap_or(false) && !local;
    let n_kv = match config.num_global_key_value_heads {
        Some(n) if k_eq_v => n,
        _ => config.num_kv_heads(),
    } as i32;
    let n_heads = config.num_attention_heads as i32;
    let own_kv = i < first_shared(config);
    let (k_proj, v_proj, k_norm) = if own_kv {
        let k = w.linear(&format!("{p}.k_proj"), n_kv * head_dim, hidden, false)?;
        let v = if k_eq_v {
            None
        } else {
            Some(w.linear(&format!("{p}.v_proj"), n_kv * head_dim, hidden, false)?)
        };
        (
            Some(k),
            v,
            Some(w.norm(&format!("{p}.k_norm"), head_dim, eps)?),
        )
    } else {
        (None, None, None)
    };
    Ok(Attention {
        q_proj: w.linear(&format!("{p}.q_proj"), n_heads * head_dim, hidden, false)?,
        k_proj,
        v_proj,
        o_proj: w.linear(&format!("{p}.o_proj"), hidden, n_heads * head_dim, false)?,
        q_norm: Some(w.norm(&format!("{p}.q_norm"), head_dim, eps)?),
        k_norm,
        v_norm: own_kv.then_some(eps),
        full_qk_norm: false,
        n_heads,
        n_kv_heads: n_kv,
        scale: 1.0,
        rope: rope(config, local, head_dim)?,
        window: local.then_some(config.sliding_window.unwrap_or(512) as i32),
        causal: true,
        query_scale: None,
        sinks: None,
        output_gate: false,
        group: None,
    })
}

/// The dense MLP width of layer `i`: doubled in the KV-shared layers when the config says.
pub(crate) fn mlp_width(config: &ModelConfig, i: usize) -> i32 {
    let shared = i >= first_shared(config) && first_shared(config) > 0;
    let double = shared && config.use_double_wide_mlp.unwrap_or(false);
    config.intermediate_size as i32 * if double { 2 } else { 1 }
}

/// The 26B's feed-forward part: the dense MLP and the experts side by side.
pub struct DenseAndExperts {
    pub(crate) pre_mlp: RmsNorm,
    pub(crate) mlp: Mlp,
    pub(crate) post_mlp: RmsNorm,
    /// Norms the un-normed stream for the router: rms_norm with `scale * hidden^-0.5`.
    pub(crate) router_norm: RmsNorm,
    pub(crate) pre_experts: RmsNorm,
    pub(crate) experts: MoeBlock,
    pub(crate) post_experts: RmsNorm,
}

impl DenseAndExperts {
    /// `x` is the residual stream, un-normed.
    pub(crate) fn forward(&self, x: &Array) -> Result<Array> {
        let dense = self
            .post_mlp
            .forward(&self.mlp.forward(&self.pre_mlp.forward(x)?)?)?;
        let routed = self
            .experts
            .forward_routed(&self.router_norm.forward(x)?, &self.pre_experts.forward(x)?)?;
        Ok(dense.add(self.post_experts.forward(&routed)?)?)
    }

    pub(crate) fn arrays(&self) -> Vec<&Array> {
        let mut out: Vec<&Array> = [
            &self.pre_mlp,
            &self.post_mlp,
            &self.router_norm,
            &self.pre_experts,
            &self.post_experts,
        ]
        .iter()
        .map(|n| &n.weight)
        .collect();
        out.extend(self.mlp.arrays());
        out.extend(self.experts.arrays());
        out
    }
}

/// Layer `i`'s feed-forward part under `p` (`model.layers.i`) when the model has experts.
pub(crate) fn dense_and_experts(
    w: &mut TensorSource,
    p: &str,
    config: &ModelConfig,
    mlp: Mlp,
) -> Result<DenseAndExperts> {
    let hidden = config.hidden_size as i32;
    let eps = config.rms_norm_eps;
    let experts = config.experts() as i32;
    let inter = config
        .moe_intermediate_size
        .unwrap_or(config.intermediate_size) as i32;
    let scale = w.take_shaped(&format!("{p}.router.scale"), &[hidden])?;
    let root = Array::from_f32((hidden as f32).powf(-0.5)).as_dtype(scale.dtype())?;
    let stacked = |w: &mut TensorSource, name: &str, out: i32, inp: i32| -> Result<ExpertLinear> {
        let module = format!("{p}.experts.switch_glu.{name}");
        Ok(w.linear_stacked(&module, &[experts], out, inp, false)?
            .into())
    };
    let moe = MoeBlock {
        gate: w.linear(&format!("{p}.router.proj"), experts, hidden, false)?,
        router: Router::ScaledTopK {
            per_expert_scale: w.take_shaped(&format!("{p}.router.per_expert_scale"), &[experts])?,
        },
        gate_proj: Some(stacked(w, "gate_proj", inter, hidden)?),
        up_proj: stacked(w, "up_proj", inter, hidden)?,
        down_proj: stacked(w, "down_proj", hidden, inter)?,
        activation: ExpertActivation::GeGlu,
        top_k: config
            .num_experts_per_tok
            .unwrap_or(1)
            .clamp(1, experts.max(1) as usize) as i32,
        norm_topk_prob: false,
        shared: None,
        shared_gate: None,
        latent: None,
        group: None,
    };
    Ok(DenseAndExperts {
        pre_mlp: w.norm(&format!("{p}.pre_feedforward_layernorm"), hidden, eps)?,
        mlp,
        post_mlp: w.norm(&format!("{p}.post_feedforward_layernorm_1"), hidden, eps)?,
        router_norm: RmsNorm {
            weight: scale.multiply(&root)?,
            eps,
        },
        pre_experts: w.norm(&format!("{p}.pre_feedforward_layernorm_2"), hidden, eps)?,
        experts: moe,
        post_experts: w.norm(&format!("{p}.post_feedforward_layernorm_2"), hidden, eps)?,
    })
}

/// The model-level half of the per-layer inputs: a second embedding table and a projection
/// of the (scaled) embeddings, mixed into one small input per layer.
pub struct PerLayerInputs {
    pub(crate) table: Embedding,
    pub(crate) projection: Linear,
    pub(crate) norm: RmsNorm,
    pub(crate) layers: i32,
    pub(crate) width: i32,
    pub(crate) hidden: i32,
}

impl PerLayerInputs {
    pub(crate) fn load(w: &mut TensorSource, config: &ModelConfig) -> Result<Option<Self>> {
        let width = config.hidden_size_per_layer_input.unwrap_or(0) as i32;
        if width == 0 {
            return Ok(None);
        }
        let layers = config.num_hidden_layers as i32;
        let hidden = config.hidden_size as i32;
        let vocab = config
            .vocab_size_per_layer_input
            .unwrap_or(config.vocab_size) as i32;
        Ok(Some(PerLayerInputs {
            table: Embedding {
                table: w.linear("model.embed_tokens_per_layer", vocab, layers * width, false)?,
            },
            projection: w.linear(
                "model.per_layer_model_projection",
                layers * width,
                hidden,
                false,
            )?,
            norm: w.norm(
                "model.per_layer_projection_norm",
                width,
                config.rms_norm_eps,
            )?,
            layers,
            width,
            hidden,
        }))
    }

    /// Every layer's input for tokens `ids` ([b, l]) whose scaled embeddings are `h`:
    /// [b, l, layers, width].
    pub(crate) fn forward(&self, ids: &Array, h: &Array) -> Result<Array> {
        let (b, l) = (h.shape()[0], h.shape()[1]);
        let c = |v: f32, like: &Array| Array::from_f32(v).as_dtype(like.dtype());
        let split = |a: Array| a.reshape(&[b, l, self.layers, self.width]);
        let own = self.table.lookup(ids)?;
        let own = split(own.multiply(c((self.width as f32).sqrt(), &own)?)?)?;
        let projected = self.projection.forward(h)?;
        let projected =
            split(projected.multiply(c((self.hidden as f32).powf(-0.5), &projected)?)?)?;
        let mixed = self.norm.forward(&projected)?.add(&own)?;
        Ok(mixed.multiply(c(0.5f32.sqrt(), &mixed)?)?)
    }

    pub(crate) fn arrays(&self) -> Vec<&Array> {
        let mut out = self.table.table.arrays();
        out.extend(self.projection.arrays());
        out.push(&self.norm.weight);
        out
    }
}

/// The layer half: the layer's input gated by its own output, projected back, normed and
/// added to the stream.
pub struct PerLayerGate {
    pub(crate) gate: Linear,
    pub(crate) projection: Linear,
    pub(crate) norm: RmsNorm,
}

impl PerLayerGate {
    pub(crate) fn load(
        w: &mut TensorSource,
        p: &str,
        config: &ModelConfig,
    ) -> Result<Option<Self>> {
        let width = config.hidden_size_per_layer_input.unwrap_or(0) as i32;
        if width == 0 {
            return Ok(None);
        }
        let hidden = config.hidden_size as i32;
        Ok(Some(PerLayerGate {
            gate: w.linear(&format!("{p}.per_layer_input_gate"), width, hidden, false)?,
            projection: w.linear(&format!("{p}.per_layer_projection"), hidden, width, false)?,
            norm: w.norm(
                &format!("{p}.post_per_layer_input_norm"),
                hidden,
                config.rms_norm_eps,
            )?,
        }))
    }

    pub(crate) fn forward(&self, h: &Array, input: &Array) -> Result<Array> {
        let gate = gelu_approx(&self.gate.forward(h)?)?.multiply(input)?;
        let out = self.norm.forward(&self.projection.forward(&gate)?)?;
        Ok(h.add(&out)?)
    }

    pub(crate) fn arrays(&self) -> Vec<&Array> {
        let mut out = self.gate.arrays();
        out.extend(self.projection.arrays());
        out.push(&self.norm.weight);
        out
    }
}

/// Hugging Face's names for what mlx-lm's `sanitize` renames: the fused experts
/// (`experts.gate_up_proj` [experts, 2 * inter, hidden], `experts.down_proj`) as
/// `experts.switch_glu.*`; the rotary tables and clipping ranges dropped.
pub(crate) fn hugging_face_names(tensors: &mut HashMap<String, Array>) -> Result<()> {
    let names: Vec<String> = tensors.keys().cloned().collect();
    for name in names {
        let dropped = [
            "self_attn.rotary_emb",
            "input_max",
            "input_min",
            "output_max",
            "output_min",
        ];
        if dropped.iter().any(|d| name.contains(d)) {
            tensors.remove(&name);
        } else if let Some(base) = name.strip_suffix(".experts.gate_up_proj") {
            let Some(fused) = tensors.remove(&name) else {
                continue;
            };
            let rows = fused.shape().get(1).copied().unwrap_or(0);
            let half = rows / 2;
            let gate = fused.index((.., ..half, ..));
            let up = fused.index((.., half.., ..));
            tensors.insert(format!("{base}.experts.switch_glu.gate_proj.weight"), gate);
            tensors.insert(format!("{base}.experts.switch_glu.up_proj.weight"), up);
        } else if let Some(base) = name.strip_suffix(".experts.down_proj") {
            if let Some(t) = tensors.remove(&name) {
                tensors.insert(format!("{base}.experts.switch_glu.down_proj.weight"), t);
            }
        }
    }
    Ok(())
}

/// `tanh(x / cap) * cap`, in x's dtype.
pub(crate) fn softcap(x: &Array, cap: f32) -> Result<Array> {
    let c = Array::from_f32(cap).as_dtype(x.dtype())?;
    Ok(ops::tanh(&x.divide(&c)?)?.multiply(&c)?)
}

/// Values normed without a scale.
pub(crate) fn unscaled_norm(x: &Array, eps: f32) -> Result<Array> {
    Ok(fast::rms_norm(x, None::<&Array>, eps)?)
}
