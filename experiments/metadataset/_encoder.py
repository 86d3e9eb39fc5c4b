"""Encoder tier: a head fine-tuned with SGD on frozen MiniLM embeddings, in JAX.

One *run* is one prefix seed of a task: the prefix is trained to the horizon ``T`` (its final
held-out accuracy is the run's label) while per-step dynamics are recorded; at every fork depth
``c`` the prefix state is continued to ``T`` by ``n_forks`` forks with their own seeds (data
order, dropout masks and, for ``eval_size > 0``, the benchmark sample), all forks in one
vectorised call (``jax.vmap``). The forks' sample variance of the final score is an unbiased
estimate of Var(R | I_c) with ``n_forks - 1`` degrees of freedom (docs/theory.md §2).

The step size is ``lr * (1 + t / t0) ** -rho``; with rho > 1/2 the not-yet-determined part of the
final parameters at step c shrinks like a power of c (Prop. 5.1).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from plan_probe.experiments.metadataset._data import load_slice, make_variant
from plan_probe.experiments.metadataset._embed import Embedder
from plan_probe.experiments.metadataset._head_nets import init_head_params as _init_params
from plan_probe.experiments.metadataset._head_nets import jax_modules as _jax
from plan_probe.experiments.metadataset._head_nets import seed_int as _seed_int
from plan_probe.experiments.metadataset._spec import TaskConfig, canonical_json

__all__ = ["EncoderRunner", "dynamic_features", "static_features"]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- static features


def static_features(texts_train, emb_train, labels, label_emb, n_classes, dataset, eval_size, rng) -> dict:
    """Cheap task descriptors of a training set (names prefixed ``static_``; see docs/guide/metadatasets.md)."""
    n = len(texts_train)
    lengths = np.array([len(t.split()) for t in texts_train], dtype=float)
    tokens = [w.lower() for t in texts_train for w in t.split()]
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    p = counts / counts.sum()
    nz = p[p > 0]
    entropy = -(nz * np.log(nz)).sum()
    centred = emb_train - emb_train.mean(0)
    dist = np.linalg.norm(centred, axis=1)
    io_sim = float(np.mean(np.sum(emb_train * label_emb[labels], axis=1)))
    m = min(n, 1000)
    pick = rng.choice(n, size=m, replace=False)
    a, b = rng.choice(m, size=m), rng.choice(m, size=m)
    lab_vecs = label_emb[labels[pick]]
    out_div = float(np.mean(1.0 - np.sum(lab_vecs[a] * lab_vecs[b], axis=1)))
    # 1-nearest-neighbour label agreement inside the training set: low for noisy or hard tasks.
    sims = emb_train[pick] @ emb_train.T
    sims[np.arange(m), pick] = -np.inf
    nn = np.argmax(sims, axis=1)
    knn = float(np.mean(labels[nn] == labels[pick]))
    return {
        "static_n_examples": float(n),
        "static_n_classes": float(n_classes),
        "static_label_noise": float(dataset.label_noise),
        "static_duplicate_rate": float(1.0 - len(set(texts_train)) / n),
        "static_class_imbalance": float(1.0 - entropy / np.log(n_classes)),
        "static_token_length_mean": float(lengths.mean()),
        "static_token_length_std": float(lengths.std()),
        "static_type_token_ratio": float(len(set(tokens)) / max(len(tokens), 1)),
        "static_embedding_outlier_ratio": float(np.mean(dist > dist.mean() + 3 * dist.std())),
        "static_io_semantic_similarity": io_sim,
        "static_output_diversity": out_div,
        "static_knn_label_agreement": knn,
        "static_eval_size": float(eval_size),
    }


# ----------------------------------------------------------------------------- dynamic features


def dynamic_features(stats: dict[str, np.ndarray], depth: int, flatness: float | None) -> dict:
    """docs/theory.md §4 dynamic features from the first ``depth`` steps of the prefix."""
    loss = stats["loss"][:depth].astype(float)
    gn = stats["grad_norm"][:depth].astype(float)
    t = np.arange(depth, dtype=float)
    logl = np.log(np.maximum(loss, 1e-12))
    slope = float(np.polyfit(t, logl, 1)[0]) if depth >= 2 else 0.0
    cos = stats["grad_cos"][1:depth].astype(float)
    out = {
        "dyn_initial_loss": float(loss[0]),
        "dyn_loss_decay": slope,
        "dyn_loss_variance": float(loss.var()),
        "dyn_loss_at_depth": float(loss[-min(depth, 10):].mean()),
        "dyn_grad_norm_mean": float(gn.mean()),
        "dyn_grad_norm_var": float(gn.var()),
        "dyn_grad_consistency": float(cos.mean()) if cos.size else 0.0,
        "dyn_grad_sparsity": float(stats["grad_sparsity"][:depth].mean()),
        "dyn_param_change_norm": float(stats["param_change"][depth - 1]),
    }
    if flatness is not None:
        out["dyn_flatness"] = float(flatness)
    return out


# ----------------------------------------------------------------------------- JAX training


@functools.lru_cache(maxsize=None)
def _compiled(hidden: int, batch_size: int, dropout: float, lr: float, rho: float, t0: float, wd: float,
              horizon: int, n_forks: int):
    """JIT-compiled prefix, fork and evaluation functions for one head configuration."""
    jax, jnp = _jax()

    def forward(params, x, key=None):
        if hidden == 0:
            return x @ params["w"] + params["b"]
        h = jax.nn.relu(x @ params["w1"] + params["b1"])
        if dropout > 0 and key is not None:
            keep = jax.random.bernoulli(key, 1.0 - dropout, h.shape)
            h = jnp.where(keep, h / (1.0 - dropout), 0.0)
        return h @ params["w2"] + params["b2"]

    def loss_fn(params, x, y, key=None):
        logits = forward(params, x, key)
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0])

    grad_fn = jax.value_and_grad(loss_fn)

    def step(params, t, key, xtr, ytr):
        kb, kd = jax.random.split(jax.random.fold_in(key, t))
        idx = jax.random.randint(kb, (batch_size,), 0, xtr.shape[0])
        loss, g = grad_fn(params, xtr[idx], ytr[idx], kd)
        eta = lr * (1.0 + t / t0) ** (-rho)
        new = jax.tree_util.tree_map(lambda p, gi: p - eta * (gi + wd * p), params, g)
        return new, loss, g

    def flat(tree):
        return jnp.concatenate([v.ravel() for v in jax.tree_util.tree_leaves(tree)])

    @jax.jit
    def prefix(params0, key, xtr, ytr, snap_steps):
        p0 = flat(params0)
        snaps0 = jax.tree_util.tree_map(lambda v: jnp.zeros((snap_steps.shape[0],) + v.shape, v.dtype), params0)

        def body(carry, t):
            params, gprev, snaps = carry
            new, loss, g = step(params, t, key, xtr, ytr)
            gf = flat(g)
            cos = jnp.dot(gf, gprev) / (jnp.linalg.norm(gf) * jnp.linalg.norm(gprev) + 1e-12)
            hit = (snap_steps == t + 1)
            snaps = jax.tree_util.tree_map(
                lambda s, v: jnp.where(hit.reshape((-1,) + (1,) * v.ndim), v[None], s), snaps, new)
            out = {
                "loss": loss,
                "grad_norm": jnp.linalg.norm(gf),
                "grad_cos": cos,
                "grad_sparsity": jnp.mean(gf == 0.0),
                "param_change": jnp.linalg.norm(flat(new) - p0),
            }
            return (new, gf, snaps), out

        (final, _, snaps), stats = jax.lax.scan(body, (params0, jnp.zeros_like(p0), snaps0), jnp.arange(horizon))
        return final, snaps, stats

    def continue_one(params, c, key, xtr, ytr):
        def body(t, p):
            return step(p, t, key, xtr, ytr)[0]

        return jax.lax.fori_loop(c, horizon, body, params)

    @jax.jit
    def forks(params, c, keys, xtr, ytr):
        return jax.vmap(continue_one, in_axes=(None, None, 0, None, None))(params, c, keys, xtr, ytr)

    def accuracy_one(params, key, xte, yte, eval_size):
        pred = jnp.argmax(forward(params, xte), axis=-1)
        correct = (pred == yte).astype(jnp.float32)
        if eval_size == 0:
            return 100.0 * correct.mean()
        if eval_size < 0:  # a fixed benchmark: the first |eval_size| examples of the pool
            return 100.0 * correct[:-eval_size].mean()
        pick = jax.random.permutation(key, xte.shape[0])[:eval_size]
        return 100.0 * correct[pick].mean()

    @functools.partial(jax.jit, static_argnums=(4,))
    def accuracies(params_batch, keys, xte, yte, eval_size):
        return jax.vmap(accuracy_one, in_axes=(0, 0, None, None, None))(params_batch, keys, xte, yte, eval_size)

    @jax.jit
    def flatness(params, key, x, y, sigma):
        base = loss_fn(params, x, y)

        def one(k):
            leaves, tree = jax.tree_util.tree_flatten(params)
            ks = jax.random.split(k, len(leaves))
            noisy = [v + sigma * jnp.sqrt(jnp.mean(v**2) + 1e-12) * jax.random.normal(kk, v.shape) for v, kk in zip(leaves, ks)]
            return loss_fn(jax.tree_util.tree_unflatten(tree, noisy), x, y) - base

        return base, jax.vmap(one)(key)

    return prefix, forks, accuracies, flatness


class EncoderRunner:
    """Runs encoder-tier runs (the ``tier = "encoder"`` entry of the runner registry).

    Parameters
    ----------
    cache_dir : path
        Where the embedding cache lives (normally ``OUT/cache``).
    """

    tier = "encoder"

    def __init__(self, cache_dir):
        self.cache_dir = Path(cache_dir)
        self._embedders: dict[tuple, Embedder] = {}
        self._prepared: dict[str, dict] = {}

    def _prepare(self, task: TaskConfig) -> dict:
        ds = task.dataset
        key = canonical_json([task.seed, task.encoder, task.max_length, task.protocol.test_size, ds.__dict__])
        if key in self._prepared:
            return self._prepared[key]
        emb = self._embedders.setdefault((task.encoder, task.max_length),
                                         Embedder(self.cache_dir, task.encoder, task.max_length))
        data = load_slice(ds.source, ds.slice, path=ds.path, label_field=ds.label_field, min_confidence=ds.min_confidence)
        var = make_variant(data, n_train=ds.n_train, test_size=task.protocol.test_size, label_noise=ds.label_noise,
                           duplicate_rate=ds.duplicate_rate, imbalance=ds.imbalance, seed=task.seed,
                           variant_key=ds.variant_id.split("-eval")[0].split("-fixed")[0])  # the benchmark size does not change the training set
        if ds.eval_size > task.protocol.test_size:
            raise ValueError(
                f"eval_size must not exceed protocol.test_size, but got eval_size={ds.eval_size} > "
                f"test_size={task.protocol.test_size}; lower eval_size or raise test_size."
            )
        texts_train = [data.texts[i] for i in var.train_idx]
        x_train = emb.embed(texts_train)
        x_test = emb.embed([data.texts[i] for i in var.test_idx])
        label_emb = emb.embed([n.replace("_", " ") for n in data.class_names])
        rng = np.random.default_rng(_seed_int("static", key))
        static = static_features(texts_train, x_train, var.train_labels, label_emb, var.n_classes, ds,
                                 ds.eval_size or task.protocol.test_size, rng)
        static["static_eval_sampled"] = float(ds.eval_size > 0 and ds.eval_mode == "sampled")
        # Standardise with training statistics so one learning rate means the same on every task.
        mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
        prep = {
            "x_train": ((x_train - mu) / sd).astype(np.float32),
            "y_train": var.train_labels.astype(np.int32),
            "x_test": ((x_test - mu) / sd).astype(np.float32),
            "y_test": var.test_labels.astype(np.int32),
            "n_classes": var.n_classes,
            "static": static,
        }
        self._prepared = {key: prep}  # keep only the current variant in memory
        return prep

    def run(self, task: TaskConfig, prefix_index: int, seed: int) -> dict:
        """Train one prefix with its forks; return the run's result (``status`` ok or diverged)."""
        jax, jnp = _jax()
        prep = self._prepare(task)
        hp, proto = task.hparams, task.protocol
        prefix_fn, forks_fn, acc_fn, flat_fn = _compiled(hp.hidden, hp.batch_size, hp.dropout, hp.learning_rate,
                                                         hp.lr_decay, hp.lr_t0, hp.weight_decay, hp.steps, proto.n_forks)
        xtr, ytr = jnp.asarray(prep["x_train"]), jnp.asarray(prep["y_train"])
        xte, yte = jnp.asarray(prep["x_test"]), jnp.asarray(prep["y_test"])
        root = jax.random.PRNGKey(seed)
        k_init, k_data, k_eval, k_fork, k_flat = jax.random.split(root, 5)
        params0 = _init_params(k_init, xtr.shape[1], hp.hidden, prep["n_classes"])
        snap_depths = sorted(set(proto.fork_depths) | set(proto.probe_depths))
        final, snaps, stats = prefix_fn(params0, k_data, xtr, ytr, jnp.asarray(snap_depths, dtype=jnp.int32))
        stats = {k: np.asarray(v) for k, v in stats.items()}
        eval_size = task.dataset.eval_size * (-1 if task.dataset.eval_mode == "fixed" else 1)
        label = float(acc_fn(jax.tree_util.tree_map(lambda v: v[None], final), k_eval[None], xte, yte, eval_size)[0])
        finite = bool(np.all(np.isfinite(stats["loss"]))) and bool(
            all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree_util.tree_leaves(final)))

        nf = min(512, xtr.shape[0])
        x_probe, y_probe = xtr[:nf], ytr[:nf]
        dyn = {}
        for j, d in enumerate(snap_depths):
            if d not in proto.probe_depths:
                continue
            flatness = None
            if proto.flatness_samples:
                p_d = jax.tree_util.tree_map(lambda v: v[j], snaps)
                _, inc = flat_fn(p_d, jax.random.split(jax.random.fold_in(k_flat, d), proto.flatness_samples),
                                 x_probe, y_probe, proto.flatness_sigma)
                flatness = float(np.mean(np.asarray(inc)))
            dyn[str(d)] = dynamic_features(stats, d, flatness)

        forks = {}
        for j, c in enumerate(snap_depths):
            if c not in proto.fork_depths:
                continue
            p_c = jax.tree_util.tree_map(lambda v: v[j], snaps)
            keys = jax.random.split(jax.random.fold_in(k_fork, c), proto.n_forks)
            finals = forks_fn(p_c, jnp.int32(c), keys, xtr, ytr)
            finite = finite and bool(all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree_util.tree_leaves(finals)))
            eval_keys = jax.vmap(lambda k: jax.random.fold_in(k, 7))(keys)
            scores = np.asarray(acc_fn(finals, eval_keys, xte, yte, eval_size), dtype=float)
            forks[str(c)] = [round(float(s), 6) for s in scores]
        if not finite:
            return {"status": "diverged", "error": "non-finite loss or parameters (NaN/inf)",
                    "static": prep["static"], "hp": _hp_features(task)}
        return {
            "status": "ok",
            "label": round(label, 6),
            "static": prep["static"],
            "hp": _hp_features(task),
            "dyn": dyn,
            "forks": forks,
        }


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
