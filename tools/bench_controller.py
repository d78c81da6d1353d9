#!/usr/bin/env python3
"""What the controller adds to a streamed request, against the worker's own timing.

Starts `opta-lmx serve` on a free loopback port, loads one model, and streams chat completions
from LM Studio's `/api/v0/chat/completions`, whose final chunk carries the worker's own
`stats` (time to first token and generation time, measured inside the worker). The client
measures the same two intervals on its side of HTTP; the difference is what the controller
(HTTP parsing, routing, the Unix socket hop, SSE framing) adds:

  added time to first token = client TTFT - worker TTFT
  added per token           = (client first-to-last chunk - worker generation time) / (tokens - 1)

End-of-sequence is banned so that every run generates exactly --tokens tokens. Loopback only.

  cargo build --release -p opta-lmx -p opta-lmx-worker
  .deps/venv/bin/python tools/bench_controller.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_once(port: int, model: str, tokens: int) -> dict:
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Tell me a story."}],
            "stream": True,
            "temperature": 0,
            "max_tokens": tokens,
            "logit_bias": {"2": -100},
        }
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    request = (
        f"POST /api/v0/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    start = time.perf_counter()
    sock.sendall(request)
    buf = b""
    first = last = None
    stats = None
    n = 0
    while True:
        data = sock.recv(65536)
        if not data:
            break
        now = time.perf_counter()
        buf += data
        # Events are separated by a blank line; chunked-encoding size lines fall between them
        # and are skipped because they do not start with "data: ".
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            for line in event.split(b"\r\n"):
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                choices = chunk.get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    n += 1
                    first = first or now
                    last = now
                if "stats" in chunk:
                    stats = chunk["stats"]
                    last = now
    sock.close()
    if stats is None or first is None:
        raise RuntimeError("the stream carried no stats or no content")
    return {
        "tokens": n,
        "client_ttft": first - start,
        "client_gen": last - first,
        "worker_ttft": stats["time_to_first_token"],
        "worker_gen": stats["generation_time"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="opta/tiny-random-llama")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--profile", default="release", help="target/<profile> to take the binaries from")
    args = ap.parse_args()

    bins = ROOT / "target" / args.profile
    port = free_port()
    tmp = tempfile.TemporaryDirectory()
    env = dict(os.environ, OPTA_LMX_WORKER=str(bins / "opta-lmx-worker"), HF_HUB_CACHE=tmp.name, RUST_LOG="warn")
    server = subprocess.Popen(
        [str(bins / "opta-lmx"), "serve", "--port", str(port), "--models-dir", str(ROOT / ".deps/models")], env=env
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/admin/health", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        load = urllib.request.Request(
            base + "/admin/models/load",
            data=json.dumps({"model_id": args.model}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(load, timeout=300).read()
        stream_once(port, args.model, 8)  # warm-up
        runs = [stream_once(port, args.model, args.tokens) for _ in range(args.runs)]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        tmp.cleanup()

    def med(key):
        return statistics.median(r[key] for r in runs)

    n = statistics.median(r["tokens"] for r in runs)
    added_ttft = statistics.median(r["client_ttft"] - r["worker_ttft"] for r in runs)
    added_tok = statistics.median((r["client_gen"] - r["worker_gen"]) / max(r["tokens"] - 1, 1) for r in runs)
    print(f"model {args.model}, {n:.0f} streamed tokens, median of {args.runs} runs, target/{args.profile}")
    print(f"{'':<28}{'client':>12}{'worker':>12}{'added':>12}")
    print(f"{'time to first token (ms)':<28}{med('client_ttft') * 1e3:>12.2f}{med('worker_ttft') * 1e3:>12.2f}"
          f"{added_ttft * 1e3:>12.3f}")
    per_client = med("client_gen") / max(n - 1, 1)
    per_worker = med("worker_gen") / max(n - 1, 1)
    print(f"{'per token (us)':<28}{per_client * 1e6:>12.1f}{per_worker * 1e6:>12.1f}{added_tok * 1e6:>12.1f}")


if __name__ == "__main__":
    main()
