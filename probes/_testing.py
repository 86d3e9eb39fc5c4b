"""Tiny random models and a character tokenizer for fast tests and smoke runs (no files, no hub)."""

from __future__ import annotations

import string

__all__ = ["tiny_tokenizer", "tiny_model"]

_CHARS = string.ascii_letters + string.digits + " .,;:!?'\"()[]{}-_/\n#@$%&*+=<>"


def tiny_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` (one token per character, no chat template)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for ch in _CHARS:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def tiny_model(vocab_size: int = 128, *, seed: int = 0, hidden_size: int = 32, layers: int = 2):
    """A random ``LlamaForCausalLM`` with q/k/v/o projections (float32, eval mode)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.eval()
    return model
