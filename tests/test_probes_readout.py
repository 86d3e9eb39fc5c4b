"""The cooled-down readout (``dyn_ref_loss``, ``dyn_ref_choice``) on a tiny random LLaMA built here: it is undone
without a trace, it equals the reference scores of a separate probe that anneals over the same steps, and the
choice loss equals its definition computed one example and one answer at a time."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from plan_probe.probes import DYN_COLUMNS, READOUT_COLUMNS, Example, ProbeConfig  # noqa: E402
from plan_probe.probes._probe import (  # noqa: E402
    ProbeBatches, _ood_texts, attach_lora, encode_reference, mean_loss, probe_loop, reference_scores, run_probe,
)
from plan_probe.probes._tokenize import collate, encode_example  # noqa: E402
from plan_probe.probes._testing import tiny_model  # noqa: E402
from tests.test_probes_dynamic import examples, tok  # noqa: E402,F401  (the same tiny tokenizer and training set)


@pytest.fixture(scope="module")
def reference():
    return [Example(f"question {i}: what is {i} plus {i % 3}?", f"It is {i + i % 3}, because we add.") for i in range(40, 45)]


def _config(**kw):
    # dropout on: the readout must also put torch's random state back
    base = dict(steps=6, record_at=(3, 6), batch_size=2, max_length=40, lr=5e-3, lora_r=4, lora_alpha=8.0,
                lora_dropout=0.1, target_modules=("q_proj", "v_proj"), grad_clip=0.05, seed=7)
    base.update(kw)
    return ProbeConfig(**base)


def test_the_readout_leaves_every_other_feature_bit_for_bit(tok, examples, reference):
    cfg = _config(readout_cooldown=3)
    plain = run_probe(examples, tiny_model(len(tok)), tok, cfg).rows
    read = run_probe(examples, tiny_model(len(tok)), tok, cfg, reference=reference).rows
    assert list(plain.columns) == [c for c in read.columns if c not in READOUT_COLUMNS] and "dyn_ref_loss" not in plain
    assert read[list(DYN_COLUMNS)].equals(plain[list(DYN_COLUMNS)])  # params, moments and RNG restored exactly
    assert np.all(np.isfinite(read["dyn_ref_loss"])) and read["dyn_ref_loss"].nunique() == 2
    assert np.all(np.isfinite(read["dyn_ref_choice"])) and read["dyn_ref_choice"].nunique() == 2


@pytest.mark.parametrize("depth, cooldown", [(3, 0), (3, 3), (6, 2)])
def test_the_readout_is_the_reference_loss_of_a_probe_that_anneals_over_the_same_steps(tok, examples, reference, depth, cooldown):
    """Known truth: a separate probe of depth + k steps whose last k steps decay the lr to zero
    (``lr_decay_steps = k``) trains exactly what the branch trains; its final reference loss is the readout."""
    cfg = _config(readout_cooldown=cooldown)
    read = run_probe(examples, tiny_model(len(tok)), tok, cfg, reference=reference).rows.set_index("depth")

    model = tiny_model(len(tok))
    longer = dataclasses.replace(cfg, steps=depth + cooldown, lr_decay_steps=cooldown, readout_cooldown=0,
                                 record_at=tuple(d for d in cfg.record_at if d <= depth))
    batches = ProbeBatches(examples, tok, longer, _ood_texts(None), reference=reference)
    with attach_lora(model, longer) as (peft_model, params):
        batches.reference, kept = None, batches.reference  # no readouts inside the separate probe
        probe_loop(peft_model, params, batches, longer, torch.device("cpu"), record=True)
        expected = reference_scores(peft_model, kept, torch.device("cpu"))
    assert read.loc[depth, "dyn_ref_loss"] == pytest.approx(expected["dyn_ref_loss"], rel=1e-5, abs=1e-6)
    assert read.loc[depth, "dyn_ref_choice"] == pytest.approx(expected["dyn_ref_choice"], rel=1e-5, abs=1e-6)


def _choice_by_definition(model, tok, reference, max_length):
    """mean_i [logsumexp_a l_ia - l_i,a_i], each l_ia = log p(answer a | prompt i) from its own unpadded forward."""
    from scipy.special import logsumexp

    answers = sorted({ex.output for ex in reference})
    out = []
    for ex in reference:
        ll = []
        for a in answers:
            ids, labels = encode_example(tok, Example(ex.input, a), max_length)
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), dim=-1)
            target = torch.tensor(labels[1:])
            ll.append(float(logp[target != -100].gather(1, target[target != -100, None]).sum()))
        out.append(logsumexp(ll) - ll[answers.index(ex.output)])
    return float(np.mean(out))


def _padded_loss(model, tok, reference, max_length):
    """The pooled per-token answer loss by ``mean_loss`` on right-padded batches of whole sequences (no cache)."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    encoded = [encode_example(tok, ex, max_length) for ex in reference]
    return mean_loss(model, [collate(encoded[i : i + 4], pad) for i in range(0, len(encoded), 4)], torch.device("cpu"))


@pytest.mark.parametrize("max_length", [40, 12])  # 12: prompts cut from the left, by answer length
def test_reference_scores_are_their_definitions_and_choice_is_nan_without_a_closed_answer_set(tok, max_length):
    model = tiny_model(len(tok)).eval()
    labels = ["positive", "negative", "positive", "neutral", "negative", "positive", "negative", "neutral", "positive"]
    ref = [Example(f"tweet number {i} says {'so ' * (i % 4)}much", lab) for i, lab in enumerate(labels)]
    got = reference_scores(model, encode_reference(tok, ref, max_length), torch.device("cpu"))
    assert got["dyn_ref_choice"] == pytest.approx(_choice_by_definition(model, tok, ref, max_length), rel=1e-6)
    assert got["dyn_ref_loss"] == pytest.approx(_padded_loss(model, tok, ref, max_length), rel=1e-6)
    assert 0 < got["dyn_ref_choice"] and np.isfinite(got["dyn_ref_choice"])
    free_form = [Example(f"q{i}", f"answer number {i}") for i in range(11)]  # 11 distinct answers: not a choice
    scores = reference_scores(model, encode_reference(tok, free_form, max_length), torch.device("cpu"))
    assert np.isnan(scores["dyn_ref_choice"])
    assert scores["dyn_ref_loss"] == pytest.approx(_padded_loss(model, tok, free_form, max_length), rel=1e-6)
    assert not encode_reference(tok, [Example("q", "a"), Example("r", "a")], 40).closed  # one answer: nothing to choose


def test_a_longer_cooldown_learns_more_and_cooldown_zero_scores_the_iterate(tok, examples, reference):
    got = {k: run_probe(examples, tiny_model(len(tok)), tok, _config(readout_cooldown=k), reference=reference).rows
           for k in (0, 4)}
    assert not np.allclose(got[0]["dyn_ref_loss"], got[4]["dyn_ref_loss"])
    # the reference is the training distribution here: training on it lowers its loss, more so with a cooldown
    assert got[4]["dyn_ref_loss"].iloc[-1] < got[0]["dyn_ref_loss"].iloc[0]


def test_readout_settings_are_validated_and_round_trip(tok, examples):
    cfg = _config(readout_cooldown=5)
    assert ProbeConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    old = ProbeConfig().to_json()
    old["schema_version"], old["config"] = 3, {k: v for k, v in old["config"].items() if k != "readout_cooldown"}
    assert ProbeConfig.from_json(old).readout_cooldown == 0  # schema-3 probes had no readout
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="readout_cooldown must be an integer >= 0"):
            _config(readout_cooldown=bad)
    with pytest.raises(ValueError, match="reference must be a non-empty list of Example"):
        run_probe(examples, tiny_model(len(tok)), tok, _config(), reference=[])
