//! The transformer: one skeleton for every supported family (Llama, Mistral/Ministral, Phi-3,
//! Granite, Qwen2/3, Qwen3 MoE, GLM-4.5, Gemma 3 and 4, gpt-oss, Qwen3-Next/3.5, DeepSeek-V3, GLM-4.7
//! Flash, LFM2, OLMo 3, SmolLM3, Nemotron-H). Each block has a mixer (softmax attention, latent
//! attention, Gated DeltaNet, a short convolution or Mamba-2), each with its own cache kind, and
//! a feed-forward part (Nemotron-H's blocks have one part only); beyond that the families differ only in data (which biases and norms exist, the
//! activation, how RoPE is scaled, which layers attend through a sliding window, which carry
//! experts and how they are routed), so the differences live in `arch::ArchSpec` and in which
//! tensors the folder holds, not in copies of the forward pass.
//! The arithmetic follows mlx-lm op for op, so that greedy output is token-identical on
//! identical weights.
//!
//! `arch` says what each `model_type` is; `layers`, `rope` and `moe` are the shared parts,
//! `mla`, `delta` and `nemotron` the latent-attention and recurrent mixers, `gemma4` what
//! Gemma 4 adds;
//! `source` builds them from a folder's tensors; this module holds the model and its loaders.

use std::collections::HashMap;
use std::path::Path;

use mlx_rs::error::Exception;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Array;
use opta_lmx_shared::model_dir::ModelConfig;

use crate::cache::LayerCache;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "unsupported model_type {0:?}: supported are {list} and, for embeddings, {encoders}",
        list = opta_lmx_shared::model_dir::GENERATION_TYPES.join(", "),
        encoders = opta_lmx_shared::model_dir::ENCODER_TYPES.join(", ")
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
    #[error("config.json lacks {0}")]
    MissingConfig(&'static str),
    #[error("config.json: {0}")]
    BadConfig(String),
    #[error("a sequence's cache has fewer layers than the model")]
    CacheLayers,
    #[error("cannot split the model for tensor parallelism: {0}")]
    Shard(String),
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

mod arch;
mod delta;
mod gemma4;
mod layers;
mod mla;
mod moe;
mod nemotron;
mod quant;
mod rope;
mod shard;
mod source;

use arch::*;
use delta::hugging_face_hybrid;
pub use layers::Linear;
use layers::*;
use moe::*;
use rope::*;
use shard::reduce;
use source::*;

/// A loaded model, ready to run forward passes.
pub struct Model {
    pub config: ModelConfig,
    pub(crate) embed: Embedding,
    /// Gemma's (and Granite's) embedding multiplier, in the embeddings' dtype.
    pub(crate) embed_scale: Option<f32>,
    /// Granite divides the logits by this.
    pub(crate) logits_scaling: Option<f32>,
    pub(crate) layers: Vec<Block>,
    pub(crate) norm: RmsNorm,
    pub(crate) lm_head: Option<Linear>,
    /// Gemma 4's per-layer input embeddings.
    pub(crate) per_layer_inputs: Option<gemma4::PerLayerInputs>,
    /// Logits soft-capped at this (Gemma 4).
    pub(crate) softcap: Option<f32>,
}

impl Model {
    /// Builds the model from a folder's config and tensors, checking every shape.
    pub fn from_weights(
        config: ModelConfig,
        tensors: HashMap<String, Array>,
        options: LoadOptions,
    ) -> Result<Self> {
        let spec = arch_spec(&config)?;
        let mut tensors = tensors;
        if spec.oai_moe {
            openai_experts(&mut tensors)?;
        }
        if spec.gated_delta.is_some() {
            hugging_face_hybrid(&mut tensors, config.num_hidden_layers)?;
        }
        if spec.mla {
            mla::split_kv_b(&mut tensors, &config)?;
        }
        if spec.short_conv {
            lfm2_names(&mut tensors);
        }
        if spec.gemma4 {
            gemma4::hugging_face_names(&mut tensors)?;
        }
        if spec.nemotron {
            nemotron::names(&mut tensors);
        }
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
        let kv_sources = if spec.gemma4 {
            gemma4::kv_sources(&config)
        } else {
            Vec::new()
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        let kinds = if spec.nemotron {
            nemotron::pattern(&config)?
        } else {
            Vec::new()
        };
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            if let Some(&kind) = kinds.get(i) {
                layers.push(nemotron::block(&mut w, &p, &config, kind)?);
                continue;
            }
            let norm = |w: &mut TensorSource, name: &str, dim: i32| {
                w.norm(&format!("{p}.{name}"), dim, eps)
            };
            // Per head, or over all heads at once (OLMo 3).
            let qk_norm =
                |w: &mut TensorSource, name: &str, heads: i32| -> Result<Option<RmsNorm>> {
                    if spec.qk_norm {
                        let dim = if spec.olmo {
                            heads * head_dim
                        } else {
                            head_dim
                        };
                        Ok(Some(norm(w, &format!("self_attn.{name}"), dim)?))
                    } else {
                        Ok(None)
                    }
                };
            // Gemma 3: every `pattern`-th layer is global; the others attend through a window
            // with their own RoPE base.
            let local = spec.local_layers && i % pattern != pattern - 1;
            // Phi-3.5/4 rotate only a leading part of each head.
            let rope_dims = (head_dim as f32 * config.partial_rotary_factor.unwrap_or(1.0)) as i32;
            let (mut rope, mut window) = if local {
                let base = config.rope_local_base_freq.unwrap_or(10_000.0);
                let window = config.sliding_window.unwrap_or(512) as i32;
                (Rope::plain(head_dim, base), Some(window))
            } else if spec.plain_rope {
                (Rope::plain(rope_dims, config.rope_theta), None)
            } else {
                (Rope::new(&config, rope_dims)?, None)
            };
            if spec.typed_windows {
                // gpt-oss without `layer_types` alternates, sliding first (mlx-lm's default).
                let kind = config.layer_types.as_ref().and_then(|t| t.get(i));
                // OLMo 3 without them: every fourth layer full.
                let sliding = match kind {
                    Some(k) => k == "sliding_attention",
                    None if spec.olmo => !(i + 1).is_multiple_of(4),
                    None => spec.oai_moe && i % 2 == 0,
                };
                if sliding {
                    let default = spec.oai_moe.then_some(128);
                    window = config.sliding_window.or(default).map(|w| w as i32);
                    // OLMo 3's sliding layers rotate unscaled.
                    if spec.olmo {
                        rope = Rope::plain(head_dim, config.rope_theta);
                    }
                }
            }
            // SmolLM3: `no_rope_layers[i]` 0 means no RoPE; by default every fourth layer.
            if spec.nope_layers {
                let uses_rope = match &config.no_rope_layers {
                    Some(flags) => flags.get(i).is_none_or(|&f| f != 0),
                    None => {
                        let every = config.no_rope_layer_interval.unwrap_or(4).max(1);
                        !(i + 1).is_multiple_of(every)
                    }
                };
                if !uses_rope {
                    rope = Rope::none();
                }
            }
            // Qwen3-Next/3.5: Gated DeltaNet layers, every `full_attention_interval`-th one
            // attention.
            let inter = if spec.gemma4 {
                gemma4::mlp_width(&config, i)
            } else {
                inter
            };
            let interval = config.full_attention_interval.unwrap_or(4).max(1);
            let recurrent = spec.gated_delta.is_some() && !(i + 1).is_multiple_of(interval);
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
            // LFM2: short convolutions except where `layer_types` says full attention.
            let conv_layer = spec.short_conv
                && config
                    .layer_types
                    .as_ref()
                    .and_then(|t| t.get(i))
                    .is_some_and(|k| k != "full_attention");
            let mixer = if spec.gemma4 {
                Mixer::Attention(gemma4::attention(
                    &mut w,
                    &format!("{p}.self_attn"),
                    &config,
                    i,
                )?)
            } else if conv_layer {
                Mixer::ShortConv(delta::load_short_conv(
                    &mut w,
                    &format!("{p}.conv"),
                    &config,
                )?)
            } else if spec.mla {
                Mixer::Mla(mla::load(&mut w, &format!("{p}.self_attn"), &config)?)
            } else if let (true, Some(layout)) = (recurrent, spec.gated_delta) {
                Mixer::GatedDelta(delta::load(
                    &mut w,
                    &format!("{p}.linear_attn"),
                    &config,
                    layout,
                )?)
            } else {
                let q_rows = if spec.output_gate { 2 * q_rows } else { q_rows };
                Mixer::Attention(Attention {
                    q_proj: w.linear(
                        &format!("{p}.self_attn.q_proj"),
                        q_rows,
                        hidden,
                        spec.qkv_bias,
                    )?,
                    k_proj: Some(w.linear(
                        &format!("{p}.self_attn.k_proj"),
                        n_kv * head_dim,
                        hidden,
                        spec.qkv_bias,
                    )?),
                    v_proj: Some(w.linear(
                        &format!("{p}.self_attn.v_proj"),
                        n_kv * head_dim,
                        hidden,
                        spec.qkv_bias,
                    )?),
                    o_proj: w.linear(
                        &format!("{p}.self_attn.o_proj"),
                        hidden,
                        n_heads * head_dim,
                        spec.o_bias,
                    )?,
                    q_norm: qk_norm(&mut w, "q_norm", n_heads)?,
                    k_norm: qk_norm(&mut w, "k_norm", n_kv)?,
                    v_norm: None,
                    full_qk_norm: spec.olmo,
                    n_heads,
                    n_kv_heads: n_kv,
                    scale,
                    rope,
                    window,
                    causal: true,
                    query_scale,
                    sinks: if spec.sinks {
                        Some(w.take_shaped(&format!("{p}.self_attn.sinks"), &[n_heads])?)
                    } else {
                        None
                    },
                    output_gate: spec.output_gate,
                    group: None,
                })
            };
            let dense = |w: &mut TensorSource| -> Result<Mlp> {
                let b = spec.mlp_bias;
                Ok(Mlp {
                    gate_proj: Some(w.linear(&format!("{p}.mlp.gate_proj"), inter, hidden, b)?),
                    up_proj: w.linear(&format!("{p}.mlp.up_proj"), inter, hidden, b)?,
                    down_proj: w.linear(&format!("{p}.mlp.down_proj"), hidden, inter, b)?,
                    activation: spec.activation,
                    group: None,
                })
            };
            // Gemma 4's 26B runs its dense MLP and its experts side by side.
            let both = spec.gemma4 && config.experts() > 0;
            let mlp = if both {
                let mlp = dense(&mut w)?;
                FeedForward::DenseAndExperts(Box::new(gemma4::dense_and_experts(
                    &mut w, &p, &config, mlp,
                )?))
            } else if spec.moe && moe_layer(&config, i) {
                FeedForward::Experts(Box::new(w.moe(
                    &format!("{p}.mlp"),
                    &config,
                    spec.oai_moe,
                )?))
            } else {
                FeedForward::Dense(dense(&mut w)?)
            };
            let input_norm = if spec.olmo {
                None
            } else {
                Some(norm(&mut w, "input_layernorm", hidden)?)
            };
            // Gemma's post_attention_layernorm is inside the attention residual; its last norm
            // (post_feedforward_layernorm) takes the Llama post-attention norm's place. OLMo 3
            // has the two without the one before the MLP.
            let (post_attn_norm, sandwich) = if spec.sandwich_norms || spec.olmo {
                let sandwich = SandwichNorms {
                    post_attn: norm(&mut w, "post_attention_layernorm", hidden)?,
                    // Gemma 4's dense-and-experts part norms its own inputs.
                    pre_mlp: if spec.olmo || both {
                        None
                    } else {
                        Some(norm(&mut w, "pre_feedforward_layernorm", hidden)?)
                    },
                    clip: !spec.olmo && !spec.gemma4,
                };
                (
                    norm(&mut w, "post_feedforward_layernorm", hidden)?,
                    Some(sandwich),
                )
            } else {
                (norm(&mut w, "post_attention_layernorm", hidden)?, None)
            };
            let (per_layer, layer_scalar) = if spec.gemma4 {
                (
                    gemma4::PerLayerGate::load(&mut w, &p, &config)?,
                    Some(w.take_shaped(&format!("{p}.layer_scalar"), &[1])?),
                )
            } else {
                (None, None)
            };
            layers.push(Block {
                mixer,
                mlp: Some(mlp),
                input_norm,
                post_attn_norm: Some(post_attn_norm),
                sandwich,
                residual_scale,
                per_layer,
                layer_scalar,
                kv_source: kv_sources.get(i).copied().flatten(),
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
        } else if spec.gemma4 {
            Some((hidden as f32).sqrt())
        } else {
            config.embedding_multiplier.filter(|_| spec.multipliers)
        };
        let logits_scaling = config.logits_scaling.filter(|_| spec.multipliers);
        let per_layer_inputs = if spec.gemma4 {
            gemma4::PerLayerInputs::load(&mut w, &config)?
        } else {
            None
        };
        let softcap = config.final_logit_softcapping.filter(|_| spec.gemma4);
        Ok(Model {
            config,
            embed,
            embed_scale,
            logits_scaling,
            layers,
            norm,
            lm_head,
            per_layer_inputs,
            softcap,
        })
    }

    /// Every token attends to every other in all layers, windows included (EmbeddingGemma as
    /// mlx-embeddings runs it); the embedding scale is sqrt(hidden) in the weights' dtype,
    /// unrounded to bfloat16 as mlx-embeddings computes it. For embedders only: generation
    /// stays causal.
    pub fn make_bidirectional(&mut self) {
        for attn in self
            .layers
            .iter_mut()
            .filter_map(|l| l.mixer.attention_mut())
        {
            attn.causal = false;
            attn.window = None;
        }
        if self.embed_scale.is_some() {
            self.embed_scale = Some((self.config.hidden_size as f32).sqrt());
        }
    }

    /// Whether every token attends only to those before it (all generation models; not
    /// bidirectional embedders).
    pub fn is_causal(&self) -> bool {
        self.layers
            .iter()
            .filter_map(|l| l.mixer.attention())
            .all(|a| a.causal)
    }

    /// Final hidden states ([b, l, hidden]) of a batch of sequences padded at their ends
    /// (`ids` [b, l]), read whole without caches, for embedders. `keys` ([b, 1, 1, l], true for
    /// real tokens) hides the padding from a bidirectional model; a causal one needs none.
    pub fn forward_padded(&self, ids: &Array, keys: Option<&Array>) -> Result<Array> {
        let mut h = self.embed.lookup(ids)?;
        if let Some(scale) = self.embed_scale {
            h = h.multiply(Array::from_f32(scale).as_dtype(h.dtype())?)?;
        }
        for layer in &self.layers {
            h = layer.forward_padded(&h, keys)?;
        }
        self.norm.forward(&h)
    }

    /// Fresh per-layer caches for one sequence.
    pub fn new_cache(&self) -> Vec<LayerCache> {
        self.layers.iter().map(|l| l.mixer.new_cache()).collect()
    }

    /// Whether some layer keeps a recurrent state, which the prompt cache can serve only at
    /// marked positions.
    pub fn has_recurrent_layers(&self) -> bool {
        self.layers.iter().any(|l| {
            matches!(
                l.mixer,
                Mixer::GatedDelta(_) | Mixer::ShortConv(_) | Mixer::Mamba2(_)
            )
        })
    }

    /// Runs `ids` ([1, tokens], int32) of one sequence through the transformer, appending
    /// to `cache`. Returns the final hidden states; call `logits` on the positions that need
    /// them.
    pub fn forward_hidden(&self, ids: &Array, cache: &mut [LayerCache]) -> Result<Array> {
        self.forward_rows(ids, &mut [cache])
    }

    /// One decode step for several sequences: `ids` is [1, n] with one token per sequence,
    /// `caches[i]` the caches of sequence i. Returns [n, vocab] logits.
    pub fn forward_batch(&self, ids: &Array, caches: &mut [&mut [LayerCache]]) -> Result<Array> {
        let h = self.forward_rows(ids, caches)?;
        let logits = self.logits(&h)?;
        let n = logits.shape()[1];
        Ok(logits.reshape(&[n, -1])?)
    }

    /// The transformer over `ids` ([1, n]) with one cache per sequence in `seqs` (see
    /// `Attention::forward` for the two shapes).
    pub(crate) fn forward_rows(
        &self,
        ids: &Array,
        seqs: &mut [&mut [LayerCache]],
    ) -> Result<Array> {
        let mut h = self.embed.lookup(ids)?;
        if let Some(scale) = self.embed_scale {
            h = h.multiply(Array::from_f32(scale).as_dtype(h.dtype())?)?;
        }
        let per_layer = match &self.per_layer_inputs {
            Some(p) => Some(p.forward(ids, &h)?),
            None => None,
        };
        for (i, layer) in self.layers.iter().enumerate() {
            // A KV-shared layer reads the cache of the layer it shares with.
            let at = layer.kv_source.unwrap_or(i);
            let mut caches: Vec<&mut LayerCache> = seqs
                .iter_mut()
                .map(|seq| seq.get_mut(at).ok_or(ModelError::CacheLayers))
                .collect::<Result<_>>()?;
            let input = per_layer.as_ref().map(|p| p.index((.., .., i as i32, ..)));
            h = layer.forward(&h, &mut caches, input.as_ref())?;
        }
        self.norm.forward(&h)
    }

    /// Vocabulary logits for hidden states.
    pub fn logits(&self, hidden: &Array) -> Result<Array> {
        let logits = match &self.lm_head {
            Some(head) => head.forward(hidden)?,
            None => self.embed.as_linear(hidden)?,
        };
        let logits = match self.logits_scaling {
            Some(s) => logits.divide(Array::from_f32(s).as_dtype(logits.dtype())?)?,
            None => logits,
        };
        match self.softcap {
            Some(cap) => gemma4::softcap(&logits, cap),
            None => Ok(logits),
        }
    }

    /// Logits of the last position of `ids` ([1, n]): the next-token distribution.
    pub fn forward_last(&self, ids: &Array, cache: &mut [LayerCache]) -> Result<Array> {
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
            out.extend(l.arrays());
        }
        let mut out = Vec::new();
        lin(&self.embed.table, &mut out);
        if let Some(p) = &self.per_layer_inputs {
            out.extend(p.arrays());
        }
        if let Some(h) = &self.lm_head {
            lin(h, &mut out);
        }
        out.push(&self.norm.weight);
        for l in &self.layers {
            match &l.mixer {
                Mixer::Attention(a) => {
                    for x in [Some(&a.q_proj), a.k_proj.as_ref(), a.v_proj.as_ref()]
                        .into_iter()
                        .flatten()
                        .chain([&a.o_proj])
                    {
                        lin(x, &mut out);
                    }
                    for n in [&a.q_norm, &a.k_norm].into_iter().flatten() {
                        out.push(&n.weight);
                    }
                    out.extend(&a.sinks);
                }
                Mixer::GatedDelta(d) => out.extend(d.arrays()),
                Mixer::Mla(m) => out.extend(m.arrays()),
                Mixer::ShortConv(c) => out.extend(c.arrays()),
                Mixer::Mamba2(m) => out.extend(m.arrays()),
                Mixer::FeedForward(FeedForward::Dense(m)) => out.extend(m.arrays()),
                Mixer::FeedForward(FeedForward::Experts(m)) => out.extend(m.arrays()),
                Mixer::FeedForward(FeedForward::DenseAndExperts(m)) => out.extend(m.arrays()),
            }
            match l.mlp.as_ref() {
                Some(FeedForward::Dense(m)) => out.extend(m.arrays()),
                Some(FeedForward::Experts(m)) => out.extend(m.arrays()),
                Some(FeedForward::DenseAndExperts(both)) => out.extend(both.arrays()),
                None => {}
            }
            if let Some(g) = &l.per_layer {
                out.extend(g.arrays());
            }
            out.extend(&l.layer_scalar);
            out.extend(l.input_norm.as_ref().map(|n| &n.weight));
            out.extend(l.post_attn_norm.as_ref().map(|n| &n.weight));
            if let Some(n) = &l.sandwich {
                out.push(&n.post_attn.weight);
                out.extend(n.pre_mlp.as_ref().map(|n| &n.weight));
            }
        }
        out
    }
}

/// LFM2's tensor names as the shared layers call them.
fn lfm2_names(tensors: &mut HashMap<String, Array>) {
    const RENAMES: [(&str, &str); 8] = [
        (".operator_norm.", ".input_layernorm."),
        (".ffn_norm.", ".post_attention_layernorm."),
        (".feed_forward.w1.", ".mlp.gate_proj."),
        (".feed_forward.w3.", ".mlp.up_proj."),
        (".feed_forward.w2.", ".mlp.down_proj."),
        (".self_attn.out_proj.", ".self_attn.o_proj."),
        (".self_attn.q_layernorm.", ".self_attn.q_norm."),
        (".self_attn.k_layernorm.", ".self_attn.k_norm."),
    ];
    let renamed = std::mem::take(tensors)
        .into_iter()
        .map(|(k, v)| {
            let mut k = k.replace("model.embedding_norm.", "model.norm.");
            for (from, to) in RENAMES {
                k = k.replace(from, to);
            }
            (k, v)
        })
        .collect();
    *tensors = renamed;
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
