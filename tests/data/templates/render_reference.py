"""Renders conversation.json through each template here as transformers' apply_chat_template
does (jinja2 with its tojson, trim_blocks, lstrip_blocks, loopcontrols), into rendered/, for
the worker's tests to compare with. One difference: lists stay mutable, as in llama.cpp's and
vLLM's renderers, since Kimi K2's templates append to and pop from a namespace list, which
transformers' immutable sandbox refuses.

    .deps/venv/bin/python tests/data/templates/render_reference.py   (jinja2 3.1.6)
"""

import json
from pathlib import Path

from jinja2.ext import loopcontrols
from jinja2.sandbox import SandboxedEnvironment

HERE = Path(__file__).parent
# Templates that keep reasoning sent back with a call; the others get the call without it.
REASONING = {"Kimi-K2-Thinking", "GLM-4.6", "GLM-4.7-Flash"}


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def raise_exception(message):
    raise ValueError(message)


env = SandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception

conversation = json.loads((HERE / "conversation.json").read_text())
for path in sorted(HERE.glob("*.jinja")):
    messages = json.loads(json.dumps(conversation["messages"]))
    if path.stem not in REASONING:
        del messages[1]["reasoning_content"]
    text = env.from_string(path.read_text()).render(
        messages=messages,
        tools=conversation["tools"],
        add_generation_prompt=True,
        bos_token="<bos>",
        eos_token="<eos>",
    )
    (HERE / "rendered" / f"{path.stem}.txt").write_text(text)
