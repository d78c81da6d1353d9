"""Shared by the Python client tests: one daemon per test module, on a free port, serving the
test models with the debug build's binaries."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
MODELS = Path(os.environ.get("OPTA_LMX_TEST_MODELS", ROOT / ".deps/models/opta")).parent
F32 = "opta/SmolLM2-135M-Instruct-f32"
TINY = "opta/tiny-random-llama"
TINY_QWEN3 = "opta/tiny-random-qwen3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daemon(config: str = "", port: int | None = None, env: dict[str, str] | None = None):
    """`opta-lmx serve` with the config text `config` on `port` (a free one by default), once
    it answers: (process, base URL, its temporary folder)."""
    port = port or free_port()
    tmp = tempfile.TemporaryDirectory()
    cfg = Path(tmp.name) / "config.yaml"
    cfg.write_text(config)
    full_env = dict(os.environ, OPTA_LMX_WORKER=str(TARGET / "opta-lmx-worker"), HF_HUB_CACHE=tmp.name,
                    XDG_CACHE_HOME=tmp.name)
    full_env.update(env or {})
    proc = subprocess.Popen(
        [str(TARGET / "opta-lmx"), "serve", "--config", str(cfg), "--port", str(port),
         "--models-dir", str(MODELS)], env=full_env,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            urllib.request.urlopen(base + "/admin/health", timeout=1)
            return proc, base, tmp
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("opta-lmx did not start")


def stop_daemon(proc, tmp) -> None:
    """SIGTERM, then SIGKILL if it has not stopped within 10 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    tmp.cleanup()


@pytest.fixture(scope="module")
def server():
    proc, base, tmp = start_daemon()
    yield base
    stop_daemon(proc, tmp)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="not-needed", max_retries=0, timeout=300)


