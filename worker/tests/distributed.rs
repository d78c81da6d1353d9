//! Tensor parallelism on MLX's ring backend over loopback: two ranks of `opta-lmx-worker
//! generate --tensor-parallel ring`, each holding half of every layer, answer with exactly the
//! greedy ids mlx-lm gives in one process (`tests/data/reference_ids.json`).

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn models_dir() -> PathBuf {
    std::env::var_os("OPTA_LMX_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/models/opta"))
}

fn reference(variant: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/reference_ids.json");
    let all: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("reference")).expect("JSON");
    all["models"][variant].clone()
}

/// Ports the ring can listen on, found free just before.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("address").port())
        .collect()
}

/// Runs `ranks` ranks of the same generate command; returns each one's (success, stdout,
/// stderr), killing them all if they take longer than two minutes.
fn run_ranks(
    model: &str,
    prompt: &str,
    max_tokens: usize,
    ranks: usize,
) -> Vec<(bool, String, String)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let hosts: Vec<Vec<String>> = free_ports(ranks)
        .into_iter()
        .map(|p| vec![format!("127.0.0.1:{p}")])
        .collect();
    let hostfile = dir.path().join("hosts.json");
    std::fs::write(&hostfile, serde_json::to_string(&hosts).expect("hosts")).expect("hostfile");
    let mut children: Vec<Child> = (0..ranks)
        .map(|rank| {
            Command::new(env!("CARGO_BIN_EXE_opta-lmx-worker"))
                .args([
                    "generate",
                    "--json",
                    "--tensor-parallel",
                    "ring",
                    "--prompt",
                    prompt,
                ])
                .args(["--max-tokens", &max_tokens.to_string()])
                .arg(models_dir().join(model))
                .env("MLX_RANK", rank.to_string())
                // mlx-lm's arithmetic: quantized weights stay quantized and are split as such.
                .env("OPTA_LMX_EXACT", "1")
                .env("MLX_HOSTFILE", &hostfile)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start a rank")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut results = Vec::new();
    for child in &mut children {
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut out = String::new();
        let mut err = String::new();
        if status.is_none() {
            let _ = child.kill();
        }
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        results.push((status.is_some_and(|s| s.success()), out, err));
    }
    results
}

#[test]
fn two_ranks_answer_as_one_process_does() {
    for variant in [
        "tiny-random-llama",
        "tiny-random-qwen3",
        "tiny-random-qwen3-moe",
        "tiny-random-glm4-moe",
        "tiny-random-gpt-oss",
        "tiny-random-gpt-oss-mxfp4",
        "tiny-random-llama-8bit-g64",
    ] {
        let r = reference(variant);
        let max = r["max_tokens"].as_u64().expect("max_tokens") as usize;
        for case in r["cases"].as_array().expect("cases") {
            let prompt = case["messages"][0]["content"].as_str().expect("prompt");
            for (rank, (ok, out, err)) in run_ranks(variant, prompt, max, 2).into_iter().enumerate()
            {
                assert!(ok, "{variant} rank {rank}: {err}");
                let last = out.trim().lines().last().unwrap_or_default();
                let got: Value = serde_json::from_str(last)
                    .unwrap_or_else(|e| panic!("{variant} rank {rank}: {out:?}: {e}"));
                assert_eq!(got["rank"], rank, "{variant}");
                assert_eq!(
                    got["prompt_ids"], case["prompt_ids"],
                    "{variant} rank {rank}"
                );
                assert_eq!(
                    got["ids"], case["ids"],
                    "{variant} rank {rank}: generated ids"
                );
            }
        }
    }
}

#[test]
fn heads_that_do_not_divide_are_refused_naming_them() {
    // The tiny models have 4 query heads and 2 key-value heads: three ranks cannot share them.
    for (ok, _, err) in run_ranks("tiny-random-llama", "hi", 2, 3) {
        assert!(!ok);
        assert!(
            err.contains("2 key-value heads") && err.contains("3 ranks"),
            "{err}"
        );
    }
}
