#!/usr/bin/env python3
"""Record mlx-lm's greedy token ids for the engine-equivalence test.

For each test model and each chat prompt below, this runs mlx-lm's own `generate_step`
(greedy, no logit processors) and stores the prompt's token ids (as mlx-lm's tokenizer and chat
template produce them) and the first generated ids up to EOS or the token limit. The worker
must reproduce both exactly (tests/engine_reference.rs).

  .deps/venv/bin/python tools/reference_ids.py [--models DIR] [--out tests/data/reference_ids.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mlx.core as mx
import mlx_lm_compat  # noqa: F401  (before mlx_lm: see its docstring)
from mlx_lm import load
from mlx_lm.generate import generate_step

# model folder -> tokens to generate per conversation (the tiny random models check the
# arithmetic of each architecture and quantization; two conversations each are enough).
MODELS = {
    "SmolLM2-135M-Instruct-bf16": 64,
    "SmolLM2-135M-Instruct-4bit": 64,
    # Google's Gemma 3 270M (base), dequantized from its GGUF: float32, because bfloat16 runs
    # slowly on x86 CPUs in both implementations. Its 262k-entry vocabulary makes every token
    # cost a 671 MB output projection on the CPU, hence fewer conversations.
    "gemma-3-270m-f32": 32,
    **{
        f"tiny-random-{name}": 16
        for name in (
            "llama",
            "qwen2",
            "qwen3",
            "llama-2bit-g32",
            "llama-3bit-g64",
            "llama-6bit-g128",
            "llama-8bit-g64",
            "llama-mxfp4",
            "llama-mxfp8",
            "llama-nvfp4",
            "llama-mixed",
            "qwen3-moe",
            "qwen3-moe-4bit",
            "qwen3-moe-hf",
            "granite",
            "phi3",
            "ministral3",
            "mistral3-vlm",
            "glm4-moe",
            "glm4-moe-4bit",
            "gemma3",
            "gemma3-4bit",
            "gemma3-vlm",
            "gpt-oss",
            "gpt-oss-mxfp4",
            "gpt-oss-openai",
            "gpt-oss-convert-mxfp4",
            "ministral3-fp8",
            "qwen3-next",
            "qwen3.5",
            "qwen3.5-moe",
            "qwen3.5-moe-4bit",
            "qwen3.5-moe-hf",
            "olmo3",
            "smollm3",
            "deepseek-v3",
            "deepseek-v3-4bit",
            "deepseek-v3-hf",
            "glm4-moe-lite",
            "lfm2",
            "lfm2-hf",
            "gemma4",
            "gemma4-moe",
            "gemma4-moe-4bit",
            "gemma4-moe-hf",
            "nemotron-h",
            "nemotron-h-4bit",
            "nemotron-h-hf",
        )
    },
}
CONVERSATION_COUNT = {"gemma-3-270m-f32": 3}
# Folders mlx-lm cannot read right, recorded from the same weights in a layout it can: mlx-lm
# 0.32.2's ministral3 multiplies FP8 weights' raw bytes by their scale (MLX loads F8_E4M3 as
# uint8), so the FP8 model's reference comes from its weights expanded by MLX's own from_fp8.
RECORD_FROM = {"tiny-random-ministral3-fp8": "tiny-random-ministral3-fp8-dense"}
# A prompt far longer than the tiny Gemma 3's window of 8, so that its local layers' caches
# trim old positions while the prompt is read.
LONG = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 70}]
EXTRA = {"tiny-random-gemma3": [LONG], "tiny-random-gpt-oss": [LONG], "tiny-random-qwen3.5": [LONG],
         "tiny-random-qwen3-next": [LONG], "tiny-random-olmo3": [LONG],
         "tiny-random-deepseek-v3": [LONG], "tiny-random-lfm2": [LONG], "tiny-random-gemma4": [LONG],
         "tiny-random-gemma4-moe": [LONG], "tiny-random-nemotron-h": [LONG]}
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "user", "content": "List the first five prime numbers, separated by commas."}],
    [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "Why is the sky blue?"},
    ],
    [{"role": "user", "content": "Translate to French: «Good morning, how are you?» 🙂"}],
    [
        {"role": "user", "content": "Hi! My name is Ada."},
        {"role": "assistant", "content": "Hello Ada! How can I help you today?"},
        {"role": "user", "content": "What is my name?"},
    ],
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parent.parent
    ap.add_argument("--models", type=Path, default=root / ".deps/models/opta")
    ap.add_argument("--out", type=Path, default=root / "tests/data/reference_ids.json")
    ap.add_argument("--only", nargs="*", help="re-record only these models, keeping the others")
    args = ap.parse_args()

    result = {"recorded_with": "mlx_lm.generate.generate_step, greedy", "models": {}}
    if args.only and args.out.exists():
        result = json.loads(args.out.read_text())
    for variant, max_tokens in MODELS.items():
        if args.only and variant not in args.only:
            continue
        model, tokenizer = load(str(args.models / RECORD_FROM.get(variant, variant)))
        cases = []
        conversations = CONVERSATIONS[: CONVERSATION_COUNT.get(variant, 6 if max_tokens > 16 else 2)]
        conversations += EXTRA.get(variant, [])
        for messages in conversations:
            # The Hugging Face tokenizer's own rendering: mlx-lm's wrapper would add
            # enable_thinking=<whether the vocabulary has <think> tokens>, its own policy, which
            # changes Qwen3-style templates; the worker renders templates as transformers does.
            prompt = tokenizer._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if isinstance(prompt, dict) or hasattr(prompt, "keys"):
                prompt = prompt["input_ids"]
            start = time.time()
            out = []
            for token, _ in generate_step(mx.array(prompt), model, max_tokens=max_tokens):
                if token in tokenizer.eos_token_ids:
                    break
                out.append(int(token))
            text = tokenizer.decode(out)
            print(f"{variant}: {len(out)} tokens in {time.time() - start:.1f}s: {text[:60]!r}", flush=True)
            cases.append({"messages": messages, "prompt_ids": list(map(int, prompt)), "ids": out, "text": text})
        result["models"][variant] = {"max_tokens": max_tokens, "cases": cases}
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
