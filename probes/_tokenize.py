"""Turn examples into causal-LM batches whose labels cover the response tokens only.

Prompt and response are tokenised separately and concatenated, so the mask boundary is exact:
prompt tokens (and padding) get label -100, response tokens (plus the end-of-sequence token) keep
their ids. With a chat template the prompt is the template's user turn plus the generation prompt;
without one it is ``input + "\\n"``.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["encode_example", "collate", "encode_plain", "batch_nll"]

IGNORE = -100


def _prompt_text(tokenizer, text: str) -> tuple[str, bool]:
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        return rendered, False  # the template already carries any BOS
    return text + "\n", True


def encode_example(tokenizer, example, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels of one example, at most ``max_length`` tokens.

    When too long, the prompt is cut from the left down to ``max(max_length - len(response),
    max_length // 2)`` tokens, then the response is cut from the right.
    """
    prompt, special = _prompt_text(tokenizer, example.input)
    prompt_ids = list(tokenizer(prompt, add_special_tokens=special)["input_ids"])
    response_ids = list(tokenizer(example.output, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        response_ids.append(int(tokenizer.eos_token_id))
    if len(prompt_ids) + len(response_ids) > max_length:
        keep_prompt = min(len(prompt_ids), max(max_length - len(response_ids), max_length // 2))
        prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt :]
        response_ids = response_ids[: max_length - keep_prompt]
    ids = prompt_ids + response_ids
    labels = [IGNORE] * len(prompt_ids) + response_ids
    return ids, labels


def encode_plain(tokenizer, text: str, max_length: int) -> tuple[list[int], list[int]]:
    """Plain language-modelling encoding: every token is a target (used for the OOD probe set)."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])[:max_length]
    return ids, list(ids)


def collate(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict:
    """Right-pad a list of ``(ids, labels)`` into ``input_ids``, ``attention_mask``, ``labels`` tensors."""
    import torch

    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), int(pad_id), dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[row, : len(labs)] = torch.tensor(labs, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def batch_nll(model, batch: dict, *, per_example: bool = False):
    """Summed next-token cross-entropy (float32) over label positions, and the number of such tokens.

    Returns ``(nll_sum, n_tokens)`` as tensors, or with ``per_example=True`` the per-row sums and
    counts. Labels are shifted here (position t predicts token t+1), so the model's own loss
    reduction (a per-micro-batch mean) is never used. When the model accepts ``logits_to_keep``
    the vocabulary projection runs only at the positions that predict a label token: for
    instruction data with short responses that is most of the LM head's cost (a 49k-word head is
    a fifth of SmolLM2-135M's forward), and the result is the same loss.
    """
    import torch
    import torch.nn.functional as F

    targets = batch["labels"][:, 1:]
    valid = targets != IGNORE
    keep = torch.zeros_like(batch["labels"], dtype=torch.bool)
    keep[:, :-1] = valid
    _, logits = logits_at(model, batch["input_ids"], batch["attention_mask"], keep, use_cache=False)
    nll = F.cross_entropy(logits.float(), targets[valid], reduction="none")
    if not per_example:
        return nll.sum(), valid.sum()
    rows = valid.nonzero()[:, 0]
    sums = torch.zeros(valid.shape[0], dtype=nll.dtype, device=nll.device).index_add_(0, rows, nll)
    return sums, valid.sum(dim=1)


def logits_at(model, input_ids, attention_mask, keep, **forward_kwargs):
    """The forward's output and its logits at the positions ``keep`` marks, as ``(n_kept, vocab)``.

    Rows come in row-major order of ``keep``. When the model takes a boolean ``logits_to_keep``
    the vocabulary projection runs only there (the LM head is a large share of a small model's
    forward); otherwise the full logits are computed and indexed, with the same result.
    """
    if _accepts_logits_to_keep(model):
        out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, **forward_kwargs)
        return out, out.logits.reshape(-1, out.logits.shape[-1])
    out = model(input_ids=input_ids, attention_mask=attention_mask, **forward_kwargs)
    return out, out.logits[keep]


_KEEP_SUPPORT: dict = {}


def _accepts_logits_to_keep(model) -> bool:
    """Whether the (peft-wrapped) model's forward takes a boolean-mask ``logits_to_keep``."""
    import inspect
    import sys

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cls = type(base)
    if cls not in _KEEP_SUPPORT:
        # boolean masks arrived with transformers' shared slice_logits_to_keep helper; a model module
        # that imports it slices with it, older ones only take an int
        module = sys.modules.get(cls.__module__)
        try:
            takes = "logits_to_keep" in inspect.signature(cls.forward).parameters
        except (TypeError, ValueError):
            takes = False
        _KEEP_SUPPORT[cls] = takes and hasattr(module, "slice_logits_to_keep")
    return _KEEP_SUPPORT[cls]
