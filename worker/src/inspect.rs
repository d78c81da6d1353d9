//! A summary of a model folder's weights: parameter counts and storage per tensor group.
//! It is the worker's first proof that MLX reads the files, and a handy diagnostic.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use mlx_rs::{Array, Dtype};
use opta_lmx_shared::model_dir::{self, ModelConfig};
use serde::Serialize;

use crate::weights;

#[derive(Debug, Default, Serialize)]
pub struct GroupSummary {
    pub tensors: usize,
    /// Logical parameters: a quantized matrix counts its unpacked elements.
    pub params: u64,
    /// Bytes held per storage dtype (`uint32` for packed quantized weights).
    pub bytes_by_dtype: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub model_type: String,
    pub layers: usize,
    pub quantization: String,
    pub files: usize,
    pub groups: BTreeMap<String, GroupSummary>,
    pub total_params: u64,
    pub total_bytes: u64,
}

/// Loads the weights of `dir` with MLX and summarises them.
pub fn summarise(dir: &Path) -> anyhow::Result<Summary> {
    let config = model_dir::read_config(dir)?;
    let weights = weights::load(dir)?;
    // Read every tensor for real, so a truncated or corrupt data section shows up here.
    mlx_rs::transforms::eval(weights.tensors.values())
        .with_context(|| format!("reading the tensors of {}", dir.display()))?;
    let mut groups: BTreeMap<String, GroupSummary> = BTreeMap::new();
    for (name, array) in &weights.tensors {
        let group = groups.entry(group_of(name).to_string()).or_default();
        group.tensors += 1;
        // Scales and biases of quantized layers are storage, not parameters.
        let quant_aux = name.ends_with(".scales")
            || (name.ends_with(".biases") && !is_layer_bias(name, &weights.tensors));
        if !quant_aux {
            group.params +=
                logical_params(name, array, &config).with_context(|| format!("tensor {name}"))?;
        }
        *group
            .bytes_by_dtype
            .entry(dtype_name(array.dtype()).to_string())
            .or_default() += array.nbytes() as u64;
    }
    let total_params = groups.values().map(|g| g.params).sum();
    let total_bytes = groups
        .values()
        .flat_map(|g| g.bytes_by_dtype.values())
        .sum();
    Ok(Summary {
        model_type: config.model_type.clone(),
        layers: config.num_hidden_layers,
        quantization: config.quantization_label(),
        files: weights.files.len(),
        groups,
        total_params,
        total_bytes,
    })
}

/// `x.biases` is quantization data when `x.scales` exists; otherwise (`self_attn.q_proj.bias`
/// style names never end in `biases`) it would be a real parameter.
fn is_layer_bias(name: &str, tensors: &std::collections::HashMap<String, Array>) -> bool {
    name.strip_suffix(".biases")
        .is_some_and(|base| !tensors.contains_key(&format!("{base}.scales")))
}

fn logical_params(name: &str, array: &Array, config: &ModelConfig) -> anyhow::Result<u64> {
    let elements = array.size() as u64;
    if array.dtype() != Dtype::Uint32 {
        return Ok(elements);
    }
    let module = name.strip_suffix(".weight").unwrap_or(name);
    let q = config
        .quantization
        .for_module(module)
        .context("packed uint32 weight but config.json has no quantization for it")?;
    Ok(elements * 32 / u64::from(q.bits))
}

fn group_of(name: &str) -> &'static str {
    if name.contains("embed_tokens") || name.starts_with("lm_head") {
        "embedding"
    } else if name.contains("norm") {
        "norm"
    } else if name.contains("self_attn") {
        "attention"
    } else if name.contains("mlp") {
        "mlp"
    } else {
        "other"
    }
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::Bool => "bool",
        Dtype::Uint8 => "uint8",
        Dtype::Uint16 => "uint16",
        Dtype::Uint32 => "uint32",
        Dtype::Uint64 => "uint64",
        Dtype::Int8 => "int8",
        Dtype::Int16 => "int16",
        Dtype::Int32 => "int32",
        Dtype::Int64 => "int64",
        Dtype::Float16 => "float16",
        Dtype::Bfloat16 => "bfloat16",
        Dtype::Float32 => "float32",
        Dtype::Float64 => "float64",
        Dtype::Complex64 => "complex64",
    }
}

/// The human-readable table `opta-lmx-worker inspect` prints.
pub fn render(summary: &Summary) -> String {
    let mut out = format!(
        "{} · {} layers · {} · {} weight file(s)\n{:<10} {:>8} {:>14}  storage\n",
        summary.model_type,
        summary.layers,
        summary.quantization,
        summary.files,
        "group",
        "tensors",
        "params"
    );
    for (name, g) in &summary.groups {
        let storage: Vec<String> = g
            .bytes_by_dtype
            .iter()
            .map(|(dt, b)| format!("{dt} {:.1} MB", *b as f64 / 1e6))
            .collect();
        out += &format!(
            "{name:<10} {:>8} {:>14}  {}\n",
            g.tensors,
            g.params,
            storage.join(", ")
        );
    }
    out += &format!(
        "{:<10} {:>8} {:>14}  {:.1} MB\n",
        "total",
        summary.groups.values().map(|g| g.tensors).sum::<usize>(),
        summary.total_params,
        summary.total_bytes as f64 / 1e6
    );
    out
}
