//! Sentence embeddings as sentence-transformers defines them: a network's last hidden states,
//! pooled (mean over real tokens, the `[CLS]` token, or the last token, from
//! `1_Pooling/config.json`) and L2-normalised when `modules.json` lists a `Normalize` module.
//! The network is a BERT-style encoder (`bert`, `xlm_roberta`) or a decoder of our own
//! transformer (Qwen3-Embedding, causal; EmbeddingGemma, bidirectional); either reads a
//! request's inputs in one forward pass, padded to the longest.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use mlx_rs::fast::{self, ScaledDotProductAttentionMask};
use mlx_rs::ops::{self, indexing::IndexOp};
use mlx_rs::transforms::eval;
use mlx_rs::{Array, Dtype};
use opta_lmx_shared::model_dir::{self, Pooling};
use serde::Deserialize;

use crate::model::{Linear, LoadOptions};
use crate::weights;

use crate::model::Result;

#[derive(Debug, Deserialize)]
struct BertConfig {
    hidden_size: i32,
    num_hidden_layers: usize,
    num_attention_heads: i32,
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f32,
    #[serde(default)]
    pad_token_id: Option<u32>,
}

fn default_eps() -> f32 {
    1e-12
}

struct LayerNorm {
    weight: Array,
    bias: Array,
    eps: f32,
}

impl LayerNorm {
    fn forward(&self, x: &Array) -> Result<Array> {
        Ok(fast::layer_norm(x, &self.weight, &self.bias, self.eps)?)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
}

/// Why an input cannot be embedded; `index` is its place in the request.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("input[{index}] has {tokens} tokens, more than the model's {limit}")]
    TooLong {
        index: usize,
        tokens: usize,
        limit: usize,
    },
    #[error("input[{index}] is empty")]
    Empty { index: usize },
    #[error("input[{index}]: token id {id} is outside the vocabulary ({vocab})")]
    BadToken { index: usize, id: u32, vocab: usize },
    #[error("{0}")]
    Engine(String),
}

/// One input: text (tokenized with the model's special tokens) or token ids as given.
pub enum Input<'a> {
    Text(&'a str),
    Tokens(&'a [u32]),
}

/// A BERT-style encoder's weights.
struct Bert {
    word: Array,
    position: Array,
    token_type: Array,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: i32,
    head_dim: i32,
    pad_id: u32,
    /// The position of the first token: XLM-RoBERTa counts from `pad_token_id + 1`.
    first_position: i32,
}

/// The network whose hidden states are pooled.
enum Network {
    Bert(Bert),
    Decoder(Box<crate::model::Model>),
}

/// A sentence-transformers `Dense` module applied after pooling.
struct Dense {
    linear: Linear,
    tanh: bool,
}

/// A loaded embedding model and its tokenizer.
pub struct Encoder {
    pub model_type: String,
    network: Network,
    pooling: Pooling,
    dense: Vec<Dense>,
    normalize: bool,
    /// The longest input, in tokens.
    pub max_tokens: usize,
    pub vocab_size: usize,
    pub num_layers: usize,
    pub dims: usize,
    pub weights_bytes: usize,
    tokenizer: tokenizers::Tokenizer,
}

impl Encoder {
    /// Loads an embedding model's folder and runs one forward pass.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let model_type = model_dir::read_config(dir)?.model_type;
        let (pooling, normalize) =
            model_dir::sentence_pooling(dir).unwrap_or((Pooling::Mean, false));
        let tokenizer = crate::tokenizer::read_tokenizer_file(&dir.join("tokenizer.json"))?;
        let (network, vocab_size, dims, num_layers, context) =
            if model_dir::ENCODER_TYPES.contains(&model_type.as_str()) {
                let (bert, config) = Bert::load(dir)?;
                let vocab = bert.word.shape()[0] as usize;
                let layers = bert.layers.len();
                let context = config
                    .max_position_embeddings
                    .saturating_sub(bert.first_position as usize);
                (
                    Network::Bert(bert),
                    vocab,
                    config.hidden_size as usize,
                    layers,
                    context,
                )
            } else {
                let model = crate::model::load_embedder(dir, LoadOptions::for_this_machine())?;
                let c = &model.config;
                let facts = (c.vocab_size, c.hidden_size, c.num_hidden_layers);
                let context = c.max_position_embeddings.unwrap_or(usize::MAX);
                (
                    Network::Decoder(Box::new(model)),
                    facts.0,
                    facts.1,
                    facts.2,
                    context,
                )
            };
        let max_tokens = model_dir::max_seq_length(dir)
            .unwrap_or(context)
            .min(context);
        let mut dense = Vec::new();
        for module in model_dir::sentence_dense_modules(dir)? {
            let mut t = Tensors(weights::load(&module.path)?.tensors);
            let weight = t.take("linear.weight")?;
            let bias = t.0.remove("linear.bias");
            dense.push(Dense {
                linear: Linear::Dense { weight, bias },
                tanh: module.tanh,
            });
        }
        // The vectors have the last Dense module's width.
        let dims = match dense.last().map(|d| &d.linear) {
            Some(Linear::Dense { weight, .. }) => weight.shape()[0] as usize,
            _ => dims,
        };
        let mut encoder = Encoder {
            model_type,
            network,
            pooling,
            dense,
            normalize,
            max_tokens,
            vocab_size,
            num_layers,
            dims,
            // Summed from the arrays below.
            weights_bytes: 0,
            tokenizer,
        };
        encoder.weights_bytes = encoder.arrays().iter().map(|a| a.nbytes()).sum();
        eval(encoder.arrays()).context("reading the weights")?;
        let warm = encoder.forward(&[vec![0]])?;
        eval([&warm]).context("warm-up forward pass")?;
        Ok(encoder)
    }

    fn arrays(&self) -> Vec<&Array> {
        let mut out = match &self.network {
            Network::Bert(bert) => bert.arrays(),
            Network::Decoder(model) => model.arrays(),
        };
        for d in &self.dense {
            if let Linear::Dense { weight, bias } = &d.linear {
                out.push(weight);
                out.extend(bias);
            }
        }
        out
    }

    /// The token ids of each input, checked against the model's limits.
    pub fn tokenize(&self, inputs: &[Input]) -> std::result::Result<Vec<Vec<u32>>, EmbedError> {
        let mut out = Vec::with_capacity(inputs.len());
        for (index, input) in inputs.iter().enumerate() {
            let ids = match input {
                // Empty text is fine (its special tokens are embedded, as sentence-transformers
                // does); no ids at all leave nothing to pool.
                Input::Tokens([]) => return Err(EmbedError::Empty { index }),
                Input::Text(text) => self
                    .tokenizer
                    .encode(*text, true)
                    .map_err(|e| EmbedError::Engine(e.to_string()))?
                    .get_ids()
                    .to_vec(),
                Input::Tokens(ids) => ids.to_vec(),
            };
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
                return Err(EmbedError::BadToken {
                    index,
                    id,
                    vocab: self.vocab_size,
                });
            }
            if ids.len() > self.max_tokens {
                return Err(EmbedError::TooLong {
                    index,
                    tokens: ids.len(),
                    limit: self.max_tokens,
                });
            }
            out.push(ids);
        }
        Ok(out)
    }

    /// One vector per input, in order.
    pub fn embed(&self, batch: &[Vec<u32>]) -> std::result::Result<Vec<Vec<f32>>, EmbedError> {
        let pooled = self
            .forward(batch)
            .map_err(|e| EmbedError::Engine(e.to_string()))?;
        eval([&pooled]).map_err(|e| EmbedError::Engine(e.to_string()))?;
        let flat: &[f32] = pooled.as_slice();
        Ok(flat.chunks(self.dims).map(<[f32]>::to_vec).collect())
    }

    /// Pooled (and normalised) embeddings, [batch, dims].
    fn forward(&self, batch: &[Vec<u32>]) -> Result<Array> {
        let pooled = match &self.network {
            Network::Bert(bert) => {
                let (hidden, keep) = bert.forward(batch)?;
                pool(&hidden, &keep, batch, self.pooling)?
            }
            // One pass over the batch padded at the end: a causal model's real tokens never see
            // the padding after them; a bidirectional one's keys mask hides it.
            Network::Decoder(model) => {
                let (ids, keep) = padded(batch, 0);
                let (b, l) = (ids.shape()[0], ids.shape()[1]);
                let keys = if model.is_causal() {
                    None
                } else {
                    Some(keep.reshape(&[b, 1, 1, l])?)
                };
                let hidden = model.forward_padded(&ids, keys.as_ref())?;
                pool(
                    &hidden,
                    &keep.as_dtype(Dtype::Float32)?,
                    batch,
                    self.pooling,
                )?
            }
        };
        // sentence-transformers' Dense modules come between pooling and Normalize.
        let mut pooled = pooled;
        for d in &self.dense {
            pooled = d.linear.forward(&pooled)?;
            if d.tanh {
                pooled = ops::tanh(&pooled)?;
            }
        }
        if !self.normalize {
            return Ok(pooled.as_dtype(Dtype::Float32)?);
        }
        let norm = ops::maximum(
            ops::sqrt(&pooled.square()?.sum_axis(-1, true)?)?,
            Array::from_f32(1e-12),
        )?;
        Ok(pooled.divide(&norm)?.as_dtype(Dtype::Float32)?)
    }
}

/// The inputs padded at their ends with `pad` to the longest: ids [b, l] (int32) and which
/// positions are real tokens [b, l] (bool).
fn padded(batch: &[Vec<u32>], pad: u32) -> (Array, Array) {
    let b = batch.len() as i32;
    let l = batch.iter().map(Vec::len).max().unwrap_or(1).max(1) as i32;
    let mut ids = Vec::with_capacity((b * l) as usize);
    let mut keep = Vec::with_capacity((b * l) as usize);
    for row in batch {
        for j in 0..l as usize {
            ids.push(row.get(j).copied().unwrap_or(pad) as i32);
            keep.push(j < row.len());
        }
    }
    (
        Array::from_slice(&ids, &[b, l]),
        Array::from_slice(&keep, &[b, l]),
    )
}

/// `hidden` ([b, l, dims]) pooled per row into [b, dims]; `keep` ([b, l]) marks real tokens,
/// `batch` gives each row's length.
fn pool(hidden: &Array, keep: &Array, batch: &[Vec<u32>], pooling: Pooling) -> Result<Array> {
    let b = batch.len() as i32;
    Ok(match pooling {
        Pooling::Cls => hidden.index((.., 0)),
        Pooling::Mean => {
            let w = keep.expand_dims(-1)?.as_dtype(hidden.dtype())?;
            hidden
                .multiply(&w)?
                .sum_axis(1, false)?
                .divide(w.sum_axis(1, false)?)?
        }
        Pooling::Last => {
            let last: Vec<i32> = batch.iter().map(|r| r.len().max(1) as i32 - 1).collect();
            let last = Array::from_slice(&last, &[b, 1, 1]);
            ops::indexing::take_along_axis(hidden, &last, 1)?.squeeze_axes(&[1])?
        }
    })
}

impl Bert {
    fn load(dir: &Path) -> anyhow::Result<(Self, BertConfig)> {
        let raw = std::fs::read_to_string(dir.join("config.json")).context("config.json")?;
        let config: BertConfig = serde_json::from_str(&raw).context("config.json")?;
        let mut tensors = weights::load(dir)?.tensors;
        // BertForMaskedLM and friends keep the encoder under `bert.` (`roberta.` for
        // XLM-RoBERTa's).
        for prefix in ["bert.", "roberta."] {
            if tensors.contains_key(&format!("{prefix}embeddings.word_embeddings.weight")) {
                tensors = tensors
                    .into_iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v)))
                    .collect();
            }
        }
        let xlm_roberta = model_dir::read_config(dir)?.model_type == "xlm_roberta";
        let mut t = Tensors(tensors);
        let eps = config.layer_norm_eps;
        let word = t.take("embeddings.word_embeddings.weight")?;
        let (vocab_size, dims) = (word.shape()[0] as usize, word.shape()[1] as usize);
        anyhow::ensure!(
            dims == config.hidden_size as usize,
            "embeddings.word_embeddings.weight is {vocab_size}x{dims}, config.json says hidden_size {}",
            config.hidden_size
        );
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                query: t.linear(&format!("{p}.attention.self.query"))?,
                key: t.linear(&format!("{p}.attention.self.key"))?,
                value: t.linear(&format!("{p}.attention.self.value"))?,
                attn_out: t.linear(&format!("{p}.attention.output.dense"))?,
                attn_norm: t.norm(&format!("{p}.attention.output.LayerNorm"), eps)?,
                up: t.linear(&format!("{p}.intermediate.dense"))?,
                down: t.linear(&format!("{p}.output.dense"))?,
                out_norm: t.norm(&format!("{p}.output.LayerNorm"), eps)?,
            });
        }
        let bert = Bert {
            position: t.take("embeddings.position_embeddings.weight")?,
            token_type: t.take("embeddings.token_type_embeddings.weight")?,
            embed_norm: t.norm("embeddings.LayerNorm", eps)?,
            word,
            layers,
            heads: config.num_attention_heads,
            head_dim: config.hidden_size / config.num_attention_heads,
            pad_id: config.pad_token_id.unwrap_or(0),
            // Real tokens are numbered from pad_token_id + 1 (padding keeps pad_token_id's
            // position, which the mask hides anyway).
            first_position: if xlm_roberta {
                config.pad_token_id.unwrap_or(1) as i32 + 1
            } else {
                0
            },
        };
        Ok((bert, config))
    }

    fn arrays(&self) -> Vec<&Array> {
        fn lin<'a>(l: &'a Linear, out: &mut Vec<&'a Array>) {
            if let Linear::Dense { weight, bias } = l {
                out.push(weight);
                out.extend(bias);
            }
        }
        fn norm<'a>(n: &'a LayerNorm, out: &mut Vec<&'a Array>) {
            out.extend([&n.weight, &n.bias]);
        }
        let mut out = vec![&self.word, &self.position, &self.token_type];
        norm(&self.embed_norm, &mut out);
        for l in &self.layers {
            for linear in [&l.query, &l.key, &l.value, &l.attn_out, &l.up, &l.down] {
                lin(linear, &mut out);
            }
            norm(&l.attn_norm, &mut out);
            norm(&l.out_norm, &mut out);
        }
        out
    }

    /// The last hidden states ([b, l, dims]) of inputs padded to the longest, and which
    /// positions are real tokens ([b, l]).
    fn forward(&self, batch: &[Vec<u32>]) -> Result<(Array, Array)> {
        let (ids, keep) = padded(batch, self.pad_id);
        let (b, l) = (ids.shape()[0], ids.shape()[1]);
        let keep = keep.as_dtype(Dtype::Float32)?;
        let positions = self
            .position
            .index(self.first_position..self.first_position + l);
        // Every token is of segment 0, as for a single sentence.
        let x = self
            .word
            .take_axis(&ids, 0)?
            .add(&positions)?
            .add(self.token_type.index(0))?;
        let mut x = self.embed_norm.forward(&x)?;
        // Padding keys get -inf-like scores; every real token attends to every real token.
        let mask = ops::subtract(&keep, Array::from_f32(1.0))?
            .multiply(Array::from_f32(1e9))?
            .reshape(&[b, 1, 1, l])?;
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        for layer in &self.layers {
            let heads = |y: Array| -> Result<Array> {
                Ok(y.reshape(&[b, l, self.heads, self.head_dim])?
                    .transpose_axes(&[0, 2, 1, 3])?)
            };
            let q = heads(layer.query.forward(&x)?)?;
            let k = heads(layer.key.forward(&x)?)?;
            let v = heads(layer.value.forward(&x)?)?;
            let attn = fast::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                scale,
                ScaledDotProductAttentionMask::Array(&mask),
                None,
            )?
            .transpose_axes(&[0, 2, 1, 3])?
            .reshape(&[b, l, -1])?;
            let h = layer
                .attn_norm
                .forward(&x.add(layer.attn_out.forward(&attn)?)?)?;
            let ff = layer
                .down
                .forward(&mlx_rs::nn::gelu(layer.up.forward(&h)?)?)?;
            x = layer.out_norm.forward(&h.add(ff)?)?;
        }
        Ok((x, keep))
    }
}

struct Tensors(HashMap<String, Array>);

impl Tensors {
    fn take(&mut self, name: &str) -> anyhow::Result<Array> {
        self.0
            .remove(name)
            .with_context(|| format!("the weights lack {name}"))
    }

    fn linear(&mut self, module: &str) -> anyhow::Result<Linear> {
        Ok(Linear::Dense {
            weight: self.take(&format!("{module}.weight"))?,
            bias: Some(self.take(&format!("{module}.bias"))?),
        })
    }

    fn norm(&mut self, module: &str, eps: f32) -> anyhow::Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.take(&format!("{module}.weight"))?,
            bias: self.take(&format!("{module}.bias"))?,
            eps,
        })
    }
}
