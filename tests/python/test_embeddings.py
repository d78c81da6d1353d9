"""`/v1/embeddings` through the official OpenAI Python SDK, on the tiny random BERT model,
against the vectors mlx-embeddings computed for it (tests/data/tiny_bert_reference.json)."""

from __future__ import annotations

import json
import math

import openai
import pytest

from conftest import ROOT, TINY

BERT = "opta/tiny-random-bert"
REFERENCE = json.loads((ROOT / "tests/data/tiny_bert_reference.json").read_text())


def close(got, want, tol=1e-4):
    assert len(got) == len(want)
    worst = max(abs(a - b) for a, b in zip(got, want))
    assert worst < tol, f"off by {worst:g}"


def test_the_sdks_default_base64_decodes_to_the_reference(client):
    # Without encoding_format the SDK asks for base64 and decodes it to floats itself.
    texts = [c["text"] for c in REFERENCE["cases"]]
    r = client.embeddings.create(model=BERT, input=texts)
    assert r.model == BERT
    assert [d.index for d in r.data] == list(range(len(texts)))
    for d, case in zip(r.data, REFERENCE["cases"]):
        close(d.embedding, case["embedding"])
    assert r.usage.prompt_tokens == sum(len(c["token_ids"]) for c in REFERENCE["cases"])


def test_float_format_a_padded_batch_and_token_ids(client):
    batch = REFERENCE["batch"]
    r = client.embeddings.create(model=BERT, input=batch["texts"], encoding_format="float")
    for d, want in zip(r.data, batch["embeddings"]):
        close(d.embedding, want)
    first = REFERENCE["cases"][0]
    r = client.embeddings.create(model=BERT, input=[first["token_ids"]], encoding_format="float")
    close(r.data[0].embedding, first["embedding"])


def test_dimensions_truncate_and_renormalise(client):
    case = REFERENCE["cases"][2]
    r = client.embeddings.create(model=BERT, input=case["text"], dimensions=16)
    v = r.data[0].embedding
    assert len(v) == 16
    assert abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-5
    head = case["embedding"][:16]
    norm = math.sqrt(sum(x * x for x in head))
    close(v, [x / norm for x in head])


def test_similar_sentences_are_closer(client):
    cat, cat2, other = "the cat sat on the mat", "the cat sat on a mat", "unbelievable embeddings 2024"
    a, b, c = (d.embedding for d in client.embeddings.create(model=BERT, input=[cat, cat2, other]).data)
    dot = lambda x, y: sum(p * q for p, q in zip(x, y))
    assert dot(a, b) > dot(a, c)


def test_errors_are_sdk_exceptions(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=TINY, input="hi")
    assert "text generation model" in str(err.value)
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=BERT, input=["ok", "word " * 200])
    assert "input[1]" in str(err.value)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nobody/nothing", input="hi")
