"""Versioned file formats.

Every file plan-probe writes and later reads back (risk model, predictor sidecar, probe config,
probe and static records, run summary, meta-dataset run records, ...) carries a ``format`` name and
an integer ``schema_version``. A reader accepts every schema version it knows, migrating older
documents step by step to the current one, and refuses a newer schema with one clear line. The
package version that wrote a file is still recorded (``plan_probe_version``) but never compared:
a new release reads the files of an old one, so the shipped defaults survive a version bump.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

__all__ = ["FileFormat", "STATIC_DESCRIPTORS", "PROBE_CONFIG", "STATIC_RECORD", "PROBE_RECORD", "RUN_SUMMARY",
           "PORTFOLIO", "PLAN_SETTINGS", "META_RUN_RECORD", "MODEL_CACHE"]


@dataclass(frozen=True)
class FileFormat:
    """A named, versioned JSON document shape.

    Parameters
    ----------
    name : str
        The ``format`` value, e.g. ``"plan-probe/risk-model"``.
    schema_version : int
        The version this release writes.
    regenerate : str
        How a user makes a fresh file (ends the error messages), e.g. ``"refit it with plan-probe fit-risk"``.
    migrations : dict
        ``{v: f}`` with ``f`` turning a version-``v`` document into a version-``v + 1`` one.
    legacy_names : dict
        Older ``format`` strings that had no ``schema_version``, mapped to the schema version they are.
    unmarked_version : int, optional
        The schema version of a document with no ``format`` key at all (files written before their
        format was named); None refuses such documents.
    """

    name: str
    schema_version: int
    regenerate: str
    migrations: dict[int, Callable[[dict], dict]] = field(default_factory=dict)
    legacy_names: dict[str, int] = field(default_factory=dict)
    unmarked_version: int | None = None

    def stamp(self, document: dict) -> dict:
        """``document`` with this format's name, current schema version and the writing package version."""
        from plan_probe.probes._version import __version__

        return {"format": self.name, "schema_version": self.schema_version, "plan_probe_version": __version__, **document}

    def schema_of(self, document, source: str) -> int:
        """The schema version of ``document``; ``ValueError`` when it is not this format at all."""
        if not isinstance(document, dict):
            raise ValueError(f"{source} must be a JSON object of format {self.name!r}, but got {type(document).__name__}; "
                             f"{self.regenerate}.")
        name = document.get("format")
        if name is None and self.unmarked_version is not None:
            return self.unmarked_version
        if name in self.legacy_names and "schema_version" not in document:
            return self.legacy_names[name]
        if name != self.name:
            raise ValueError(f"{source} must have format {self.name!r}, but got format={name!r}; {self.regenerate}.")
        version = document.get("schema_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"{source} must carry a positive integer schema_version, but got schema_version={version!r}; "
                             f"{self.regenerate}.")
        return version

    def read(self, document, source: str) -> dict:
        """Check and migrate ``document`` to the current schema; returns a new dict."""
        version = self.schema_of(document, source)
        if version > self.schema_version:
            raise ValueError(
                f"{source} must have a schema_version this plan-probe reads (<= {self.schema_version}), but got "
                f"schema_version={version}; upgrade plan-probe (pip install -U plan-probe) or {self.regenerate}."
            )
        doc = dict(document)
        while version < self.schema_version:
            if version not in self.migrations:
                raise ValueError(f"{source} has schema_version={version}, which this plan-probe no longer reads; "
                                 f"{self.regenerate}.")
            try:
                doc = self.migrations[version](doc)
            except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:  # a damaged older document
                raise ValueError(f"{source} must be a well-formed schema-{version} document to be migrated, but its migration "
                                 f"to schema {version + 1} failed ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); "
                                 f"{self.regenerate}.") from None
            version += 1
        doc["format"], doc["schema_version"] = self.name, self.schema_version
        return doc


def _static_v1_to_v2(doc: dict) -> dict:
    """Schema 2 adds ``metadata.se`` (standard errors of the sampled descriptors) and ``metadata.samples``.

    Schema-1 files used one sample (``sampled_n``) for every sampled key and recorded no SEs: they
    become None (unknown), except 0 where the sample was the whole dataset.
    """
    doc = dict(doc)
    meta = dict(doc.get("metadata") or {})
    n, m = meta.get("n_examples"), meta.get("sampled_n")
    exact = n is not None and m is not None and m >= n
    meta.setdefault("se", {k: (0.0 if exact else None) for k in meta.get("sampled_keys", [])})
    has_ppl = "static_ref_ppl_mean" in (doc.get("descriptors") or {})
    meta.setdefault("samples", {"embedding": m, "reference_ppl": m if has_ppl else None})
    doc["metadata"] = meta
    return doc


#: Output of ``plan-probe static``: the descriptors of one dataset and their sampling metadata.
#: Schema 3 adds the descriptor ``static_output_majority_share``; older files do not have it (a reader
#: that needs it recomputes), so 2 -> 3 changes nothing else.
STATIC_DESCRIPTORS = FileFormat("plan-probe/static-descriptors", 3, "recompute it with plan-probe static",
                                migrations={1: _static_v1_to_v2, 2: dict})
#: A probe configuration (``ProbeConfig.to_json``); schema 1 had ``kind: probe_config`` and no format.
def _probe_config_v1_to_v2(doc: dict) -> dict:
    """Schema 2 adds ``flatness_sample`` and ``ood_sample``; schema-1 configs measured on every example."""
    doc = dict(doc)
    if isinstance(doc.get("config"), dict):
        doc["config"] = {"flatness_sample": None, "ood_sample": None, **doc["config"]}
    return doc


def _probe_config_v2_to_v3(doc: dict) -> dict:
    """Schema 3 adds ``lr_decay_steps``; schema-2 configs kept the learning rate constant (0)."""
    doc = dict(doc)
    if isinstance(doc.get("config"), dict):
        doc["config"] = {"lr_decay_steps": 0, **doc["config"]}
    return doc


def _probe_config_v3_to_v4(doc: dict) -> dict:
    """Schema 4 adds ``readout_cooldown``; schema-3 probes had no readout (0)."""
    doc = dict(doc)
    if isinstance(doc.get("config"), dict):
        doc["config"] = {"readout_cooldown": 0, **doc["config"]}
    return doc


PROBE_CONFIG = FileFormat("plan-probe/probe-config", 4, "write it with ProbeConfig.to_json()",
                          migrations={1: _probe_config_v1_to_v2, 2: _probe_config_v2_to_v3, 3: _probe_config_v3_to_v4})
#: ``plan-probe run``'s resumable records: DIR/static/<name>.json and DIR/probes/<name>.json.
STATIC_RECORD = FileFormat("plan-probe/static-record", 3, "delete it and rerun plan-probe run",
                           migrations={1: _static_v1_to_v2, 2: dict})
PROBE_RECORD = FileFormat("plan-probe/probe-record", 1, "delete it and rerun plan-probe run")


def _summary_v3_to_v4(doc: dict) -> dict:
    """Schema 4 records the baseline the gains were measured against; schema-3 runs had none (null)."""
    return {"baseline": None, **doc}


def _portfolio_v3_to_v4(doc: dict) -> dict:
    """Schema 4 adds the ``baseline`` setting; schema-3 portfolios had none (null)."""
    return {**doc, "settings": {"baseline": None, **doc.get("settings", {})}}


#: ``plan-probe run``'s DIR/summary.json, and the portfolio description it embeds.
def _summary_v1_to_v2(doc: dict) -> dict:
    """Schema 2 records the plan's objective (schema 1 runs all used the risk objective)."""
    return {**doc, "totals": {**doc.get("totals", {}), "objective": "risk"}}


def _portfolio_v1_to_v2(doc: dict) -> dict:
    """Schema 2 adds the objective, the decision costs and each candidate's full_cost."""
    settings = {"objective": "risk", "launch_cost": None, "kill_cost": None, **doc.get("settings", {})}
    candidates = [{"full_cost": None, **c} for c in doc.get("candidates", [])]
    return {**doc, "settings": settings, "candidates": candidates}


def _summary_v4_to_v5(doc: dict) -> dict:
    """Schema 5 records the decision settings used; schema-4 runs did not (null)."""
    return {"decision_settings": None, **doc}


#: Schema 2 (issue #20): the plan's objective, decision costs and full_cost. Schema 3 (issue #14): the
#: portfolio's risk_weight / target_rmse may be null (relative defaults) and the summary adds
#: plan_settings (resolved) and risk_model_ok; schema-2 documents are valid as they are (identity).
#: Schema 4 (both): the portfolio's ``baseline`` setting and the summary's ``baseline`` (the "don't fine-tune"
#: score the gains are measured against); older documents had none, which reads as null.
#: Schema 5: ``decision_settings``, the decision objective's settings as used (with the risk curves' anchor);
#: older runs did not record them (null).
RUN_SUMMARY = FileFormat("plan-probe/run-summary", 5, "rerun plan-probe run",
                         migrations={1: _summary_v1_to_v2, 2: dict, 3: _summary_v3_to_v4, 4: _summary_v4_to_v5})


def _portfolio_v5_to_v6(doc: dict) -> dict:
    """Schema 6 adds ``anchor``; schema-5 plans were made with the risk curves as fitted (false)."""
    return {**doc, "settings": {"anchor": False, **doc.get("settings", {})}}


def _portfolio_v4_to_v5(doc: dict) -> dict:
    """Schema 5 adds the ``reference`` and ``readout_cooldown`` settings; schema-4 portfolios had no readout (null)."""
    return {**doc, "settings": {"reference": None, "readout_cooldown": 10, **doc.get("settings", {})}}


#: Schema 5 (the portfolio alone): the probe readout's ``reference`` set and ``readout_cooldown``.
#: Schema 6: ``anchor`` (the decision objective's risk curves tied to the static prior).
PORTFOLIO = FileFormat("plan-probe/portfolio", 6, "rerun plan-probe run",
                       migrations={1: _portfolio_v1_to_v2, 2: dict, 3: _portfolio_v3_to_v4, 4: _portfolio_v4_to_v5,
                                   5: _portfolio_v5_to_v6})
#: Planning settings as stored next to a plan. Schema 2 (issue #14): ``risk_weight`` and
#: ``target_rmse`` may be null (relative to the risk model's label scale); a schema-1 document always
#: holds numbers, which mean the same in schema 2, so the migration is the identity.
PLAN_SETTINGS = FileFormat("plan-probe/plan-settings", 2, "recreate them with PlanSettings", migrations={1: dict})
#: One run of a built meta-dataset (``build-meta``'s records/<key>.json).
META_RUN_RECORD = FileFormat("plan-probe/meta-run-record", 1, "rebuild it with plan-probe build-meta", unmarked_version=1)
#: The completion marker of a converted model in the cache (written last, so its presence means complete).
MODEL_CACHE = FileFormat("plan-probe/model-cache", 1, "delete the cache folder; the next load converts the model again")
