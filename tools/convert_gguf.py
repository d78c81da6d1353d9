#!/usr/bin/env python3
"""Convert a Llama-architecture GGUF file into the MLX model layout.

The output folders look like the `mlx-community/*` repositories Mac users download from
Hugging Face: `config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`
(with `chat_template`), `generation_config.json`.

Variants (each its own folder, `<out>/<name>-<variant>`):
  f32   dequantized float32 weights (fast on x86 CPUs, used by long end-to-end tests)
  bf16  dequantized bfloat16 weights (what `mlx-community/*-bf16` repositories hold)
  4bit  MLX affine 4-bit, group size 64, quantized from the bf16 weights as mlx-lm does

Only the project's test model is known to pass through this; other Llama GGUF files with
the same tensor naming should work, and anything else is refused with a clear message.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

try:
    import gguf
    import mlx.core as mx
except ImportError as exc:  # pragma: no cover - guidance for a half-set-up machine
    sys.exit(f"convert_gguf.py needs the project's Python environment (scripts/setup.sh): {exc}")

VARIANTS = ("f32", "bf16", "4bit")
QUANT_GROUP_SIZE = 64
QUANT_BITS = 4

# GGUF block tensor names -> Hugging Face / mlx-lm names.
BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


class GgufModel:
    """The metadata, tensors and tokenizer of one GGUF file, read eagerly."""

    def __init__(self, path: Path):
        self.reader = gguf.GGUFReader(str(path))
        arch = self.field("general.architecture")
        if arch != "llama":
            raise SystemExit(f"{path}: architecture {arch!r} is not supported (only 'llama')")

    def field(self, key: str, default=None):
        f = self.reader.get_field(key)
        if f is None:
            return default
        value = f.contents()
        return value

    def hparams(self) -> dict:
        n_head = int(self.field("llama.attention.head_count"))
        hidden = int(self.field("llama.embedding_length"))
        head_dim = int(self.field("llama.attention.key_length", hidden // n_head))
        return {
            "hidden_size": hidden,
            "intermediate_size": int(self.field("llama.feed_forward_length")),
            "num_hidden_layers": int(self.field("llama.block_count")),
            "num_attention_heads": n_head,
            "num_key_value_heads": int(self.field("llama.attention.head_count_kv", n_head)),
            "head_dim": head_dim,
            "max_position_embeddings": int(self.field("llama.context_length")),
            "rms_norm_eps": float(self.field("llama.attention.layer_norm_rms_epsilon")),
            "rope_theta": float(self.field("llama.rope.freq_base", 10000.0)),
            "vocab_size": len(self.field("tokenizer.ggml.tokens")),
        }

    def weights(self) -> dict[str, np.ndarray]:
        """All tensors as float32 in the Hugging Face layout ([out, in] for linear layers)."""
        hp = self.hparams()
        out: dict[str, np.ndarray] = {}
        for t in self.reader.tensors:
            w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            # GGUF lists dimensions fastest first; numpy's shape is the reverse of that.
            expected = tuple(int(d) for d in reversed(t.shape.tolist()))
            w = w.reshape(expected)
            name = hf_name(t.name)
            if name.endswith("self_attn.q_proj.weight"):
                w = unpermute_rope_rows(w, hp["num_attention_heads"])
            elif name.endswith("self_attn.k_proj.weight"):
                w = unpermute_rope_rows(w, hp["num_key_value_heads"])
            out[name] = w
        return out


def hf_name(gguf_name: str) -> str:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{BLOCK_NAMES[parts[2]]}.{parts[3]}"
    raise SystemExit(f"unexpected GGUF tensor {gguf_name!r}")


def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's reordering of Q/K rows from rotate-half to interleaved RoPE layout.

    Within each head of dimension d, Hugging Face row j*d/2 + i is GGUF row 2i + j.
    """
    rows, cols = w.shape
    d = rows // n_head
    return w.reshape(n_head, d // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def tokenizer_files(m: GgufModel) -> tuple[dict, dict, dict]:
    """tokenizer.json, tokenizer_config.json and the special token ids, from GGUF metadata."""
    tokens = m.field("tokenizer.ggml.tokens")
    merges = m.field("tokenizer.ggml.merges")
    types = m.field("tokenizer.ggml.token_type")
    model = m.field("tokenizer.ggml.model")
    if model != "gpt2":
        raise SystemExit(f"tokenizer model {model!r} is not supported (only byte-level BPE 'gpt2')")
    special = {
        "bos": m.field("tokenizer.ggml.bos_token_id"),
        "eos": m.field("tokenizer.ggml.eos_token_id"),
        "pad": m.field("tokenizer.ggml.padding_token_id"),
        "unk": m.field("tokenizer.ggml.unknown_token_id"),
    }
    control = 3  # gguf.TokenType.CONTROL
    added = [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, (tok, ty) in enumerate(zip(tokens, types))
        if int(ty) == control
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": True,
                },
            ],
        },
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": False,
            "use_regex": True,
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            "merges": [mrg.split(" ", 1) for mrg in merges],
        },
    }

    def tok(key):
        idx = special.get(key)
        return tokens[idx] if idx is not None else None

    tok_config = {
        "add_bos_token": bool(m.field("tokenizer.ggml.add_bos_token", False)),
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added
        },
        "additional_special_tokens": [a["content"] for a in added if a["content"].startswith("<|im_")],
        "bos_token": tok("bos"),
        "chat_template": m.field("tokenizer.chat_template"),
        "clean_up_tokenization_spaces": False,
        "eos_token": tok("eos"),
        "model_max_length": m.hparams()["max_position_embeddings"],
        "pad_token": tok("pad"),
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": tok("unk"),
        "vocab_size": len(tokens),
    }
    return tokenizer, tok_config, special


def model_config(hp: dict, special: dict, tied: bool) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": special["bos"],
        "eos_token_id": special["eos"],
        "pad_token_id": special["pad"],
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "mlp_bias": False,
        "model_type": "llama",
        "pretraining_tp": 1,
        "rope_scaling": None,
        "tie_word_embeddings": tied,
        "use_cache": True,
        **hp,
    }


def quantizable(name: str, w: mx.array) -> bool:
    """mlx-lm quantizes every Linear and Embedding whose rows split into whole groups."""
    return (
        name.endswith(".weight")
        and w.ndim == 2
        and not name.endswith("norm.weight")
        and w.shape[-1] % QUANT_GROUP_SIZE == 0
    )


def variant_weights(weights: dict[str, np.ndarray], variant: str) -> dict[str, mx.array]:
    if variant == "f32":
        return {k: mx.array(v) for k, v in weights.items()}
    bf16 = {k: mx.array(v).astype(mx.bfloat16) for k, v in weights.items()}
    if variant == "bf16":
        return bf16
    out: dict[str, mx.array] = {}
    for name, w in bf16.items():
        if quantizable(name, w):
            q, scales, biases = mx.quantize(w, group_size=QUANT_GROUP_SIZE, bits=QUANT_BITS)
            base = name[: -len(".weight")]
            out[f"{base}.weight"] = q
            out[f"{base}.scales"] = scales
            out[f"{base}.biases"] = biases
        else:
            out[name] = w
    return out


def write_model_dir(
    out: Path,
    config: dict,
    weights: dict[str, mx.array],
    tokenizer: dict,
    tok_config: dict,
    generation: dict,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    mx.eval(list(weights.values()))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", type=Path, help="the GGUF file")
    ap.add_argument("out_dir", type=Path, help="folder to write <name>-<variant> folders into")
    ap.add_argument("--name", required=True, help="model name, e.g. SmolLM2-135M-Instruct")
    ap.add_argument(
        "--sampling",
        default="",
        help="the publisher's recommended sampling for generation_config.json, e.g. "
        "temperature=0.2,top_p=0.9 (GGUF files do not carry it)",
    )
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of f32,bf16,4bit")
    args = ap.parse_args()

    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {VARIANTS}")

    m = GgufModel(args.gguf)
    hp = m.hparams()
    tokenizer, tok_config, special = tokenizer_files(m)
    weights = m.weights()
    tied = "lm_head.weight" not in weights
    generation = {"bos_token_id": special["bos"], "eos_token_id": special["eos"], "do_sample": False}
    for item in filter(None, args.sampling.split(",")):
        key, _, value = item.partition("=")
        if key not in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty"):
            ap.error(f"--sampling: unknown key {key!r}")
        generation[key] = int(value) if key == "top_k" else float(value)

    for variant in variants:
        config = model_config(hp, special, tied)
        config["torch_dtype"] = "float32" if variant == "f32" else "bfloat16"
        if variant == "4bit":
            q = {"group_size": QUANT_GROUP_SIZE, "bits": QUANT_BITS, "mode": "affine"}
            config["quantization"] = q
            config["quantization_config"] = dict(q)
        dest = args.out_dir / f"{args.name}-{variant}"
        write_model_dir(dest, config, variant_weights(weights, variant), tokenizer, tok_config, generation)
        size = sum(f.stat().st_size for f in dest.iterdir())
        print(f"wrote {dest} ({size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
