r"""The hierarchical Bayesian risk model (docs/theory.md §2).

Per task i, :math:`\theta_i = (\log L_\mathrm{int}, \log K, \log\alpha)_i \sim \mathcal N(B s_i + b, \Sigma)`
with :math:`s_i` the standardised static features, :math:`\Sigma = \mathrm{diag}(\sigma)\,\Omega\,\mathrm{diag}(\sigma)`
and an LKJ prior on the correlation :math:`\Omega`. An observation u of :math:`L_i(c) = L_\mathrm{int} + K c^{-\alpha}`
with dof :math:`\nu` is :math:`\mathrm{Gamma}(\nu/2,\ \mathrm{rate}=\nu/(2L_i(c)))` (so :math:`\nu u/L \sim \chi^2_\nu`).

The model (:func:`risk_model`) is a pure function; inference (:func:`run_nuts`, :func:`run_svi`) is
separate and takes explicit JAX keys. :class:`RiskModel` is the sklearn-style front end; it saves
thinned draws of the population parameters (B, b, chol Sigma) as checksummed JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

from plan_probe.probes._formats import FileFormat

__all__ = ["RiskModel", "RiskFitSettings", "risk_model", "MODEL_FORMAT", "RISK_MODEL_FORMAT"]

log = logging.getLogger(__name__)

MODEL_FORMAT = "plan-probe/risk-model"
#: Schema 1 is the layout written by plan-probe 0.1.0 (format "plan-probe-risk-model/1").
RISK_MODEL_FORMAT = FileFormat(MODEL_FORMAT, 1, "refit it with plan-probe fit-risk",
                               legacy_names={"plan-probe-risk-model/1": 1})
#: Inputs with more tasks than this use SVI under ``method="auto"``.
AUTO_SVI_TASKS = 600
#: Floor on an observation relative to the risk scale: the Gamma density with shape < 1 diverges at 0.
_U_FLOOR = 1e-8
_PARAMS = ("l_int", "k", "alpha")


@dataclass(frozen=True)
class RiskFitSettings:
    """Inference settings (validated; recorded in the saved model)."""

    method: str = "auto"
    num_warmup: int = 400
    num_samples: int = 400
    num_chains: int = 2
    target_accept: float = 0.85
    max_tree_depth: int = 7
    svi_steps: int = 3000
    svi_lr: float = 0.02
    svi_draws: int = 400
    keep_draws: int = 400
    lkj_eta: float = 2.0

    def __post_init__(self):
        if self.method not in ("auto", "nuts", "svi"):
            raise ValueError(f"method must be auto, nuts or svi, but got {self.method=}; pick one of those.")
        for name in ("num_warmup", "num_samples", "num_chains", "max_tree_depth", "svi_steps", "svi_draws", "keep_draws"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, but got {name}={getattr(self, name)}; pass a positive integer.")
        if not 0.5 <= self.target_accept < 1:
            raise ValueError(f"target_accept must be in [0.5, 1), but got {self.target_accept=}; 0.8-0.95 is usual.")
        if self.svi_lr <= 0 or self.lkj_eta <= 0:
            raise ValueError(f"svi_lr and lkj_eta must be positive, but got {self.svi_lr=}, {self.lkj_eta=}; pass values > 0.")


# ----------------------------------------------------------------------------- model

def risk_model(s, task_idx, log_depth, u, dof, n_tasks: int, lkj_eta: float = 2.0):
    """NumPyro model (pure function of its data). Risk values are in units of the risk scale.

    Parameters
    ----------
    s : (n_tasks, p) standardised static features.
    task_idx, log_depth, u, dof : (n_obs,) observation task index, log depth, value, dof.
    """
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    p = s.shape[1]
    b = numpyro.sample("b", dist.Normal(jnp.array([-1.0, 1.5, np.log(0.5)]), jnp.array([2.5, 2.5, 0.75])).to_event(1))
    B = numpyro.sample("B", dist.Normal(0.0, 1.0).expand([3, p]).to_event(2))
    sigma = numpyro.sample("sigma", dist.HalfNormal(jnp.array([1.0, 1.0, 0.5])).to_event(1))
    l_omega = numpyro.sample("l_omega", dist.LKJCholesky(3, lkj_eta))
    l_sigma = sigma[:, None] * l_omega
    with numpyro.plate("tasks", n_tasks):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))  # non-centred
    theta = s @ B.T + b + z @ l_sigma.T
    th = theta[task_idx]
    log_l = jnp.logaddexp(th[:, 0], th[:, 1] - jnp.exp(th[:, 2]) * log_depth)
    with numpyro.plate("obs", u.shape[0]):
        numpyro.sample("u", dist.Gamma(dof / 2.0, dof / (2.0 * jnp.exp(log_l))), obs=u)


def _model_args(data, lkj_eta):
    return (data["s"], data["task_idx"], data["log_depth"], data["u"], data["dof"], data["n_tasks"], lkj_eta)


def run_nuts(data, settings: RiskFitSettings, key):
    """NUTS on :func:`risk_model`; returns (population draws dict, diagnostics dict)."""
    from numpyro.diagnostics import summary
    from numpyro.infer import MCMC, NUTS, init_to_median

    kernel = NUTS(risk_model, target_accept_prob=settings.target_accept, max_tree_depth=settings.max_tree_depth,
                  init_strategy=init_to_median(num_samples=15))
    mcmc = MCMC(kernel, num_warmup=settings.num_warmup, num_samples=settings.num_samples,
                num_chains=settings.num_chains, chain_method="sequential", progress_bar=False)
    mcmc.run(key, *_model_args(data, settings.lkj_eta), extra_fields=("diverging",))
    grouped = mcmc.get_samples(group_by_chain=True)
    pop = {name: np.asarray(grouped[name]) for name in ("b", "B", "sigma", "l_omega")}
    stats = summary({k: v for k, v in pop.items() if k != "l_omega"}, group_by_chain=True)
    z_stats = summary({"z": np.asarray(grouped["z"])}, group_by_chain=True)["z"]
    r_hat = np.concatenate([np.ravel(v["r_hat"]) for v in stats.values()])
    ess = np.concatenate([np.ravel(v["n_eff"]) for v in stats.values()])
    diverging = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    diagnostics = {
        "method": "nuts",
        "max_r_hat": float(np.nanmax(r_hat)),
        "min_ess": float(np.nanmin(ess)),
        "task_max_r_hat": float(np.nanmax(z_stats["r_hat"])),
        "task_min_ess": float(np.nanmin(z_stats["n_eff"])),
        "divergences": diverging,
        "num_chains": settings.num_chains,
        "num_samples": settings.num_samples,
        "num_warmup": settings.num_warmup,
    }
    flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in pop.items()}
    return flat, diagnostics


def run_svi(data, settings: RiskFitSettings, key):
    """SVI (AutoNormal guide, Adam) on :func:`risk_model`; returns (population draws, diagnostics)."""
    import jax
    import jax.numpy as jnp
    from numpyro.distributions import constraints
    from numpyro.distributions.transforms import biject_to
    from numpyro.infer import SVI, Trace_ELBO, init_to_median
    from numpyro.infer.autoguide import AutoNormal
    from numpyro.optim import Adam

    guide = AutoNormal(risk_model, init_loc_fn=init_to_median(num_samples=15), init_scale=0.05)
    svi = SVI(risk_model, guide, Adam(settings.svi_lr), Trace_ELBO())
    k_run, k_draw = jax.random.split(key)
    args = _model_args(data, settings.lkj_eta)
    arrays = [jnp.asarray(a) for a in args[:5]]
    n_tasks, eta = args[5], args[6]
    # A jitted step in a Python loop with the data as arguments (not closed-over constants):
    # measured several times faster to compile and run on CPU than svi.run here.
    step = jax.jit(lambda state, *a: svi.update(state, *a, n_tasks, eta))
    t0 = time.perf_counter()
    state = svi.init(k_run, *args)
    t1 = time.perf_counter()
    losses = np.empty(settings.svi_steps)
    for i in range(settings.svi_steps):
        state, loss = step(state, *arrays)
        losses[i] = float(loss)
        if i == 0:
            t2 = time.perf_counter()
    log.info("SVI: init %.1f s, compile+first step %.1f s, %d steps %.1f s", t1 - t0, t2 - t1, settings.svi_steps,
             time.perf_counter() - t2)
    params = svi.get_params(state)
    # Draw only the population sites straight from the mean-field guide (unconstrained normal,
    # then the support's bijection): far cheaper than guide.sample_posterior over every task.
    supports = {"b": constraints.real, "B": constraints.real, "sigma": constraints.positive,
                "l_omega": constraints.corr_cholesky}
    pop = {}
    for i, (name, support) in enumerate(supports.items()):
        loc, scale = params[f"{name}_auto_loc"], params[f"{name}_auto_scale"]
        eps = jax.random.normal(jax.random.fold_in(k_draw, i), (settings.svi_draws,) + loc.shape)
        pop[name] = np.asarray(biject_to(support)(loc + scale * eps))
    tail = max(len(losses) // 10, 1)
    last, prev = losses[-tail:].mean(), losses[-2 * tail:-tail].mean() if len(losses) >= 2 * tail else np.nan
    diagnostics = {
        "method": "svi",
        "svi_steps": settings.svi_steps,
        "elbo_loss_first": float(losses[0]),
        "elbo_loss_last": float(last),
        # relative change of the mean loss between the last two tenths of the run: ~0 when converged
        "elbo_rel_change_last_tenth": float(abs(last - prev) / max(abs(last), 1.0)) if np.isfinite(prev) else None,
        "n_obs": int(data["u"].shape[0]),
    }
    if not np.all(np.isfinite(losses[-tail:])):
        raise ValueError("SVI diverged (non-finite ELBO); lower --svi-lr or use --method nuts.")
    return pop, diagnostics


# ----------------------------------------------------------------------------- estimator

def _checksum(payload: dict) -> str:
    body = {k: v for k, v in payload.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _gamma_loglik(u, dof, log_l):
    """log Gamma(u | dof/2, rate dof/(2L)) without the u-only constant terms (for weights)."""
    shape = dof / 2.0
    return shape * (np.log(shape) - log_l) - shape * u * np.exp(-log_l)


class RiskModel:
    """Hierarchical risk model: partial pooling of (log L_int, log K, log alpha) on static features.

    Parameters
    ----------
    settings : RiskFitSettings, optional
        Inference settings; stored unchanged (sklearn contract).

    Attributes (after ``fit`` or ``load``)
    ----------
    static_features_ : list of str
    feature_mean_, feature_std_ : ndarray (p,)
    draws_ : dict with ``b`` (n, 3), ``B`` (n, 3, p), ``sigma_chol`` (n, 3, 3) in original risk units
    diagnostics_ : dict
    method_ : str, ``"nuts"`` or ``"svi"``
    seed_ : int
    """

    def __init__(self, settings: RiskFitSettings | None = None):
        self.settings = settings

    # -- fitting ---------------------------------------------------------------
    def fit(self, obs_df, seed: int = 0):
        """Fit on a risk-observation table (docs/theory.md §3); returns self."""
        import jax

        from plan_probe._tables import static_columns, task_static_matrix, validate_risk_observations

        settings = self.settings or RiskFitSettings()
        obs = validate_risk_observations(obs_df)
        statics = static_columns(obs)
        task_ids, x = task_static_matrix(obs, statics)
        mean = x.mean(axis=0) if x.shape[1] else np.zeros(0)
        std = x.std(axis=0) if x.shape[1] else np.zeros(0)
        std = np.where(std > 0, std, 1.0)  # a constant feature carries no information; avoid 0/0
        s = (x - mean) / std
        index = {t: i for i, t in enumerate(task_ids)}
        task_idx = obs["task_id"].map(index).to_numpy()
        risk = obs["risk_obs"].to_numpy(dtype=float)
        positive = risk[risk > 0]
        scale = float(np.median(positive)) if positive.size else 1.0
        data = {
            "s": s,
            "task_idx": task_idx,
            "log_depth": np.log(obs["depth"].to_numpy(dtype=float)),
            "u": np.maximum(risk / scale, _U_FLOOR),
            "dof": obs["dof"].to_numpy(dtype=float),
            "n_tasks": len(task_ids),
        }
        method = settings.method
        if method == "auto":
            method = "svi" if len(task_ids) > AUTO_SVI_TASKS else "nuts"
        log.info("fitting risk model on %d tasks x %d observations with %s", len(task_ids), len(obs), method)
        start = time.perf_counter()
        key = jax.random.PRNGKey(int(seed))
        pop, diagnostics = (run_nuts if method == "nuts" else run_svi)(data, settings, key)
        diagnostics["fit_seconds"] = round(time.perf_counter() - start, 3)
        n = pop["b"].shape[0]
        keep = np.unique(np.linspace(0, n - 1, min(settings.keep_draws, n)).round().astype(int))  # thinning
        b = pop["b"][keep].astype(float)
        b[:, :2] += np.log(scale)  # back to original risk units: L_int and K scale with the risk
        self.draws_ = {
            "b": b,
            "B": pop["B"][keep].astype(float).reshape(len(keep), 3, s.shape[1]),
            "sigma_chol": pop["sigma"][keep][:, :, None] * pop["l_omega"][keep],
        }
        self.static_features_ = list(statics)
        self.feature_mean_ = mean.astype(float)
        self.feature_std_ = std.astype(float)
        self.risk_scale_ = scale
        self.diagnostics_ = diagnostics
        self.method_ = method
        self.seed_ = int(seed)
        self.n_tasks_, self.n_obs_ = len(task_ids), len(obs)
        self.settings_ = settings
        return self

    @classmethod
    def from_population(cls, B, b, sigma_chol, static_features, feature_mean=None, feature_std=None) -> "RiskModel":
        """A model whose population parameters are known (one or more draws), without fitting.

        ``B`` (n, 3, p) or (3, p), ``b`` (n, 3) or (3,), ``sigma_chol`` (n, 3, 3) or (3, 3), in
        original risk units on standardised features. Useful for planning from a known population
        and for checking the planner separately from the fit.
        """
        p = len(static_features)
        B = np.asarray(B, dtype=float).reshape(-1, 3, p)
        b = np.asarray(b, dtype=float).reshape(-1, 3)
        L = np.asarray(sigma_chol, dtype=float).reshape(-1, 3, 3)
        if not (B.shape[0] == b.shape[0] == L.shape[0]):
            raise ValueError(f"B, b and sigma_chol must have the same number of draws, but got {B.shape[0]}, {b.shape[0]}, {L.shape[0]}; align them.")
        model = cls(RiskFitSettings())
        model.draws_ = {"b": b, "B": B, "sigma_chol": L}
        model.static_features_ = list(static_features)
        model.feature_mean_ = np.zeros(p) if feature_mean is None else np.asarray(feature_mean, dtype=float)
        model.feature_std_ = np.ones(p) if feature_std is None else np.asarray(feature_std, dtype=float)
        model.risk_scale_ = 1.0
        model.diagnostics_ = {"method": "known_population"}
        model.method_ = "known_population"
        model.seed_ = 0
        model.n_tasks_ = model.n_obs_ = 0
        model.settings_ = model.settings
        return model

    def _check_fitted(self):
        if not hasattr(self, "draws_"):
            raise ValueError("the risk model must be fitted or loaded first, but it is not; call fit() or RiskModel.load().")

    # -- persistence -----------------------------------------------------------
    def to_dict(self) -> dict:
        self._check_fitted()
        payload = RISK_MODEL_FORMAT.stamp({
            "static_features": self.static_features_,
            "feature_mean": self.feature_mean_.tolist(),
            "feature_std": self.feature_std_.tolist(),
            "risk_scale": self.risk_scale_,
            "settings": asdict(self.settings_),
            "method": self.method_,
            "seed": self.seed_,
            "n_tasks": self.n_tasks_,
            "n_obs": self.n_obs_,
            "diagnostics": self.diagnostics_,
            "draws": {k: v.tolist() for k, v in self.draws_.items()},
            "summary": self.population_summary(),
        })
        payload["checksum"] = _checksum(payload)
        return payload

    def save(self, path):
        """Write the model as JSON atomically (never a pickle)."""
        from plan_probe.probes._io import write_json

        return write_json(self.to_dict(), path, indent=None)

    @classmethod
    def from_dict(cls, payload: dict, source: str = "model") -> "RiskModel":
        current = RISK_MODEL_FORMAT.read(payload, source)  # a risk model of a schema we know, migrated
        if payload.get("checksum") != _checksum(payload):
            raise ValueError(f"risk model checksum must match its content, but {source} has been modified; refit it with plan-probe fit-risk.")
        payload = current
        try:
            model = cls(RiskFitSettings(**payload["settings"]))
            model.draws_ = {k: np.asarray(payload["draws"][k], dtype=float) for k in ("b", "B", "sigma_chol")}
            model.static_features_ = list(payload["static_features"])
            model.feature_mean_ = np.asarray(payload["feature_mean"], dtype=float)
            model.feature_std_ = np.asarray(payload["feature_std"], dtype=float)
            model.risk_scale_ = float(payload["risk_scale"])
            model.diagnostics_ = payload["diagnostics"]
            model.method_ = payload["method"]
            model.seed_ = int(payload["seed"])
            model.n_tasks_, model.n_obs_ = int(payload["n_tasks"]), int(payload["n_obs"])
            model.settings_ = model.settings
        except (KeyError, TypeError) as exc:
            raise ValueError(f"risk model {source} lacks field {exc}; refit it with plan-probe fit-risk.") from None
        p = len(model.static_features_)
        if model.draws_["B"].ndim != 3 or model.draws_["B"].shape[1:] != (3, p):
            raise ValueError(f"risk model draws must have shape (n, 3, {p}), but {source} has {model.draws_['B'].shape}; refit it.")
        return model

    @classmethod
    def load(cls, path) -> "RiskModel":
        """Read a model saved by :meth:`save`, validating format, version and checksum."""
        from plan_probe.probes._io import read_json

        return cls.from_dict(read_json(path), source=str(path))

    def population_summary(self) -> dict:
        """Posterior means of the regression (per parameter: intercept and coefficients) and task spread."""
        self._check_fitted()
        sig = self.draws_["sigma_chol"]
        cov = np.einsum("nij,nkj->nik", sig, sig)
        out = {}
        for j, name in enumerate(_PARAMS):
            out[f"log_{name}"] = {
                "intercept": float(self.draws_["b"][:, j].mean()),
                "coef": {f: float(self.draws_["B"][:, j, m].mean()) for m, f in enumerate(self.static_features_)},
                "task_sd": float(np.sqrt(cov[:, j, j]).mean()),
            }
        return out

    # -- prediction ------------------------------------------------------------
    def _standardise(self, x):
        return (np.asarray(x, dtype=float) - self.feature_mean_) / self.feature_std_

    def _theta_draws(self, s, n_draws: int, rng):
        """(3, n_tasks, n_draws) draws of theta = (log L_int, log K, log alpha) from the population regression.

        Written as one BLAS product for the means and the explicit lower-triangular 3x3 product for
        the task noise (several times faster than einsum at 10,000 tasks).
        """
        n_saved = self.draws_["b"].shape[0]
        n_tasks, p = s.shape
        idx = rng.integers(0, n_saved, size=n_draws)
        B, b, L = self.draws_["B"][idx], self.draws_["b"][idx], self.draws_["sigma_chol"][idx]
        z = rng.standard_normal((3, n_tasks, n_draws))
        mean = (s @ B.transpose(2, 1, 0).reshape(p, 3 * n_draws)).reshape(n_tasks, 3, n_draws) if p else 0.0
        theta = np.empty((3, n_tasks, n_draws))
        for k in range(3):
            noise = z[0] * L[:, k, 0]
            for j in range(1, k + 1):
                noise += z[j] * L[:, k, j]
            theta[k] = (mean[:, k, :] if p else 0.0) + b[:, k] + noise
        return theta

    def posterior_task_draws(self, tasks_df, n_draws: int = 256, seed: int = 0, *, oversample: int = 8) -> dict:
        """Posterior draws of (L_int, K, alpha) for the tasks of ``tasks_df``.

        From the population regression (draws of B, b, Sigma, then the task's MVN); a task with
        pilot rows (``depth, risk_obs, dof``) is updated by importance resampling of
        ``oversample * n_draws`` regression draws with the Gamma likelihood.

        Returns
        -------
        dict with ``task_id`` (n_tasks,), ``l_int``, ``k``, ``alpha`` (n_tasks, n_draws) and
        ``ess`` (n_tasks,): the importance-sampling effective sample size (``n_draws`` for
        tasks without pilots).
        """
        from plan_probe._tables import validate_tasks

        self._check_fitted()
        if int(n_draws) < 1:
            raise ValueError(f"n_draws must be >= 1, but got {n_draws=}; pass a positive number of draws.")
        tasks, pilots = validate_tasks(
            tasks_df[[c for c in tasks_df.columns if c in ("task_id", "depth", "risk_obs", "dof") or c in self.static_features_]],
            self.static_features_,
        )
        rng = np.random.default_rng(seed)
        s = self._standardise(tasks[self.static_features_].to_numpy(dtype=float))
        theta = self._theta_draws(s, n_draws, rng)
        ess = np.full(len(tasks), float(n_draws))
        if len(pilots):
            theta, ess = self._pilot_update(tasks, pilots, s, theta, ess, n_draws, oversample, rng)
        e = np.exp(theta)
        return {"task_id": tasks["task_id"].to_numpy(), "l_int": e[0], "k": e[1], "alpha": e[2], "ess": ess}

    def _pilot_update(self, tasks, pilots, s, theta, ess, n_draws, oversample, rng):
        pos = {t: i for i, t in enumerate(tasks["task_id"])}
        rows = pilots["task_id"].map(pos).to_numpy()
        which = np.unique(rows)
        m = n_draws * max(int(oversample), 1)
        prop = self._theta_draws(s[which], m, rng)  # (3, n_p, m)
        local = np.searchsorted(which, rows)
        log_c = np.log(pilots["depth"].to_numpy(dtype=float))
        u = pilots["risk_obs"].to_numpy(dtype=float)
        dof = pilots["dof"].to_numpy(dtype=float)
        th = prop[:, local]  # (3, n_obs, m)
        log_l = np.logaddexp(th[0], th[1] - np.exp(th[2]) * log_c[:, None])
        ll = _gamma_loglik(u[:, None], dof[:, None], log_l)
        logw = np.zeros((which.size, m))
        np.add.at(logw, local, ll)
        logw -= logw.max(axis=1, keepdims=True)
        w = np.exp(logw)
        w /= w.sum(axis=1, keepdims=True)
        task_ess = 1.0 / (w**2).sum(axis=1)
        # systematic resampling: low variance, deterministic given the generator
        cum = np.cumsum(w, axis=1)
        cum[:, -1] = 1.0
        grid = (rng.random((which.size, 1)) + np.arange(n_draws)[None, :]) / n_draws
        pick = np.stack([np.searchsorted(cum[i], grid[i]) for i in range(which.size)])
        theta = theta.copy()
        theta[:, which] = np.take_along_axis(prop, pick[None], axis=2)
        ess = ess.copy()
        ess[which] = task_ess
        low = task_ess < 0.05 * m
        if low.any():
            log.warning(
                "pilot update of %d task(s) rests on few effective draws (min ESS %.1f of %d); "
                "their posterior is coarse, raise oversample for more", int(low.sum()), float(task_ess.min()), m,
            )
        return theta, ess

    def expected_risk(self, frame, depth_col: str = "depth", *, n_draws: int = 256, seed: int = 0) -> np.ndarray:
        """Posterior mean of L_i(c) for each row of ``frame`` (static_* columns and a depth).

        Uses the population regression only (no pilot update), so the row's own outcome never
        enters its scale.
        """
        self._check_fitted()
        missing = [c for c in [*self.static_features_, depth_col] if c not in frame.columns]
        if missing:
            raise ValueError(f"rows must carry the model's static features and {depth_col!r}, but {missing} are missing; add them.")
        depth = np.asarray(frame[depth_col], dtype=float)
        if not np.all(np.isfinite(depth)) or np.any(depth <= 0):
            raise ValueError(f"{depth_col} must be positive and finite, but got values <= 0 or NaN; fix those rows.")
        x = np.asarray(frame[self.static_features_], dtype=float).reshape(len(frame), -1)
        if not np.all(np.isfinite(x)):
            raise ValueError("static features must be finite, but got NaN or inf; fill those rows.")
        uniq, inverse = np.unique(x, axis=0, return_inverse=True)
        theta = self._theta_draws(self._standardise(uniq), n_draws, np.random.default_rng(seed))
        th = theta[:, np.ravel(inverse)]
        risk = np.exp(th[0]) + np.exp(th[1] - np.exp(th[2]) * np.log(depth)[:, None])
        return risk.mean(axis=1)
