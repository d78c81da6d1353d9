//! Rotary position embeddings as data: plain, linear, Llama 3, YaRN and Phi-3's LongRoPE, each
//! a frequency table (and input scale) computed as mlx-lm computes it.

use mlx_rs::fast;
use mlx_rs::ops::{self, indexing::IndexOp};
use mlx_rs::Array;
use opta_lmx_shared::model_dir::ModelConfig;

use super::*;

/// Rotary position embedding, with precomputed frequencies for scaled variants.
pub struct Rope {
    pub(crate) dims: i32,
    pub(crate) base: f32,
    pub(crate) scale: f32,
    pub(crate) freqs: Option<Array>,
    /// Phi-3's long-context RoPE also scales the rotated part of its input.
    pub(crate) input_scale: Option<f32>,
    /// Rotates adjacent pairs rather than the two halves (DeepSeek's MLA).
    pub(crate) traditional: bool,
}

impl Rope {
    pub(crate) fn new(config: &ModelConfig, dims: i32) -> Result<Self> {
        let plain = Rope {
            dims,
            base: config.rope_theta,
            scale: 1.0,
            freqs: None,
            input_scale: None,
            traditional: false,
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
    pub(crate) fn plain(dims: i32, base: f32) -> Self {
        Rope {
            dims,
            base,
            scale: 1.0,
            freqs: None,
            input_scale: None,
            traditional: false,
        }
    }

    /// No rotation at all: SmolLM3's NoPE layers.
    pub(crate) fn none() -> Self {
        Rope {
            dims: 0,
            ..Rope::plain(0, 10_000.0)
        }
    }

    pub(crate) fn forward(&self, x: &Array, offset: i32) -> Result<Array> {
        if self.dims == 0 {
            return Ok(x.clone());
        }
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
            Some(freqs) => fast::rope(x, self.dims, self.traditional, None, 1.0, offset, freqs)?,
            None => fast::rope(
                x,
                self.dims,
                self.traditional,
                self.base,
                self.scale,
                offset,
                None,
            )?,
        })
    }
}

/// YaRN's frequencies and input scale, as mlx-lm's `YarnRoPE` computes them (float32 MLX ops
/// for the table, f64 for the correction range and the scale).
#[allow(clippy::too_many_arguments)]
pub(crate) fn yarn_freqs(
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
pub(crate) fn llama3_freqs(
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
