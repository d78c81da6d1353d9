//! The transformer: one skeleton for the Llama family (llama, mistral, qwen2, qwen3) and Gemma 3
//! (gemma3_text, and the text part of gemma3). The architectures differ only in data (which
//! biases and norms exist, the activation, how RoPE is scaled, which layers attend through a
//! sliding window), so the differences live in `ArchSpec` and in which tensors the folder
//! holds, not in copies of the forward pass. The arithmetic follows mlx-lm op for op, so that greedy output is
//! token-identical on identical weights.

use std::collections::HashMap;
use std::path::Path;

use mlx_rs::error::Exception;
use mlx_rs::fast::{self, ScaledDotProductAttentionMask};
use mlx_rs::ops::{self, indexing::IndexOp};
use mlx_rs::{Array, Dtype};
use opta_lmx_shared::model_dir::{ModelConfig, Quantization};

use crate::cache::KvCache;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "unsupported model_type {0:?}: supported are llama, mistral, ministral3, mistral3 (its \
         language model), phi3, granite, qwen2, qwen3, qwen3_moe, glm4_moe, gemma3_text, gemma3 (its language model) and, for embeddings, bert and \
         xlm_roberta"
    )]
    UnsupportedArch(String),
    #[error("tensor {0} is missing from the weight files")]
    MissingTensor(String),
    #[error("tensor {name} has shape {actual:?}, expected {expected:?}")]
    Shape {
        name: String,
        actual: Vec<i32>,
        expected: Vec<i32>,
    },
    #[error("unsupported rope_scaling: {0}")]
    RopeScaling(String),
    #[error("a sequence's cache has fewer layers than the model")]
    CacheLayers,
    #[error("MLX: {0}")]
    Mlx(#[from] Exception),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Numeric choices made at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Keep quantization scales and biases in float32. CPUs without native bfloat16 (x86)
    /// convert every bf16 scale on the fly, which makes 4-bit matmuls several times slower;
    /// float32 scales hold the same values exactly, but the matmul then accumulates in
    /// float32, so outputs differ slightly from mlx-lm's (which keeps bf16).
    pub float32_quant_params: bool,
    /// Expand quantized weights to float32 at load when all of them together then take at
    /// most this many bytes (0: never). MLX's CPU quantized matmul costs the same per row
    /// however many rows it gets, so batching gains nothing from it, while a float32 matmul
    /// through BLAS reads each weight once for the whole batch.
    pub dequantize_up_to_bytes: usize,
}

/// The CPU default for [`LoadOptions::dequantize_up_to_bytes`] (shared with the controller's
/// memory guard, which counts such weights expanded).
pub const CPU_DEQUANTIZE_LIMIT: usize = opta_lmx_shared::model_dir::CPU_DEQUANTIZE_LIMIT as usize;

impl LoadOptions {
    /// The same arithmetic as mlx-lm: the files' dtypes as they are.
    pub const EXACT: LoadOptions = LoadOptions {
        float32_quant_params: false,
        dequantize_up_to_bytes: 0,
    };

    /// The default for this machine: on the CPU backend (unless `OPTA_LMX_EXACT=1`) float32
    /// weights for models whose expanded weights fit [`CPU_DEQUANTIZE_LIMIT`], float32
    /// quantization parameters otherwise; on GPUs, where bf16 and quantized kernels are
    /// native, the files' dtypes.
    pub fn for_this_machine() -> Self {
        let exact = std::env::var("OPTA_LMX_EXACT").is_ok_and(|v| v == "1");
        let cpu = mlx_rs::Device::default()
            .get_type()
            .map(|t| matches!(t, mlx_rs::DeviceType::Cpu))
            .unwrap_or(true);
        if cpu && !exact {
            LoadOptions {
                float32_quant_params: true,
                dequantize_up_to_bytes: CPU_DEQUANTIZE_LIMIT,
            }
        } else {
            LoadOptions::EXACT
        }
    }
}

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activation {
    /// SwiGLU (Llama, Qwen).
    Silu,
    /// GeGLU with the tanh approximation of GELU (Gemma).
    GeluApprox,
}

/// How one supported architecture differs from plain Llama.
#[derive(Debug, Clone, Copy)]
struct ArchSpec {
    /// q/k/v projections carry biases (Qwen2; Llama and Granite when `attention_bias`).
    qkv_bias: bool,
    /// So does the output projection (Llama and Granite when `attention_bias`, not Qwen2).
    o_bias: bool,
    /// The MLP's projections carry biases (`mlp_bias`).
    mlp_bias: bool,
    /// Granite's scalars: embeddings, attention scores, residual branches and logits each
    /// scaled by a config value.
    multipliers: bool,
    /// Per-head RMSNorm of queries and keys before RoPE (Qwen3, Gemma 3).
    qk_norm: bool,
    /// RMSNorm scales by `1 + w` (Gemma).
    norm_offset: bool,
    /// Norms after attention and around the MLP too: four per block (Gemma 2 and 3).
    sandwich_norms: bool,
    activation: Activation,
    /// Embeddings multiplied by sqrt(hidden_size), rounded to bfloat16 as Gemma does.
    scale_embeddings: bool,
    /// Local layers with a sliding window and their own RoPE base, every
    /// `sliding_window_pattern`-th layer global (Gemma 3).
    local_layers: bool,
    /// Tied embeddings exactly when the folder has no `lm_head` (mlx-lm's Gemma `sanitize`).
    tie_by_presence: bool,
    /// Mixture-of-experts MLPs where the config places them (Qwen3 MoE).
    moe: bool,
    /// RoPE from `rope_theta` alone, whatever `rope_scaling` says (mlx-lm's GLM-4.5).
    plain_rope: bool,
    /// Ministral 3: queries scaled by 1 + beta * ln(1 + floor(position / original context))
    /// (`llama_4_scaling_beta`), and sliding-window layers where `layer_types` says.
    ministral: bool,
}

const LLAMA: ArchSpec = ArchSpec {
    qkv_bias: false,
    o_bias: false,
    mlp_bias: false,
    multipliers: false,
    qk_norm: false,
    norm_offset: false,
    sandwich_norms: false,
    activation: Activation::Silu,
    scale_embeddings: false,
    local_layers: false,
    tie_by_presence: false,
    moe: false,
    plain_rope: false,
    ministral: false,
};

/// Which biases and norms each `model_type` has follows mlx-lm's class for it (Qwen3 and Gemma
/// take no biases whatever `attention_bias` says).
fn arch_spec(config: &ModelConfig) -> Result<ArchSpec> {
    let bias = config.attention_bias.unwrap_or(false);
    let llama = ArchSpec {
        qkv_bias: bias,
        o_bias: bias,
        mlp_bias: config.mlp_bias.unwrap_or(false),
        ..LLAMA
    };
    match config.model_type.as_str() {
        "llama" | "mistral" | "phi3" => Ok(llama),
        "glm4_moe" => Ok(ArchSpec {
            qkv_bias: bias,
            qk_norm: config.use_qk_norm.unwrap_or(false),
            moe: true,
            plain_rope: true,
            ..LLAMA
        }),
        "ministral3" => Ok(ArchSpec {
            ministral: true,
            ..LLAMA
        }),
        "granite" => Ok(ArchSpec {
            multipliers: true,
            ..llama
        }),
        "qwen2" => Ok(ArchSpec {
            qkv_bias: true,
            ..LLAMA
        }),
        "qwen3" => Ok(ArchSpec {
            qk_norm: true,
            ..LLAMA
        }),
        "qwen3_moe" => Ok(ArchSpec {
            qk_norm: true,
            moe: true,
            ..LLAMA
        }),
        "gemma3_text" | "gemma3" => Ok(ArchSpec {
            qk_norm: true,
            norm_offset: true,
            sandwich_norms: true,
            activation: Activation::GeluApprox,
            scale_embeddings: true,
            local_layers: true,
            tie_by_presence: true,
            ..LLAMA
        }),
        other => Err(ModelError::UnsupportedArch(other.to_string())),
    }
}

/// A linear layer, dense or MLX affine-quantized.
pub enum Linear {
    Dense {
        weight: Array,
        bias: Option<Array>,
    },
    Quantized {
        weight: Array,
        scales: Array,
        biases: Array,
        bias: Option<Array>,
        group_size: i32,
        bits: i32,
    },
}

impl Linear {
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
            } => {
                let y = ops::quantized_matmul(x, weight, scales, biases, true, *group_size, *bits)?;
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
    table: Linear,
}

impl Embedding {
    fn lookup(&self, ids: &Array) -> Result<Array> {
        Ok(match &self.table {
            Linear::Dense { weight, .. } => weight.take_axis(ids, 0)?,
            Linear::Quantized {
                weight,
                scales,
                biases,
                group_size,
                bits,
                ..
            } => ops::dequantize(
                weight.take_axis(ids, 0)?,
                scales.take_axis(ids, 0)?,
                &biases.take_axis(ids, 0)?,
                *group_size,
                *bits,
            )?,
        })
    }

    fn as_linear(&self, x: &Array) -> Result<Array> {
        self.table.forward(x)
    }
}

pub struct RmsNorm {
    weight: Array,
    eps: f32,
}

impl RmsNorm {
    fn forward(&self, x: &Array) -> Result<Array> {
        Ok(fast::rms_norm(x, Some(&self.weight), self.eps)?)
    }
}

/// Rotary position embedding, with precomputed frequencies for scaled variants.
pub struct Rope {
    dims: i32,
    base: f32,
    scale: f32,
    freqs: Option<Array>,
    /// Phi-3's long-context RoPE also scales the rotated part of its input.
    input_scale: Option<f32>,
}

impl Rope {
    fn new(config: &ModelConfig, dims: i32) -> Result<Self> {
        let plain = Rope {
            dims,
            base: config.rope_theta,
            scale: 1.0,
            freqs: None,
            input_scale: None,
        };
        let Some(scaling) = config.rope_scaling.as_ref().filter(|v| !v.is_null()) else {
            return Ok(plain);
        };
        let kind = scaling
            .get("rope_type")
            .or_else(|| scaling.get("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let factor = scaling.get("factor").and_then(|v| v.as_f64());
        match (kind, factor) {
            ("default", _) => Ok(plain),
            ("linear", Some(f)) => Ok(Rope {
                scale: 1.0 / f as f32,
                ..plain
            }),
            ("llama3", Some(f)) => {
                let get = |k: &str, d: f64| scaling.get(k).and_then(|v| v.as_f64()).unwrap_or(d);
                let freqs = llama3_freqs(
                    dims,
                    config.rope_theta,
                    f as f32,
                    get("low_freq_factor", 1.0) as f32,
                    get("high_freq_factor", 4.0) as f32,
                    get("original_max_position_embeddings", 8192.0) as f32,
                )?;
                Ok(Rope {
                    freqs: Some(freqs),
                    ..plain
                })
            }
            ("yarn" | "deepseek_yarn", Some(f)) => {
                let get = |k: &str, d: f64| scaling.get(k).and_then(|v| v.as_f64()).unwrap_or(d);
                let (freqs, mscale) = yarn_freqs(
                    dims,
                    config.rope_theta as f64,
                    f,
                    get("original_max_position_embeddings", 4096.0),
                    get("beta_fast", 32.0),
                    get("beta_slow", 1.0),
                    get("mscale", 1.0),
                    get("mscale_all_dim", 0.0),
                )?;
                Ok(Rope {
                    freqs: Some(freqs),
                    input_scale: (mscale != 1.0).then_some(mscale as f32),
                    ..plain
                })
            }
            // Phi-3's LongRoPE as mlx-lm's SuScaledRoPE applies it: the long factors always,
            // and the input scaled by sqrt(1 + ln(factor) / ln(original context)).
            ("longrope" | "su", _) => {
                let long = scaling
                    .get("long_factor")
                    .and_then(|v| v.as_array())
                    .map(|a| a.iter().filter_map(|x| x.as_f64()).map(|x| x as f32))
                    .map(Iterator::collect::<Vec<f32>>)
                    .ok_or_else(|| ModelError::RopeScaling(scaling.to_string()))?;
                if long.len() as i32 != dims / 2 {
                    return Err(ModelError::RopeScaling(format!(
                        "long_factor has {} entries for {dims} rotated dimensions",
                        long.len()
                    )));
                }
                let exps =
                    ops::arange::<_, f32>(0, dims, 2)?.divide(Array::from_f32(dims as f32))?;
                let freqs = ops::power(Array::from_f32(config.rope_theta), &exps)?;
                let freqs = Array::from_slice(&long, &[dims / 2]).multiply(&freqs)?;
                let original = config.original_max_position_embeddings.unwrap_or(4096) as f64;
                let factor = config.max_position_embeddings.unwrap_or(131_072) as f64 / original;
                let long_mscale = scaling.get("long_mscale").and_then(|v| v.as_f64());
                let input_scale = long_mscale.unwrap_or(if factor <= 1.0 {
                    1.0
                } else {
                    (1.0 + factor.ln() / original.ln()).sqrt()
                });
                Ok(Rope {
                    freqs: Some(freqs),
                    input_scale: Some(input_scale as f32),
                    ..plain
                })
            }
            _ => Err(ModelError::RopeScaling(scaling.to_string())),
        }
    }

    /// Unscaled RoPE with its own base (Gemma 3's local layers).
    fn plain(dims: i32, base: f32) -> Self {
        Rope {
            dims,
            base,
            scale: 1.0,
            freqs: None,
            input_scale: None,
        }
    }

    fn forward(&self, x: &Array, offset: i32) -> Result<Array> {
        let scaled;
        let x = match self.input_scale {
            None => x,
            Some(s) => {
                let s = Array::from_f32(s).as_dtype(x.dtype())?;
                let full = *x.shape().last().unwrap_or(&0);
                scaled = if self.dims >= full {
                    x.multiply(&s)?
                } else {
                    let rotated = x.index((.., .., .., ..self.dims)).multiply(&s)?;
                    ops::concatenate(&[rotated, x.index((.., .., .., self.dims..))], -1)?
                };
                &scaled
            }
        };
        Ok(match &self.freqs {
            Some(freqs) => fast::rope(x, self.dims, false, None, 1.0, offset, freqs)?,
            None => fast::rope(x, self.dims, false, self.base, self.scale, offset, None)?,
        })
    }
}

/// YaRN's frequencies and input scale, as mlx-lm's `YarnRoPE` computes them (float32 MLX ops
/// for the table, f64 for the correction range and the scale).
#[allow(clippy::too_many_arguments)]
fn yarn_freqs(
    dims: i32,
    base: f64,
    factor: f64,
    original: f64,
    beta_fast: f64,
    beta_slow: f64,
    mscale: f64,
    mscale_all_dim: f64,
) -> Result<(Array, f64)> {
    let correction = |rotations: f64| {
        dims as f64 * (original / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
    };
    let low = correction(beta_fast).floor().max(0.0);
    let high = correction(beta_slow).ceil().min(dims as f64 - 1.0);
    let high = if low == high { high + 0.001 } else { high };
    let get_mscale = |m: f64| {
        if factor <= 1.0 {
            1.0
        } else {
            0.1 * m * factor.ln() + 1.0
        }
    };
    let scale = get_mscale(mscale) / get_mscale(mscale_all_dim);
    let f32c = |v: f64| Array::from_f32(v as f32);
    let exps = ops::arange::<_, f32>(0, dims, 2)?.divide(f32c(dims as f64))?;
    let extra = ops::power(f32c(base), &exps)?;
    let inter = extra.multiply(f32c(factor))?;
    let ramp = ops::arange::<_, f32>(0, dims / 2, None)?
        .subtract(f32c(low))?
        .divide(f32c(high - low))?;
    let ramp = ops::clip(&ramp, (0.0f32, 1.0f32))?;
    let mask = f32c(1.0).subtract(&ramp)?;
    let freqs = inter.multiply(&extra)?.divide(
        inter
            .multiply(&mask)?
            .add(extra.multiply(f32c(1.0).subtract(&mask)?)?)?,
    )?;
    Ok((freqs, scale))
}

/// Llama 3's frequency-dependent RoPE scaling, computed with MLX in float32 as mlx-lm does.
fn llama3_freqs(
    dims: i32,
    base: f32,
    factor: f32,
    low_freq_factor: f32,
    high_freq_factor: f32,
    old_context: f32,
) -> Result<Array> {
    let low_wavelen = old_context / low_freq_factor;
    let high_wavelen = old_context / high_freq_factor;
    let exps = ops::arange::<_, f32>(0, dims, 2)?.divide(Array::from_f32(dims as f32))?;
    let freqs = ops::power(Array::from_f32(base), &exps)?;
    let wavelens = freqs.multiply(Array::from_f32(2.0 * std::f32::consts::PI))?;
    let freqs = ops::select(
        &wavelens.gt(Array::from_f32(low_wavelen))?,
        &freqs.multiply(Array::from_f32(factor))?,
        &freqs,
    )?;
    let medium = wavelens
        .gt(Array::from_f32(high_wavelen))?
        .logical_and(&wavelens.lt(Array::from_f32(low_wavelen))?)?;
    let smooth = Array::from_f32(old_context)
        .divide(&wavelens)?
        .subtract(Array::from_f32(low_freq_factor))?
        .divide(Array::from_f32(high_freq_factor - low_freq_factor))?;
    let smooth_freqs = freqs.divide(
        &Array::from_f32(1.0)
            .subtract(&smooth)?
            .divide(Array::from_f32(factor))?
            .add(&smooth)?,
    )?;
    Ok(ops::select(&medium, &smooth_freqs, &freqs)?)
}

pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    n_heads: i32,
    n_kv_heads: i32,
    scale: f32,
    rope: Rope,
    /// A sliding-window layer's window: each token attends to itself and the `window - 1`
    /// before it.
    window: Option<i32>,
    /// Each token attends only to those before it; off for bidirectional embedders.
    causal: bool,
    /// Ministral 3's position-dependent query scale: (beta, original context).
    query_scale: Option<(f32, f32)>,
}

impl Attention {
    /// `x` is [1, n, hidden]: n tokens of one sequence when `caches` holds one cache, or one
    /// token from each of n sequences when it holds n. The projections run once over all n
    /// rows (where batching pays); RoPE, the cache and attention run per sequence, so each
    /// keeps its own length and no padding or mask is needed.
    fn forward(&self, x: &Array, caches: &mut [&mut KvCache]) -> Result<Array> {
        let l = x.shape()[1];
        let split = |y: Array, n: i32| y.reshape(&[1, l, n, -1]);
        let mut q = split(self.q_proj.forward(x)?, self.n_heads)?;
        let mut k = split(self.k_proj.forward(x)?, self.n_kv_heads)?;
        let v = split(self.v_proj.forward(x)?, self.n_kv_heads)?;
        // Qwen3 normalises each head before attention.
        if let Some(norm) = &self.q_norm {
            q = norm.forward(&q)?;
        }
        if let Some(norm) = &self.k_norm {
            k = norm.forward(&k)?;
        }
        let out = match caches {
            [cache] => self.attend(&q, &k, &v, cache)?,
            _ => {
                let mut rows = Vec::with_capacity(caches.len());
                for (i, cache) in caches.iter_mut().enumerate() {
                    let i = i as i32;
                    let row = |a: &Array| a.index((.., i..i + 1));
                    rows.push(self.attend(&row(&q), &row(&k), &row(&v), cache)?);
                }
                ops::concatenate(&rows, 1)?
            }
        };
        self.o_proj.forward(&out)
    }

    /// Attention of one sequence's new tokens (`q`, `k`, `v`: [1, l, heads, head_dim]) over
    /// its cached history; returns [1, l, heads * head_dim].
    fn attend(&self, q: &Array, k: &Array, v: &Array, cache: &mut KvCache) -> Result<Array> {
        let l = q.shape()[1];
        let heads = |a: &Array| a.transpose_axes(&[0, 2, 1, 3]);
        let offset = cache.offset();
        let mut q = self.rope.forward(&heads(q)?, offset)?;
        let k = self.rope.forward(&heads(k)?, offset)?;
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
        let (mut k, mut v, mut first) = cache.update_and_fetch(&k, &heads(v)?)?;
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
        let out = fast::scaled_dot_product_attention(&q, &k, &v, self.scale, mask, None)?;
        Ok(out.transpose_axes(&[0, 2, 1, 3])?.reshape(&[1, l, -1])?)
    }
}

pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    activation: Activation,
}

impl Mlp {
    fn forward(&self, x: &Array) -> Result<Array> {
        let gate = self.gate_proj.forward(x)?;
        let up = self.up_proj.forward(x)?;
        let act = match self.activation {
            // swiglu: silu(gate) * up, with silu(x) = x * sigmoid(x) as in MLX.
            Activation::Silu => gate.multiply(ops::sigmoid(&gate)?)?,
            Activation::GeluApprox => gelu_approx(&gate)?,
        };
        self.down_proj.forward(&act.multiply(&up)?)
    }
}

/// MLX's `nn.gelu_approx`, op for op: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))),
/// every constant in x's dtype.
fn gelu_approx(x: &Array) -> Result<Array> {
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
    Experts(MoeBlock),
}

impl FeedForward {
    fn forward(&self, x: &Array) -> Result<Array> {
        match self {
            FeedForward::Dense(mlp) => mlp.forward(x),
            FeedForward::Experts(moe) => moe.forward(x),
        }
    }
}

/// One projection of every expert, stacked: [experts, out, in], dense or affine-quantized.
pub enum ExpertLinear {
    Dense {
        weight: Array,
    },
    Quantized {
        weight: Array,
        scales: Array,
        biases: Array,
        group_size: i32,
        bits: i32,
    },
}

impl ExpertLinear {
    /// `x` through expert `experts[...]` of each row (mlx-lm's `SwitchLinear`).
    fn forward(&self, x: &Array, experts: &Array, sorted: bool) -> Result<Array> {
        Ok(match self {
            ExpertLinear::Dense { weight } => {
                ops::gather_mm(x, weight.swap_axes(-1, -2)?, None, experts, sorted)?
            }
            ExpertLinear::Quantized {
                weight,
                scales,
                biases,
                group_size,
                bits,
            } => ops::gather_qmm(
                x,
                weight,
                scales,
                biases,
                None,
                experts,
                true,
                *group_size,
                *bits,
                sorted,
            )?,
        })
    }

    fn arrays(&self) -> Vec<&Array> {
        match self {
            ExpertLinear::Dense { weight } => vec![weight],
            ExpertLinear::Quantized {
                weight,
                scales,
                biases,
                ..
            } => vec![weight, scales, biases],
        }
    }
}

/// Qwen3 MoE's sparse block: a softmax router picks `top_k` experts per token, whose SwiGLU
/// outputs are summed with the router's weights (optionally renormalised over the chosen).
pub struct MoeBlock {
    gate: Linear,
    router: Router,
    gate_proj: ExpertLinear,
    up_proj: ExpertLinear,
    down_proj: ExpertLinear,
    top_k: i32,
    norm_topk_prob: bool,
    /// Experts every token uses, added after the routed ones (GLM-4.5).
    shared: Option<Mlp>,
}

/// How a MoE block's router turns its logits into experts and weights.
pub enum Router {
    /// Qwen3 MoE: softmax over all experts, the top k (optionally renormalised).
    Softmax,
    /// GLM-4.5 (`noaux_tc`): sigmoid scores; the choice adds a per-expert correction bias and
    /// keeps only the `topk_group` best of `n_group` groups (each scored by its best two), the
    /// weights are the uncorrected scores of the chosen, renormalised, times `scale`.
    SigmoidGrouped {
        correction: Array,
        n_group: i32,
        topk_group: i32,
        scale: f32,
    },
}

impl MoeBlock {
    fn forward(&self, x: &Array) -> Result<Array> {
        let logits = self.gate.forward(x)?;
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
                Router::SigmoidGrouped {
                    correction,
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
                        weights = weights.divide(weights.sum_axis(-1, true)?)?;
                    }
                    (chosen, weights.multiply(Array::from_f32(*scale))?)
                }
            };
        let y = self.switch_glu(x, &chosen)?;
        let weighted = y.multiply(scores.expand_dims(-1)?)?;
        let routed = weighted.sum_axis(-2, None)?.as_dtype(y.dtype())?;
        match &self.shared {
            Some(mlp) => Ok(routed.add(mlp.forward(x)?)?),
            None => Ok(routed),
        }
    }

    /// Every token through its chosen experts: [1, n, k, hidden]. With many (token, expert)
    /// pairs they are sorted by expert first, so each expert's weights are read in one run.
    fn switch_glu(&self, x: &Array, chosen: &Array) -> Result<Array> {
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
        let gate = self.gate_proj.forward(&x, &idx, sort)?;
        let act = gate.multiply(ops::sigmoid(&gate)?)?.multiply(&up)?;
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

/// The two extra norms of a Gemma block: after attention (before the residual add) and
/// before the MLP; the block's `post_attn_norm` then follows the MLP.
pub struct SandwichNorms {
    post_attn: RmsNorm,
    pre_mlp: RmsNorm,
}

pub struct Block {
    attn: Attention,
    mlp: FeedForward,
    input_norm: RmsNorm,
    post_attn_norm: RmsNorm,
    sandwich: Option<SandwichNorms>,
    /// Granite scales each residual branch before adding it.
    residual_scale: Option<f32>,
}

impl Block {
    fn forward(&self, x: &Array, caches: &mut [&mut KvCache]) -> Result<Array> {
        let r = self.attn.forward(&self.input_norm.forward(x)?, caches)?;
        let scaled = |r: Array| -> Result<Array> {
            match self.residual_scale {
                Some(m) => Ok(r.multiply(Array::from_f32(m).as_dtype(r.dtype())?)?),
                None => Ok(r),
            }
        };
        match &self.sandwich {
            None => {
                let h = x.add(scaled(r)?)?;
                let r = self.mlp.forward(&self.post_attn_norm.forward(&h)?)?;
                Ok(h.add(scaled(r)?)?)
            }
            Some(n) => {
                let h = residual(x, &n.post_attn.forward(&r)?)?;
                let r = self.mlp.forward(&n.pre_mlp.forward(&h)?)?;
                residual(&h, &self.post_attn_norm.forward(&r)?)
            }
        }
    }
}

/// Gemma's residual add: in float16 it is done in float32 and clipped to float16's range
/// (mlx-lm's `clip_residual`), in any other dtype it is a plain add.
fn residual(x: &Array, y: &Array) -> Result<Array> {
    if x.dtype() != Dtype::Float16 {
        return Ok(x.add(y)?);
    }
    let sum = x
        .as_dtype(Dtype::Float32)?
        .add(y.as_dtype(Dtype::Float32)?)?;
    let bound = 65504.0; // float16's largest finite value
    Ok(ops::clip(&sum, (-bound, bound))?.as_dtype(Dtype::Float16)?)
}

/// A loaded model, ready to run forward passes.
pub struct Model {
    pub config: ModelConfig,
    embed: Embedding,
    /// Gemma's (and Granite's) embedding multiplier, in the embeddings' dtype.
    embed_scale: Option<f32>,
    /// Granite divides the logits by this.
    logits_scaling: Option<f32>,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
}

impl Model {
    /// Builds the model from a folder's config and tensors, checking every shape.
    pub fn from_weights(
        config: ModelConfig,
        tensors: HashMap<String, Array>,
        options: LoadOptions,
    ) -> Result<Self> {
        let spec = arch_spec(&config)?;
        let dequantize = options.dequantize_up_to_bytes > 0
            && dense_bytes_of_quantized(&config, &tensors) <= options.dequantize_up_to_bytes;
        let mut w = TensorSource {
            tensors,
            config: &config,
            options,
            norm_offset: spec.norm_offset,
            dequantize,
        };
        let hidden = config.hidden_size as i32;
        let inter = config.intermediate_size as i32;
        let n_heads = config.num_attention_heads as i32;
        let n_kv = config.num_kv_heads() as i32;
        let head_dim = config.head_dim() as i32;
        let vocab = config.vocab_size as i32;
        let eps = config.rms_norm_eps;

        let embed = Embedding {
            table: w.linear("model.embed_tokens", vocab, hidden, false)?,
        };
        let scale = match (config.query_pre_attn_scalar, config.attention_multiplier) {
            (Some(s), _) if spec.local_layers => s.powf(-0.5),
            (_, Some(m)) if spec.multipliers => m,
            _ => (head_dim as f32).powf(-0.5),
        };
        let residual_scale = config.residual_multiplier.filter(|_| spec.multipliers);
        let query_scale = if spec.ministral {
            let params = config.rope_scaling.as_ref();
            let get = |k: &str| params.and_then(|p| p.get(k)).and_then(|v| v.as_f64());
            match (
                get("llama_4_scaling_beta"),
                get("original_max_position_embeddings"),
            ) {
                (Some(beta), Some(original)) => Some((beta as f32, original as f32)),
                _ => None,
            }
        } else {
            None
        };
        let pattern = config.sliding_window_pattern.unwrap_or(6).max(1);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let norm = |w: &mut TensorSource, name: &str, dim: i32| {
                w.norm(&format!("{p}.{name}"), dim, eps)
            };
            let qk_norm = |w: &mut TensorSource, name: &str| -> Result<Option<RmsNorm>> {
                if spec.qk_norm {
                    Ok(Some(norm(w, &format!("self_attn.{name}"), head_dim)?))
                } else {
                    Ok(None)
                }
            };
            // Gemma 3: every `pattern`-th layer is global; the others attend through a window
            // with their own RoPE base.
            let local = spec.local_layers && i % pattern != pattern - 1;
            // Phi-3.5/4 rotate only a leading part of each head.
            let rope_dims = (head_dim as f32 * config.partial_rotary_factor.unwrap_or(1.0)) as i32;
            let (rope, mut window) = if local {
                let base = config.rope_local_base_freq.unwrap_or(10_000.0);
                let window = config.sliding_window.unwrap_or(512) as i32;
                (Rope::plain(head_dim, base), Some(window))
            } else if spec.plain_rope {
                (Rope::plain(rope_dims, config.rope_theta), None)
            } else {
                (Rope::new(&config, rope_dims)?, None)
            };
            if spec.ministral {
                let kind = config.layer_types.as_ref().and_then(|t| t.get(i));
                if kind.is_some_and(|k| k == "sliding_attention") {
                    window = config.sliding_window.map(|w| w as i32);
                }
            }
            // Phi-3 stores q/k/v and gate/up fused: split them into the separate projections.
            let (q_rows, kv_rows) = (n_heads * head_dim, n_kv * head_dim);
            w.split_rows(
                &format!("{p}.self_attn.qkv_proj"),
                &[("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)],
            )?;
            w.split_rows(
                &format!("{p}.mlp.gate_up_proj"),
                &[("gate_proj", inter), ("up_proj", inter)],
            )?;
            let attn = Attention {
                q_proj: w.linear(
                    &format!("{p}.self_attn.q_proj"),
                    n_heads * head_dim,
                    hidden,
                    spec.qkv_bias,
                )?,
                k_proj: w.linear(
                    &format!("{p}.self_attn.k_proj"),
                    n_kv * head_dim,
                    hidden,
                    spec.qkv_bias,
                )?,
                v_proj: w.linear(
                    &format!("{p}.self_attn.v_proj"),
                    n_kv * head_dim,
                    hidden,
                    spec.qkv_bias,
                )?,
                o_proj: w.linear(
                    &format!("{p}.self_attn.o_proj"),
                    hidden,
                    n_heads * head_dim,
                    spec.o_bias,
                )?,
                q_norm: qk_norm(&mut w, "q_norm")?,
                k_norm: qk_norm(&mut w, "k_norm")?,
                n_heads,
                n_kv_heads: n_kv,
                scale,
                rope,
                window,
                causal: true,
                query_scale,
            };
            let mlp = if spec.moe && moe_layer(&config, i) {
                FeedForward::Experts(w.moe(&format!("{p}.mlp"), &config)?)
            } else {
                let b = spec.mlp_bias;
                FeedForward::Dense(Mlp {
                    gate_proj: w.linear(&format!("{p}.mlp.gate_proj"), inter, hidden, b)?,
                    up_proj: w.linear(&format!("{p}.mlp.up_proj"), inter, hidden, b)?,
                    down_proj: w.linear(&format!("{p}.mlp.down_proj"), hidden, inter, b)?,
                    activation: spec.activation,
                })
            };
            let input_norm = norm(&mut w, "input_layernorm", hidden)?;
            // Gemma's post_attention_layernorm is inside the attention residual; its last norm
            // (post_feedforward_layernorm) takes the Llama post-attention norm's place.
            let (post_attn_norm, sandwich) = if spec.sandwich_norms {
                let sandwich = SandwichNorms {
                    post_attn: norm(&mut w, "post_attention_layernorm", hidden)?,
                    pre_mlp: norm(&mut w, "pre_feedforward_layernorm", hidden)?,
                };
                (
                    norm(&mut w, "post_feedforward_layernorm", hidden)?,
                    Some(sandwich),
                )
            } else {
                (norm(&mut w, "post_attention_layernorm", hidden)?, None)
            };
            layers.push(Block {
                attn,
                mlp,
                input_norm,
                post_attn_norm,
                sandwich,
                residual_scale,
            });
        }
        let norm = w.norm("model.norm", hidden, eps)?;
        // Tied embeddings unless the config says otherwise and an lm_head is present.
        let has_head = w.tensors.contains_key("lm_head.weight");
        let tied = if spec.tie_by_presence {
            !has_head
        } else {
            config.tie_word_embeddings.unwrap_or(!has_head)
        };
        let lm_head = if tied {
            None
        } else {
            Some(w.linear("lm_head", vocab, hidden, false)?)
        };
        // sqrt(hidden) rounded to bfloat16, then used in the embeddings' dtype (as mlx-lm).
        let embed_scale = if spec.scale_embeddings {
            Some(round_to_bf16((hidden as f32).sqrt()))
        } else {
            config.embedding_multiplier.filter(|_| spec.multipliers)
        };
        let logits_scaling = config.logits_scaling.filter(|_| spec.multipliers);
        Ok(Model {
            config,
            embed,
            embed_scale,
            logits_scaling,
            layers,
            norm,
            lm_head,
        })
    }

    /// Every token attends to every other in all layers, windows included (EmbeddingGemma as
    /// mlx-embeddings runs it); the embedding scale is sqrt(hidden) in the weights' dtype,
    /// unrounded to bfloat16 as mlx-embeddings computes it. For embedders only: generation
    /// stays causal.
    pub fn make_bidirectional(&mut self) {
        for layer in &mut self.layers {
            layer.attn.causal = false;
            layer.attn.window = None;
        }
        if self.embed_scale.is_some() {
            self.embed_scale = Some((self.config.hidden_size as f32).sqrt());
        }
    }

    /// Fresh per-layer caches for one sequence.
    pub fn new_cache(&self) -> Vec<KvCache> {
        self.layers
            .iter()
            .map(|l| KvCache::new(l.attn.window))
            .collect()
    }

    /// Runs `ids` ([1, tokens], int32) of one sequence through the transformer, appending
    /// to `cache`. Returns the final hidden states; call `logits` on the positions that need
    /// them.
    pub fn forward_hidden(&self, ids: &Array, cache: &mut [KvCache]) -> Result<Array> {
        self.forward_rows(ids, &mut [cache])
    }

    /// One decode step for several sequences: `ids` is [1, n] with one token per sequence,
    /// `caches[i]` the caches of sequence i. Returns [n, vocab] logits.
    pub fn forward_batch(&self, ids: &Array, caches: &mut [&mut [KvCache]]) -> Result<Array> {
        let h = self.forward_rows(ids, caches)?;
        let logits = self.logits(&h)?;
        let n = logits.shape()[1];
        Ok(logits.reshape(&[n, -1])?)
    }

    /// The transformer over `ids` ([1, n]) with one cache per sequence in `seqs` (see
    /// `Attention::forward` for the two shapes).
    fn forward_rows(&self, ids: &Array, seqs: &mut [&mut [KvCache]]) -> Result<Array> {
        let mut h = self.embed.lookup(ids)?;
        if let Some(scale) = self.embed_scale {
            h = h.multiply(Array::from_f32(scale).as_dtype(h.dtype())?)?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let mut caches: Vec<&mut KvCache> = seqs
                .iter_mut()
                .map(|seq| seq.get_mut(i).ok_or(ModelError::CacheLayers))
                .collect::<Result<_>>()?;
            h = layer.forward(&h, &mut caches)?;
        }
        self.norm.forward(&h)
    }

    /// Vocabulary logits for hidden states.
    pub fn logits(&self, hidden: &Array) -> Result<Array> {
        let logits = match &self.lm_head {
            Some(head) => head.forward(hidden)?,
            None => self.embed.as_linear(hidden)?,
        };
        match self.logits_scaling {
            Some(s) => Ok(logits.divide(Array::from_f32(s).as_dtype(logits.dtype())?)?),
            None => Ok(logits),
        }
    }

    /// Logits of the last position of `ids` ([1, n]): the next-token distribution.
    pub fn forward_last(&self, ids: &Array, cache: &mut [KvCache]) -> Result<Array> {
        let h = self.forward_hidden(ids, cache)?;
        let n = h.shape()[1];
        let last = h.index((.., (n - 1)..n, ..));
        self.logits(&last)
    }

    /// Bytes of weight storage, the figure reported on load.
    pub fn weights_bytes(&self) -> usize {
        self.arrays().iter().map(|a| a.nbytes()).sum()
    }

    /// All weight arrays, to evaluate them once at load time.
    pub fn arrays(&self) -> Vec<&Array> {
        fn lin<'a>(l: &'a Linear, out: &mut Vec<&'a Array>) {
            match l {
                Linear::Dense { weight, bias } => {
                    out.push(weight);
                    out.extend(bias);
                }
                Linear::Quantized {
                    weight,
                    scales,
                    biases,
                    bias,
                    ..
                } => {
                    out.extend([weight, scales, biases]);
                    out.extend(bias);
                }
            }
        }
        let mut out = Vec::new();
        lin(&self.embed.table, &mut out);
        if let Some(h) = &self.lm_head {
            lin(h, &mut out);
        }
        out.push(&self.norm.weight);
        for l in &self.layers {
            let a = &l.attn;
            for x in [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj] {
                lin(x, &mut out);
            }
            match &l.mlp {
                FeedForward::Dense(m) => {
                    for x in [&m.gate_proj, &m.up_proj, &m.down_proj] {
                        lin(x, &mut out);
                    }
                }
                FeedForward::Experts(m) => {
                    lin(&m.gate, &mut out);
                    for x in [&m.gate_proj, &m.up_proj, &m.down_proj] {
                        out.extend(x.arrays());
                    }
                }
            }
            out.push(&l.input_norm.weight);
            out.push(&l.post_attn_norm.weight);
            if let Some(n) = &l.sandwich {
                out.extend([&n.post_attn.weight, &n.pre_mlp.weight]);
            }
            for n in [&a.q_norm, &a.k_norm].into_iter().flatten() {
                out.push(&n.weight);
            }
        }
        out
    }
}

/// Hands out named tensors with shape checks, so a bad folder fails naming the tensor.
struct TensorSource<'a> {
    tensors: HashMap<String, Array>,
    config: &'a ModelConfig,
    options: LoadOptions,
    /// Norm weights are stored as offsets from 1 (Gemma).
    norm_offset: bool,
    /// Expand quantized weights to float32 (see `LoadOptions::dequantize_up_to_bytes`).
    dequantize: bool,
}

impl TensorSource<'_> {
    fn take(&mut self, name: &str) -> Result<Array> {
        self.tensors
            .remove(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
    }

    fn take_shaped(&mut self, name: &str, expected: &[i32]) -> Result<Array> {
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

    fn norm(&mut self, module: &str, dim: i32, eps: f32) -> Result<RmsNorm> {
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
    fn split_rows(&mut self, module: &str, parts: &[(&str, i32)]) -> Result<()> {
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
    fn moe(&mut self, module: &str, config: &ModelConfig) -> Result<MoeBlock> {
        let hidden = config.hidden_size as i32;
        let experts = config.experts() as i32;
        let inter = config
            .moe_intermediate_size
            .unwrap_or(config.intermediate_size) as i32;
        let router = if config.n_group.is_some() || config.routed_scaling_factor.is_some() {
            Router::SigmoidGrouped {
                correction: self.take_shaped(
                    &format!("{module}.gate.e_score_correction_bias"),
                    &[experts],
                )?,
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
                    gate_proj: self.linear(
                        &format!("{p}.gate_proj"),
                        shared_inter,
                        hidden,
                        false,
                    )?,
                    up_proj: self.linear(&format!("{p}.up_proj"), shared_inter, hidden, false)?,
                    down_proj: self.linear(
                        &format!("{p}.down_proj"),
                        hidden,
                        shared_inter,
                        false,
                    )?,
                    activation: Activation::Silu,
                })
            }
            None => None,
        };
        let mut stacked = |name: &str, out: i32, inp: i32| -> Result<ExpertLinear> {
            let base = format!("{module}.switch_mlp.{name}");
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
            match self.linear_stacked(&base, &[experts], out, inp, false)? {
                Linear::Dense { weight, .. } => Ok(ExpertLinear::Dense { weight }),
                Linear::Quantized {
                    weight,
                    scales,
                    biases,
                    group_size,
                    bits,
                    ..
                } => Ok(ExpertLinear::Quantized {
                    weight,
                    scales,
                    biases,
                    group_size,
                    bits,
                }),
            }
        };
        Ok(MoeBlock {
            gate_proj: stacked("gate_proj", inter, hidden)?,
            up_proj: stacked("up_proj", inter, hidden)?,
            down_proj: stacked("down_proj", hidden, inter)?,
            gate: self.linear(&format!("{module}.gate"), experts, hidden, false)?,
            router,
            shared,
            top_k: config
                .num_experts_per_tok
                .unwrap_or(1)
                .clamp(1, experts.max(1) as usize) as i32,
            norm_topk_prob: config.norm_topk_prob.unwrap_or(false),
        })
    }

    fn linear(&mut self, module: &str, out: i32, inp: i32, bias: bool) -> Result<Linear> {
        self.linear_stacked(module, &[], out, inp, bias)
    }

    /// A linear layer whose weights carry leading dimensions `lead` (stacked experts).
    fn linear_stacked(
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
            Some(Quantization { group_size, bits }) if self.tensors.contains_key(&scales_name) => {
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
                let mut biases = self.take_shaped(&format!("{module}.biases"), &groups)?;
                if self.options.float32_quant_params || self.dequantize {
                    scales = scales.as_dtype(Dtype::Float32)?;
                    biases = biases.as_dtype(Dtype::Float32)?;
                }
                if self.dequantize {
                    // float32 scales make the expanded weights float32 too.
                    let weight = ops::dequantize(&weight, &scales, &biases, g, b)?;
                    return Ok(Linear::Dense { weight, bias });
                }
                Ok(Linear::Quantized {
                    weight,
                    scales,
                    biases,
                    bias,
                    group_size: g,
                    bits: b,
                })
            }
            _ => Ok(Linear::Dense {
                weight: self.take_shaped(&format!("{module}.weight"), &shape(&[out, inp]))?,
                bias,
            }),
        }
    }
}

/// Whether layer `i` of a MoE model has experts (mlx-lm's rules for Qwen3 MoE and GLM-4.5).
fn moe_layer(config: &ModelConfig, i: usize) -> bool {
    let step = config.decoder_sparse_step.unwrap_or(1).max(1);
    let dense = config.mlp_only_layers.as_deref().unwrap_or(&[]);
    // GLM-4.5: the first `first_k_dense_replace` layers are dense.
    let first_sparse = config.first_k_dense_replace.unwrap_or(0);
    config.experts() > 0 && i >= first_sparse && !dense.contains(&i) && (i + 1).is_multiple_of(step)
}

/// `x` rounded to the nearest bfloat16 (ties to even), as a cast to bfloat16 rounds.
fn round_to_bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000;
    f32::from_bits(rounded)
}

/// Bytes the quantized weights would take expanded to float32.
fn dense_bytes_of_quantized(config: &ModelConfig, tensors: &HashMap<String, Array>) -> usize {
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

/// Loads and checks a model folder: config, weights, shapes. Weights are read lazily by MLX;
/// `Model::arrays` lets the caller evaluate them up front.
pub fn load(dir: &Path, options: LoadOptions) -> anyhow::Result<Model> {
    let config = opta_lmx_shared::model_dir::read_config(dir)?;
    arch_spec(&config)?;
    let weights = crate::weights::load(dir)?;
    Ok(Model::from_weights(config, weights.tensors, options)?)
}

/// Loads a decoder that serves embeddings (Qwen3-Embedding, EmbeddingGemma): its hidden states are what is
/// used, so it needs no output projection, and its tensors may be saved as the bare
/// transformer (`layers.0…` rather than `model.layers.0…`, as `Qwen3Model` saves them).
pub fn load_embedder(dir: &Path, options: LoadOptions) -> anyhow::Result<Model> {
    let mut config = opta_lmx_shared::model_dir::read_config(dir)?;
    arch_spec(&config)?;
    let mut tensors = crate::weights::load(dir)?.tensors;
    if !tensors.keys().any(|k| k.starts_with("model.")) {
        tensors = tensors
            .into_iter()
            .map(|(k, v)| (format!("model.{k}"), v))
            .collect();
    }
    if !tensors.contains_key("lm_head.weight") {
        config.tie_word_embeddings = Some(true);
    }
    let bidirectional = arch_spec(&config)?.local_layers;
    let mut model = Model::from_weights(config, tensors, options)?;
    // EmbeddingGemma attends both ways; Qwen3-Embedding reads causally.
    if bidirectional {
        model.make_bidirectional();
    }
    Ok(model)
}
