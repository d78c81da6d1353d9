#!/usr/bin/env python3
"""Write a tiny random-weights Llama model folder for fast tests.

It borrows the tokenizer files (and chat template) of a real model folder, so text goes in
and out exactly as with the real model, while the network is small enough to load and run in
milliseconds. Its output is gibberish by design; tests use it for plumbing, never for quality.

  make_tiny_model.py <real-model-dir> <out-dir> [--seed N]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import mlx.core as mx

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="a real model folder to take the tokenizer from")
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    src_config = json.loads((args.source / "config.json").read_text())
    vocab = src_config["vocab_size"]
    hidden, inter, layers, heads, kv_heads = 64, 128, 2, 4, 2
    head_dim = hidden // heads
    config = {
        key: src_config[key]
        for key in ("bos_token_id", "eos_token_id", "pad_token_id", "rms_norm_eps", "rope_theta", "hidden_act")
    }
    config.update(
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": hidden,
            "intermediate_size": inter,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "max_position_embeddings": 2048,
            "vocab_size": vocab,
            "tie_word_embeddings": True,
            "attention_bias": False,
            "mlp_bias": False,
            "rope_scaling": None,
            "torch_dtype": "float32",
        }
    )

    mx.random.seed(args.seed)

    def normal(*shape: int) -> mx.array:
        return mx.random.normal(shape) * 0.02

    weights = {"model.embed_tokens.weight": normal(vocab, hidden), "model.norm.weight": mx.ones((hidden,))}
    for i in range(layers):
        p = f"model.layers.{i}"
        weights.update(
            {
                f"{p}.input_layernorm.weight": mx.ones((hidden,)),
                f"{p}.post_attention_layernorm.weight": mx.ones((hidden,)),
                f"{p}.self_attn.q_proj.weight": normal(heads * head_dim, hidden),
                f"{p}.self_attn.k_proj.weight": normal(kv_heads * head_dim, hidden),
                f"{p}.self_attn.v_proj.weight": normal(kv_heads * head_dim, hidden),
                f"{p}.self_attn.o_proj.weight": normal(hidden, heads * head_dim),
                f"{p}.mlp.gate_proj.weight": normal(inter, hidden),
                f"{p}.mlp.up_proj.weight": normal(inter, hidden),
                f"{p}.mlp.down_proj.weight": normal(hidden, inter),
            }
        )

    args.out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(args.out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (args.out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in TOKENIZER_FILES:
        shutil.copy(args.source / name, args.out / name)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
