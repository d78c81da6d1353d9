"""The official OpenAI Python SDK against the real daemon, real workers and real test models.

Run by scripts/test.sh after the Rust build: `.deps/venv/bin/python -m pytest tests/python`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

from conftest import F32, TINY

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_non_streaming(client):
    r = client.chat.completions.create(model=F32, messages=QUESTION, temperature=0, max_tokens=24)
    assert r.id.startswith("chatcmpl-")
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 37
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_with_usage(client):
    chunks = list(
        client.chat.completions.create(
            model=F32,
            messages=QUESTION,
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_models_list(client):
    ids = [m.id for m in client.models.list().data]
    assert F32 in ids and TINY in ids


def test_stop_and_length(client):
    r = client.chat.completions.create(model=F32, messages=QUESTION, temperature=0, stop=["Paris"])
    assert "Paris" not in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    r = client.chat.completions.create(model=F32, messages=QUESTION, temperature=0, max_tokens=2)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 2


def test_seed_reproducibility(client):
    def draw():
        r = client.chat.completions.create(
            model=TINY, messages=QUESTION, temperature=1.0, seed=1234, max_tokens=10
        )
        return r.choices[0].message.content

    assert draw() == draw()


def test_logprobs(client):
    r = client.chat.completions.create(
        model=F32, messages=QUESTION, temperature=0, max_tokens=4, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) >= 1
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    # Greedy: the chosen token is the most likely alternative.
    assert content[0].token == content[0].top_logprobs[0].token


def test_completions_endpoint(client):
    r = client.completions.create(model=TINY, prompt="Once upon a time", max_tokens=4, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason == "length"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nobody/nothing", messages=QUESTION)
    assert e.value.body["code"] == "model_not_found"


def test_invalid_bodies_are_4xx(client, server):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=F32, messages=[])
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=F32, messages=QUESTION, temperature=5)
    assert e.value.body["param"] == "temperature"

    def raw(body: bytes) -> tuple[int, dict]:
        req = urllib.request.Request(
            server + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    assert raw(b"{not json")[0] == 400
    code, body = raw(json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode())
    assert 400 <= code < 500 and body["error"]["param"] == "model"
    code, body = raw(json.dumps({"model": F32}).encode())
    assert 400 <= code < 500 and "messages" in body["error"]["message"]
    for field, bad in [("max_tokens", "many"), ("stream", "yes"), ("stop", 7), ("seed", "x"), ("messages", "hi")]:
        code, body = raw(json.dumps({"model": F32, "messages": QUESTION, field: bad}).encode())
        assert code == 400, (field, body)
        assert body["error"]["param"].startswith(field), (field, body)


def test_a_request_with_no_sampling_fields_answers_and_ends(client):
    """The README's first request: no temperature, no max_tokens. The sampling defaults
    (LM Studio's) make a short, sensible answer that ends by itself; seeded so that the test
    is repeatable."""
    r = client.chat.completions.create(model=F32, messages=QUESTION, seed=7)
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 200, r.choices[0].message.content
    assert "Paris" in r.choices[0].message.content


def test_context_length_exceeded_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=TINY, messages=[{"role": "user", "content": "word " * 3000}], max_tokens=2
        )
    assert e.value.code == "context_length_exceeded"
    assert e.value.body["param"] == "messages"
