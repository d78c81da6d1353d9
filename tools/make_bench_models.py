#!/usr/bin/env python3
"""Write random-weight models of realistic shape for the speed benchmarks of the 2026 layer
kinds, built by mlx-lm's own classes (weights drawn as make_tiny_model.py draws them).

The tiny test models are too small for timings to mean anything; these are a few hundred
million parameters, the width of the small members of each family, with SmolLM2's tokenizer:

  bench-qwen3.5     Qwen3.5 text model: 12 layers of 1024, nine Gated DeltaNet layers
                    (8 key heads, 16 value heads of 128) to three gated attention layers
  bench-deepseek-v3 DeepSeek-V3: 8 layers of 1024, latent attention (16 heads, a 256-wide
                    latent, 384-wide query bottleneck), a dense first layer, then 16 experts
                    (4 per token, in 4 groups) and a shared expert

Each is written as float32 and 4-bit (mlx-lm's quantize_model, groups of 64).

  .deps/venv/bin/python tools/make_bench_models.py .deps/models/opta/SmolLM2-135M-Instruct-bf16 /tmp/bench-models
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import mlx.core as mx
import mlx_lm_compat  # noqa: F401  (before mlx_lm: see its docstring)
from make_tiny_model import redraw, write, write_quantized
from mlx_lm.models import deepseek_v3, qwen3_5


def both(out: Path, source: Path, name: str, config: dict, model) -> None:
    """`name` in float32 and `name`-4bit."""
    write(out / name, source, config, redraw(model))
    write_quantized(model, config, out / name, out / f"{name}-4bit", group_size=64, bits=4,
                    quant_predicate=getattr(model, "quant_predicate", None))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="a real model folder to take the tokenizer from")
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    src = json.loads((args.source / "config.json").read_text())
    tokens = {k: src[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    mx.random.seed(0)

    text = {**tokens, "model_type": "qwen3_5_text", "hidden_size": 1024, "intermediate_size": 3072,
            "num_hidden_layers": 12, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 128,
            "linear_num_key_heads": 8, "linear_num_value_heads": 16, "linear_key_head_dim": 128,
            "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4, "full_attention_interval": 4,
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "vocab_size": src["vocab_size"],
            "tie_word_embeddings": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25}}
    config = {**tokens, "model_type": "qwen3_5", "text_config": text, "tie_word_embeddings": True,
              "torch_dtype": "float32"}
    both(args.out, args.source, "bench-qwen3.5", config, qwen3_5.Model(qwen3_5.ModelArgs.from_dict(config)))

    config = {**tokens, "model_type": "deepseek_v3", "hidden_size": 1024, "intermediate_size": 2816,
              "moe_intermediate_size": 512, "num_hidden_layers": 8, "num_attention_heads": 16,
              "num_key_value_heads": 16, "n_shared_experts": 1, "n_routed_experts": 16,
              "routed_scaling_factor": 2.5, "kv_lora_rank": 256, "q_lora_rank": 384, "qk_rope_head_dim": 32,
              "v_head_dim": 64, "qk_nope_head_dim": 64, "topk_method": "noaux_tc", "scoring_func": "sigmoid",
              "norm_topk_prob": True, "n_group": 4, "topk_group": 2, "num_experts_per_tok": 4,
              "moe_layer_freq": 1, "first_k_dense_replace": 1, "max_position_embeddings": 32768,
              "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "attention_bias": False,
              "vocab_size": src["vocab_size"], "torch_dtype": "float32"}
    both(args.out, args.source, "bench-deepseek-v3", config,
         deepseek_v3.Model(deepseek_v3.ModelArgs.from_dict(config)))


if __name__ == "__main__":
    main()
