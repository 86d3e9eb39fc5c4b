"""Table and JSON I/O shared by every command: CSV or Parquet by extension, atomic writes."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = ["read_table", "write_table", "write_json", "read_json", "atomic_path", "table_format", "json_scalar"]

_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def table_format(path: str | os.PathLike) -> str:
    """Return ``"csv"`` or ``"parquet"`` from the file extension, or raise ``ValueError``."""
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:
        raise ValueError(
            f"table files must end in .csv or .parquet, but got {str(path)!r}; rename the file or pick one of those extensions."
        )
    return _FORMATS[suffix]


def read_table(path: str | os.PathLike):
    """Read a CSV or Parquet table into a pandas DataFrame with lower-case column names."""
    import pandas as pd

    fmt = table_format(path)
    if not Path(path).is_file():
        raise ValueError(f"input table must exist, but got {str(path)!r}; check the path.")
    try:
        frame = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"could not read {fmt} table {str(path)!r} ({type(exc).__name__}: {exc}); check the file format.") from None
    frame.columns = [str(c).strip().lower() for c in frame.columns]
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


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, turning a missing or malformed file into a clear ``ValueError``."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"JSON file must exist, but got {str(path)!r}; check the path.")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(path)!r} is not valid JSON ({exc}); regenerate it with plan-probe.") from None


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
