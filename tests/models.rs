//! Model families beyond Llama through the real daemon and worker: Google's Gemma 3 270M answers
//! a chat exactly as mlx-lm does (greedy, `tests/data/reference_ids.json`), and a Gemma 3
//! vision-language folder serves its language model, its vision tower left unloaded; the tiny
//! gpt-oss models (sinks, windows, MXFP4 experts, OpenAI's layout) answer as mlx-lm does.

use opta_lmx_tests::{entry_where, model, workspace_root, Daemon};
use serde_json::{json, Value};

fn reference(variant: &str) -> Value {
    let path = workspace_root().join("tests/data/reference_ids.json");
    let all: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("reference")).expect("JSON");
    all["models"][variant].clone()
}

/// A greedy chat completion of the first reference conversation, held to mlx-lm's.
fn check_first_case(d: &Daemon, variant: &str) {
    let r = reference(variant);
    let case = &r["cases"][0];
    let body = json!({
        "model": format!("opta/{variant}"),
        "messages": case["messages"],
        "temperature": 0,
        "max_tokens": r["max_tokens"],
    });
    let (code, out) = d.post("/v1/chat/completions", &body);
    assert_eq!(code, 200, "{out}");
    assert_eq!(
        out["choices"][0]["message"]["content"], case["text"],
        "{variant}"
    );
    let ids = |k: &str| case[k].as_array().expect("ids").len();
    assert_eq!(
        out["usage"]["prompt_tokens"],
        ids("prompt_ids"),
        "{variant}"
    );
    assert_eq!(out["usage"]["completion_tokens"], ids("ids"), "{variant}");
}

#[test]
fn gpt_oss_answers_through_the_daemon_as_mlx_lm_does() {
    let d = Daemon::start("");
    for variant in [
        "tiny-random-gpt-oss-mxfp4",
        "tiny-random-gpt-oss-openai",
        "tiny-random-gpt-oss-convert-mxfp4",
    ] {
        check_first_case(&d, variant);
    }
}

#[test]
fn gemma3_answers_through_the_daemon_as_mlx_lm_does() {
    assert!(model("gemma-3-270m-f32").join("config.json").exists());
    let d = Daemon::start("");
    check_first_case(&d, "gemma-3-270m-f32");
    check_first_case(&d, "tiny-random-gemma3-vlm");
    // Both are listed as the language models they are.
    let (code, list) = d.get("/api/v0/models");
    assert_eq!(code, 200);
    for id in ["opta/gemma-3-270m-f32", "opta/tiny-random-gemma3-vlm"] {
        let entry = entry_where(&list["data"], "id", id);
        assert_eq!(entry["type"], "llm", "{entry}");
    }
}

/// The 2026 families through the daemon: Qwen3-Next, Qwen3.5 and Gemma 4 in mlx-lm's layout,
/// Qwen3.5 MoE, DeepSeek-V3, Gemma 4 MoE and Nemotron-H in Hugging Face's answer as mlx-lm
/// does; a conversation resent with a new turn
/// starts from the recurrent snapshot its first turn left, and answers as it does without it.
#[test]
fn hybrid_and_latent_attention_models_answer_through_the_daemon_as_mlx_lm_does() {
    let d = Daemon::start("");
    for variant in [
        "tiny-random-qwen3-next",
        "tiny-random-qwen3.5",
        "tiny-random-qwen3.5-moe-hf",
        "tiny-random-deepseek-v3-hf",
        "tiny-random-gemma4",
        "tiny-random-gemma4-moe-hf",
        "tiny-random-nemotron-h-hf",
    ] {
        check_first_case(&d, variant);
    }
    let (code, list) = d.get("/api/v0/models");
    assert_eq!(code, 200);
    for (id, arch) in [
        ("opta/tiny-random-qwen3.5-moe-hf", "qwen3_5_moe"),
        ("opta/tiny-random-gemma4-moe-hf", "gemma4"),
    ] {
        let entry = entry_where(&list["data"], "id", id);
        assert_eq!(entry["arch"], arch, "{entry}");
    }

    let ask = |messages: &Value| {
        let body = json!({"model": "opta/tiny-random-qwen3.5", "messages": messages,
                          "temperature": 0, "max_tokens": 8});
        let (code, out) = d.post("/v1/chat/completions", &body);
        assert_eq!(code, 200, "{out}");
        out
    };
    let first = json!([{"role": "user", "content": "Tell me about the sea. ".repeat(20)}]);
    let one = ask(&first);
    let mut turns = first.as_array().expect("turns").clone();
    turns.push(json!({"role": "assistant", "content": one["choices"][0]["message"]["content"]}));
    turns.push(json!({"role": "user", "content": "And the mountains?"}));
    let second = Value::Array(turns);
    let two = ask(&second);
    let cached = two["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .expect("cached tokens");
    let first_len = one["usage"]["prompt_tokens"]
        .as_u64()
        .expect("prompt tokens");
    assert!(cached + 1 >= first_len, "reused {cached} of {first_len}");
    // The same conversation on a fresh worker (nothing cached) answers the same.
    let (code, _) = d.post(
        "/admin/models/unload",
        &json!({"model_id": "opta/tiny-random-qwen3.5"}),
    );
    assert_eq!(code, 200);
    let again = ask(&second);
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "{again}"
    );
    assert_eq!(
        again["choices"][0]["message"]["content"],
        two["choices"][0]["message"]["content"]
    );
}
