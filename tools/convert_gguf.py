#!/usr/bin/env python3
"""Convert a Llama- or Gemma 3-architecture GGUF file into the MLX model layout.

The output folders look like the `mlx-community/*` repositories Mac users download from
Hugging Face: `config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`
(with `chat_template`), `generation_config.json`.

Variants (each its own folder, `<out>/<name>-<variant>`):
  f32   dequantized float32 weights (fast on x86 CPUs, used by long end-to-end tests)
  bf16  dequantized bfloat16 weights (what `mlx-community/*-bf16` repositories hold)
  4bit  MLX affine 4-bit, group size 64, quantized from the bf16 weights as mlx-lm does

Two architectures are read:
  llama   byte-level BPE tokenizer from the GGUF merges; Q/K rows un-permuted back to the
          Hugging Face rotate-half layout (llama.cpp reorders them for its RoPE).
  gemma3  SentencePiece tokenizer rebuilt from the GGUF vocabulary (transformers' own GGUF
          tokenizer builder, which derives the merges); norm weights shifted back by -1
          (llama.cpp folds Gemma's `1 + w` into the stored weights); a Gemma turn-format chat
          template written here, since base-model GGUF files carry none.
Only the project's test models (SmolLM2 135M, Gemma 3 270M) are known to pass through this;
anything else is refused with a clear message.
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
ARCHITECTURES = ("llama", "gemma3")
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
# Gemma 3's sandwich norms and q/k norms; its `ffn_norm` is the norm before the MLP.
GEMMA3_BLOCK_NAMES = {
    **BLOCK_NAMES,
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}

# Gemma's turn format (<start_of_turn>role ... <end_of_turn>, the assistant's role called
# "model", a system message folded into the first user turn), written for this project.
GEMMA_CHAT_TEMPLATE = r"""{{- bos_token -}}
{%- set ns = namespace(system='') -%}
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set ns.system = messages[0]['content'] ~ '\n\n' -%}
{%- endif -%}
{%- for m in messages if m['role'] != 'system' -%}
{{- '<start_of_turn>' ~ ('model' if m['role'] == 'assistant' else 'user') ~ '\n' -}}
{{- ((ns.system if loop.first else '') ~ (m['content'] or '')) | trim -}}
{{- '<end_of_turn>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}"""


class GgufModel:
    """The metadata, tensors and tokenizer of one GGUF file, read eagerly."""

    def __init__(self, path: Path):
        self.reader = gguf.GGUFReader(str(path))
        self.arch = self.field("general.architecture")
        if self.arch not in ARCHITECTURES:
            raise SystemExit(f"{path}: architecture {self.arch!r} is not supported (only {ARCHITECTURES})")

    def field(self, key: str, default=None):
        f = self.reader.get_field(key)
        if f is None:
            return default
        value = f.contents()
        return value

    def hparams(self) -> dict:
        a = self.arch
        n_head = int(self.field(f"{a}.attention.head_count"))
        hidden = int(self.field(f"{a}.embedding_length"))
        head_dim = int(self.field(f"{a}.attention.key_length", hidden // n_head))
        hp = {
            "hidden_size": hidden,
            "intermediate_size": int(self.field(f"{a}.feed_forward_length")),
            "num_hidden_layers": int(self.field(f"{a}.block_count")),
            "num_attention_heads": n_head,
            "num_key_value_heads": int(self.field(f"{a}.attention.head_count_kv", n_head)),
            "head_dim": head_dim,
            "max_position_embeddings": int(self.field(f"{a}.context_length")),
            "rms_norm_eps": float(self.field(f"{a}.attention.layer_norm_rms_epsilon")),
            "rope_theta": float(self.field(f"{a}.rope.freq_base", 10000.0)),
            "vocab_size": len(self.field("tokenizer.ggml.tokens")),
        }
        if a == "gemma3":
            pattern = 6  # llama.cpp's fixed Gemma 3 layout: five local layers, then one global
            layers = hp["num_hidden_layers"]
            hp.update(
                {
                    "sliding_window": int(self.field("gemma3.attention.sliding_window")),
                    "sliding_window_pattern": pattern,
                    "_sliding_window_pattern": pattern,
                    "layer_types": [
                        "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)
                    ],
                    # Not stored in GGUF: llama.cpp uses these for every Gemma 3 size but 27B.
                    "rope_local_base_freq": 10000.0,
                    "query_pre_attn_scalar": head_dim,
                }
            )
        return hp

    def weights(self) -> dict[str, np.ndarray]:
        """All tensors as float32 in the Hugging Face layout ([out, in] for linear layers)."""
        hp = self.hparams()
        out: dict[str, np.ndarray] = {}
        for t in self.reader.tensors:
            w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            # GGUF lists dimensions fastest first; numpy's shape is the reverse of that.
            expected = tuple(int(d) for d in reversed(t.shape.tolist()))
            w = w.reshape(expected)
            name = hf_name(t.name, self.arch)
            if self.arch == "gemma3":
                # llama.cpp stores Gemma's RMSNorm weights as 1 + w; mlx-lm adds the 1 itself.
                if name.endswith("norm.weight"):
                    w = w - 1.0
            elif name.endswith("self_attn.q_proj.weight"):
                w = unpermute_rope_rows(w, hp["num_attention_heads"])
            elif name.endswith("self_attn.k_proj.weight"):
                w = unpermute_rope_rows(w, hp["num_key_value_heads"])
            out[name] = w
        return out


def hf_name(gguf_name: str, arch: str) -> str:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    parts = gguf_name.split(".")
    names = GEMMA3_BLOCK_NAMES if arch == "gemma3" else BLOCK_NAMES
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in names:
        return f"model.layers.{parts[1]}.{names[parts[2]]}.{parts[3]}"
    raise SystemExit(f"unexpected GGUF tensor {gguf_name!r}")


def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's reordering of Q/K rows from rotate-half to interleaved RoPE layout.

    Within each head of dimension d, Hugging Face row j*d/2 + i is GGUF row 2i + j.
    """
    rows, cols = w.shape
    d = rows // n_head
    return w.reshape(n_head, d // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def gemma_tokenizer_files(m: GgufModel) -> tuple[dict, dict, dict]:
    """Gemma's SentencePiece BPE tokenizer, rebuilt from the GGUF vocabulary by transformers'
    GGUF tokenizer builder (it derives the merges from the token order), with `<bos>` added
    by the post-processor as Gemma's own tokenizer.json does."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    fields = {
        name: m.field(f"tokenizer.{key}")
        for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
        if m.reader.get_field(f"tokenizer.{key}") is not None
    }
    backend, _ = convert_gguf_tokenizer("gemma3", fields)
    tokenizer = json.loads(backend.to_str())
    tokens = fields["tokens"]
    special = {
        "bos": m.field("tokenizer.ggml.bos_token_id"),
        "eos": m.field("tokenizer.ggml.eos_token_id"),
        "pad": m.field("tokenizer.ggml.padding_token_id"),
        "unk": m.field("tokenizer.ggml.unknown_token_id"),
    }
    bos = tokens[special["bos"]]
    tokenizer["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            {"SpecialToken": {"id": bos, "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": bos, "type_id": 1}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {bos: {"id": bos, "ids": [special["bos"]], "tokens": [bos]}},
    }
    tok_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": bos,
        "chat_template": GEMMA_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": tokens[special["eos"]],
        "model_max_length": m.hparams()["max_position_embeddings"],
        "pad_token": tokens[special["pad"]],
        "tokenizer_class": "GemmaTokenizer",
        "unk_token": tokens[special["unk"]],
    }
    # A turn ends with <end_of_turn>, which the GGUF does not list as an end token.
    special["eos"] = [special["eos"], tokens.index("<end_of_turn>")]
    return tokenizer, tok_config, special


def tokenizer_files(m: GgufModel) -> tuple[dict, dict, dict]:
    """tokenizer.json, tokenizer_config.json and the special token ids, from GGUF metadata."""
    if m.arch == "gemma3":
        return gemma_tokenizer_files(m)
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


def model_config(arch: str, hp: dict, special: dict, tied: bool) -> dict:
    if arch == "gemma3":
        return {
            "architectures": ["Gemma3ForCausalLM"],
            "attention_bias": False,
            "attn_logit_softcapping": None,
            "bos_token_id": special["bos"],
            "eos_token_id": special["eos"],
            "final_logit_softcapping": None,
            "hidden_activation": "gelu_pytorch_tanh",
            "model_type": "gemma3_text",
            "pad_token_id": special["pad"],
            "rope_scaling": None,
            "tie_word_embeddings": tied,
            "use_cache": True,
            **hp,
        }
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
        config = model_config(m.arch, hp, special, tied)
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
