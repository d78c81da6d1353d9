//! The MLX model folder as Mac users download it from Hugging Face (`mlx-community/*`):
//! `config.json`, one or more `*.safetensors` files, tokenizer files. The controller reads it
//! to describe models (architecture, quantization, context length) without loading them; the
//! worker reads it to load them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// What can go wrong reading a model folder, always naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelDirError {
    #[error("{path}: not found")]
    Missing { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Affine quantization settings, as mlx-lm writes them under `"quantization"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantization {
    pub group_size: u32,
    pub bits: u32,
    pub mode: QuantMode,
}

/// MLX's quantization modes: affine (scales and biases per group), and the floating-point
/// microscaling formats mlx-lm also writes (one byte-sized scale per group, no biases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuantMode {
    #[default]
    Affine,
    /// FP4 (e2m1) values, e8m0 scales per 32.
    Mxfp4,
    /// FP8 (e4m3) values, e8m0 scales per 32.
    Mxfp8,
    /// FP4 values, e4m3 scales per 16.
    Nvfp4,
}

impl QuantMode {
    fn parse(name: &str) -> Result<Self, String> {
        match name {
            "affine" => Ok(QuantMode::Affine),
            "mxfp4" => Ok(QuantMode::Mxfp4),
            "mxfp8" => Ok(QuantMode::Mxfp8),
            "nvfp4" => Ok(QuantMode::Nvfp4),
            other => Err(format!(
                "quantization mode {other:?} is not supported (affine, mxfp4, mxfp8 or nvfp4)"
            )),
        }
    }

    /// The (bits, group size) pairs the mode allows.
    fn allows(self, bits: u64, group_size: u64) -> bool {
        match self {
            QuantMode::Affine => {
                [2, 3, 4, 5, 6, 8].contains(&bits) && [32, 64, 128].contains(&group_size)
            }
            QuantMode::Mxfp4 => (bits, group_size) == (4, 32),
            QuantMode::Mxfp8 => (bits, group_size) == (8, 32),
            QuantMode::Nvfp4 => (bits, group_size) == (4, 16),
        }
    }
}

/// The `quantization` block of `config.json`: a default plus per-module overrides
/// (`"model.embed_tokens": {"group_size": 32, "bits": 8}`, or `false` for a module left dense).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QuantizationConfig {
    pub default: Option<Quantization>,
    pub overrides: BTreeMap<String, Option<Quantization>>,
}

impl QuantizationConfig {
    /// The settings for one module path such as `model.layers.3.mlp.down_proj`
    /// (`None`: dense).
    pub fn for_module(&self, module: &str) -> Option<Quantization> {
        // A vision-language wrapper's config names its text modules `language_model.*`.
        let wrapped = || self.overrides.get(&format!("language_model.{module}"));
        match self.overrides.get(module).or_else(wrapped) {
            Some(over) => *over,
            None => self.default,
        }
    }
}

/// The parts of `config.json` that Opta-LMX uses. Unknown keys are ignored, as in mlx-lm.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelConfig {
    pub model_type: String,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f32,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub eos_token_id: Option<Value>,
    #[serde(default)]
    pub bos_token_id: Option<Value>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
    /// Gemma 3: queries are scaled by `query_pre_attn_scalar^-0.5` instead of `head_dim^-0.5`.
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f32>,
    /// Gemma 3: the RoPE base of the sliding-window (local) layers.
    #[serde(default)]
    pub rope_local_base_freq: Option<f32>,
    /// Gemma 3: the local layers' attention window. (Mistral and Qwen2 configs carry one too,
    /// which mlx-lm ignores, and so does the worker.)
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Gemma 3: every `sliding_window_pattern`-th layer is global, the others local.
    #[serde(default)]
    pub sliding_window_pattern: Option<usize>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    /// Transformers 5's home for RoPE settings (`rope_theta`, `rope_type`, YaRN's factors,
    /// Ministral 3's `llama_4_scaling_beta`); read into `rope_theta` and `rope_scaling` when
    /// those are absent.
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    /// Per-layer attention kind (`full_attention`, `sliding_attention`), Ministral 3's way
    /// of placing sliding-window layers.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Phi-3.5/4: the share of each head that RoPE rotates.
    #[serde(default)]
    pub partial_rotary_factor: Option<f32>,
    /// Phi-3's LongRoPE: the context it was trained with before the extension.
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
    /// Granite's scalars: embeddings times `embedding_multiplier`, attention scores scaled by
    /// `attention_multiplier`, residual branches times `residual_multiplier`, logits divided
    /// by `logits_scaling`.
    #[serde(default)]
    pub embedding_multiplier: Option<f32>,
    #[serde(default)]
    pub attention_multiplier: Option<f32>,
    #[serde(default)]
    pub residual_multiplier: Option<f32>,
    #[serde(default)]
    pub logits_scaling: Option<f32>,
    /// Mixture of experts (Qwen3 MoE): experts per MoE layer, experts each token uses, and
    /// their hidden size.
    #[serde(default)]
    pub num_experts: Option<usize>,
    #[serde(default)]
    pub num_experts_per_tok: Option<usize>,
    #[serde(default)]
    pub moe_intermediate_size: Option<usize>,
    /// Renormalise the chosen experts' router weights to sum to one.
    #[serde(default)]
    pub norm_topk_prob: Option<bool>,
    /// GLM-4.5's MoE: routed experts (its name for `num_experts`), shared experts, the
    /// grouped sigmoid router's groups, and the number of dense layers first.
    #[serde(default)]
    pub n_routed_experts: Option<usize>,
    #[serde(default)]
    pub n_shared_experts: Option<usize>,
    #[serde(default)]
    pub n_group: Option<usize>,
    #[serde(default)]
    pub topk_group: Option<usize>,
    #[serde(default)]
    pub routed_scaling_factor: Option<f32>,
    #[serde(default)]
    pub first_k_dense_replace: Option<usize>,
    /// GLM-4.5: per-head q/k RMSNorm.
    #[serde(default)]
    pub use_qk_norm: Option<bool>,
    /// Every `decoder_sparse_step`-th layer is a MoE layer, except those in `mlp_only_layers`.
    #[serde(default)]
    pub decoder_sparse_step: Option<usize>,
    #[serde(default)]
    pub mlp_only_layers: Option<Vec<usize>>,
    /// gpt-oss: experts per layer (its name for `num_experts`), and the bound its SwiGLU
    /// clamps to.
    #[serde(default)]
    pub num_local_experts: Option<usize>,
    #[serde(default)]
    pub swiglu_limit: Option<f32>,
    /// Qwen3-Next/3.5's Gated DeltaNet layers: key and value heads, their sizes, and the
    /// short convolution's kernel; every `full_attention_interval`-th layer is attention.
    #[serde(default)]
    pub linear_num_key_heads: Option<usize>,
    #[serde(default)]
    pub linear_num_value_heads: Option<usize>,
    #[serde(default)]
    pub linear_key_head_dim: Option<usize>,
    #[serde(default)]
    pub linear_value_head_dim: Option<usize>,
    #[serde(default)]
    pub linear_conv_kernel_dim: Option<usize>,
    #[serde(default)]
    pub full_attention_interval: Option<usize>,
    /// DeepSeek-V3's latent attention: the latent's width, the query bottleneck's (absent:
    /// queries projected directly), and each head's rotary, non-rotary and value sizes.
    #[serde(default)]
    pub kv_lora_rank: Option<usize>,
    #[serde(default)]
    pub q_lora_rank: Option<usize>,
    #[serde(default)]
    pub qk_rope_head_dim: Option<usize>,
    #[serde(default)]
    pub qk_nope_head_dim: Option<usize>,
    #[serde(default)]
    pub v_head_dim: Option<usize>,
    /// LFM2's short convolutions: kernel size and biases.
    #[serde(default, rename = "conv_L_cache")]
    pub conv_l_cache: Option<usize>,
    #[serde(default)]
    pub conv_bias: Option<bool>,
    /// SmolLM3: per layer, 1 where it uses RoPE and 0 where it does not (NoPE); by default
    /// every `no_rope_layer_interval`-th layer goes without.
    #[serde(default)]
    pub no_rope_layers: Option<Vec<usize>>,
    #[serde(default)]
    pub no_rope_layer_interval: Option<usize>,
    /// Qwen3-Next/3.5 MoE: the gated shared expert's hidden size.
    #[serde(default)]
    pub shared_expert_intermediate_size: Option<usize>,
    /// Gemma 4: the global layers' head size and (with `attention_k_eq_v`, where values are
    /// the keys' projection) their key-value heads; the last `num_kv_shared_layers` layers
    /// reuse an earlier layer's keys and values.
    #[serde(default)]
    pub global_head_dim: Option<usize>,
    #[serde(default)]
    pub num_global_key_value_heads: Option<usize>,
    #[serde(default)]
    pub attention_k_eq_v: Option<bool>,
    #[serde(default)]
    pub num_kv_shared_layers: Option<usize>,
    /// Gemma 4's per-layer input embeddings: their width per layer (0: none) and vocabulary.
    #[serde(default)]
    pub hidden_size_per_layer_input: Option<usize>,
    #[serde(default)]
    pub vocab_size_per_layer_input: Option<usize>,
    /// Gemma 4: the KV-shared layers' MLPs are twice as wide.
    #[serde(default)]
    pub use_double_wide_mlp: Option<bool>,
    /// Logits pass through `tanh(x / c) * c` (Gemma 4).
    #[serde(default)]
    pub final_logit_softcapping: Option<f32>,
    /// Nemotron-H: one character per layer (`M` Mamba-2, `*` attention, `-` MLP, `E`
    /// experts), from `hybrid_override_pattern` or `layers_block_type` (see `read_config`).
    #[serde(default)]
    pub block_pattern: Option<String>,
    /// Nemotron-H's Mamba-2 layers: heads and their width, B/C groups and state size, the
    /// convolution's kernel and bias, projection biases, the step size's bounds.
    #[serde(default)]
    pub mamba_num_heads: Option<usize>,
    #[serde(default)]
    pub mamba_head_dim: Option<usize>,
    #[serde(default)]
    pub n_groups: Option<usize>,
    #[serde(default)]
    pub ssm_state_size: Option<usize>,
    #[serde(default)]
    pub conv_kernel: Option<usize>,
    #[serde(default)]
    pub use_conv_bias: Option<bool>,
    #[serde(default)]
    pub mamba_proj_bias: Option<bool>,
    #[serde(default)]
    pub time_step_limit: Option<Vec<f32>>,
    /// Nemotron-H's experts: the shared expert's width, and the latent width the routed
    /// experts work in.
    #[serde(default)]
    pub moe_shared_expert_intermediate_size: Option<usize>,
    #[serde(default)]
    pub moe_latent_size: Option<usize>,
    #[serde(skip)]
    pub quantization: QuantizationConfig,
}

fn default_rms_norm_eps() -> f32 {
    1e-6
}

fn default_rope_theta() -> f32 {
    10000.0
}

impl ModelConfig {
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Routed experts per MoE layer (0: a dense model).
    pub fn experts(&self) -> usize {
        self.num_experts
            .or(self.n_routed_experts)
            .or(self.num_local_experts)
            .unwrap_or(0)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// A short label such as `4bit`, `mxfp4` or `bf16`, as LM Studio shows in its model
    /// list; `mixed` when quantized modules differ in bits or mode (mlx-community's gpt-oss
    /// MXFP4-Q8: 8-bit affine layers, MXFP4 experts).
    pub fn quantization_label(&self) -> String {
        let q = &self.quantization;
        let label = |q: &Quantization| match q.mode {
            QuantMode::Affine => format!("{}bit", q.bits),
            mode => format!("{mode:?}").to_lowercase(),
        };
        let labels: std::collections::BTreeSet<String> = q
            .default
            .iter()
            .chain(q.overrides.values().flatten())
            .map(label)
            .collect();
        match labels.len() {
            0 => self.torch_dtype.clone().unwrap_or_else(|| "unknown".into()),
            1 => labels.into_iter().next().unwrap_or_default(),
            _ => "mixed".into(),
        }
    }
}

/// A CPU worker expands quantized weights to float32 at load when, expanded, they take at most
/// this many bytes (see the worker's `LoadOptions`); the memory guard counts them expanded.
pub const CPU_DEQUANTIZE_LIMIT: u64 = 4 << 30;

/// The quantized weights of `dir` as a CPU worker may expand them: (bytes expanded to float32,
/// bytes as stored: packed weights, scales and biases). Read from the safetensors headers
/// alone; (0, 0) for a dense model, and what is unreadable counts as nothing (the worker
/// reports the real problem when it loads).
pub fn quantized_footprint(dir: &Path, config: &ModelConfig) -> (u64, u64) {
    let mut tensors: BTreeMap<String, (Vec<u64>, u64)> = BTreeMap::new();
    for file in weight_files(dir).unwrap_or_default() {
        tensors.extend(safetensors_header(&file).unwrap_or_default());
    }
    let size = |name: &str| tensors.get(name).map_or(0, |t| t.1);
    let mut expanded = 0u64;
    let mut stored = 0u64;
    for (name, (shape, bytes)) in &tensors {
        // OpenAI's gpt-oss experts: `…_blocks` of [.., rows, groups, 16 bytes] of MXFP4.
        if let (Some(base), [lead @ .., groups, _]) =
            (name.strip_suffix("_blocks"), shape.as_slice())
        {
            expanded += lead.iter().product::<u64>() * groups * 32 * 4;
            stored += bytes + size(&format!("{base}_scales"));
            continue;
        }
        let Some(module) = name.strip_suffix(".weight") else {
            continue;
        };
        // FP8 (Mistral's checkpoints): a byte per weight, expanded at load.
        if tensors.contains_key(&format!("{module}.weight_scale_inv")) {
            expanded += shape.iter().product::<u64>() * 4;
            stored += bytes;
            continue;
        }
        let scales = format!("{module}.scales");
        let (Some(q), true) = (
            config.quantization.for_module(module),
            tensors.contains_key(&scales),
        ) else {
            continue;
        };
        let Some((&packed_cols, rows)) = shape.split_last() else {
            continue;
        };
        let cols = packed_cols * 32 / u64::from(q.bits.max(1));
        expanded += rows.iter().product::<u64>() * cols * 4;
        stored += bytes + size(&scales) + size(&format!("{module}.biases"));
    }
    (expanded, stored)
}

/// The model's parameter count, read from the safetensors headers alone: quantized weights
/// counted unpacked, their scales and biases not at all (LM Studio's `params_string`).
pub fn parameter_count(dir: &Path, config: &ModelConfig) -> u64 {
    let mut tensors: BTreeMap<String, (Vec<u64>, u64)> = BTreeMap::new();
    for file in weight_files(dir).unwrap_or_default() {
        tensors.extend(safetensors_header(&file).unwrap_or_default());
    }
    let mut count = 0u64;
    for (name, (shape, _)) in &tensors {
        let module = name.strip_suffix(".weight");
        let quantized = module
            .filter(|m| tensors.contains_key(&format!("{m}.scales")))
            .and_then(|m| config.quantization.for_module(m));
        count += match (name.strip_suffix("_blocks"), quantized, shape.as_slice()) {
            // gpt-oss's MXFP4 experts: [.., groups, 16 bytes] of 32 values per group.
            (Some(_), _, [lead @ .., groups, _]) => lead.iter().product::<u64>() * groups * 32,
            (_, Some(q), [rows @ .., packed]) => {
                rows.iter().product::<u64>() * packed * 32 / u64::from(q.bits.max(1))
            }
            _ if name.ends_with(".scales")
                || name.ends_with(".biases")
                || name.ends_with("_scales")
                || name.ends_with(".weight_scale_inv") =>
            {
                0
            }
            _ => shape.iter().product::<u64>(),
        };
    }
    count
}

/// Each tensor's shape and byte size from a safetensors file's JSON header.
fn safetensors_header(path: &Path) -> Option<BTreeMap<String, (Vec<u64>, u64)>> {
    use std::io::Read;
    let mut file = fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    // The format caps headers at 100 MB.
    if len > 100_000_000 {
        return None;
    }
    let mut header = vec![0u8; usize::try_from(len).ok()?];
    file.read_exact(&mut header).ok()?;
    let header: BTreeMap<String, Value> = serde_json::from_slice(&header).ok()?;
    let tensors = header
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .filter_map(|(name, t)| {
            let shape = t.get("shape")?.as_array()?;
            let shape: Option<Vec<u64>> = shape.iter().map(Value::as_u64).collect();
            let offsets = t.get("data_offsets")?.as_array()?;
            let (start, end) = (offsets.first()?.as_u64()?, offsets.get(1)?.as_u64()?);
            Some((name, (shape?, end.checked_sub(start)?)))
        })
        .collect();
    Some(tensors)
}

/// Reads and checks `<dir>/config.json`.
pub fn read_config(dir: &Path) -> Result<ModelConfig, ModelDirError> {
    let path = dir.join("config.json");
    let raw = text_part(read_json(&path)?);
    let mut config: ModelConfig =
        serde_json::from_value(raw.clone()).map_err(|e| ModelDirError::Json {
            path: path.clone(),
            message: e.to_string(),
        })?;
    // OpenAI's own gpt-oss checkpoints say only `quantization_config.quant_method: mxfp4`;
    // mlx-lm reads that as MXFP4 (groups of 32) wherever a weight has scales.
    let legacy_mxfp4 = raw
        .pointer("/quantization_config/quant_method")
        .and_then(Value::as_str)
        == Some("mxfp4");
    let legacy = serde_json::json!({"group_size": 32, "bits": 4, "mode": "mxfp4"});
    let quantization = raw.get("quantization").or(legacy_mxfp4.then_some(&legacy));
    if let Some(q) = quantization {
        config.quantization = parse_quantization(q).map_err(|message| ModelDirError::Invalid {
            path: path.clone(),
            message,
        })?;
    }
    // Gemma 4 keeps RoPE settings per layer kind (`full_attention`, `sliding_attention`):
    // the worker reads them per layer.
    let per_kind = config
        .rope_parameters
        .as_ref()
        .is_some_and(|p| p.get("full_attention").is_some());
    if let (Some(params), false) = (config.rope_parameters.clone(), per_kind) {
        let declared = raw.get("rope_theta").is_some_and(|v| !v.is_null());
        if let (false, Some(theta)) = (declared, params.get("rope_theta").and_then(Value::as_f64)) {
            config.rope_theta = theta as f32;
        }
        if config.partial_rotary_factor.is_none() {
            config.partial_rotary_factor = params
                .get("partial_rotary_factor")
                .and_then(Value::as_f64)
                .map(|f| f as f32);
        }
        if config.rope_scaling.as_ref().is_none_or(Value::is_null) {
            config.rope_scaling = Some(params);
        }
    }
    // mlx-lm's DeepSeek-V3 (and GLM-4.7-Flash) defaults that change the arithmetic: the router is always the
    // grouped sigmoid one, and its chosen weights are renormalised.
    if matches!(config.model_type.as_str(), "deepseek_v3" | "glm4_moe_lite") {
        config.n_group.get_or_insert(1);
        config.norm_topk_prob.get_or_insert(true);
    }
    if config.num_attention_heads == 0 || config.hidden_size == 0 {
        return Err(ModelDirError::Invalid {
            path,
            message: "hidden_size and num_attention_heads must be positive".into(),
        });
    }
    Ok(config)
}

/// The language model's config of a vision-language wrapper whose text part the worker runs
/// (Gemma 3's `gemma3`: `text_config` inside, with mlx-lm's defaults for what it leaves out);
/// any other config as it is.
fn text_part(raw: Value) -> Value {
    let Value::Object(top) = &raw else { return raw };
    if top.get("model_type").and_then(Value::as_str) == Some("lfm2") {
        return lfm2_config(top.clone());
    }
    if top.get("model_type").and_then(Value::as_str) == Some("nemotron_h") {
        return nemotron_h_config(top.clone());
    }
    // mlx-lm reads a Qwen3.5 config with or without the wrapper around it.
    if let Some(kind @ ("qwen3_5" | "qwen3_5_moe")) = top.get("model_type").and_then(Value::as_str)
    {
        let text = match top.get("text_config") {
            Some(Value::Object(text)) => text,
            _ => top,
        };
        return qwen3_5_text(kind, top, text);
    }
    if let Some(kind @ ("gemma4" | "gemma4_text")) = top.get("model_type").and_then(Value::as_str) {
        return gemma4_text(kind, top);
    }
    let Some(Value::Object(text)) = top.get("text_config") else {
        return raw;
    };
    match top.get("model_type").and_then(Value::as_str) {
        Some("gemma3") => {}
        // Mistral 3 (Small 3.x, Ministral 3): the text model's own config, untied unless it
        // says otherwise (mlx-lm's mistral3 wrapper).
        Some("mistral3") => {
            let mut text = text.clone();
            text.entry("tie_word_embeddings").or_insert(false.into());
            for key in [
                "quantization",
                "eos_token_id",
                "bos_token_id",
                "torch_dtype",
            ] {
                if let (Some(v), false) = (top.get(key), text.contains_key(key)) {
                    text.insert(key.to_string(), v.clone());
                }
            }
            text.entry("model_type").or_insert("mistral".into());
            return Value::Object(text);
        }
        _ => return raw,
    }
    // mlx-lm's gemma3_text defaults, then the wrapper's own (gemma3.py's ModelArgs).
    let mut merged = serde_json::json!({
        "hidden_size": 1152, "num_hidden_layers": 26, "intermediate_size": 6912,
        "head_dim": 256, "rms_norm_eps": 1.0e-6, "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0, "query_pre_attn_scalar": 256.0,
        "sliding_window": 512, "sliding_window_pattern": 6, "max_position_embeddings": 32768,
        "num_attention_heads": 8, "num_key_value_heads": 4,
    });
    if let Value::Object(m) = &mut merged {
        m.extend(text.iter().map(|(k, v)| (k.clone(), v.clone())));
        for key in [
            "quantization",
            "eos_token_id",
            "bos_token_id",
            "torch_dtype",
            "tie_word_embeddings",
        ] {
            if let Some(v) = top.get(key) {
                m.insert(key.to_string(), v.clone());
            }
        }
        let vocab = top.get("vocab_size").cloned().unwrap_or(262_208.into());
        m.insert("vocab_size".into(), vocab);
        m.insert("model_type".into(), "gemma3".into());
    }
    merged
}

/// Qwen3.5/3.6's text model config with mlx-lm's defaults for what it leaves out (its
/// `TextModelArgs`), RoPE settings from `rope_parameters`, and the wrapper's quantization and
/// special tokens.
fn qwen3_5_text(
    kind: &str,
    top: &serde_json::Map<String, Value>,
    text: &serde_json::Map<String, Value>,
) -> Value {
    let mut merged = serde_json::json!({
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "rms_norm_eps": 1.0e-6, "vocab_size": 151_936,
        "num_key_value_heads": 8, "max_position_embeddings": 131_072,
        "linear_num_value_heads": 64, "linear_num_key_heads": 16, "linear_key_head_dim": 192,
        "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4, "tie_word_embeddings": false,
        "attention_bias": false, "full_attention_interval": 4, "norm_topk_prob": true,
        "rope_parameters": {"type": "default", "mrope_section": [11, 11, 10],
                            "rope_theta": 100_000, "partial_rotary_factor": 0.25},
    });
    let Value::Object(m) = &mut merged else {
        return merged;
    };
    m.extend(text.iter().map(|(k, v)| (k.clone(), v.clone())));
    let params = m.get("rope_parameters").cloned().unwrap_or(Value::Null);
    let get = |key: &str, default: f64| params.get(key).and_then(Value::as_f64).unwrap_or(default);
    let (factor, theta) = (
        get("partial_rotary_factor", 0.25),
        get("rope_theta", 100_000.0),
    );
    m.insert("partial_rotary_factor".into(), factor.into());
    m.insert("rope_theta".into(), theta.into());
    if !params.is_null() {
        m.insert("rope_scaling".into(), params);
    }
    for key in [
        "quantization",
        "eos_token_id",
        "bos_token_id",
        "torch_dtype",
    ] {
        if let (Some(v), false) = (top.get(key), m.contains_key(key)) {
            m.insert(key.to_string(), v.clone());
        }
    }
    m.insert("model_type".into(), kind.into());
    merged
}

/// Gemma 4's text model config (the wrapper's `text_config`, or the config itself for
/// `gemma4_text`) with mlx-lm's defaults for what it leaves out, its expert settings in the
/// shared names, and the wrapper's vocabulary, quantization and special tokens.
fn gemma4_text(kind: &str, top: &serde_json::Map<String, Value>) -> Value {
    let mut merged = serde_json::json!({
        "hidden_size": 1536, "num_hidden_layers": 35, "intermediate_size": 6144,
        "num_attention_heads": 8, "head_dim": 256, "global_head_dim": 512,
        "rms_norm_eps": 1.0e-6, "vocab_size": 262_144, "vocab_size_per_layer_input": 262_144,
        "num_key_value_heads": 1, "num_kv_shared_layers": 20, "hidden_size_per_layer_input": 256,
        "sliding_window": 512, "sliding_window_pattern": 5, "max_position_embeddings": 131_072,
        "attention_k_eq_v": false, "final_logit_softcapping": 30.0, "use_double_wide_mlp": true,
        "tie_word_embeddings": true,
        "rope_parameters": {
            "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0,
                               "rope_type": "proportional"},
            "sliding_attention": {"partial_rotary_factor": 1.0, "rope_theta": 10_000.0,
                                  "rope_type": "default"}},
    });
    let Value::Object(m) = &mut merged else {
        return merged;
    };
    let wrapped = kind == "gemma4";
    let text = match top.get("text_config") {
        Some(Value::Object(text)) if wrapped => text,
        _ => top,
    };
    m.extend(
        text.iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    if wrapped {
        // mlx-lm's wrapper gives the text model its own vocabulary size (default 262144).
        let vocab = top.get("vocab_size").cloned().unwrap_or(262_144.into());
        m.insert("vocab_size".into(), vocab);
        for key in [
            "quantization",
            "eos_token_id",
            "bos_token_id",
            "torch_dtype",
        ] {
            if let Some(v) = top.get(key) {
                m.insert(key.to_string(), v.clone());
            }
        }
    }
    // Experts only where `enable_moe_block` says, `top_k_experts` of them per token.
    if m.get("enable_moe_block").and_then(Value::as_bool) == Some(true) {
        if let Some(k) = m.get("top_k_experts").cloned() {
            m.insert("num_experts_per_tok".into(), k);
        }
    } else {
        m.remove("num_experts");
    }
    m.insert("model_type".into(), kind.into());
    merged
}

/// Nemotron-H's config in the shared names: the layer pattern as one string (from
/// `hybrid_override_pattern`, a string or a list, or transformers' `layers_block_type` /
/// `layer_types` names) with the layer count it implies, `layer_norm_epsilon` as the norms'
/// epsilon.
fn nemotron_h_config(mut m: serde_json::Map<String, Value>) -> Value {
    let kind = |name: &str| match name {
        "full_attention" | "attention" => Some('*'),
        "linear_attention" | "mamba" | "conv" => Some('M'),
        "moe" => Some('E'),
        "mlp" => Some('-'),
        _ => None,
    };
    let pattern: Option<String> = match m.get("hybrid_override_pattern") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(a)) => a.iter().map(Value::as_str).collect(),
        _ => ["layers_block_type", "layer_types"]
            .iter()
            .find_map(|k| m.get(*k).and_then(Value::as_array))
            .and_then(|a| a.iter().map(|v| v.as_str().and_then(kind)).collect()),
    };
    if let Some(p) = pattern {
        m.insert("num_hidden_layers".into(), p.chars().count().into());
        m.insert("block_pattern".into(), p.into());
    }
    // Its own names for what the block types were: not attention windows.
    m.remove("layer_types");
    if let Some(eps) = m.get("layer_norm_epsilon").cloned() {
        m.insert("rms_norm_eps".into(), eps);
    }
    // The MoE models' dense width is unused; the shared config wants one.
    m.entry("intermediate_size").or_insert(0.into());
    Value::Object(m)
}

/// LFM2's config in the shared names: `norm_eps`, the MLP width as mlx-lm derives it from
/// `block_*`, the attention layers (`full_attn_idxs` or `layer_types`) as `layer_types`, and
/// tied embeddings (its only kind).
fn lfm2_config(mut m: serde_json::Map<String, Value>) -> Value {
    let num = |m: &serde_json::Map<String, Value>, k: &str| m.get(k).and_then(Value::as_f64);
    if let Some(eps) = num(&m, "norm_eps") {
        m.insert("rms_norm_eps".into(), eps.into());
    }
    let mut ff = num(&m, "block_ff_dim")
        .or(num(&m, "intermediate_size"))
        .unwrap_or(0.0) as i64;
    if m.get("block_auto_adjust_ff_dim").and_then(Value::as_bool) == Some(true) {
        ff = 2 * ff / 3;
        if let Some(mult) = num(&m, "block_ffn_dim_multiplier") {
            ff = (mult * ff as f64) as i64;
        }
        let of = num(&m, "block_multiple_of").unwrap_or(1.0).max(1.0) as i64;
        ff = of * ((ff + of - 1) / of);
    }
    m.insert("intermediate_size".into(), ff.into());
    let layers = num(&m, "num_hidden_layers").unwrap_or(0.0) as usize;
    if let Some(Value::Array(idxs)) = m.get("full_attn_idxs").cloned() {
        let full: Vec<u64> = idxs.iter().filter_map(Value::as_u64).collect();
        let types: Vec<Value> = (0..layers as u64)
            .map(|i| {
                if full.contains(&i) {
                    "full_attention"
                } else {
                    "conv"
                }
                .into()
            })
            .collect();
        m.insert("layer_types".into(), types.into());
    }
    m.insert("tie_word_embeddings".into(), true.into());
    m.remove("head_dim");
    Value::Object(m)
}

fn parse_quantization(value: &Value) -> Result<QuantizationConfig, String> {
    let obj = value
        .as_object()
        .ok_or("\"quantization\" must be an object")?;
    let mode = |v: &Value| v.get("mode").and_then(Value::as_str).map(QuantMode::parse);
    let default_mode = mode(value).transpose()?.unwrap_or_default();
    let mut out = QuantizationConfig {
        default: parse_one(value, default_mode)?,
        overrides: BTreeMap::new(),
    };
    for (key, v) in obj {
        match v {
            Value::Object(_) => {
                // An override is a whole `to_quantized` call in mlx-lm: without a mode of its
                // own it is affine, whatever the default's mode (`mlx_lm.convert --q-mode
                // mxfp4` writes its 8-bit routers so).
                let m = mode(v).transpose()?.unwrap_or_default();
                out.overrides.insert(key.clone(), parse_one(v, m)?);
            }
            Value::Bool(false) => {
                out.overrides.insert(key.clone(), None);
            }
            _ => {}
        }
    }
    Ok(out)
}

fn parse_one(v: &Value, mode: QuantMode) -> Result<Option<Quantization>, String> {
    let bits = v.get("bits").and_then(Value::as_u64);
    let group = v.get("group_size").and_then(Value::as_u64);
    match (bits, group) {
        (None, None) => Ok(None),
        (Some(bits), Some(group_size)) => {
            if !mode.allows(bits, group_size) {
                return Err(format!(
                    "unsupported quantization: {bits} bits, group_size {group_size} in mode \
                     {mode:?}"
                ));
            }
            Ok(Some(Quantization {
                group_size: group_size as u32,
                bits: bits as u32,
                mode,
            }))
        }
        _ => Err("quantization needs both \"bits\" and \"group_size\"".into()),
    }
}

/// The safetensors files that hold the weights: `model.safetensors`, or the shards named in
/// `model.safetensors.index.json`, or (as mlx-lm also accepts) every `*.safetensors` file.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelDirError> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let raw = read_json(&index)?;
        let map = raw
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ModelDirError::Invalid {
                path: index.clone(),
                message: "no \"weight_map\" object".into(),
            })?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(Value::as_str)
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        for f in &files {
            if !f.exists() {
                return Err(ModelDirError::Missing { path: f.clone() });
            }
        }
        return Ok(files);
    }
    let entries = fs::read_dir(dir).map_err(|source| ModelDirError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ModelDirError::Missing {
            path: dir.join("model.safetensors"),
        });
    }
    Ok(files)
}

/// The sampling recommendations of a model folder's `generation_config.json`, in Hugging
/// Face's names. Each is `None` where the file gives no number for it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerationConfig {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

impl GenerationConfig {
    /// Reads `<dir>/generation_config.json`. The file is advice: a missing or broken one, or a
    /// value that is not a number, counts as absent rather than making the model unusable.
    pub fn read(dir: &Path) -> GenerationConfig {
        let Ok(v) = read_json(&dir.join("generation_config.json")) else {
            return GenerationConfig::default();
        };
        let num = |key: &str| v.get(key).and_then(Value::as_f64).filter(|x| x.is_finite());
        GenerationConfig {
            temperature: num("temperature").map(|x| x as f32),
            top_p: num("top_p").map(|x| x as f32),
            top_k: num("top_k").map(|x| x as i32),
            min_p: num("min_p").map(|x| x as f32),
            repetition_penalty: num("repetition_penalty").map(|x| x as f32),
        }
    }
}

/// Model types that are encoders: they embed text and generate nothing.
pub const ENCODER_TYPES: &[&str] = &["bert", "xlm_roberta"];

/// Decoder model types the worker runs, as `read_config` reads them (a vision-language
/// wrapper's text model: Mistral 3's is `ministral3`, Gemma 3's keeps `gemma3`).
pub const GENERATION_TYPES: &[&str] = &[
    "llama",
    "mistral",
    "ministral3",
    "phi3",
    "granite",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "qwen3_next",
    "qwen3_5",
    "qwen3_5_moe",
    "olmo3",
    "smollm3",
    "deepseek_v3",
    "glm4_moe_lite",
    "lfm2",
    "glm4_moe",
    "gpt_oss",
    "gemma3_text",
    "gemma3",
    "gemma4_text",
    "gemma4",
    "nemotron_h",
];

/// Why the worker cannot run a model of this config, before one is started for it: its
/// architecture. `None` when it can.
pub fn unsupported(config: &ModelConfig) -> Option<String> {
    let t = config.model_type.as_str();
    if GENERATION_TYPES.contains(&t) || ENCODER_TYPES.contains(&t) {
        return None;
    }
    Some(format!(
        "its architecture (model_type {t:?}) is not supported; supported are {}, and for \
         embeddings {}",
        GENERATION_TYPES.join(", "),
        ENCODER_TYPES.join(", ")
    ))
}

/// Decoder architectures that serve embeddings when the folder is a sentence-transformers
/// model (a `modules.json` with a Pooling module), as Qwen3-Embedding and EmbeddingGemma are.
pub const DECODER_EMBEDDER_TYPES: &[&str] = &["qwen3", "gemma3_text"];

/// A sentence-transformers `Dense` module after pooling: its folder, and whether its
/// activation is tanh (sentence-transformers' default) rather than the identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenseModule {
    pub path: PathBuf,
    pub tanh: bool,
}

/// The `Dense` modules of a sentence-transformers folder, in pipeline order. An activation
/// other than identity or tanh is an error naming the module.
pub fn sentence_dense_modules(dir: &Path) -> Result<Vec<DenseModule>, ModelDirError> {
    let Ok(modules) = read_json(&dir.join("modules.json")) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for m in modules.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let kind = m.get("type").and_then(Value::as_str).unwrap_or("");
        if !kind.ends_with(".Dense") {
            continue;
        }
        let folder = dir.join(m.get("path").and_then(Value::as_str).unwrap_or(""));
        let config_path = folder.join("config.json");
        let config = read_json(&config_path)?;
        let activation = config
            .get("activation_function")
            .and_then(Value::as_str)
            .unwrap_or("torch.nn.modules.activation.Tanh");
        let tanh = match activation.rsplit('.').next() {
            Some("Identity") => false,
            Some("Tanh") => true,
            _ => {
                return Err(ModelDirError::Invalid {
                    path: config_path,
                    message: format!("unsupported activation_function {activation:?}"),
                })
            }
        };
        out.push(DenseModule { path: folder, tanh });
    }
    Ok(out)
}

/// What a model folder serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// Text generation (chat and completions).
    Generation,
    /// Embeddings only: an encoder, or a decoder in sentence-transformers' layout
    /// (Qwen3-Embedding).
    Embedding,
}

impl ModelKind {
    /// What the folder `dir`, whose config is `config`, serves.
    pub fn of(dir: &Path, config: &ModelConfig) -> ModelKind {
        let t = config.model_type.as_str();
        let decoder_embedder =
            DECODER_EMBEDDER_TYPES.contains(&t) && sentence_pooling(dir).is_some();
        if ENCODER_TYPES.contains(&t) || decoder_embedder {
            ModelKind::Embedding
        } else {
            ModelKind::Generation
        }
    }
}

/// How sentence-transformers pools a text's token states into one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the text's tokens (padding excluded).
    Mean,
    /// The first token's (`[CLS]`).
    Cls,
    /// The last token's (decoder embedders such as Qwen3-Embedding).
    Last,
}

/// The pooling of a sentence-transformers folder (`modules.json`, then its Pooling module's
/// `config.json`), and whether its vectors are L2-normalised (a `Normalize` module). `None`:
/// the folder has no Pooling module.
pub fn sentence_pooling(dir: &Path) -> Option<(Pooling, bool)> {
    let modules = read_json(&dir.join("modules.json")).ok()?;
    let modules = modules.as_array()?;
    let kind = |m: &Value| {
        m.get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let pooling = modules.iter().find(|m| kind(m).ends_with(".Pooling"))?;
    let folder = pooling
        .get("path")
        .and_then(Value::as_str)
        .unwrap_or("1_Pooling");
    let cfg = read_json(&dir.join(folder).join("config.json")).unwrap_or(Value::Null);
    let on = |key: &str| cfg.get(key).and_then(Value::as_bool) == Some(true);
    let mode = if on("pooling_mode_cls_token") {
        Pooling::Cls
    } else if on("pooling_mode_lasttoken") {
        Pooling::Last
    } else {
        Pooling::Mean
    };
    let normalize = modules.iter().any(|m| kind(m).ends_with(".Normalize"));
    Some((mode, normalize))
}

/// sentence-transformers' input limit (`sentence_bert_config.json`'s `max_seq_length`).
pub fn max_seq_length(dir: &Path) -> Option<usize> {
    let cfg = read_json(&dir.join("sentence_bert_config.json")).ok()?;
    cfg.get("max_seq_length")?.as_u64().map(|n| n as usize)
}

/// Reads a JSON file, distinguishing a missing file from a broken one.
/// Python's `json.dumps` writes infinities and NaN as bare `Infinity`, `-Infinity` and `NaN`
/// (Nemotron-H's `time_step_limit: [0.0, Infinity]`), which JSON lacks: outside strings, they
/// become float32's largest values and null.
fn json_without_non_finite(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("Infinity") && !text.contains("NaN") {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else {
            let word = [
                ("-Infinity", "-3.4028235e38"),
                ("Infinity", "3.4028235e38"),
                ("NaN", "null"),
            ]
            .into_iter()
            .find(|(w, _)| rest.starts_with(w));
            if let Some((w, json)) = word {
                out.push_str(json);
                rest = &rest[w.len()..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    std::borrow::Cow::Owned(out)
}

/// transformers (and mlx-lm after it) write non-finite floats as `{"__float__": "Infinity"}`
/// to stay valid JSON: the same values as `json_without_non_finite` gives them.
fn untag_non_finite(value: Value) -> Value {
    match value {
        Value::Object(m) => {
            if let (1, Some(Value::String(tag))) = (m.len(), m.get("__float__")) {
                return match tag.as_str() {
                    "Infinity" => serde_json::json!(f32::MAX),
                    "-Infinity" => serde_json::json!(f32::MIN),
                    _ => Value::Null,
                };
            }
            Value::Object(
                m.into_iter()
                    .map(|(k, v)| (k, untag_non_finite(v)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.into_iter().map(untag_non_finite).collect()),
        other => other,
    }
}

pub fn read_json(path: &Path) -> Result<Value, ModelDirError> {
    let text = fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ModelDirError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            ModelDirError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    let value: Result<Value, _> = serde_json::from_str(&json_without_non_finite(&text));
    value
        .map(untag_non_finite)
        .map_err(|e| ModelDirError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sentence_transformers_pooling_and_normalisation_from_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(sentence_pooling(d), None);
        std::fs::write(
            d.join("modules.json"),
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#,
        )
        .unwrap();
        assert_eq!(sentence_pooling(d), Some((Pooling::Mean, false)));
        std::fs::create_dir(d.join("1_Pooling")).unwrap();
        std::fs::write(
            d.join("1_Pooling/config.json"),
            r#"{"pooling_mode_cls_token": false, "pooling_mode_lasttoken": true}"#,
        )
        .unwrap();
        std::fs::write(
            d.join("modules.json"),
            r#"[{"path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
                {"path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
        )
        .unwrap();
        assert_eq!(sentence_pooling(d), Some((Pooling::Last, true)));
        std::fs::write(
            d.join("sentence_bert_config.json"),
            r#"{"max_seq_length": 256}"#,
        )
        .unwrap();
        assert_eq!(max_seq_length(d), Some(256));
    }

    fn config_of(raw: Value) -> ModelConfig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), raw.to_string()).unwrap();
        read_config(dir.path()).unwrap()
    }

    /// Qwen3.5's wrapper: the text model with mlx-lm's defaults, RoPE from `rope_parameters`
    /// (a quarter of each head rotated unless it says otherwise), the wrapper's quantization.
    #[test]
    fn gemma4_text_config_inside_its_wrapper_and_alone() {
        // The 26B's shape: experts on, per-layer inputs off; the wrapper's vocabulary wins.
        let c = config_of(json!({
            "model_type": "gemma4", "vocab_size": 1000, "eos_token_id": [1, 106],
            "quantization": {"group_size": 64, "bits": 4},
            "text_config": {"model_type": "gemma4_text", "hidden_size": 64,
                "num_hidden_layers": 4, "enable_moe_block": true, "num_experts": 8,
                "top_k_experts": 2, "hidden_size_per_layer_input": 0,
                "num_kv_shared_layers": 0, "attention_k_eq_v": true}}));
        assert_eq!(c.model_type, "gemma4");
        assert_eq!((c.hidden_size, c.vocab_size, c.head_dim()), (64, 1000, 256));
        assert_eq!((c.experts(), c.num_experts_per_tok), (8, Some(2)));
        assert_eq!(c.global_head_dim, Some(512));
        assert_eq!(c.final_logit_softcapping, Some(30.0));
        assert_eq!(c.quantization_label(), "4bit");
        assert_eq!(c.eos_token_id, Some(json!([1, 106])));
        // RoPE stays per layer kind, for the worker to read per layer.
        assert!(c.rope_scaling.is_none(), "{:?}", c.rope_scaling);
        assert!(c
            .rope_parameters
            .is_some_and(|p| p.get("sliding_attention").is_some()));
        // Alone, with experts listed but not enabled: a dense model.
        let dense = config_of(json!({"model_type": "gemma4_text", "num_experts": 8}));
        assert_eq!((dense.experts(), dense.num_kv_shared_layers), (0, Some(20)));
        assert_eq!(dense.hidden_size_per_layer_input, Some(256));
    }

    #[test]
    fn nemotron_h_pattern_and_non_finite_floats() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = r#"{"model_type": "nemotron_h", "hidden_size": 64, "num_attention_heads": 4,
            "vocab_size": 10, "layer_norm_epsilon": 1e-5, "mamba_num_heads": 8,"#;
        let write = |rest: &str| {
            std::fs::write(dir.path().join("config.json"), format!("{base} {rest}}}"))
                .expect("write");
            read_config(dir.path()).expect("config")
        };
        // Python's bare Infinity, and a pattern string.
        let c = write(r#""hybrid_override_pattern": "M*-ME", "time_step_limit": [0.0, Infinity]"#);
        assert_eq!(c.block_pattern.as_deref(), Some("M*-ME"));
        assert_eq!((c.num_hidden_layers, c.intermediate_size), (5, 0));
        assert_eq!(c.rms_norm_eps, 1e-5);
        assert_eq!(c.time_step_limit, Some(vec![0.0, f32::MAX]));
        // transformers' tagged infinity, and its block type names; "Infinity" in a string stays.
        let c = write(
            r#""layers_block_type": ["mamba", "attention", "mlp", "moe"], "name": "Infinity",
            "time_step_limit": [0.0, {"__float__": "Infinity"}], "intermediate_size": 32"#,
        );
        assert_eq!(c.block_pattern.as_deref(), Some("M*-E"));
        assert_eq!((c.num_hidden_layers, c.intermediate_size), (4, 32));
        assert_eq!(c.time_step_limit, Some(vec![0.0, f32::MAX]));
        assert!(c.layer_types.is_none());
    }

    #[test]
    fn qwen3_5_text_config_inside_its_wrapper() {
        let c = config_of(json!({
            "model_type": "qwen3_5_moe", "eos_token_id": 7,
            "quantization": {"group_size": 64, "bits": 4},
            "text_config": {"model_type": "qwen3_5_moe_text", "hidden_size": 64,
                "num_hidden_layers": 4, "num_attention_heads": 4, "num_experts": 8,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1e7}}}));
        assert_eq!(c.model_type, "qwen3_5_moe");
        assert_eq!((c.hidden_size, c.intermediate_size), (64, 14336));
        assert_eq!(c.partial_rotary_factor, Some(0.25));
        assert_eq!(c.rope_theta, 1e7);
        assert_eq!(c.linear_num_value_heads, Some(64));
        assert_eq!(c.full_attention_interval, Some(4));
        assert_eq!(c.norm_topk_prob, Some(true));
        assert_eq!(c.quantization_label(), "4bit");
        assert_eq!(c.eos_token_id, Some(json!(7)));
    }

    /// LFM2: its epsilon, the MLP width derived from `block_*`, attention layers from
    /// `full_attn_idxs`, tied embeddings.
    #[test]
    fn lfm2_config_in_the_shared_names() {
        let c = config_of(json!({
            "model_type": "lfm2", "vocab_size": 16, "hidden_size": 64, "num_hidden_layers": 3,
            "num_attention_heads": 4, "num_key_value_heads": 2, "norm_eps": 1e-5,
            "block_ff_dim": 256, "block_auto_adjust_ff_dim": true,
            "block_ffn_dim_multiplier": 1.5, "block_multiple_of": 32, "full_attn_idxs": [1],
            "conv_L_cache": 3}));
        assert_eq!(c.rms_norm_eps, 1e-5);
        // int(2 * 256 / 3) = 170, int(1.5 * 170) = 255, rounded up to a multiple of 32.
        assert_eq!(c.intermediate_size, 256);
        let types = c.layer_types.unwrap();
        assert_eq!(types, ["conv", "full_attention", "conv"]);
        assert_eq!(
            (c.tie_word_embeddings, c.conv_l_cache),
            (Some(true), Some(3))
        );
    }

    #[test]
    fn quantization_with_per_module_overrides() {
        let q = parse_quantization(&json!({
            "group_size": 64, "bits": 4, "mode": "affine",
            "model.embed_tokens": {"group_size": 32, "bits": 8},
            "lm_head": false
        }))
        .unwrap();
        let four = Quantization {
            group_size: 64,
            bits: 4,
            mode: QuantMode::Affine,
        };
        assert_eq!(q.for_module("model.layers.0.mlp.up_proj"), Some(four));
        assert_eq!(
            q.for_module("model.embed_tokens"),
            Some(Quantization {
                group_size: 32,
                bits: 8,
                mode: QuantMode::Affine,
            })
        );
        assert_eq!(q.for_module("lm_head"), None);
    }

    #[test]
    fn an_override_without_a_mode_is_affine_as_mlx_lm_reads_it() {
        // What `mlx_lm.convert --q-mode mxfp4` writes for gpt-oss.
        let q = parse_quantization(&json!({
            "group_size": 32, "bits": 4, "mode": "mxfp4",
            "model.layers.0.mlp.router": {"group_size": 64, "bits": 8},
            "model.layers.1.mlp.router": {"group_size": 32, "bits": 4, "mode": "mxfp4"},
        }))
        .unwrap();
        let expert = q
            .for_module("model.layers.0.mlp.experts.gate_proj")
            .unwrap();
        assert_eq!(expert.mode, QuantMode::Mxfp4);
        let router = q.for_module("model.layers.0.mlp.router").unwrap();
        assert_eq!(
            (router.group_size, router.bits, router.mode),
            (64, 8, QuantMode::Affine)
        );
        let own = q.for_module("model.layers.1.mlp.router").unwrap();
        assert_eq!(own.mode, QuantMode::Mxfp4, "an override's own mode stands");
    }

    #[test]
    fn quantization_labels_name_the_mode_and_mixed_layouts() {
        let label = |quantization: Value| {
            let mut config: ModelConfig = serde_json::from_value(json!({
                "model_type": "llama", "hidden_size": 8, "num_hidden_layers": 1,
                "intermediate_size": 8, "num_attention_heads": 1, "vocab_size": 4,
                "torch_dtype": "bfloat16"}))
            .unwrap();
            if !quantization.is_null() {
                config.quantization = parse_quantization(&quantization).unwrap();
            }
            config.quantization_label()
        };
        assert_eq!(label(Value::Null), "bfloat16");
        assert_eq!(label(json!({"group_size": 64, "bits": 4})), "4bit");
        assert_eq!(
            label(json!({"group_size": 32, "bits": 4, "mode": "mxfp4"})),
            "mxfp4"
        );
        // gpt-oss as mlx-community converts it: 8-bit affine, MXFP4 experts.
        assert_eq!(
            label(json!({"group_size": 64, "bits": 8,
                "model.layers.0.mlp.experts.gate_proj": {"group_size": 32, "bits": 4, "mode": "mxfp4"}})),
            "mixed"
        );
        assert_eq!(
            label(json!({"group_size": 64, "bits": 4, "lm_head": false})),
            "4bit",
            "a module left dense does not make it mixed"
        );
    }

    #[test]
    fn quantization_rejects_unknown_modes_and_sizes() {
        // Each floating-point mode has one layout.
        assert!(
            parse_quantization(&json!({"group_size": 64, "bits": 4, "mode": "mxfp4"})).is_err()
        );
        let q = parse_quantization(&json!({"group_size": 32, "bits": 4, "mode": "mxfp4"}));
        assert_eq!(q.unwrap().default.map(|q| q.mode), Some(QuantMode::Mxfp4));
        assert!(parse_quantization(&json!({"group_size": 16, "bits": 4, "mode": "nvfp4"})).is_ok());
        assert!(parse_quantization(&json!({"group_size": 32, "bits": 4, "mode": "q4k"})).is_err());
        assert!(parse_quantization(&json!({"group_size": 48, "bits": 4})).is_err());
        assert!(parse_quantization(&json!({"group_size": 64, "bits": 7})).is_err());
        assert!(parse_quantization(&json!({"bits": 4})).is_err());
    }

    #[test]
    fn openai_mxfp4_checkpoints_are_read_as_mxfp4_and_counted_expanded() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let config = json!({"model_type": "gpt_oss", "hidden_size": 64, "num_hidden_layers": 1,
            "intermediate_size": 64, "num_attention_heads": 2, "vocab_size": 10,
            "num_local_experts": 2, "quantization_config": {"quant_method": "mxfp4"}});
        fs::write(d.join("config.json"), config.to_string()).unwrap();
        // Two experts of 8 rows, 64 columns: 2 groups of 16 bytes per row, one scale each.
        let header = json!({
            "e.gate_up_proj_blocks": {"dtype": "U8", "shape": [2, 8, 2, 16], "data_offsets": [0, 512]},
            "e.gate_up_proj_scales": {"dtype": "U8", "shape": [2, 8, 2], "data_offsets": [512, 544]},
        })
        .to_string();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend([0u8; 544]);
        fs::write(d.join("model.safetensors"), bytes).unwrap();
        let config = read_config(d).unwrap();
        assert_eq!(config.experts(), 2);
        let q = config.quantization.for_module("e.gate_up_proj").unwrap();
        assert_eq!((q.group_size, q.bits, q.mode), (32, 4, QuantMode::Mxfp4));
        assert_eq!(quantized_footprint(d, &config), (2 * 8 * 64 * 4, 544));
        assert_eq!(
            parameter_count(d, &config),
            2 * 8 * 64,
            "scales not counted"
        );
    }

    #[test]
    fn config_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("opta-cfg-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let missing = read_config(&dir).unwrap_err().to_string();
        assert!(missing.contains("config.json: not found"), "{missing}");
        fs::write(dir.join("config.json"), "{\"model_type\": ").unwrap();
        let broken = read_config(&dir).unwrap_err().to_string();
        assert!(broken.contains("config.json: invalid JSON"), "{broken}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
