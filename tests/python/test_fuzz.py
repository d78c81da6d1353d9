"""Fuzzes the daemon from its own OpenAPI document (GET /openapi.json) with schemathesis.

Negative mode: every schema-invalid request is refused with a 4xx whose body is the route's
error shape, never a 5xx, a hang or a dropped connection. Positive mode: every schema-valid
request gets a non-5xx answer that conforms to the documented status codes, content types and
response schemas, streamed (SSE) answers event by event included.

Generation stays cheap: the daemon's default model is the tiny random model, requests naming a
model too big to run quickly are pointed at it, and token limits are capped. Derandomized, so
every run sends the same requests; OPTA_LMX_FUZZ_SCALE=N runs N times as many examples."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.core.transport import Response

from conftest import MODELS, TARGET, TINY, TINY_QWEN3, free_port

# Load and unload requests naming a real model are pointed at this one, never at TINY, so they
# run the real load and unload paths while generation keeps its loaded model.
SPARE = TINY_QWEN3
# Models with more weights than this (the SmolLM2 ones) are too slow to load and run here;
# requests naming them are pointed at TINY.
CHEAP_BYTES = 64 << 20
# Tokens a fuzzed generation may produce: enough for every renderer's streaming and finish
# paths, few enough that a request takes a fraction of a second on the debug build.
MAX_TOKENS = 6
TOKEN_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
# Routes whose errors are Anthropic's shape ({"type": "error", "error": {...}}).
ANTHROPIC = ("/v1/messages", "/v1/messages/count_tokens")
# Seconds a request may take before it counts as a hang (a JIT load on a busy runner included).
REQUEST_TIMEOUT = 30
# Examples per operation: refusals take a millisecond, generations a few hundred.
SCALE = int(os.environ.get("OPTA_LMX_FUZZ_SCALE", "1"))
NEGATIVE_EXAMPLES = 100 * SCALE
POSITIVE_EXAMPLES = 40 * SCALE

# Known failures: server bugs this fuzzing found, each reproduced by a test_known_* test at the
# end. The fuzz tests still send such cases and require no 5xx of them, but do not hold them to
# what the bug breaks, so that everything else runs. Each entry goes once its bug is fixed (the
# server refuses the request with a 400 in the route's shape, or the document allows it).


# Schema violations the server accepts, per route and top-level field: the values it accepts
# there (and ignores).
OPENAI_LAX = {
    # Read as a struct, which serde also takes from an array.
    "stream_options": lambda value: isinstance(value, list),
    # json_schema is not read unless the type is json_schema.
    "response_format": lambda value: isinstance(value, dict)
    and value.get("type") in ("text", "json_object"),
}
LAX_FIELDS = {
    "/v1/chat/completions": OPENAI_LAX,
    "/v1/completions": OPENAI_LAX,
    "/api/v0/chat/completions": OPENAI_LAX,
    "/api/v0/completions": OPENAI_LAX,
}
# Error codes the server sends that the Error schema's `code` enum lacks (none left).
UNDOCUMENTED_CODES: set[str] = set()
# Statuses the Anthropic routes answer in OpenAI's error shape (none left).
OPENAI_SHAPED_ON_ANTHROPIC: set[int] = set()


def get(url: str):
    with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT) as r:
        return json.load(r)


def example_models(document: dict) -> set[str]:
    """The models the document's request examples name, other than load's and unload's."""
    names = set()
    for path, item in document["paths"].items():
        for operation in item.values():
            content = operation.get("requestBody", {}).get("content", {})
            example = content.get("application/json", {}).get("example")
            if not path.endswith(("/load", "/unload")) and isinstance(example, dict):
                names.add(example.get("model"))
    return names


@pytest.fixture(scope="module")
def daemon():
    """A daemon whose default model is the tiny model, loaded at start, so a request whose
    model is missing or unknown generates cheaply. Yields its URL and the installed models'
    sizes."""
    tmp = tempfile.TemporaryDirectory()
    config = Path(tmp.name) / "config.yaml"
    # JSON is YAML.
    config.write_text(json.dumps({"models": {"default_model": TINY, "auto_load": [TINY]}}))
    port = free_port()
    env = dict(os.environ, OPTA_LMX_WORKER=str(TARGET / "opta-lmx-worker"), HF_HUB_CACHE=tmp.name,
               XDG_CACHE_HOME=tmp.name)
    proc = subprocess.Popen(
        [str(TARGET / "opta-lmx"), "serve", "--config", str(config), "--port", str(port),
         "--models-dir", str(MODELS)],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                models = get(base + "/admin/models")["models"]
                if any(m["model_id"] == TINY and m["state"] == "loaded" for m in models):
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError("opta-lmx did not start with the tiny model loaded")
        sizes = {m["model_id"]: m.get("weights_bytes_on_disk", 0) for m in models}
        # The examples send `Prefer: wait=0`, answered 503 model_loading (as documented) while
        # their model is not loaded: load the cheap ones first (the others are pointed at TINY).
        for model in example_models(get(base + "/openapi.json")) - {TINY}:
            if sizes.get(model, CHEAP_BYTES + 1) <= CHEAP_BYTES:
                load = urllib.request.Request(base + "/admin/models/load", method="POST",
                                              data=json.dumps({"model_id": model}).encode(),
                                              headers={"Content-Type": "application/json"})
                urllib.request.urlopen(load, timeout=REQUEST_TIMEOUT).close()
        yield base, sizes
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        tmp.cleanup()


def load_schema(base: str, mode: str, max_examples: int) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            "generation": {
                "mode": mode,
                "max-examples": max_examples,
                "deterministic": True,
                "database": "none",
            },
            # The coverage phase's boundary cases (every field's wrong types and bounds, other
            # methods) are a thousand quick refusals in negative mode, but as many generations
            # in positive mode, past the time budget; there the examples and fuzzing phases run.
            "phases": {"coverage": {"enabled": mode == "negative"}, "stateful": {"enabled": False}},
            "request-timeout": REQUEST_TIMEOUT,
            # A schema-valid request may still get a 4xx: the document cannot say everything the
            # server checks (an empty prompt, the blocks inside Anthropic's free-form content).
            # Positive mode requires no 5xx and conforming answers, 4xx bodies included.
            "checks": {"positive_data_acceptance": {"enabled": False}},
            # Failure reports show bodies as sent (the default masks any key with "token" in
            # it, such as max_tokens).
            "output": {"sanitization": {"enabled": False}},
            "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
        }
    )
    return schemathesis.openapi.from_url(base + "/openapi.json", config=config)


@pytest.fixture(scope="module")
def negative_schema(daemon):
    return load_schema(daemon[0], "negative", NEGATIVE_EXAMPLES)


@pytest.fixture(scope="module")
def positive_schema(daemon):
    schema = load_schema(daemon[0], "positive", POSITIVE_EXAMPLES)

    @schema.hook
    def flatmap_body(context, body):
        # Generated bodies rarely send "stream": true; half the generation requests that leave
        # it out stream, so every renderer's SSE path is held to the document too.
        if isinstance(body, dict) and "stream" not in body and generates(context.operation):
            return st.sampled_from([body, {**body, "stream": True}])
        return st.just(body)

    return schema


@pytest.fixture(scope="module")
def sizes(daemon):
    return daemon[1]


def document_validator(document: dict, schema: dict) -> jsonschema.protocols.Validator:
    """A validator for one schema of the document, its components beside it so $refs resolve."""
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


def generates(operation) -> bool:
    """Whether the operation generates text: its 200 answer may be an event stream."""
    content = operation.definition.raw["responses"].get("200", {}).get("content", {})
    return "text/event-stream" in content


def request_schema(operation) -> dict | None:
    """The operation's JSON request-body schema, if it takes one."""
    content = operation.definition.raw.get("requestBody", {}).get("content", {})
    return content.get("application/json", {}).get("schema")


def make_cheap(case, sizes: dict[str, int]) -> None:
    """Rewrites what would make a generated request slow. The case is revalidated as sent (see
    call), so a rewrite that happens to repair an invalid field only makes it a positive case."""
    body = case.body
    if not isinstance(body, dict):
        return
    loading = case.operation.path.endswith(("/load", "/unload"))
    for key in ("model", "model_id", "instance_id"):
        # The document's examples name real models; random names stay, to fuzz the resolver.
        # Loads and unloads leave the models that generation uses alone.
        name = body.get(key)
        if isinstance(name, str) and name in sizes and (loading or sizes[name] > CHEAP_BYTES):
            body[key] = SPARE if loading else TINY
    if not generates(case.operation):
        return
    # A missing or null limit, or -1, is none: up to the whole context (2048 tokens, a minute
    # on the debug build). /v1/messages requires max_tokens, which its schema (shared with
    # count_tokens) leaves optional. The Responses API and LM Studio's /api/v1/chat name it
    # max_output_tokens.
    output_limit = case.operation.path.endswith(("/responses", "/api/v1/chat"))
    default = "max_output_tokens" if output_limit else "max_tokens"
    for key in [k for k in TOKEN_LIMITS if k in body] or [default]:
        value = body.get(key)
        if value is None or value == -1 or (type(value) is int and value > MAX_TOKENS):
            body[key] = MAX_TOKENS


def call(case, sizes: dict[str, int]) -> Response:
    make_cheap(case, sizes)
    # Reading meta revalidates the edited case, so it is judged positive or negative as sent.
    assert case.meta is not None
    response = case.call(timeout=REQUEST_TIMEOUT)
    # schemathesis stops reading a stream at the request timeout instead of failing: a stream
    # that does not end is a hang.
    assert not response.stream_cut_short, "the event stream did not end within the timeout"
    return response


def rounds_onto_bound(error: jsonschema.ValidationError) -> bool:
    """Whether a number past a bound rounds onto it as a 32-bit float (-1e-50 onto a minimum of
    0): the server reads sampling fields as f32 and checks their range after rounding."""
    if error.validator not in ("minimum", "maximum") or not isinstance(error.instance, float):
        return False
    try:
        return struct.unpack("f", struct.pack("f", error.instance))[0] == error.validator_value
    except OverflowError:
        return False


def known_violation(path: str, body: dict, error: jsonschema.ValidationError) -> bool:
    """Whether a schema violation of the body is one the server is known to accept."""
    # Null reads as absent anywhere (as the document's description says), but most optional
    # fields' schemas below the top level, and all of Anthropic's, do not allow null.
    if error.instance is None or rounds_onto_bound(error):
        return True
    field = error.absolute_path[0] if error.absolute_path else None
    accepts = LAX_FIELDS.get(path, {}).get(field)
    return accepts is not None and accepts(body[field])


def only_known_violations(case) -> bool:
    """Whether the body breaks its schema only in ways the server is known to accept."""
    schema = request_schema(case.operation)
    if schema is None or not isinstance(case.body, dict):
        return False
    document = case.operation.schema.raw_schema
    errors = list(document_validator(document, schema).iter_errors(case.body))
    return bool(errors) and all(known_violation(case.operation.path, case.body, e) for e in errors)


def known_nonconforming(response: Response) -> list:
    """The checks a response is known to fail: an error whose code the document lacks."""
    if response.status_code >= 400 and response.json()["error"].get("code") in UNDOCUMENTED_CODES:
        return [schemathesis.checks.response_schema_conformance]
    return []


def check_error_shape(case, response: Response) -> None:
    """Every 4xx and 5xx body is JSON in the route's error shape (OpenAI's or Anthropic's)."""
    if response.status_code < 400:
        return
    body = response.json()
    if case.operation.path in ANTHROPIC and response.status_code not in OPENAI_SHAPED_ON_ANTHROPIC:
        assert body.get("type") == "error", body
    error = body.get("error")
    assert isinstance(error, dict), body
    assert isinstance(error.get("message"), str) and isinstance(error.get("type"), str), body


def parse_sse(text: str) -> list[dict[str, str]]:
    """A stream's events as {"event", "data"}; comments (keep-alives) skipped."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        fields = dict(line.split(": ", 1) for line in lines)
        if "data" in fields:
            events.append({"event": fields.get("event", "message"), "data": fields["data"]})
    return events


def is_failure(event) -> bool:
    """An error event (OpenAI's or Anthropic's shape) or a failed response."""
    if not isinstance(event, dict):
        return False
    kind = event.get("type")
    return ("error" in event and kind in (None, "error")) or kind == "response.failed"


def check_stream(case, response: Response) -> None:
    """Every event's data is one JSON value of the route's x-sse-data-schema and none is a
    failure (a 5xx after the 200); an OpenAI stream ends with `data: [DONE]`, a stream with
    x-sse-last-event with (one of) that event."""
    media = case.operation.definition.raw["responses"]["200"]["content"]["text/event-stream"]
    validator = document_validator(case.operation.schema.raw_schema, media["x-sse-data-schema"])
    last = media.get("x-sse-last-event")
    events = parse_sse(response.content.decode())
    assert events, "empty event stream"
    if last is None:
        assert events[-1]["data"] == "[DONE]", f"the stream does not end with [DONE]: {events[-1]}"
        events.pop()
    else:
        ends = [last] if isinstance(last, str) else last
        assert events[-1]["event"] in ends, f"the stream ends with {events[-1]}"
    for event in events:
        value = json.loads(event["data"])
        errors = list(validator.iter_errors(value))
        assert not errors, f"event violates x-sse-data-schema: {errors[0].message}\n{event}"
        assert not is_failure(value), f"the stream failed: {event}"


@pytest.fixture(autouse=True)
def schemathesis_node_id(request):
    # schemathesis 4.32's from_fixture reads and rewrites Node._nodeid, which pytest 9.2 no
    # longer has (its nodeid is computed); give it the attribute to read.
    request.node._nodeid = request.node.nodeid


negative = schemathesis.pytest.from_fixture("negative_schema")
positive = schemathesis.pytest.from_fixture("positive_schema")


# The GET routes take nothing that could be invalid (no body, only free-form string path
# parameters), so negative mode has nothing to send them.
@negative.include(method="POST").parametrize()
def test_negative(case, sizes):
    response = call(case, sizes)
    check_error_shape(case, response)
    if only_known_violations(case):
        assert response.status_code < 500, response.text
    else:
        case.validate_response(response, excluded_checks=known_nonconforming(response))


@positive.parametrize()
def test_positive(case, sizes):
    response = call(case, sizes)
    check_error_shape(case, response)
    excluded = known_nonconforming(response)
    if response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        check_stream(case, response)
        # schemathesis holds each event of a stream to the media type's `schema`, as OpenAPI
        # 3.2's itemSchema; in this 3.1 document that is the body as a whole ({"type": "string"})
        # and an event's data has its schema in x-sse-data-schema, which check_stream applies.
        excluded.append(schemathesis.checks.response_schema_conformance)
    case.validate_response(response, excluded_checks=excluded)


# Minimal reproducers of the known failures. Each is expected to fail (strict: once it passes,
# drop it and its entry above).
# A chat completion's body, and a Messages API one too.
CHAT_BODY = {"max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
RESPONSES_BODY = {"max_output_tokens": 2, "input": "Hi"}
# Bugs this fuzzing found and the server now refuses with a 400 naming the field.
FIXED_CASES = [
    pytest.param("/v1/responses", {**RESPONSES_BODY, "metadata": [None]}, "metadata",
                 id="responses-metadata"),
    pytest.param("/v1/responses", {**RESPONSES_BODY, "text": 5}, "text", id="responses-text"),
    pytest.param("/v1/responses", {**RESPONSES_BODY, "input": [1]}, "input[0]",
                 id="responses-input-item"),
    pytest.param("/v1/messages", {**CHAT_BODY, "thinking": 5}, "thinking",
                 id="messages-thinking"),
    pytest.param("/v1/messages", {**CHAT_BODY, "system": [1]}, "system[0]",
                 id="messages-system-item"),
    pytest.param("/v1/messages/count_tokens", {**CHAT_BODY, "max_tokens": -1}, "max_tokens",
                 id="count-tokens-max-tokens"),
    pytest.param("/v1/chat/completions", {**CHAT_BODY, "stop": [""] * 17}, "stop",
                 id="chat-stop-empty"),
    pytest.param("/v1/embeddings", {"model": "opta/tiny-random-bert", "input": "Hi", "user": {}},
                 "user", id="embeddings-user"),
]
LAX_CASES = [
    pytest.param("/v1/chat/completions", {**CHAT_BODY, "stream_options": [None]},
                 id="chat-stream-options-array"),
    pytest.param("/v1/chat/completions",
                 {**CHAT_BODY, "response_format": {"type": "text", "json_schema": 5}},
                 id="chat-response-format-json-schema"),
    pytest.param("/v1/completions", {"prompt": "Hi", "max_tokens": 2, "top_p": -1e-50},
                 id="completions-top-p-f32"),
    # Null where the schema has no null.
    pytest.param("/v1/responses", {**RESPONSES_BODY, "model": None}, id="responses-model-null"),
    pytest.param("/v1/messages", {**CHAT_BODY, "temperature": None}, id="messages-null"),
    pytest.param("/v1/chat/completions",
                 {**CHAT_BODY, "tools": [{"function": {"name": "f", "parameters": None}}]},
                 id="chat-tool-parameters-null"),
]


def post(daemon, path: str, body: dict) -> tuple[requests.Response, dict]:
    """The answer to one request, and the document."""
    base = daemon[0]
    document = requests.get(base + "/openapi.json", timeout=REQUEST_TIMEOUT).json()
    return requests.post(base + path, json=body, timeout=REQUEST_TIMEOUT), document


@pytest.mark.xfail(strict=True, reason="known server bug: a schema-invalid field is accepted")
@pytest.mark.parametrize(("path", "body"), LAX_CASES)
def test_known_lax_field(daemon, path, body):
    """Fixed once the server refuses the body with a 400, or the document allows it."""
    r, document = post(daemon, path, body)
    schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    if r.status_code == 200:
        allowed = document_validator(document, schema).is_valid(body)
        assert allowed, f"accepted a body the document does not allow: {r.text[:200]}"
    else:
        assert r.status_code == 400, r.text


@pytest.mark.parametrize(("path", "body", "param"), FIXED_CASES)
def test_fixed_lax_field_is_refused(daemon, path, body, param):
    r, _ = post(daemon, path, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    if path in ANTHROPIC:
        assert param in error["message"], r.text
    else:
        assert error["param"] == param, r.text


def test_context_length_error_fits_the_error_schema(daemon):
    long = {**CHAT_BODY, "messages": [{"role": "user", "content": "lighthouse " * 3000}]}
    r, document = post(daemon, "/v1/chat/completions", long)
    assert r.status_code == 400, r.text
    error_schema = document_validator(document, {"$ref": "#/components/schemas/Error"})
    assert error_schema.is_valid(r.json()), f"the error is not of the Error schema: {r.text}"


def test_a_405_on_the_messages_api_is_anthropic_shaped(daemon):
    r = requests.get(daemon[0] + "/v1/messages", timeout=REQUEST_TIMEOUT)
    assert r.status_code == 405
    assert r.json().get("type") == "error", r.text
