//! The engine on the real test models: token-exact greedy output against mlx-lm, sampling,
//! stop conditions, streaming text, and load errors.

use std::cell::OnceCell;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use opta_lmx_shared::protocol::{FinishReason, SamplingParams};
use opta_lmx_worker::engine::Engine;
use opta_lmx_worker::model::LoadOptions;
use opta_lmx_worker::process::skip_exit_destructors;
use opta_lmx_worker::request::GenerateParams;
use opta_lmx_worker::scheduler::generate;
use serde_json::{json, Value};

fn models_dir() -> PathBuf {
    std::env::var_os("OPTA_LMX_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/models/opta"))
}

fn reference() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/reference_ids.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("reference ids")).unwrap()
}

thread_local! {
    // MLX arrays are not Sync: each test thread loads the f32 model once and reuses it.
    static F32: OnceCell<Engine> = const { OnceCell::new() };
}

/// Runs `f` with the f32 model, loaded once per test thread.
fn with_f32<R>(f: impl FnOnce(&Engine) -> R) -> R {
    F32.with(|cell| {
        f(cell.get_or_init(|| {
            let engine = Engine::load(&models_dir().join("SmolLM2-135M-Instruct-f32")).unwrap();
            skip_exit_destructors();
            engine
        }))
    })
}

struct Run {
    ids: Vec<u32>,
    text: String,
    chunks: usize,
    finish: FinishReason,
    completion_tokens: u32,
}

fn run(engine: &Engine, messages: &Value, params: &GenerateParams) -> Run {
    let prompt = engine.chat_prompt(messages, None, true).unwrap();
    let mut r = Run {
        ids: Vec::new(),
        text: String::new(),
        chunks: 0,
        finish: FinishReason::Cancelled,
        completion_tokens: 0,
    };
    let out = generate(engine, &prompt, params, |c| {
        r.ids.extend(&c.token_ids);
        r.text.push_str(&c.text);
        r.chunks += 1;
        ControlFlow::Continue(())
    })
    .unwrap();
    r.finish = out.finish_reason;
    r.completion_tokens = out.usage.completion_tokens;
    r
}

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: Some(max_tokens),
        ..Default::default()
    }
}

fn check_against_mlx_lm(variant: &str) {
    check_against_mlx_lm_within(variant, usize::MAX, usize::MAX);
}

/// As `check_against_mlx_lm`, generating for the first `conversations` cases only and at most
/// `tokens` of each (greedy ids are compared as a prefix); every case's prompt ids are still
/// checked. For models too slow on this CPU to generate every recorded token.
fn check_against_mlx_lm_within(variant: &str, conversations: usize, tokens: usize) {
    let reference = reference();
    let entry = &reference["models"][variant];
    let max = entry["max_tokens"].as_u64().expect("max_tokens") as usize;
    // mlx-lm keeps the files' dtypes: compare with the same arithmetic.
    let engine = Engine::load_with(&models_dir().join(variant), LoadOptions::EXACT).unwrap();
    skip_exit_destructors();
    let cases = entry["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    for (i, case) in cases.iter().enumerate() {
        let messages = &case["messages"];
        let want_prompt: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
        let got_prompt = engine.chat_prompt(messages, None, true).unwrap();
        assert_eq!(got_prompt, want_prompt, "prompt ids for {messages}");
        if i >= conversations {
            continue;
        }
        let mut want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let got = run(&engine, messages, &greedy(max.min(tokens)));
        if want.len() > tokens {
            want.truncate(tokens);
            assert_eq!(
                got.ids, want,
                "{variant}: first generated ids for {messages}"
            );
        } else {
            assert_eq!(got.ids, want, "{variant}: generated ids for {messages}");
            assert_eq!(got.text, case["text"].as_str().unwrap(), "{variant}: text");
        }
    }
}

#[test]
fn bf16_greedy_output_matches_mlx_lm_token_for_token() {
    let cases = reference()["models"]["SmolLM2-135M-Instruct-bf16"]["cases"]
        .as_array()
        .map_or(0, Vec::len);
    assert!(cases >= 5, "five or more varied prompts");
    check_against_mlx_lm("SmolLM2-135M-Instruct-bf16");
}

/// mlx-lm's arithmetic keeps the bfloat16 quantization scales, which this CPU converts on every
/// matmul (about two seconds a token here): two conversations of 24 tokens, and every prompt.
#[test]
fn four_bit_greedy_output_matches_mlx_lm_token_for_token() {
    check_against_mlx_lm_within("SmolLM2-135M-Instruct-4bit", 2, 24);
}

/// Every architecture and quantization layout, on tiny random-weight models.
#[test]
fn every_architecture_and_quantization_matches_mlx_lm() {
    for variant in [
        "tiny-random-llama",
        "tiny-random-qwen2",
        "tiny-random-qwen3",
        "tiny-random-llama-2bit-g32",
        "tiny-random-llama-3bit-g64",
        "tiny-random-llama-6bit-g128",
        "tiny-random-llama-8bit-g64",
        "tiny-random-llama-mxfp4",
        "tiny-random-llama-mxfp8",
        "tiny-random-llama-nvfp4",
        "tiny-random-llama-mixed",
        "tiny-random-qwen3-moe",
        "tiny-random-qwen3-moe-4bit",
        "tiny-random-qwen3-moe-hf",
        "tiny-random-granite",
        "tiny-random-phi3",
        "tiny-random-ministral3",
        "tiny-random-mistral3-vlm",
        "tiny-random-glm4-moe",
        "tiny-random-glm4-moe-4bit",
        "tiny-random-gemma3",
        "tiny-random-gemma3-4bit",
        "tiny-random-gemma3-vlm",
        "tiny-random-gpt-oss",
        "tiny-random-gpt-oss-mxfp4",
        "tiny-random-gpt-oss-openai",
        "tiny-random-gpt-oss-convert-mxfp4",
        "tiny-random-ministral3-fp8",
    ] {
        check_against_mlx_lm(variant);
    }
}

/// The recurrent hybrids: Gated DeltaNet (Qwen3-Next, Qwen3.5/3.6 dense and MoE) in mlx-lm's
/// layouts, quantized, and in Hugging Face's; LFM2's short convolutions in both layouts.
#[test]
fn recurrent_hybrids_match_mlx_lm() {
    for variant in [
        "tiny-random-qwen3-next",
        "tiny-random-qwen3.5",
        "tiny-random-qwen3.5-moe",
        "tiny-random-qwen3.5-moe-4bit",
        "tiny-random-qwen3.5-moe-hf",
        "tiny-random-lfm2",
        "tiny-random-lfm2-hf",
    ] {
        check_against_mlx_lm(variant);
    }
}

/// DeepSeek-V3's latent attention (absorbed for single tokens, expanded for prompts) and
/// grouped router, dense, quantized and in Hugging Face's layout; GLM-4.7-Flash's variant.
#[test]
fn deepseek_v3_matches_mlx_lm() {
    for variant in [
        "tiny-random-deepseek-v3",
        "tiny-random-deepseek-v3-4bit",
        "tiny-random-deepseek-v3-hf",
        "tiny-random-glm4-moe-lite",
    ] {
        check_against_mlx_lm(variant);
    }
}

/// Gemma 4: KV-shared layers, per-layer inputs, global layers with their own head size and
/// proportional RoPE, soft-capped logits (`gemma4_text`); values from the keys' projection and
/// dense-plus-experts blocks inside the `gemma4` wrapper, quantized and in Hugging Face's layout.
#[test]
fn gemma4_matches_mlx_lm() {
    for variant in [
        "tiny-random-gemma4",
        "tiny-random-gemma4-moe",
        "tiny-random-gemma4-moe-4bit",
        "tiny-random-gemma4-moe-hf",
    ] {
        check_against_mlx_lm(variant);
    }
}

/// Nemotron-H: Mamba-2's chunked scan (a 700-token prompt crosses its 256-token chunks),
/// attention without positions, relu² MLP and latent experts; quantized, in Hugging Face's
/// layout, and with `time_step_limit`'s infinity as Python writes it and as transformers tags it.
#[test]
fn nemotron_h_matches_mlx_lm() {
    for variant in [
        "tiny-random-nemotron-h",
        "tiny-random-nemotron-h-4bit",
        "tiny-random-nemotron-h-hf",
    ] {
        check_against_mlx_lm(variant);
    }
}

/// OLMo 3 (post-norms, all-head q/k norms, sliding layers with plain RoPE) and SmolLM3 (NoPE
/// layers).
#[test]
fn olmo3_and_smollm3_match_mlx_lm() {
    for variant in ["tiny-random-olmo3", "tiny-random-smollm3"] {
        check_against_mlx_lm(variant);
    }
}

/// Google's Gemma 3 270M, dequantized from its GGUF: sliding-window layers, GeGLU, sandwich
/// norms and its SentencePiece tokenizer, on real weights.
#[test]
fn gemma3_270m_greedy_output_matches_mlx_lm_token_for_token() {
    check_against_mlx_lm("gemma-3-270m-f32");
}

#[test]
fn the_f32_model_knows_the_capital_of_france() {
    with_f32(|engine| {
        let r = run(
            engine,
            &json!([{"role": "user", "content": "What is the capital of France?"}]),
            &greedy(32),
        );
        assert!(r.text.contains("Paris"), "{}", r.text);
        assert_eq!(r.finish, FinishReason::Stop, "ends with EOS");
        assert_eq!(
            r.completion_tokens as usize,
            r.ids.len() + 1,
            "EOS counted, not emitted"
        );
    })
}

#[test]
fn max_tokens_ends_with_length() {
    with_f32(|engine| {
        let r = run(
            engine,
            &json!([{"role": "user", "content": "Tell me a long story about dragons."}]),
            &greedy(5),
        );
        assert_eq!(r.finish, FinishReason::Length);
        assert_eq!(r.ids.len(), 5);
        assert_eq!(r.completion_tokens, 5);
    })
}

#[test]
fn stop_strings_end_generation_and_are_never_emitted() {
    with_f32(|engine| {
        let messages = json!([{"role": "user", "content": "What is the capital of France?"}]);
        let full = run(engine, &messages, &greedy(32)).text;
        let at = full.find("Paris").expect("the answer names Paris");
        for stop in ["Paris", "aris.", "s P"] {
            let params = GenerateParams {
                stop: vec!["never-appears".into(), stop.into()],
                ..greedy(32)
            };
            let r = run(engine, &messages, &params);
            assert_eq!(r.finish, FinishReason::Stop, "stop {stop:?}");
            let cut = full.find(stop).unwrap();
            assert_eq!(r.text, full[..cut], "stop {stop:?}");
            assert!(!r.text.contains(stop));
        }
        assert!(at > 0);
    })
}

#[test]
fn streamed_text_joins_to_the_decoded_text_with_multibyte_characters() {
    with_f32(|engine| {
        let messages = json!([{"role": "user", "content": "Write three emoji and the word café in Japanese: コーヒー"}]);
        let r = run(engine, &messages, &greedy(48));
        assert!(r.chunks > 1, "streamed in pieces");
        assert_eq!(r.text, engine.tokenizer.decode(&r.ids).unwrap());
        assert!(!r.text.contains('\u{FFFD}'), "{}", r.text);
        assert!(!r.text.is_ascii(), "{}", r.text);
    })
}

#[test]
fn sampling_with_a_seed_is_reproducible() {
    with_f32(|engine| {
        let messages = json!([{"role": "user", "content": "Name a colour."}]);
        let params = |seed| GenerateParams {
            sampling: SamplingParams {
                temperature: 1.5,
                seed: Some(seed),
                ..Default::default()
            },
            max_tokens: Some(12),
            ..Default::default()
        };
        let a = run(engine, &messages, &params(42));
        let b = run(engine, &messages, &params(42));
        assert_eq!(a.ids, b.ids);
        let others: Vec<Vec<u32>> = (1..4)
            .map(|s| run(engine, &messages, &params(s)).ids)
            .collect();
        assert!(others.iter().any(|o| *o != a.ids), "different seeds differ");
    })
}

#[test]
fn logprobs_come_with_alternatives_and_match_the_choice() {
    with_f32(|engine| {
        let prompt = engine
            .chat_prompt(
                &json!([{"role": "user", "content": "Say yes."}]),
                None,
                true,
            )
            .unwrap();
        let params = GenerateParams {
            logprobs: Some(3),
            ..greedy(4)
        };
        let mut seen = Vec::new();
        generate(engine, &prompt, &params, |c| {
            seen.extend(c.logprobs);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert!(!seen.is_empty());
        for lp in &seen {
            assert_eq!(lp.top.len(), 3);
            assert!(lp.logprob <= 0.0);
            // Greedy: the chosen token is the most likely one.
            assert_eq!(lp.top[0].token_id, lp.token_id);
            assert!((lp.top[0].logprob - lp.logprob).abs() < 1e-6);
            assert!(lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        }
    })
}

#[test]
fn cancelling_stops_after_the_current_token() {
    with_f32(|engine| {
        let prompt = engine
            .chat_prompt(
                &json!([{"role": "user", "content": "Count to fifty."}]),
                None,
                true,
            )
            .unwrap();
        let mut n = 0;
        let out = generate(engine, &prompt, &greedy(64), |_| {
            n += 1;
            if n == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        assert_eq!(out.finish_reason, FinishReason::Cancelled);
        assert_eq!(n, 2);
    })
}

fn copy_model(src: &Path, dst: &Path) {
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

fn load_error(dir: &Path) -> String {
    match Engine::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn broken_model_folders_fail_with_the_culprit_named() {
    let tiny = models_dir().join("tiny-random-llama");

    let dir = tempfile::tempdir().unwrap();
    copy_model(&tiny, dir.path());
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("tokenizer.json"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    copy_model(&tiny, dir.path());
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    config["model_type"] = json!("gpt-neox");
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let e = load_error(dir.path());
    assert!(
        e.contains("gpt-neox")
            && e.contains("supported are llama, mistral")
            && e.contains("gemma3_text"),
        "{e}"
    );

    config["model_type"] = json!("llama");
    config["intermediate_size"] = json!(96);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let e = load_error(dir.path());
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("[256, 128]"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    copy_model(&tiny, dir.path());
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk",
    )
    .unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("model.safetensors"), "{e}");
}
