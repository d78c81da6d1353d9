"""Reasoning split from the answer, and tools through a model's own template, on the tiny random
qwen3 model: its Qwen3-style template opens `<think>` in the prompt unless `enable_thinking` is
false, and renders tools and tool results itself (tools/make_tiny_model.py). Its random weights
never close the block on their own, so everything they write is reasoning."""

from __future__ import annotations

import json

import jsonschema

from conftest import TINY_QWEN3

HI = [{"role": "user", "content": "Hi"}]
TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "maxLength": 20}},
            "required": ["query"],
        },
    },
}


def test_an_opened_think_block_is_reasoning_not_content(client):
    r = client.chat.completions.create(model=TINY_QWEN3, messages=HI, temperature=0, max_tokens=12)
    msg = r.choices[0].message.model_dump()
    assert msg["reasoning_content"], msg
    assert msg["reasoning"] == msg["reasoning_content"]
    assert not msg["content"]
    details = r.usage.completion_tokens_details
    assert details.reasoning_tokens == r.usage.completion_tokens == 12


def test_reasoning_streams_in_its_own_field(client):
    reasoning, content = "", ""
    for chunk in client.chat.completions.create(
        model=TINY_QWEN3, messages=HI, temperature=0, max_tokens=12, stream=True
    ):
        if chunk.choices:
            delta = chunk.choices[0].delta.model_dump()
            reasoning += delta.get("reasoning_content") or ""
            content += delta.get("content") or ""
    assert reasoning and not content


def test_template_kwargs_reach_the_template(client):
    r = client.chat.completions.create(
        model=TINY_QWEN3,
        messages=HI,
        temperature=0,
        max_tokens=12,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    msg = r.choices[0].message.model_dump()
    assert msg["content"] and not msg.get("reasoning_content")
    assert r.usage.completion_tokens_details.reasoning_tokens == 0
    # The closed block is part of the prompt: four more tokens or so than with thinking on.
    on = client.chat.completions.create(model=TINY_QWEN3, messages=HI, temperature=0, max_tokens=1)
    assert r.usage.prompt_tokens > on.usage.prompt_tokens


def test_constrained_json_follows_a_closed_think_block(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    r = client.chat.completions.create(
        model=TINY_QWEN3,
        messages=HI,
        temperature=0,
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    )
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(msg.content), schema)


def test_native_template_tools_forced_and_round_tripped(client):
    r = client.chat.completions.create(
        model=TINY_QWEN3,
        messages=HI,
        tools=[TOOL],
        tool_choice="required",
        temperature=0,
        max_tokens=60,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "lookup"
    jsonschema.validate(json.loads(call.function.arguments), TOOL["function"]["parameters"])
    history = HI + [
        r.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "found it"},
    ]
    again = client.chat.completions.create(
        model=TINY_QWEN3, messages=history, tools=[TOOL], temperature=0, max_tokens=4
    )
    # The call and its result were rendered: the prompt holds both.
    assert again.usage.prompt_tokens > r.usage.prompt_tokens + 8
