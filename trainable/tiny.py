"""A tiny random Qwen2 and an in-process tokenizer, for tests and offline smoke runs.

No downloads, under a second: a byte-level BPE is trained on HumanEval's own code strings so
that every text encodes (no unknown tokens) and typical code takes few tokens. The model has the
real architecture (`Qwen2ForCausalLM`: RoPE, GQA, RMSNorm) at toy width.

    python -m trainable.tiny OUT_DIR      # save one, usable as `--model OUT_DIR`
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from trainable.data.splits import load_problems

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>"]


def tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    texts = [p["prompt"] + p["canonical_solution"] for p in load_problems().values()]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        clean_up_tokenization_spaces=False,
    )


def tiny_model(
    vocab_size: int,
    seed: int = 0,
    hidden: int = 48,
    layers: int = 2,
    weight_scale: float = 1.0,
    initializer_range: float = 0.3,
) -> Qwen2ForCausalLM:
    """A random Qwen2. With the usual 0.02 init a model this small is a near-uniform
    distribution that no input can move, so a soft prompt could not lower its loss; 0.3 makes
    outputs depend on inputs. `weight_scale` > 1 spreads logits further (padding bugs show)."""
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).float().eval()
    if weight_scale != 1.0:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" not in name:
                    param.mul_(weight_scale)
    return model


def save_tiny(out_dir: str | Path, seed: int = 0, weight_scale: float = 1.0) -> Path:
    """Save a tiny model + tokenizer as a normal transformers checkpoint directory."""
    out = Path(out_dir)
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer), seed=seed, weight_scale=weight_scale)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m trainable.tiny OUT_DIR")
    print(save_tiny(sys.argv[1]))
