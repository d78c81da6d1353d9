"""Anthropic's Messages API through the daemon with the official `anthropic` SDK, as Claude Code
uses it: text, streamed events, forced tool use with schema-valid input, tool results, token
counts, Anthropic-shaped errors, and a Claude-Code-style request kept as a fixture."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import anthropic
import jsonschema
import pytest

from conftest import F32, TINY_QWEN3

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server, api_key="not-needed", max_retries=0, timeout=300)


def test_text_message(claude):
    m = claude.messages.create(
        model=F32,
        max_tokens=24,
        temperature=0,
        system="You answer in one short sentence.",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert m.type == "message" and m.role == "assistant"
    assert m.id.startswith("msg_")
    assert "Paris" in m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert m.usage.input_tokens > 10 and m.usage.output_tokens > 0


def test_stream_events_in_order(claude):
    with claude.messages.stream(
        model=F32, max_tokens=8, temperature=0, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_message()
    assert events[0] == "message_start"
    assert "content_block_start" in events and "content_block_delta" in events
    assert events[-1] == "message_stop"
    assert events.index("message_delta") > events.index("content_block_stop")
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 8
    assert final.content[0].text


@pytest.mark.parametrize("stream", [False, True])
def test_forced_tool_use_has_schema_valid_input(claude, stream):
    kwargs = dict(
        model=F32,
        max_tokens=120,
        temperature=0,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=ASK,
    )
    if stream:
        with claude.messages.stream(**kwargs) as s:
            for _ in s:
                pass
            m = s.get_final_message()
    else:
        m = claude.messages.create(**kwargs)
    assert m.stop_reason == "tool_use"
    uses = [b for b in m.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather"
    jsonschema.validate(uses[0].input, WEATHER["input_schema"])


def test_tool_results_round_trip(claude):
    first = claude.messages.create(
        model=F32, max_tokens=120, temperature=0, tools=[WEATHER], tool_choice={"type": "any"}, messages=ASK
    )
    use = next(b for b in first.content if b.type == "tool_use")
    history = ASK + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21 C, clear"}]},
    ]
    second = claude.messages.create(model=F32, max_tokens=40, temperature=0, tools=[WEATHER], messages=history)
    assert second.content
    assert second.usage.input_tokens > first.usage.input_tokens + 10


def test_count_tokens_matches_the_prompt(claude):
    counted = claude.messages.count_tokens(model=F32, messages=ASK, tools=[WEATHER])
    m = claude.messages.create(model=F32, max_tokens=1, messages=ASK, tools=[WEATHER])
    assert counted.input_tokens == m.usage.input_tokens
    beta = claude.beta.messages.count_tokens(model=F32, messages=ASK)
    assert 0 < beta.input_tokens < counted.input_tokens


def test_errors_take_anthropics_shape(claude):
    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.create(model=F32, max_tokens=5, messages=[])
    assert err.value.body["type"] == "error"
    assert err.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError) as err:
        claude.messages.create(model="nobody/no-such-model", max_tokens=5, messages=ASK)
    assert err.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.create(
            model=F32,
            max_tokens=5,
            messages=[{"role": "user", "content": [{"type": "image", "source": {
                "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}],
        )
    assert "image" in err.value.body["error"]["message"]


def test_thinking_streams_as_thinking_blocks(claude):
    m = claude.messages.create(model=TINY_QWEN3, max_tokens=6, temperature=0, messages=[{"role": "user", "content": "Hi"}])
    assert m.content[0].type == "thinking" and m.content[0].thinking
    off = claude.messages.create(
        model=TINY_QWEN3, max_tokens=6, temperature=0, thinking={"type": "disabled"},
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert [b.type for b in off.content] == ["text"]


def test_a_claude_code_request_streams_to_completion(server):
    """Claude Code's shape: a billing line in `system`, a `claude-*` model name, many tools
    (one of Anthropic's server tools among them), thinking, metadata, `?beta=true`."""
    body = json.loads((FIXTURES / "claude_code_request.json").read_text())
    client = anthropic.Anthropic(
        base_url=server, api_key="sk-ant-local", max_retries=0, timeout=300,
        default_headers={"anthropic-beta": "claude-code-20250219"},
    )
    # The fixture names a Claude model: the daemon maps it to the one model loaded.
    unload = urllib.request.Request(
        server + "/admin/models/unload",
        data=json.dumps({"model_id": TINY_QWEN3}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        urllib.request.urlopen(unload, timeout=60)
    except urllib.error.HTTPError:
        pass  # not loaded
    client.messages.create(model=F32, max_tokens=1, messages=[{"role": "user", "content": "warm up"}])
    assert body.pop("stream") is True, "recorded as a stream"
    events = []
    with client.messages.stream(**body) as s:
        for e in s:
            events.append(e.type)
        final = s.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert final.stop_reason in ("end_turn", "max_tokens", "tool_use")
    # The billing line does not reach the prompt: the same request with another billing
    # value counts the same tokens.
    body2 = json.loads(json.dumps(body).replace("cch=5f1a2", "cch=99e0b"))
    a = client.messages.count_tokens(**{k: v for k, v in body.items() if k in ("model", "messages", "system", "tools")})
    b = client.messages.count_tokens(**{k: v for k, v in body2.items() if k in ("model", "messages", "system", "tools")})
    assert a.input_tokens == b.input_tokens
