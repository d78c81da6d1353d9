#!/usr/bin/env python3
"""Write a tiny random-weights BERT sentence-embedding model folder for fast tests.

The folder is laid out as sentence-transformers saves a BERT model (Hugging Face BertModel
config and tensor names, a WordPiece tokenizer.json, modules.json with Transformer -> mean
Pooling -> Normalize), so the embeddings path is exercised on the real file formats while the
network is small enough to load and run in milliseconds. The vectors mean nothing by design:
tests compare them against tools/embedding_reference.py, never judge their quality.

  make_tiny_embedder.py <out-dir> [--seed N] [--decoder-tokenizer-from <model-dir>]

writes <out-dir>/tiny-random-bert (float32). With --decoder-tokenizer-from it also writes
<out-dir>/tiny-random-qwen3-embedding: a 2-layer Qwen3 decoder laid out as Qwen3-Embedding is
(bare `Qwen3Model` tensor names, last-token pooling, Normalize, the tokenizer appending
`<|endoftext|>`), with the byte-level BPE tokenizer of the given model folder, and
<out-dir>/tiny-random-embeddinggemma: a 4-layer Gemma 3 laid out as EmbeddingGemma is
(bidirectional, mean pooling, two Dense modules, Normalize). The output is the same for the same
seed.
"""

from __future__ import annotations

import argparse
import json
import string
from pathlib import Path

import mlx.core as mx
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

NAME = "tiny-random-bert"
HIDDEN, INTER, LAYERS, HEADS, MAX_POS, TYPE_VOCAB = 64, 128, 2, 4, 128, 2
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] must be id 0 (pad_token_id)
WORDS = """
the a an and or but not no yes of to in on at by for with from as is are was were be been
it this that these those he she they we you i me my your his her their our its who what when
where why how which there here all some any many more most one two three four five six seven
eight nine ten first last new old good bad big small long short high low great little same
other hello world quick brown fox jump jumps over lazy dog cat cats sat mat sun sky blue red
green day night time year people man woman child house city country water fire tree
book word text model data test server token embed vector search query answer question
language learning machine computer make made go went see saw know think say said get use
run read write open close start stop like love want need can will would could should
""".split()
# Common suffixes, then every lowercase letter and digit as a continuation piece, so that any
# ASCII word splits into known pieces and [UNK] only comes from characters outside ASCII.
SUFFIXES = "s es ed ing er ers est ly ion ions ment ness able al ful less ize ise y en".split()


def vocabulary() -> list[str]:
    pieces = [*SPECIALS, *string.punctuation, *string.digits, *string.ascii_lowercase, *WORDS]
    pieces += [f"##{s}" for s in SUFFIXES] + [f"##{c}" for c in string.ascii_lowercase + string.digits]
    return list(dict.fromkeys(pieces))  # drop repeats ("a", "i", "##s"), keep the first id


def build_tokenizer(vocab: list[str]) -> Tokenizer:
    ids = {piece: i for i, piece in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    # As bert-base-uncased: lowercase, and (strip_accents unset) accents stripped with it;
    # CJK characters split one per token.
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(SPECIALS)
    return tok


def config(vocab_size: int) -> dict:
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": INTER,
        "max_position_embeddings": MAX_POS,
        "type_vocab_size": TYPE_VOCAB,
        "vocab_size": vocab_size,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "classifier_dropout": None,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def random_weights(vocab_size: int, max_pos: int = MAX_POS, type_vocab: int = TYPE_VOCAB) -> dict[str, mx.array]:
    def normal(*shape: int, std: float = 0.05) -> mx.array:
        return mx.random.normal(shape) * std

    def linear(name: str, out_dim: int, in_dim: int, std: float = 0.05) -> dict[str, mx.array]:
        # PyTorch nn.Linear layout: weight [out, in].
        return {f"{name}.weight": normal(out_dim, in_dim, std=std), f"{name}.bias": normal(out_dim, std=0.02)}

    def layer_norm(name: str) -> dict[str, mx.array]:
        return {f"{name}.weight": 1.0 + normal(HIDDEN), f"{name}.bias": normal(HIDDEN, std=0.02)}

    w = {
        "embeddings.word_embeddings.weight": normal(vocab_size, HIDDEN, std=0.1),
        "embeddings.position_embeddings.weight": normal(max_pos, HIDDEN, std=0.1),
        "embeddings.token_type_embeddings.weight": normal(type_vocab, HIDDEN, std=0.1),
        **layer_norm("embeddings.LayerNorm"),
    }
    for i in range(LAYERS):
        p = f"encoder.layer.{i}"
        # Larger query/key weights so attention is far from uniform and masking or position
        # mistakes show in the output.
        w.update(linear(f"{p}.attention.self.query", HIDDEN, HIDDEN, std=0.15))
        w.update(linear(f"{p}.attention.self.key", HIDDEN, HIDDEN, std=0.15))
        w.update(linear(f"{p}.attention.self.value", HIDDEN, HIDDEN))
        w.update(linear(f"{p}.attention.output.dense", HIDDEN, HIDDEN))
        w.update(layer_norm(f"{p}.attention.output.LayerNorm"))
        w.update(linear(f"{p}.intermediate.dense", INTER, HIDDEN))
        w.update(linear(f"{p}.output.dense", HIDDEN, INTER))
        w.update(layer_norm(f"{p}.output.LayerNorm"))
    w.update(linear("pooler.dense", HIDDEN, HIDDEN))
    return w


def write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help=f"folder to write {NAME}/ into")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decoder-tokenizer-from", type=Path, help="a model folder with a byte-level BPE tokenizer.json")
    args = ap.parse_args()
    out = args.out / NAME
    out.mkdir(parents=True, exist_ok=True)

    vocab = vocabulary()
    build_tokenizer(vocab).save(str(out / "tokenizer.json"))
    (out / "vocab.txt").write_text("".join(f"{piece}\n" for piece in vocab))
    write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": True,
            "tokenize_chinese_chars": True,
            "strip_accents": None,
            "model_max_length": MAX_POS,
            "clean_up_tokenization_spaces": True,
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "mask_token": "[MASK]",
        },
    )
    write_json(
        out / "special_tokens_map.json",
        {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"},
    )

    write_json(out / "config.json", config(len(vocab)))
    mx.random.seed(args.seed)
    mx.save_safetensors(str(out / "model.safetensors"), random_weights(len(vocab)), metadata={"format": "pt"})

    # sentence-transformers' pipeline: the Transformer module at the folder root, then mean
    # pooling over non-padding tokens, then L2 normalisation.
    write_json(
        out / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    write_json(out / "sentence_bert_config.json", {"max_seq_length": MAX_POS, "do_lower_case": False})
    write_json(
        out / "1_Pooling/config.json",
        {
            "word_embedding_dimension": HIDDEN,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    (out / "2_Normalize").mkdir(exist_ok=True)
    print(f"wrote {out} (vocab {len(vocab)})")
    if args.decoder_tokenizer_from:
        write_decoder_embedder(args.out / DECODER_NAME, args.decoder_tokenizer_from, args.seed + 1)
        write_gemma_embedder(args.out / GEMMA_NAME, args.decoder_tokenizer_from, args.seed + 2)
    write_xlm_roberta(args.out / XLMR_NAME, args.seed + 3)


XLMR_NAME = "tiny-random-xlm-roberta"
XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # XLM-R's ids: <pad> is 1


def write_xlm_roberta(out: Path, seed: int) -> None:
    """A tiny XLM-RoBERTa: BERT's layout with positions counted from pad_token_id + 1, one
    token type, and a SentencePiece-style Unigram tokenizer (`▁` word starts, `<s> … </s>`)."""
    out.mkdir(parents=True, exist_ok=True)
    pieces = [f"\u2581{w}" for w in WORDS] + list(string.ascii_lowercase + string.digits + string.punctuation) + ["\u2581"]
    pieces = list(dict.fromkeys(pieces))
    vocab = [(t, 0.0) for t in XLMR_SPECIALS] + [(p, -float(len(p) < 3) - 1.0 / len(p)) for p in pieces]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.add_special_tokens(XLMR_SPECIALS)
    tok.save(str(out / "tokenizer.json"))
    write_json(
        out / "tokenizer_config.json",
        {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": MAX_POS, "bos_token": "<s>", "eos_token": "</s>",
         "pad_token": "<pad>", "unk_token": "<unk>", "cls_token": "<s>", "sep_token": "</s>", "clean_up_tokenization_spaces": True},
    )
    c = config(len(vocab))
    c.update({"architectures": ["XLMRobertaModel"], "model_type": "xlm_roberta", "pad_token_id": 1, "bos_token_id": 0,
              "eos_token_id": 2, "max_position_embeddings": MAX_POS + 2, "type_vocab_size": 1, "layer_norm_eps": 1e-5})
    write_json(out / "config.json", c)
    mx.random.seed(seed)
    mx.save_safetensors(str(out / "model.safetensors"), random_weights(len(vocab), MAX_POS + 2, 1), metadata={"format": "pt"})
    write_json(
        out / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    write_json(out / "sentence_bert_config.json", {"max_seq_length": MAX_POS, "do_lower_case": False})
    modes = ["cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken"]
    write_json(
        out / "1_Pooling/config.json",
        {"word_embedding_dimension": HIDDEN, **{f"pooling_mode_{m}": m == "mean_tokens" for m in modes}, "include_prompt": True},
    )
    (out / "2_Normalize").mkdir(exist_ok=True)
    print(f"wrote {out} (vocab {len(vocab)})")


DECODER_NAME = "tiny-random-qwen3-embedding"
D_HIDDEN, D_INTER, D_LAYERS, D_HEADS, D_KV_HEADS, D_MAX = 64, 128, 2, 4, 2, 512


def decoder_tokenizer(out: Path, source: Path) -> tuple[int, int]:
    """`source`'s tokenizer, ending every text with <|endoftext|>: (vocabulary size, its id)."""
    tok = Tokenizer.from_file(str(source / "tokenizer.json"))
    end = "<|endoftext|>"
    end_id = tok.token_to_id(end)
    assert end_id is not None, f"{source} has no {end}"
    # As Qwen3-Embedding's tokenizer: every text ends with <|endoftext|>, whose state is pooled.
    tok.post_processor = processors.TemplateProcessing(single=f"$A {end}", pair=f"$A {end} $B:1 {end}:1", special_tokens=[(end, end_id)])
    tok.save(str(out / "tokenizer.json"))
    write_json(
        out / "tokenizer_config.json",
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": D_MAX, "pad_token": end, "eos_token": end,
         "padding_side": "right", "clean_up_tokenization_spaces": False},
    )
    return tok.get_vocab_size(), end_id


def sentence_modules(out: Path, pooling: str, dense: list[tuple[int, int]]) -> None:
    """modules.json: Transformer, Pooling (`mean` or `lasttoken`), Dense modules, Normalize."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    for i, (inp, outp) in enumerate(dense):
        path = f"{i + 2}_Dense"
        modules.append({"idx": i + 2, "name": str(i + 2), "path": path, "type": "sentence_transformers.models.Dense"})
        write_json(
            out / path / "config.json",
            {"in_features": inp, "out_features": outp, "bias": False,
             "activation_function": "torch.nn.modules.linear.Identity"},
        )
        w = mx.random.normal((outp, inp)) * (1.0 / inp**0.5)
        mx.save_safetensors(str(out / path / "model.safetensors"), {"linear.weight": w}, metadata={"format": "pt"})
    n = len(modules)
    modules.append({"idx": n, "name": str(n), "path": f"{n}_Normalize", "type": "sentence_transformers.models.Normalize"})
    (out / f"{n}_Normalize").mkdir(parents=True, exist_ok=True)
    write_json(out / "modules.json", modules)
    write_json(out / "sentence_bert_config.json", {"max_seq_length": D_MAX, "do_lower_case": False})
    modes = ["cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken"]
    write_json(
        out / "1_Pooling/config.json",
        {"word_embedding_dimension": D_HIDDEN, **{f"pooling_mode_{m}": m == pooling for m in modes}, "include_prompt": True},
    )


GEMMA_NAME = "tiny-random-embeddinggemma"


def write_gemma_embedder(out: Path, source: Path, seed: int) -> None:
    """A tiny EmbeddingGemma: Gemma 3's bare tensors (norms as offsets from 1), local layers
    with a window of 8, bidirectional attention, mean pooling, Dense 64 -> 256 -> 64."""
    out.mkdir(parents=True, exist_ok=True)
    vocab, end_id = decoder_tokenizer(out, source)
    head_dim, layers = D_HIDDEN // D_HEADS, 4
    write_json(
        out / "config.json",
        {
            "architectures": ["Gemma3TextModel"], "model_type": "gemma3_text", "hidden_size": D_HIDDEN,
            "intermediate_size": D_INTER, "num_hidden_layers": layers, "num_attention_heads": D_HEADS,
            "num_key_value_heads": D_KV_HEADS, "head_dim": head_dim, "max_position_embeddings": D_MAX,
            "vocab_size": vocab, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
            "query_pre_attn_scalar": head_dim, "sliding_window": 8, "sliding_window_pattern": 2,
            "use_bidirectional_attention": True, "hidden_activation": "gelu_pytorch_tanh",
            "pad_token_id": end_id, "eos_token_id": end_id, "torch_dtype": "float32",
        },
    )
    mx.random.seed(seed)

    def normal(*shape: int, std: float = 0.1) -> mx.array:
        return mx.random.normal(shape) * std

    w = {"embed_tokens.weight": normal(vocab, D_HIDDEN, std=0.1), "norm.weight": normal(D_HIDDEN)}
    for i in range(layers):
        p = f"layers.{i}"
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"):
            w[f"{p}.{norm}.weight"] = normal(D_HIDDEN)
        w.update(
            {
                f"{p}.self_attn.q_norm.weight": normal(head_dim),
                f"{p}.self_attn.k_norm.weight": normal(head_dim),
                f"{p}.self_attn.q_proj.weight": normal(D_HEADS * head_dim, D_HIDDEN, std=0.3),
                f"{p}.self_attn.k_proj.weight": normal(D_KV_HEADS * head_dim, D_HIDDEN, std=0.3),
                f"{p}.self_attn.v_proj.weight": normal(D_KV_HEADS * head_dim, D_HIDDEN),
                f"{p}.self_attn.o_proj.weight": normal(D_HIDDEN, D_HEADS * head_dim),
                f"{p}.mlp.gate_proj.weight": normal(D_INTER, D_HIDDEN),
                f"{p}.mlp.up_proj.weight": normal(D_INTER, D_HIDDEN),
                f"{p}.mlp.down_proj.weight": normal(D_HIDDEN, D_INTER),
            }
        )
    mx.save_safetensors(str(out / "model.safetensors"), w, metadata={"format": "pt"})
    sentence_modules(out, "mean_tokens", [(D_HIDDEN, 4 * D_HIDDEN), (4 * D_HIDDEN, D_HIDDEN)])
    print(f"wrote {out} (vocab {vocab})")


def write_decoder_embedder(out: Path, source: Path, seed: int) -> None:
    """A tiny Qwen3-Embedding: Qwen3Model's tensors, last-token pooling and Normalize."""
    out.mkdir(parents=True, exist_ok=True)
    vocab, end_id = decoder_tokenizer(out, source)
    head_dim = D_HIDDEN // D_HEADS
    write_json(
        out / "config.json",
        {
            "architectures": ["Qwen3Model"], "model_type": "qwen3", "hidden_size": D_HIDDEN,
            "intermediate_size": D_INTER, "num_hidden_layers": D_LAYERS, "num_attention_heads": D_HEADS,
            "num_key_value_heads": D_KV_HEADS, "head_dim": head_dim, "max_position_embeddings": D_MAX,
            "vocab_size": vocab, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
            "hidden_act": "silu", "attention_bias": False, "pad_token_id": end_id, "eos_token_id": end_id,
            "torch_dtype": "float32",
        },
    )
    mx.random.seed(seed)

    def normal(*shape: int, std: float = 0.1) -> mx.array:
        return mx.random.normal(shape) * std

    w = {"embed_tokens.weight": normal(vocab, D_HIDDEN, std=0.5), "norm.weight": 1.0 + normal(D_HIDDEN)}
    for i in range(D_LAYERS):
        p = f"layers.{i}"
        w.update(
            {
                f"{p}.input_layernorm.weight": 1.0 + normal(D_HIDDEN),
                f"{p}.post_attention_layernorm.weight": 1.0 + normal(D_HIDDEN),
                f"{p}.self_attn.q_proj.weight": normal(D_HEADS * head_dim, D_HIDDEN, std=0.3),
                f"{p}.self_attn.k_proj.weight": normal(D_KV_HEADS * head_dim, D_HIDDEN, std=0.3),
                f"{p}.self_attn.v_proj.weight": normal(D_KV_HEADS * head_dim, D_HIDDEN),
                f"{p}.self_attn.o_proj.weight": normal(D_HIDDEN, D_HEADS * head_dim),
                f"{p}.self_attn.q_norm.weight": 1.0 + normal(head_dim),
                f"{p}.self_attn.k_norm.weight": 1.0 + normal(head_dim),
                f"{p}.mlp.gate_proj.weight": normal(D_INTER, D_HIDDEN),
                f"{p}.mlp.up_proj.weight": normal(D_INTER, D_HIDDEN),
                f"{p}.mlp.down_proj.weight": normal(D_HIDDEN, D_INTER),
            }
        )
    mx.save_safetensors(str(out / "model.safetensors"), w, metadata={"format": "pt"})
    sentence_modules(out, "lasttoken", [])
    print(f"wrote {out} (vocab {vocab})")


if __name__ == "__main__":
    main()
