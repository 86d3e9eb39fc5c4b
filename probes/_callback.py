"""A ``transformers.TrainerCallback`` that records the probe's dynamic features from the user's own run.

How each signal is read inside ``Trainer`` (transformers 5.x), so the rows match :func:`run_probe`:

* loss — a forward hook on the model recomputes the summed cross-entropy over label positions of
  every training micro-batch, so L_t is the true per-token mean over the whole optimiser step
  (whatever loss scaling the Trainer uses);
* gradient — ``Tensor.register_post_accumulate_grad_hook`` on each trainable (LoRA) parameter
  copies its accumulated ``.grad`` into one flat buffer after every backward. The Trainer clips
  *after* the last backward, so at ``on_step_end`` the buffer holds the pre-clipping gradient
  (``on_pre_optimizer_step`` runs after clipping and would be too late);
* flatness uses the first training micro-batch (kept) and forgetting the shipped OOD sentences,
  both only at record depths, in eval mode (which the hooks ignore).
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

from transformers import TrainerCallback

from plan_probe.probes._dynamics import StepRecorder, dynamic_features, first_bad_step, nan_features

__all__ = ["ProbeRecorderCallback"]

log = logging.getLogger(__name__)


class ProbeRecorderCallback(TrainerCallback):
    """Record the 10 ``dyn_*`` features at ``record_at`` optimiser steps of a ``Trainer``/TRL run.

    Parameters
    ----------
    record_at : sequence of int
        Depths (global steps, each >= 2) at which a row is recorded.
    output : path, optional
        CSV/Parquet file written (atomically) when training ends.
    tokenizer : optional
        Tokenizer for the OOD forgetting set (default: the Trainer's ``processing_class``).
    ood_examples : list of str, optional
        Out-of-domain texts (default: the shipped sentences).
    seed : int
        Seed of the flatness perturbations, and the ``seed`` column.
    flatness_k, flatness_sigma, sparsity_tol, flatness_sample, ood_sample : as in :class:`ProbeConfig`
        (``None``: the exact definitions on the whole first micro-batch / every OOD text).
    max_length : int, optional
        Sequence length of the run, for the ``hp_max_length`` column (NaN when not given).

    Attributes
    ----------
    rows : pandas.DataFrame
        The rows recorded so far (same columns as :func:`run_probe`).
    """

    def __init__(
        self,
        record_at: Sequence[int] = (5, 10, 20, 50, 100),
        *,
        output=None,
        tokenizer=None,
        ood_examples: Sequence[str] | None = None,
        seed: int = 0,
        flatness_k: int = 1,
        flatness_sigma: float = 1e-2,
        sparsity_tol: float = 1e-3,
        max_length: int | None = None,
        flatness_sample: int | None = 2,
        ood_sample: int | None = 8,
    ) -> None:
        depths = sorted({int(d) for d in record_at})
        if not depths or depths[0] < 2:
            raise ValueError(f"record_at depths must be >= 2, but got record_at={list(record_at)}; start at 2 or more.")
        self.record_at = tuple(depths)
        self.output = output
        self.tokenizer = tokenizer
        self.ood_examples = ood_examples
        self.seed = int(seed)
        self.flatness_k = int(flatness_k)
        self.flatness_sigma = float(flatness_sigma)
        self.sparsity_tol = float(sparsity_tol)
        self.max_length = max_length
        self.flatness_sample = flatness_sample
        self.ood_sample = ood_sample
        self._rows: list[dict] = []
        self._handles: list = []

    # -- hooks -------------------------------------------------------------------------------
    def _grad_hook(self, offset: int):
        def hook(param) -> None:
            if param.grad is not None:
                self._grad[offset : offset + param.numel()].copy_(param.grad.reshape(-1))

        return hook

    def _forward_hook(self, module, args, kwargs, output) -> None:
        import torch

        from plan_probe.probes._tokenize import IGNORE

        if not module.training:
            return
        labels = kwargs.get("labels")
        logits = getattr(output, "logits", None)
        if labels is None or logits is None:
            return
        with torch.no_grad():
            targets = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1, :].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
            )
            self._loss_sum += nll
            self._tokens += (targets != IGNORE).sum()
        if self._flat_batch is None:
            from plan_probe.probes._probe import subsample_rows

            batch = {
                "input_ids": kwargs["input_ids"].detach(),
                "attention_mask": (
                    kwargs["attention_mask"].detach()
                    if kwargs.get("attention_mask") is not None
                    else torch.ones_like(kwargs["input_ids"])
                ),
                "labels": labels.detach(),
            }
            sub, self._flat_scale = subsample_rows(batch, self.flatness_sample, self.seed)
            self._flat_batch = {k: v.clone() for k, v in sub.items()}

    # -- callback events ---------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        import torch

        from plan_probe.probes._probe import _ood_texts, flat_params, mean_loss, ood_subset

        self._model = model
        self._params = [p for p in model.parameters() if p.requires_grad]
        device = self._params[0].device
        n = sum(p.numel() for p in self._params)
        self._grad = torch.zeros(n, dtype=torch.float32, device=device)
        offset = 0
        for p in self._params:
            self._handles.append(p.register_post_accumulate_grad_hook(self._grad_hook(offset)))
            offset += p.numel()
        self._handles.append(model.register_forward_hook(self._forward_hook, with_kwargs=True))
        self._loss_sum = torch.zeros((), dtype=torch.float32, device=device)
        self._tokens = torch.zeros((), dtype=torch.long, device=device)
        self._flat_batch = None
        self._recorder = StepRecorder(n, max(self.record_at[-1], 1), self.sparsity_tol, device)
        self._theta0 = flat_params(self._params)
        self._diverged = None
        tok = self.tokenizer if self.tokenizer is not None else processing_class
        self._ood = None
        if tok is not None:
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            self._ood, self._ood_scale = ood_subset(tok, _ood_texts(self.ood_examples), pad, self.ood_sample, self.seed)
            self._ood0 = mean_loss(model, self._ood, device)
        else:
            log.warning("no tokenizer for the OOD set: dyn_forgetting will be NaN")
        peft_cfg = next(iter(getattr(model, "peft_config", {}).values()), None)
        self._hp = {
            "hp_lr": float(args.learning_rate),
            "hp_batch_size": float(args.per_device_train_batch_size),
            "hp_grad_accum": float(args.gradient_accumulation_steps),
            "hp_lora_r": float(getattr(peft_cfg, "r", math.nan)),
            "hp_lora_alpha": float(getattr(peft_cfg, "lora_alpha", math.nan)),
            "hp_lora_dropout": float(getattr(peft_cfg, "lora_dropout", math.nan)),
            "hp_max_length": float(self.max_length) if self.max_length is not None else math.nan,
        }

    def on_step_end(self, args, state, control, **kwargs):
        import torch

        from plan_probe.probes._probe import flat_params, flatness, mean_loss

        step = state.global_step
        if step > self.record_at[-1] or self._diverged is not None:
            return
        tokens = self._tokens.clamp_min(1).float()
        self._recorder.record(self._loss_sum / tokens, self._grad)
        self._loss_sum.zero_()
        self._tokens.zero_()
        if step not in self.record_at:
            return
        stats = self._recorder.host()
        bad = first_bad_step(stats)
        device = self._grad.device
        if bad is None:
            extras = {
                "param_change_norm": float(torch.linalg.vector_norm(flat_params(self._params) - self._theta0)),
                "flatness": self._flat_scale * flatness(
                    self._model, self._params, self._flat_batch, device,
                    k=self.flatness_k, sigma=self.flatness_sigma, seed=self.seed, depth=step,
                ),
                "forgetting": (self._ood_scale * (mean_loss(self._model, self._ood, device) - self._ood0)
                               if self._ood is not None else math.nan),
            }
            if all(math.isfinite(v) for k, v in extras.items() if k != "forgetting" or self._ood is not None):
                feats = dynamic_features(stats[:, 0], stats[:, 1], stats[:, 2], stats[:, 3], **extras)
                self._rows.append({"depth": step, "seed": self.seed, "status": "ok", "diverged_step": None, **self._hp, **feats})
                return
            bad = step
        self._diverged = bad
        log.warning("training diverged at step %d; recording stops", bad)
        for depth in self.record_at:
            if depth >= step:
                self._rows.append({"depth": depth, "seed": self.seed, "status": "diverged", "diverged_step": bad, **self._hp, **nan_features()})

    def on_train_end(self, args, state, control, **kwargs):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.output is not None and self._rows:
            from plan_probe.probes._io import write_table

            write_table(self.rows, self.output)

    @property
    def rows(self):
        import pandas as pd

        from plan_probe.probes._probe import ROW_COLUMNS

        frame = pd.DataFrame(self._rows, columns=list(ROW_COLUMNS))
        frame["diverged_step"] = frame["diverged_step"].astype("Int64")
        return frame

