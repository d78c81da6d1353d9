#!/usr/bin/env python3
"""Concurrent streaming load: Opta-LMX against mlx_lm.server on the same model, same run.

Starts `opta-lmx serve` and `mlx_lm.server` on free loopback ports, both serving the same
model folder, and for each client count (default 1, 4 and 8) sends that many streaming chat
completions at once, each asking for --tokens tokens with end-of-sequence banned (so every
request generates the same amount on both servers). Each client sends one request per round,
so the work is bounded; a round that runs past --deadline seconds is cut off and the figures
count what arrived by then (marked with *).

Printed per server and client count:
  aggregate tok/s   all generated tokens / (last token - first request sent)
  TTFT p50 / p95    request sent -> first content chunk, in ms
  stream tok/s      median over clients of (tokens - 1) / (last chunk - first chunk)
and the ratios opta / mlx_lm.

  cargo build --release -p opta-lmx -p opta-lmx-worker
  .deps/venv/bin/python tools/bench_load.py .deps/models/opta/SmolLM2-135M-Instruct-4bit
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "Tell me a long story about a dragon who learns to bake bread.",
    "Explain how rainbows form, in detail.",
    "Write a letter to a friend about a trip to the mountains.",
    "Describe the history of the bicycle.",
    "What makes a good cup of tea? Explain step by step.",
    "Write a poem about the sea at night.",
    "Explain how a computer adds two numbers.",
    "Describe a busy market in the morning.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early ({proc.returncode}): {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server not ready after {timeout:.0f} s: {url}")


def stream(port: int, model: str, prompt: str, tokens: int, eos_id: int, deadline: float) -> dict:
    """One streaming chat completion over a raw socket; returns its client-side timings."""
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "temperature": 0,
            "max_tokens": tokens,
            "logit_bias": {str(eos_id): -100},
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(max(1.0, deadline - time.perf_counter()))
    sent = time.perf_counter()
    sock.sendall(head + body)
    chunks: list[float] = []
    buf = b""
    status = None
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            buf += data
            if status is None and b"\r\n" in buf:
                status = int(buf.split(b" ", 2)[1])
            now = time.perf_counter()
            # Count content deltas: one per generated token on both servers.
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                try:
                    event = json.loads(line[5:])
                except ValueError:
                    continue
                for choice in event.get("choices", []):
                    if choice.get("delta", {}).get("content"):
                        chunks.append(now)
            if now > deadline:
                break
    except (TimeoutError, socket.timeout):
        pass
    finally:
        sock.close()
    return {"status": status, "sent": sent, "chunks": chunks, "cut": time.perf_counter() > deadline}


def run_round(port: int, model: str, clients: int, tokens: int, eos_id: int, seconds: float) -> dict:
    deadline = time.perf_counter() + seconds
    results: list[dict] = [{}] * clients
    threads = []
    for i in range(clients):
        def go(i=i):
            results[i] = stream(port, model, PROMPTS[i % len(PROMPTS)], tokens, eos_id, deadline)
        threads.append(threading.Thread(target=go))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bad = [r.get("status") for r in results if r.get("status") != 200]
    if bad:
        raise SystemExit(f"port {port}: statuses {bad}")
    start = min(r["sent"] for r in results)
    end = max((r["chunks"][-1] for r in results if r["chunks"]), default=start)
    total = sum(len(r["chunks"]) for r in results)
    ttft = sorted((r["chunks"][0] - r["sent"]) * 1e3 for r in results if r["chunks"])
    per_stream = [
        (len(r["chunks"]) - 1) / (r["chunks"][-1] - r["chunks"][0])
        for r in results
        if len(r["chunks"]) > 1 and r["chunks"][-1] > r["chunks"][0]
    ]

    def pct(values: list[float], p: float) -> float:
        if not values:
            return float("nan")
        k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
        return values[k]

    return {
        "tokens": total,
        "aggregate": total / (end - start) if end > start else 0.0,
        "ttft_p50": pct(ttft, 50),
        "ttft_p95": pct(ttft, 95),
        "stream": statistics.median(per_stream) if per_stream else 0.0,
        "cut": any(r["cut"] for r in results),
    }


def start_opta(model_dir: Path, port: int, log) -> tuple[subprocess.Popen, str, tempfile.TemporaryDirectory]:
    """Serves `model_dir` through a models folder holding a link to it, as bench/<name>."""
    tmp = tempfile.TemporaryDirectory(prefix="opta-bench-")
    link = Path(tmp.name) / "bench" / model_dir.name
    link.parent.mkdir(parents=True)
    link.symlink_to(model_dir.resolve())
    binary = ROOT / "target" / "release" / "opta-lmx"
    proc = subprocess.Popen(
        [str(binary), "serve", "--port", str(port), "--models-dir", tmp.name],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    model = f"bench/{model_dir.name}"
    wait_ready(f"http://127.0.0.1:{port}/admin/health", proc, 60)
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/admin/models/load",
        data=json.dumps({"model_id": model}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        r.read()
    return proc, model, tmp


def start_mlx_lm(model_dir: Path, port: int, log) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlx_lm.server", "--model", str(model_dir),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    wait_ready(f"http://127.0.0.1:{port}/v1/models", proc, 300)
    return proc, str(model_dir)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="an MLX model folder")
    ap.add_argument("--clients", default="1,4,8", help="client counts, comma-separated")
    ap.add_argument("--tokens", type=int, default=128, help="tokens per request")
    ap.add_argument("--deadline", type=float, default=600, help="seconds a round may take")
    ap.add_argument("--eos-id", type=int, default=2, help="token id banned by logit_bias")
    ap.add_argument("--only", choices=["opta", "mlx_lm"], help="run one server only")
    args = ap.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    log = open(Path(tempfile.gettempdir()) / "opta-bench-load.log", "w")

    table: dict[str, dict[int, dict]] = {}
    servers = [("opta", start_opta), ("mlx_lm", start_mlx_lm)]
    for name, start in servers:
        if args.only and args.only != name:
            continue
        port = free_port()
        started = start(args.model, port, log)
        proc, model = started[0], started[1]
        try:
            # One short warm-up request, so neither side pays first-use costs in the figures.
            run_round(port, model, 1, 4, args.eos_id, args.deadline)
            table[name] = {}
            for n in counts:
                r = run_round(port, model, n, args.tokens, args.eos_id, args.deadline)
                table[name][n] = r
                print(f"{name:7s} {n} clients: {r['aggregate']:.2f} tok/s aggregate, "
                      f"TTFT p50 {r['ttft_p50']:.0f} ms p95 {r['ttft_p95']:.0f} ms, "
                      f"stream {r['stream']:.2f} tok/s{' (cut at deadline)' if r['cut'] else ''}",
                      flush=True)
        finally:
            stop(proc)

    print()
    print("| clients | server | aggregate tok/s | TTFT p50 ms | TTFT p95 ms | stream tok/s |")
    print("|---|---|---|---|---|---|")
    for n in counts:
        for name in table:
            r = table[name][n]
            mark = "*" if r["cut"] else ""
            print(f"| {n} | {name} | {r['aggregate']:.2f}{mark} | {r['ttft_p50']:.0f} | "
                  f"{r['ttft_p95']:.0f} | {r['stream']:.2f} |")
        if len(table) == 2:
            o, m = table["opta"][n], table["mlx_lm"][n]
            ratio = lambda a, b: f"{a / b:.2f}x" if b else "n/a"
            print(f"| {n} | opta / mlx_lm | {ratio(o['aggregate'], m['aggregate'])} | "
                  f"{ratio(o['ttft_p50'], m['ttft_p50'])} | {ratio(o['ttft_p95'], m['ttft_p95'])} | "
                  f"{ratio(o['stream'], m['stream'])} |")
    if "opta" in table and 1 in table["opta"] and max(counts) in table["opta"]:
        one, top = table["opta"][1]["aggregate"], table["opta"][max(counts)]["aggregate"]
        if one:
            print(f"\nopta aggregate at {max(counts)} clients / 1 client: {top / one:.2f}x")
    print(f"(server logs: {log.name})")


if __name__ == "__main__":
    main()
