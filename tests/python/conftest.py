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


@pytest.fixture(scope="module")
def server():
    port = free_port()
    tmp = tempfile.TemporaryDirectory()
    env = dict(os.environ, OPTA_LMX_WORKER=str(TARGET / "opta-lmx-worker"), HF_HUB_CACHE=tmp.name)
    proc = subprocess.Popen(
        [str(TARGET / "opta-lmx"), "serve", "--port", str(port), "--models-dir", str(MODELS)], env=env
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            urllib.request.urlopen(base + "/admin/health", timeout=1)
            break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("opta-lmx did not start")
    yield base
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    tmp.cleanup()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="not-needed", max_retries=0, timeout=300)


