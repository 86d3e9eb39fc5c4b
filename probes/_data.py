"""Instruction datasets: Alpaca, Dolly and chat records, as JSONL/JSON (optionally gzipped) or an HF folder.

Every record becomes one :class:`Example` ``(input, output)``: Alpaca ``instruction`` + ``input``,
Dolly ``instruction`` + ``context``, or the prompt turns of a chat before its last assistant turn
form ``input``; ``output`` / ``response`` / the last assistant turn form ``output``.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

__all__ = ["Example", "load_examples", "example_from_record"]


@dataclass(frozen=True)
class Example:
    """One instruction-tuning example: the prompt text and the target response text."""

    input: str
    output: str


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def example_from_record(record: Any, where: str) -> Example:
    """Turn one Alpaca / Dolly / chat record into an :class:`Example`.

    ``where`` (e.g. ``"data.jsonl:12"``) names the record in error messages.
    """
    if not isinstance(record, dict):
        raise ValueError(
            f"each record must be a JSON object, but got {type(record).__name__} at {where}; "
            "write one Alpaca/Dolly/chat object per record."
        )
    if "messages" in record:
        return _from_chat(record["messages"], where)
    instruction = _text(record.get("instruction"))
    context = _text(record.get("input")) or _text(record.get("context"))
    output = _text(record.get("output")) or _text(record.get("response"))
    prompt = f"{instruction}\n\n{context}" if instruction and context else (instruction or context)
    if not prompt or not output:
        keys = sorted(record)
        raise ValueError(
            f"each record needs a non-empty prompt and response, but got keys {keys} without usable text at {where}; "
            "use Alpaca (instruction, input, output), Dolly (instruction, context, response) or chat (messages) form."
        )
    return Example(prompt, output)


def _from_chat(messages: Any, where: str) -> Example:
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError(
            f"'messages' must be a list of {{role, content}} objects, but got {type(messages).__name__} at {where}; "
            "fix the chat record."
        )
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant" and _text(m.get("content"))), default=None)
    turns = [m for m in messages[: last or 0] if _text(m.get("content"))]
    if last is None or not turns:
        raise ValueError(
            f"a chat record needs prompt turns followed by a non-empty assistant turn, but got none at {where}; "
            "add a user turn and an assistant reply."
        )
    if len(turns) == 1:
        prompt = _text(turns[0]["content"])
    else:  # several prompt turns: keep who said what
        prompt = "\n\n".join(f"{m.get('role', 'user')}: {_text(m['content'])}" for m in turns)
    return Example(prompt, _text(messages[last]["content"]))


def _open_text(path: Path):
    # utf-8-sig: files saved by Windows editors and Excel start with a byte-order mark
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")


def _records_from_file(path: Path) -> Iterator[tuple[Any, str]]:
    name = path.name
    stem = path.name[:-3] if path.suffix == ".gz" else path.name
    try:
        with _open_text(path) as fh:
            if stem.endswith(".jsonl"):
                for lineno, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ValueError(
                            f"each line must be one JSON object, but {name}:{lineno} is malformed ({exc.msg}); fix or remove that line."
                        ) from None
                    except RecursionError:
                        raise ValueError(
                            f"each line must be a JSON object nested at most a few hundred levels, but {name}:{lineno} "
                            "is nested deeper; fix or remove that line."
                        ) from None
                    yield record, f"{name}:{lineno}"
            else:
                try:
                    data = json.load(fh)
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"a .json dataset must be valid JSON, but {name}:{exc.lineno} is malformed ({exc.msg}); fix the file."
                    ) from None
                except RecursionError:
                    raise ValueError(
                        f"a .json dataset must be nested at most a few hundred levels, but {name} is nested deeper; fix the file."
                    ) from None
                if isinstance(data, dict) and isinstance(data.get("data"), list):
                    data = data["data"]
                if not isinstance(data, list):
                    raise ValueError(
                        f"a .json dataset must hold a list of records, but {name} holds a {type(data).__name__}; "
                        "wrap the records in a JSON list or use JSONL."
                    )
                for i, record in enumerate(data):
                    yield record, f"{name}[{i}]"
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"dataset files must be UTF-8 text (optionally gzipped), but {name} could not be decoded (a byte at offset "
            f"{exc.start} is not UTF-8); re-encode it as UTF-8 JSONL."
        ) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ValueError(
            f"a .gz dataset must be a complete gzip stream, but {name} is damaged or truncated ({type(exc).__name__}); "
            "compress it again with gzip."
        ) from None
    except OSError as exc:
        raise ValueError(
            f"dataset files must be readable, but {name} could not be read ({exc.strerror or type(exc).__name__}); "
            "check the file and its permissions."
        ) from None


_HF_MARKERS = ("state.json", "dataset_dict.json")


def _records_from_hf_folder(path: Path) -> Iterator[tuple[Any, str]]:
    if not any((path / m).is_file() for m in _HF_MARKERS):  # checked before importing datasets (seconds)
        raise ValueError(
            f"a dataset folder must be saved with datasets.save_to_disk ({' or '.join(_HF_MARKERS)} inside), but "
            f"{str(path)!r} has neither; pass a JSONL file or a save_to_disk folder."
        )
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # a damaged folder fails in datasets, pyarrow or json with many exception types
        detail = " ".join(str(exc).split())[:200]
        raise ValueError(
            f"a dataset folder must be saved with datasets.save_to_disk, but {str(path)!r} could not be loaded "
            f"({type(exc).__name__}: {detail}); pass a JSONL file or a save_to_disk folder."
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise ValueError(
                f"a DatasetDict folder must have a 'train' split, but {str(path)!r} has {sorted(ds)}; save the split you want alone."
            )
        ds = ds["train"]
    records = iter(ds)
    for i in range(len(ds)):
        try:
            record = next(records)
        except Exception as exc:  # a damaged Arrow file can fail on read, after a lazy load
            raise ValueError(
                f"a dataset folder's records must be readable, but {path.name}[{i}] could not be read "
                f"({type(exc).__name__}); save the dataset again with datasets.save_to_disk."
            ) from None
        yield record, f"{path.name}[{i}]"


def load_examples(path: str | os.PathLike, *, limit: int | None = None) -> list[Example]:
    """Load an instruction dataset into a list of :class:`Example`.

    Parameters
    ----------
    path : path-like
        ``.jsonl``, ``.json`` (a list of records), either optionally ``.gz``, or a folder written by
        ``datasets.Dataset.save_to_disk``.
    limit : int, optional
        Keep only the first ``limit`` records (in file order).

    Returns
    -------
    list of Example

    Raises
    ------
    ValueError
        On a missing file, a malformed line (file and line number named), an undecodable file, a
        record without usable text, or an empty dataset.
    """
    p = Path(path)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be a positive integer, but got {limit=}; pass e.g. 1000 or leave it out.")
    if p.is_dir():
        records: Iterable[tuple[Any, str]] = _records_from_hf_folder(p)
    elif p.is_file():
        stem = p.name[:-3] if p.suffix == ".gz" else p.name
        if not (stem.endswith(".jsonl") or stem.endswith(".json")):
            raise ValueError(
                f"dataset files must end in .jsonl, .json (optionally .gz), but got {p.name!r}; rename or convert the file."
            )
        records = _records_from_file(p)
    elif p.exists():
        raise ValueError(f"dataset must be a file or folder, but got {str(path)!r} (a device, pipe or socket); pass a JSONL file.")
    else:
        raise ValueError(f"dataset must exist, but got {str(path)!r}; check the path.")
    examples: list[Example] = []
    for record, where in records:
        examples.append(example_from_record(record, where))
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise ValueError(f"a dataset must hold at least one record, but {p.name!r} is empty; pass a non-empty dataset.")
    return examples
