"""Dynamic probe features against a hand-written LoRA loop on a tiny random LLaMA (no files, no hub)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from plan_probe.probes import DYN_COLUMNS, Example, ProbeConfig  # noqa: E402
from plan_probe.probes._dynamics import dynamic_features  # noqa: E402
from plan_probe.probes._probe import ROW_COLUMNS, data_order, default_ood_texts, run_probe  # noqa: E402
from plan_probe.probes._testing import tiny_model, tiny_tokenizer  # noqa: E402
from plan_probe.probes._tokenize import collate, encode_example, encode_plain  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def examples():
    return [Example(f"question {i}: what is {i} plus {i % 3}?", f"It is {i + i % 3}, because we add.") for i in range(12)]


def _config(**kw):
    base = dict(steps=6, record_at=(3, 6), batch_size=2, max_length=40, lr=5e-3, lora_r=4, lora_alpha=8.0,
                lora_dropout=0.0, target_modules=("q_proj", "v_proj"), flatness_k=2, flatness_sigma=0.05, grad_clip=0.05,
                flatness_sample=None, ood_sample=None)  # the exact definitions, as the hand loop computes them
    base.update(kw)
    return ProbeConfig(**base)


def _hand_loop(model, tok, examples, cfg):
    """Independent reference: HF's own label loss, torch's clipping, explicit cat of LoRA grads."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)
    pm = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                          target_modules=list(cfg.target_modules), task_type="CAUSAL_LM"))
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    order = data_order(len(examples), cfg.steps * cfg.batch_size, cfg.seed)
    batches = [collate([encode_example(tok, examples[int(i)], cfg.max_length) for i in order[s * 2:(s + 1) * 2]], tok.pad_token_id)
               for s in range(cfg.steps)]
    ood = collate([encode_plain(tok, t, 64) for t in default_ood_texts()], tok.pad_token_id)

    def loss_of(batch):  # HF's loss: mean over label tokens of the micro-batch (= per-token mean, one micro-batch)
        pm.eval()
        with torch.no_grad():
            out = pm(**batch).loss.item()
        pm.train()
        return out

    theta0 = torch.cat([p.detach().reshape(-1) for p in params]).clone()
    ood0 = loss_of(ood)
    pm.train()
    losses, norms, grads, rows = [], [], [], {}
    for s in range(cfg.steps):
        opt.zero_grad()
        out = pm(**batches[s])
        out.loss.backward()
        g = torch.cat([p.grad.reshape(-1) for p in params]).clone()
        losses.append(out.loss.item())
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)))  # returns the pre-clip norm
        grads.append(g)
        opt.step()
        depth = s + 1
        if depth in cfg.record_at:
            base = loss_of(batches[0])
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + depth)
            saved = [p.detach().clone() for p in params]
            incs = []
            for _ in range(cfg.flatness_k):  # antithetic pairs: mean of L(θ+σε) and L(θ−σε), minus L(θ)
                eps = [torch.randn(p.shape, generator=gen) for p in params]
                pair = []
                for sign in (1.0, -1.0):
                    with torch.no_grad():
                        for p, p0, e in zip(params, saved, eps):
                            p.copy_(p0 + sign * cfg.flatness_sigma * e)
                    pair.append(loss_of(batches[0]))
                incs.append(0.5 * (pair[0] + pair[1]) - base)
            with torch.no_grad():
                for p, p0 in zip(params, saved):
                    p.copy_(p0)
            cos = [0.0] + [float(torch.dot(grads[i], grads[i - 1]) / (grads[i].norm() * grads[i - 1].norm())) for i in range(1, depth)]
            sparsity = [float((gi.abs() <= cfg.sparsity_tol * gi.abs().max()).float().mean()) for gi in grads]
            t = np.arange(1, depth + 1)
            rows[depth] = {
                "dyn_initial_loss": losses[0],
                "dyn_loss_decay": np.polyfit(t, np.log(losses), 1)[0],
                "dyn_loss_variance": np.var(losses, ddof=1),
                "dyn_grad_norm_mean": np.mean(norms),
                "dyn_grad_norm_var": np.var(norms, ddof=1),
                "dyn_grad_consistency": np.mean(cos[1:]),
                "dyn_grad_sparsity": np.mean(sparsity),
                "dyn_param_change_norm": float((torch.cat([p.detach().reshape(-1) for p in params]) - theta0).norm()),
                "dyn_flatness": float(np.mean(incs)),
                "dyn_forgetting": loss_of(ood) - ood0,
            }
    pm.unload()
    return rows, norms


def test_features_match_hand_loop(tok, examples):
    cfg = _config()
    result = run_probe(examples, tiny_model(len(tok)), tok, cfg)
    assert result.status == "ok" and list(result.rows.columns) == list(ROW_COLUMNS)
    hand, norms = _hand_loop(tiny_model(len(tok)), tok, examples, cfg)
    # Clipping was active (threshold 0.05 below the norms), so pre-clip norms are really tested.
    assert max(norms) > cfg.grad_clip
    for _, row in result.rows.iterrows():
        for col in DYN_COLUMNS:
            # Same float32 arithmetic in a different order (HF loss vs ours, fused clip vs ours):
            # agreement to ~1e-4 relative after 6 Adam steps; flatness/forgetting are differences of
            # losses, compared with an absolute 2e-4.
            assert row[col] == pytest.approx(hand[row["depth"]][col], rel=2e-3, abs=2e-4), col


def test_hp_columns_and_same_seed_identical(tok, examples):
    cfg = _config(lora_dropout=0.1, seed=3)
    a = run_probe(examples, tiny_model(len(tok)), tok, cfg).rows
    b = run_probe(examples, tiny_model(len(tok)), tok, cfg).rows
    assert a.equals(b)  # byte-identical on CPU
    c = run_probe(examples, tiny_model(len(tok)), tok, cfg.replace(seed=4)).rows
    assert not np.allclose(a["dyn_loss_decay"], c["dyn_loss_decay"])
    assert a.loc[0, "hp_lr"] == cfg.lr and a.loc[0, "hp_lora_r"] == 4 and a.loc[0, "hp_max_length"] == 40


def test_model_left_unchanged(tok, examples):
    model = tiny_model(len(tok))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_probe(examples, model, tok, _config())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not hasattr(model, "peft_config")


def test_divergence_is_recorded_not_raised(tok, examples):
    result = run_probe(examples, tiny_model(len(tok)), tok, _config(lr=1e6, grad_clip=0.0, steps=6, record_at=(2, 6)))
    assert result.status == "diverged" and result.diverged_step is not None
    rows = result.rows
    assert len(rows) == 2 and set(rows["status"]) <= {"ok", "diverged"}
    bad = rows[rows["status"] == "diverged"]
    assert len(bad) >= 1 and bad[list(DYN_COLUMNS)].isna().all().all()
    assert (bad["diverged_step"] == result.diverged_step).all()


def test_dynamic_features_closed_form():
    losses = [4.0, 2.0, 1.0]  # log L is linear in t with slope -log 2
    feats = dynamic_features(losses, [1.0, 2.0, 3.0], [0.0, 0.5, -0.5], [0.25, 0.5, 0.75],
                             param_change_norm=1.5, flatness=0.1, forgetting=-0.2)
    assert feats["dyn_loss_decay"] == pytest.approx(-math.log(2), rel=1e-12)
    assert feats["dyn_loss_variance"] == pytest.approx(np.var(losses, ddof=1))
    assert feats["dyn_grad_norm_mean"] == 2.0 and feats["dyn_grad_norm_var"] == 1.0
    assert feats["dyn_grad_consistency"] == 0.0 and feats["dyn_grad_sparsity"] == 0.5
    with pytest.raises(ValueError, match="need >= 2 steps"):
        dynamic_features([1.0], [1.0], [0.0], [0.0], param_change_norm=0, flatness=0, forgetting=0)


def test_config_validation_and_round_trip():
    cfg = _config()
    assert ProbeConfig.from_json(cfg.to_json()) == cfg
    assert cfg.to_json()["plan_probe_version"]
    with pytest.raises(ValueError, match="lr must be a positive"):
        ProbeConfig(lr=0)
    with pytest.raises(ValueError, match="must not exceed steps"):
        ProbeConfig(steps=10, record_at=(5, 20))
    with pytest.raises(ValueError, match=">= 2"):
        ProbeConfig(record_at=(1, 5), steps=5)


def test_batch_nll_with_logits_to_keep_equals_full_logits(tok, examples, monkeypatch):
    """The LM head restricted to label-predicting positions gives the same sums as the full logits
    indexed at those positions (float32 on CPU: the same dot products, so agreement to 1e-5 relative), per batch
    and per example, through peft too."""
    import plan_probe.probes._tokenize as T
    from peft import LoraConfig, get_peft_model

    model = tiny_model(len(tok)).eval()
    batch = collate([encode_example(tok, e, 40) for e in examples[:5]], tok.pad_token_id)
    peft_model = get_peft_model(tiny_model(len(tok)), LoraConfig(r=2, target_modules=["q_proj"])).eval()
    for m in (model, peft_model):
        assert T._accepts_logits_to_keep(m)
        with torch.no_grad():
            fast = (T.batch_nll(m, batch), T.batch_nll(m, batch, per_example=True))
            monkeypatch.setitem(T._KEEP_SUPPORT, type(m.get_base_model() if hasattr(m, "get_base_model") else m), False)
            full = (T.batch_nll(m, batch), T.batch_nll(m, batch, per_example=True))
            monkeypatch.undo()
        for a, b in zip((fast[0][0], fast[1][0]), (full[0][0], full[1][0])):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5)
        assert int(fast[0][1]) == int(full[0][1]) and torch.equal(fast[1][1], full[1][1])


def test_lr_decay_after_the_record_depths(tok, examples, monkeypatch):
    """``lr_decay_steps``: the optimiser sees lr for the first steps - lr_decay_steps steps, then
    lr * (D + 1 - k) / (D + 1) at the k-th decay step; the rows (all before the decay) equal those of
    the constant-lr probe, so a run that anneals after its probe depths records what a probe sees."""
    seen = []
    step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    decayed = run_probe(examples, tiny_model(len(tok)), tok, _config(steps=6, record_at=(3,), lr_decay_steps=3))
    assert seen == pytest.approx([5e-3, 5e-3, 5e-3, 5e-3 * 3 / 4, 5e-3 * 2 / 4, 5e-3 / 4], rel=1e-12)
    seen.clear()
    constant = run_probe(examples, tiny_model(len(tok)), tok, _config(steps=6, record_at=(3,)))
    assert seen == [5e-3] * 6
    assert decayed.rows.equals(constant.rows)
    with pytest.raises(ValueError, match="before the learning-rate decay"):
        _config(steps=6, record_at=(3, 6), lr_decay_steps=2)
    with pytest.raises(ValueError, match=r"lr_decay_steps must be an integer in \[0, steps\)"):
        _config(steps=6, record_at=(3,), lr_decay_steps=6)
    cfg = _config(steps=6, record_at=(3,), lr_decay_steps=3)
    assert ProbeConfig.from_json(cfg.to_json()) == cfg


# --- subsampled measurements (flatness rows, OOD texts): same expectation as the exact ones ----------

def _pooled_loss(model, batches):
    from plan_probe.probes._probe import mean_loss

    return mean_loss(model, batches, torch.device("cpu"))


def _all_subsets(draw, n_subsets):
    """{subset: value} over seeds until every subset has been drawn (the draw is seeded)."""
    seen = {}
    for seed in range(2000):
        key, value = draw(seed)
        seen.setdefault(key, value)
        if len(seen) == n_subsets:
            return seen
    raise AssertionError(f"only {len(seen)} of {n_subsets} subsets drawn")


def test_flatness_rows_subset_is_unbiased_for_the_batch(tok, examples):
    from plan_probe.probes._probe import subsample_rows

    model = tiny_model(len(tok))
    batch = collate([encode_example(tok, e, 40) for e in examples[:4]], tok.pad_token_id)
    full = _pooled_loss(model, [batch])

    def draw(seed):
        sub, w = subsample_rows(batch, 2, seed)
        return tuple(map(tuple, sub["input_ids"].tolist())), w * _pooled_loss(model, [sub])

    values = _all_subsets(draw, 6)  # C(4, 2) subsets, equally likely
    assert np.mean(list(values.values())) == pytest.approx(full, rel=1e-5)
    same, w = subsample_rows(batch, None, 0)
    assert same is batch and w == 1.0


def test_ood_subset_is_unbiased_for_the_set(tok):
    from plan_probe.probes._probe import ood_subset

    model = tiny_model(len(tok))
    texts = default_ood_texts()[:5]
    full_batches, w_full = ood_subset(tok, texts, tok.pad_token_id, None, 0)
    full = _pooled_loss(model, full_batches)

    def draw(seed):
        batches, w = ood_subset(tok, texts, tok.pad_token_id, 2, seed)
        key = tuple(sorted(tuple(r) for b in batches for r in b["input_ids"].tolist()))
        return key, w * _pooled_loss(model, batches)

    values = _all_subsets(draw, 10)  # C(5, 2)
    assert w_full == 1.0 and np.mean(list(values.values())) == pytest.approx(full, rel=1e-5)


def test_subsampled_measurements_change_only_flatness_and_forgetting(tok, examples):
    cfg = _config(batch_size=4, record_at=(3, 6))
    exact = run_probe(examples, tiny_model(len(tok)), tok, cfg).rows
    sub = run_probe(examples, tiny_model(len(tok)), tok, cfg.replace(flatness_sample=2, ood_sample=8)).rows
    same = [c for c in DYN_COLUMNS if c not in ("dyn_flatness", "dyn_forgetting")]
    assert exact[same].equals(sub[same])  # the training run itself is untouched
    assert np.all(np.isfinite(sub[["dyn_flatness", "dyn_forgetting"]].to_numpy()))
    assert not np.allclose(exact["dyn_forgetting"], sub["dyn_forgetting"])
    # a "sample" as large as the set is the exact definition, bit for bit
    whole = run_probe(examples, tiny_model(len(tok)), tok, cfg.replace(flatness_sample=4, ood_sample=10_000)).rows
    assert whole.equals(exact)


def test_probe_config_schema1_reads_as_exact():
    from plan_probe.probes._formats import PROBE_CONFIG

    doc = ProbeConfig().to_json()
    assert doc["schema_version"] == PROBE_CONFIG.schema_version == 4
    assert ProbeConfig.from_json(doc) == ProbeConfig()
    old = {"format": "plan-probe/probe-config", "schema_version": 1, "config": {"steps": 10, "record_at": [5, 10]}}
    cfg = ProbeConfig.from_json(old)
    assert cfg.flatness_sample is None and cfg.ood_sample is None  # schema 1 measured on every example
    assert cfg.lr_decay_steps == 0  # and with a constant learning rate
    v2 = {"format": "plan-probe/probe-config", "schema_version": 2,
          "config": {"steps": 10, "record_at": [5, 10], "flatness_sample": 2, "ood_sample": 8}}
    cfg = ProbeConfig.from_json(v2)
    assert cfg.lr_decay_steps == 0 and cfg.flatness_sample == 2  # schema 3 added lr_decay_steps
