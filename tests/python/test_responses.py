"""OpenAI's Responses API through the daemon, as Codex and the OpenAI Agents SDK use it: the
official SDK's `responses.create` and `responses.stream`, forced function calls with
schema-valid arguments, json_schema output, `previous_response_id` with tool results, errors,
a Codex-style request kept as a fixture, and an Agents SDK agent with a structured output."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import openai
import pytest

from conftest import F32

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def test_text_response(client):
    r = client.responses.create(
        model=F32, input="What is the capital of France?", temperature=0,
        max_output_tokens=24,
    )
    assert r.id.startswith("resp_") and r.object == "response"
    assert "Paris" in r.output_text
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.usage.input_tokens > 10 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_stream_events_in_order_with_sequence_numbers(client):
    # Cut short by max_output_tokens, the stream ends as OpenAI's does, in
    # `response.incomplete` (the SDK's get_final_response waits for `response.completed`).
    stream = client.responses.create(model=F32, input="Hi", temperature=0, max_output_tokens=8, stream=True)
    events = list(stream)
    final = events[-1].response
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert "response.output_text.delta" in kinds
    assert kinds[-4:] == [
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.incomplete",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.status == "incomplete"
    assert final.incomplete_details.reason == "max_output_tokens"
    assert final.usage.output_tokens == 8


@pytest.mark.parametrize("stream", [False, True])
def test_forced_function_call_has_schema_valid_arguments(client, stream):
    kwargs = dict(
        model=F32, input="What is the weather in Paris?", tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"}, temperature=0, max_output_tokens=120,
    )
    if stream:
        with client.responses.stream(**kwargs) as s:
            kinds = [e.type for e in s]
            r = s.get_final_response()
        assert "response.function_call_arguments.delta" in kinds
        assert kinds[-1] == "response.completed"
    else:
        r = client.responses.create(**kwargs)
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["parameters"])


def test_previous_response_id_continues_with_tool_results(client):
    first = client.responses.create(
        model=F32, input="What is the weather in Paris?", tools=[WEATHER], tool_choice="required",
        temperature=0, max_output_tokens=120,
    )
    call = next(o for o in first.output if o.type == "function_call")
    second = client.responses.create(
        model=F32, previous_response_id=first.id, tools=[WEATHER], temperature=0, max_output_tokens=30,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "21 C and sunny"}],
    )
    assert second.status in ("completed", "incomplete")
    # The stored conversation came first: the prompt holds the question, the call and its result.
    assert second.usage.input_tokens > first.usage.input_tokens + 10
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.create(model=F32, previous_response_id="resp_unknown", input="x")
    assert "previous_response_id" in str(err.value)


def test_json_schema_output(client):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
              "population": {"type": "integer", "minimum": 0, "maximum": 100000000}},
              "required": ["city", "population"], "additionalProperties": False}
    r = client.responses.create(
        model=F32, input="Describe Paris as JSON.", temperature=0.8, max_output_tokens=120,
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
    )
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), schema)


def test_errors_are_openai_shaped(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=F32, input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "data:image/png;base64,AA=="}]}])
    assert err.value.body["param"].startswith("input[0]")
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nobody/no-such-model", input="x")


def test_a_codex_request_streams_to_completion(client):
    """Codex's shape: instructions, a developer message, a reasoning item, a custom tool
    (apply_patch), hosted tool types this server does not run, and `store: false`."""
    body = json.loads((FIXTURES / "codex_request.json").read_text())
    body["model"] = F32
    assert body.pop("stream") is True, "recorded as a stream"
    events = list(client.responses.create(stream=True, **body))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert events[-1].response.output


def test_an_agents_sdk_agent_with_a_structured_output(server):
    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, set_tracing_disabled
    from pydantic import BaseModel

    set_tracing_disabled(True)

    class City(BaseModel):
        name: str
        country: str

    model = OpenAIResponsesModel(
        model=F32, openai_client=openai.AsyncOpenAI(base_url=server + "/v1", api_key="x", max_retries=0)
    )
    agent = Agent(
        name="geo", instructions="Answer with the city asked about.", model=model, output_type=City,
        model_settings=ModelSettings(temperature=0, max_tokens=80),
    )
    result = Runner.run_sync(agent, "Which city is the capital of France?")
    assert isinstance(result.final_output, City)
    assert result.final_output.name
