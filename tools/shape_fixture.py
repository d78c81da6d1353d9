#!/usr/bin/env python3
"""Turn a request an agent client really sent into a test fixture of the same shape.

  shape_fixture.py <captured.json> <fixture.json> [--model NAME]

The clients' prompts and tool descriptions are their authors' prose, not ours to commit, so
every string of prose (system text, message text, descriptions) is replaced by filler words
of the same length; everything that is structure stays as sent: keys and their order, roles,
block and item types, tool names and parameter schemas (property names, types, enums),
`cache_control` marks, the billing line's form, and the fields nothing here acts on. The
prompt keeps its size in characters, so it keeps roughly its size in tokens.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
         "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()
# Keys whose string values are prose.
PROSE_KEYS = {"text", "description", "content", "instructions", "output"}
# Kept as they are: short markers whose form the server reads.
KEEP = re.compile(r"^(x-anthropic-billing-header:.*|Create hello\.txt|[\w.-]{0,24})$", re.S)


def filler(n: int, seed: int) -> str:
    """`n` characters of filler words, with the line breaks a prompt has."""
    out: list[str] = []
    size, i = 0, seed
    while size < n:
        word = WORDS[i % len(WORDS)]
        i += 7
        sep = "\n" if i % 13 == 0 else " "
        out.append(word + sep)
        size += len(word) + 1
    return "".join(out)[:n]


def shape(v, key: str | None = None, counter: list[int] | None = None):
    counter = counter if counter is not None else [0]
    if isinstance(v, dict):
        return {k: shape(x, k, counter) for k, x in v.items()}
    if isinstance(v, list):
        return [shape(x, key, counter) for x in v]
    if isinstance(v, str) and key in PROSE_KEYS and not KEEP.match(v):
        counter[0] += 1
        return filler(len(v), counter[0])
    return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("captured", type=Path)
    ap.add_argument("fixture", type=Path)
    ap.add_argument("--model", default="claude-sonnet-4-5", help="the model name the fixture sends")
    args = ap.parse_args()
    body = json.loads(args.captured.read_text())
    shaped = shape(body)
    shaped["model"] = args.model
    # Identifiers that name one machine or session.
    meta = shaped.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("user_id"), str):
        meta["user_id"] = json.dumps({"device_id": "0" * 64, "account_uuid": "",
                                      "session_id": "00000000-0000-4000-8000-000000000000"},
                                     separators=(",", ":"))
    for k in ("prompt_cache_key", "client_metadata"):
        if k in shaped:
            shaped[k] = "00000000-0000-4000-8000-000000000000" if k == "prompt_cache_key" else {
                "session_id": "00000000-0000-4000-8000-000000000000"}
    args.fixture.write_text(json.dumps(shaped, indent=1) + "\n")
    print(f"wrote {args.fixture} ({args.fixture.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
