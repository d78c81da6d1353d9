#!/usr/bin/env python3
"""Write tiny random-weights model folders for fast tests.

They borrow the tokenizer files (and chat template) of a real model folder, so text goes in
and out exactly as with the real model, while the networks are small enough to load and run in
milliseconds. Their output is gibberish by design: tests use them for plumbing, and for
checking the engine's arithmetic against mlx-lm on every supported architecture and
quantization, never for quality.

  make_tiny_model.py <real-model-dir> <out-dir> [--seed N]

writes <out-dir>/tiny-random-{llama,qwen2,qwen3,gemma3} (float32) and quantized llama variants
tiny-random-llama-{2bit-g32,3bit-g64,6bit-g128,8bit-g64,mxfp4,mxfp8,nvfp4,mixed} (the last
one with per-module overrides in config.json, as mlx-lm writes them).

tiny-random-qwen3-moe is a Qwen3 MoE (8 experts, 2 per token, layer 0 sparse and layer 1 a
dense MLP) in mlx-lm's stacked `switch_mlp` layout; tiny-random-qwen3-moe-4bit is it quantized
(experts included), tiny-random-qwen3-moe-hf the same weights in Hugging Face's per-expert
layout (`experts.{e}.*`), which loaders stack.

tiny-random-granite is Llama's layout with Granite's four multipliers (embeddings, attention
scores, residual branches, logits), each far from 1 so that a missing one shows.

tiny-random-phi3 is Phi-3's layout (fused `qkv_proj` and `gate_up_proj`) with Phi-4-mini's
partial rotary factor (0.75) and LongRoPE (`longrope` long and short factors, 8192 positions
extended from 2048).

tiny-random-ministral3 is Ministral 3's text model: YaRN RoPE and the position-dependent query
scale (`llama_4_scaling_beta`) from `rope_parameters`, whose original context is set to 16 so
that both matter within the test prompts, and a sliding-window (8) first layer;
tiny-random-mistral3-vlm is it inside Mistral 3's vision-language wrapper, in transformers 5's
tensor layout (`model.language_model.*`, a stand-in `model.vision_tower.*`).

tiny-random-glm4-moe is GLM-4.5's layout: q/k/v biases and q/k norms, half-rotary RoPE, a
dense first layer (`first_k_dense_replace`), then 8 routed experts behind a grouped sigmoid
router with a correction bias (4 groups, the best 2 kept, 2 experts per token, weights scaled by
2.5) and a shared expert; tiny-random-glm4-moe-4bit is it quantized (the router stays dense,
as mlx-lm's MoEGate is no Linear).

tiny-random-gemma3 is a gemma3_text model whose local layers have a window of 8 positions, so
that the reference prompts cross it both in prefill and in decoding; tiny-random-gemma3-4bit is
it quantized, and tiny-random-gemma3-vlm the same language model inside Gemma 3's
vision-language wrapper (`model_type: gemma3`, `text_config`, `language_model.*` tensors, and a
stand-in vision tower that must be left unloaded).

tiny-random-gpt-oss is gpt-oss's layout as mlx-lm stores it: attention with biases and
per-head sinks, alternating sliding-window (8) and full layers, YaRN (original context 16),
and every layer a MoE of 8 experts (2 per token) with biased router and experts and the
clamped SwiGLU, its weights large enough that the clamp at 7 acts. tiny-random-gpt-oss-mxfp4
is it with MXFP4 experts and 8-bit affine elsewhere (as mlx-community's MXFP4-Q8 conversions
are), tiny-random-gpt-oss-openai the same experts in OpenAI's own checkpoint layout
(`gate_up_proj_blocks` with gate and up rows interleaved, `_scales`, `_bias`;
`quantization_config.quant_method: mxfp4`). Their tokenizer adds the harmony format's special
tokens to SmolLM2's, with a harmony chat template written here.

tiny-random-llama-long is tiny-random-llama with a 131072-token context: Claude Code's and
Codex's 10-20k-token first requests prefill in seconds on it, for the tests that run those
clients. tiny-scripted-llama is it made to answer every chat with one fixed sentence and end
its turn (see scripted_llama), since both clients take an answer cut at its token limit for an
error.

tiny-random-gpt-oss-convert-mxfp4 is tiny-random-gpt-oss as mlx-lm's own quantize_model writes
it in mode mxfp4 (what `mlx_lm.convert --q-mode mxfp4` writes): router overrides without a mode.

tiny-random-ministral3-fp8 is tiny-random-ministral3 in Mistral's FP8 layout (float8 e4m3
projections, per-tensor `weight_scale_inv`), and tiny-random-ministral3-fp8-dense the same
weights expanded by MLX, which the reference is recorded from.

tiny-random-qwen3 gets a chat template in the manner of Qwen3's thinking models (written here,
not copied): tools in a system block with Hermes `<tool_call>` syntax, tool results as
`<tool_response>`, and an assistant turn that opens `<think>` unless `enable_thinking` is false.
It is what the reasoning and native-tool tests run against.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import mlx.core as mx

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
HIDDEN, INTER, LAYERS, HEADS, KV_HEADS = 128, 256, 2, 4, 2
HEAD_DIM = HIDDEN // HEADS


def base_config(src: dict, arch: str) -> dict:
    config = {k: src[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id", "rms_norm_eps", "hidden_act")}
    config.update(
        {
            "architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[arch]],
            "model_type": arch,
            "hidden_size": HIDDEN,
            "intermediate_size": INTER,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS,
            "head_dim": HEAD_DIM,
            "max_position_embeddings": 2048,
            "vocab_size": src["vocab_size"],
            "rope_theta": 10000.0,
            "tie_word_embeddings": True,
            "attention_bias": False,
            "mlp_bias": False,
            "rope_scaling": None,
            "torch_dtype": "float32",
        }
    )
    if arch == "llama":
        # Llama 3's frequency-dependent RoPE scaling, so that path is checked too.
        config["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 1024,
        }
    return config


GEMMA3_TEXT = {
    "sliding_window": 8,
    "sliding_window_pattern": 2,
    "rope_local_base_freq": 10000.0,
    "rope_theta": 1000000.0,
    # Not head_dim, so that the query scaling is checked.
    "query_pre_attn_scalar": 48,
    "num_hidden_layers": 4,
    "hidden_activation": "gelu_pytorch_tanh",
}


MOE = {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 64, "decoder_sparse_step": 1,
       "mlp_only_layers": [1], "norm_topk_prob": True}


def moe_config(src: dict) -> dict:
    config = base_config(src, "qwen3")
    config.update(MOE)
    config.update({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe"})
    return config


def moe_weights(vocab: int) -> dict[str, mx.array]:
    """Qwen3 weights whose layer-0 MLP is a router and stacked experts."""
    w = random_weights("qwen3", vocab)
    e, inter = MOE["num_experts"], MOE["moe_intermediate_size"]
    p = "model.layers.0.mlp"
    for name in ("gate_proj", "up_proj", "down_proj"):
        del w[f"{p}.{name}.weight"]
    w[f"{p}.gate.weight"] = mx.random.normal((e, HIDDEN)) * 0.5
    w[f"{p}.switch_mlp.gate_proj.weight"] = mx.random.normal((e, inter, HIDDEN)) * 0.1
    w[f"{p}.switch_mlp.up_proj.weight"] = mx.random.normal((e, inter, HIDDEN)) * 0.1
    w[f"{p}.switch_mlp.down_proj.weight"] = mx.random.normal((e, HIDDEN, inter)) * 0.1
    return w


def per_expert(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """The Hugging Face layout: one tensor per expert and projection."""
    out = {}
    for name, w in weights.items():
        if ".switch_mlp." in name:
            base, proj = name.split(".switch_mlp.")
            for i in range(w.shape[0]):
                out[f"{base}.experts.{i}.{proj}"] = w[i]
        else:
            out[name] = w
    return out


def gemma3_config(src: dict) -> dict:
    config = base_config(src, "llama")
    config.update(GEMMA3_TEXT)
    config.update({"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "rope_scaling": None})
    del config["hidden_act"]
    return config


def gemma3_weights(vocab: int) -> dict[str, mx.array]:
    """Gemma 3's layout: q/k norms and four norms per block, stored as offsets from 1."""
    def normal(*shape: int, std: float = 0.1) -> mx.array:
        return mx.random.normal(shape) * std

    layers = GEMMA3_TEXT["num_hidden_layers"]
    w = {"model.embed_tokens.weight": normal(vocab, HIDDEN, std=0.05), "model.norm.weight": normal(HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}"
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"):
            w[f"{p}.{norm}.weight"] = normal(HIDDEN)
        w.update(
            {
                f"{p}.self_attn.q_norm.weight": normal(HEAD_DIM),
                f"{p}.self_attn.k_norm.weight": normal(HEAD_DIM),
                f"{p}.self_attn.q_proj.weight": normal(HEADS * HEAD_DIM, HIDDEN),
                f"{p}.self_attn.k_proj.weight": normal(KV_HEADS * HEAD_DIM, HIDDEN),
                f"{p}.self_attn.v_proj.weight": normal(KV_HEADS * HEAD_DIM, HIDDEN),
                f"{p}.self_attn.o_proj.weight": normal(HIDDEN, HEADS * HEAD_DIM),
                f"{p}.mlp.gate_proj.weight": normal(INTER, HIDDEN),
                f"{p}.mlp.up_proj.weight": normal(INTER, HIDDEN),
                f"{p}.mlp.down_proj.weight": normal(HIDDEN, INTER),
            }
        )
    return w


def random_weights(arch: str, vocab: int) -> dict[str, mx.array]:
    def normal(*shape: int, std: float = 0.1) -> mx.array:
        return mx.random.normal(shape) * std

    def norm(dim: int) -> mx.array:
        return 1.0 + normal(dim, std=0.1)

    w = {"model.embed_tokens.weight": normal(vocab, HIDDEN, std=0.5), "model.norm.weight": norm(HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        w.update(
            {
                f"{p}.input_layernorm.weight": norm(HIDDEN),
                f"{p}.post_attention_layernorm.weight": norm(HIDDEN),
                f"{p}.self_attn.q_proj.weight": normal(HEADS * HEAD_DIM, HIDDEN),
                f"{p}.self_attn.k_proj.weight": normal(KV_HEADS * HEAD_DIM, HIDDEN),
                f"{p}.self_attn.v_proj.weight": normal(KV_HEADS * HEAD_DIM, HIDDEN),
                f"{p}.self_attn.o_proj.weight": normal(HIDDEN, HEADS * HEAD_DIM),
                f"{p}.mlp.gate_proj.weight": normal(INTER, HIDDEN),
                f"{p}.mlp.up_proj.weight": normal(INTER, HIDDEN),
                f"{p}.mlp.down_proj.weight": normal(HIDDEN, INTER),
            }
        )
        if arch == "qwen2":
            for proj, dim in (("q_proj", HEADS), ("k_proj", KV_HEADS), ("v_proj", KV_HEADS)):
                w[f"{p}.self_attn.{proj}.bias"] = normal(dim * HEAD_DIM)
        if arch == "qwen3":
            w[f"{p}.self_attn.q_norm.weight"] = norm(HEAD_DIM)
            w[f"{p}.self_attn.k_norm.weight"] = norm(HEAD_DIM)
    return w


def quantize(weights: dict[str, mx.array], default: dict, overrides: dict) -> dict[str, mx.array]:
    """mlx-lm's rule: every Linear/Embedding weight whose rows split into whole groups."""
    out = {}
    for name, w in weights.items():
        module = name[: -len(".weight")]
        q = overrides.get(module, default)
        if name.endswith(".weight") and w.ndim in (2, 3) and "norm" not in name and q and w.shape[-1] % q["group_size"] == 0:
            parts = mx.quantize(w, group_size=q["group_size"], bits=q["bits"], mode=q.get("mode", "affine"))
            # Affine gives (weight, scales, biases); the floating-point modes no biases.
            for suffix, part in zip(("weight", "scales", "biases"), parts):
                out[f"{module}.{suffix}"] = part
        else:
            out[name] = w
    return out


QWEN3_STYLE_TEMPLATE = """\
{%- if tools or messages[0].role == 'system' %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}{% endif %}
{%- if tools %}

# Tools

You may call functions. Their signatures are inside <tools></tools>:
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>

To call one, write a JSON object with its name and arguments inside <tool_call></tool_call>:
<tool_call>
{"name": <function name>, "arguments": <arguments object>}
</tool_call>
{%- endif %}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' %}
{%- elif message.role == 'assistant' %}<|im_start|>assistant
{{ message.content or '' }}
{%- for call in message.tool_calls or [] %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is defined and not enable_thinking %}<think>

</think>

{% else %}<think>
{% endif %}
{%- endif %}"""


HARMONY_TOKENS = ["<|start|>", "<|message|>", "<|channel|>", "<|end|>", "<|return|>", "<|call|>", "<|constrain|>"]

# The harmony format as gpt-oss reads it (written here, not copied): a system message with the
# reasoning effort and the channels, a developer message with the instructions and the tools,
# earlier calls (after their reasoning, in the analysis channel) and their results in the
# commentary channel, answers in the final channel. Like gpt-oss's own template, it refuses a
# tool-call turn that has both content and thinking.
HARMONY_TEMPLATE = """\
{%- set ns = namespace(instructions='', last_tool='') %}
{%- for m in messages %}{% if m.role == 'system' or m.role == 'developer' %}{% set ns.instructions = m.content %}{% endif %}{% endfor %}
{%- set effort = reasoning_effort if reasoning_effort is defined and reasoning_effort else 'medium' -%}
<|start|>system<|message|>You are a helpful assistant.
Reasoning: {{ effort }}

# Valid channels: analysis, commentary, final. Channel must be included for every message.
{%- if tools %}
Calls to these tools must go to the commentary channel: 'functions'.
{%- endif %}<|end|>
{%- if ns.instructions or tools %}<|start|>developer<|message|>
{%- if ns.instructions %}# Instructions

{{ ns.instructions }}
{%- endif %}
{%- if tools %}

# Tools

## functions

namespace functions {
{% for tool in tools %}{% set f = tool.function if tool.function is defined else tool %}
// {{ f.description or '' }}
type {{ f.name }} = (_: {{ f.parameters | tojson }}) => any;
{% endfor %}
} // namespace functions
{%- endif %}<|end|>
{%- endif %}
{%- for m in messages %}
{%- if m.role == 'user' %}<|start|>user<|message|>{{ m.content }}<|end|>
{%- elif m.role == 'assistant' and m.tool_calls %}
{%- if m.content and m.thinking %}{{ raise_exception('a tool-call turn has either content or thinking, not both') }}{% endif %}
{%- if m.content or m.thinking %}<|start|>assistant<|channel|>analysis<|message|>{{ m.content or m.thinking }}<|end|>{% endif %}
{%- for call in m.tool_calls %}{% set ns.last_tool = call.function.name %}<|start|>assistant to=functions.{{ call.function.name }}<|channel|>commentary json<|message|>
{%- if call.function.arguments is string %}{{ call.function.arguments }}{% else %}{{ call.function.arguments | tojson }}{% endif %}<|call|>
{%- endfor %}
{%- elif m.role == 'assistant' %}<|start|>assistant<|channel|>final<|message|>{{ m.content }}<|end|>
{%- elif m.role == 'tool' %}<|start|>functions.{{ m.name if m.name is defined and m.name else ns.last_tool }} to=assistant<|channel|>commentary<|message|>{{ m.content }}<|end|>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|start|>assistant{% endif %}"""


def harmony_tokenizer(out: Path, vocab: int) -> list[int]:
    """Adds the harmony tokens (ids from `vocab` on) and the template; returns their ids."""
    tok_path = out / "tokenizer.json"
    tok = json.loads(tok_path.read_text())
    ids = list(range(vocab, vocab + len(HARMONY_TOKENS)))
    for i, t in zip(ids, HARMONY_TOKENS):
        tok["added_tokens"].append(
            {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        )
    tok_path.write_text(json.dumps(tok, ensure_ascii=False) + "\n")
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["chat_template"] = HARMONY_TEMPLATE
    tc["eos_token"] = "<|return|>"
    decoder = tc.setdefault("added_tokens_decoder", {})
    for i, t in zip(ids, HARMONY_TOKENS):
        decoder[str(i)] = {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")
    gen_path = out / "generation_config.json"
    gen = json.loads(gen_path.read_text())
    gen["eos_token_id"] = [ids[4], ids[5]]
    gen_path.write_text(json.dumps(gen, indent=2) + "\n")
    return ids


def gpt_oss(src: dict, out: Path, source: Path) -> None:
    """tiny-random-gpt-oss and its MXFP4 variants (see the module docstring)."""
    vocab = src["vocab_size"] + len(HARMONY_TOKENS)
    e, inter = 8, 64
    config = {
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "hidden_size": HIDDEN,
        "intermediate_size": inter,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-5,
        "rope_theta": 150000,
        "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                         "original_max_position_embeddings": 16, "truncate": False},
        "sliding_window": 8,
        "layer_types": ["sliding_attention", "full_attention"],
        "num_local_experts": e,
        "num_experts_per_tok": 2,
        "experts_per_token": 2,
        "swiglu_limit": 7.0,
        "attention_bias": True,
        "tie_word_embeddings": False,
        "max_position_embeddings": 2048,
        "torch_dtype": "float32",
        "eos_token_id": [vocab - 3, vocab - 2],
        "pad_token_id": src["pad_token_id"],
    }
    rnd = mx.random.normal
    w = {"model.embed_tokens.weight": rnd((vocab, HIDDEN)) * 0.5, "lm_head.weight": rnd((vocab, HIDDEN)) * 0.5,
         "model.norm.weight": 1.0 + rnd((HIDDEN,)) * 0.1}
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        for name, rows in (("q_proj", HEADS * HEAD_DIM), ("k_proj", KV_HEADS * HEAD_DIM), ("v_proj", KV_HEADS * HEAD_DIM), ("o_proj", HIDDEN)):
            w[f"{p}.self_attn.{name}.weight"] = rnd((rows, HIDDEN)) * 0.1
            w[f"{p}.self_attn.{name}.bias"] = rnd((rows,)) * 0.1
        # Sinks large enough to take a visible share of each softmax.
        w[f"{p}.self_attn.sinks"] = rnd((HEADS,)) * 2.0
        w[f"{p}.mlp.router.weight"] = rnd((e, HIDDEN)) * 0.5
        w[f"{p}.mlp.router.bias"] = rnd((e,)) * 0.5
        # Gate and up pre-activations of about 8: the clamp at 7 acts on many of them.
        for name in ("gate_proj", "up_proj"):
            w[f"{p}.mlp.experts.{name}.weight"] = rnd((e, inter, HIDDEN)) * 0.7
            w[f"{p}.mlp.experts.{name}.bias"] = rnd((e, inter)) * 0.5
        w[f"{p}.mlp.experts.down_proj.weight"] = rnd((e, HIDDEN, inter)) * 0.01
        w[f"{p}.mlp.experts.down_proj.bias"] = rnd((e, HIDDEN)) * 0.1
        w[f"{p}.input_layernorm.weight"] = 1.0 + rnd((HIDDEN,)) * 0.1
        w[f"{p}.post_attention_layernorm.weight"] = 1.0 + rnd((HIDDEN,)) * 0.1
    for name, cfg, weights in variants_of_gpt_oss(config, w):
        write(out / name, source, cfg, weights)
        harmony_tokenizer(out / name, src["vocab_size"])


def variants_of_gpt_oss(config: dict, w: dict[str, mx.array]):
    yield "tiny-random-gpt-oss", config, w
    fp4 = {"group_size": 32, "bits": 4, "mode": "mxfp4"}
    experts = {f"model.layers.{i}.mlp.experts.{n}": fp4 for i in range(LAYERS) for n in ("gate_proj", "up_proj", "down_proj")}
    q8 = {"group_size": 64, "bits": 8, "mode": "affine"}
    q = {**q8, **experts}
    yield "tiny-random-gpt-oss-mxfp4", {**config, "quantization": q, "quantization_config": q}, quantize(w, q8, experts)
    # OpenAI's layout: MXFP4 experts only, as bytes in blocks of 16, gate and up interleaved.
    only = quantize({k: v for k, v in w.items() if ".experts." in k}, None, experts)
    raw = {k: v for k, v in w.items() if ".experts." not in k}
    def blocks(x: mx.array) -> mx.array:
        b = x.view(mx.uint8)
        return b.reshape(*b.shape[:-1], -1, 16)
    def interleave(a: mx.array, b: mx.array, axis: int) -> mx.array:
        both = mx.stack([a, b], axis=axis + 1 if axis >= 0 else axis)
        shape = list(a.shape)
        shape[axis] *= 2
        return both.reshape(shape)
    for i in range(LAYERS):
        p = f"model.layers.{i}.mlp.experts"
        g, u, d = (f"{p}.{n}" for n in ("gate_proj", "up_proj", "down_proj"))
        raw[f"{p}.gate_up_proj_blocks"] = blocks(interleave(only[f"{g}.weight"], only[f"{u}.weight"], -2))
        raw[f"{p}.gate_up_proj_scales"] = interleave(only[f"{g}.scales"], only[f"{u}.scales"], -2)
        raw[f"{p}.gate_up_proj_bias"] = interleave(only[f"{g}.bias"], only[f"{u}.bias"], -1)
        raw[f"{p}.down_proj_blocks"] = blocks(only[f"{d}.weight"])
        raw[f"{p}.down_proj_scales"] = only[f"{d}.scales"]
        raw[f"{p}.down_proj_bias"] = only[f"{d}.bias"]
    openai = {**config, "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}}
    yield "tiny-random-gpt-oss-openai", openai, raw


def fp8_ministral(out: Path, source: Path) -> None:
    """tiny-random-ministral3-fp8: the projections as float8 e4m3 with a per-tensor
    `weight_scale_inv` (and the unused `activation_scale` of Mistral's static scheme), as
    Mistral publishes Ministral 3; tiny-random-ministral3-fp8-dense the same weights expanded
    by MLX's own `from_fp8`, for the reference (mlx-lm 0.32.2's ministral3 multiplies the raw
    bytes instead)."""
    base = out / "tiny-random-ministral3"
    weights = mx.load(str(base / "model.safetensors"))
    config = json.loads((base / "config.json").read_text())
    fp8, dense = {}, {}
    for name, w in weights.items():
        if name.startswith("model.layers.") and name.endswith("_proj.weight"):
            scale = mx.max(mx.abs(w)) / 448.0
            q = mx.to_fp8(w / scale)
            fp8[name] = q
            fp8[name.replace(".weight", ".weight_scale_inv")] = scale
            fp8[name.replace(".weight", ".activation_scale")] = mx.array(1.0)
            dense[name] = mx.from_fp8(q, mx.float32) * scale
        else:
            fp8[name] = dense[name] = w
    quant = {"quant_method": "fp8", "activation_scheme": "static", "weight_block_size": None}
    write(out / "tiny-random-ministral3-fp8", source, {**config, "quantization_config": quant}, fp8)
    mark_float8(out / "tiny-random-ministral3-fp8" / "model.safetensors")
    write(out / "tiny-random-ministral3-fp8-dense", source, config, dense)


def mark_float8(path: Path) -> None:
    """MLX saves float8 bytes as U8; checkpoints say F8_E4M3 (which MLX loads as uint8)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    for name, t in header.items():
        if name.endswith("_proj.weight") and t.get("dtype") == "U8":
            t["dtype"] = "F8_E4M3"
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])


SCRIPTED_ANSWER = "Hello! I am a tiny test model."


def converted_mxfp4(out: Path) -> None:
    """tiny-random-gpt-oss-convert-mxfp4: tiny-random-gpt-oss quantized and written by mlx-lm
    itself, as `mlx_lm.convert --q-mode mxfp4` does: MXFP4 by default, with per-module
    overrides that name no mode for the routers (8-bit affine, as mlx-lm reads them)."""
    import mlx_lm_compat  # noqa: F401  (before mlx_lm: see its docstring)
    from mlx_lm import load

    src = out / "tiny-random-gpt-oss"
    dst = out / "tiny-random-gpt-oss-convert-mxfp4"
    model, _ = load(str(src))
    config = json.loads((src / "config.json").read_text())
    write_quantized(model, config, src, dst, group_size=32, bits=4, mode="mxfp4")


def scripted_llama(src: dict, config: dict, llama: dict[str, mx.array], out: Path, source: Path) -> None:
    """tiny-scripted-llama: tiny-random-llama-long made to answer every chat with
    SCRIPTED_ANSWER and end its turn, greedy or sampled.

    Attention and MLP outputs are zeroed, so the last hidden state is the current token's
    embedding, normalized: the model predicts from the current token alone. An untied head
    then maps the generation prompt's last token to the answer's first, each answer token to
    the next, and the last to the end of turn, each with a logit of 40 (the other rows give a
    few units at most), so sampling at any usual temperature follows the script. The prompt is
    still read through every layer: a 20k-token prompt costs what it costs."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(source / "tokenizer.json"))
    start = tok.encode("<|im_start|>assistant\n", add_special_tokens=False).ids[-1]
    chain = [start, *tok.encode(SCRIPTED_ANSWER, add_special_tokens=False).ids, src["eos_token_id"]]
    if len(set(chain[:-1])) != len(chain) - 1:
        raise SystemExit(f"the scripted answer repeats a token: {chain}")
    w = dict(llama)
    for i in range(LAYERS):
        w[f"model.layers.{i}.self_attn.o_proj.weight"] = mx.zeros_like(w[f"model.layers.{i}.self_attn.o_proj.weight"])
        w[f"model.layers.{i}.mlp.down_proj.weight"] = mx.zeros_like(w[f"model.layers.{i}.mlp.down_proj.weight"])
    emb = w["model.embed_tokens.weight"]
    eps = src["rms_norm_eps"]
    head = mx.zeros((emb.shape[0], HIDDEN))
    for here, after in zip(chain, chain[1:]):
        e = emb[here]
        h = e * mx.rsqrt(mx.mean(e * e) + eps) * w["model.norm.weight"]
        head[after] = 40.0 * h / mx.sum(h * h)
    w["lm_head.weight"] = head
    write(out / "tiny-scripted-llama", source, {**config, "tie_word_embeddings": False}, w)


# Qwen3-Next and Qwen3.5/3.6's text model at test size: 2 key heads of 32 and 4 value heads of 16
# in the Gated DeltaNet layers (so q and k are repeated), a kernel-4 convolution, gated
# attention with 4 query and 2 key-value heads rotating a quarter of each head.
HYBRID = {
    "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": 4, "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
    "linear_key_head_dim": 32, "linear_value_head_dim": 16, "linear_conv_kernel_dim": 4,
    "max_position_embeddings": 4096, "attention_bias": False,
}
HYBRID_MOE = {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
              "shared_expert_intermediate_size": 96, "decoder_sparse_step": 1, "mlp_only_layers": [],
              "norm_topk_prob": True}
# The norms Hugging Face stores zero-centred (mlx-lm's qwen3_5 `sanitize` adds 1 to them).
CENTRED_NORMS = (".input_layernorm.weight", ".post_attention_layernorm.weight", "model.norm.weight",
                 ".q_norm.weight", ".k_norm.weight")


def redraw(model) -> dict[str, mx.array]:
    """Every weight of an mlx-lm model drawn afresh, norms near 1 so that a missed offset
    shows; returns them as a safetensors dict."""
    from mlx.utils import tree_flatten, tree_unflatten

    params = {}
    for name, p in tree_flatten(model.parameters()):
        if name.endswith("A_log"):
            params[name] = mx.log(mx.random.uniform(1, 16, p.shape))
        elif name.endswith("dt_bias") or "norm" in name:
            params[name] = 1.0 + mx.random.normal(p.shape) * 0.1
        elif "embed_tokens" in name:
            params[name] = mx.random.normal(p.shape) * 0.5
        elif name.endswith("mlp.gate.weight"):
            params[name] = mx.random.normal(p.shape) * 0.5
        elif "conv1d" in name:
            params[name] = mx.random.normal(p.shape) * 0.3
        else:
            params[name] = mx.random.normal(p.shape) * 0.1
    model.update(tree_unflatten(list(params.items())))
    return params


def attention_families(src: dict, out: Path, source: Path) -> None:
    """Attention-only families of 2025-26, built by mlx-lm's own classes with their weights
    redrawn: tiny-random-olmo3 (OLMo 3: norms after attention and the MLP rather than before,
    q/k norms over all heads at once, three sliding-window layers (window 8, plain RoPE) to one
    full layer with linear RoPE scaling) and tiny-random-smollm3 (SmolLM3: Llama with a NoPE
    layer, from `no_rope_layers`)."""
    import mlx_lm_compat  # noqa: F401  (before mlx_lm: see its docstring)
    from mlx_lm.models import olmo3, smollm3

    common = {k: src[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    common.update({"hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": 4,
                   "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
                   "max_position_embeddings": 4096, "vocab_size": src["vocab_size"], "rms_norm_eps": 1e-6,
                   "rope_theta": 10000.0, "torch_dtype": "float32", "attention_bias": False})
    olmo = {**common, "model_type": "olmo3", "architectures": ["Olmo3ForCausalLM"], "sliding_window": 8,
            "rope_scaling": {"rope_type": "linear", "factor": 2.0}, "tie_word_embeddings": False}
    model = olmo3.Model(olmo3.ModelArgs.from_dict(olmo))
    write(out / "tiny-random-olmo3", source, olmo, redraw(model))
    smol = {**common, "model_type": "smollm3", "architectures": ["SmolLM3ForCausalLM"],
            "no_rope_layers": [1, 1, 0, 1], "tie_word_embeddings": True, "mlp_bias": False}
    model = smollm3.Model(smollm3.ModelArgs.from_dict(smol))
    write(out / "tiny-random-smollm3", source, smol, redraw(model))


def deepseek(src: dict, out: Path, source: Path) -> None:
    """tiny-random-deepseek-v3 (DeepSeek-V3 / Kimi K2, built by mlx-lm's class, weights
    redrawn): latent attention (a 32-wide latent, a 48-wide query bottleneck, 16 rotary and 32
    plain dimensions per head) with YaRN whose original context of 16 the test prompts pass
    (its mscale squared into the softmax scale), a dense first layer, then 8 experts behind
    the grouped sigmoid router (2 groups, the best kept, 2 experts per token, weights times 2.5)
    and a shared expert. -4bit is it quantized by mlx-lm (groups of 32, so the per-head latent
    matrices are too); -hf is Hugging Face's layout (`kv_b_proj` whole, experts one by one).
    tiny-random-glm4-moe-lite is GLM-4.7-Flash's variant (queries projected directly, latents
    normed with the model's epsilon, no RoPE scaling)."""
    import mlx_lm_compat  # noqa: F401  (before mlx_lm: see its docstring)
    from mlx_lm.models import deepseek_v3

    config = {k: src[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    config.update({
        "model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"], "hidden_size": HIDDEN,
        "intermediate_size": INTER, "moe_intermediate_size": 64, "num_hidden_layers": 3,
        "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "n_shared_experts": 1,
        "n_routed_experts": 8, "routed_scaling_factor": 2.5, "kv_lora_rank": 32, "q_lora_rank": 48,
        "qk_rope_head_dim": 16, "v_head_dim": 32, "qk_nope_head_dim": 32, "topk_method": "noaux_tc",
        "scoring_func": "sigmoid", "norm_topk_prob": True, "n_group": 2, "topk_group": 1,
        "num_experts_per_tok": 2, "moe_layer_freq": 1, "first_k_dense_replace": 1,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
        "attention_bias": False, "tie_word_embeddings": False, "vocab_size": src["vocab_size"],
        "torch_dtype": "float32",
    })
    model = deepseek_v3.Model(deepseek_v3.ModelArgs.from_dict(config))
    w = redraw(model)
    write(out / "tiny-random-deepseek-v3", source, config, w)

    hf = {}
    for name, t in per_expert(w).items():
        if name.endswith("embed_q.weight") and "unembed" not in name:
            wv = w[name.replace("embed_q", "unembed_out")]
            kv_b = mx.concatenate([t.swapaxes(-1, -2), wv], axis=1)
            hf[name.replace("embed_q", "kv_b_proj")] = kv_b.reshape(-1, kv_b.shape[-1])
        elif not name.endswith("unembed_out.weight"):
            hf[name] = t
    write(out / "tiny-random-deepseek-v3-hf", source, config, hf)

    write_quantized(model, config, out / "tiny-random-deepseek-v3", out / "tiny-random-deepseek-v3-4bit",
                    group_size=32, bits=4)

    # GLM-4.7-Flash: the same layers, queries projected directly, latents normed with the
    # model's own epsilon, plain RoPE, a router guarded against a zero sum.
    from mlx_lm.models import glm4_moe_lite

    lite = {**config, "model_type": "glm4_moe_lite", "architectures": ["Glm4MoeLiteForCausalLM"],
            "q_lora_rank": None, "rms_norm_eps": 1e-2, "rope_scaling": None}
    model = glm4_moe_lite.Model(glm4_moe_lite.ModelArgs.from_dict(lite))
    write(out / "tiny-random-glm4-moe-lite", source, lite, redraw(model))


def lfm2(src: dict, out: Path, source: Path) -> None:
    """tiny-random-lfm2 (LFM2, built by mlx-lm's class, weights redrawn): gated short
    convolutions (kernel 3, with biases) and one attention layer with q/k norms, the MLP width
    derived from `block_*` as LFM2 does; -hf is it with Hugging Face's convolution weights
    ([hidden, 1, kernel])."""
    import mlx_lm_compat  # noqa: F401  (before mlx_lm: see its docstring)
    from mlx_lm.models import lfm2 as lfm2_model

    config = {k: src[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    config.update({
        "model_type": "lfm2", "architectures": ["Lfm2ForCausalLM"], "vocab_size": src["vocab_size"],
        "hidden_size": HIDDEN, "num_hidden_layers": 4, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "max_position_embeddings": 4096, "norm_eps": 1e-5,
        "conv_bias": True, "conv_L_cache": 3, "block_dim": HIDDEN, "block_ff_dim": INTER,
        "block_multiple_of": 32, "block_ffn_dim_multiplier": 1.5, "block_auto_adjust_ff_dim": True,
        "rope_theta": 1000000.0, "layer_types": ["conv", "conv", "full_attention", "conv"],
        "tie_word_embeddings": True, "torch_dtype": "float32",
    })
    model = lfm2_model.Model(lfm2_model.ModelArgs.from_dict(config))
    w = redraw(model)
    write(out / "tiny-random-lfm2", source, config, w)
    hf = {k: (v.swapaxes(1, 2) if k.endswith("conv.weight") else v) for k, v in w.items()}
    write(out / "tiny-random-lfm2-hf", source, config, hf)


def hybrids(src: dict, out: Path, source: Path) -> None:
    """The Gated DeltaNet hybrids, built by mlx-lm's own classes with their weights redrawn:
    tiny-random-qwen3-next (Qwen3-Next: fused `in_proj_qkvz`/`in_proj_ba`, MoE with a gated
    shared expert, three DeltaNet layers to one attention layer, tied embeddings);
    tiny-random-qwen3.5 (dense, inside Qwen3.5's vision-language wrapper as mlx-lm saves it:
    `text_config`, `language_model.*`, DeltaNet and attention alternating, an untied head);
    tiny-random-qwen3.5-moe, its MoE sibling, and -4bit (quantized by mlx-lm, routers at 8
    bits by its predicate) and -hf (Hugging Face's layout: `model.language_model.*`, convolution
    weights [channels, 1, kernel], zero-centred norms, fused `experts.gate_up_proj`, and a
    stand-in vision tower and MTP head that loaders must leave out)."""
    import mlx_lm_compat  # noqa: F401  (before mlx_lm: see its docstring)
    from mlx_lm.models import qwen3_5, qwen3_5_moe, qwen3_next

    tokens = {k: src[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25,
            "mrope_section": [2, 1, 1]}

    next_config = {**tokens, **HYBRID, **HYBRID_MOE, "model_type": "qwen3_next",
                   "architectures": ["Qwen3NextForCausalLM"], "rope_theta": 10000.0,
                   "partial_rotary_factor": 0.25, "full_attention_interval": 4, "rms_norm_eps": 1e-6,
                   "tie_word_embeddings": True, "vocab_size": src["vocab_size"], "torch_dtype": "float32"}
    model = qwen3_next.Model(qwen3_next.ModelArgs.from_dict(next_config))
    write(out / "tiny-random-qwen3-next", source, next_config, redraw(model))

    def wrapped(kind: str, text: dict) -> dict:
        return {**tokens, "model_type": kind, "architectures": ["Qwen3_5ForConditionalGeneration"],
                "tie_word_embeddings": False, "torch_dtype": "float32",
                "text_config": {**tokens, **HYBRID, **text, "model_type": f"{kind}_text", "rms_norm_eps": 1e-6,
                                "full_attention_interval": 2, "tie_word_embeddings": False,
                                "vocab_size": src["vocab_size"], "rope_parameters": rope}}

    dense_config = wrapped("qwen3_5", {})
    model = qwen3_5.Model(qwen3_5.ModelArgs.from_dict(dense_config))
    write(out / "tiny-random-qwen3.5", source, dense_config, redraw(model))

    moe_config = wrapped("qwen3_5_moe", HYBRID_MOE)
    model = qwen3_5_moe.Model(qwen3_5_moe.ModelArgs.from_dict(moe_config))
    w = redraw(model)
    write(out / "tiny-random-qwen3.5-moe", source, moe_config, w)

    hf = {}
    for key, t in w.items():
        name = key.replace("language_model.model.", "model.language_model.").replace("language_model.lm_head", "lm_head")
        if "conv1d" in name:
            t = t.swapaxes(1, 2)
        elif any(name.endswith(n) for n in CENTRED_NORMS):
            t = t - 1.0
        name, t = fused_experts(w, key, name, t, "switch_mlp", "experts.gate_up_proj", "experts.down_proj")
        if name is not None:
            hf[name] = t
    hf["model.visual.patch_embed.proj.weight"] = mx.zeros((8, 3, 2, 2))
    hf["mtp.fc.weight"] = mx.zeros((HIDDEN, 2 * HIDDEN))
    write(out / "tiny-random-qwen3.5-moe-hf", source, moe_config, hf)

    write_quantized(model, moe_config, out / "tiny-random-qwen3.5-moe", out / "tiny-random-qwen3.5-moe-4bit",
                    group_size=64, bits=4, quant_predicate=model.quant_predicate)


def gemma4(src: dict, out: Path, source: Path) -> None:
    """Gemma 4, built by mlx-lm's own classes with their weights redrawn (layer scalars and
    per-expert scales near 1): tiny-random-gemma4 (`gemma4_text`: two sliding layers (window 8,
    plain RoPE) to one global layer with twice the head size and proportional partial RoPE,
    the last two layers sharing the keys and values of the last earlier layer of their kind
    with double-wide MLPs, per-layer input embeddings, soft-capped logits, tied embeddings);
    tiny-random-gemma4-moe (inside the `gemma4` wrapper as mlx-lm saves it: global layers whose
    values are their keys' projection with their own key-value heads, a dense MLP and 4
    experts side by side, one KV-shared layer), -4bit (quantized by mlx-lm, routers at 8 bits
    by its predicate) and -hf (Hugging Face's layout: `model.language_model.*`, fused
    `experts.gate_up_proj`, the shared layer's unused key/value projections, rotary tables and
    stand-in vision and audio towers that loaders must leave out)."""
    import mlx_lm_compat  # noqa: F401  (before mlx_lm: see its docstring)
    from mlx.utils import tree_unflatten
    from mlx_lm.models import gemma4 as gemma4_model
    from mlx_lm.models import gemma4_text

    def near_one(model, w: dict[str, mx.array]) -> dict[str, mx.array]:
        for name, t in w.items():
            if name.endswith(("layer_scalar", "per_expert_scale")):
                w[name] = mx.random.uniform(0.5, 1.5, t.shape)
            elif name.endswith("embed_tokens.weight"):
                # Smaller than `redraw`'s, so that tied logits stay below the soft cap.
                w[name] = mx.random.normal(t.shape) * 0.05
        model.update(tree_unflatten(list(w.items())))
        return w

    tokens = {k: src[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    rope = {"full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0, "rope_type": "proportional"},
            "sliding_attention": {"partial_rotary_factor": 1.0, "rope_theta": 10000.0, "rope_type": "default"}}
    text = {**tokens, "model_type": "gemma4_text", "architectures": ["Gemma4ForCausalLM"], "hidden_size": HIDDEN,
            "intermediate_size": INTER, "num_hidden_layers": 6, "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "global_head_dim": 2 * HEAD_DIM,
            "num_kv_shared_layers": 2, "hidden_size_per_layer_input": 8,
            "vocab_size": src["vocab_size"], "vocab_size_per_layer_input": src["vocab_size"],
            "sliding_window": 8, "sliding_window_pattern": 3, "final_logit_softcapping": 30.0,
            "use_double_wide_mlp": True, "rope_parameters": rope, "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "torch_dtype": "float32"}
    model = gemma4_text.Model(gemma4_text.ModelArgs.from_dict(text))
    write(out / "tiny-random-gemma4", source, text, near_one(model, redraw(model)))

    moe_text = {**text, "num_hidden_layers": 4, "sliding_window_pattern": 2, "num_kv_shared_layers": 1,
                "layer_types": ["sliding_attention", "full_attention"] * 2,
                "hidden_size_per_layer_input": 0, "attention_k_eq_v": True, "num_global_key_value_heads": 1,
                "enable_moe_block": True, "num_experts": 4, "top_k_experts": 2, "moe_intermediate_size": 64,
                "use_double_wide_mlp": False}
    del moe_text["architectures"]
    config = {**tokens, "model_type": "gemma4", "architectures": ["Gemma4ForConditionalGeneration"],
              "vocab_size": src["vocab_size"], "torch_dtype": "float32", "text_config": moe_text}
    model = gemma4_model.Model(gemma4_model.ModelArgs.from_dict(config))
    w = near_one(model, redraw(model))
    write(out / "tiny-random-gemma4-moe", source, config, w)

    hf = {}
    for key, t in w.items():
        name = key.replace("language_model.model.", "model.language_model.")
        name, t = fused_experts(w, key, name, t, "switch_glu", "gate_up_proj", "down_proj")
        if name is not None:
            hf[name] = t
    shared = "model.language_model.layers.3.self_attn"
    hf[f"{shared}.k_proj.weight"] = mx.zeros((2 * HEAD_DIM, HIDDEN))
    hf[f"{shared}.k_norm.weight"] = mx.zeros((2 * HEAD_DIM,))
    hf["model.language_model.layers.0.self_attn.rotary_emb.inv_freq"] = mx.zeros((HEAD_DIM // 2,))
    hf["model.vision_tower.patch_embedder.weight"] = mx.zeros((8, 3))
    hf["model.embed_vision.embedding_projection.weight"] = mx.zeros((HIDDEN, 8))
    hf["model.audio_tower.conv.weight"] = mx.zeros((8, 3))
    write(out / "tiny-random-gemma4-moe-hf", source, config, hf)

    write_quantized(model, config, out / "tiny-random-gemma4-moe", out / "tiny-random-gemma4-moe-4bit",
                    group_size=64, bits=4, quant_predicate=model.quant_predicate)


def nemotron_h(src: dict, out: Path, source: Path) -> None:
    """Nemotron-H, built by mlx-lm's own class with its weights redrawn (step-size biases and
    decays as Mamba draws them): tiny-random-nemotron-h has every block kind, `M*-ME` (Mamba-2
    with 8 heads in 2 groups, a 16-wide state and a biased kernel-4 convolution; attention
    without positions; a relu² MLP; 8 relu² experts in 2 groups behind the sigmoid router,
    inside a 64-wide latent space, with a shared expert), the step size bounded by
    `time_step_limit: [0.0, Infinity]` written as Python writes it; -4bit is it quantized by
    mlx-lm; -hf is Hugging Face's layout (convolutions [channels, 1, kernel], experts one by
    one, an MTP head to leave out)."""
    import mlx_lm_compat  # noqa: F401  (before mlx_lm: see its docstring)
    from mlx.utils import tree_unflatten
    from mlx_lm.models import nemotron_h as nemotron

    config = {k: src[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    config.update({
        "model_type": "nemotron_h", "architectures": ["NemotronHForCausalLM"], "vocab_size": src["vocab_size"],
        "hidden_size": HIDDEN, "intermediate_size": INTER, "max_position_embeddings": 4096,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
        "attention_bias": False, "mamba_num_heads": 8, "mamba_head_dim": 16, "mamba_proj_bias": False,
        "ssm_state_size": 16, "conv_kernel": 4, "n_groups": 2, "mlp_bias": False, "layer_norm_epsilon": 1e-5,
        "use_bias": False, "use_conv_bias": True, "hybrid_override_pattern": "M*-ME",
        "moe_intermediate_size": 64, "moe_shared_expert_intermediate_size": 96, "moe_latent_size": 64,
        "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
        "norm_topk_prob": True, "routed_scaling_factor": 2.5, "time_step_limit": [0.0, float("inf")],
        "tie_word_embeddings": False, "torch_dtype": "float32",
    })
    model = nemotron.Model(nemotron.ModelArgs.from_dict(config))
    w = redraw(model)
    for name, t in w.items():
        if name.endswith("dt_bias"):
            # softplus⁻¹ of steps between 0.001 and 0.1, as Mamba initialises them.
            dt = mx.exp(mx.random.uniform(math.log(0.001), math.log(0.1), t.shape))
            w[name] = dt + mx.log(-mx.expm1(-dt))
        elif name.endswith(".D"):
            w[name] = mx.random.uniform(0.5, 1.5, t.shape)
    model.update(tree_unflatten(list(w.items())))
    write(out / "tiny-random-nemotron-h", source, config, w)

    hf = {}
    for name, t in w.items():
        if "conv1d.weight" in name:
            t = t.swapaxes(1, 2)
        if ".switch_mlp.fc" in name:
            proj = "up_proj" if ".fc1." in name else "down_proj"
            for e in range(t.shape[0]):
                hf[name.replace(f"switch_mlp.{'fc1' if proj == 'up_proj' else 'fc2'}", f"experts.{e}.{proj}")] = t[e]
            continue
        hf[name] = t
    hf["mtp.layers.0.norm.weight"] = mx.ones((HIDDEN,))
    write(out / "tiny-random-nemotron-h-hf", source, config, hf)

    write_quantized(model, config, out / "tiny-random-nemotron-h", out / "tiny-random-nemotron-h-4bit",
                    group_size=32, bits=4)


def fused_experts(w: dict, key: str, name: str, t: mx.array, stacked: str, gate_up: str, down: str):
    """Hugging Face's fused experts from mlx-lm's stacked ones, for the tensor `key` of `w` (named
    `name` in the new layout): `{stacked}.gate_proj` with its `up_proj` joined along the rows as
    `gate_up`, `{stacked}.down_proj` as `down`; (None, None) for `up_proj`, which the gate took."""
    if f".{stacked}.gate_proj." in name:
        up = w[key.replace("gate_proj", "up_proj")]
        return name.replace(f"{stacked}.gate_proj.weight", gate_up), mx.concatenate([t, up], axis=-2)
    if f".{stacked}.up_proj." in name:
        return None, None
    if f".{stacked}.down_proj." in name:
        return name.replace(f"{stacked}.down_proj.weight", down), t
    return name, t


def write_quantized(model, config: dict, src: Path, dst: Path, **options) -> None:
    """`model` quantized by mlx-lm's own `quantize_model` (`options`: group_size, bits, mode,
    quant_predicate) and saved as mlx-lm saves it, with the other files of `src` (tokenizer,
    generation config). Call after importing mlx_lm_compat."""
    from mlx_lm.utils import quantize_model, save_config, save_model

    model, quantized = quantize_model(model, dict(config), **options)
    dst.mkdir(parents=True, exist_ok=True)
    save_model(dst, model)
    save_config(quantized, config_path=dst / "config.json")
    for f in src.iterdir():
        if f.name != "config.json" and not f.name.startswith("model"):
            shutil.copy(f, dst / f.name)
    print(f"wrote {dst}")


def write(out: Path, source: Path, config: dict, weights: dict[str, mx.array]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, out / name)
    # Random weights have no recommended sampling: keep only the token ids.
    gen_path = out / "generation_config.json"
    gen = json.loads(gen_path.read_text())
    gen = {k: v for k, v in gen.items() if k.endswith("token_id") or k == "do_sample"}
    gen_path.write_text(json.dumps(gen, indent=2) + "\n")
    if config["model_type"] == "qwen3":
        tc_path = out / "tokenizer_config.json"
        tc = json.loads(tc_path.read_text())
        tc["chat_template"] = QWEN3_STYLE_TEMPLATE
        tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="a real model folder to take the tokenizer from")
    ap.add_argument("out", type=Path, help="folder to write the tiny-random-* folders into")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    src = json.loads((args.source / "config.json").read_text())

    mx.random.seed(args.seed)
    llama = random_weights("llama", src["vocab_size"])
    for arch in ("llama", "qwen2", "qwen3"):
        weights = llama if arch == "llama" else random_weights(arch, src["vocab_size"])
        write(args.out / f"tiny-random-{arch}", args.source, base_config(src, arch), weights)

    gemma = gemma3_weights(src["vocab_size"])
    write(args.out / "tiny-random-gemma3", args.source, gemma3_config(src), gemma)
    q = {"group_size": 32, "bits": 4, "mode": "affine"}
    config = {**gemma3_config(src), "quantization": q, "quantization_config": dict(q)}
    write(args.out / "tiny-random-gemma3-4bit", args.source, config, quantize(gemma, q, {}))
    text = gemma3_config(src)
    wrapper = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "vocab_size": text.pop("vocab_size"),
        "eos_token_id": text["eos_token_id"],
        "bos_token_id": text["bos_token_id"],
        "pad_token_id": text["pad_token_id"],
        "torch_dtype": "float32",
        "text_config": text,
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 16},
    }
    wrapped = {f"language_model.{k}": v for k, v in gemma.items()}
    wrapped["vision_tower.vision_model.embeddings.patch_embedding.weight"] = mx.zeros((16, 3, 2, 2))
    wrapped["multi_modal_projector.mm_input_projection_weight"] = mx.zeros((16, HIDDEN))
    write(args.out / "tiny-random-gemma3-vlm", args.source, wrapper, wrapped)

    # New models draw their random weights after the older ones, which stay as they were.
    moe = moe_weights(src["vocab_size"])
    write(args.out / "tiny-random-qwen3-moe", args.source, moe_config(src), moe)
    write(args.out / "tiny-random-qwen3-moe-hf", args.source, moe_config(src), per_expert(moe))
    q = {"group_size": 32, "bits": 4, "mode": "affine"}
    config = {**moe_config(src), "quantization": q, "quantization_config": dict(q)}
    write(args.out / "tiny-random-qwen3-moe-4bit", args.source, config, quantize(moe, q, {}))

    granite = base_config(src, "llama")
    granite.update(
        {
            "architectures": ["GraniteForCausalLM"],
            "model_type": "granite",
            "rope_scaling": None,
            "embedding_multiplier": 2.0,
            "attention_multiplier": 0.3,
            "residual_multiplier": 1.7,
            "logits_scaling": 8.0,
        }
    )
    write(args.out / "tiny-random-granite", args.source, granite, random_weights("llama", src["vocab_size"]))

    phi3 = base_config(src, "llama")
    rotated = int(HEAD_DIM * 0.75)
    phi3.update(
        {
            "architectures": ["Phi3ForCausalLM"],
            "model_type": "phi3",
            "partial_rotary_factor": 0.75,
            "max_position_embeddings": 8192,
            "original_max_position_embeddings": 2048,
            "rope_scaling": {
                "type": "longrope",
                "long_factor": [1.0 + 0.5 * i for i in range(rotated // 2)],
                "short_factor": [1.0] * (rotated // 2),
            },
        }
    )
    del phi3["head_dim"]
    w = random_weights("llama", src["vocab_size"])
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        # Sharper attention than the other tiny models', so that positions (and so the RoPE
        # variant) decide the output.
        q, k, v = (w.pop(f"{p}.self_attn.{n}_proj.weight") for n in "qkv")
        w[f"{p}.self_attn.qkv_proj.weight"] = mx.concatenate([q * 4, k * 4, v])
        w[f"{p}.mlp.gate_up_proj.weight"] = mx.concatenate([w.pop(f"{p}.mlp.{n}_proj.weight") for n in ("gate", "up")])
    write(args.out / "tiny-random-phi3", args.source, phi3, w)

    ministral = base_config(src, "llama")
    ministral.update(
        {
            "architectures": ["Ministral3ForCausalLM"],
            "model_type": "ministral3",
            "rope_scaling": None,
            "rope_parameters": {
                "rope_type": "yarn",
                "type": "yarn",
                "rope_theta": 1000000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 16,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "mscale": 1.0,
                "mscale_all_dim": 0.5,
                "llama_4_scaling_beta": 0.1,
            },
            "layer_types": ["sliding_attention", "full_attention"],
            "sliding_window": 8,
            "tie_word_embeddings": False,
        }
    )
    del ministral["rope_theta"]
    w = random_weights("llama", src["vocab_size"])
    w["lm_head.weight"] = mx.random.normal((src["vocab_size"], HIDDEN)) * 0.5
    write(args.out / "tiny-random-ministral3", args.source, ministral, w)
    wrapper = {
        "architectures": ["Mistral3ForConditionalGeneration"],
        "model_type": "mistral3",
        "text_config": ministral,
        "vision_config": {"model_type": "pixtral", "hidden_size": 16},
        "torch_dtype": "float32",
    }
    wrapped = {k.replace("model.", "model.language_model.", 1): v for k, v in w.items()}
    wrapped["model.vision_tower.patch_conv.weight"] = mx.zeros((16, 3, 2, 2))
    wrapped["model.multi_modal_projector.linear_1.weight"] = mx.zeros((16, HIDDEN))
    write(args.out / "tiny-random-mistral3-vlm", args.source, wrapper, wrapped)

    glm = base_config(src, "qwen3")
    glm.update(
        {
            "architectures": ["Glm4MoeForCausalLM"],
            "model_type": "glm4_moe",
            "attention_bias": True,
            "use_qk_norm": True,
            "partial_rotary_factor": 0.5,
            "n_routed_experts": 8,
            "num_experts_per_tok": 2,
            "n_group": 4,
            "topk_group": 2,
            "n_shared_experts": 1,
            "routed_scaling_factor": 2.5,
            "first_k_dense_replace": 1,
            "moe_intermediate_size": 64,
            "norm_topk_prob": True,
            "scoring_func": "sigmoid",
            "topk_method": "noaux_tc",
            "tie_word_embeddings": False,
        }
    )
    w = random_weights("qwen2", src["vocab_size"])  # q/k/v biases
    w["lm_head.weight"] = mx.random.normal((src["vocab_size"], HIDDEN)) * 0.5
    e, inter = 8, 64
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        w[f"{p}.self_attn.q_norm.weight"] = 1.0 + mx.random.normal((HEAD_DIM,)) * 0.1
        w[f"{p}.self_attn.k_norm.weight"] = 1.0 + mx.random.normal((HEAD_DIM,)) * 0.1
    p = "model.layers.1.mlp"
    for name in ("gate_proj", "up_proj", "down_proj"):
        del w[f"{p}.{name}.weight"]
    w[f"{p}.gate.weight"] = mx.random.normal((e, HIDDEN)) * 0.5
    w[f"{p}.gate.e_score_correction_bias"] = mx.random.normal((e,)) * 0.5
    w[f"{p}.switch_mlp.gate_proj.weight"] = mx.random.normal((e, inter, HIDDEN)) * 0.1
    w[f"{p}.switch_mlp.up_proj.weight"] = mx.random.normal((e, inter, HIDDEN)) * 0.1
    w[f"{p}.switch_mlp.down_proj.weight"] = mx.random.normal((e, HIDDEN, inter)) * 0.1
    w[f"{p}.shared_experts.gate_proj.weight"] = mx.random.normal((inter, HIDDEN)) * 0.1
    w[f"{p}.shared_experts.up_proj.weight"] = mx.random.normal((inter, HIDDEN)) * 0.1
    w[f"{p}.shared_experts.down_proj.weight"] = mx.random.normal((HIDDEN, inter)) * 0.1
    write(args.out / "tiny-random-glm4-moe", args.source, glm, w)
    q = {"group_size": 32, "bits": 4, "mode": "affine"}
    overrides = {f"{p}.gate": False}
    config = {**glm, "quantization": {**q, **overrides}, "quantization_config": {**q, **overrides}}
    write(args.out / "tiny-random-glm4-moe-4bit", args.source, config, quantize(w, q, overrides))

    variants = {
        "2bit-g32": ({"group_size": 32, "bits": 2}, {}),
        "3bit-g64": ({"group_size": 64, "bits": 3}, {}),
        "6bit-g128": ({"group_size": 128, "bits": 6}, {}),
        "8bit-g64": ({"group_size": 64, "bits": 8}, {}),
        # mlx-lm's floating-point modes (MLX 0.29+): one byte-sized scale per group, no biases.
        "mxfp4": ({"group_size": 32, "bits": 4, "mode": "mxfp4"}, {}),
        "mxfp8": ({"group_size": 32, "bits": 8, "mode": "mxfp8"}, {}),
        "nvfp4": ({"group_size": 16, "bits": 4, "mode": "nvfp4"}, {}),
        "mixed": (
            {"group_size": 64, "bits": 4},
            {
                "model.embed_tokens": {"group_size": 32, "bits": 8},
                "model.layers.0.mlp.down_proj": {"group_size": 128, "bits": 6},
                "model.layers.1.self_attn.o_proj": False,
            },
        ),
    }
    for name, (default, overrides) in variants.items():
        config = base_config(src, "llama")
        q = {"mode": "affine", **default, **overrides}
        config["quantization"] = q
        config["quantization_config"] = dict(q)
        write(args.out / f"tiny-random-llama-{name}", args.source, config, quantize(llama, default, overrides))

    # Drawn after every model above, so that their weights stay as they were.
    gpt_oss(src, args.out, args.source)
    converted_mxfp4(args.out)
    # No random draws: tiny-random-ministral3's weights in Mistral's FP8 layout.
    fp8_ministral(args.out, args.source)
    # No random draws: tiny-random-llama with a context long enough for agent clients' prompts.
    long = {**base_config(src, "llama"), "max_position_embeddings": 131072}
    write(args.out / "tiny-random-llama-long", args.source, long, llama)
    scripted_llama(src, long, llama, args.out, args.source)
    # Their own seed, so that adding them changed no model above.
    mx.random.seed(args.seed + 35)
    hybrids(src, args.out, args.source)
    mx.random.seed(args.seed + 36)
    attention_families(src, args.out, args.source)
    mx.random.seed(args.seed + 37)
    deepseek(src, args.out, args.source)
    mx.random.seed(args.seed + 38)
    lfm2(src, args.out, args.source)
    mx.random.seed(args.seed + 39)
    gemma4(src, args.out, args.source)
    mx.random.seed(args.seed + 40)
    nemotron_h(src, args.out, args.source)


if __name__ == "__main__":
    main()
