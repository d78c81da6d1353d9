#!/usr/bin/env python3
"""Record reference sentence embeddings for the /v1/embeddings tests.

mlx-embeddings computes them, not code of ours: `mlx_embeddings.load` builds its BERT model
from the folder's config.json and model.safetensors and its tokenizer through transformers'
AutoTokenizer; `mlx_embeddings.generate` tokenizes (padding a batch to its longest input) and
runs the model, whose `text_embeds` are mean pooling over non-padding tokens followed by L2
normalisation, as sentence-transformers' Pooling and Normalize modules define them. Each case
stores the text, its token ids as the `tokenizers` library gives them (with special tokens) and
its embedding; the batch case stores the padded ids and mask as well. The engine must
reproduce the ids exactly and the vectors to float32 rounding.

  .deps/venv/bin/python tools/embedding_reference.py <model-dir> <out.json>

The decoder embedder (tiny-random-qwen3-embedding, last-token pooling) is recorded the same way,
into tests/data/tiny_qwen3_embedding_reference.json; its batch is padded on the right, so each
text's last real token is pooled.

The recording is committed (tests/data/tiny_bert_reference.json) and set-up regenerates the
same model from its seed, so the tests need no reference at run time; re-recording needs
`pip install mlx-embeddings==0.1.0 mlx-vlm==0.7.6` (mlx-vlm 0.7.6 is the last release that
accepts mlx 0.32.2; a plain install would upgrade mlx).

e.g. .deps/models/opta/tiny-random-bert tests/data/tiny_bert_reference.json (made by
tools/make_tiny_embedder.py .deps/models/opta).
"""

from __future__ import annotations

import argparse
import json
import math
from importlib.metadata import version
from pathlib import Path

import mlx.core as mx
import mlx_embeddings
from mlx_embeddings.models.base import mean_pooling
from tokenizers import Tokenizer

SINGLE = [
    "hello world",
    "Hello World",  # the same ids as "hello world" once lowercased
    "The quick brown fox jumps over the lazy dog.",
    "",
    "The old man and the woman read a book about machine learning, language models and "
    "vector search in the city; they think it is a good question (and a great answer) for "
    "people who write computer tests at night.",
    "café 東京 🙂",  # accent stripped; CJK split per character, then [UNK] like the emoji
    "the cat sat on the mat",
    "the cat sat on a mat",
    "unbelievable embeddings 2024",
    "a",
]
# Different lengths, so the short ones are padded; each must equal its single embedding.
BATCH = ["a", "hello world", "", "The quick brown fox jumps over the lazy dog.", "café 東京 🙂", "the cat sat on the mat"]
# (anchor, nearer, farther): the shared-words pair must be the closer one.
SIMILAR = [("the cat sat on the mat", "the cat sat on a mat", "unbelievable embeddings 2024")]


def embed(model, tokenizer, texts: list[str]) -> tuple[dict, list[list[float]], list[float]]:
    mask = tokenizer(texts, padding=True)["attention_mask"]
    if getattr(model, "model_type", None) == "gemma3_text":
        # mlx-embeddings 0.1.0's generate() passes `input_ids=`, which its Gemma 3 model does not
        # take: the same tokenization, handed to the model directly.
        ids = tokenizer(texts, padding=True)["input_ids"]
        out = model(mx.array(ids), attention_mask=mx.array(mask))
    else:
        out = mlx_embeddings.generate(model, tokenizer, texts=texts, padding=True)
    pooled = mean_pooling(out.last_hidden_state, mx.array(mask))  # before Normalize, for the record
    return out, out.text_embeds.tolist(), mx.linalg.norm(pooled, axis=-1).tolist()


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))  # both have unit norm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="a sentence-transformers BERT folder")
    ap.add_argument("out", type=Path, help="JSON file to write")
    args = ap.parse_args()

    model, tokenizer = mlx_embeddings.load(str(args.model))
    fast = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    # The file's own padding and truncation (all-MiniLM-L6-v2 ships Fixed 128) are not how
    # transformers or sentence-transformers tokenize: they set both per call.
    fast.no_padding()
    fast.no_truncation()
    config = json.loads((args.model / "config.json").read_text())
    pooling = json.loads((args.model / "1_Pooling/config.json").read_text())
    st_config = json.loads((args.model / "sentence_bert_config.json").read_text())
    mode = "last" if pooling.get("pooling_mode_lasttoken") else "mean"
    modules = json.loads((args.model / "modules.json").read_text())
    normalized = modules[-1]["type"].endswith(".Normalize")
    assert (pooling["pooling_mode_mean_tokens"] or mode == "last") and normalized, (
        "mean or last-token pooling, then (Dense modules and) Normalize"
    )
    bert = config["model_type"] == "bert"

    cases = []
    for text in SINGLE:
        ids = fast.encode(text, add_special_tokens=True).ids
        hf_ids = tokenizer(text)["input_ids"]
        assert hf_ids == ids, (text, hf_ids, ids)
        assert len(ids) <= st_config["max_seq_length"], text
        _, [vector], [pooled_norm] = embed(model, tokenizer, [text])
        assert abs(math.fsum(x * x for x in vector) - 1) < 1e-5, text
        cases.append({"text": text, "token_ids": ids, "mean_pooled_norm": pooled_norm, "embedding": vector})
    by_text = {c["text"]: c for c in cases}
    if bert:  # lowercasing gives both the same ids
        assert by_text["hello world"]["embedding"] == by_text["Hello World"]["embedding"]

    out, vectors, pooled_norms = embed(model, tokenizer, BATCH)
    padded = tokenizer(BATCH, padding=True)
    for text, vector, ids, mask in zip(BATCH, vectors, padded["input_ids"], padded["attention_mask"]):
        single = by_text[text]
        pads = ids[sum(mask) :]
        assert ids[: sum(mask)] == single["token_ids"] and all(i == tokenizer.pad_token_id for i in pads), text
        err = max(abs(x - y) for x, y in zip(vector, single["embedding"]))
        assert err < 1e-5, (text, err)
    batch = {
        "texts": BATCH,
        "input_ids": padded["input_ids"],
        "attention_mask": padded["attention_mask"],
        "mean_pooled_norms": pooled_norms,
        "embeddings": vectors,
    }

    similar = []
    for anchor, near, far in SIMILAR if bert else []:
        a, b, c = (by_text[t]["embedding"] for t in (anchor, near, far))
        near_cos, far_cos = cosine(a, b), cosine(a, c)
        assert near_cos > far_cos, (anchor, near_cos, far_cos)
        similar.append({"anchor": anchor, "near": near, "far": far, "near_cosine": near_cos, "far_cosine": far_cos})

    result = {
        "recorded_with": (
            f"mlx_embeddings.load + mlx_embeddings.generate(padding=True) -> text_embeds "
            f"(mlx-embeddings {version('mlx-embeddings')}, mlx {version('mlx')}, "
            f"transformers {version('transformers')}, tokenizers {version('tokenizers')})"
        ),
        "model": {
            "folder": args.model.name,
            "model_type": config["model_type"],
            "hidden_size": config["hidden_size"],
            "num_hidden_layers": config["num_hidden_layers"],
            "vocab_size": config["vocab_size"],
            "max_seq_length": st_config["max_seq_length"],
            "pooling": mode,
            "normalize": True,
            "dtype": "float32",
            "pad_token_id": config.get("pad_token_id"),
        },
        "cases": cases,
        "batch": batch,
        "similar": similar,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}: {len(cases)} cases, batch of {len(BATCH)}")
    for s in similar:
        print(f"  cos(anchor, near) {s['near_cosine']:.4f} > cos(anchor, far) {s['far_cosine']:.4f}")


if __name__ == "__main__":
    main()
