"""Heads tier: linear and small MLP heads trained with SGD (JAX) on frozen MiniLM embeddings.

One *run* is one prefix seed of a task. The prefix is trained to the horizon ``T``; its accuracy
on the label set's fixed held-out pool (``test_size`` clean examples, the same for every variant
and recipe of the label set) is the run's label. At every probe depth c the run records what a
user's probe would see, with the tool's own feature code:

* ``dyn_*``: :func:`plan_probe.probes._dynamics.dynamic_features` of steps 1..c (loss, gradient
  norm, consecutive-gradient cosine and sparsity per step; parameter change; flatness = mean loss
  increase under ``flatness_samples`` Gaussian perturbations of relative size ``flatness_sigma`` on
  512 training examples; forgetting = the drop in mean predictive entropy on the tool's fixed
  out-of-domain sentences, the head's analogue of the LLM probe's loss change off-domain);
* ``static_*``: :func:`plan_probe.probes._static.static_descriptors` of the training set as
  (text, class name) examples, with this tier's MiniLM embeddings and no LLM (so without the two
  reference-perplexity columns), computed once per dataset variant;
* ``hp_*``: the recipe.

Tasks of a ``forks = true`` grid block also fork ``n_forks`` continuations at every fork depth
(new data order and dropout seeds, all forks in one ``jax.vmap``) and score their finals on the
same pool: fork variances for the decay-law checks (docs/theory.md §2).

Shapes are padded (training rows to the build's largest training set, classes to a few buckets,
masked) and the recipe's numbers are traced arguments, so one compilation serves every task with
the same head width and batch size.
"""

from __future__ import annotations

import functools
import json
import logging
from importlib import resources
from pathlib import Path

import numpy as np

from plan_probe.experiments.metadataset._embed import Embedder
from plan_probe.experiments.metadataset._head_nets import init_head_params as _init_params
from plan_probe.experiments.metadataset._head_nets import jax_modules as _jax
from plan_probe.experiments.metadataset._head_nets import seed_int as _seed_int
from plan_probe.experiments.metadataset._heads_data import build_variant, load_universe
from plan_probe.experiments.metadataset._spec import TaskConfig, config_hash
from plan_probe.probes._io import read_json, write_json

__all__ = ["HeadsRunner", "CLASS_BUCKETS", "STATIC_SAMPLE"]

log = logging.getLogger(__name__)

#: Output widths the class count is padded to (masked logits), so few shapes are compiled.
CLASS_BUCKETS = (4, 16, 48)
#: Examples behind the sampled static descriptors (embedding outliers, IO similarity, diversity).
STATIC_SAMPLE = 256
#: Training examples the flatness probe uses.
FLAT_ROWS = 512
SPARSITY_TOL = 1e-3  # the tool's ProbeConfig default


def _bucket(k: int) -> int:
    for b in CLASS_BUCKETS:
        if k <= b:
            return b
    raise ValueError(f"a label set must have at most {CLASS_BUCKETS[-1]} classes, but got {k}; use a class subset.")


def ood_texts() -> list[str]:
    """The tool's fixed out-of-domain sentences (``probes/data/ood_sentences.json``)."""
    raw = resources.files("plan_probe.probes").joinpath("data/ood_sentences.json").read_text(encoding="utf-8")
    data = json.loads(raw)
    return list(data["sentences"] if isinstance(data, dict) else data)


# ----------------------------------------------------------------------------- JAX training


@functools.lru_cache(maxsize=None)
def _compiled(hidden: int, batch_size: int, horizon: int):
    """JIT-compiled prefix, fork, accuracy and probe functions for one head width and batch size.

    ``hp`` = (lr, rho, t0, weight_decay, dropout) is traced: the step size is
    ``lr * (1 + t / t0) ** -rho``; ``n`` (real training rows) and ``mask`` (0 for real classes,
    -1e9 for padding) are traced too.
    """
    jax, jnp = _jax()

    def forward(params, x, mask, key=None, dropout=0.0):
        if hidden == 0:
            return x @ params["w"] + params["b"] + mask
        h = jax.nn.relu(x @ params["w1"] + params["b1"])
        if key is not None:
            keep = jax.random.bernoulli(key, 1.0 - dropout, h.shape)
            h = jnp.where(keep, h / (1.0 - dropout), 0.0)
        return h @ params["w2"] + params["b2"] + mask

    def loss_fn(params, x, y, mask, key=None, dropout=0.0):
        logits = forward(params, x, mask, key, dropout)
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0])

    grad_fn = jax.value_and_grad(loss_fn)

    def step(params, t, key, xtr, ytr, n, mask, hp):
        lr, rho, t0, wd, dropout = hp
        kb, kd = jax.random.split(jax.random.fold_in(key, t))
        idx = jax.random.randint(kb, (batch_size,), 0, n)
        loss, g = grad_fn(params, xtr[idx], ytr[idx], mask, kd, dropout)
        eta = lr * (1.0 + t / t0) ** (-rho)
        new = jax.tree_util.tree_map(lambda p, gi: p - eta * (gi + wd * p), params, g)
        return new, loss, g

    def flat(tree):
        return jnp.concatenate([v.ravel() for v in jax.tree_util.tree_leaves(tree)])

    @jax.jit
    def prefix(params0, key, xtr, ytr, n, mask, hp, snap_steps):
        p0 = flat(params0)
        snaps0 = jax.tree_util.tree_map(lambda v: jnp.zeros((snap_steps.shape[0],) + v.shape, v.dtype), params0)

        def body(carry, t):
            params, gprev, snaps = carry
            new, loss, g = step(params, t, key, xtr, ytr, n, mask, hp)
            gf = flat(g)
            norm = jnp.linalg.norm(gf)
            denom = norm * jnp.linalg.norm(gprev)
            cos = jnp.where(denom > 0, jnp.dot(gf, gprev) / jnp.maximum(denom, 1e-30), 0.0)
            absg = jnp.abs(gf)
            hit = snap_steps == t + 1
            snaps = jax.tree_util.tree_map(lambda s, v: jnp.where(hit.reshape((-1,) + (1,) * v.ndim), v[None], s), snaps, new)
            out = {"loss": loss, "grad_norm": norm, "grad_cos": cos,
                   "grad_sparsity": jnp.mean(absg <= SPARSITY_TOL * jnp.max(absg)),
                   "param_change": jnp.linalg.norm(flat(new) - p0)}
            return (new, gf, snaps), out

        (final, _, snaps), stats = jax.lax.scan(body, (params0, jnp.zeros_like(p0), snaps0), jnp.arange(horizon))
        return final, snaps, stats

    @jax.jit
    def forks(params, c, keys, xtr, ytr, n, mask, hp):
        def one(key):
            return jax.lax.fori_loop(c, horizon, lambda t, p: step(p, t, key, xtr, ytr, n, mask, hp)[0], params)

        return jax.vmap(one)(keys)

    @jax.jit
    def accuracy(params_batch, xte, yte, mask):
        def one(params):
            return 100.0 * jnp.mean((jnp.argmax(forward(params, xte, mask), axis=-1) == yte).astype(jnp.float32))

        return jax.vmap(one)(params_batch)

    @jax.jit
    def probe(params, key, x, y, mask, xood, sigma, n_perturb_keys):
        """Flatness (mean loss increase under relative Gaussian perturbations) and OOD mean entropy."""
        base = loss_fn(params, x, y, mask)

        def one(k):
            leaves, tree = jax.tree_util.tree_flatten(params)
            ks = jax.random.split(k, len(leaves))
            noisy = [v + sigma * jnp.sqrt(jnp.mean(v**2) + 1e-12) * jax.random.normal(kk, v.shape) for v, kk in zip(leaves, ks)]
            return loss_fn(jax.tree_util.tree_unflatten(tree, noisy), x, y, mask) - base

        inc = jax.vmap(one)(jax.random.split(key, n_perturb_keys.shape[0]))
        logp = jax.nn.log_softmax(forward(params, xood, mask), axis=-1)
        entropy = -jnp.sum(jnp.where(mask[None, :] < 0, 0.0, jnp.exp(logp) * logp), axis=-1).mean()
        return jnp.mean(inc), entropy

    return prefix, forks, accuracy, probe


# ----------------------------------------------------------------------------- runner


def _variant_key(task: TaskConfig) -> str:
    return config_hash({"dataset": task.to_dict()["dataset"], "seed": task.seed, "test_size": task.protocol.test_size,
                        "encoder": task.encoder, "max_length": task.max_length, "static_sample": STATIC_SAMPLE})


class HeadsRunner:
    """Runs heads-tier runs (the ``tier = "heads"`` entry of the runner registry).

    Parameters
    ----------
    cache_dir : path
        Embedding cache and per-variant static descriptors (normally ``OUT/cache``).
    """

    tier = "heads"

    def __init__(self, cache_dir):
        self.cache_dir = Path(cache_dir)
        self._embedder: Embedder | None = None
        self._prepared: dict[str, dict] = {}
        self.n_pad: int | None = None

    def _emb(self, task: TaskConfig) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.cache_dir, task.encoder, task.max_length, batch_size=128)
        return self._embedder

    def _variant(self, task: TaskConfig):
        ds = task.dataset
        return load_universe(ds.source, ds.path), build_variant(load_universe(ds.source, ds.path), ds,
                                                                test_size=task.protocol.test_size, seed=task.seed)

    # -- once per build ------------------------------------------------------------------------
    def prepare(self, tasks) -> dict:
        """Embed every text the tasks use in one pass, then compute each variant's static descriptors.

        Both are cached under ``cache_dir`` (a rerun finds them). Returns counts for the build summary.
        """
        tasks = list(tasks)
        if not tasks:
            return {}
        self.n_pad = max(t.dataset.n_train for t in tasks)
        by_variant = {}
        for t in tasks:
            by_variant.setdefault(_variant_key(t), t)
        texts: dict[str, None] = {}
        for t in by_variant.values():
            u, v = self._variant(t)
            for i in np.concatenate([v.train_idx, v.test_idx]):
                texts[u.texts[i]] = None
            texts.update(dict.fromkeys(v.class_names))
        texts.update(dict.fromkeys(ood_texts()))
        emb = self._emb(tasks[0])
        emb.embed(list(texts))
        n_static = 0
        for key, t in by_variant.items():
            n_static += self._static(key, t) is not None
        return {"variants": len(by_variant), "texts_embedded": len(texts), "static_computed": n_static}

    def _static(self, key: str, task: TaskConfig) -> dict | None:
        """Static descriptors of the variant's training set (cached JSON); None when read from the cache."""
        path = self.cache_dir / "static" / f"{key}.json"
        if path.is_file():
            return None
        from plan_probe.probes._data import Example
        from plan_probe.probes._static import static_descriptors

        u, v = self._variant(task)
        examples = [Example(u.texts[i], v.class_names[y]) for i, y in zip(v.train_idx, v.train_labels)]
        emb = self._emb(task)
        values = static_descriptors(examples, encoder=emb.embed, sample=STATIC_SAMPLE, seed=_seed_int("static", key))
        write_json({"variant": task.dataset.variant_id, "static": dict(values), "metadata": values.metadata}, path)
        return dict(values)

    def _prepare_variant(self, task: TaskConfig) -> dict:
        key = _variant_key(task)
        if key in self._prepared:
            return self._prepared[key]
        if self.n_pad is None or self.n_pad < task.dataset.n_train:
            self.n_pad = task.dataset.n_train
        u, v = self._variant(task)
        emb = self._emb(task)
        self._static(key, task)
        static = read_json(self.cache_dir / "static" / f"{key}.json")["static"]
        x_train = emb.embed([u.texts[i] for i in v.train_idx])
        x_test = emb.embed([u.texts[i] for i in v.test_idx])
        x_ood = emb.embed(ood_texts())
        # Standardise with training statistics (a user's preprocessing) so one learning rate means the same everywhere.
        mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
        n = len(v.train_idx)
        xtr = np.zeros((self.n_pad, x_train.shape[1]), np.float32)
        xtr[:n] = (x_train - mu) / sd
        ytr = np.zeros(self.n_pad, np.int32)
        ytr[:n] = v.train_labels
        k_pad = _bucket(v.n_classes)
        mask = np.where(np.arange(k_pad) < v.n_classes, 0.0, -1e9).astype(np.float32)
        prep = {
            "x_train": xtr, "y_train": ytr, "n": n,
            "x_test": ((x_test - mu) / sd).astype(np.float32), "y_test": v.test_labels.astype(np.int32),
            "x_ood": ((x_ood - mu) / sd).astype(np.float32),
            "mask": mask, "k_pad": k_pad, "n_classes": v.n_classes, "static": static,
        }
        self._prepared = {key: prep}  # keep only the current variant in memory
        return prep

    # -- one run -------------------------------------------------------------------------------
    def run(self, task: TaskConfig, prefix_index: int, seed: int) -> dict:
        """Train one prefix (with its forks when the task has fork depths); return the run's result."""
        jax, jnp = _jax()
        from plan_probe.probes._dynamics import dynamic_features

        prep = self._prepare_variant(task)
        hp, proto = task.hparams, task.protocol
        prefix_fn, forks_fn, acc_fn, probe_fn = _compiled(hp.hidden, hp.batch_size, hp.steps)
        hpv = jnp.asarray([hp.learning_rate, hp.lr_decay, hp.lr_t0, hp.weight_decay, hp.dropout], jnp.float32)
        xtr, ytr, n = jnp.asarray(prep["x_train"]), jnp.asarray(prep["y_train"]), jnp.int32(prep["n"])
        xte, yte, mask = jnp.asarray(prep["x_test"]), jnp.asarray(prep["y_test"]), jnp.asarray(prep["mask"])
        k_init, k_data, k_fork, k_flat = jax.random.split(jax.random.PRNGKey(seed), 4)
        params0 = _init_params(k_init, xtr.shape[1], hp.hidden, prep["k_pad"])
        snap_depths = sorted(set(proto.fork_depths) | set(proto.probe_depths))
        final, snaps, stats = prefix_fn(params0, k_data, xtr, ytr, n, mask, hpv, jnp.asarray(snap_depths, jnp.int32))
        stats = {k: np.asarray(v, dtype=float) for k, v in stats.items()}
        finite = bool(np.all(np.isfinite(stats["loss"]))) and _finite(final)
        if not finite:
            return {"status": "diverged", "error": "non-finite loss or parameters (NaN/inf)", "static": prep["static"], "hp": _hp_features(task)}
        label = float(acc_fn(jax.tree_util.tree_map(lambda v: v[None], final), xte, yte, mask)[0])

        m = min(FLAT_ROWS, prep["n"])
        x_probe, y_probe, x_ood = xtr[:m], ytr[:m], jnp.asarray(prep["x_ood"])
        perturb = jnp.zeros(max(proto.flatness_samples, 1))
        _, entropy0 = probe_fn(params0, k_flat, x_probe, y_probe, mask, x_ood, proto.flatness_sigma, perturb)
        dyn = {}
        for j, d in enumerate(snap_depths):
            if d not in proto.probe_depths:
                continue
            p_d = jax.tree_util.tree_map(lambda v: v[j], snaps)
            flatness, entropy = probe_fn(p_d, jax.random.fold_in(k_flat, d), x_probe, y_probe, mask, x_ood,
                                         proto.flatness_sigma, perturb)
            # an MLP can fit a batch to float32 zero loss: floor it so log L stays finite
            dyn[str(d)] = dynamic_features(
                np.maximum(stats["loss"][:d], 1e-12), stats["grad_norm"][:d], stats["grad_cos"][:d], stats["grad_sparsity"][:d],
                param_change_norm=float(stats["param_change"][d - 1]),
                flatness=float(flatness) if proto.flatness_samples else 0.0,
                forgetting=float(entropy0 - entropy),
            )
        forks = {}
        for j, c in enumerate(snap_depths):
            if c not in proto.fork_depths:
                continue
            p_c = jax.tree_util.tree_map(lambda v: v[j], snaps)
            finals = forks_fn(p_c, jnp.int32(c), jax.random.split(jax.random.fold_in(k_fork, c), proto.n_forks),
                              xtr, ytr, n, mask, hpv)
            if not _finite(finals):
                return {"status": "diverged", "error": f"a fork from depth {c} went non-finite", "static": prep["static"],
                        "hp": _hp_features(task)}
            forks[str(c)] = [round(float(s), 6) for s in np.asarray(acc_fn(finals, xte, yte, mask))]
        return {"status": "ok", "label": round(label, 6), "static": prep["static"], "hp": _hp_features(task),
                "dyn": dyn, "forks": forks}


def _finite(tree) -> bool:
    jax, _ = _jax()
    return all(bool(np.all(np.isfinite(np.asarray(v)))) for v in jax.tree_util.tree_leaves(tree))


def _hp_features(task: TaskConfig) -> dict:
    hp = task.hparams
    return {
        "hp_learning_rate": hp.learning_rate,
        "hp_batch_size": float(hp.batch_size),
        "hp_hidden": float(hp.hidden),
        "hp_steps": float(hp.steps),
        "hp_lr_decay": hp.lr_decay,
        "hp_weight_decay": hp.weight_decay,
        "hp_dropout": hp.dropout,
    }
