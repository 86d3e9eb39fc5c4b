"""Shared input validation: typed values (booleans are not numbers) and input/output path rules.

Every check raises one ``ValueError`` in the contract form ``<rule>, but got <value>; <fix>.`` (the
CLI prefixes ``error: `` and exits with status 2); see docs/reference/errors.md. The path rules
run before a command creates anything, so a rejected command leaves no file or folder behind and
never overwrites an input.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

__all__ = ["real", "integer", "check_io_paths", "nearest_existing"]


def real(where: str, value: Any, *, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False, fix: str | None = None) -> float:
    """``value`` as a finite float in the given range; ``bool`` and strings are refused.

    ``low``/``high`` are inclusive unless ``low_open``/``high_open``.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        rule = "a finite number"
        if low is not None or high is not None:
            lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
            hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
            if low is not None and high is not None:
                rule = f"a number in {lo}, {hi}"
            elif low is not None:
                rule = f"a number {'>' if low_open else '>='} {low:g}"
            else:
                rule = f"a number {'<' if high_open else '<='} {high:g}"
        raise ValueError(f"{where} must be {rule}, but got {value!r} ({type(value).__name__}); "
                         f"{fix or f'set {where} to {rule}'}.")
    return float(value)


def integer(where: str, value: Any, *, low: int | None = None, high: int | None = None, fix: str | None = None) -> int:
    """``value`` as an int in ``[low, high]``; ``bool``, strings and non-integral floats are refused."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        ok, value = True, int(value)
    if ok and low is not None:
        ok = value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        rule = "an integer" + ("" if low is None else f" >= {low}") + ("" if high is None else f" <= {high}")
        raise ValueError(f"{where} must be {rule}, but got {value!r} ({type(value).__name__}); "
                         f"{fix or f'set {where} to {rule}'}.")
    return int(value)


def nearest_existing(path: Path) -> Path:
    """The path itself, or its nearest ancestor that exists (``lexists``: a dangling link counts)."""
    p = Path(os.path.abspath(path))
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _resolved(path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _check_writable(flag: str, path: Path, want_dir: bool) -> None:
    shown = str(path)
    if os.path.islink(path) and not os.path.exists(path):
        raise ValueError(f"{flag} must not be a dangling symbolic link, but got {shown!r}; remove the link or pick another path.")
    if path.exists():
        if want_dir and not path.is_dir():
            raise ValueError(f"{flag} must be a directory, but got {shown!r}, which is a file; pick a folder path.")
        if not want_dir and path.is_dir():
            raise ValueError(f"{flag} must be a file path, but got {shown!r}, which is a folder; "
                             "pass a file name inside it.")
        if not want_dir and not path.is_file():
            raise ValueError(f"{flag} must be a regular file path, but got {shown!r} (a device, pipe or socket); "
                             "pick another path.")
    anchor = nearest_existing(path)
    if not path.exists() and not anchor.is_dir():
        raise ValueError(f"{flag} must lie in a folder, but got {shown!r}, where {str(anchor)!r} is a file; "
                         "pick a path under a folder.")
    writable_at = anchor if not path.exists() else path if path.is_dir() else path.parent
    if not os.access(writable_at, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} must be writable, but got {shown!r} ({str(writable_at)!r} is not writable); "
                         "pick a folder you can write to.")


def check_io_paths(inputs: Iterable = (), outputs: Iterable = (), output_dirs: Iterable = (),
                   output_names: dict | None = None) -> None:
    """Refuse output paths that are unusable or would overwrite an input, before anything is written.

    Parameters
    ----------
    inputs : iterable of (flag, path) or path
        Files and folders the command reads (missing ones are ignored here: their readers report them).
    outputs : iterable of (flag, path)
        Files the command writes.
    output_dirs : iterable of (flag, path)
        Folders the command creates or writes into.
    output_names : dict, optional
        ``{flag: [relative file names]}`` of files written inside an output folder; each is checked
        against the inputs too.

    Rules: an output must not be (or resolve to, through links, ``..`` or a hard link) an input; an
    output file must not overwrite a file inside an input folder; an output folder must not be an
    input file or folder; a file output must not be an existing folder (and vice versa); every
    output must lie under a folder (not ``existing_file/sub``) that can be written.
    """
    named_inputs = [(i if isinstance(i, tuple) else ("input", i)) for i in inputs]
    named_inputs = [(flag, Path(os.path.expanduser(str(p)))) for flag, p in named_inputs if p is not None and str(p) != ""]
    existing = [(flag, p, _resolved(p)) for flag, p in named_inputs if os.path.exists(p)]
    files = [(flag, Path(os.path.expanduser(str(p)))) for flag, p in outputs if p is not None]
    dirs = [(flag, Path(os.path.expanduser(str(p)))) for flag, p in output_dirs if p is not None]
    for flag, p in dirs:
        _check_writable(flag, p, want_dir=True)
        for name in (output_names or {}).get(flag, ()):
            files.append((f"{flag} (its {name})", p / name))
    for flag, p in files:
        if flag.split(" (")[0] not in {f for f, _ in dirs}:
            _check_writable(flag, p, want_dir=False)
    seen: dict[Path, str] = {}
    for flag, p in files + dirs:
        target = _resolved(p)
        if target in seen and seen[target] != flag and " (its " not in flag:
            raise ValueError(f"every output must have its own path, but {flag} and {seen[target]} are both {str(p)!r}; "
                             "pass different paths.")
        seen.setdefault(target, flag)
        for in_flag, in_path, in_target in existing:
            clash = target == in_target or (os.path.exists(p) and _same(p, in_path))
            inside = in_path.is_dir() and (target == in_target or in_target in target.parents) and os.path.exists(target) \
                and (flag, p) in files
            if clash or inside:
                what = "is" if clash else "lies inside"
                raise ValueError(
                    f"an output must not overwrite an input, but {flag} {str(p)!r} {what} the {in_flag} {str(in_path)!r}; "
                    "pass another output path."
                )
