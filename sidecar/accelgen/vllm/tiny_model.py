"""A tiny Llama-shaped model for tests and local runs, made at run time (nothing downloaded).

``build_tiny_model(DIR)`` writes what vLLM needs to serve a model with random weights
(``load_format="dummy"``):

    DIR/config.json              LlamaForCausalLM, e.g. hidden 256, 2 layers, head_dim 64
    DIR/tokenizer.json           byte-level BPE trained on corpus.txt (shipped here)
    DIR/tokenizer_config.json    special tokens and a chat template, so chat works
    DIR/generation_config.json

The outputs are gibberish, but the engine does real work: real tokenization, real
forward passes whose duration grows with batch tokens and context, real KV blocks.

CLI: ``accelgen model tiny DIR [--hidden 256 --layers 2 ...]``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from accelgen.argtypes import positive_int
from accelgen.core.errors import ConfigError

CORPUS_PATH = Path(__file__).with_name("corpus.txt")

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, "<|system|>", "<|user|>", "<|assistant|>")

# Roles as special tokens so a chat prompt costs a few tokens, not dozens of bytes.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tiny_model(
    out_dir: Path,
    *,
    hidden: int = 256,
    layers: int = 2,
    head_dim: int = 64,
    num_kv_heads: int | None = None,
    intermediate: int | None = None,
    vocab_tokens: int = 2048,
    max_context_tokens: int = 8192,
    dtype: str = "float32",
) -> Path:
    """Write a tiny LlamaForCausalLM config and a trained tokenizer into ``out_dir``.

    Args:
        out_dir: Created if missing; existing files of the same names are overwritten.
        hidden: Hidden size; must be a multiple of ``head_dim``.
        layers: Number of decoder layers.
        head_dim: Attention head size (vLLM's CPU attention supports 32..512).
        num_kv_heads: KV heads (grouped-query attention); default: as many as query heads.
        intermediate: MLP width; default ``2 * hidden``.
        vocab_tokens: Target vocabulary of the BPE tokenizer; the model's vocabulary is
            the size actually reached, so every id the model samples decodes.
        max_context_tokens: ``max_position_embeddings`` and the tokenizer's max length.
        dtype: ``torch_dtype`` in the config; float32 because CPUs without AVX-512 BF16
            run bfloat16 slowly or not at all.

    Returns:
        ``out_dir``, ready for ``LLM(model=str(out_dir), load_format="dummy")``.
    """
    if hidden % head_dim:
        raise ValueError(f"hidden ({hidden}) must be a multiple of head_dim ({head_dim})")
    num_heads = hidden // head_dim
    kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    if num_heads % kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {kv_heads} KV heads")
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = _write_tokenizer(out_dir, vocab_tokens=vocab_tokens, max_len=max_context_tokens)
    config = _llama_config(
        hidden=hidden,
        layers=layers,
        head_dim=head_dim,
        num_heads=num_heads,
        num_kv_heads=kv_heads,
        intermediate=intermediate or 2 * hidden,
        vocab_size=vocab_size,
        max_context_tokens=max_context_tokens,
        dtype=dtype,
    )
    _write_json(out_dir / "config.json", config)
    _write_json(
        out_dir / "generation_config.json",
        {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]},
    )
    return out_dir


def _llama_config(
    *,
    hidden: int,
    layers: int,
    head_dim: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate: int,
    vocab_size: int,
    max_context_tokens: int,
    dtype: str,
) -> dict[str, Any]:
    """The model's ``config.json``: a LlamaForCausalLM of these sizes, special tokens as the tokenizer's."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": max_context_tokens,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "vocab_size": vocab_size,
        "bos_token_id": SPECIAL_TOKENS.index(BOS_TOKEN),
        "eos_token_id": SPECIAL_TOKENS.index(EOS_TOKEN),
        "pad_token_id": SPECIAL_TOKENS.index(PAD_TOKEN),
        "torch_dtype": dtype,
    }


def _write_tokenizer(out_dir: Path, *, vocab_tokens: int, max_len: int) -> int:
    """Train a byte-level BPE on the shipped corpus; return the vocabulary size reached."""
    # Imported here: `tokenizers` comes with vLLM/transformers, not with accelgen's core.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_tokens,
        special_tokens=list(SPECIAL_TOKENS),  # ids 0..5, in this order
        # Every byte is in the alphabet, so any text tokenizes (no unknown token).
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = CORPUS_PATH.read_text(encoding="utf-8")
    tokenizer.train_from_iterator(text.split("\n\n"), trainer=trainer)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    _write_json(
        out_dir / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS_TOKEN,
            "eos_token": EOS_TOKEN,
            "pad_token": PAD_TOKEN,
            "model_max_length": max_len,
            "add_bos_token": False,
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    vocab_size: int = tokenizer.get_vocab_size()
    return vocab_size


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``accelgen model tiny``."""
    parser.add_argument("dir", type=Path, help="output directory (created if missing)")
    parser.add_argument("--hidden", type=positive_int, default=256, help="hidden size (default 256)")
    parser.add_argument("--layers", type=positive_int, default=2, help="decoder layers (default 2)")
    parser.add_argument("--head-dim", type=positive_int, default=64, help="head size (default 64)")
    parser.add_argument("--vocab", type=positive_int, default=2048, help="BPE vocabulary target")
    parser.add_argument("--max-context", type=positive_int, default=8192, help="max context tokens (default 8192)")


def run(args: argparse.Namespace) -> int:
    """Build the model; print where it is and how to serve it."""
    if args.hidden % args.head_dim:
        raise ConfigError(f"must be a multiple of --head-dim ({args.head_dim}), got {args.hidden}", field="--hidden")
    out = build_tiny_model(
        args.dir,
        hidden=args.hidden,
        layers=args.layers,
        head_dim=args.head_dim,
        vocab_tokens=args.vocab,
        max_context_tokens=args.max_context,
    )
    print(f"tiny model in {out} (random weights: serve with --load-format dummy)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m accelgen.vllm.tiny_model DIR``."""
    parser = argparse.ArgumentParser(prog="accelgen model tiny", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
