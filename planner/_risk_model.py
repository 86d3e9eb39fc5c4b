r"""The hierarchical Bayesian risk model (docs/theory.md §2).

Per task i, :math:`\theta_i = (\log L_\mathrm{int}, \log K, \log\alpha)_i \sim \mathcal N(B s_i + b, \Sigma)`
with :math:`s_i` the standardised static features, :math:`\Sigma = \mathrm{diag}(\sigma)\,\Omega\,\mathrm{diag}(\sigma)`
and an LKJ prior on the correlation :math:`\Omega`. An observation u of :math:`L_i(c) = L_\mathrm{int} + K c^{-\alpha}`
with dof :math:`\nu` is :math:`\mathrm{Gamma}(\nu/2,\ \mathrm{rate}=\nu/(2L_i(c)))` (so :math:`\nu u/L \sim \chi^2_\nu`);
the residuals of one run at several depths (rows sharing a ``run_id`` with dof 1) are one nested
vector: the deepest residual and the independent increments
:math:`e(c_i) - e(c_{i+1}) \sim \mathcal N(0, L(c_i) - L(c_{i+1}))` (:mod:`plan_probe._risk_likelihood`).
The fitted model records the label scale S (:func:`label_scale`) the plan's relative defaults use.

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
from plan_probe._validate import check_risk_model_payload

__all__ = ["RiskModel", "RiskFitSettings", "risk_model", "label_scale", "convergence_ok", "parse_task_sd_prior",
           "MODEL_FORMAT", "RISK_MODEL_FORMAT"]

log = logging.getLogger(__name__)

MODEL_FORMAT = "plan-probe/risk-model"
LABEL_SCALE_RULE = "mean over tasks of the mean risk_obs at the task's shallowest depth"
MAX_R_HAT = 1.05
MIN_BULK_ESS = 100
SVI_MAX_REL_CHANGE = 0.01
#: How many parameters of highest R-hat a NUTS fit's diagnostics name.
WORST_REPORTED = 5
#: Half-normal prior scales of the task spread sigma of (log L_int, log K, log alpha) up to schema 3.
DEFAULT_TASK_SD_PRIOR = (1.0, 1.0, 0.5)


def _migrate_1_to_2(doc: dict) -> dict:
    """Schema 1 -> 2: add ``label_scale`` and ``diagnostics.ok``.

    A schema-1 file does not hold its observations, so S cannot be recomputed: the migrated
    ``label_scale`` is the fit's internal ``risk_scale`` (the median positive risk observation,
    a typical risk level of the same data; for dof-1 residuals about half the mean) and the rule
    says so. ``ok`` applies today's thresholds to the recorded R-hat, ESS (numpyro's n_eff, not
    bulk ESS, in schema 1) and divergences.
    """
    doc = dict(doc)
    doc["label_scale"] = float(doc.get("risk_scale", 1.0))
    doc["label_scale_rule"] = "migrated from schema 1: the median positive risk observation (refit for the current rule)"
    diag = dict(doc.get("diagnostics") or {})
    diag["ok"], diag["problems"] = convergence_ok(diag)
    doc["diagnostics"] = diag
    return doc


def _migrate_2_to_3(doc: dict) -> dict:
    """Schema 2 -> 3: ``settings.variance_floor``. Schema-2 fits had no floor, so the migrated value is 0
    (their pilot updates stay exactly as they were)."""
    doc = dict(doc)
    doc["settings"] = {**doc.get("settings", {}), "variance_floor": 0.0}
    return doc


def _migrate_3_to_4(doc: dict) -> dict:
    """Schema 3 -> 4: ``settings.task_sd_prior``. Schema-3 fits used the fixed half-normal scales (1, 1, 0.5)."""
    doc = dict(doc)
    doc["settings"] = {**doc.get("settings", {}), "task_sd_prior": list(DEFAULT_TASK_SD_PRIOR)}
    return doc


#: Schema 1 is the layout written by plan-probe 0.1.0 (format "plan-probe-risk-model/1"); schema 2
#: adds the label scale and diagnostics.ok (nested-residual likelihood, issue #14); schema 3 the
#: likelihood's variance floor (settings.variance_floor); schema 4 the prior scales of the task spread
#: (settings.task_sd_prior).
RISK_MODEL_FORMAT = FileFormat(MODEL_FORMAT, 4, "refit it with plan-probe fit-risk",
                               migrations={1: lambda d: _migrate_1_to_2(d), 2: lambda d: _migrate_2_to_3(d),
                                           3: lambda d: _migrate_3_to_4(d)},
                               legacy_names={"plan-probe-risk-model/1": 1})
#: Inputs with more tasks than this use SVI under ``method="auto"``.
AUTO_SVI_TASKS = 600
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
    #: δ, added to every likelihood term's variance, relative to the fit's risk scale (the median positive
    #: risk observation): keeps exactly repeated predictions (zero increments) from making the likelihood
    #: unbounded (plan_probe._risk_likelihood.log_variance). 0 turns it off (schema-2 models had none).
    variance_floor: float = 1e-3
    #: Half-normal prior scales of the task-to-task spread sigma of (log L_int, log K, log alpha). With a few
    #: depths per task a task's own alpha is barely identified: a flat residual curve fits alpha -> 0 and
    #: alpha -> infinity (all decay before the first depth) alike, and a wide alpha spread lets chains settle
    #: in either (docs/theory.md §2, "Priors and identifiability"). A smaller third scale puts alpha's variation into the
    #: static regression B instead.
    task_sd_prior: tuple = DEFAULT_TASK_SD_PRIOR

    def __post_init__(self):
        if self.method not in ("auto", "nuts", "svi"):
            raise ValueError(f"method must be auto, nuts or svi, but got {self.method=}; pick one of those.")
        for name in ("num_warmup", "num_samples", "num_chains", "max_tree_depth", "svi_steps", "svi_draws", "keep_draws"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, but got {name}={getattr(self, name)}; pass a positive integer.")
        if not 0.5 <= self.target_accept < 1:
            raise ValueError(f"target_accept must be in [0.5, 1), but got target_accept={self.target_accept}; 0.8-0.95 is usual.")
        if self.svi_lr <= 0 or self.lkj_eta <= 0:
            raise ValueError(f"svi_lr and lkj_eta must be positive, but got {self.svi_lr=}, {self.lkj_eta=}; pass values > 0.")
        if not (isinstance(self.variance_floor, (int, float)) and 0 <= self.variance_floor < 1):
            raise ValueError(f"variance_floor must be in [0, 1), but got {self.variance_floor=}; 1e-3 is the default.")
        prior = self.task_sd_prior
        scales = _three_positive_scales(prior if not isinstance(prior, (str, bytes)) else ())
        if scales is None:
            raise ValueError(f"task_sd_prior must be 3 positive scales for (log L_int, log K, log alpha), but got "
                             f"task_sd_prior={prior!r}; (1.0, 1.0, 0.5) is the default.")
        object.__setattr__(self, "task_sd_prior", scales)  # JSON gives a list; keep the frozen settings hashable

    @property
    def log_floor(self) -> float | None:
        """log δ in the fit's internal unit (risk / risk scale), or None without a floor."""
        return float(np.log(self.variance_floor)) if self.variance_floor > 0 else None


def _three_positive_scales(values) -> tuple | None:
    """``values`` as a tuple of 3 positive finite floats, or None when they are not (the one rule of
    :attr:`RiskFitSettings.task_sd_prior`, for settings and the command line alike)."""
    try:
        scales = tuple(float(x) for x in values)
    except (TypeError, ValueError):
        return None
    return scales if len(scales) == 3 and all(np.isfinite(x) and x > 0 for x in scales) else None


def parse_task_sd_prior(text: str) -> tuple:
    """``"1,1,0.2"`` -> (1.0, 1.0, 0.2), the command-line form of :attr:`RiskFitSettings.task_sd_prior`."""
    scales = _three_positive_scales(p.strip() for p in str(text).split(","))
    if scales is None:
        raise ValueError(f"--task-sd-prior must be 3 positive comma-separated scales, but got {text!r}; "
                         "pass e.g. 1,1,0.5 (the default) or 1,1,0.2.")
    return scales


# ----------------------------------------------------------------------------- model

def risk_model(s, obs, n_tasks: int, lkj_eta: float = 2.0, log_floor: float | None = None,
               task_sd_prior=DEFAULT_TASK_SD_PRIOR):
    """NumPyro model (pure function of its data). Risk values are in units of the risk scale.

    Parameters
    ----------
    s : (n_tasks, p) standardised static features.
    obs : dict of the :class:`plan_probe._risk_likelihood.ObservationArrays` fields (Gamma terms of
        independent observations, deepest nested residuals and signed increments; sign-unknown
        nested runs as padded chains). The likelihood is :func:`plan_probe._risk_likelihood.total_loglik`.
    log_floor : log of the variance floor δ (risk-scale units) added to every term, or None.
    task_sd_prior : half-normal scales of the task spread :math:`\sigma` of the three log-parameters.
    """
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    from plan_probe._risk_likelihood import chain_loglik, gamma_loglik, log_variance

    p = s.shape[1]
    b = numpyro.sample("b", dist.Normal(jnp.array([-1.0, 1.5, np.log(0.5)]), jnp.array([2.5, 2.5, 0.75])).to_event(1))
    B = numpyro.sample("B", dist.Normal(0.0, 1.0).expand([3, p]).to_event(2))
    sigma = numpyro.sample("sigma", dist.HalfNormal(jnp.array([float(x) for x in task_sd_prior])).to_event(1))
    l_omega = numpyro.sample("l_omega", dist.LKJCholesky(3, lkj_eta))
    l_sigma = sigma[:, None] * l_omega
    with numpyro.plate("tasks", n_tasks):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))  # non-centred
    theta = s @ B.T + b + z @ l_sigma.T
    th = theta[obs["task"]]
    log_v = log_variance(th[:, 0], th[:, 1], jnp.exp(th[:, 2]), obs["log_c"], obs["gap"], obs["level"], jnp, log_floor)
    numpyro.factor("obs", gamma_loglik(obs["u"], obs["dof"], log_v, jnp).sum())
    if obs["chain_task"].shape[0]:
        tc = theta[obs["chain_task"]]
        numpyro.factor("chains", chain_loglik(tc[:, 0], tc[:, 1], jnp.exp(tc[:, 2]), obs["chain_abs"], obs["chain_log_c"],
                                              obs["chain_valid"], jnp, log_floor).sum())


def _model_args(data, settings: RiskFitSettings):
    return (data["s"], data["obs"], data["n_tasks"], settings.lkj_eta, settings.log_floor)


def _bound_model(settings: RiskFitSettings):
    """:func:`risk_model` with the prior scales bound as Python constants: the sampler's traced arguments stay
    those of :func:`_model_args`, and the scales enter the model as literals, as the fixed prior did."""
    import functools

    return functools.partial(risk_model, task_sd_prior=tuple(settings.task_sd_prior))


def _rank_normal(x):
    """Rank-normalised split chains (Vehtari et al. 2021): (chains, draws, k) -> (2 chains, draws // 2, k)."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    c, n = x.shape[:2]
    half = n // 2
    x = np.concatenate([x[:, :half], x[:, n - half:]], axis=0)  # split each chain in two
    flat = x.reshape(-1, x.shape[-1])
    ranks = rankdata(flat, axis=0)
    z = ndtri((ranks - 0.375) / (flat.shape[0] + 0.25))
    return z.reshape(x.shape)


def _scalar_names(grouped: dict, labels: dict | None) -> list[str]:
    """One name per scalar of ``grouped`` in flattening order: ``site[i,j]`` with each index replaced by
    ``labels[site][axis][index]`` where given (e.g. ``B[alpha,static_n_examples]``)."""
    names = []
    for site, v in grouped.items():
        shape = np.shape(v)[2:]
        axes = (labels or {}).get(site, ())
        for idx in np.ndindex(*shape) if shape else [()]:
            parts = [str(axes[a][i]) if a < len(axes) and axes[a] is not None else str(i) for a, i in enumerate(idx)]
            names.append(f"{site}[{','.join(parts)}]" if parts else site)
    return names


def mcmc_convergence(grouped: dict, labels: dict | None = None, *, worst: int = 0):
    """Rank-normalised R-hat (max of bulk and folded) and bulk ESS of every scalar in ``grouped``.

    ``grouped`` maps site names to (chains, draws, ...) arrays. Constant scalars (e.g. the fixed
    entries of a Cholesky factor) are skipped. Returns two 1-D arrays (r_hat, bulk_ess); with
    ``worst > 0`` also the ``worst`` scalars of highest R-hat as ``{"name", "r_hat", "ess"}`` dicts
    (names from :func:`_scalar_names` with ``labels``): which parameters the chains disagree on.
    """
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    cols = []
    for v in grouped.values():
        v = np.asarray(v, dtype=float)
        cols.append(v.reshape(v.shape[0], v.shape[1], -1))
    x = np.concatenate(cols, axis=2)
    varying = np.ptp(x.reshape(-1, x.shape[2]), axis=0) > 0
    x = x[:, :, varying]
    if x.shape[2] == 0 or x.shape[1] < 4:
        nan = np.array([np.nan])
        return (nan, nan, []) if worst else (nan, nan)
    bulk = _rank_normal(x)
    folded = _rank_normal(np.abs(x - np.median(x.reshape(-1, x.shape[2]), axis=0)))
    r_hat = np.asarray(np.maximum(split_gelman_rubin(bulk), split_gelman_rubin(folded)))
    ess = np.asarray(effective_sample_size(bulk))
    if not worst:
        return r_hat, ess
    names = [n for n, keep in zip(_scalar_names(grouped, labels), varying) if keep]
    order = np.argsort(-np.nan_to_num(r_hat, nan=np.inf), kind="stable")[:worst]
    def finite(v, digits):  # JSON without NaN: a scalar whose R-hat cannot be computed is reported as null
        return round(float(v), digits) if np.isfinite(v) else None

    return r_hat, ess, [{"name": names[i], "r_hat": finite(r_hat[i], 4), "ess": finite(ess[i], 1)} for i in order]


def convergence_ok(diagnostics: dict) -> tuple[bool, list[str]]:
    """Whether a fit meets the thresholds of the docs (and the reasons when it does not).

    NUTS: max rank-normalised R-hat <= 1.05, min bulk ESS >= 100 and no divergent transition,
    over every sampled parameter (population and per-task). SVI has no R-hat: it must end with a
    finite ELBO whose mean changed by at most 1 % between the last two tenths of the run (the
    optimiser has stopped moving); a fitted SVI posterior is still an approximation (mean-field).
    """
    problems = []
    method = diagnostics.get("method")
    if method == "nuts":
        r_hat, ess, div = diagnostics.get("max_r_hat"), diagnostics.get("min_ess"), diagnostics.get("divergences", 0)
        if r_hat is None or not np.isfinite(r_hat) or r_hat > MAX_R_HAT:
            problems.append(f"max r_hat {r_hat:.3f} > {MAX_R_HAT}" if r_hat is not None else "no r_hat")
        if ess is None or not np.isfinite(ess) or ess < MIN_BULK_ESS:
            problems.append(f"min bulk ESS {ess:.0f} < {MIN_BULK_ESS}" if ess is not None else "no ESS")
        if div:
            problems.append(f"{int(div)} divergent transition(s)")
    elif method == "svi":
        change = diagnostics.get("elbo_rel_change_last_tenth")
        if change is None or not np.isfinite(change) or change > SVI_MAX_REL_CHANGE:
            problems.append(f"ELBO still moving (relative change {change} > {SVI_MAX_REL_CHANGE} over the last tenth)")
    return not problems, problems


def run_nuts(data, settings: RiskFitSettings, key):
    """NUTS on :func:`risk_model`; returns (population draws dict, diagnostics dict).

    Diagnostics: rank-normalised split R-hat (max of bulk and folded) and bulk ESS (Vehtari et
    al. 2021) over the population parameters and, separately, the per-task parameters; divergent
    transitions after warm-up.
    """
    from numpyro.infer import MCMC, NUTS, init_to_median

    kernel = NUTS(_bound_model(settings), target_accept_prob=settings.target_accept, max_tree_depth=settings.max_tree_depth,
                  init_strategy=init_to_median(num_samples=15))
    mcmc = MCMC(kernel, num_warmup=settings.num_warmup, num_samples=settings.num_samples,
                num_chains=settings.num_chains, chain_method="sequential", progress_bar=False)
    mcmc.run(key, *_model_args(data, settings), extra_fields=("diverging",))
    grouped = mcmc.get_samples(group_by_chain=True)
    pop = {name: np.asarray(grouped[name]) for name in ("b", "B", "sigma", "l_omega")}
    features, tasks = data.get("features"), data.get("task_ids")
    labels = {"b": [_PARAMS], "B": [_PARAMS, features], "sigma": [_PARAMS], "z": [tasks, _PARAMS]}
    r_hat, ess, pop_worst = mcmc_convergence(pop, labels, worst=WORST_REPORTED)
    z_r_hat, z_ess, z_worst = mcmc_convergence({"z": np.asarray(grouped["z"])}, labels, worst=WORST_REPORTED)
    worst = sorted(pop_worst + z_worst, key=lambda w: -np.inf if w["r_hat"] is None else -w["r_hat"])
    diverging = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    diagnostics = {
        "method": "nuts",
        "max_r_hat": float(np.nanmax(np.concatenate([r_hat, z_r_hat]))),
        "min_ess": float(np.nanmin(np.concatenate([ess, z_ess]))),
        "population_max_r_hat": float(np.nanmax(r_hat)),
        "population_min_ess": float(np.nanmin(ess)),
        "task_max_r_hat": float(np.nanmax(z_r_hat)),
        "task_min_ess": float(np.nanmin(z_ess)),
        "ess_kind": "bulk (rank-normalised)",
        "divergences": diverging,
        # the scalars of highest R-hat (l_omega[i,j]: the Cholesky factor of the task correlation; z[task,param]:
        # a task's standardised deviation): where a non-converged fit's chains disagree
        "worst_parameters": worst[:WORST_REPORTED],
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

    model = _bound_model(settings)
    guide = AutoNormal(model, init_loc_fn=init_to_median(num_samples=15), init_scale=0.05)
    svi = SVI(model, guide, Adam(settings.svi_lr), Trace_ELBO())
    k_run, k_draw = jax.random.split(key)
    s, obs, n_tasks, eta, log_floor = _model_args(data, settings)
    s, obs = jnp.asarray(s), {k: jnp.asarray(v) for k, v in obs.items()}
    # A jitted step in a Python loop with the data as arguments (not closed-over constants):
    # measured several times faster to compile and run on CPU than svi.run here.
    step = jax.jit(lambda state, s_, obs_: svi.update(state, s_, obs_, n_tasks, eta, log_floor))
    t0 = time.perf_counter()
    state = svi.init(k_run, s, obs, n_tasks, eta, log_floor)
    t1 = time.perf_counter()
    losses = np.empty(settings.svi_steps)
    for i in range(settings.svi_steps):
        state, loss = step(state, s, obs)
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
        "n_obs": int(obs["u"].shape[0]),
    }
    if not np.all(np.isfinite(losses[-tail:])):
        raise ValueError("SVI diverged (non-finite ELBO); lower --svi-lr or use --method nuts.")
    return pop, diagnostics


# ----------------------------------------------------------------------------- estimator

def _checksum(payload: dict) -> str:
    body = {k: v for k, v in payload.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def label_scale(obs) -> float:
    r"""The label scale S recorded with a fitted model: the typical risk before (much) probing.

    .. math:: S = \frac{1}{n_\mathrm{tasks}} \sum_i \overline{u}_{i, c_{\min,i}}

    the mean over tasks of each task's mean risk observation at its own shallowest observed depth
    (risk units = label units squared). For predictor residuals this is the out-of-fold MSE of
    the shallowest probe (close to the static-only residual variance); for fork variances the
    spread left after the shortest prefix. Every observation is unbiased for its L(c), so S is
    unbiased for the population mean of L(c_min,i) whatever the dof; it scales exactly with the
    square of the label. The plan's relative defaults (docs/guide/planning.md) are multiples of S.
    """
    first = obs.loc[obs.groupby("task_id", sort=False)["depth"].transform("min") == obs["depth"]]
    value = float(first.groupby("task_id", sort=False)["risk_obs"].mean().mean())
    return value if np.isfinite(value) and value > 0 else 1.0


def _diagnostics_warning(diagnostics: dict, source: str) -> str | None:
    """One warning line for a model whose fit did not meet the convergence thresholds, else None."""
    if diagnostics.get("ok", True):
        return None
    reasons = "; ".join(diagnostics.get("problems", [])) or "diagnostics.ok is false"
    worst = [w for w in diagnostics.get("worst_parameters", []) if (w.get("r_hat") or 0) > MAX_R_HAT][:3]
    where = ""
    if worst:
        where = " the chains disagree most on " + ", ".join(f"{w['name']} (R-hat {w['r_hat']:.2f})" for w in worst) + ";"
    return (f"risk model {source} did not converge cleanly ({reasons});{where} its regimes and probe lengths are "
            "uncertain beyond their intervals: refit it with more --warmup/--draws, a higher --target-accept "
            "(divergences), a smaller alpha spread prior (--task-sd-prior 1,1,0.2) when the disagreement is on alpha, "
            "a larger --lkj-eta (e.g. 4) when it is on l_omega (the task correlation), or --method nuts before "
            "relying on the plan.")


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
    label_scale_ : float, the typical pre-probe risk S (:func:`label_scale`) the plan's relative
        defaults refer to
    diagnostics_ : dict, with ``ok`` (convergence thresholds met, :func:`convergence_ok`) and
        ``problems`` (the reasons when not)
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
        from plan_probe._risk_likelihood import observation_arrays

        arrays = observation_arrays(obs, {t: i for i, t in enumerate(task_ids)})
        risk = obs["risk_obs"].to_numpy(dtype=float)
        positive = risk[risk > 0]
        scale = float(np.median(positive)) if positive.size else 1.0  # internal unit: O(1) numbers for the sampler
        arrays = arrays.scaled(scale)
        data = {"s": s, "obs": {k: getattr(arrays, k) for k in arrays.__dataclass_fields__}, "n_tasks": len(task_ids),
                "features": list(statics), "task_ids": [str(t) for t in task_ids]}
        method = settings.method
        if method == "auto":
            method = "svi" if len(task_ids) > AUTO_SVI_TASKS else "nuts"
        log.info("fitting risk model on %d tasks x %d observations with %s", len(task_ids), len(obs), method)
        start = time.perf_counter()
        key = jax.random.PRNGKey(int(seed))
        pop, diagnostics = (run_nuts if method == "nuts" else run_svi)(data, settings, key)
        diagnostics["fit_seconds"] = round(time.perf_counter() - start, 3)
        diagnostics["observations"] = arrays.counts
        diagnostics["ok"], diagnostics["problems"] = convergence_ok(diagnostics)
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
        self.label_scale_ = label_scale(obs)
        self.label_scale_rule_ = LABEL_SCALE_RULE
        self.diagnostics_ = diagnostics
        self.method_ = method
        self.seed_ = int(seed)
        self.n_tasks_, self.n_obs_ = len(task_ids), len(obs)
        self.settings_ = settings
        return self

    @classmethod
    def from_population(cls, B, b, sigma_chol, static_features, feature_mean=None, feature_std=None, *,
                        label_scale: float = 1.0) -> "RiskModel":
        """A model whose population parameters are known (one or more draws), without fitting.

        ``B`` (n, 3, p) or (3, p), ``b`` (n, 3) or (3,), ``sigma_chol`` (n, 3, 3) or (3, 3), in
        original risk units on standardised features; ``label_scale`` is the S the plan's relative
        defaults refer to (risk units). Useful for planning from a known population
        and for checking the planner separately from the fit.
        """
        p = len(static_features)
        B = np.asarray(B, dtype=float).reshape(-1, 3, p)
        b = np.asarray(b, dtype=float).reshape(-1, 3)
        L = np.asarray(sigma_chol, dtype=float).reshape(-1, 3, 3)
        if not (B.shape[0] == b.shape[0] == L.shape[0]):
            raise ValueError(f"B, b and sigma_chol must have the same number of draws, but got {B.shape[0]}, {b.shape[0]}, {L.shape[0]}; align them.")
        model = cls(RiskFitSettings(variance_floor=0.0))  # no fit, so no risk scale for a relative floor
        model.draws_ = {"b": b, "B": B, "sigma_chol": L}
        model.static_features_ = list(static_features)
        model.feature_mean_ = np.zeros(p) if feature_mean is None else np.asarray(feature_mean, dtype=float)
        model.feature_std_ = np.ones(p) if feature_std is None else np.asarray(feature_std, dtype=float)
        if not (np.isfinite(label_scale) and label_scale > 0):
            raise ValueError(f"label_scale must be positive, but got {label_scale=}; pass the typical risk S > 0.")
        model.risk_scale_ = 1.0
        model.label_scale_ = float(label_scale)
        model.label_scale_rule_ = "given (RiskModel.from_population)"
        model.diagnostics_ = {"method": "known_population", "ok": True, "problems": []}
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
            "label_scale": self.label_scale_,
            "label_scale_rule": getattr(self, "label_scale_rule_", LABEL_SCALE_RULE),
            "settings": asdict(self.settings_),
            "method": self.method_,
            "seed": self.seed_,
            "n_tasks": self.n_tasks_,
            "n_obs": self.n_obs_,
            # the wall time is reported, not saved: the same seed must give the same bytes
            "diagnostics": {k: v for k, v in self.diagnostics_.items() if k != "fit_seconds"},
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
        check_risk_model_payload(payload, source)  # the checksum guards against corruption, not nonsense
        try:
            model = cls(RiskFitSettings(**payload["settings"]))
            model.draws_ = {k: np.asarray(payload["draws"][k], dtype=float) for k in ("b", "B", "sigma_chol")}
            model.static_features_ = list(payload["static_features"])
            model.feature_mean_ = np.asarray(payload["feature_mean"], dtype=float)
            model.feature_std_ = np.asarray(payload["feature_std"], dtype=float)
            model.risk_scale_ = float(payload["risk_scale"])
            model.label_scale_ = float(payload["label_scale"])
            model.label_scale_rule_ = str(payload.get("label_scale_rule", LABEL_SCALE_RULE))
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

    def convergence_warning(self, source: str = "") -> str | None:
        """The warning ``fit-risk``, ``plan`` and ``run`` print for a model with ``diagnostics.ok`` false, else None."""
        self._check_fitted()
        return _diagnostics_warning(self.diagnostics_, source or "")

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
        pilot rows (``depth, risk_obs, dof``, optionally ``run_id`` / ``residual`` for nested
        residual vectors) is updated by importance resampling of ``oversample * n_draws``
        regression draws with the same likelihood as the fit (:mod:`plan_probe._risk_likelihood`).

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
            tasks_df[[c for c in tasks_df.columns
                      if c in ("task_id", "depth", "risk_obs", "dof", "run_id", "residual") or c in self.static_features_]],
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
        from plan_probe._risk_likelihood import chain_loglik, gamma_loglik, log_variance, observation_arrays

        pos = {t: i for i, t in enumerate(tasks["task_id"])}
        which = np.unique(pilots["task_id"].map(pos).to_numpy())
        arr = observation_arrays(pilots, {tasks["task_id"].iloc[w]: j for j, w in enumerate(which)})
        m = n_draws * max(int(oversample), 1)
        prop = self._theta_draws(s[which], m, rng)  # (3, n_p, m)
        th = prop[:, arr.task]  # (3, n_terms, m)
        # pilots are in original risk units: the floor is relative to the fit's risk scale
        floor = self.settings_.variance_floor * self.risk_scale_
        log_floor = float(np.log(floor)) if floor > 0 else None
        log_v = log_variance(th[0], th[1], np.exp(th[2]), arr.log_c[:, None], arr.gap[:, None], arr.level[:, None],
                             np, log_floor)
        logw = np.zeros((which.size, m))
        np.add.at(logw, arr.task, gamma_loglik(arr.u[:, None], arr.dof[:, None], log_v))
        if arr.chain_task.size:
            tc = prop[:, arr.chain_task]
            ll = chain_loglik(tc[0], tc[1], np.exp(tc[2]), arr.chain_abs[:, None, :], arr.chain_log_c[:, None, :],
                              arr.chain_valid[:, None, :], np, log_floor)
            np.add.at(logw, arr.chain_task, ll)
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
