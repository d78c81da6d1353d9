//! `POST /v1/embeddings` (and LM Studio's `/api/v0/embeddings`): OpenAI's request and
//! response shapes.

use base64::Engine as _;
use opta_lmx_shared::protocol::EmbedInput;
use serde::Deserialize;
use serde_json::{json, Value};

use super::ApiError;

/// Inputs per request, as OpenAI caps them.
pub const MAX_INPUTS: usize = 2048;

#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingsRequest {
    #[serde(default)]
    pub model: Option<String>,
    /// A string, a list of strings, token ids, or lists of token ids; checked by
    /// [`EmbeddingsRequest::inputs`] so that the 400 names the culprit.
    #[serde(default)]
    pub input: Value,
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Keep the first `dimensions` components, then re-normalise (Matryoshka models).
    #[serde(default)]
    pub dimensions: Option<u64>,
    /// LM Studio's idle TTL for a model this request loads.
    #[serde(default)]
    pub ttl: Option<u64>,
    /// OpenAI's end-user id: read (so a wrong type is a 400), not used.
    #[serde(default)]
    pub user: Option<String>,
}

/// How vectors are written in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Float,
    /// Little-endian float32 bytes in base64, what the OpenAI Python SDK asks for by default.
    Base64,
}

impl EmbeddingsRequest {
    pub fn encoding(&self) -> Result<Encoding, ApiError> {
        match self.encoding_format.as_deref() {
            None | Some("float") => Ok(Encoding::Float),
            Some("base64") => Ok(Encoding::Base64),
            Some(other) => Err(ApiError::invalid_param(
                "encoding_format",
                format!("encoding_format must be \"float\" or \"base64\" (got {other:?})."),
            )),
        }
    }

    /// The inputs, in order.
    pub fn inputs(&self) -> Result<Vec<EmbedInput>, ApiError> {
        let bad = |param: String, what: &str| {
            ApiError::invalid_param(param.clone(), format!("'{param}' must be {what}."))
        };
        let tokens = |v: &Value, param: String| -> Result<Vec<u32>, ApiError> {
            let items = v
                .as_array()
                .ok_or_else(|| bad(param.clone(), "a list of token ids"))?;
            items
                .iter()
                .enumerate()
                .map(|(j, t)| {
                    t.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| bad(format!("{param}[{j}]"), "a token id (an integer ≥ 0)"))
                })
                .collect()
        };
        let inputs = match &self.input {
            Value::Null => return Err(ApiError::missing_param("input")),
            Value::String(s) => vec![EmbedInput::Text(s.clone())],
            Value::Array(items) if items.is_empty() => {
                return Err(bad("input".into(), "a non-empty string or list"))
            }
            Value::Array(items) if items.iter().all(Value::is_number) => {
                vec![EmbedInput::Tokens(tokens(&self.input, "input".into())?)]
            }
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(EmbedInput::Text(s.clone())),
                    Value::Array(_) => Ok(EmbedInput::Tokens(tokens(item, format!("input[{i}]"))?)),
                    _ => Err(bad(
                        format!("input[{i}]"),
                        "a string or a list of token ids",
                    )),
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(bad(
                    "input".into(),
                    "a string, a list of strings, or token ids",
                ))
            }
        };
        if inputs.len() > MAX_INPUTS {
            return Err(ApiError::invalid_param(
                "input",
                format!(
                    "At most {MAX_INPUTS} inputs per request (got {}).",
                    inputs.len()
                ),
            ));
        }
        if self.dimensions == Some(0) {
            return Err(ApiError::invalid_param(
                "dimensions",
                "dimensions must be at least 1.",
            ));
        }
        Ok(inputs)
    }
}

/// The first `dims` components, L2-normalised again.
fn truncate(mut v: Vec<f32>, dims: usize) -> Vec<f32> {
    v.truncate(dims);
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// The response body; `dimensions` beyond the model's own are refused.
pub fn body(
    model: &str,
    vectors: Vec<Vec<f32>>,
    prompt_tokens: u32,
    encoding: Encoding,
    dimensions: Option<u64>,
) -> Result<Value, ApiError> {
    let native = vectors.first().map_or(0, Vec::len);
    let dims = match dimensions {
        Some(d) if d as usize > native => {
            return Err(ApiError::invalid_param(
                "dimensions",
                format!("The model `{model}` has {native} dimensions; dimensions must not exceed it (got {d})."),
            ))
        }
        Some(d) => Some(d as usize),
        None => None,
    };
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let v = match dims {
                Some(d) if d < v.len() => truncate(v, d),
                _ => v,
            };
            let embedding = match encoding {
                Encoding::Float => json!(v),
                Encoding::Base64 => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> EmbeddingsRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn every_input_shape_and_the_culprit_named() {
        let inputs = |v: Value| req(json!({"input": v})).inputs();
        assert_eq!(inputs(json!("a")).unwrap(), [EmbedInput::Text("a".into())]);
        assert_eq!(
            inputs(json!(["a", [1, 2]])).unwrap(),
            [EmbedInput::Text("a".into()), EmbedInput::Tokens(vec![1, 2])]
        );
        assert_eq!(
            inputs(json!([5, 6])).unwrap(),
            [EmbedInput::Tokens(vec![5, 6])]
        );
        let param = |v: Value| inputs(v).unwrap_err().param().map(str::to_string);
        assert_eq!(param(Value::Null).as_deref(), Some("input"));
        assert_eq!(param(json!([])).as_deref(), Some("input"));
        assert_eq!(param(json!(["a", 3.5])).as_deref(), Some("input[1]"));
        assert_eq!(param(json!([[1, -2]])).as_deref(), Some("input[0][1]"));
        assert_eq!(param(json!({"a": 1})).as_deref(), Some("input"));
        let too_many = json!(vec!["x"; MAX_INPUTS + 1]);
        assert_eq!(param(too_many).as_deref(), Some("input"));
        let bad = req(json!({"input": "a", "encoding_format": "int8"}));
        assert_eq!(bad.encoding().unwrap_err().param(), Some("encoding_format"));
    }

    #[test]
    fn base64_is_little_endian_float32_and_dimensions_renormalise() {
        let v = vec![vec![3.0f32, 4.0, 12.0]];
        let b = body("m", v.clone(), 2, Encoding::Base64, None).unwrap();
        let text = b["data"][0]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        let back: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(back, v[0]);
        let b = body("m", v.clone(), 2, Encoding::Float, Some(2)).unwrap();
        let got: Vec<f64> = serde_json::from_value(b["data"][0]["embedding"].clone()).unwrap();
        assert!(
            (got[0] - 0.6).abs() < 1e-6 && (got[1] - 0.8).abs() < 1e-6,
            "{got:?}"
        );
        assert_eq!(b["usage"], json!({"prompt_tokens": 2, "total_tokens": 2}));
        let err = body("m", v, 2, Encoding::Float, Some(4)).unwrap_err();
        assert_eq!(err.param(), Some("dimensions"));
    }
}
