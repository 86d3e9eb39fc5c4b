r"""Likelihood of risk observations, independent and nested (docs/theory.md §2).

Two kinds of observation enter the risk model:

* **Independent** (a fork variance with dof :math:`\nu`, or any row without a ``run_id``): an
  unbiased estimate u of :math:`L(c)` with :math:`\nu u / L(c) \sim \chi^2_\nu`, i.e.
  :math:`u \sim \mathrm{Gamma}(\nu/2,\ \mathrm{rate}=\nu/(2L(c)))`.
* **Nested residual vectors** (rows sharing a ``run_id`` with dof 1): the out-of-fold residuals
  :math:`e(c_1), \dots, e(c_k)` of one run predicted at depths :math:`c_1 < \dots < c_k` from nested
  information sets. For the Bayes predictor :math:`E[R \mid I_c]` is a martingale in c, so
  :math:`\mathrm{Cov}(e(c_i), e(c_j)) = L(\max(c_i, c_j))`; equivalently the deepest residual and
  the increments are independent Gaussians,

  .. math:: e(c_k) \sim \mathcal N(0, L(c_k)), \qquad
            e(c_i) - e(c_{i+1}) \sim \mathcal N\big(0,\ L(c_i) - L(c_{i+1})\big)
            = \mathcal N\big(0,\ K (c_i^{-\alpha} - c_{i+1}^{-\alpha})\big).

  With signed residuals every term is a dof-1 Gamma term on a squared value (the deepest residual,
  each increment), so both kinds share one vectorised Gamma likelihood of a *variance*
  :math:`V = L(c_a)` ("level") or :math:`V = L(c_a) - L(c_b)` ("increment").

  **Without the sign** (a nested row whose ``residual`` is missing; then the whole run is treated
  so) only :math:`|e(c_i)|` is known. The increments depend on the unknown signs, so the exact
  likelihood sums the Gaussian density over the :math:`2^{k-1}` sign patterns (the global sign is
  irrelevant). The chain structure makes this a two-state forward recursion, O(k) per run, with
  the same-sign term :math:`(|e_i| - |e_{i+1}|)^2` and the opposite-sign term
  :math:`(|e_i| + |e_{i+1}|)^2`. This is exact and never overstates the information, unlike
  treating the k squares as independent (~k-fold too confident) or dropping all but one.

Every function takes the array module ``xp`` (``numpy`` or ``jax.numpy``) so the NumPyro model and
the NumPy pilot update use one code path; parameter and observation arrays broadcast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ObservationArrays", "observation_arrays", "log_variance", "gamma_loglik", "chain_loglik", "total_loglik"]

#: A stand-in for log 0 that stays finite in float32 arithmetic (the "minus" state's start).
_LOG_ZERO = -1e30


@dataclass(frozen=True)
class ObservationArrays:
    """Risk observations prepared for the likelihood (NumPy arrays).

    Gamma terms (one per independent observation, deepest nested residual or signed increment):
    ``task`` (index into the task list), ``log_c`` (log c_a), ``gap`` (log c_b - log c_a; 1 for
    level terms), ``level`` (True: V = L(c_a); False: V = L(c_a) - L(c_b)), ``u`` (value), ``dof``.

    Sign-unknown nested runs, padded to the longest run: ``chain_task`` (n_chains,),
    ``chain_abs``, ``chain_log_c`` (n_chains, m) sorted by depth, ``chain_valid`` (n_chains,
    m - 1): increment j (between positions j and j + 1) exists.
    """

    task: np.ndarray
    log_c: np.ndarray
    gap: np.ndarray
    level: np.ndarray
    u: np.ndarray
    dof: np.ndarray
    chain_task: np.ndarray
    chain_abs: np.ndarray
    chain_log_c: np.ndarray
    chain_valid: np.ndarray

    @property
    def counts(self) -> dict:
        """How many terms of each kind (recorded in the model's diagnostics)."""
        return {"gamma_terms": int(self.u.size), "increments_signed": int((~self.level).sum()),
                "runs_sign_unknown": int(self.chain_task.size)}

    def scaled(self, factor: float) -> "ObservationArrays":
        """The same observations with every risk value divided by ``factor`` (|e| by sqrt(factor))."""
        return ObservationArrays(self.task, self.log_c, self.gap, self.level, self.u / factor, self.dof, self.chain_task,
                                 self.chain_abs / np.sqrt(factor), self.chain_log_c, self.chain_valid)


def observation_arrays(obs, task_index: dict) -> ObservationArrays:
    """Turn a validated observation table (``plan_probe._tables``) into :class:`ObservationArrays`.

    Rows with a ``run_id`` and ``dof`` 1 are nested residual vectors: the deepest row becomes a
    level term, the others increments (signed ``residual`` on every row of the run) or one
    sign-unknown chain (any residual missing). All other rows are independent level terms.
    """
    import pandas as pd

    n = len(obs)
    task = obs["task_id"].map(task_index).to_numpy()
    if pd.isna(task).any():
        raise ValueError("every observation's task_id must be a known task, but some are not; check the task table.")
    task = task.astype(np.int64)
    depth = obs["depth"].to_numpy(dtype=float)
    risk = obs["risk_obs"].to_numpy(dtype=float)
    dof = obs["dof"].to_numpy(dtype=float)
    run = obs["run_id"].to_numpy(dtype=object) if "run_id" in obs.columns else np.full(n, None, dtype=object)
    resid = obs["residual"].to_numpy(dtype=float) if "residual" in obs.columns else np.full(n, np.nan)
    nested = pd.notna(run) & (dof == 1.0)

    parts = {k: [] for k in ("task", "log_c", "gap", "level", "u", "dof")}

    def add(t, lc, gap, level, u, d):
        for key, val in zip(parts, (t, lc, gap, level, u, d)):
            parts[key].append(np.asarray(val))

    free = ~nested
    add(task[free], np.log(depth[free]), np.ones(free.sum()), np.ones(free.sum(), bool), risk[free], dof[free])
    chains = []
    if nested.any():
        frame = pd.DataFrame({"run": run[nested].astype(str), "task": task[nested], "depth": depth[nested],
                              "risk": risk[nested], "resid": resid[nested]}).sort_values(["run", "depth"], kind="mergesort")
        last = ~frame["run"].duplicated(keep="last").to_numpy()
        add(frame["task"].to_numpy()[last], np.log(frame["depth"].to_numpy()[last]), np.ones(last.sum()),
            np.ones(last.sum(), bool), frame["risk"].to_numpy()[last], np.ones(last.sum()))
        signed = frame.groupby("run", sort=False)["resid"].transform(lambda r: r.notna().all()).to_numpy(dtype=bool)
        nxt = frame.groupby("run", sort=False)[["depth", "resid"]].shift(-1)
        inc = signed & ~last
        d = frame["resid"].to_numpy() - nxt["resid"].to_numpy()
        lc = np.log(frame["depth"].to_numpy())
        add(frame["task"].to_numpy()[inc], lc[inc], (np.log(nxt["depth"].to_numpy()) - lc)[inc], np.zeros(inc.sum(), bool),
            (d**2)[inc], np.ones(inc.sum()))
        for _, g in frame[~signed].groupby("run", sort=True):
            chains.append((int(g["task"].iloc[0]), np.sqrt(g["risk"].to_numpy()), np.log(g["depth"].to_numpy())))
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    m = max((len(c[1]) for c in chains), default=1)
    n_ch = len(chains)
    chain_abs, chain_log_c = np.zeros((n_ch, m)), np.zeros((n_ch, m))
    chain_valid = np.zeros((n_ch, max(m - 1, 0)), dtype=bool)
    for i, (_, a, lc) in enumerate(chains):
        chain_abs[i, : a.size], chain_log_c[i, : a.size] = a, lc
        chain_log_c[i, a.size:] = lc[-1] + 1.0 + np.arange(m - a.size)  # padding: strictly increasing (finite V), masked out
        chain_valid[i, : a.size - 1] = True
    return ObservationArrays(
        task=cat["task"].astype(np.int64), log_c=cat["log_c"].astype(float), gap=cat["gap"].astype(float),
        level=cat["level"].astype(bool), u=cat["u"].astype(float), dof=cat["dof"].astype(float),
        chain_task=np.array([c[0] for c in chains], dtype=np.int64), chain_abs=chain_abs, chain_log_c=chain_log_c,
        chain_valid=chain_valid,
    )


def log_variance(log_l_int, log_k, alpha, log_c, gap, level, xp=np, log_floor=None):
    r"""log V of a term: :math:`\log L(c_a)` (level) or :math:`\log(L(c_a) - L(c_b))` (increment),
    plus the variance floor :math:`\delta` when ``log_floor`` = log δ is given.

    .. math:: L(c_a) - L(c_b) = K c_a^{-\alpha}\,\big(1 - e^{-\alpha(\log c_b - \log c_a)}\big),
              \qquad V' = V + \delta

    computed with ``expm1`` so small gaps and small alpha keep their precision. The unused branch
    is evaluated on safe values (``gap`` forced to 1) so gradients stay finite.

    Why the floor: a predictor with piecewise-constant output (a tree) often gives a run the same
    prediction at two depths, so an observed increment is exactly 0. Its Gaussian density
    :math:`\propto V^{-1/2}` then grows without bound as :math:`V \to 0` (α → 0 or K → 0), the
    posterior piles up at that edge and SVI's ELBO turns non-finite. δ is the resolution at which
    residuals are told apart (independent measurement noise of that variance on every term):
    the likelihood stays bounded, and terms with V ≫ δ are unchanged.
    """
    decay = log_k - alpha * log_c
    safe_gap = xp.where(level, 1.0, gap)
    increment = decay + xp.log(-xp.expm1(-alpha * safe_gap))
    log_v = xp.where(level, xp.logaddexp(log_l_int, decay), increment)
    return log_v if log_floor is None else xp.logaddexp(log_v, log_floor)


def gamma_loglik(u, dof, log_v, xp=np):
    r"""log Gamma(u | dof/2, rate dof/(2V)) without the terms in u alone (they do not involve V).

    .. math:: \tfrac{\nu}{2}\big(\log\tfrac{\nu}{2} - \log V\big) - \tfrac{\nu}{2}\,u / V

    Leaving out :math:`(\nu/2 - 1)\log u` also keeps u = 0 (an exactly repeated prediction) finite.
    """
    shape = dof / 2.0
    return shape * (xp.log(shape) - log_v) - shape * u * xp.exp(-log_v)


def chain_loglik(log_l_int, log_k, alpha, chain_abs, chain_log_c, chain_valid, xp=np, log_floor=None):
    r"""Log-likelihood of the increments of sign-unknown nested runs, summed over the sign patterns.

    Forward recursion from the deepest position (its sign fixed to +, the global sign being
    irrelevant) towards the shallowest: with :math:`m_{\pm}` the log-sum over the signs deeper than
    position j given :math:`s_{j+1} = \pm`,

    .. math:: m'_{+} = \mathrm{logaddexp}(m_{+} + \ell_\mathrm{same},\ m_{-} + \ell_\mathrm{opp}),\quad
              m'_{-} = \mathrm{logaddexp}(m_{+} + \ell_\mathrm{opp},\ m_{-} + \ell_\mathrm{same})

    where :math:`\ell = -\tfrac12 \log V_j - d^2/(2V_j)` with :math:`d = |e_j| \mp |e_{j+1}|`.
    Parameters are per chain (any leading shape that broadcasts with ``chain_abs[:, j]``); returns
    the per-chain log-likelihood (without the 2π constants). ``log_floor``: as in :func:`log_variance`.
    """
    n_inc = chain_valid.shape[-1]
    m_plus = xp.zeros_like(log_l_int + chain_abs[..., 0])
    m_minus = m_plus + _LOG_ZERO
    for j in range(n_inc - 1, -1, -1):
        gap = chain_log_c[..., j + 1] - chain_log_c[..., j]
        log_v = log_variance(log_l_int, log_k, alpha, chain_log_c[..., j], gap, False, xp, log_floor)
        inv = xp.exp(-log_v)
        a, b = chain_abs[..., j], chain_abs[..., j + 1]
        same = -0.5 * log_v - 0.5 * (a - b) ** 2 * inv
        opp = -0.5 * log_v - 0.5 * (a + b) ** 2 * inv
        new_plus = xp.logaddexp(m_plus + same, m_minus + opp)
        new_minus = xp.logaddexp(m_plus + opp, m_minus + same)
        valid = chain_valid[..., j]
        m_plus, m_minus = xp.where(valid, new_plus, m_plus), xp.where(valid, new_minus, m_minus)
    return xp.logaddexp(m_plus, m_minus)


def total_loglik(theta, arrays: ObservationArrays, xp=np, log_floor=None):
    """Sum of every observation's log-likelihood for per-task parameters ``theta`` (n_tasks, 3) in log space.

    ``log_floor``: log of the variance floor δ added to every term's variance (:func:`log_variance`).
    """
    th = theta[arrays.task]
    log_v = log_variance(th[:, 0], th[:, 1], xp.exp(th[:, 2]), arrays.log_c, arrays.gap, arrays.level, xp, log_floor)
    total = gamma_loglik(arrays.u, arrays.dof, log_v, xp).sum()
    if arrays.chain_task.size:
        tc = theta[arrays.chain_task]
        total = total + chain_loglik(tc[:, 0], tc[:, 1], xp.exp(tc[:, 2]), arrays.chain_abs, arrays.chain_log_c,
                                     arrays.chain_valid, xp, log_floor).sum()
    return total
