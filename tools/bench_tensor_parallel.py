#!/usr/bin/env python3
"""Tensor parallelism's cost on one machine: one process against two ranks over MLX's ring
backend on loopback, for Opta-LMX's worker and for mlx-lm's own `shard()`, in the same run.

Each configuration generates --tokens greedy tokens for the same chat prompt, --runs times;
the medians of decode speed are compared. On a tiny model the compute a rank saves is
negligible, so the extra time per token is the price of the collectives: two `all_sum`s per
layer (after attention and after the MLP), reported per call. Both implementations must also
agree token for token, sharded or not.

  cargo build --release -p opta-lmx-worker
  .deps/venv/bin/python tools/bench_tensor_parallel.py .deps/models/opta/tiny-random-llama
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "Write a short story about a lighthouse keeper."


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def launch(commands: list[list[str]], env_extra: list[dict]) -> list[dict]:
    """Runs one process per rank; returns each one's last JSON line."""
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **extra})
        for cmd, extra in zip(commands, env_extra)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        if p.returncode != 0:
            sys.exit(f"a rank failed: {err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def ring_env(ranks: int, hostfile: Path) -> list[dict]:
    if ranks == 1:
        return [{}]
    hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in free_ports(ranks)]))
    return [{"MLX_RANK": str(r), "MLX_HOSTFILE": str(hostfile)} for r in range(ranks)]


def opta(worker: Path, model: Path, tokens: int, ranks: int, hostfile: Path) -> dict:
    cmd = [str(worker), "generate", str(model), "--prompt", PROMPT, "--max-tokens", str(tokens), "--json"]
    if ranks > 1:
        cmd += ["--tensor-parallel", "ring"]
    env = [{**e, "OPTA_LMX_EXACT": "1"} for e in ring_env(ranks, hostfile)]
    r = launch([cmd] * ranks, env)[0]
    return {"tokens_per_s": r["generation_tokens_per_s"], "ids": r["ids"]}


def mlx_lm(model: Path, tokens: int, ranks: int, hostfile: Path) -> dict:
    cmd = [sys.executable, __file__, "--mlx-lm-rank", str(model), "--tokens", str(tokens)]
    r = launch([cmd] * ranks, ring_env(ranks, hostfile))[0]
    return r


def mlx_lm_rank(model: Path, tokens: int) -> None:
    """One rank of mlx-lm: load, shard when in a group, generate, print JSON."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import mlx.core as mx
    import mlx_lm_compat  # noqa: F401
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    m, tok = load(str(model))
    if "MLX_HOSTFILE" in os.environ:
        m.shard(mx.distributed.init(backend="ring"))
    prompt = tok._tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True)
    if hasattr(prompt, "keys"):
        prompt = prompt["input_ids"]
    ids, first = [], None
    for token, _ in generate_step(mx.array(prompt), m, max_tokens=tokens):
        if first is None:
            first = time.perf_counter()
        if token in tok.eos_token_ids:
            break
        ids.append(int(token))
    elapsed = time.perf_counter() - first
    print(json.dumps({"tokens_per_s": (len(ids) - 1) / elapsed if len(ids) > 1 else 0.0, "ids": ids}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--worker", type=Path, default=Path(__file__).resolve().parent.parent / "target/release/opta-lmx-worker")
    ap.add_argument("--mlx-lm-rank", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mlx_lm_rank:
        mlx_lm_rank(args.model, args.tokens)
        return
    layers = json.loads((args.model / "config.json").read_text())["num_hidden_layers"]
    with tempfile.TemporaryDirectory() as tmp:
        hostfile = Path(tmp) / "hosts.json"
        rows = {}
        for name, run in (("opta-lmx", lambda r: opta(args.worker, args.model, args.tokens, r, hostfile)),
                          ("mlx-lm", lambda r: mlx_lm(args.model, args.tokens, r, hostfile))):
            for ranks in (1, 2):
                results = [run(ranks) for _ in range(args.runs)]
                rows[(name, ranks)] = {
                    "tokens_per_s": statistics.median(r["tokens_per_s"] for r in results),
                    "ids": results[0]["ids"],
                }
    ids = {k: v["ids"] for k, v in rows.items()}
    same = all(v == ids[("mlx-lm", 1)] for v in ids.values())
    print(f"{args.model.name}: {layers} layers, {args.tokens} greedy tokens, median of {args.runs} runs")
    print(f"{'':10} {'1 process':>12} {'2 ranks':>12} {'ms/token added':>16} {'per all_sum':>12}")
    for name in ("opta-lmx", "mlx-lm"):
        one, two = rows[(name, 1)]["tokens_per_s"], rows[(name, 2)]["tokens_per_s"]
        added = 1e3 / two - 1e3 / one
        print(f"{name:10} {one:9.1f} t/s {two:9.1f} t/s {added:13.3f} ms {added * 1e3 / (2 * layers):9.1f} us")
    print(f"2 ranks / 1 process: opta-lmx {rows[('opta-lmx', 2)]['tokens_per_s'] / rows[('opta-lmx', 1)]['tokens_per_s']:.2f}x, "
          f"mlx-lm {rows[('mlx-lm', 2)]['tokens_per_s'] / rows[('mlx-lm', 1)]['tokens_per_s']:.2f}x; "
          f"opta-lmx / mlx-lm at 2 ranks: {rows[('opta-lmx', 2)]['tokens_per_s'] / rows[('mlx-lm', 2)]['tokens_per_s']:.2f}x")
    print("token ids: " + ("identical in all four" if same else f"DIFFER: {ids}"))


if __name__ == "__main__":
    main()
