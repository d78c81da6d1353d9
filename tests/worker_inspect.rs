//! The worker loads real model files with MLX: `opta-lmx-worker inspect` on the converted
//! SmolLM2-135M-Instruct variants, and clear errors on broken folders.

use std::process::Command;

use opta_lmx_tests::{binary, model, run};
use serde_json::Value;

/// SmolLM2-135M: 30 layers of 3,540,096 parameters, a 49152x576 tied embedding and the final
/// norm (576), counted independently of the files.
const SMOLLM2_135M_PARAMS: u64 = 30 * 3_540_096 + 49_152 * 576 + 576;

fn inspect(dir: &std::path::Path) -> (bool, String, String) {
    run(Command::new(binary("opta-lmx-worker"))
        .args(["inspect", "--json"])
        .arg(dir))
}

fn summary(variant: &str) -> Value {
    let (ok, stdout, stderr) = inspect(&model(&format!("SmolLM2-135M-Instruct-{variant}")));
    assert!(ok, "inspect failed: {stderr}");
    serde_json::from_str(&stdout).expect("inspect --json prints JSON")
}

#[test]
fn four_bit_model_loads_with_packed_weights_and_bf16_scales() {
    let s = summary("4bit");
    assert_eq!(s["model_type"], "llama");
    assert_eq!(s["layers"], 30);
    assert_eq!(s["quantization"], "4bit");
    assert_eq!(s["total_params"], SMOLLM2_135M_PARAMS);
    // 7 quantized linears per layer (weight, scales, biases) + 2 norms; the embedding
    // quantized likewise; the final norm.
    let tensors: u64 = s["groups"]
        .as_object()
        .unwrap()
        .values()
        .map(|g| g["tensors"].as_u64().unwrap())
        .sum();
    assert_eq!(tensors, 30 * (7 * 3 + 2) + 3 + 1);
    let mlp = &s["groups"]["mlp"]["bytes_by_dtype"];
    // 4 bits per parameter packed into uint32 words.
    assert_eq!(mlp["uint32"], 30 * 3 * 576 * 1536 / 2);
    assert!(
        mlp["bfloat16"].as_u64().unwrap() > 0,
        "scales and biases are bf16"
    );
}

#[test]
fn dense_variants_hold_the_same_parameters() {
    for (variant, bytes_per_param) in [("bf16", 2), ("f32", 4)] {
        let s = summary(variant);
        assert_eq!(s["total_params"], SMOLLM2_135M_PARAMS, "{variant}");
        assert_eq!(
            s["total_bytes"],
            SMOLLM2_135M_PARAMS * bytes_per_param,
            "{variant}"
        );
    }
}

#[test]
fn broken_folders_fail_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = inspect(dir.path());
    assert!(!ok);
    assert!(stderr.contains("config.json: not found"), "{stderr}");

    std::fs::copy(
        model("SmolLM2-135M-Instruct-4bit").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let (ok, _, stderr) = inspect(dir.path());
    assert!(!ok);
    assert!(stderr.contains("model.safetensors: not found"), "{stderr}");

    let weights = dir.path().join("model.safetensors");
    std::fs::write(
        &weights,
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}",
    )
    .unwrap();
    let (ok, _, stderr) = inspect(dir.path());
    assert!(!ok);
    assert!(
        stderr.contains("model.safetensors: cannot read safetensors"),
        "{stderr}"
    );

    // A download cut short: the header is intact, the data is not.
    let real = std::fs::read(model("tiny-random-llama").join("model.safetensors")).unwrap();
    std::fs::write(&weights, &real[..real.len() / 2]).unwrap();
    let (ok, _, stderr) = inspect(dir.path());
    assert!(!ok);
    assert!(
        stderr.contains("model.safetensors") && stderr.contains("exceeding the size of the file"),
        "{stderr}"
    );
}
