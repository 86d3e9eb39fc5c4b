"""Instruction datasets: Alpaca, Dolly and chat records, as JSONL/JSON (optionally gzipped) or an HF folder.

Every record becomes one :class:`Example` ``(input, output)``: Alpaca ``instruction`` + ``input``,
Dolly ``instruction`` + ``context``, or the prompt turns of a chat before its last assistant turn
form ``input``; ``output`` / ``response`` / the last assistant turn form ``output``.
"""

from __future__ import annotations

import gzip
import json
import os
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
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


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
                    yield record, f"{name}:{lineno}"
            else:
                try:
                    data = json.load(fh)
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"a .json dataset must be valid JSON, but {name}:{exc.lineno} is malformed ({exc.msg}); fix the file."
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
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
        raise ValueError(
            f"dataset files must be UTF-8 text (optionally gzipped), but {name} could not be decoded ({type(exc).__name__}); "
            "re-encode it as UTF-8 JSONL."
        ) from None


def _records_from_hf_folder(path: Path) -> Iterator[tuple[Any, str]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(
            f"a dataset folder must be saved with datasets.save_to_disk, but {str(path)!r} is not ({exc}); "
            "pass a JSONL file or a save_to_disk folder."
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise ValueError(
                f"a DatasetDict folder must have a 'train' split, but {str(path)!r} has {sorted(ds)}; save the split you want alone."
            )
        ds = ds["train"]
    for i, record in enumerate(ds):
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
    if limit is not None and (not isinstance(limit, int) or limit < 1):
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
