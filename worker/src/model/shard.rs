//! Tensor parallelism as mlx-lm's `shard()` does it: each rank keeps 1/N of every attention
//! and MLP. Query, key, value, gate and up projections are split by output rows (whole heads,
//! whole hidden units); the output and down projections by input columns, their partial
//! results summed over the ranks (`all_sum`, two per layer). Experts split the same way with
//! the router replicated; embeddings, norms and the output head are replicated.

use std::sync::Arc;

use mlx_rs::ops;
use mlx_rs::Array;

use crate::distributed::Group;

use super::*;

/// Rows `rank`'s share of `x` along `axis` (negative counts from the end).
fn part(x: &Array, axis: i32, rank: i32, n: i32, what: &str) -> Result<Array> {
    let ndim = x.ndim() as i32;
    let ax = if axis < 0 { ndim + axis } else { axis };
    let len = x.shape().get(ax as usize).copied().unwrap_or(0);
    if len % n != 0 {
        return Err(ModelError::Shard(format!(
            "{what} has {len} along axis {ax}, which does not split over {n} ranks"
        )));
    }
    let k = len / n;
    let idx = ops::arange::<_, i32>(rank * k, (rank + 1) * k, None)?;
    Ok(x.take_axis(&idx, ax)?)
}

/// A bias added once after the sum over ranks: each rank adds its 1/N share. Exact for the
/// power-of-two rank counts the split is meant for.
fn share(bias: &Array, n: i32) -> Result<Array> {
    Ok(bias.divide(Array::from_int(n).as_dtype(bias.dtype())?)?)
}

/// How one projection is split.
#[derive(Clone, Copy)]
enum Split {
    /// By output rows: each rank computes its part of the outputs.
    Rows,
    /// By input columns: each rank a partial sum of every output.
    Columns,
}

impl Linear {
    fn shard(&self, split: Split, rank: i32, n: i32, what: &str) -> Result<Linear> {
        let p = |x: &Array, axis: i32| part(x, axis, rank, n, what);
        let bias = |b: &Option<Array>| -> Result<Option<Array>> {
            b.as_ref()
                .map(|b| match split {
                    Split::Rows => p(b, -1),
                    Split::Columns => share(b, n),
                })
                .transpose()
        };
        let axis = match split {
            Split::Rows => -2,
            Split::Columns => -1,
        };
        Ok(match self {
            Linear::Dense { weight, bias: b } => Linear::Dense {
                weight: p(weight, axis)?,
                bias: bias(b)?,
            },
            Linear::Quantized {
                weight,
                scales,
                biases,
                bias: b,
                group_size,
                bits,
                mode,
            } => Linear::Quantized {
                // Packed words and groups split alike: a rank's columns are whole groups.
                weight: p(weight, axis)?,
                scales: p(scales, axis)?,
                biases: biases.as_ref().map(|x| p(x, axis)).transpose()?,
                bias: bias(b)?,
                group_size: *group_size,
                bits: *bits,
                mode: *mode,
            },
        })
    }
}

impl ExpertLinear {
    fn shard(&self, split: Split, rank: i32, n: i32, what: &str) -> Result<ExpertLinear> {
        Ok(self.to_linear().shard(split, rank, n, what)?.into())
    }
}

impl Mlp {
    fn shard(&mut self, rank: i32, n: i32, what: &str) -> Result<()> {
        self.gate_proj = match &self.gate_proj {
            Some(g) => Some(g.shard(Split::Rows, rank, n, what)?),
            None => None,
        };
        self.up_proj = self.up_proj.shard(Split::Rows, rank, n, what)?;
        self.down_proj = self.down_proj.shard(Split::Columns, rank, n, what)?;
        Ok(())
    }
}

impl Model {
    /// Keeps this rank's share of every layer; each forward pass then sums partial results
    /// over `group`. Refuses, saying why, when heads or hidden sizes do not divide.
    pub fn shard(&mut self, group: Arc<Group>) -> Result<()> {
        let (rank, n) = (group.rank(), group.size());
        if n <= 1 {
            return Ok(());
        }
        if self.per_layer_inputs.is_some() || self.layers.iter().any(|l| l.kv_source.is_some()) {
            return Err(ModelError::Shard(
                "Gemma 4's per-layer inputs and shared key-value layers are not split yet".into(),
            ));
        }
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let what = format!("layer {i}");
            let Some(a) = layer.mixer.attention_mut() else {
                return Err(ModelError::Shard(format!(
                    "{what} is a Gated DeltaNet, Mamba-2, short-convolution, latent-attention or \
                     single-part layer, which tensor parallelism does not split yet"
                )));
            };
            if a.n_heads % n != 0 || a.n_kv_heads % n != 0 {
                return Err(ModelError::Shard(format!(
                    "{what} has {} attention heads and {} key-value heads, which do not split \
                     over {n} ranks",
                    a.n_heads, a.n_kv_heads
                )));
            }
            a.q_proj = a.q_proj.shard(Split::Rows, rank, n, &what)?;
            let (Some(k_proj), Some(v_proj)) = (&a.k_proj, &a.v_proj) else {
                return Err(ModelError::Shard(format!(
                    "{what} takes its values from its keys' projection, which tensor \
                     parallelism does not split yet"
                )));
            };
            a.k_proj = Some(k_proj.shard(Split::Rows, rank, n, &what)?);
            a.v_proj = Some(v_proj.shard(Split::Rows, rank, n, &what)?);
            a.o_proj = a.o_proj.shard(Split::Columns, rank, n, &what)?;
            a.sinks = a
                .sinks
                .as_ref()
                .map(|s| part(s, 0, rank, n, &what))
                .transpose()?;
            a.n_heads /= n;
            a.n_kv_heads /= n;
            a.group = Some(group.clone());
            match &mut layer.mlp {
                None => {}
                Some(FeedForward::Dense(mlp)) => {
                    mlp.shard(rank, n, &what)?;
                    mlp.group = Some(group.clone());
                }
                Some(FeedForward::Experts(moe)) => {
                    moe.gate_proj = match &moe.gate_proj {
                        Some(g) => Some(g.shard(Split::Rows, rank, n, &what)?),
                        None => None,
                    };
                    moe.up_proj = moe.up_proj.shard(Split::Rows, rank, n, &what)?;
                    moe.down_proj = moe.down_proj.shard(Split::Columns, rank, n, &what)?;
                    // The shared experts' partial sums join the routed ones' in one all_sum.
                    if let Some(shared) = &mut moe.shared {
                        shared.shard(rank, n, &what)?;
                    }
                    moe.group = Some(group.clone());
                }
                Some(FeedForward::DenseAndExperts(_)) => {
                    return Err(ModelError::Shard(format!(
                        "{what} has Gemma 4's dense-and-experts block, which tensor \
                         parallelism does not split yet"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// `x` summed over the ranks of `group`, or `x` itself without one.
pub(crate) fn reduce(group: &Option<Arc<Group>>, x: Array) -> Result<Array> {
    match group {
        Some(g) => Ok(g.all_sum(&x)?),
        None => Ok(x),
    }
}
