"""Plain-language feature meanings: every column the tool computes has one, and phrases are exact."""

from __future__ import annotations

import math

from plan_probe.probes import DYN_COLUMNS, HP_COLUMNS, READOUT_COLUMNS, STATIC_COLUMNS
from plan_probe.probes._glossary import FEATURE_MEANINGS, feature_phrase


def test_every_computed_column_has_a_meaning():
    missing = [c for c in (*STATIC_COLUMNS, *HP_COLUMNS, *DYN_COLUMNS, *READOUT_COLUMNS) if c not in FEATURE_MEANINGS]
    assert missing == []


def test_phrase_names_the_column_its_value_and_effect():
    assert feature_phrase("hp_lr", 2e-3, -12.345) == "learning rate (hp_lr = 0.002; -12.35)"
    assert feature_phrase("static_duplicate_rate", 0.5) == "share of duplicated records (static_duplicate_rate = 0.5)"
    assert feature_phrase("hp_lora_r") == "LoRA rank (hp_lora_r)"


def test_unknown_or_non_finite_parts_are_left_out():
    assert feature_phrase("user_feature") == "user_feature"
    assert feature_phrase("user_feature", 3.0, 1.5) == "user_feature (user_feature = 3; +1.50)"
    assert feature_phrase("hp_lr", math.nan, math.inf) == "learning rate (hp_lr)"
