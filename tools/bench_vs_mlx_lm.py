#!/usr/bin/env python3
"""Opta-LMX's engine and mlx-lm side by side, in the same run, on the same model and prompt.

Both generate exactly --gen-tokens greedy tokens (end-of-sequence ignored) after the same
--prompt-tokens prompt ids. mlx-lm runs through `mlx_lm.generate.generate_step`, the loop
behind `mlx_lm.generate`; Opta-LMX through its `opta-lmx-bench` program. The two alternate,
--runs times each, and the medians are compared. Speeds use mlx-lm's definitions: prompt
tokens over time to first token; tokens after the first over the time after the first.

  cargo build --release -p opta-lmx-worker
  .deps/venv/bin/python tools/bench_vs_mlx_lm.py .deps/models/opta/SmolLM2-135M-Instruct-4bit
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import mlx_lm_compat  # noqa: F401  (before mlx_lm: see its docstring)
from mlx_lm import load
from mlx_lm.generate import generate_step

FILLER = (
    "The history of astronomy spans thousands of years, from the first people who tracked the "
    "moon and the planets to modern observatories that measure light from galaxies billions of "
    "light years away. Each generation built new instruments and asked new questions about the sky. "
)


def run_mlx_lm(model, prompt: list[int], gen_tokens: int) -> dict:
    mx.reset_peak_memory()
    start = time.perf_counter()
    first = None
    n = 0
    for _token, _ in generate_step(mx.array(prompt), model, max_tokens=gen_tokens):
        if first is None:
            first = time.perf_counter()
        n += 1
    end = time.perf_counter()
    ttft = first - start
    return {
        "prompt_tokens": len(prompt),
        "generated_tokens": n,
        "prompt_tokens_per_s": len(prompt) / ttft,
        "generation_tokens_per_s": (n - 1) / (end - first),
        "time_to_first_token_ms": ttft * 1e3,
        "peak_memory_bytes": mx.get_peak_memory(),
    }


def run_opta(bench: Path, model_dir: Path, ids_file: Path, gen_tokens: int, exact: bool) -> dict:
    extra = ["--exact"] if exact else []
    out = subprocess.run(
        [str(bench), str(model_dir), "--prompt-ids", str(ids_file), "--gen-tokens", str(gen_tokens), "--json", *extra],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--gen-tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--bench", type=Path, default=root / "target/release/opta-lmx-bench")
    args = ap.parse_args()
    if not args.bench.exists():
        raise SystemExit(f"{args.bench} is missing: cargo build --release -p opta-lmx-worker")

    model, tokenizer = load(str(args.model))
    text, ids = "", []
    while len(ids) < args.prompt_tokens:
        text += FILLER
        ids = tokenizer.encode(text, add_special_tokens=False)
    ids = ids[: args.prompt_tokens]

    exact, default, ref = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        ids_file = Path(tmp) / "prompt.json"
        ids_file.write_text(json.dumps(ids))
        for i in range(args.runs):
            ref.append(run_mlx_lm(model, ids, args.gen_tokens))
            exact.append(run_opta(args.bench, args.model, ids_file, args.gen_tokens, exact=True))
            default.append(run_opta(args.bench, args.model, ids_file, args.gen_tokens, exact=False))
            print(f"run {i + 1}: mlx-lm {ref[-1]['generation_tokens_per_s']:.2f} tok/s, "
                  f"opta-lmx --exact {exact[-1]['generation_tokens_per_s']:.2f} tok/s, "
                  f"opta-lmx default {default[-1]['generation_tokens_per_s']:.2f} tok/s", flush=True)

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    print(f"\nmodel {args.model.name}, {args.prompt_tokens} prompt tokens, {args.gen_tokens} generated, "
          f"median of {args.runs} run(s), mlx {mx.__version__}")
    print("--exact keeps the files' dtypes (mlx-lm's arithmetic, token-identical output); the default")
    print("on a CPU backend expands quantized weights to float32 (see LoadOptions in worker/src/model.rs).")
    print(f"{'metric':<26}{'mlx-lm':>10}{'--exact':>10}{'ratio':>8}{'default':>10}{'ratio':>8}")
    for key, label in (
        ("prompt_tokens_per_s", "prompt tokens/s"),
        ("generation_tokens_per_s", "generation tokens/s"),
        ("time_to_first_token_ms", "time to first token ms"),
        ("peak_memory_bytes", "peak memory MB"),
    ):
        r, e, d = med(ref, key), med(exact, key), med(default, key)
        scale = 1e-6 if key == "peak_memory_bytes" else 1.0
        print(f"{label:<26}{r * scale:>10.1f}{e * scale:>10.1f}{e / r:>7.2f}x{d * scale:>10.1f}{d / r:>7.2f}x")


if __name__ == "__main__":
    main()
