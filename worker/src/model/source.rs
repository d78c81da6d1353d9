//! Building a model from a folder's tensors: shape checks that name the culprit, fused
//! projections split, experts stacked, quantized weights expanded where the CPU wants them.

use mlx_rs::ops::indexing::{Ellipsis, IndexOp, IntoStrideBy};
use mlx_rs::ops::{self};
use mlx_rs::{Array, Dtype};
use opta_lmx_shared::model_dir::{ModelConfig, Quantization};

use opta_lmx_shared::model_dir::QuantMode;

use super::*;

/// Hands out named tensors with shape checks, so a bad folder fails naming the tensor.
pub(crate) struct TensorSource<'a> {
    pub(crate) tensors: HashMap<String, Array>,
    pub(crate) config: &'a ModelConfig,
    pub(crate) options: LoadOptions,
    /// Norm weights are stored as offsets from 1 (Gemma).
    pub(crate) norm_offset: bool,
    /// Expand quantized weights to float32 (see `LoadOptions::dequantize_up_to_bytes`).
    pub(crate) dequantize: bool,
}

impl TensorSource<'_> {
    pub(crate) fn take(&mut self, name: &str) -> Result<Array> {
        self.tensors
            .remove(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
    }

    pub(crate) fn take_shaped(&mut self, name: &str, expected: &[i32]) -> Result<Array> {
        let t = self.take(name)?;
        if t.shape() != expected {
            return Err(ModelError::Shape {
                name: name.to_string(),
                actual: t.shape().to_vec(),
                expected: expected.to_vec(),
            });
        }
        Ok(t)
    }

    pub(crate) fn norm(&mut self, module: &str, dim: i32, eps: f32) -> Result<RmsNorm> {
        let mut weight = self.take_shaped(&format!("{module}.weight"), &[dim])?;
        if self.norm_offset {
            // 1 + w in w's dtype, as mlx-lm computes it on every call.
            weight = weight.add(Array::from_f32(1.0).as_dtype(weight.dtype())?)?;
        }
        Ok(RmsNorm { weight, eps })
    }

    /// Splits the fused projection `module` (e.g. `….self_attn.qkv_proj`), when the folder has
    /// it, into sibling modules of `parts` (name, output rows) in order, for every tensor it
    /// has (weight, and a quantized one's scales and biases: all split along the output rows).
    pub(crate) fn split_rows(&mut self, module: &str, parts: &[(&str, i32)]) -> Result<()> {
        let Some((parent, _)) = module.rsplit_once('.') else {
            return Ok(());
        };
        for suffix in ["weight", "scales", "biases", "bias"] {
            let Some(fused) = self.tensors.remove(&format!("{module}.{suffix}")) else {
                continue;
            };
            let total: i32 = parts.iter().map(|p| p.1).sum();
            if fused.shape().first() != Some(&total) {
                return Err(ModelError::Shape {
                    name: format!("{module}.{suffix}"),
                    actual: fused.shape().to_vec(),
                    expected: vec![total],
                });
            }
            let mut at = 0;
            for (name, rows) in parts {
                let part = fused.index(at..at + rows);
                self.tensors
                    .insert(format!("{parent}.{name}.{suffix}"), part);
                at += rows;
            }
        }
        Ok(())
    }

    /// A MoE block under `module` (`….mlp`): the router `gate` and the stacked experts, either
    /// as mlx-lm stores them (`switch_mlp.*_proj`, [experts, out, in]) or as Hugging Face
    /// does (`experts.{e}.*_proj`), stacked here as mlx-lm's `sanitize` stacks them.
    /// With `oai`, gpt-oss's block as mlx-lm stores it: `router` (with a bias) and
    /// `experts.*_proj` with biases.
    pub(crate) fn moe(
        &mut self,
        module: &str,
        config: &ModelConfig,
        oai: bool,
    ) -> Result<MoeBlock> {
        let hidden = config.hidden_size as i32;
        let experts = config.experts() as i32;
        let inter = config
            .moe_intermediate_size
            .unwrap_or(config.intermediate_size) as i32;
        let router = if oai {
            Router::TopKSoftmax
        } else if config.n_group.is_some() || config.routed_scaling_factor.is_some() {
            Router::SigmoidGrouped {
                correction: self.take_shaped(
                    &format!("{module}.gate.e_score_correction_bias"),
                    &[experts],
                )?,
                // GLM-4.7-Flash guards the renormalisation against a zero sum.
                guard: if config.model_type == "glm4_moe_lite" {
                    1e-20
                } else {
                    0.0
                },
                n_group: config.n_group.unwrap_or(1).max(1) as i32,
                topk_group: config.topk_group.unwrap_or(1).max(1) as i32,
                scale: config.routed_scaling_factor.unwrap_or(1.0),
            }
        } else {
            Router::Softmax
        };
        let shared = match config.n_shared_experts.filter(|&n| n > 0) {
            Some(n) => {
                let shared_inter = inter * n as i32;
                let p = format!("{module}.shared_experts");
                Some(Mlp {
                    gate_proj: Some(self.linear(
                        &format!("{p}.gate_proj"),
                        shared_inter,
                        hidden,
                        false,
                    )?),
                    up_proj: self.linear(&format!("{p}.up_proj"), shared_inter, hidden, false)?,
                    down_proj: self.linear(
                        &format!("{p}.down_proj"),
                        hidden,
                        shared_inter,
                        false,
                    )?,
                    activation: Activation::Silu,
                    group: None,
                })
            }
            None => None,
        };
        // Qwen3-Next/3.5: one shared expert of its own size behind sigmoid(shared_expert_gate).
        let (shared, shared_gate) = match config.shared_expert_intermediate_size {
            Some(size) if shared.is_none() && size > 0 => {
                let p = format!("{module}.shared_expert");
                let size = size as i32;
                let mlp = Mlp {
                    gate_proj: Some(self.linear(&format!("{p}.gate_proj"), size, hidden, false)?),
                    up_proj: self.linear(&format!("{p}.up_proj"), size, hidden, false)?,
                    down_proj: self.linear(&format!("{p}.down_proj"), hidden, size, false)?,
                    activation: Activation::Silu,
                    group: None,
                };
                let gate =
                    self.linear(&format!("{module}.shared_expert_gate"), 1, hidden, false)?;
                (Some(mlp), Some(gate))
            }
            _ => (shared, None),
        };
        let mut stacked = |name: &str, out: i32, inp: i32| -> Result<ExpertLinear> {
            let base = if oai {
                format!("{module}.experts.{name}")
            } else {
                format!("{module}.switch_mlp.{name}")
            };
            // Hugging Face's per-expert tensors (dense or quantized) are stacked first.
            for suffix in ["weight", "scales", "biases"] {
                if !self
                    .tensors
                    .contains_key(&format!("{module}.experts.0.{name}.{suffix}"))
                {
                    continue;
                }
                let parts = (0..experts)
                    .map(|e| self.take(&format!("{module}.experts.{e}.{name}.{suffix}")))
                    .collect::<Result<Vec<_>>>()?;
                self.tensors
                    .insert(format!("{base}.{suffix}"), ops::stack(&parts, 0)?);
            }
            Ok(self
                .linear_stacked(&base, &[experts], out, inp, oai)?
                .into())
        };
        let activation = if oai {
            ExpertActivation::ClampedSwiglu {
                alpha: 1.702,
                limit: config.swiglu_limit.unwrap_or(7.0),
            }
        } else {
            ExpertActivation::Swiglu
        };
        Ok(MoeBlock {
            gate_proj: Some(stacked("gate_proj", inter, hidden)?),
            up_proj: stacked("up_proj", inter, hidden)?,
            down_proj: stacked("down_proj", hidden, inter)?,
            gate: if oai {
                self.linear(&format!("{module}.router"), experts, hidden, true)?
            } else {
                self.linear(&format!("{module}.gate"), experts, hidden, false)?
            },
            router,
            activation,
            shared,
            shared_gate,
            latent: None,
            top_k: config
                .num_experts_per_tok
                .unwrap_or(1)
                .clamp(1, experts.max(1) as usize) as i32,
            norm_topk_prob: config.norm_topk_prob.unwrap_or(false),
            group: None,
        })
    }

    pub(crate) fn linear(
        &mut self,
        module: &str,
        out: i32,
        inp: i32,
        bias: bool,
    ) -> Result<Linear> {
        self.linear_stacked(module, &[], out, inp, bias)
    }

    /// A linear layer whose weights carry leading dimensions `lead` (stacked experts).
    pub(crate) fn linear_stacked(
        &mut self,
        module: &str,
        lead: &[i32],
        out: i32,
        inp: i32,
        bias: bool,
    ) -> Result<Linear> {
        let shape = |last: &[i32]| [lead, last].concat();
        let bias = if bias {
            Some(self.take_shaped(&format!("{module}.bias"), &shape(&[out]))?)
        } else {
            None
        };
        let quant = self.config.quantization.for_module(module);
        let scales_name = format!("{module}.scales");
        match quant {
            Some(Quantization {
                group_size,
                bits,
                mode,
            }) if self.tensors.contains_key(&scales_name) => {
                let (g, b) = (group_size as i32, bits as i32);
                let packed = shape(&[out, inp * b / 32]);
                let weight = self.take_shaped(&format!("{module}.weight"), &packed)?;
                if weight.dtype() != Dtype::Uint32 {
                    return Err(ModelError::Shape {
                        name: format!(
                            "{module}.weight (dtype {:?}, expected uint32)",
                            weight.dtype()
                        ),
                        actual: weight.shape().to_vec(),
                        expected: packed,
                    });
                }
                let groups = shape(&[out, inp / g]);
                let mut scales = self.take_shaped(&scales_name, &groups)?;
                // Affine groups have biases; the floating-point modes' byte-sized scales stand
                // alone and are never converted.
                let affine = mode == QuantMode::Affine;
                let mut biases = if affine {
                    Some(self.take_shaped(&format!("{module}.biases"), &groups)?)
                } else {
                    None
                };
                if affine && (self.options.float32_quant_params || self.dequantize) {
                    scales = scales.as_dtype(Dtype::Float32)?;
                    biases = biases.map(|b| b.as_dtype(Dtype::Float32)).transpose()?;
                }
                if self.dequantize {
                    // float32 scales make affine weights float32 too; the other modes ask.
                    let weight =
                        quant::dequantize(&weight, &scales, biases.as_ref(), g, b, mode, !affine)?;
                    return Ok(Linear::Dense { weight, bias });
                }
                Ok(Linear::Quantized {
                    weight,
                    scales,
                    biases,
                    bias,
                    group_size: g,
                    bits: b,
                    mode,
                })
            }
            _ => {
                let mut weight =
                    self.take_shaped(&format!("{module}.weight"), &shape(&[out, inp]))?;
                // FP8 checkpoints (Mistral's): float8 e4m3 weights times `weight_scale_inv`.
                if let Some(scale) = self.tensors.remove(&format!("{module}.weight_scale_inv")) {
                    let float32 = self.options.float32_quant_params || self.dequantize;
                    weight = fp8_weight(module, &weight, &scale, out, float32)?;
                }
                self.tensors.remove(&format!("{module}.activation_scale"));
                Ok(Linear::Dense { weight, bias })
            }
        }
    }
}

/// OpenAI's own gpt-oss layout, renamed to mlx-lm's (its `sanitize`): MXFP4 experts as
/// `…_blocks` ([.., rows, groups, 16] bytes) and `…_scales`, gate and up projections fused with
/// their rows interleaved (`gate_up_proj`, gate first), biases as `…_bias`.
pub(crate) fn openai_experts(tensors: &mut HashMap<String, Array>) -> Result<()> {
    let fused: Vec<String> = tensors
        .keys()
        .filter(|k| k.contains(".experts.gate_up_proj") || k.contains(".experts.down_proj_"))
        .cloned()
        .collect();
    for name in fused {
        let Some(mut v) = tensors.remove(&name) else {
            continue;
        };
        let (base, suffix) = match name.rsplit_once('_') {
            Some((base, s @ ("blocks" | "scales" | "bias"))) => (base.to_string(), s),
            _ => (name.clone(), "weight"),
        };
        let suffix = match suffix {
            "blocks" => {
                // 16 bytes per group of 32 values: 4 uint32 words, as MLX packs them.
                let shape = v.shape().to_vec();
                let mut packed = shape[..shape.len().saturating_sub(2)].to_vec();
                packed.push(-1);
                v = v.view_dtype(Dtype::Uint32)?.reshape(&packed)?;
                "weight"
            }
            s => s,
        };
        match base.strip_suffix("gate_up_proj") {
            Some(parent) => {
                // Rows alternate gate, up: the second-to-last axis of weights and scales, the
                // last of biases.
                let (gate, up) = if suffix == "bias" {
                    (
                        v.index((Ellipsis, (..).stride_by(2))),
                        v.index((Ellipsis, (1..).stride_by(2))),
                    )
                } else {
                    (
                        v.index((Ellipsis, (..).stride_by(2), ..)),
                        v.index((Ellipsis, (1..).stride_by(2), ..)),
                    )
                };
                tensors.insert(format!("{parent}gate_proj.{suffix}"), gate);
                tensors.insert(format!("{parent}up_proj.{suffix}"), up);
            }
            None => {
                tensors.insert(format!("{base}.{suffix}"), v);
            }
        }
    }
    Ok(())
}

/// An FP8 weight expanded: e4m3 bytes (MLX loads `F8_E4M3` tensors as uint8) times its scale,
/// one per tensor or per row, in the scale's dtype (float32 with `float32`).
fn fp8_weight(module: &str, w: &Array, scale: &Array, rows: i32, float32: bool) -> Result<Array> {
    let name = format!("{module}.weight_scale_inv");
    if w.dtype() != Dtype::Uint8 {
        return Err(ModelError::Shape {
            name: format!(
                "{module}.weight (dtype {:?}, expected float8 e4m3)",
                w.dtype()
            ),
            actual: w.shape().to_vec(),
            expected: w.shape().to_vec(),
        });
    }
    if scale.size() != 1 && scale.shape() != [rows, 1] {
        return Err(ModelError::Shape {
            name: format!("{name} (block-wise FP8 scales are not supported)"),
            actual: scale.shape().to_vec(),
            expected: vec![rows, 1],
        });
    }
    let dtype = if float32 {
        Dtype::Float32
    } else {
        scale.dtype()
    };
    Ok(w.from_fp8(dtype)?.multiply(scale.as_dtype(dtype)?)?)
}

/// Bytes the quantized weights would take expanded to float32.
pub(crate) fn dense_bytes_of_quantized(
    config: &ModelConfig,
    tensors: &HashMap<String, Array>,
) -> usize {
    tensors
        .iter()
        .filter_map(|(name, t)| {
            let module = name.strip_suffix(".weight")?;
            let q = config.quantization.for_module(module)?;
            if !tensors.contains_key(&format!("{module}.scales")) {
                return None;
            }
            let shape = t.shape();
            let cols = *shape.last()? as usize * 32 / q.bits as usize;
            Some(shape[..shape.len() - 1].iter().product::<i32>() as usize * cols * 4)
        })
        .sum()
}
