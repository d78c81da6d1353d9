#!/usr/bin/env python3
"""The first turn of a new session after a daemon restart: the prompt cache's disk tier, warm
against cold, with mlx_lm.server (whose prompt cache lives in memory only) in the same run.

An agent resends the same long system prompt at every session start. This sends one chat (a
system prompt of about --tokens tokens and a short question, greedy, one generated token) to:
  1. a fresh Opta-LMX daemon with an empty disk cache (cold: the whole prompt is computed),
  2. a new daemon on the same cache folder, after the first stopped (warm: read from disk),
  3. a fresh mlx_lm.server on the same model folder (what a restart costs there),
each with the model loaded first, so that the figure is the request alone. Prints the time to
the answer (one token) for each and the ratio.

  cargo build --release -p opta-lmx -p opta-lmx-worker
  .deps/venv/bin/python tools/bench_disk_cache.py [--model opta/SmolLM2-135M-Instruct-f32] [--tokens 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(base: str, path: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=timeout).read())


def wait_up(base: str, path: str) -> None:
    for _ in range(1200):
        try:
            urllib.request.urlopen(base + path, timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{base} did not come up")


def timed_chat(base: str, model: str, messages: list) -> tuple[float, dict]:
    start = time.perf_counter()
    out = post(base, "/v1/chat/completions",
               {"model": model, "messages": messages, "temperature": 0, "max_tokens": 1})
    return time.perf_counter() - start, out


def opta_run(bins: Path, model: str, cache: Path, messages: list) -> tuple[float, dict]:
    port = free_port()
    config = Path(cache.parent / f"config-{port}.yaml")
    config.write_text(f"models:\n  prompt_cache_dir: {cache}\n")
    env = dict(os.environ, OPTA_LMX_WORKER=str(bins / "opta-lmx-worker"), RUST_LOG="warn")
    server = subprocess.Popen([str(bins / "opta-lmx"), "serve", "--config", str(config), "--port", str(port),
                               "--models-dir", str(ROOT / ".deps/models")], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_up(base, "/admin/health")
        post(base, "/admin/models/load", {"model_id": model})
        return timed_chat(base, model, messages)
    finally:
        # A graceful stop lets the worker finish writing its cache.
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def mlx_lm_run(model_dir: Path, messages: list) -> float:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlx_lm", "server", "--model", str(model_dir),
                               "--port", str(port)], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_up(base, "/v1/models")
        # Loads the model (mlx_lm.server loads on the first request).
        timed_chat(base, "default_model", [{"role": "user", "content": "Hi"}])
        return timed_chat(base, "default_model", messages)[0]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="opta/SmolLM2-135M-Instruct-f32")
    ap.add_argument("--tokens", type=int, default=4000, help="about how long the system prompt is")
    ap.add_argument("--profile", default="release", help="target/<profile> to take the binaries from")
    args = ap.parse_args()

    bins = ROOT / "target" / args.profile
    # About 10 tokens a sentence; varied so that no tokenizer merges it into few tokens.
    system = " ".join(f"Rule {i}: answer in plain words and cite file {i * 7 % 97}.py when asked."
                      for i in range(args.tokens // 16))
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": "Which file holds the parser?"}]
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "prompt-cache"
        cold, out = opta_run(bins, args.model, cache, messages)
        warm, again = opta_run(bins, args.model, cache, messages)
    prompt = out["usage"]["prompt_tokens"]
    cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
    same = out["choices"][0]["message"]["content"] == again["choices"][0]["message"]["content"]
    reference = mlx_lm_run(ROOT / ".deps/models" / args.model, messages)
    print(f"{args.model}, a {prompt}-token prompt, one generated token, target/{args.profile}")
    print(f"{'':<44}{'seconds':>10}")
    print(f"{'Opta-LMX, new daemon, cold':<44}{cold:>10.2f}")
    print(f"{'Opta-LMX, new daemon, from disk':<44}{warm:>10.2f}   ({cached} tokens read back, same answer: {same})")
    print(f"{'mlx_lm.server, new server':<44}{reference:>10.2f}")
    print(f"cold / from disk: {cold / warm:.1f}x; mlx_lm.server / from disk: {reference / warm:.1f}x")


if __name__ == "__main__":
    main()
