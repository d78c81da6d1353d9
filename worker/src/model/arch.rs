//! What differs per family, as data: one `ArchSpec` per `model_type`, following mlx-lm's class
//! for it (biases, norms, activation, RoPE kind, windows, experts, scalars).

use opta_lmx_shared::model_dir::ModelConfig;

use super::delta::DeltaLayout;
use super::*;

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    /// SwiGLU (Llama, Qwen).
    Silu,
    /// GeGLU with the tanh approximation of GELU (Gemma).
    GeluApprox,
    /// relu(x)^2 without a gate (Nemotron-H).
    Relu2,
}

/// How one supported architecture differs from plain Llama.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ArchSpec {
    /// q/k/v projections carry biases (Qwen2; Llama and Granite when `attention_bias`).
    pub(crate) qkv_bias: bool,
    /// So does the output projection (Llama and Granite when `attention_bias`, not Qwen2).
    pub(crate) o_bias: bool,
    /// The MLP's projections carry biases (`mlp_bias`).
    pub(crate) mlp_bias: bool,
    /// Granite's scalars: embeddings, attention scores, residual branches and logits each
    /// scaled by a config value.
    pub(crate) multipliers: bool,
    /// Per-head RMSNorm of queries and keys before RoPE (Qwen3, Gemma 3).
    pub(crate) qk_norm: bool,
    /// RMSNorm scales by `1 + w` (Gemma).
    pub(crate) norm_offset: bool,
    /// Norms after attention and around the MLP too: four per block (Gemma 2 and 3).
    pub(crate) sandwich_norms: bool,
    pub(crate) activation: Activation,
    /// Embeddings multiplied by sqrt(hidden_size), rounded to bfloat16 as Gemma does.
    pub(crate) scale_embeddings: bool,
    /// Local layers with a sliding window and their own RoPE base, every
    /// `sliding_window_pattern`-th layer global (Gemma 3).
    pub(crate) local_layers: bool,
    /// Tied embeddings exactly when the folder has no `lm_head` (mlx-lm's Gemma `sanitize`).
    pub(crate) tie_by_presence: bool,
    /// Mixture-of-experts MLPs where the config places them (Qwen3 MoE).
    pub(crate) moe: bool,
    /// RoPE from `rope_theta` alone, whatever `rope_scaling` says (mlx-lm's GLM-4.5).
    pub(crate) plain_rope: bool,
    /// Ministral 3: queries scaled by 1 + beta * ln(1 + floor(position / original context))
    /// (`llama_4_scaling_beta`).
    pub(crate) ministral: bool,
    /// Sliding-window layers where `layer_types` says (Ministral 3, gpt-oss).
    pub(crate) typed_windows: bool,
    /// A learned logit per attention head that every softmax also weighs (gpt-oss's sinks).
    pub(crate) sinks: bool,
    /// gpt-oss's experts: a router with a bias whose top-k raw logits are softmaxed, experts
    /// with biases and a clamped SwiGLU, under `mlp.router` and `mlp.experts`.
    pub(crate) oai_moe: bool,
    /// Gated DeltaNet layers between the attention ones (Qwen3-Next, Qwen3.5), stored as
    /// the layout says.
    pub(crate) gated_delta: Option<DeltaLayout>,
    /// Attention scaled by a sigmoid gate that `q_proj` also yields (Qwen3-Next, Qwen3.5).
    pub(crate) output_gate: bool,
    /// OLMo 3: q/k norms over all heads at once, norms after attention and the MLP instead
    /// of before, plain RoPE on the sliding-window layers.
    pub(crate) olmo: bool,
    /// SmolLM3: layers without RoPE where `no_rope_layers` says 0.
    pub(crate) nope_layers: bool,
    /// Multi-head latent attention (DeepSeek-V3, Kimi K2).
    pub(crate) mla: bool,
    /// LFM2: gated short convolutions between attention layers, under its own tensor names.
    pub(crate) short_conv: bool,
    /// Gemma 4: its attention, per-layer inputs and feed-forward parts (see `gemma4`).
    pub(crate) gemma4: bool,
    /// Nemotron-H: one part per block, placed by its pattern (see `nemotron`).
    pub(crate) nemotron: bool,
}

pub(crate) const LLAMA: ArchSpec = ArchSpec {
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
    typed_windows: false,
    sinks: false,
    oai_moe: false,
    gated_delta: None,
    output_gate: false,
    olmo: false,
    nope_layers: false,
    mla: false,
    short_conv: false,
    gemma4: false,
    nemotron: false,
};

/// Which biases and norms each `model_type` has follows mlx-lm's class for it (Qwen3 and Gemma
/// take no biases whatever `attention_bias` says).
pub(crate) fn arch_spec(config: &ModelConfig) -> Result<ArchSpec> {
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
            typed_windows: true,
            ..LLAMA
        }),
        "gpt_oss" => Ok(ArchSpec {
            qkv_bias: true,
            o_bias: true,
            moe: true,
            typed_windows: true,
            sinks: true,
            oai_moe: true,
            ..LLAMA
        }),
        // Qwen3-Next and Qwen3.5/3.6 (dense and MoE): three Gated DeltaNet layers to one
        // gated attention layer with q/k norms and partial RoPE; MoE with a gated shared
        // expert.
        "qwen3_next" | "qwen3_5" | "qwen3_5_moe" => Ok(ArchSpec {
            qkv_bias: bias,
            o_bias: bias,
            qk_norm: true,
            moe: true,
            gated_delta: Some(if config.model_type == "qwen3_next" {
                DeltaLayout::Grouped
            } else {
                DeltaLayout::Split
            }),
            output_gate: true,
            ..LLAMA
        }),
        // DeepSeek-V3, Kimi K2 and GLM-4.7-Flash: latent attention, then (after `first_k_dense_replace`
        // dense layers) experts behind the grouped sigmoid router, with shared experts.
        "deepseek_v3" | "glm4_moe_lite" => Ok(ArchSpec {
            mla: true,
            moe: true,
            ..LLAMA
        }),
        // LFM2: short convolutions and attention with q/k norms and plain RoPE.
        "lfm2" => Ok(ArchSpec {
            qk_norm: true,
            plain_rope: true,
            short_conv: true,
            ..LLAMA
        }),
        "olmo3" => Ok(ArchSpec {
            qkv_bias: bias,
            o_bias: bias,
            qk_norm: true,
            typed_windows: true,
            olmo: true,
            ..LLAMA
        }),
        "smollm3" => Ok(ArchSpec {
            nope_layers: true,
            ..llama
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
        // Gemma 4: Gemma 3's four norms per block and GeGLU, plain norm weights, the rest its
        // own (see `gemma4`).
        // Nemotron-H: Mamba-2, attention, relu² MLP and expert blocks (see `nemotron`).
        "nemotron_h" => Ok(ArchSpec {
            nemotron: true,
            ..LLAMA
        }),
        "gemma4_text" | "gemma4" => Ok(ArchSpec {
            sandwich_norms: true,
            activation: Activation::GeluApprox,
            gemma4: true,
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

#[cfg(test)]
mod tests {
    use super::*;
    use opta_lmx_shared::model_dir::GENERATION_TYPES;

    /// The controller refuses a folder before starting a worker by this list: it must say
    /// exactly what the worker runs.
    #[test]
    fn every_listed_generation_type_has_a_spec() {
        for t in GENERATION_TYPES {
            let config: ModelConfig = serde_json::from_value(serde_json::json!({
                "model_type": t, "hidden_size": 8, "num_hidden_layers": 1,
                "intermediate_size": 8, "num_attention_heads": 1, "vocab_size": 4}))
            .expect("config");
            assert!(arch_spec(&config).is_ok(), "{t}");
        }
        let other: ModelConfig = serde_json::from_value(serde_json::json!({
            "model_type": "mamba", "hidden_size": 8, "num_hidden_layers": 1,
            "intermediate_size": 8, "num_attention_heads": 1, "vocab_size": 4}))
        .expect("config");
        let e = match arch_spec(&other) {
            Ok(_) => panic!("mamba has a spec"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("mamba") && e.contains("deepseek_v3"), "{e}");
    }
}
