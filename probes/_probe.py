"""One LoRA probe with the candidate's own hyperparameters, recording the 10 dynamic features at every depth
(and, given reference examples, the cooled-down readout ``dyn_ref_loss`` / ``dyn_ref_choice``).

The loop: AdamW at a constant ``lr`` (optionally decaying linearly over the last
``lr_decay_steps`` steps, after every record depth) on LoRA adapters (peft); each step averages the true per-token
cross-entropy over the response tokens of ``grad_accum`` micro-batches of ``batch_size`` examples
(prompt tokens masked); the pre-clipping gradient norm is recorded, then the gradient is clipped
to ``grad_clip``. The LoRA gradients live in one flat buffer, so per-step statistics cost a few
kernels on a vector of LoRA size. Flatness and forgetting are measured only at record depths.

The readout looks at what the adapted model answers, which none of the 10 features does: at each
record depth a branch trains ``readout_cooldown`` more steps with the learning rate annealed to zero
(the cooldown of a warmup-stable-decay schedule, which turns a constant-lr iterate into the model a
short finished run would have), scores the reference examples' answers, and is then undone. Two
scores: the answers' per-token loss (any task), and, when the reference answers form a closed set
(2 to ``MAX_CHOICES`` distinct answers, e.g. class labels), the loss of choosing the right one among
them, which looks only at what separates the answers and not at how well their wording is learnt.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, Sequence

import numpy as np

from plan_probe.probes._config import HP_COLUMNS, ProbeConfig, anneal_lr
from plan_probe.probes._data import Example
from plan_probe.probes._dynamics import DYN_COLUMNS, READOUT_COLUMNS, StepRecorder, dynamic_features, first_bad_step, nan_features
from plan_probe.probes._tokenize import _accepts_logits_to_keep, batch_nll, collate, encode_example, encode_plain

__all__ = ["ProbeResult", "run_probe", "probe_loop", "default_ood_texts", "ROW_COLUMNS"]

log = logging.getLogger(__name__)

ROW_COLUMNS = ("depth", "seed", "status", "diverged_step", *HP_COLUMNS, *DYN_COLUMNS)
#: prompts per forward of the readout's reference scoring
_REF_CHUNK = 8
#: the most distinct reference answers scored as a closed choice (``dyn_ref_choice``); more: free-form, NaN
MAX_CHOICES = 10
_OOD_MAX_TOKENS = 64
_OOD_CHUNK = 8
_FLAT_SALT, _OOD_SALT = 0xF1A7, 0x00D5


def default_ood_texts() -> list[str]:
    """The fixed out-of-domain sentences shipped in ``probes/data/ood_sentences.json``."""
    text = resources.files("plan_probe.probes").joinpath("data/ood_sentences.json").read_text(encoding="utf-8")
    return list(json.loads(text)["sentences"])


@dataclass(frozen=True)
class ProbeResult:
    """What one probe produced.

    Attributes
    ----------
    rows : pandas.DataFrame
        One row per ``record_at`` depth: ``depth, seed, status, diverged_step``, the ``hp_*`` and
        the ``dyn_*`` columns (NaN for depths not reached because the probe diverged).
    status : str
        ``"ok"`` or ``"diverged"``.
    diverged_step : int or None
        First step with a NaN/inf loss or gradient norm (or the depth whose measurements were).
    wall_time_s : float
        Seconds for the whole probe (training and measurements).
    config : ProbeConfig
    """

    rows: Any
    status: str
    diverged_step: int | None
    wall_time_s: float
    config: ProbeConfig


def _check_examples(examples: Sequence[Example], name: str = "examples") -> None:
    if not isinstance(examples, (list, tuple)) or not examples or not all(isinstance(e, Example) for e in examples):
        raise ValueError(
            f"{name} must be a non-empty list of Example, but got {type(examples).__name__} of length "
            f"{len(examples) if hasattr(examples, '__len__') else '?'}; load them with plan_probe.probes.load_examples."
        )


def _ood_texts(ood_examples) -> list[str]:
    if ood_examples is None:
        return default_ood_texts()
    texts = [f"{e.input}\n{e.output}" if isinstance(e, Example) else str(e) for e in ood_examples]
    if not texts or not all(t.strip() for t in texts):
        raise ValueError("ood_examples must be non-empty texts or Examples, but got an empty one; pass real sentences.")
    return texts


def data_order(n_examples: int, n_needed: int, seed: int) -> np.ndarray:
    """Example indices for ``n_needed`` draws: seeded permutations of the dataset, one after another."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    chunks, total = [], 0
    while total < n_needed:
        chunks.append(rng.permutation(n_examples))
        total += n_examples
    return np.concatenate(chunks)[:n_needed]


class ProbeBatches:
    """The micro-batches of every step (seeded order), the fixed flatness batch and the OOD batches."""

    def __init__(self, examples, tokenizer, config: ProbeConfig, ood_texts: Sequence[str], reference=None) -> None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer must have a pad or eos token, but has neither; set tokenizer.pad_token.")
        per_step = config.batch_size * config.grad_accum
        # the readout's cooldown after the deepest depth trains on the batches a longer probe would see next
        # (data_order is prefix-stable, so the probe's own steps are unchanged)
        n_steps = config.steps + (config.readout_cooldown if reference is not None else 0)
        order = data_order(len(examples), n_steps * per_step, config.seed)
        cache: dict[int, tuple[list[int], list[int]]] = {}

        def enc(i: int):
            if i not in cache:
                cache[i] = encode_example(tokenizer, examples[i], config.max_length)
            return cache[i]

        self.steps: list[list[dict]] = []
        self.tokens: list[int] = []
        for s in range(n_steps):
            idx = order[s * per_step : (s + 1) * per_step]
            micro = [collate([enc(int(i)) for i in idx[a : a + config.batch_size]], pad) for a in range(0, per_step, config.batch_size)]
            self.steps.append(micro)
            self.tokens.append(int(sum(int((m["labels"][:, 1:] != -100).sum()) for m in micro)))
        # Flatness is measured on a fixed batch: the first micro-batch of step 1 (or a seeded subset of
        # its rows, weighted so the expectation is the whole batch's value).
        self.flat_batch, self.flat_scale = subsample_rows(self.steps[0][0], config.flatness_sample, config.seed)
        self.ood_batches, self.ood_scale = ood_subset(tokenizer, ood_texts, pad, config.ood_sample, config.seed)
        self.reference = None if reference is None else encode_reference(tokenizer, reference, config.max_length)


@dataclass(frozen=True)
class ReferenceSet:
    """The readout's reference examples, tokenised once for scoring.

    ``candidates[i]`` holds ``(prompt_ids, answer_ids)`` for each answer example i is scored on:
    every distinct reference answer (sorted) when they form a closed set of 2 to :data:`MAX_CHOICES`
    (``closed``), else only its own; ``truth[i]`` is the index of example i's own answer among them.
    The ids are :func:`encode_example`'s, split at the label boundary (the answer ids end with EOS).
    """

    candidates: tuple
    truth: np.ndarray
    closed: bool


def encode_reference(tokenizer, examples: Sequence[Example], max_length: int) -> ReferenceSet:
    """Tokenise ``examples`` for :func:`reference_scores` (a closed answer set when there are 2 to MAX_CHOICES answers)."""
    from plan_probe.probes._tokenize import IGNORE

    answers = sorted({ex.output for ex in examples})
    closed = 2 <= len(answers) <= MAX_CHOICES

    def split(example: Example) -> tuple[tuple[int, ...], tuple[int, ...]]:
        ids, labels = encode_example(tokenizer, example, max_length)
        n_prompt = sum(1 for lab in labels if lab == IGNORE)
        n_prompt = max(n_prompt, 1)  # position 0 predicts nothing (batch_nll's shift): it is context
        return tuple(ids[:n_prompt]), tuple(ids[n_prompt:])

    options = [answers if closed else [ex.output] for ex in examples]
    candidates = tuple(tuple(split(Example(ex.input, a)) for a in opts) for ex, opts in zip(examples, options))
    truth = np.array([opts.index(ex.output) for ex, opts in zip(examples, options)], dtype=int)
    return ReferenceSet(candidates, truth, closed)


def answer_logliks(model, reference: ReferenceSet, device) -> tuple[np.ndarray, np.ndarray]:
    r"""Per example i and candidate answer a: :math:`\ell_{ia} = \log p_\theta(a \mid x_i)` summed over
    the answer's tokens (EOS included), and the number of those tokens (eval mode, no grad).

    Each distinct prompt runs once, in left-padded batches of prompts of similar length (positions
    counted from each row's first real token); every answer then continues from its prompt's key/value
    cache, so scoring K answers costs about one prompt forward, not K. The same log-likelihoods as
    :func:`batch_nll` on whole right-padded sequences, to float rounding.
    """
    import torch

    n, k = len(reference.candidates), max(len(c) for c in reference.candidates)
    loglik, tokens = np.full((n, k), np.nan), np.zeros((n, k), dtype=int)
    prompts = sorted({prompt for options in reference.candidates for prompt, _ in options}, key=lambda p: (len(p), p))
    row_of = {prompt: r for r, prompt in enumerate(prompts)}
    answers: list[list[tuple[int, int, tuple]]] = [[] for _ in prompts]
    for i, options in enumerate(reference.candidates):
        for a, (prompt, answer) in enumerate(options):
            answers[row_of[prompt]].append((i, a, answer))
            tokens[i, a] = len(answer)
    last_only = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}  # the LM head only where it is read
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(prompts), _REF_CHUNK):
            block = prompts[start : start + _REF_CHUNK]
            ids, mask = _left_padded(block, device)
            out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                        use_cache=True, **last_only)
            first = torch.log_softmax(out.logits[:, -1].float(), dim=-1).double().cpu().numpy()
            pending = []  # (row in block, i, a, answer): answers with tokens after the first
            for r in range(len(block)):
                for i, a, answer in answers[start + r]:
                    loglik[i, a] = first[r, answer[0]] if answer else 0.0
                    if len(answer) > 1:
                        pending.append((r, i, a, answer))
            if pending:
                for (_, i, a, _), rest in zip(pending, _continuations(model, out.past_key_values, mask, pending, device)):
                    loglik[i, a] += rest
    model.train(was_training)
    return loglik, tokens


def _left_padded(sequences, device):
    """``input_ids`` (left-padded with id 0, masked) and ``attention_mask`` of token-id sequences."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.zeros((len(sequences), width), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def _continuations(model, cache, prompt_mask, pending, device) -> list[float]:
    """Log-likelihood of each pending answer's tokens after its first, continuing its prompt row's cache
    (rows repeated per answer; continuations right-padded, which a causal model never looks ahead to)."""
    import torch

    rows = torch.tensor([r for r, *_ in pending], device=device)
    cache.reorder_cache(rows)  # row r's keys and values once per answer of prompt r
    width = max(len(answer) - 1 for *_, answer in pending)
    ids = torch.zeros((len(pending), width), dtype=torch.long)
    mask = torch.zeros((len(pending), width), dtype=torch.long)
    for j, (*_, answer) in enumerate(pending):
        ids[j, : len(answer) - 1] = torch.tensor(answer[:-1], dtype=torch.long)
        mask[j, : len(answer) - 1] = 1
    ids, mask, prompt_mask = ids.to(device), mask.to(device), prompt_mask[rows]
    position_ids = prompt_mask.sum(-1, keepdim=True) + torch.arange(width, device=device)
    out = model(input_ids=ids, attention_mask=torch.cat([prompt_mask, mask], dim=1), position_ids=position_ids,
                past_key_values=cache, use_cache=True)
    logp = torch.log_softmax(out.logits.float(), dim=-1).double().cpu().numpy()
    return [float(sum(logp[j, t, tok] for t, tok in enumerate(answer[1:]))) for j, (*_, answer) in enumerate(pending)]


def reference_scores(model, reference: ReferenceSet, device) -> dict[str, float]:
    r"""The readout's two scores of ``model`` on ``reference``.

    ``dyn_ref_loss``: the pooled per-token loss of each example's own answer,
    :math:`-\sum_i \ell_{i,a_i} / \sum_i |a_i|`. ``dyn_ref_choice``: the cross-entropy of the answer
    probabilities renormalised over the closed answer set,

    .. math:: \frac1n \sum_i \Bigl[\log \sum_a e^{\ell_{ia}} - \ell_{i,a_i}\Bigr],

    :math:`\log K` for a model that cannot tell the K answers apart; NaN for free-form answers.
    """
    from scipy.special import logsumexp

    loglik, tokens = answer_logliks(model, reference, device)
    rows = np.arange(reference.truth.size)
    own, own_tokens = loglik[rows, reference.truth], tokens[rows, reference.truth]
    choice = float(np.mean(logsumexp(loglik, axis=1) - own)) if reference.closed else math.nan
    return {"dyn_ref_loss": float(-own.sum() / max(own_tokens.sum(), 1)), "dyn_ref_choice": choice}


def _label_tokens(labels) -> np.ndarray:
    """Per row: label positions that batch_nll scores (targets at positions 1.., not ignored)."""
    from plan_probe.probes._tokenize import IGNORE

    return (labels[:, 1:] != IGNORE).sum(dim=1).cpu().numpy()


def _chosen(n: int, k: int | None, seed: int, salt: int) -> np.ndarray | None:
    """A seeded subset of k of n indices (sorted), or None when k is None or >= n (use all)."""
    if k is None or k >= n:
        return None
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), salt]))
    return np.sort(rng.choice(n, size=k, replace=False))


def subsample_rows(batch: dict, k: int | None, seed: int) -> tuple[dict, float]:
    r"""A seeded subset of ``k`` rows of a collated batch and its Horvitz–Thompson weight.

    With S the chosen rows of b, T_S and T_B their and the batch's label-token counts, and L_S the
    pooled per-token loss of the sub-batch, :math:`w · L_S` with :math:`w = (b/k)(T_S/T_B)` equals
    :math:`(b/k) Σ_{i∈S} s_i / T_B`, whose expectation over S is the batch's :math:`Σ_i s_i / T_B`.
    Any loss difference taken on the same rows (flatness) inherits that expectation. Trailing
    columns that are padding in every chosen row are dropped. ``k=None`` (or k >= b) returns the
    batch itself with weight 1.0 (the exact definition).
    """
    import torch

    rows = _chosen(int(batch["input_ids"].shape[0]), k, seed, _FLAT_SALT)
    if rows is None:
        return batch, 1.0
    tokens = _label_tokens(batch["labels"])
    idx = torch.as_tensor(rows, dtype=torch.long, device=batch["input_ids"].device)
    width = int(batch["attention_mask"][idx].sum(dim=0).nonzero().max()) + 1
    sub = {key: v[idx, :width] for key, v in batch.items()}
    total = float(tokens.sum())
    scale = (len(tokens) / len(rows)) * float(tokens[rows].sum()) / total if total > 0 else 1.0
    return sub, scale


def ood_subset(tokenizer, texts: Sequence[str], pad: int, k: int | None, seed: int) -> tuple[list[dict], float]:
    """The OOD batches of a seeded subset of ``k`` texts and its Horvitz–Thompson weight (N/k)(T_S/T_all).

    ``k=None`` (or k >= N) gives every text with weight 1.0 (the exact definition); see
    :func:`subsample_rows` for why the weighted loss difference keeps the full set's expectation.
    """
    chosen = _chosen(len(texts), k, seed, _OOD_SALT)
    if chosen is None:
        return ood_batches(tokenizer, texts, pad), 1.0
    targets = [max(len(encode_plain(tokenizer, t, _OOD_MAX_TOKENS)[0]) - 1, 0) for t in texts]
    total = float(sum(targets))
    picked = float(sum(targets[i] for i in chosen))
    scale = (len(texts) / len(chosen)) * picked / total if total > 0 else 1.0
    return ood_batches(tokenizer, [texts[i] for i in chosen], pad), scale


def ood_batches(tokenizer, texts: Sequence[str], pad: int) -> list[dict]:
    """The OOD sentences as padded batches, sorted by length so that little padding is computed.

    Right padding under the causal mask does not change any real token's loss, so the pooled
    loss is the same as in one batch; sorting only removes wasted positions.
    """
    ood = sorted((encode_plain(tokenizer, t, _OOD_MAX_TOKENS) for t in texts), key=lambda e: len(e[0]))
    return [collate(ood[i : i + _OOD_CHUNK], pad) for i in range(0, len(ood), _OOD_CHUNK)]


def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def mean_loss(model, batches: Sequence[dict], device) -> float:
    """Pooled per-token cross-entropy of ``model`` (eval mode, no grad) over ``batches``."""
    import torch

    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    with torch.inference_mode():
        for b in batches:
            s, n = batch_nll(model, _to(b, device))
            total += s.double()
            count += n.double()
    model.train(was_training)
    return float(total / count.clamp_min(1.0))  # one host sync per call


def flatness(model, params, batch: dict, device, *, k: int, sigma: float, seed: int, depth: int) -> float:
    r"""Mean loss increase on ``batch`` under ``k`` antithetic pairs of perturbations θ ± σ·ε of ``params``.

    .. math:: F = \frac{1}{k}\sum_{j=1}^{k} \Big[\tfrac{1}{2}\big(L(θ+σε_j) + L(θ-σε_j)\big) - L(θ)\Big],
              \quad ε_j \sim N(0, I)

    Each pair has the same expectation as a one-sided increase L(θ+σε) − L(θ)
    (σ²/2 · tr H + O(σ⁴)) but the first-order term σ gᵀε, whose spread σ‖g‖ swamps the curvature
    early in training, cancels exactly; one pair (3 forwards) is a far less noisy estimate than
    three one-sided draws (4 forwards). The noise comes from a CPU generator seeded by
    (seed, depth), so it is the same on every device; the weights are copied back exactly.
    """
    import torch

    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(depth))
    saved = [p.detach().clone() for p in params]
    base = mean_loss(model, [batch], device)
    increases = []
    try:
        for _ in range(k):
            noise = [torch.randn(p.shape, generator=gen, dtype=torch.float32).to(device=p.device, dtype=p.dtype) for p in params]
            pair = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for p, p0, e in zip(params, saved, noise):
                        p.copy_(p0 + (sign * sigma) * e)
                pair.append(mean_loss(model, [batch], device))
            increases.append(0.5 * (pair[0] + pair[1]) - base)
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, saved):
                p.copy_(p0)
    return float(np.mean(increases))


@contextlib.contextmanager
def attach_lora(model, config: ProbeConfig):
    """Wrap ``model`` in fresh LoRA adapters (seeded init); remove them and restore the model afterwards."""
    import torch
    from peft import LoraConfig, get_peft_model

    if hasattr(model, "peft_config"):
        raise ValueError(
            "the model must be a plain base model, but it already carries peft adapters; pass the base model "
            "(merge_and_unload() first)."
        )
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(config.seed)  # LoRA A init and dropout draw from torch's generator
    try:
        peft_model = get_peft_model(model, lora)
    except ValueError as exc:
        raise ValueError(
            f"target_modules must exist in the model, but got {list(config.target_modules)} ({str(exc).splitlines()[0]}); "
            "pass module names of this architecture, e.g. q_proj,v_proj."
        ) from None
    params = [p for p in peft_model.parameters() if p.requires_grad]
    try:
        yield peft_model, params
    finally:
        peft_model.unload()
        if hasattr(model, "peft_config"):
            del model.peft_config
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, p.requires_grad))
        model.train(was_training)


class FlatGrads:
    """Make every LoRA parameter's ``.grad`` a view into one flat float32 buffer.

    Autograd accumulates into an existing ``.grad`` in place, so after ``backward`` the buffer is
    the whole flattened gradient without a copy. If something replaced a ``.grad`` (it should
    not), :meth:`flat` falls back to concatenation.
    """

    def __init__(self, params) -> None:
        import torch

        self.params = list(params)
        n = sum(p.numel() for p in self.params)
        self.buffer = torch.zeros(n, dtype=torch.float32, device=self.params[0].device)
        self.views = []
        offset = 0
        for p in self.params:
            if p.dtype != torch.float32:
                raise ValueError(f"LoRA weights must be float32, but got {p.dtype}; keep peft's adapter autocast on.")
            view = self.buffer[offset : offset + p.numel()].view_as(p)
            p.grad = view
            self.views.append(view)
            offset += p.numel()

    def zero(self) -> None:
        self.buffer.zero_()
        for p, v in zip(self.params, self.views):
            if p.grad is None or p.grad.data_ptr() != v.data_ptr():
                p.grad = v

    def flat(self):
        import torch

        if all(p.grad is not None and p.grad.data_ptr() == v.data_ptr() for p, v in zip(self.params, self.views)):
            return self.buffer
        log.debug("a LoRA .grad was replaced; concatenating")
        return torch.cat([p.grad.reshape(-1).float() for p in self.params])


def clip_(flat, norm, max_norm: float) -> None:
    """In-place global-norm clipping with ``torch.nn.utils.clip_grad_norm_``'s formula."""
    if max_norm > 0:
        flat.mul_((max_norm / (norm + 1e-6)).clamp(max=1.0))


def flat_params(params):
    import torch

    return torch.cat([p.detach().reshape(-1).float() for p in params])


def _set_lr(optimizer, config: ProbeConfig, step: int) -> None:
    """The learning rate of ``step`` (only ``lr_decay_steps`` changes it from the constant ``lr``)."""
    if config.lr_decay_steps:
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)


def readout_loss(peft_model, params, grads: FlatGrads, optimizer, batches: ProbeBatches, config: ProbeConfig, depth: int,
                 device) -> dict[str, float]:
    r"""The cooled-down readout at ``depth``: ``dyn_ref_loss``, the mean per-token answer NLL on the
    reference after a cooldown, and ``dyn_ref_choice``, the closed-choice loss (:func:`reference_scores`).

    With k = ``config.readout_cooldown``, steps depth + j (j = 1..k) train on the probe's next batches at
    :math:`\eta_j = \eta\,(k + 1 - j)/(k + 1)` (``anneal_lr``, as ``ProbeConfig.lr_at``), clipped like
    every probe step; then the reference answers are scored (eval mode). Afterwards the adapter weights,
    the optimiser state and torch's random state are restored, so the probe continues exactly as if no
    readout had happened. A cooldown that produces a non-finite loss gives NaN (recorded, not raised).
    """
    import copy

    import torch

    k = config.readout_cooldown
    saved = [p.detach().clone() for p in params]
    opt_state = copy.deepcopy(optimizer.state_dict())
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        for j in range(1, k + 1):
            grads.zero()
            n_tokens = batches.tokens[depth + j - 1]
            for micro in batches.steps[depth + j - 1]:
                nll, _ = batch_nll(peft_model, _to(micro, device))
                (nll / n_tokens).backward()
            flat = grads.flat()
            clip_(flat, torch.linalg.vector_norm(flat), config.grad_clip)
            for group in optimizer.param_groups:
                group["lr"] = anneal_lr(config.lr, j, k)
            optimizer.step()
        return reference_scores(peft_model, batches.reference, device)
    finally:
        with torch.no_grad():
            for p, value in zip(params, saved):
                p.copy_(value)
        optimizer.load_state_dict(opt_state)  # moments, step counts and the trunk's learning rate
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def probe_loop(peft_model, params, batches: ProbeBatches, config: ProbeConfig, device, *, record: bool = True):
    """Train ``config.steps`` LoRA steps on ``batches``; with ``record`` compute the feature rows.

    ``record=False`` is the bare loop the overhead benchmark compares against: the same batches,
    loss, clipping and optimiser, without any statistics or measurements.
    Returns ``(rows, diverged_step)``.
    """
    import torch

    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    peft_model.train()
    if not record:
        for step in range(config.steps):
            optimizer.zero_grad(set_to_none=True)
            n_tokens = batches.tokens[step]
            for micro in batches.steps[step]:
                nll, _ = batch_nll(peft_model, _to(micro, device))
                (nll / n_tokens).backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            _set_lr(optimizer, config, step + 1)
            optimizer.step()
        return [], None
    record_at = set(config.record_at)
    hp = config.hp_features()
    rows: list[dict] = []
    diverged: int | None = None
    grads = FlatGrads(params)
    theta0 = flat_params(params)
    ood0 = mean_loss(peft_model, batches.ood_batches, device)
    recorder = StepRecorder(grads.buffer.numel(), config.steps, config.sparsity_tol, device)
    for step in range(1, config.steps + 1):
        grads.zero()
        loss_sum = torch.zeros((), dtype=torch.float32, device=device)
        n_tokens = batches.tokens[step - 1]
        for micro in batches.steps[step - 1]:
            nll, _ = batch_nll(peft_model, _to(micro, device))
            (nll / n_tokens).backward()
            loss_sum += nll.detach()
        flat = grads.flat()
        recorder.record(loss_sum / n_tokens, flat)
        clip_(flat, recorder.last_norm, config.grad_clip)
        _set_lr(optimizer, config, step)
        optimizer.step()
        if step not in record_at and step != config.steps:
            continue
        stats = recorder.host()  # the only host sync: at record depths
        diverged = first_bad_step(stats)
        if diverged is not None:
            log.warning("probe diverged at step %d (seed %d)", diverged, config.seed)
            break
        if step not in record_at:
            continue
        extras = {
            "param_change_norm": float(torch.linalg.vector_norm(flat_params(params) - theta0)),
            "flatness": batches.flat_scale * flatness(
                peft_model, params, batches.flat_batch, device,
                k=config.flatness_k, sigma=config.flatness_sigma, seed=config.seed, depth=step,
            ),
            "forgetting": batches.ood_scale * (mean_loss(peft_model, batches.ood_batches, device) - ood0),
        }
        if not all(math.isfinite(v) for v in extras.values()):
            diverged = step
            log.warning("probe diverged at step %d (non-finite depth measurements, seed %d)", step, config.seed)
            break
        feats = dynamic_features(stats[:, 0], stats[:, 1], stats[:, 2], stats[:, 3], **extras)
        if batches.reference is not None:
            feats.update(readout_loss(peft_model, params, grads, optimizer, batches, config, step, device))
        rows.append({"depth": step, "seed": config.seed, "status": "ok", "diverged_step": None, **hp, **feats})
        log.info("depth %d: loss %.4f", step, stats[-1, 0])
    return rows, diverged


def run_probe(examples: Sequence[Example], model, tokenizer, config: ProbeConfig, *, ood_examples=None,
              reference: Sequence[Example] | None = None) -> ProbeResult:
    """Run one LoRA probe and record the dynamic features at every ``config.record_at`` depth.

    Parameters
    ----------
    examples : list of Example
        The candidate's training data (drawn in a seeded order, cycling when exhausted).
    model, tokenizer
        A base causal LM (left unchanged: the adapters are removed afterwards) and its tokenizer.
    config : ProbeConfig
        The candidate's hyperparameters and the probe settings.
    ood_examples : list of str or Example, optional
        The out-of-domain set of the forgetting feature (default: the shipped sentences).
    reference : list of Example, optional
        Held-out examples of the target task. Given, every row also has ``dyn_ref_loss``: the mean
        per-token answer NLL on them after a cooldown of ``config.readout_cooldown`` steps, and
        ``dyn_ref_choice``: the loss of choosing their answers among the distinct ones (NaN for
        free-form answers; see :func:`readout_loss`); each readout costs that many extra steps.

    Returns
    -------
    ProbeResult
        A NaN/inf loss stops the probe with status ``"diverged"``; rows reached before stay ``"ok"``.
    """
    import pandas as pd
    import torch

    _check_examples(examples)
    if reference is not None:
        _check_examples(reference, "reference")
    if not isinstance(config, ProbeConfig):
        raise ValueError(f"config must be a ProbeConfig, but got {type(config).__name__}; build one with ProbeConfig(...).")
    batches = ProbeBatches(examples, tokenizer, config, _ood_texts(ood_examples), reference=reference)
    device = next(model.parameters()).device
    start = time.perf_counter()
    with attach_lora(model, config) as (peft_model, params):
        rows, diverged = probe_loop(peft_model, params, batches, config, device, record=True)
    wall = time.perf_counter() - start
    hp = config.hp_features()
    columns = [*ROW_COLUMNS, *(READOUT_COLUMNS if reference is not None else ())]
    for depth in config.record_at[len(rows) :]:
        rows.append({"depth": depth, "seed": config.seed, "status": "diverged", "diverged_step": diverged, **hp, **nan_features(),
                     **{c: math.nan for c in columns if c in READOUT_COLUMNS}})
    frame = pd.DataFrame(rows, columns=columns)
    frame["depth"] = frame["depth"].astype("int64")
    frame["seed"] = frame["seed"].astype("int64")
    frame["diverged_step"] = frame["diverged_step"].astype("Int64")
    status = "ok" if diverged is None else "diverged"
    return ProbeResult(rows=frame, status=status, diverged_step=diverged, wall_time_s=wall, config=config)
