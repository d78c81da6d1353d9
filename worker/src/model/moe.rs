//! Mixture-of-experts blocks: stacked experts through `gather_mm`/`gather_qmm` and the two
//! routers (Qwen3 MoE's softmax, GLM-4.5's grouped sigmoid), plus which layers carry experts.

use mlx_rs::ops::{self, indexing::IndexOp};
use mlx_rs::{Array, Dtype};
use opta_lmx_shared::model_dir::ModelConfig;

use opta_lmx_shared::model_dir::QuantMode;

use super::*;

/// One projection of every expert, stacked: [experts, out, in], dense or quantized, with
/// an optional per-expert bias ([experts, out], gpt-oss).
pub struct ExpertLinear {
    pub(crate) weights: ExpertWeights,
    pub(crate) bias: Option<Array>,
}

pub enum ExpertWeights {
    Dense {
        weight: Array,
    },
    Quantized {
        weight: Array,
        scales: Array,
        biases: Option<Array>,
        group_size: i32,
        bits: i32,
        mode: QuantMode,
    },
}

impl ExpertLinear {
    /// `x` through expert `experts[...]` of each row (mlx-lm's `SwitchLinear`).
    pub(crate) fn forward(&self, x: &Array, experts: &Array, sorted: bool) -> Result<Array> {
        let y = match &self.weights {
            ExpertWeights::Dense { weight } => {
                ops::gather_mm(x, weight.swap_axes(-1, -2)?, None, experts, sorted)?
            }
            ExpertWeights::Quantized {
                weight,
                scales,
                biases,
                group_size,
                bits,
                mode,
            } => quant::gather_qmm(
                x,
                weight,
                scales,
                biases.as_ref(),
                experts,
                *group_size,
                *bits,
                *mode,
                sorted,
            )?,
        };
        match &self.bias {
            Some(b) => Ok(y.add(b.take_axis(experts, 0)?.expand_dims(-2)?)?),
            None => Ok(y),
        }
    }

    pub(crate) fn arrays(&self) -> Vec<&Array> {
        let mut out: Vec<&Array> = match &self.weights {
            ExpertWeights::Dense { weight } => vec![weight],
            ExpertWeights::Quantized {
                weight,
                scales,
                biases,
                ..
            } => [weight, scales].into_iter().chain(biases).collect(),
        };
        out.extend(&self.bias);
        out
    }
}

/// Stacked experts are a linear layer with leading expert axes; the two convert freely.
impl From<Linear> for ExpertLinear {
    fn from(linear: Linear) -> Self {
        match linear {
            Linear::Dense { weight, bias } => ExpertLinear {
                weights: ExpertWeights::Dense { weight },
                bias,
            },
            Linear::Quantized {
                weight,
                scales,
                biases,
                bias,
                group_size,
                bits,
                mode,
            } => ExpertLinear {
                weights: ExpertWeights::Quantized {
                    weight,
                    scales,
                    biases,
                    group_size,
                    bits,
                    mode,
                },
                bias,
            },
        }
    }
}

impl ExpertLinear {
    /// The same arrays as a (stacked) linear layer; arrays are reference-counted, not copied.
    pub(crate) fn to_linear(&self) -> Linear {
        let bias = self.bias.clone();
        match &self.weights {
            ExpertWeights::Dense { weight } => Linear::Dense {
                weight: weight.clone(),
                bias,
            },
            ExpertWeights::Quantized {
                weight,
                scales,
                biases,
                group_size,
                bits,
                mode,
            } => Linear::Quantized {
                weight: weight.clone(),
                scales: scales.clone(),
                biases: biases.clone(),
                bias,
                group_size: *group_size,
                bits: *bits,
                mode: *mode,
            },
        }
    }
}

/// The experts' gate activation.
#[derive(Debug, Clone, Copy)]
pub enum ExpertActivation {
    /// silu(gate) * up.
    Swiglu,
    /// gpt-oss: the gate clipped from above and the linear part both ways at `limit`, then
    /// (up + 1) * gate * sigmoid(alpha * gate) (mlx-lm's `swiglu_oai`).
    ClampedSwiglu { alpha: f32, limit: f32 },
    /// gelu_approx(gate) * up (Gemma 4).
    GeGlu,
    /// relu(up)², no gate (Nemotron-H).
    Relu2,
}

/// Qwen3 MoE's sparse block: a softmax router picks `top_k` experts per token, whose SwiGLU
/// outputs are summed with the router's weights (optionally renormalised over the chosen).
pub struct MoeBlock {
    pub(crate) gate: Linear,
    pub(crate) router: Router,
    /// None for an ungated activation (Nemotron-H).
    pub(crate) gate_proj: Option<ExpertLinear>,
    pub(crate) up_proj: ExpertLinear,
    pub(crate) down_proj: ExpertLinear,
    pub(crate) activation: ExpertActivation,
    pub(crate) top_k: i32,
    pub(crate) norm_topk_prob: bool,
    /// Experts every token uses, added after the routed ones (GLM-4.5).
    pub(crate) shared: Option<Mlp>,
    /// Qwen3-Next/3.5: the shared expert's output is scaled by sigmoid of this ([1, hidden]).
    pub(crate) shared_gate: Option<Linear>,
    /// Nemotron-H: the routed experts work in a narrower latent space, projected into and
    /// out of around them.
    pub(crate) latent: Option<(Linear, Linear)>,
    /// Tensor parallel: this rank holds part of every expert; outputs are summed over it.
    pub(crate) group: Option<std::sync::Arc<crate::distributed::Group>>,
}

/// How a MoE block's router turns its logits into experts and weights.
pub enum Router {
    /// Qwen3 MoE: softmax over all experts, the top k (optionally renormalised).
    Softmax,
    /// gpt-oss: the top k raw logits, then a softmax over those k.
    TopKSoftmax,
    /// Gemma 4: as `TopKSoftmax`, then each chosen weight times its expert's scale.
    ScaledTopK { per_expert_scale: Array },
    /// GLM-4.5 (`noaux_tc`): sigmoid scores; the choice adds a per-expert correction bias and
    /// keeps only the `topk_group` best of `n_group` groups (each scored by its best two), the
    /// weights are the uncorrected scores of the chosen, renormalised, times `scale`.
    SigmoidGrouped {
        correction: Array,
        /// Added to the chosen weights' sum before dividing by it.
        guard: f32,
        n_group: i32,
        topk_group: i32,
        scale: f32,
    },
}

impl MoeBlock {
    pub(crate) fn forward(&self, x: &Array) -> Result<Array> {
        self.forward_routed(x, x)
    }

    /// The experts on `x`, chosen by the router from `route` (Gemma 4 routes from another
    /// norm of the stream than the experts read).
    pub(crate) fn forward_routed(&self, route: &Array, x: &Array) -> Result<Array> {
        let logits = self.gate.forward(route)?;
        let experts = *logits.shape().last().unwrap_or(&0);
        let k = self.top_k;
        let (chosen, scores) =
            match &self.router {
                Router::Softmax => {
                    let gates = ops::softmax_axis(&logits, -1, true)?;
                    let chosen = ops::argpartition_axis(&gates, experts - k, -1)?;
                    let chosen = chosen.index((.., .., (experts - k)..));
                    let mut scores = gates.take_along_axis(&chosen, -1)?;
                    if self.norm_topk_prob {
                        scores = scores.divide(scores.sum_axis(-1, true)?)?;
                    }
                    (chosen, scores)
                }
                Router::TopKSoftmax => {
                    let chosen = ops::argpartition_axis(&logits, experts - k, -1)?;
                    let chosen = chosen.index((.., .., (experts - k)..));
                    let top = logits.take_along_axis(&chosen, -1)?;
                    (chosen, ops::softmax_axis(&top, -1, true)?)
                }
                Router::ScaledTopK { per_expert_scale } => {
                    let chosen = ops::argpartition_axis(&logits, experts - k, -1)?;
                    let chosen = chosen.index((.., .., (experts - k)..));
                    let top = logits.take_along_axis(&chosen, -1)?;
                    let weights = ops::softmax_axis(&top, -1, false)?;
                    let scale = per_expert_scale.take(&chosen)?;
                    (chosen, weights.multiply(&scale)?)
                }
                Router::SigmoidGrouped {
                    correction,
                    guard,
                    n_group,
                    topk_group,
                    scale,
                } => {
                    let original = ops::sigmoid(logits.as_dtype(Dtype::Float32)?)?;
                    let mut scores = original.add(correction)?;
                    if *n_group > 1 {
                        let shape = scores.shape().to_vec();
                        let grouped = scores.reshape(&[shape[0], shape[1], *n_group, -1])?;
                        let best_two = ops::indexing::topk_axis(&grouped, 2, -1)?;
                        let group_scores = best_two.sum_axis(-1, true)?;
                        let dropped = n_group - topk_group;
                        let worst = ops::argpartition_axis(&group_scores, dropped - 1, -2)?
                            .index((.., .., ..dropped, ..));
                        let zero = Array::from_f32(0.0);
                        scores = ops::indexing::put_along_axis(&grouped, &worst, &zero, -2)?
                            .reshape(&[shape[0], shape[1], -1])?;
                    }
                    let chosen =
                        ops::argpartition_axis(scores.negative()?, k - 1, -1)?.index((.., .., ..k));
                    let mut weights = original.take_along_axis(&chosen, -1)?;
                    if k > 1 && self.norm_topk_prob {
                        let mut sum = weights.sum_axis(-1, true)?;
                        if *guard != 0.0 {
                            sum = sum.add(Array::from_f32(*guard))?;
                        }
                        weights = weights.divide(&sum)?;
                    }
                    (chosen, weights.multiply(Array::from_f32(*scale))?)
                }
            };
        let inner = match &self.latent {
            Some((into, _)) => into.forward(x)?,
            None => x.clone(),
        };
        let y = self.switch_glu(&inner, &chosen)?;
        let weighted = y.multiply(scores.expand_dims(-1)?)?;
        let mut routed = weighted.sum_axis(-2, None)?.as_dtype(y.dtype())?;
        if let Some((_, out_of)) = &self.latent {
            routed = out_of.forward(&routed)?;
        }
        let out = match &self.shared {
            Some(mlp) => {
                let mut shared = mlp.forward(x)?;
                if let Some(gate) = &self.shared_gate {
                    shared = ops::sigmoid(&gate.forward(x)?)?.multiply(&shared)?;
                }
                routed.add(shared)?
            }
            None => routed,
        };
        reduce(&self.group, out)
    }

    /// Every token through its chosen experts: [1, n, k, hidden]. With many (token, expert)
    /// pairs they are sorted by expert first, so each expert's weights are read in one run.
    pub(crate) fn switch_glu(&self, x: &Array, chosen: &Array) -> Result<Array> {
        let shape = chosen.shape().to_vec();
        let x = x.expand_dims_axes(&[-2, -3])?;
        let sort = chosen.size() >= 64;
        let (x, idx, inverse) = if sort {
            let k = *shape.last().unwrap_or(&1);
            let flat = chosen.flatten(None, None)?;
            let order = ops::argsort_axis(&flat, 0)?;
            let inverse = ops::argsort_axis(&order, 0)?;
            let rows = order.floor_divide(Array::from_int(k).as_dtype(order.dtype())?)?;
            let x = x.flatten(0, -3)?.take_axis(&rows, 0)?;
            (x, flat.take_axis(&order, 0)?, Some(inverse))
        } else {
            (x, chosen.clone(), None)
        };
        let up = self.up_proj.forward(&x, &idx, sort)?;
        let gate = match &self.gate_proj {
            Some(g) => g.forward(&x, &idx, sort)?,
            None => up.clone(),
        };
        let act = match self.activation {
            ExpertActivation::Relu2 => relu2(&up)?,
            ExpertActivation::Swiglu => gate.multiply(ops::sigmoid(&gate)?)?.multiply(&up)?,
            ExpertActivation::ClampedSwiglu { alpha, limit } => {
                let c = |v: f32| Array::from_f32(v).as_dtype(gate.dtype());
                let gate = ops::minimum(&gate, c(limit)?)?;
                let up = ops::clip(&up, (c(-limit)?, c(limit)?))?;
                let glu = gate.multiply(ops::sigmoid(&gate.multiply(c(alpha)?)?)?)?;
                up.add(c(1.0)?)?.multiply(&glu)?
            }
            ExpertActivation::GeGlu => gelu_approx(&gate)?.multiply(&up)?,
        };
        let mut out = self.down_proj.forward(&act, &idx, sort)?;
        if let Some(inverse) = inverse {
            let hidden = *out.shape().last().unwrap_or(&1);
            out = out
                .take_axis(&inverse, 0)?
                .reshape(&[shape[0], shape[1], shape[2], 1, hidden])?;
        }
        Ok(out.squeeze_axes(&[-2])?)
    }
}

impl MoeBlock {
    pub(crate) fn arrays(&self) -> Vec<&Array> {
        let mut out = self.gate.arrays();
        if let Router::SigmoidGrouped { correction, .. } = &self.router {
            out.push(correction);
        }
        if let Router::ScaledTopK { per_expert_scale } = &self.router {
            out.push(per_expert_scale);
        }
        let experts = [
            self.gate_proj.as_ref(),
            Some(&self.up_proj),
            Some(&self.down_proj),
        ];
        out.extend(experts.into_iter().flatten().flat_map(ExpertLinear::arrays));
        if let Some(shared) = &self.shared {
            out.extend(shared.arrays());
        }
        out.extend(self.shared_gate.iter().flat_map(Linear::arrays));
        if let Some((into, out_of)) = &self.latent {
            out.extend(into.arrays());
            out.extend(out_of.arrays());
        }
        out
    }
}

/// Whether layer `i` of a MoE model has experts (mlx-lm's rules for Qwen3 MoE and GLM-4.5).
pub(crate) fn moe_layer(config: &ModelConfig, i: usize) -> bool {
    let step = config.decoder_sparse_step.unwrap_or(1).max(1);
    let dense = config.mlp_only_layers.as_deref().unwrap_or(&[]);
    // GLM-4.5: the first `first_k_dense_replace` layers are dense.
    let first_sparse = config.first_k_dense_replace.unwrap_or(0);
    config.experts() > 0 && i >= first_sparse && !dense.contains(&i) && (i + 1).is_multiple_of(step)
}
