#!/usr/bin/env python3
"""Soak test: does the controller leak across many loads, unloads and requests?

Starts `opta-lmx serve` on a free loopback port with the test models, warms it up, then runs
--cycles load/unload cycles through the admin API and --requests mixed requests (chat and text
completions, the Messages and Responses APIs, streamed and not, some clients hanging up
mid-stream) from --concurrency clients at once. With no model loaded before, between and after
the two phases, it takes the controller's resident memory, open file descriptors, sockets and
descendant processes (workers), prints them in a table and exits 1 if any grew past its
tolerance, or if any request failed (an unexpected status, a 5xx, a broken or unfinished
stream, a connection error) or a cancelled request was still running afterwards.

  cargo build --release -p opta-lmx -p opta-lmx-worker
  .deps/venv/bin/python tools/soak.py --cycles 500 --requests 2000
  .deps/venv/bin/python tools/soak.py --cycles 20 --requests 100 --profile debug   # quick try
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("opta/tiny-random-llama", "opta/tiny-random-qwen3")
# Seconds one request may take; a debug build on a busy machine included.
TIMEOUT = 120
# Streamed requests whose client hangs up ask for nearly the whole context (2048 tokens), so
# the hang-up comes mid-stream and the request, unless cancelled, runs on for far longer than
# DRAIN_TIMEOUT, the seconds they get to leave the worker; the others stay short.
LONG_TOKENS = 1900
SHORT_TOKENS = 8
DRAIN_TIMEOUT = 5
PROMPT = [{"role": "user", "content": "Tell me a story about a lighthouse."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The daemon under test, and the /proc view of it."""

    def __init__(self, bins: Path, models_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.tmp = tempfile.TemporaryDirectory()
        env = dict(os.environ, OPTA_LMX_WORKER=str(bins / "opta-lmx-worker"),
                   HF_HUB_CACHE=self.tmp.name)
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [str(bins / "opta-lmx"), "serve", "--port", str(self.port), "--models-dir", str(models_dir)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        for _ in range(600):
            try:
                if self.request("GET", "/admin/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise SystemExit(f"opta-lmx did not start (log: {log})")

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            conn.request(method, path, json.dumps(body) if body is not None else None,
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        self.tmp.cleanup()

    def snapshot(self) -> dict[str, int]:
        # The connection of the last admin request closes on the server's side a moment after
        # the client's.
        time.sleep(0.5)
        pid = self.proc.pid
        fd_dir = Path(f"/proc/{pid}/fd")
        targets = []
        for fd in fd_dir.iterdir():
            try:
                targets.append(os.readlink(fd))
            except FileNotFoundError:  # closed while listing
                pass
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        return {
            "rss_kib": next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")),
            "fds": len(targets),
            "sockets": sum(t.startswith("socket:") for t in targets),
            "processes": len(descendants(pid)),
        }


def descendants(pid: int) -> list[int]:
    """Every process below pid (its workers), from the parent links in /proc."""
    children = collections.defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name in parentheses may hold spaces; the parent pid follows it.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        children[int(fields[1])].append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children[todo.pop()]:
            found.append(child)
            todo.append(child)
    return found


def in_flight(server: Server) -> int:
    """Requests the controller or any worker still runs (the admin status's own counts)."""
    status, body = server.request("GET", "/admin/status")
    assert status == 200, body
    total = 0
    for worker in json.loads(body)["workers"]:
        total += worker["requests"]["in_flight"]
        total += (worker["worker_stats"] or {}).get("active_requests", 0)
    return total


def chat_body(model: str, tokens: int) -> dict:
    return {"model": model, "messages": PROMPT, "max_tokens": tokens}


# The kinds of mixed request: each one's route and body for a model and a token limit.
KINDS = {
    "chat": ("/v1/chat/completions", chat_body),
    "completion": ("/v1/completions",
                   lambda m, n: {"model": m, "prompt": "Once upon a time", "max_tokens": n}),
    "lms-chat": ("/api/v0/chat/completions", chat_body),
    "messages": ("/v1/messages", chat_body),
    # store: false keeps the response store (bounded, 512 by default) out of the memory figures.
    "responses": ("/v1/responses", lambda m, n: {"model": m, "input": "Tell me a story.",
                                                 "max_output_tokens": n, "store": False}),
}
# The line in a finished stream's last event (OpenAI's chunks end with `data: [DONE]`); a
# stream that fails ends with an error event instead.
STREAM_ENDS = {
    "/v1/messages": ("event: message_stop",),
    "/v1/responses": ("event: response.completed", "event: response.incomplete"),
}


class Clients:
    """Runs mixed requests from a thread pool, counting outcomes by kind."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.local = threading.local()
        self.lock = threading.Lock()
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[str] = collections.Counter()
        self.errors: list[str] = []
        self.connections: list[http.client.HTTPConnection] = []

    def connection(self) -> http.client.HTTPConnection:
        # One keep-alive connection per client thread, replaced after a hang-up.
        if getattr(self.local, "conn", None) is None:
            self.local.conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=TIMEOUT)
            with self.lock:
                self.connections.append(self.local.conn)
        return self.local.conn

    def close(self) -> None:
        """Hangs up every keep-alive connection, so none counts in the server's sockets."""
        for conn in self.connections:
            conn.close()

    def run(self, job: tuple[str, str, bool, bool]) -> None:
        kind, model, stream, hang_up = job
        label = f"{kind}{' stream' if stream else ''}{' hang-up' if hang_up else ''}"
        path, make = KINDS[kind]
        body = make(model, LONG_TOKENS if hang_up else SHORT_TOKENS) | {"stream": stream,
                                                                         "temperature": 0}
        status = "no answer"
        try:
            conn = self.connection()
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            r = conn.getresponse()
            status = str(r.status)
            problem = self.check(r, path, stream, hang_up)
        except (OSError, http.client.HTTPException) as e:
            problem = f"{type(e).__name__}: {e}"
            self.local.conn = None
        with self.lock:
            self.outcomes[label] += 1
            self.statuses[status] += 1
            if problem:
                self.errors.append(f"{label} {path}: {problem}")

    def check(self, r: http.client.HTTPResponse, path: str, stream: bool,
              hang_up: bool) -> str | None:
        """What is wrong with the answer, if anything; reads (or hangs up on) it."""
        if r.status != 200:
            return f"HTTP {r.status}: {r.read()[:300]!r}"
        if not stream:
            data = json.loads(r.read())
            return None if data.get("id") else f"no id in {data!r:.300}"
        if hang_up:
            # Wait for the first event, so generation has begun, then drop the connection.
            first = r.readline()
            self.local.conn.close()
            self.local.conn = None
            return None if first else "the stream ended before its first event"
        text = r.read().decode()
        last = text.replace("\r\n", "\n").rstrip().rsplit("\n\n", 1)[-1].split("\n")
        if not any(line in STREAM_ENDS.get(path, ("data: [DONE]",)) for line in last):
            return f"the stream did not finish cleanly: ...{text[-300:]!r}"
        return None


def jobs(count: int, seed: int) -> list[tuple[str, str, bool, bool]]:
    """A reproducible mix: every kind, about half streamed, one stream in five hung up on."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        stream = rng.random() < 0.5
        out.append((rng.choice(list(KINDS)), rng.choice(MODELS), stream, stream and rng.random() < 0.2))
    return out


def unload_all(server: Server) -> None:
    for model in MODELS:
        status, body = server.request("POST", "/admin/models/unload", {"model_id": model})
        if status not in (200, 404):  # 404: not loaded
            raise SystemExit(f"unload {model}: HTTP {status} {body[:300]!r}")


def wait_drained(server: Server) -> float | None:
    """Seconds until no request runs, or None past DRAIN_TIMEOUT."""
    start = time.monotonic()
    while time.monotonic() < start + DRAIN_TIMEOUT:
        if in_flight(server) == 0:
            return time.monotonic() - start
        time.sleep(0.1)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=500, help="load/unload cycles")
    ap.add_argument("--requests", type=int, default=2000, help="mixed requests")
    ap.add_argument("--concurrency", type=int, default=4, help="clients at once")
    ap.add_argument("--target-dir", type=Path,
                    default=Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")))
    ap.add_argument("--profile", default="release", help="<target-dir>/<profile> holds the binaries")
    ap.add_argument("--models-dir", type=Path, default=ROOT / ".deps/models")
    ap.add_argument("--seed", type=int, default=0, help="seeds the request mix")
    ap.add_argument("--rss-tolerance-mib", type=float, default=8,
                    help="resident-memory growth allowed (allocator caches settle)")
    ap.add_argument("--fd-tolerance", type=int, default=2,
                    help="file-descriptor and socket growth allowed")
    args = ap.parse_args()

    bins = args.target_dir / args.profile
    log = Path(tempfile.gettempdir()) / f"opta-lmx-soak-{os.getpid()}.log"
    server = Server(bins, args.models_dir, log)
    failures: list[str] = []
    snapshots = {}
    try:
        # Warm-up: each kind of request once (the first loads the model), then an unload, so
        # one-off allocations (the runtime's threads, the first worker's socket folder) are in
        # the baseline.
        warm = Clients(server)
        for kind in KINDS:
            for stream in (False, True):
                warm.run((kind, MODELS[0], stream, False))
        warm.close()
        failures += warm.errors
        unload_all(server)
        snapshots["before"] = server.snapshot()

        start = time.monotonic()
        load_times = []
        for i in range(args.cycles):
            model = MODELS[i % len(MODELS)]
            t = time.monotonic()
            for action in ("load", "unload"):
                status, body = server.request("POST", f"/admin/models/{action}", {"model_id": model})
                if status != 200:
                    failures.append(f"cycle {i}: {action} {model}: HTTP {status} {body[:300]!r}")
            load_times.append(time.monotonic() - t)
        cycles_s = time.monotonic() - start
        snapshots["after cycles"] = server.snapshot()

        clients = Clients(server)
        start = time.monotonic()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(clients.run, jobs(args.requests, args.seed)))
        requests_s = time.monotonic() - start
        clients.close()
        failures += clients.errors
        drained_s = wait_drained(server)
        if drained_s is None:
            failures.append(f"requests still running {DRAIN_TIMEOUT} s after the last client finished")
        unload_all(server)
        snapshots["after requests"] = server.snapshot()
    finally:
        server.stop()

    load_times.sort()
    print(f"binaries {bins}, models {', '.join(MODELS)}")
    if load_times:
        print(f"{args.cycles} load/unload cycles in {cycles_s:.1f} s "
              f"(median {load_times[len(load_times) // 2] * 1e3:.0f} ms, "
              f"max {load_times[-1] * 1e3:.0f} ms)")
    drained = "never" if drained_s is None else f"{drained_s:.1f} s later"
    print(f"{args.requests} requests from {args.concurrency} clients in {requests_s:.1f} s, "
          f"none running {drained}:")
    for label, n in sorted(clients.outcomes.items()):
        print(f"  {label:<28}{n:>6}")
    print("HTTP statuses: " + ", ".join(f"{k}: {n}" for k, n in sorted(clients.statuses.items())))

    limits = {"rss_kib": args.rss_tolerance_mib * 1024, "fds": args.fd_tolerance,
              "sockets": args.fd_tolerance, "processes": 0}
    names = list(snapshots)
    print(f"\n{'controller':<14}" + "".join(f"{n:>16}" for n in names)
          + f"{'growth':>10}{'allowed':>10}")
    for metric, allowed in limits.items():
        values = [snapshots[n][metric] for n in names]
        growth = max(values) - values[0]
        verdict = "" if growth <= allowed else "  GREW"
        print(f"{metric:<14}" + "".join(f"{v:>16}" for v in values)
              + f"{growth:>10}{allowed:>10.0f}{verdict}")
        if verdict:
            failures.append(f"{metric} grew by {growth} (allowed {allowed:.0f})")

    print(f"\nerrors: {len(failures)}")
    for f in failures[:20]:
        print(f"  {f}")
    if len(failures) > 20:
        print(f"  ... and {len(failures) - 20} more")
    if failures:
        print(f"server log: {log}")
        return 1
    log.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
