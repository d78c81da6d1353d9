"""Tool calls and structured output through the daemon, as agent clients use them: the official
OpenAI SDK and LangChain, on the f32 SmolLM2 test model (whose template knows no tools, so the
server teaches them the Hermes syntax and forces well-formed calls with a grammar)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import jsonschema
import openai
import pytest

from conftest import F32

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in a timezone",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "languages": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "age", "languages"],
}
SAMPLED = [{"temperature": 0}, {"temperature": 0.8, "seed": 7}]


def schema_of(tool: dict) -> dict:
    return tool["function"]["parameters"]


def check_call(call, tool: dict) -> dict:
    assert call.type == "function"
    assert call.id
    assert call.function.name == tool["function"]["name"]
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, schema_of(tool))
    return args


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_tool_calls_not_streamed(client, choice):
    r = client.chat.completions.create(
        model=F32, messages=ASK, tools=[WEATHER, TIME], tool_choice=choice, temperature=0, max_tokens=120
    )
    choice0 = r.choices[0]
    assert choice0.finish_reason == "tool_calls"
    calls = choice0.message.tool_calls
    assert len(calls) == 1
    tool = TIME if isinstance(choice, dict) else {"get_weather": WEATHER, "get_time": TIME}[calls[0].function.name]
    check_call(calls[0], tool)
    assert choice0.message.content is None, "only calls: content is null"


@pytest.mark.parametrize("sampling", SAMPLED)
def test_forced_tool_call_streamed_as_openai_does(client, sampling):
    stream = client.chat.completions.create(
        model=F32,
        messages=ASK,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=120,
        stream=True,
        **sampling,
    )
    deltas, finish = [], None
    for chunk in stream:
        if not chunk.choices:
            continue
        c = chunk.choices[0]
        finish = c.finish_reason or finish
        deltas.extend(c.delta.tool_calls or [])
        assert not (c.delta.content or "").strip(), "no call text leaks into content"
    assert finish == "tool_calls"
    first = deltas[0]
    assert (first.index, first.type, first.function.name) == (0, "function", "get_weather")
    assert first.id
    assert all(d.id is None and d.function.name is None for d in deltas[1:]), "later deltas only add arguments"
    assert len(deltas) > 2, "arguments arrive in fragments"
    args = json.loads("".join(d.function.arguments or "" for d in deltas))
    jsonschema.validate(args, schema_of(WEATHER))


def test_tool_results_round_trip(client):
    first = client.chat.completions.create(
        model=F32, messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=120
    )
    call = first.choices[0].message.tool_calls[0]
    history = ASK + [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "clear"})},
    ]
    second = client.chat.completions.create(
        model=F32, messages=history, tools=[WEATHER], temperature=0, max_tokens=60
    )
    msg = second.choices[0].message
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert msg.content or msg.tool_calls
    # The result reached the template: the prompt grew by the call and its result.
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + 10


def test_auto_answers_text_or_well_formed_calls(client):
    r = client.chat.completions.create(
        model=F32, messages=[{"role": "user", "content": "Say hello."}], tools=[WEATHER], temperature=0, max_tokens=40
    )
    msg = r.choices[0].message
    assert "<tool_call>" not in (msg.content or "")
    for call in msg.tool_calls or []:
        json.loads(call.function.arguments)
    assert (r.choices[0].finish_reason == "tool_calls") == bool(msg.tool_calls)


def test_tool_choice_none_answers_text(client):
    r = client.chat.completions.create(
        model=F32, messages=ASK, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=30
    )
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content


@pytest.mark.parametrize("sampling", SAMPLED)
@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_is_valid(client, sampling, stream):
    kwargs = dict(
        model=F32,
        messages=[{"role": "user", "content": "Describe a programmer as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
        max_tokens=200,
        **sampling,
    )
    if stream:
        text, finish = "", None
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
    else:
        r = client.chat.completions.create(**kwargs)
        text, finish = r.choices[0].message.content, r.choices[0].finish_reason
    assert finish == "stop", text
    jsonschema.validate(json.loads(text), PERSON)


@pytest.mark.parametrize("stream", [False, True])
def test_json_object_output_is_an_object(client, stream):
    kwargs = dict(
        model=F32,
        messages=[{"role": "user", "content": "List three colours as a JSON object."}],
        response_format={"type": "json_object"},
        temperature=0.8,
        seed=3,
        max_tokens=200,
    )
    if stream:
        text = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(stream=True, **kwargs)
            if c.choices
        )
    else:
        text = client.chat.completions.create(**kwargs).choices[0].message.content
    assert isinstance(json.loads(text), dict)


def test_invalid_schema_is_a_400_naming_response_format(client):
    bad = {"type": "object", "properties": {"a": {"$ref": "#/definitions/missing"}}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=F32,
            messages=ASK,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": bad}},
            max_tokens=10,
        )
    assert "response_format" in str(err.value)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=F32, messages=ASK, response_format={"type": "json_schema", "json_schema": {"name": "x"}}, max_tokens=10
        )
    assert "response_format" in str(err.value)


def test_lm_studio_api_streams_tool_calls(server):
    body = {
        "model": F32,
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": "required",
        "temperature": 0,
        "max_tokens": 120,
        "stream": True,
    }
    req = urllib.request.Request(
        server + "/api/v0/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        lines = [l[6:] for l in r.read().decode().splitlines() if l.startswith("data: ") and l != "data: [DONE]"]
    chunks = [json.loads(l) for l in lines]
    calls = [tc for c in chunks for ch in c.get("choices", []) for tc in ch["delta"].get("tool_calls", [])]
    assert calls[0]["function"]["name"] == "get_weather"
    args = json.loads("".join(tc["function"].get("arguments", "") for tc in calls))
    jsonschema.validate(args, schema_of(WEATHER))
    assert any(ch.get("finish_reason") == "tool_calls" for c in chunks for ch in c.get("choices", []))


def test_langchain_bind_tools_required_and_structured_output(server):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    llm = ChatOpenAI(
        model=F32, base_url=server + "/v1", api_key="not-needed", temperature=0, max_tokens=150, max_retries=0
    )

    class GetWeather(BaseModel):
        """The current weather in a city."""

        city: str = Field(description="the city")

    msg = llm.bind_tools([GetWeather], tool_choice="required").invoke("What is the weather in Paris?")
    assert len(msg.tool_calls) == 1
    assert msg.tool_calls[0]["name"] == "GetWeather"
    assert isinstance(msg.tool_calls[0]["args"]["city"], str)

    class Person(BaseModel):
        name: str
        age: int

    person = llm.with_structured_output(Person, method="json_schema").invoke("Invent a person.")
    assert isinstance(person, Person)
    assert isinstance(person.age, int)
