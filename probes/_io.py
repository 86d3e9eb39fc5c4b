"""Table and JSON I/O shared by every command: CSV or Parquet by extension, atomic writes."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = ["read_table", "write_table", "write_json", "read_json", "read_text", "read_toml", "atomic_path", "table_format",
           "json_scalar"]

_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def table_format(path: str | os.PathLike) -> str:
    """Return ``"csv"`` or ``"parquet"`` from the file extension, or raise ``ValueError``."""
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:
        raise ValueError(
            f"table files must end in .csv or .parquet, but got {str(path)!r}; rename the file or pick one of those extensions."
        )
    return _FORMATS[suffix]


def read_text(path: str | os.PathLike, *, what: str = "input file", fix: str = "check the path") -> str:
    """The text of a UTF-8 file (a leading byte-order mark is dropped), or one contract ``ValueError``.

    Missing paths, folders, devices, unreadable files and undecodable bytes each get their own line.
    """
    p = Path(path)
    shown = str(path)
    if not p.exists():
        raise ValueError(f"{what} must exist, but got {shown!r}; {fix}.")
    if p.is_dir():
        raise ValueError(f"{what} must be a file, but got {shown!r}, which is a folder; pass the file inside it.")
    if not p.is_file():
        raise ValueError(f"{what} must be a regular file, but got {shown!r} (a device, pipe or socket); pass a file.")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ValueError(f"{what} must be readable, but got {shown!r} ({exc.strerror or type(exc).__name__}); "
                         "check its permissions.") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} must be UTF-8 text, but {shown!r} has byte 0x{data[exc.start]:02x} at offset {exc.start} "
                         "that is not UTF-8; re-save it as UTF-8.") from None


def read_toml(path: str | os.PathLike, *, what: str = "TOML file", fix: str = "check the path") -> dict:
    """Parse a TOML file (UTF-8, byte-order mark allowed) into a dict, or one contract ``ValueError``."""
    import tomllib

    text = read_text(path, what=what, fix=fix)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{what} {str(path)!r} must be valid TOML, but parsing failed ({exc}); fix the syntax.") from None
    except RecursionError:
        raise ValueError(f"{what} {str(path)!r} must be TOML nested at most a few hundred levels, but got deeper nesting; "
                         "flatten the file.") from None


def read_table(path: str | os.PathLike):
    """Read a CSV or Parquet table into a pandas DataFrame with lower-case column names.

    CSV may start with a UTF-8 byte-order mark. Any failure of the parser (damaged Parquet,
    undecodable CSV, ...) becomes one contract ``ValueError``; so do two columns whose names are
    equal once lower-cased.
    """
    fmt = table_format(path)
    p = Path(path)
    shown = str(path)
    if not p.exists():
        raise ValueError(f"input table must exist, but got {shown!r}; check the path.")
    if not p.is_file():
        raise ValueError(f"input table must be a file, but got {shown!r}, which is not a regular file; pass a CSV or Parquet file.")
    import pandas as pd  # after the cheap checks: a wrong path is refused without loading pandas
    try:
        if fmt == "csv":
            frame = pd.read_csv(p, encoding="utf-8-sig", low_memory=False)
        else:
            frame = pd.read_parquet(p)
    except pd.errors.EmptyDataError:
        raise ValueError(f"a {fmt} table must have a header row, but {shown!r} is empty; pass a table with columns.") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"a csv table must be UTF-8 text, but {shown!r} has a non-UTF-8 byte at offset {exc.start}; "
                         "re-save it as UTF-8 CSV.") from None
    except OSError as exc:
        raise ValueError(f"input table must be readable, but got {shown!r} ({exc}); check the file and its permissions.") from None
    except Exception as exc:  # parsers of untrusted bytes raise many types (ParserError, ArrowInvalid, ...)
        detail = " ".join(str(exc).split())[:200]
        raise ValueError(f"input table must be a valid {fmt} file, but {shown!r} could not be parsed "
                         f"({type(exc).__name__}: {detail}); check the file format.") from None
    names = [str(c).strip().lower() for c in frame.columns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"column names must be unique ignoring case, but {shown!r} repeats {dupes[:4]}; rename the columns.")
    frame.columns = names
    return frame


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A killed or failing writer never leaves a half-written ``path`` behind.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files; give the result the umask's usual mode
            umask = os.umask(0)
            os.umask(umask)
            tmp_path.chmod(0o666 & ~umask)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_table(frame, path: str | os.PathLike) -> Path:
    """Write a DataFrame as CSV or Parquet (by extension), atomically."""
    fmt = table_format(path)
    with atomic_path(path) as tmp:
        if fmt == "csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
    return Path(path)


def write_json(obj: Any, path: str | os.PathLike, *, indent: int | None = 2) -> Path:
    """Write JSON atomically (sorted keys, so the same object gives the same bytes)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, sort_keys=True, allow_nan=False) + "\n")
    return Path(path)


def _refuse_constant(name: str):
    raise ValueError(name)


def read_json(path: str | os.PathLike, *, what: str = "JSON file",
              fix: str = "regenerate it with plan-probe") -> Any:
    """Read a JSON file (UTF-8, byte-order mark allowed) into Python objects.

    A missing, unreadable, undecodable, malformed or too deeply nested file, and the non-standard
    constants ``NaN``/``Infinity`` (plan-probe never writes them), each become one contract
    ``ValueError`` naming ``what`` and ending with ``fix``.
    """
    text = read_text(path, what=what, fix="check the path")
    shown = str(path)
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} must be valid JSON, but {shown!r} is malformed at line {exc.lineno} column {exc.colno} "
                         f"({exc.msg}); {fix}.") from None
    except RecursionError:
        raise ValueError(f"{what} must be JSON nested at most a few hundred levels, but {shown!r} is nested deeper; "
                         f"{fix}.") from None
    except ValueError as exc:  # from _refuse_constant
        raise ValueError(f"{what} must hold finite numbers only, but {shown!r} contains {exc}; {fix}.") from None


def json_scalar(value):
    """A table cell as a JSON value: floats finite or None, numpy scalars as Python numbers, NA as None."""
    import numpy as np

    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if value is None or type(value).__name__ == "NAType":
        return None
    return value
