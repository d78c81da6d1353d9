//! The sampling fields every generation API shares, and the rules for the other limits they
//! have in common (`max_tokens`, `stop`, `n`, `ttl`).
//!
//! [`SamplingFields`] is parsed from the same request body as the API's own request type
//! ([`super::Generation`] does both), so each API adds only its own fields and every API
//! validates and defaults sampling the same way.

use std::collections::BTreeMap;
use std::fmt;

use opta_lmx_shared::protocol::SamplingParams;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::common::StreamOptions;
use super::error::ApiError;
use crate::config::SamplingDefaults;

/// OpenAI allows 4 stop sequences; local clients send more (chat templates' end markers).
pub const MAX_STOP_SEQUENCES: usize = 16;

/// Sampling settings as a client sends them; absent fields take the model's defaults
/// ([`SamplingDefaults`]). `null` is read as absent (as every `Option` field here).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// 0 or -1 disables top-k, as in llama.cpp.
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    /// llama.cpp/LM Studio's multiplicative penalty; 1.0 disables it. Wins over
    /// `repetition_penalty` when a body has both.
    pub repeat_penalty: Option<f32>,
    /// mlx-lm's and Hugging Face's name for `repeat_penalty`.
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Token id (as a string, JSON keys are strings) to a bias in -100..=100.
    pub logit_bias: Option<BTreeMap<String, f32>>,
    pub seed: Option<i64>,
}

/// The request fields every generation API has besides sampling, read from the same body.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct SharedFields {
    /// Absent is allowed: LM Studio answers with the loaded model; the dispatcher decides
    /// and answers `ApiError::missing_param("model")` if it cannot pick one.
    pub model: Option<String>,
    /// -1 means no limit (LM Studio's examples send it).
    pub max_tokens: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// A string or a list of strings; empty strings are dropped.
    #[serde(default, deserialize_with = "deserialize_stop")]
    pub stop: Option<Vec<String>>,
    /// Only 1 is supported.
    pub n: Option<u32>,
    /// LM Studio: idle seconds before a model this request loads is unloaded.
    pub ttl: Option<u64>,
    pub user: Option<String>,
}

impl SharedFields {
    /// Checks every range serde cannot, naming the field at fault.
    pub fn validate(&self) -> Result<(), ApiError> {
        check_token_limit("max_tokens", self.max_tokens)?;
        check_stop("stop", &self.stop)?;
        check_n("n", self.n)?;
        check_ttl(self.ttl)
    }

    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether a streamed response ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    pub fn stop_sequences(&self) -> &[String] {
        self.stop.as_deref().unwrap_or_default()
    }
}

fn check_range(param: &str, value: Option<f32>, min: f32, max: f32) -> Result<(), ApiError> {
    match value {
        Some(v) if !(min..=max).contains(&v) => Err(ApiError::invalid_param(
            param,
            format!("Invalid value for '{param}': {v} is not between {min} and {max}."),
        )),
        _ => Ok(()),
    }
}

impl SamplingFields {
    /// The multiplicative repetition penalty under either of its names.
    pub fn repeat_penalty(&self) -> Option<f32> {
        self.repeat_penalty.or(self.repetition_penalty)
    }

    /// Checks every range serde cannot, naming the field at fault.
    pub fn validate(&self) -> Result<(), ApiError> {
        check_range("temperature", self.temperature, 0.0, 2.0)?;
        check_range("top_p", self.top_p, 0.0, 1.0)?;
        check_range("min_p", self.min_p, 0.0, 1.0)?;
        check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        if let Some(k) = self.top_k {
            if k < -1 {
                return Err(ApiError::invalid_param(
                    "top_k",
                    format!("Invalid value for 'top_k': {k}; use a positive number, or 0 or -1 to disable it."),
                ));
            }
        }
        for (param, value) in [
            ("repeat_penalty", self.repeat_penalty),
            ("repetition_penalty", self.repetition_penalty),
        ] {
            if let Some(p) = value.filter(|p| *p <= 0.0) {
                return Err(ApiError::invalid_param(
                    param,
                    format!("Invalid value for '{param}': {p}; it must be greater than 0 (1 disables it)."),
                ));
            }
        }
        for (key, value) in self.logit_bias.iter().flatten() {
            if key.parse::<u32>().is_err() {
                return Err(ApiError::invalid_param(
                    "logit_bias",
                    format!("Invalid key in 'logit_bias': \"{key}\" is not a token id."),
                ));
            }
            if !(-100.0..=100.0).contains(value) {
                return Err(ApiError::invalid_param(
                    "logit_bias",
                    format!("Invalid value in 'logit_bias' for token {key}: {value} is not between -100 and 100."),
                ));
            }
        }
        Ok(())
    }

    /// The worker's settings: each field as sent, else the model's default. Greedy decoding
    /// (temperature 0) stays plain greedy, as with OpenAI and mlx-lm: the default repeat
    /// penalty applies to sampled requests only. Other penalties and biases the client did
    /// not ask for stay off.
    pub fn to_params(&self, defaults: &SamplingDefaults) -> SamplingParams {
        let neutral = SamplingParams::default();
        let temperature = self.temperature.unwrap_or(defaults.temperature);
        let repetition_penalty = match self.repeat_penalty() {
            Some(p) => p,
            None if temperature == 0.0 => neutral.repetition_penalty,
            None => defaults.repeat_penalty,
        };
        SamplingParams {
            temperature,
            top_p: self.top_p.unwrap_or(defaults.top_p),
            top_k: self.top_k.unwrap_or(defaults.top_k).max(0) as u32,
            min_p: self.min_p.unwrap_or(defaults.min_p),
            repetition_penalty,
            repetition_context: neutral.repetition_context,
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            logit_bias: self
                .logit_bias
                .iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.parse().ok()?, *v)))
                .collect(),
            seed: self.seed.map(|s| s as u64),
        }
    }
}

/// `max_tokens`-style limits: at least 1, or -1 for no limit.
pub fn check_token_limit(param: &str, value: Option<i64>) -> Result<(), ApiError> {
    match value {
        Some(v) if (v != -1 && v < 1) || v > i64::from(u32::MAX) => Err(ApiError::invalid_param(
            param,
            format!(
                "Invalid value for '{param}': {v}; it must be at least 1 (or -1 for no limit)."
            ),
        )),
        _ => Ok(()),
    }
}

/// -1 or absent means no limit; `check_token_limit` has refused other values below 1.
pub fn token_limit(value: Option<i64>) -> Option<u32> {
    value.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0)
}

pub fn check_stop(param: &str, stop: &Option<Vec<String>>) -> Result<(), ApiError> {
    match stop {
        Some(stop) if stop.len() > MAX_STOP_SEQUENCES => Err(ApiError::invalid_param(
            param,
            format!(
                "Invalid value for '{param}': {} sequences given, at most {MAX_STOP_SEQUENCES} are allowed.",
                stop.len()
            ),
        )),
        _ => Ok(()),
    }
}

/// `n` and `best_of`: only one choice per request.
pub fn check_n(param: &str, n: Option<u32>) -> Result<(), ApiError> {
    match n {
        None | Some(1) => Ok(()),
        Some(v) => Err(ApiError::invalid_param(
            param,
            format!("Invalid value for '{param}': {v}; only {param}=1 is supported."),
        )),
    }
}

/// LM Studio's per-request idle TTL, in seconds.
pub fn check_ttl(ttl: Option<u64>) -> Result<(), ApiError> {
    if ttl == Some(0) {
        return Err(ApiError::invalid_param(
            "ttl",
            "Invalid value for 'ttl': it must be at least 1 second.",
        ));
    }
    Ok(())
}

/// `stop`: a string or a list of strings; `null` is absent, empty strings are dropped
/// (an empty stop sequence would match everywhere).
pub fn deserialize_stop<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    struct StopVisitor;
    impl<'de> Visitor<'de> for StopVisitor {
        type Value = Option<Vec<String>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or an array of strings")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(if v.is_empty() {
                Vec::new()
            } else {
                vec![v.to_string()]
            }))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            let mut given = 0;
            while let Some(s) = seq.next_element::<String>()? {
                given += 1;
                if !s.is_empty() {
                    out.push(s);
                }
            }
            // Counted as sent, empty ones too, as the documented maxItems counts them.
            if given > MAX_STOP_SEQUENCES {
                return Err(de::Error::custom(format!(
                    "{given} sequences given, at most {MAX_STOP_SEQUENCES} are allowed"
                )));
            }
            Ok(Some(out))
        }
    }
    d.deserialize_any(StopVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opta_lmx_shared::model_dir::GenerationConfig;

    /// Per field: the request, then the model's generation_config.json, then the config's
    /// `models.defaults`, whose own defaults are LM Studio's.
    #[test]
    fn defaults_take_precedence_request_then_model_then_config_then_lm_studio() {
        let lm_studio = SamplingDefaults::default();
        assert_eq!(
            (lm_studio.temperature, lm_studio.top_k, lm_studio.top_p),
            (0.8, 40, 0.95)
        );
        assert_eq!((lm_studio.min_p, lm_studio.repeat_penalty), (0.05, 1.1));

        let config = SamplingDefaults {
            temperature: 0.5,
            top_k: 20,
            ..lm_studio
        };
        let model = GenerationConfig {
            temperature: Some(0.6),
            top_p: Some(0.9),
            ..GenerationConfig::default()
        };
        let defaults = config.for_model(&model);
        let request = SamplingFields {
            temperature: Some(0.3),
            ..SamplingFields::default()
        };
        let p = request.to_params(&defaults);
        assert_eq!(p.temperature, 0.3, "the request wins");
        assert_eq!(p.top_p, 0.9, "then the model's generation_config.json");
        assert_eq!(p.top_k, 20, "then the config's models.defaults");
        assert_eq!(p.min_p, 0.05, "then LM Studio's");
        assert_eq!(p.repetition_penalty, 1.1);
        assert_eq!(
            SamplingFields::default().to_params(&defaults).temperature,
            0.6
        );
    }

    #[test]
    fn greedy_requests_get_no_default_penalty_but_keep_their_own() {
        let defaults = SamplingDefaults::default();
        let greedy = SamplingFields {
            temperature: Some(0.0),
            ..SamplingFields::default()
        };
        assert_eq!(greedy.to_params(&defaults).repetition_penalty, 1.0);
        let own = SamplingFields {
            repetition_penalty: Some(1.2),
            ..greedy
        };
        assert_eq!(own.to_params(&defaults).repetition_penalty, 1.2);
        // Absent penalties and filters of OpenAI's own stay neutral.
        let p = SamplingFields::default().to_params(&defaults);
        assert_eq!((p.presence_penalty, p.frequency_penalty), (0.0, 0.0));
        assert!(p.logit_bias.is_empty() && p.seed.is_none());
    }

    #[test]
    fn top_k_off_values_become_zero() {
        let fields = SamplingFields {
            top_k: Some(-1),
            ..SamplingFields::default()
        };
        assert_eq!(fields.to_params(&SamplingDefaults::default()).top_k, 0);
    }
}
