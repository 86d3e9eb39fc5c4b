"""Meta-dataset loading and validation for the shared predictor (docs/theory.md §3, "Meta-dataset").

A meta-dataset has one row per run (or per run x probe depth): an id column, a label column, an
optional ``depth`` column and numeric feature columns. Feature groups come from the prefixes
``static_``, ``dyn_`` and ``hp_`` when present, otherwise from a built-in map of the column names of
TuneAhead's released meta-dataset (``data/metadataset_sample.csv`` and the feature categories of
its ``feature_pipeline.py``), so that layout loads unchanged (label ``overall_accuracy``, id
``dataset_name``). Unknown unprefixed numeric columns are kept as group ``other`` with a warning.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

__all__ = [
    "GROUPS",
    "TUNEAHEAD_FEATURE_GROUPS",
    "MetaDataset",
    "feature_group",
    "load_meta",
    "check_finite_features",
    "check_same_features",
    "check_folds",
    "select_features",
]

log = logging.getLogger(__name__)

GROUPS = ("static", "dynamic", "hyperparameter", "depth", "other")
_PREFIXES = {"static_": "static", "dyn_": "dynamic", "hp_": "hyperparameter"}

# Column names of TuneAhead's released meta-dataset, grouped as its feature pipeline groups them
# (text statistics, semantic and perplexity features are static; the probe features are dynamic).
_TA_STATIC = (
    "dataset_num_items", "dataset_total_chars", "avg_input_length", "avg_output_length", "io_length_ratio",
    "input_length_std", "output_length_std", "input_ttr", "output_ttr", "output_ngram_repetition",
    "vocab_complexity", "special_char_ratio", "answer_groundedness", "embedding_outlier_ratio",
    "approximate_duplicates", "semantic_diversity", "io_similarity", "semantic_consistency",
    "reference_perplexity", "base_model_perplexity", "perplexity_change_rate", "reference_perplexity_std",
    "base_perplexity_std", "static_coverage", "static_skipped_count", "static_valid_count",
    # docs/theory.md §4 spellings that TuneAhead's CSV does not use (our probes may emit them unprefixed).
    "dataset_size", "num_examples", "token_length_mean", "token_length_std", "type_token_ratio",
    "ngram_repetition", "instruction_complexity", "duplicate_rate", "io_semantic_similarity",
    "output_semantic_diversity", "kl_to_reference", "unigram_kl", "groundedness",
)
_TA_DYNAMIC = (
    "initial_loss", "loss_decay_rate", "loss_stability", "avg_grad_norm", "gradient_consistency",
    "avg_grad_sparsity", "avg_param_change", "landscape_flatness", "catastrophic_forgetting",
    "avg_activation_sparsity",
    # docs/theory.md §4 spellings.
    "loss_decay", "loss_variance", "grad_norm_mean", "grad_norm_var", "gradient_sparsity",
    "param_change_norm", "flatness", "forgetting",
)
_TA_HP = (
    "learning_rate", "batch_size", "lora_r", "lora_rank", "lora_alpha", "lora_dropout", "num_epochs",
    "epochs", "weight_decay", "warmup_ratio", "max_steps",
)
TUNEAHEAD_FEATURE_GROUPS: dict[str, str] = {
    **{name: "static" for name in _TA_STATIC},
    **{name: "dynamic" for name in _TA_DYNAMIC},
    **{name: "hyperparameter" for name in _TA_HP},
}

_DEFAULT_IDS = ("dataset_name", "run_id", "task_id")


def feature_group(name: str) -> str:
    """Group of a feature column: by prefix, then by TuneAhead's names, ``depth``, else ``other``."""
    for prefix, group in _PREFIXES.items():
        if name.startswith(prefix):
            return group
    if name == "depth":
        return "depth"
    return TUNEAHEAD_FEATURE_GROUPS.get(name, "other")


@dataclass(frozen=True)
class MetaDataset:
    """A validated meta-dataset.

    Attributes
    ----------
    frame : pandas.DataFrame
        The table as read (lower-case column names).
    id_col, label_col : str
        Id and label column names (``label_col`` is None when the table carries no label).
    features : tuple of str
        Feature columns in model order (``depth`` included when present).
    groups : dict
        Feature name -> group (one of :data:`GROUPS`).
    """

    frame: object
    id_col: str
    label_col: str | None
    features: tuple
    groups: dict

    @property
    def X(self):
        return self.frame.loc[:, list(self.features)].astype(float)

    @property
    def y(self) -> np.ndarray:
        if self.label_col is None:
            raise ValueError("the meta-dataset must carry a label column here, but it has none; pass --label COL.")
        return self.frame[self.label_col].to_numpy(dtype=float)

    @property
    def ids(self) -> np.ndarray:
        return self.frame[self.id_col].astype(str).to_numpy()

    @property
    def has_depth(self) -> bool:
        return "depth" in self.features


def _numeric(frame, col: str) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(frame[col]) and not pd.api.types.is_bool_dtype(frame[col])


def _refuse_non_numeric(frame, col: str) -> None:
    import pandas as pd

    values = frame[col]
    if pd.api.types.is_bool_dtype(values):
        got = "booleans (True/False)"
    else:
        text = values[pd.to_numeric(values, errors="coerce").isna() & values.notna()]
        got = f"text such as {str(text.iloc[0])[:40]!r}" if len(text) else f"dtype {values.dtype}"
    raise ValueError(f"feature columns (static_/dyn_/hp_, depth and TuneAhead's names) must be numeric, but column {col!r} "
                     f"holds {got}; write numbers (a '.' decimal point) or drop the column.")


def check_finite_features(frame, features) -> None:
    """Reject NaN/inf feature values, naming the first bad column and its number of bad rows."""
    for col in features:
        values = frame[col].to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(
                f"feature values must be finite, but column {col!r} has {int(bad.sum())} NaN/inf row(s) "
                f"of {len(values)}; fill or drop those rows (or drop the column) before fitting."
            )


def check_same_features(expected, frame) -> None:
    """Check that ``frame`` has exactly the numeric feature columns a predictor was trained on."""
    missing = [c for c in expected if c not in frame.columns]
    if missing:
        raise ValueError(
            f"feature columns must match training, but {len(missing)} are missing: {missing[:5]}; "
            "pass a table with the same feature columns as the training meta-dataset."
        )


def check_folds(n_groups: int, folds: int, what: str = "distinct ids") -> None:
    """Cross-validation needs at least as many groups as folds (and at least 2 folds)."""
    if folds < 2:
        raise ValueError(f"the number of folds must be at least 2, but got cv={folds}; pass --cv 2 or more.")
    if n_groups < folds:
        raise ValueError(
            f"cross-validation needs at least as many {what} as folds, but got {n_groups} {what} for cv={folds}; "
            "lower --cv or add runs."
        )


def load_meta(
    source,
    *,
    label: str | None,
    id_col: str | None = None,
    require_label: bool = True,
    min_rows: int = 2,
) -> MetaDataset:
    """Load and validate a meta-dataset.

    Parameters
    ----------
    source : str, os.PathLike or pandas.DataFrame
        A CSV/Parquet path or a DataFrame.
    label : str or None
        Label column; required to exist, be numeric, finite and non-constant when ``require_label``.
    id_col : str, optional
        Id column; defaults to ``dataset_name``, else ``run_id``, else ``task_id``.
    require_label : bool
        When False (prediction), a missing label is allowed and the label is not a feature.
    min_rows : int
        Minimum number of rows.

    Returns
    -------
    MetaDataset
    """
    from plan_probe.probes._io import read_table

    if isinstance(source, (str, os.PathLike)):
        frame = read_table(source)
    else:
        frame = source.copy()
        frame.columns = [str(c).strip().lower() for c in frame.columns]
    if len(frame) < min_rows:
        raise ValueError(f"the meta-dataset needs at least {min_rows} rows, but got {len(frame)}; add runs.")
    if id_col is None:
        id_col = next((c for c in _DEFAULT_IDS if c in frame.columns), None)
        if id_col is None:
            raise ValueError(
                f"the meta-dataset needs an id column, but none of {list(_DEFAULT_IDS)} is present; pass --id COL."
            )
    else:
        id_col = id_col.strip().lower()
        if id_col not in frame.columns:
            raise ValueError(f"the id column must exist, but got --id {id_col!r}; pick one of {list(frame.columns)[:8]}.")

    if label is not None:
        label = label.strip().lower()
    if label is not None and label in frame.columns:
        if not _numeric(frame, label):
            raise ValueError(
                f"the label must be numeric, but column {label!r} has dtype {frame[label].dtype}; pick a numeric --label."
            )
        y = frame[label].to_numpy(dtype=float)
        if require_label:
            bad = ~np.isfinite(y)
            if bad.any():
                raise ValueError(
                    f"label values must be finite, but {label!r} has {int(bad.sum())} NaN/inf row(s); drop those rows."
                )
            if np.ptp(y) == 0:
                raise ValueError(
                    f"the label must vary, but {label!r} is constant ({y[0]:g}) over {len(y)} rows; nothing can be learned."
                )
    elif require_label:
        raise ValueError(
            f"the label column must exist, but got --label {label!r}; pick one of {list(frame.columns)[:8]}."
        )
    else:
        label = None

    skip = {id_col, label}
    features, groups, unknown = [], {}, []
    for col in frame.columns:
        if col in skip:
            continue
        group = feature_group(col)
        if not _numeric(frame, col):
            if group != "other":  # named as a feature: dropping it silently would fit without it
                _refuse_non_numeric(frame, col)
            continue
        if group == "other":
            unknown.append(col)
        features.append(col)
        groups[col] = group
    if unknown:
        log.warning(
            "%d numeric column(s) are neither prefixed (static_/dyn_/hp_) nor TuneAhead feature names and are "
            "used as group 'other': %s",
            len(unknown),
            ", ".join(unknown[:10]),
        )
    if not [f for f in features if groups[f] != "depth"]:
        raise ValueError(
            "the meta-dataset needs numeric feature columns, but found none; add static_/dyn_/hp_ columns."
        )
    if "depth" in features and not (frame["depth"].to_numpy(dtype=float) > 0).all():
        raise ValueError("depth must be a positive number of probe steps, but some rows are <= 0 or NaN; fix them.")
    check_finite_features(frame, features)
    frame = frame.reset_index(drop=True)
    frame[id_col] = frame[id_col].astype(str)
    return MetaDataset(frame=frame, id_col=id_col, label_col=label, features=tuple(features), groups=groups)


def select_features(meta: MetaDataset, which: str) -> tuple:
    """Feature subset: ``all``; ``static`` (static + hyperparameter); ``dynamic`` (dynamic + hp + depth)."""
    keep = {
        "all": set(GROUPS),
        "static": {"static", "hyperparameter"},
        "dynamic": {"dynamic", "hyperparameter", "depth"},
    }
    if which not in keep:
        raise ValueError(f"features must be one of all/static/dynamic, but got {which!r}; pick one of those.")
    chosen = tuple(f for f in meta.features if meta.groups[f] in keep[which])
    core = "static" if which == "static" else "dynamic"
    if which != "all" and not any(meta.groups[f] == core for f in chosen):
        raise ValueError(
            f"--features {which} needs {core} feature columns, but the meta-dataset has none; "
            "use --features all or add them."
        )
    return chosen
