//! What one sequence's cache takes, layer by layer, as the worker stores it (`worker/src/cache.rs`
//! and the mixers in `worker/src/model/`). The controller's memory guard multiplies it by the
//! sequences a worker may run; the worker could report the same figure.
//!
//! Per layer, by kind, for a sequence that reached `positions` positions:
//! - attention: keys and values, `2 * kv_heads * head_dim` values per position; the buffer grows
//!   in steps of [`STEP`], and a sliding-window layer keeps at most `window - 1 + SLACK` old
//!   positions plus the largest single append (a prefill chunk);
//! - latent attention (DeepSeek-V3, Kimi K2, GLM-4.7-Flash): `kv_lora_rank + qk_rope_head_dim`
//!   values per position (the normed latent and the shared rotary key);
//! - Gated DeltaNet (Qwen3-Next/3.5): a fixed state whatever the length, the convolution's last
//!   `kernel - 1` inputs plus float32 matrices `[heads, value_dim, key_dim]`;
//! - Mamba-2 (Nemotron-H): the same shape of state, `[heads, head_dim, ssm_state_size]`;
//! - short convolution (LFM2): the last `kernel - 1` inputs only;
//! - Nemotron-H's MLP and expert blocks: nothing;
//! - KV-shared layers (Gemma 4's last `num_kv_shared_layers`): nothing.
//!
//! With the prompt cache on, a recurrent layer also keeps an earlier state at the end of each
//! prefill chunk, up to [`MAX_SNAPSHOTS`].

use crate::model_dir::ModelConfig;

/// A cache buffer grows by this many positions at a time (the worker's `cache::STEP`).
pub const STEP: u64 = 256;
/// Positions a windowed cache keeps beyond what its window needs (the worker's `cache::SLACK`).
pub const SLACK: u64 = 256;
/// Earlier states a recurrent layer keeps for the prompt cache (`cache::MAX_SNAPSHOTS`).
pub const MAX_SNAPSHOTS: u64 = 8;
/// Positions counted for a config without `max_position_embeddings`: the worker then sets no
/// limit at all, and a common trained context is a better guess than refusing the model.
pub const UNKNOWN_CONTEXT: u64 = 32_768;

/// What one layer caches, with the sizes that decide how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCache {
    /// Keys and values per position; `window` for a sliding-window layer.
    Attention {
        kv_heads: u64,
        head_dim: u64,
        window: Option<u64>,
    },
    /// One latent of `width` values per position (keys and values both read it).
    Latent { width: u64 },
    /// Gated DeltaNet or Mamba-2: a convolution over `channels` and a float32 state
    /// `[heads, value_dim, key_dim]` (Mamba-2: `[heads, head_dim, state_size]`).
    Recurrent {
        channels: u64,
        kernel: u64,
        heads: u64,
        key_dim: u64,
        value_dim: u64,
    },
    /// LFM2's short convolution over `channels`.
    ShortConv { channels: u64, kernel: u64 },
    /// Holds nothing: attends over an earlier layer's cache (Gemma 4), or has no mixer that
    /// looks across positions (Nemotron-H's MLP and expert blocks).
    Shared,
}

/// How far a sequence goes and how its cache is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceShape {
    /// Positions the sequence may reach (its context).
    pub positions: u64,
    /// Bytes per cached value: the activations' dtype.
    pub dtype_bytes: u64,
    /// The most positions appended at once (the prefill chunk), which a windowed cache makes
    /// room for beyond its window.
    pub largest_append: u64,
    /// Whether recurrent layers keep snapshots (the prompt cache is on).
    pub snapshots: bool,
}

/// The product of sizes read from a config, saturating rather than overflowing on absurd ones.
fn product(sizes: &[u64]) -> u64 {
    sizes.iter().fold(1, |acc, &x| acc.saturating_mul(x))
}

fn round_up(n: u64, step: u64) -> u64 {
    n.div_ceil(step).saturating_mul(step)
}

impl LayerCache {
    /// Bytes this layer's cache holds for one sequence shaped as `s`.
    pub fn bytes(&self, s: &SequenceShape) -> u64 {
        let full = round_up(s.positions, STEP);
        // The live state, plus one snapshot per prefill chunk (at most `MAX_SNAPSHOTS`) that the
        // prompt cache may keep.
        let chunks = s.positions.div_ceil(s.largest_append.max(1));
        let states = if s.snapshots {
            1 + chunks.min(MAX_SNAPSHOTS)
        } else {
            1
        };
        match *self {
            LayerCache::Attention {
                kv_heads,
                head_dim,
                window,
            } => {
                let held = match window {
                    Some(w) => full.min(windowed_capacity(w, s.largest_append)),
                    None => full,
                };
                product(&[2, kv_heads, head_dim, held, s.dtype_bytes])
            }
            LayerCache::Latent { width } => product(&[width, full, s.dtype_bytes]),
            LayerCache::Recurrent {
                channels,
                kernel,
                heads,
                key_dim,
                value_dim,
            } => {
                let conv = product(&[kernel.saturating_sub(1), channels, s.dtype_bytes]);
                let state = product(&[heads, value_dim, key_dim, 4]);
                states.saturating_mul(conv.saturating_add(state))
            }
            LayerCache::ShortConv { channels, kernel } => {
                product(&[states, kernel.saturating_sub(1), channels, s.dtype_bytes])
            }
            LayerCache::Shared => 0,
        }
    }
}

/// The largest buffer a windowed cache grows to: it drops all but `window - 1 + SLACK` positions
/// when it grows, then makes room for the append in whole steps.
fn windowed_capacity(window: u64, largest_append: u64) -> u64 {
    window
        .saturating_sub(1)
        .saturating_add(SLACK)
        .saturating_add(round_up(largest_append.max(1), STEP))
}

/// Bytes one sequence's cache holds across all layers of `config`.
pub fn sequence_bytes(config: &ModelConfig, s: &SequenceShape) -> u64 {
    (0..config.num_hidden_layers).fold(0, |sum, i| sum.saturating_add(layer(config, i).bytes(s)))
}

/// Positions a sequence may reach: the worker refuses prompts at `max_position_embeddings` and
/// stops generating there.
pub fn context(config: &ModelConfig) -> u64 {
    config
        .max_position_embeddings
        .map_or(UNKNOWN_CONTEXT, |n| n as u64)
}

/// Bytes per cached value. The cache holds projections of the activations, so it takes their
/// dtype: float32 where `cpu_float32` (a CPU worker runs a quantized model with float32 weights
/// or scales, so its matmuls give float32), else the model's own float dtype (bf16 or f16 unless
/// `torch_dtype` says float32).
pub fn dtype_bytes(config: &ModelConfig, cpu_float32: bool) -> u64 {
    let float32 = config.torch_dtype.as_deref() == Some("float32");
    if cpu_float32 || float32 {
        4
    } else {
        2
    }
}

/// Each layer's cache, as the worker builds its mixers for `config.model_type`.
pub fn layers(config: &ModelConfig) -> Vec<LayerCache> {
    (0..config.num_hidden_layers)
        .map(|i| layer(config, i))
        .collect()
}

/// Layer `i`'s cache (the worker's `mod.rs` places the kinds so).
pub fn layer(config: &ModelConfig, i: usize) -> LayerCache {
    match config.model_type.as_str() {
        "gemma4" | "gemma4_text" => gemma4_layer(config, i),
        "gemma3" | "gemma3_text" => attention(config, gemma3_window(config, i)),
        "deepseek_v3" | "glm4_moe_lite" => latent(config),
        "qwen3_next" | "qwen3_5" | "qwen3_5_moe" => hybrid_layer(config, i),
        "lfm2" => lfm2_layer(config, i),
        "nemotron_h" => nemotron_layer(config, i),
        "ministral3" | "gpt_oss" | "olmo3" => attention(config, typed_window(config, i)),
        _ => attention(config, None),
    }
}

fn n(v: usize) -> u64 {
    v as u64
}

/// A plain attention layer (`num_key_value_heads` heads of `head_dim`).
fn attention(config: &ModelConfig, window: Option<u64>) -> LayerCache {
    LayerCache::Attention {
        kv_heads: n(config.num_kv_heads()),
        head_dim: n(config.head_dim()),
        window,
    }
}

/// Gemma 3: every `sliding_window_pattern`-th layer is global, the others local.
fn gemma3_window(config: &ModelConfig, i: usize) -> Option<u64> {
    let pattern = config.sliding_window_pattern.unwrap_or(6).max(1);
    let local = i % pattern != pattern - 1;
    local.then(|| n(config.sliding_window.unwrap_or(512)))
}

/// Ministral 3, gpt-oss and OLMo 3: sliding where `layer_types` says; without them gpt-oss
/// alternates (sliding first, window 128 by default) and OLMo 3 has every fourth layer full.
fn typed_window(config: &ModelConfig, i: usize) -> Option<u64> {
    let gpt_oss = config.model_type == "gpt_oss";
    let sliding = match config.layer_types.as_ref().and_then(|t| t.get(i)) {
        Some(k) => k == "sliding_attention",
        None if config.model_type == "olmo3" => !(i + 1).is_multiple_of(4),
        None => gpt_oss && i.is_multiple_of(2),
    };
    let default = gpt_oss.then_some(128);
    sliding
        .then(|| config.sliding_window.or(default).map(n))
        .flatten()
}

/// DeepSeek-V3's latent: `kv_lora_rank` plus the rotary key's `qk_rope_head_dim`.
fn latent(config: &ModelConfig) -> LayerCache {
    let width =
        n(config.kv_lora_rank.unwrap_or(0)).saturating_add(n(config.qk_rope_head_dim.unwrap_or(0)));
    LayerCache::Latent { width }
}

/// Qwen3-Next/3.5: Gated DeltaNet, every `full_attention_interval`-th layer attention.
fn hybrid_layer(config: &ModelConfig, i: usize) -> LayerCache {
    let interval = config.full_attention_interval.unwrap_or(4).max(1);
    if (i + 1).is_multiple_of(interval) {
        return attention(config, None);
    }
    let (nk, nv) = (
        n(config.linear_num_key_heads.unwrap_or(0)),
        n(config.linear_num_value_heads.unwrap_or(0)),
    );
    let (dk, dv) = (
        n(config.linear_key_head_dim.unwrap_or(0)),
        n(config.linear_value_head_dim.unwrap_or(0)),
    );
    LayerCache::Recurrent {
        // The convolution runs over q, k and v together.
        channels: 2 * nk * dk + nv * dv,
        kernel: n(config.linear_conv_kernel_dim.unwrap_or(4)),
        heads: nv,
        key_dim: dk,
        value_dim: dv,
    }
}

/// Nemotron-H: Mamba-2 at `M`, attention at `*`; its MLP and expert blocks keep nothing.
fn nemotron_layer(config: &ModelConfig, i: usize) -> LayerCache {
    match config
        .block_pattern
        .as_deref()
        .and_then(|p| p.chars().nth(i))
    {
        Some('M') => {
            let heads = n(config.mamba_num_heads.unwrap_or(0));
            let head_dim = n(config.mamba_head_dim.unwrap_or(0));
            let state = n(config.ssm_state_size.unwrap_or(0));
            let groups = n(config.n_groups.unwrap_or(0));
            LayerCache::Recurrent {
                // The convolution runs over x, B and C together.
                channels: heads * head_dim + 2 * groups * state,
                kernel: n(config.conv_kernel.unwrap_or(4)),
                heads,
                key_dim: state,
                value_dim: head_dim,
            }
        }
        Some('*') => attention(config, None),
        _ => LayerCache::Shared,
    }
}

/// LFM2: short convolutions except where `layer_types` says full attention.
fn lfm2_layer(config: &ModelConfig, i: usize) -> LayerCache {
    let conv = config
        .layer_types
        .as_ref()
        .and_then(|t| t.get(i))
        .is_some_and(|k| k != "full_attention");
    if conv {
        LayerCache::ShortConv {
            channels: n(config.hidden_size),
            kernel: n(config.conv_l_cache.unwrap_or(3)),
        }
    } else {
        attention(config, None)
    }
}

/// Gemma 4's sliding layers: from `layer_types`, else all but every
/// `sliding_window_pattern`-th.
fn gemma4_sliding(config: &ModelConfig, i: usize) -> bool {
    match config.layer_types.as_ref().and_then(|t| t.get(i)) {
        Some(kind) => kind == "sliding_attention",
        None => {
            let pattern = config.sliding_window_pattern.unwrap_or(5).max(1);
            !(i + 1).is_multiple_of(pattern)
        }
    }
}

/// Gemma 4: the last `num_kv_shared_layers` layers hold nothing; global layers have their own
/// head size and, with `attention_k_eq_v`, their own key-value heads (values stay a separate
/// buffer: they are normed apart from the keys).
fn gemma4_layer(config: &ModelConfig, i: usize) -> LayerCache {
    let layers = config.num_hidden_layers;
    let first_shared = layers - config.num_kv_shared_layers.unwrap_or(0).min(layers);
    if i >= first_shared {
        return LayerCache::Shared;
    }
    let local = gemma4_sliding(config, i);
    let head_dim = match config.global_head_dim {
        Some(d) if !local && d > 0 => d,
        _ => config.head_dim(),
    };
    let k_eq_v = config.attention_k_eq_v.unwrap_or(false) && !local;
    let kv_heads = match config.num_global_key_value_heads {
        Some(h) if k_eq_v => h,
        _ => config.num_kv_heads(),
    };
    LayerCache::Attention {
        kv_heads: n(kv_heads),
        head_dim: n(head_dim),
        window: local.then(|| n(config.sliding_window.unwrap_or(512))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_dir;
    use std::path::Path;

    fn config(json: serde_json::Value) -> ModelConfig {
        serde_json::from_value(json).expect("config")
    }

    fn shape(positions: u64, dtype_bytes: u64, snapshots: bool) -> SequenceShape {
        SequenceShape {
            positions,
            dtype_bytes,
            largest_append: 2048,
            snapshots,
        }
    }

    /// A tiny test model's config through `read_config`, as the controller reads it; None
    /// where this checkout has no models installed.
    fn tiny(name: &str) -> Option<ModelConfig> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../.deps/models/opta")
            .join(name);
        if !dir.join("config.json").exists() {
            eprintln!("skipped: {} is not installed", dir.display());
            return None;
        }
        Some(model_dir::read_config(&dir).expect("tiny config"))
    }

    /// Llama-3-8B: 32 layers of 8 KV heads of 128 in bf16 are 32 * 2 * 8 * 128 * 2 = 128 KiB a
    /// position; its 8192 positions take 1 GiB.
    #[test]
    fn llama_counts_keys_and_values_per_position_in_every_layer() {
        let c = config(serde_json::json!({
            "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
            "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
            "vocab_size": 128256, "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}));
        assert_eq!(context(&c), 8192);
        assert_eq!(dtype_bytes(&c, false), 2);
        assert_eq!(dtype_bytes(&c, true), 4);
        assert_eq!(sequence_bytes(&c, &shape(8192, 2, true)), 1 << 30);
        // 100 positions still take a whole step of 256.
        assert_eq!(sequence_bytes(&c, &shape(100, 2, true)), 256 * 128 * 1024);
    }

    /// Gemma 3 with a 1024 window, every sixth layer global: of 62 layers 10 are global
    /// (i = 5, 11, ..., 59). A position is 2 * 16 * 128 * 2 = 8 KiB per layer; a global layer
    /// holds all 131072 (1 GiB), a local one at most 1023 + 256 + 2048 = 3327.
    #[test]
    fn gemma3_local_layers_hold_only_their_window() {
        let c = config(serde_json::json!({
            "model_type": "gemma3", "hidden_size": 5376, "num_hidden_layers": 62,
            "intermediate_size": 21504, "num_attention_heads": 32, "num_key_value_heads": 16,
            "head_dim": 128, "vocab_size": 262208, "max_position_embeddings": 131072,
            "sliding_window": 1024, "sliding_window_pattern": 6}));
        let kinds = layers(&c);
        let global = kinds
            .iter()
            .filter(|l| matches!(l, LayerCache::Attention { window: None, .. }));
        assert_eq!(global.count(), 10);
        let per_position = 2 * 16 * 128 * 2;
        assert_eq!(
            sequence_bytes(&c, &shape(131_072, 2, true)),
            10 * 131_072 * per_position + 52 * 3327 * per_position
        );
        assert_eq!(sequence_bytes(&c, &shape(131_072, 2, true)), 12_154_667_008);
    }

    /// The tiny Gemma 3: layers 0 and 2 local (window 8), 1 and 3 global; 2 heads of 32 in
    /// float32 are 512 bytes a position. At 100,000 positions (rounded to 100,096) the global
    /// layers take 51,249,152 bytes each, the local ones 7 + 256 + 2048 = 2311 positions.
    #[test]
    fn tiny_gemma3_through_read_config() {
        let Some(c) = tiny("tiny-random-gemma3") else {
            return;
        };
        assert_eq!(dtype_bytes(&c, false), 4);
        assert_eq!(
            sequence_bytes(&c, &shape(100_000, 4, false)),
            2 * 100_096 * 512 + 2 * 2311 * 512
        );
        // Its own context, 2048, is shorter than the window's cap: every layer holds it all.
        assert_eq!(sequence_bytes(&c, &shape(context(&c), 4, false)), 4 << 20);
    }

    /// Tiny Qwen3.5: layers 1 and 3 attention (512 bytes a position), 0 and 2 Gated DeltaNet:
    /// a convolution over 2*2*32 + 4*16 = 192 channels keeping 3 inputs (2304 bytes) and four
    /// 16x32 float32 matrices (8192 bytes), 10,496 bytes whatever the length; with the prompt
    /// cache, one snapshot more per 2048-token prefill chunk, up to eight.
    #[test]
    fn qwen35_recurrent_layers_count_a_fixed_state() {
        let Some(c) = tiny("tiny-random-qwen3.5") else {
            return;
        };
        assert_eq!(context(&c), 4096);
        let recurrent = 2 * 10_496;
        assert_eq!(
            sequence_bytes(&c, &shape(4096, 4, false)),
            2 * 4096 * 512 + recurrent
        );
        assert_eq!(
            sequence_bytes(&c, &shape(256, 4, false)),
            2 * 256 * 512 + recurrent
        );
        assert_eq!(
            sequence_bytes(&c, &shape(4096, 4, true)),
            2 * 4096 * 512 + 3 * recurrent
        );
        assert_eq!(
            sequence_bytes(&c, &shape(100_000, 4, true)),
            2 * 100_096 * 512 + 9 * recurrent
        );
    }

    /// Tiny Nemotron-H (`M*-ME`): two Mamba-2 layers (each a convolution over 8*16 + 2*2*16 =
    /// 192 channels keeping 3 inputs, 2304 bytes, and 8 float32 states of 16x16, 8192 bytes),
    /// one attention layer (2 KV heads of 32: 512 bytes a position in float32), the rest
    /// nothing.
    #[test]
    fn nemotron_h_counts_mamba_state_and_attention_only() {
        let Some(c) = tiny("tiny-random-nemotron-h") else {
            return;
        };
        assert_eq!(
            sequence_bytes(&c, &shape(4096, 4, false)),
            4096 * 512 + 2 * (2304 + 8192)
        );
    }

    /// A Qwen3.5-27B-like hybrid: 64 layers, 16 of them attention (4 KV heads of 256: 4 KiB a
    /// position in bf16), 48 Gated DeltaNet with 48 value heads of 128x128 float32 (3 MiB) and a
    /// convolution over 2*16*128 + 48*128 = 10,240 channels keeping 3 (61,440 bytes).
    #[test]
    fn a_large_hybrid_is_dominated_by_its_few_attention_layers() {
        let c = config(serde_json::json!({
            "model_type": "qwen3_5", "hidden_size": 5120, "num_hidden_layers": 64,
            "intermediate_size": 17408, "num_attention_heads": 24, "num_key_value_heads": 4,
            "head_dim": 256, "vocab_size": 248320, "max_position_embeddings": 262144,
            "full_attention_interval": 4, "linear_num_key_heads": 16,
            "linear_num_value_heads": 48, "linear_key_head_dim": 128,
            "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4}));
        let state = 48 * 128 * 128 * 4 + 3 * 10_240 * 2;
        assert_eq!(
            sequence_bytes(&c, &shape(262_144, 2, false)),
            16 * 262_144 * 4096 + 48 * state
        );
    }

    /// DeepSeek-V3: a 512-wide latent plus a 64-wide rotary key, 1152 bytes a position per
    /// layer in bf16, whatever its 128 heads; 61 layers at 163,840 positions.
    #[test]
    fn deepseek_v3_caches_the_latent_only() {
        let c = config(serde_json::json!({
            "model_type": "deepseek_v3", "hidden_size": 7168, "num_hidden_layers": 61,
            "intermediate_size": 18432, "num_attention_heads": 128,
            "num_key_value_heads": 128, "vocab_size": 129280,
            "max_position_embeddings": 163840, "kv_lora_rank": 512, "q_lora_rank": 1536,
            "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128}));
        assert_eq!(layers(&c)[0], LayerCache::Latent { width: 576 });
        assert_eq!(
            sequence_bytes(&c, &shape(163_840, 2, true)),
            61 * 163_840 * 1152
        );
        assert_eq!(sequence_bytes(&c, &shape(163_840, 2, true)), 11_513_364_480);
    }

    /// Tiny DeepSeek-V3: 32 + 16 float32 values, 192 bytes a position in each of 3 layers.
    #[test]
    fn tiny_deepseek_v3_through_read_config() {
        let Some(c) = tiny("tiny-random-deepseek-v3") else {
            return;
        };
        assert_eq!(sequence_bytes(&c, &shape(4096, 4, false)), 3 * 4096 * 192);
    }

    /// Tiny Gemma 4: 6 layers, every third global (2 and 5), the last 2 KV-shared (4 and 5 hold
    /// nothing). Sliding layers 0, 1 and 3: 2 heads of 32 (512 bytes a position, at most
    /// 7 + 256 + 2048 = 2311 positions); global layer 2: 2 heads of `global_head_dim` 64 (1024
    /// bytes), all 4096 positions.
    #[test]
    fn gemma4_kv_shared_layers_hold_nothing() {
        let Some(c) = tiny("tiny-random-gemma4") else {
            return;
        };
        let kinds = layers(&c);
        assert_eq!(&kinds[4..], &[LayerCache::Shared, LayerCache::Shared]);
        assert_eq!(
            sequence_bytes(&c, &shape(4096, 4, false)),
            3 * 2311 * 512 + 4096 * 1024
        );
        assert_eq!(sequence_bytes(&c, &shape(4096, 4, false)), 7_744_000);
    }

    /// Gemma 4 with `attention_k_eq_v`: global layers use `num_global_key_value_heads` (4 of
    /// 512), sliding ones `num_key_value_heads` (16 of 256, window 1024). Layers 0-9: global at
    /// 4 and 9 (pattern 5); the last 4 (6-9) are shared, so one global layer and five sliding
    /// ones hold a cache.
    #[test]
    fn gemma4_global_layers_use_their_own_heads() {
        let c = config(serde_json::json!({
            "model_type": "gemma4_text", "hidden_size": 1024, "num_hidden_layers": 10,
            "intermediate_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 16,
            "head_dim": 256, "global_head_dim": 512, "num_global_key_value_heads": 4,
            "attention_k_eq_v": true, "num_kv_shared_layers": 4, "sliding_window": 1024,
            "sliding_window_pattern": 5, "vocab_size": 1024,
            "max_position_embeddings": 65536}));
        let global = 2 * 4 * 512 * 2 * 65_536;
        let sliding = 2 * 16 * 256 * 2 * (1023 + 256 + 2048);
        assert_eq!(
            sequence_bytes(&c, &shape(65_536, 2, false)),
            global + 5 * sliding
        );
    }

    /// LFM2: conv layers keep `conv_L_cache - 1` = 2 inputs of 128 float32 (1 KiB); the one
    /// attention layer 2 heads of 32 (512 bytes a position).
    #[test]
    fn lfm2_conv_layers_keep_their_last_inputs() {
        let Some(c) = tiny("tiny-random-lfm2") else {
            return;
        };
        assert_eq!(
            sequence_bytes(&c, &shape(4096, 4, false)),
            3 * 1024 + 4096 * 512
        );
    }

    /// gpt-oss: `layer_types` places the 8-wide window on layer 0; layer 1 is full.
    #[test]
    fn gpt_oss_windows_follow_layer_types() {
        let Some(c) = tiny("tiny-random-gpt-oss") else {
            return;
        };
        assert_eq!(
            sequence_bytes(&c, &shape(100_000, 4, false)),
            2311 * 512 + 100_096 * 512
        );
    }

    #[test]
    fn no_context_in_the_config_counts_the_fallback() {
        let c = config(serde_json::json!({
            "model_type": "llama", "hidden_size": 8, "num_hidden_layers": 1,
            "intermediate_size": 8, "num_attention_heads": 1, "vocab_size": 4}));
        assert_eq!(context(&c), UNKNOWN_CONTEXT);
    }
}
