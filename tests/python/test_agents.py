"""Claude Code and Codex, the real binaries from npm (set-up installs them at pinned versions),
unmodified, against the daemon: one-shot turns answered by the real worker, tool loops driven
by a scripted worker double that make each client run a real tool, and Codex's LM Studio mode
on port 1234. Each client runs in a scratch home with telemetry, updates and other outside
traffic off, and stdin closed (both wait for it otherwise).

The request shapes both clients send are kept as fixtures (fixtures/*_request.json, made by
tools/shape_fixture.py: the same structure, filler in place of the clients' prose), replayed
here through the official SDKs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import anthropic
import openai
import pytest

from conftest import ROOT, TARGET, free_port, start_daemon, stop_daemon

AGENTS = ROOT / ".deps/agents/node_modules/.bin"
FIXTURES = Path(__file__).parent / "fixtures"
CLAUDE_FIXTURE = FIXTURES / "claude_code_2.1.197_request.json"
CODEX_FIXTURE = FIXTURES / "codex_0.169.0_request.json"
# A tiny model with a 131072-token context, so the clients' 10-20k-token prompts prefill in
# seconds, whose weights answer every chat with one sentence and end the turn (both clients take
# an answer cut at its limit for an error).
SCRIPTED = "opta/tiny-scripted-llama"
ANSWER = "Hello! I am a tiny test model."
TINY = "opta/tiny-random-llama"
CLIENT_TIMEOUT = 600


def post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.load(r)


# Prompts read in 512-token chunks, each reported; a cap in case the script ever breaks.
REAL_CONFIG = """
models:
  prefill_step_size: 512
  max_output_tokens: {max: 64}
"""


@pytest.fixture(scope="module")
def real():
    proc, base, tmp = start_daemon(REAL_CONFIG, free_port())
    post(base, "/admin/models/load", {"model_id": SCRIPTED})
    yield base
    stop_daemon(proc, tmp)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    """A daemon whose worker is the scripted double: it calls Claude Code's Write tool (a file
    in `claude_dir`) or Codex's exec_command tool, then answers "Done."."""
    work = tmp_path_factory.mktemp("scripted")
    claude_dir = work / "claude"
    claude_dir.mkdir()
    script = work / "script.json"
    script.write_text(json.dumps({
        "calls": [
            {"tool": "Write", "arguments": {"file_path": str(claude_dir / "hello.txt"),
                                             "content": "written by Claude Code\n"}},
            {"tool": "exec_command", "arguments": {"cmd": "echo run by Codex > hello.txt"}},
        ],
        "answer": "Done.",
    }))
    worker = work / "worker.sh"
    worker.write_text(f"#!/bin/sh\nexec '{TARGET / 'opta-lmx-fake-worker'}' --script '{script}' \"$@\"\n")
    worker.chmod(0o755)
    proc, base, tmp = start_daemon("", free_port(), {"OPTA_LMX_WORKER": str(worker)})
    yield base, claude_dir
    stop_daemon(proc, tmp)


def client_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    """A clean environment: nothing of the caller's reaches the client but PATH."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def claude(base: str, model: str, prompt: str, cwd: Path, *flags: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="claude-home-") as home:
        return run_claude(base, model, prompt, cwd, Path(home), flags)


def run_claude(base: str, model: str, prompt: str, cwd: Path, home: Path, flags) -> dict:
    env = client_env(home, {
        "ANTHROPIC_BASE_URL": base,
        "ANTHROPIC_API_KEY": "sk-ant-local",
        "ANTHROPIC_MODEL": model,
        "ANTHROPIC_SMALL_FAST_MODEL": model,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        # A failure shows at once instead of after minutes of retries.
        "CLAUDE_CODE_MAX_RETRIES": "0",
    })
    p = subprocess.run(
        [str(AGENTS / "claude"), "-p", prompt, "--output-format", "json", *flags],
        cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=CLIENT_TIMEOUT,
    )
    assert p.returncode == 0, f"claude exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    out = json.loads(p.stdout)
    assert out["is_error"] is False, out
    return out


CODEX_QUIET = """check_for_update_on_startup = false
[analytics]
enabled = false
[feedback]
enabled = false
[features]
plugins = false
"""


def codex(args: list[str], cwd: Path, config: str) -> str:
    with tempfile.TemporaryDirectory(prefix="codex-home-") as home:
        return run_codex(args, cwd, config, Path(home))


def run_codex(args: list[str], cwd: Path, config: str, home: Path) -> str:
    codex_home = home / ".codex"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(config)
    env = client_env(home, {"CODEX_HOME": str(codex_home)})
    p = subprocess.run(
        [str(AGENTS / "codex"), "exec", "--skip-git-repo-check", *args],
        cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=CLIENT_TIMEOUT,
    )
    assert p.returncode == 0, f"codex exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr[-4000:]}"
    return p.stdout


def codex_provider(base: str, model: str) -> str:
    # No retries: a failure shows at once.
    return f"""model = "{model}"
model_provider = "opta"
{CODEX_QUIET}
[model_providers.opta]
name = "Opta-LMX"
base_url = "{base}/v1"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""


def test_claude_code_answers_a_one_shot_prompt(real, tmp_path):
    out = claude(real, SCRIPTED, "Say hello.", tmp_path)
    assert out["subtype"] == "success"
    assert out["result"] == ANSWER
    assert out["stop_reason"] == "end_turn"
    # Its whole 20k-token request reached the model, read in chunks.
    assert out["usage"]["input_tokens"] > 15_000, out["usage"]


def test_codex_answers_a_one_shot_prompt(real, tmp_path):
    answer = codex(["Say hello."], tmp_path, codex_provider(real, SCRIPTED))
    assert answer.strip() == ANSWER


def test_claude_code_writes_a_file_through_a_tool_call(scripted):
    base, claude_dir = scripted
    out = claude(base, TINY, "Create hello.txt", claude_dir, "--permission-mode", "acceptEdits")
    assert (claude_dir / "hello.txt").read_text() == "written by Claude Code\n"
    assert out["result"] == "Done."
    assert out["num_turns"] >= 2, out


def test_codex_runs_a_shell_command_through_a_tool_call(scripted, tmp_path):
    base, _ = scripted
    answer = codex(["--dangerously-bypass-approvals-and-sandbox", "Create hello.txt"], tmp_path,
                   codex_provider(base, TINY))
    assert (tmp_path / "hello.txt").read_text() == "run by Codex\n"
    assert "Done." in answer


def port_free(port: int) -> bool:
    with socket.socket() as s:
        # As the daemon binds: connections closing on the port do not make it busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_codex_lm_studio_mode_on_port_1234(tmp_path):
    """`codex --oss --local-provider lmstudio` as it ships: LM Studio's address, a model check
    through /v1/models, a one-token "load" request, then the turn."""
    if not port_free(1234):
        pytest.skip("port 1234 is taken (an LM Studio or Opta-LMX is running here)")
    proc, base, tmp = start_daemon(REAL_CONFIG, 1234)
    try:
        answer = codex(["--oss", "--local-provider", "lmstudio", "-m", SCRIPTED, "Say hello."],
                       tmp_path, CODEX_QUIET)
        assert answer.strip() == ANSWER
    finally:
        stop_daemon(proc, tmp)


def test_claude_codes_request_shape_streams_through_the_sdk(real):
    """The request Claude Code 2.1.197 sends (system message inside `messages`, adaptive
    thinking, context_management, output_config, metadata.user_id as a JSON string, 24 tools),
    streamed with the official SDK, and counted."""
    body = json.loads(CLAUDE_FIXTURE.read_text())
    assert [m["role"] for m in body["messages"]] == ["user", "system"]
    client = anthropic.Anthropic(base_url=real, api_key="sk-ant-local", max_retries=0, timeout=300)
    assert body.pop("stream") is True
    # Fields newer than some SDK versions' signatures go as they are, in the body.
    extra = {k: body.pop(k) for k in ("context_management", "output_config", "thinking")}
    with client.messages.stream(**body, extra_body=extra) as s:
        events = [e.type for e in s]
        final = s.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert final.stop_reason == "end_turn"
    assert [b.text for b in final.content] == [ANSWER]
    count = client.messages.count_tokens(
        **{k: v for k, v in body.items() if k in ("model", "messages", "system", "tools")})
    assert count.input_tokens == final.usage.input_tokens > 10_000


def test_codexs_request_shape_streams_through_the_sdk(real):
    """The request Codex 0.169.0 sends (developer messages, a namespace tool, web_search,
    include, client_metadata, no output limit), streamed with the official SDK."""
    body = json.loads(CODEX_FIXTURE.read_text())
    client = openai.OpenAI(base_url=real + "/v1", api_key="unused", max_retries=0, timeout=300)
    body["model"] = SCRIPTED
    assert body.pop("stream") is True
    extra = {k: body.pop(k) for k in ("client_metadata", "prompt_cache_key") if k in body}
    with client.responses.stream(**body, extra_body=extra) as s:
        events = [e.type for e in s]
        final = s.get_final_response()
    assert events[0] == "response.created" and events[-1] == "response.completed"
    assert final.output_text == ANSWER
    assert final.usage.input_tokens > 5_000
