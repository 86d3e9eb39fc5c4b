"""Risk decomposition estimators from fork samples and the paper-protocol power-law fit.

Fork protocol: at depth ``c``, ``n_prefixes`` independent runs are stopped at step ``c``; each is
continued ``n_forks`` times with fresh seeds to the end and scored. The array of final scores has
shape ``(n_prefixes, n_forks)``. Within one prefix the forks share :math:`I_c`, so their sample
variance is an unbiased estimate of :math:`\\mathrm{Var}(R\\mid I_c)` for that prefix; averaging over
prefixes estimates :math:`L(c) = \\mathbb E[\\mathrm{Var}(R\\mid I_c)]` (Prop. 4.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from plan_probe.theory._validate import as_float_array, check_positive

__all__ = [
    "ForkEstimate",
    "fork_risk",
    "RiskDecomposition",
    "decompose_risk",
    "PowerLawFit",
    "fit_power_law",
    "power_law_deviance",
    "power_law_alpha_interval",
]


@dataclass(frozen=True)
class ForkEstimate:
    """Estimate of :math:`L(c)` from one depth's forks.

    Attributes
    ----------
    value : float
        Mean over prefixes of the unbiased within-prefix sample variance.
    se : float
        Standard error from the spread of the per-prefix variances across prefixes.
    dof : float
        Nominal degrees of freedom ``n_prefixes * (n_forks - 1)`` (exact for Gaussian scores with a
        prefix-independent variance; the ``dof`` column of docs/theory.md §3).
    n_prefixes, n_forks : int
    """

    value: float
    se: float
    dof: float
    n_prefixes: int
    n_forks: int


def _check_forks(name: str, samples) -> np.ndarray:
    arr = as_float_array(name, samples)
    if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ValueError(
            f"{name} must have shape (n_prefixes >= 2, n_forks >= 2), but got shape {arr.shape}; "
            "run at least 2 prefixes with at least 2 forks each."
        )
    return arr


def fork_risk(samples) -> ForkEstimate:
    r"""Estimate :math:`L(c) = \mathbb E[\mathrm{Var}(R\mid I_c)]` from fork samples.

    .. math:: \hat L(c) = \frac1P\sum_{i=1}^P s_i^2, \qquad
              s_i^2 = \frac1{F-1}\sum_{f=1}^F (R_{if} - \bar R_i)^2, \qquad
              \widehat{\mathrm{SE}} = \frac{\mathrm{sd}(s_1^2,\dots,s_P^2)}{\sqrt P}

    (Prop. 4.1's :math:`L(c)` by the fork protocol.) :math:`\hat L` is unbiased whatever the score
    distribution. The SE treats prefixes as independent draws of :math:`I_c`, which is what they
    are, and so also covers prefix-to-prefix changes of :math:`\mathrm{Var}(R\mid I_c)`.

    Parameters
    ----------
    samples : array_like, shape (n_prefixes, n_forks)
        Final scores; row ``i`` holds the forks of prefix ``i``. At least 2 x 2.
    """
    arr = _check_forks("fork samples", samples)
    n_prefixes, n_forks = arr.shape
    per_prefix = arr.var(axis=1, ddof=1)
    value = float(per_prefix.mean())
    se = float(per_prefix.std(ddof=1) / np.sqrt(n_prefixes))
    return ForkEstimate(value=value, se=se, dof=float(n_prefixes * (n_forks - 1)), n_prefixes=n_prefixes, n_forks=n_forks)


@dataclass(frozen=True)
class RiskDecomposition:
    """:math:`L(c) = L_\\mathrm{int} + V_\\mathrm{opt}(c)` estimated at each depth, with standard errors.

    ``l_int_source`` is ``"forks"`` (from forks of complete trajectories) or ``"fit"`` (the floor of
    a :func:`fit_power_law` fit to the :math:`\\hat L(c)`).
    """

    depths: np.ndarray
    risk: np.ndarray
    risk_se: np.ndarray
    dof: np.ndarray
    l_int: float
    l_int_se: float
    v_opt: np.ndarray
    v_opt_se: np.ndarray
    l_int_source: str


def decompose_risk(depths, fork_samples, final_samples=None) -> RiskDecomposition:
    r"""Estimate :math:`L(c)`, :math:`L_\mathrm{int}` and :math:`V_\mathrm{opt}(c) = L(c) - L_\mathrm{int}`.

    Prop. 4.1: :math:`L(c) = L_\mathrm{int} + V_\mathrm{opt}(c)`, :math:`L_\mathrm{int} = \mathbb E[\mathrm{Var}(R\mid I_\infty)]`.

    * :math:`\hat L(c)` by :func:`fork_risk` at each depth.
    * :math:`\hat L_\mathrm{int}` from ``final_samples`` (forks that share the *whole* trajectory, so
      only evaluation noise differs: the ":math:`c=\infty`" forks) by :func:`fork_risk`; without
      them, the floor of the Gamma-likelihood fit :math:`L_\mathrm{int} + K c^{-\alpha}` of
      :func:`fit_power_law` with its standard error.
    * :math:`\widehat{\mathrm{SE}}(\hat V_\mathrm{opt}) = \sqrt{\widehat{\mathrm{SE}}(\hat L)^2 + \widehat{\mathrm{SE}}(\hat L_\mathrm{int})^2}`,
      exact when each depth uses its own prefixes (independent samples). With a fitted floor the two
      terms are positively correlated, so this SE is conservative.

    Parameters
    ----------
    depths : array_like of positive numbers, shape (n,)
    fork_samples : sequence of n arrays, each (n_prefixes, n_forks)
    final_samples : array_like, shape (n_prefixes, n_forks), optional
    """
    depths = check_positive("depths", depths)
    if depths.ndim != 1:
        raise ValueError(f"depths must be one-dimensional, but got shape {depths.shape}; pass one depth per fork array.")
    if len(fork_samples) != depths.size:
        raise ValueError(
            f"there must be one fork array per depth, but got {len(fork_samples)} arrays for {depths.size} depths; "
            "pass matching lists."
        )
    estimates = [fork_risk(s) for s in fork_samples]
    risk = np.array([e.value for e in estimates])
    risk_se = np.array([e.se for e in estimates])
    dof = np.array([e.dof for e in estimates])
    if final_samples is not None:
        final = fork_risk(final_samples)
        l_int, l_int_se, source = final.value, final.se, "forks"
    else:
        fit = fit_power_law(depths, risk, dof=dof)
        l_int, l_int_se, source = fit.l_int, fit.l_int_se, "fit"
    return RiskDecomposition(
        depths=depths,
        risk=risk,
        risk_se=risk_se,
        dof=dof,
        l_int=float(l_int),
        l_int_se=float(l_int_se),
        v_opt=risk - l_int,
        v_opt_se=np.sqrt(risk_se**2 + l_int_se**2),
        l_int_source=source,
    )


@dataclass(frozen=True)
class PowerLawFit:
    """Fit of :math:`\\hat U(c) \\approx L_\\mathrm{int} + K c^{-\\alpha}`.

    ``cov`` is the covariance of ``(l_int, log k, log alpha)`` from the inverse Fisher information;
    the natural-scale SEs use the delta method (``k_se = k * sd(log k)``). ``method`` is
    ``"gamma"`` (likelihood with degrees of freedom) or ``"wls"`` (weighted least squares with SEs).
    """

    l_int: float
    k: float
    alpha: float
    l_int_se: float
    k_se: float
    alpha_se: float
    cov: np.ndarray
    method: str
    nll: float
    n_obs: int

    def to_dict(self) -> dict:
        """JSON-ready summary (floats and nested lists)."""
        return {
            "l_int": self.l_int,
            "k": self.k,
            "alpha": self.alpha,
            "l_int_se": self.l_int_se,
            "k_se": self.k_se,
            "alpha_se": self.alpha_se,
            "cov_l_int_logk_logalpha": np.asarray(self.cov).tolist(),
            "method": self.method,
            "n_obs": self.n_obs,
        }

    def draws(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Laplace-approximation draws of ``(l_int, k, alpha)``: Gaussian in ``(l_int, log k, log alpha)``,
        ``l_int`` reflected at 0 to stay non-negative, ``log k`` clipped to [-100, 100] and ``alpha`` to
        the fit's bounds [1e-3, 20]."""
        mean = np.array([self.l_int, np.log(self.k), np.log(self.alpha)])
        cov = 0.5 * (np.asarray(self.cov) + np.asarray(self.cov).T)
        eigval, eigvec = np.linalg.eigh(cov)
        root = eigvec * np.sqrt(np.clip(eigval, 0.0, None))  # pinv's round-off can leave tiny negatives
        z = mean + rng.standard_normal((int(n), 3)) @ root.T
        # a weakly identified fit can have a huge log-scale spread: keep draws inside the fit's box
        log_k = np.clip(z[:, 1], -100.0, 100.0)
        log_alpha = np.clip(z[:, 2], *_LOG_ALPHA_BOUNDS)
        return np.abs(z[:, 0]), np.exp(log_k), np.exp(log_alpha)


_LOG_ALPHA_BOUNDS = (np.log(1e-3), np.log(20.0))


def fit_power_law(depths, risk, dof=None, se=None) -> PowerLawFit:
    r"""Fit :math:`\hat U(c) \approx L_\mathrm{int} + K c^{-\alpha}` (the paper's protocol, Prop. 5.1 envelope).

    With degrees of freedom (the fork protocol's ``dof``, docs/theory.md §2) the likelihood is Gamma:
    :math:`\nu_i \hat U_i / L(c_i) \sim \chi^2_{\nu_i}`, i.e. minimise

    .. math:: \sum_i \frac{\nu_i}{2}\Big(\log L(c_i) + \frac{\hat U_i}{L(c_i)}\Big), \qquad L(c) = L_\mathrm{int} + K c^{-\alpha};

    with standard errors instead, weighted least squares
    :math:`\sum_i (\hat U_i - L(c_i))^2 / (2\,\mathrm{se}_i^2)`. Parameters are
    :math:`(L_\mathrm{int} \ge 0, \log K, \log\alpha)`, :math:`\alpha \in [10^{-3}, 20]`; the minimiser is
    the best of a small deterministic grid of starts (the surface has flat valleys where a slow decay
    trades against the floor). The covariance is the inverse expected Fisher information
    :math:`J^\top W J` (:math:`W = \nu/(2L^2)` or :math:`1/\mathrm{se}^2`), so standard errors are
    asymptotic; near :math:`L_\mathrm{int} = 0` the floor's SE is one-sided in reality.

    Parameters
    ----------
    depths : array_like, shape (n,), positive
    risk : array_like, shape (n,), positive
        Risk observations :math:`\hat U(c_i)` (e.g. :attr:`ForkEstimate.value`).
    dof : array_like, shape (n,), optional
        Degrees of freedom of each observation (> 0). Preferred.
    se : array_like, shape (n,), optional
        Standard errors (> 0), used when ``dof`` is not given.

    Returns
    -------
    PowerLawFit
    """
    c = check_positive("depths", depths)
    u = check_positive("risk", risk)
    if c.ndim != 1 or c.shape != u.shape:
        raise ValueError(f"depths and risk must be 1-D of the same length, but got shapes {c.shape} and {u.shape}; pass one risk per depth.")
    if np.unique(c).size < 3:
        raise ValueError(
            f"a three-parameter power law needs at least 3 distinct depths, but got {np.unique(c).size}; probe at more depths."
        )
    if dof is not None:
        nu = np.broadcast_to(check_positive("dof", dof), c.shape).astype(float)
        method = "gamma"
    elif se is not None:
        sd = np.broadcast_to(check_positive("se", se), c.shape).astype(float)
        method = "wls"
    else:
        raise ValueError("fit_power_law needs dof or se for its weights, but got neither; pass dof= (fork protocol) or se=.")

    scale = float(np.median(u))  # work in units of the typical risk so the optimiser sees O(1) numbers
    us = u / scale
    logc = np.log(c)

    def curve(p):
        l_int, logk, loga = p
        powc = np.exp(logk - np.exp(loga) * logc)
        return l_int + powc, powc

    def jac(p, powc):
        return np.stack([np.ones_like(powc), powc, -powc * np.exp(p[2]) * logc], axis=1)

    def objective(p):
        lc, powc = curve(p)
        if method == "gamma":
            val = np.sum(0.5 * nu * (np.log(lc) + us / lc))
            dl = 0.5 * nu * (1.0 / lc - us / lc**2)
        else:
            r = us - lc
            val = np.sum(0.5 * (r / (sd / scale)) ** 2)
            dl = -r / (sd / scale) ** 2
        return val, jac(p, powc).T @ dl

    def fisher(p):
        lc, powc = curve(p)
        jm = jac(p, powc)
        weight = 0.5 * nu / lc**2 if method == "gamma" else 1.0 / (sd / scale) ** 2
        return jm.T @ (weight[:, None] * jm)

    p0 = _profile_start(logc, us, nu if method == "gamma" else None, None if method == "gamma" else sd / scale, objective)
    best_x, best_fun = _fisher_scoring(objective, fisher, p0)
    p = best_x
    info = fisher(p)
    cov = np.linalg.pinv(info, rcond=1e-13, hermitian=True)
    # back to natural units: l_int scales with the risk, log k shifts by log(scale)
    cov[0, :] *= scale
    cov[:, 0] *= scale
    l_int = float(p[0]) * scale
    k = float(np.exp(p[1])) * scale
    alpha = float(np.exp(p[2]))
    sds = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    if method == "gamma":
        nll = float(best_fun) + float(np.sum(0.5 * nu * np.log(scale)))
    else:
        nll = float(best_fun)
    return PowerLawFit(
        l_int=l_int,
        k=k,
        alpha=alpha,
        l_int_se=float(sds[0]),
        k_se=float(k * sds[1]),
        alpha_se=float(alpha * sds[2]),
        cov=cov,
        method=method,
        nll=nll,
        n_obs=int(c.size),
    )


def _profile_start(logc, us, nu, sd, objective) -> np.ndarray:
    """Best point of a grid over alpha, with (L_int >= 0, K > 0) by weighted least squares at each alpha.

    For fixed alpha the curve is linear in (L_int, K); weights nu/(2 u^2) are the Gamma likelihood's
    curvature at the data (or 1/se^2). The grid makes the start deterministic and avoids the flat
    valleys where a local optimiser started elsewhere stalls.
    """
    weight = 0.5 * nu / us**2 if nu is not None else 1.0 / sd**2
    best_p, best_val = None, np.inf
    for log_alpha in np.linspace(_LOG_ALPHA_BOUNDS[0], _LOG_ALPHA_BOUNDS[1], 80):
        x = np.exp(-np.exp(log_alpha) * logc)
        design = np.stack([np.ones_like(x), x], axis=1)
        coef = _nonneg_wls(design, us, weight)
        p = np.array([coef[0], np.log(max(coef[1], 1e-12)), log_alpha])
        val = objective(p)[0]
        if val < best_val:
            best_p, best_val = p, val
    return best_p


def _nonneg_wls(design: np.ndarray, y: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Two-column weighted least squares with both coefficients clipped to be non-negative."""
    sw = np.sqrt(weight)
    coef, *_ = np.linalg.lstsq(design * sw[:, None], y * sw, rcond=None)
    if coef[0] >= 0 and coef[1] > 0:
        return coef
    # one coefficient on its bound: fit the other alone and keep the better of the two
    options = []
    for col in (0, 1):
        xc = design[:, col]
        b = max(float(np.sum(weight * xc * y) / np.sum(weight * xc * xc)), 0.0)
        cand = np.zeros(2)
        cand[col] = b
        options.append((float(np.sum(weight * (y - design @ cand) ** 2)), cand))
    return min(options, key=lambda o: o[0])[1]


def _fisher_scoring(objective, fisher, p0: np.ndarray, max_iter: int = 200, lo=None, hi=None) -> tuple[np.ndarray, float]:
    """Levenberg-damped Fisher scoring, projected onto the box (L_int >= 0, alpha bounds).

    Three parameters and a cheap exact Fisher information make this far faster and steadier than a
    quasi-Newton method on the curved valleys of the power-law likelihood. ``lo`` / ``hi`` replace
    the box (the profile likelihood solves the two-parameter problem at fixed alpha).
    """
    lo = np.array([0.0, -60.0, _LOG_ALPHA_BOUNDS[0]]) if lo is None else np.asarray(lo, dtype=float)
    hi = np.array([np.inf, 60.0, _LOG_ALPHA_BOUNDS[1]]) if hi is None else np.asarray(hi, dtype=float)
    p = p0.copy()
    val, grad = objective(p)
    damping = 1e-3
    for _ in range(max_iter):
        info = fisher(p)
        diag = np.diag(info).copy()
        diag[diag <= 0] = 1.0
        improved = False
        while damping < 1e12:
            step = np.linalg.solve(info + damping * np.diag(diag), -grad)
            cand = np.clip(p + step, lo, hi)
            cand_val, cand_grad = objective(cand)
            if np.isfinite(cand_val) and cand_val <= val:
                improved = True
                break
            damping *= 10.0
        if not improved:
            break
        decrease, moved = val - cand_val, np.max(np.abs(cand - p))
        p, val, grad = cand, cand_val, cand_grad
        damping = max(damping / 10.0, 1e-9)
        if moved < 1e-10 or (decrease <= 1e-14 * (1.0 + abs(val)) and damping <= 1e-3):
            break
    return p, float(val)


def _profile_nll(logc, us, nu, log_alpha: float) -> float:
    """min over (L_int >= 0, log K) of the Gamma negative log-likelihood at fixed alpha (scaled units)."""
    x = np.exp(-np.exp(log_alpha) * logc)

    def parts(q):
        powc = np.exp(q[1]) * x
        return q[0] + powc, powc

    def objective(q):
        lc, powc = parts(q)
        dl = 0.5 * nu * (1.0 / lc - us / lc**2)
        return float(np.sum(0.5 * nu * (np.log(lc) + us / lc))), np.stack([np.ones_like(x), powc], axis=1).T @ dl

    def fisher(q):
        lc, powc = parts(q)
        jm = np.stack([np.ones_like(x), powc], axis=1)
        return jm.T @ ((0.5 * nu / lc**2)[:, None] * jm)

    coef = _nonneg_wls(np.stack([np.ones_like(x), x], axis=1), us, 0.5 * nu / us**2)
    starts = [np.array([coef[0], np.log(max(coef[1], 1e-12))]), np.array([0.0, np.log(max(us.max(), 1e-12))]),
              np.array([float(us.mean()), -30.0])]
    return min(_fisher_scoring(objective, fisher, q0, lo=[0.0, -60.0], hi=[np.inf, 60.0])[1] for q0 in starts)


def _gamma_data(depths, risk, dof):
    c = check_positive("depths", depths)
    u = check_positive("risk", risk)
    if c.ndim != 1 or c.shape != u.shape or np.unique(c).size < 3:
        raise ValueError(f"depths and risk must be 1-D of one length with >= 3 distinct depths, but got shapes {c.shape}, "
                         f"{u.shape}; pass one risk per depth.")
    nu = np.broadcast_to(check_positive("dof", dof), c.shape).astype(float)
    scale = float(np.median(u))
    return np.log(c), u / scale, nu


def power_law_deviance(depths, risk, dof, alpha) -> float:
    r"""Profile-likelihood deviance of ``alpha`` under the Gamma likelihood of :func:`fit_power_law`.

    .. math:: D(\alpha_0) = 2\Big(\min_{L_\mathrm{int} \ge 0,\,K} \ell(L_\mathrm{int}, K, \alpha_0)
              - \min_{L_\mathrm{int},\,K,\,\alpha} \ell\Big)

    with :math:`\ell` the negative log-likelihood. By Wilks' theorem :math:`D(\alpha_\mathrm{true})`
    is approximately :math:`\chi^2_1`; unlike the Wald interval (inverse Fisher information),
    this holds up with few degrees of freedom, where the likelihood is far from quadratic.
    """
    logc, us, nu = _gamma_data(depths, risk, dof)
    log_a = float(np.log(check_positive("alpha", alpha)))
    fit = fit_power_law(np.exp(logc), us, dof=nu)
    best = min(float(np.sum(0.5 * nu * (np.log(fit.l_int + fit.k * np.exp(-fit.alpha * logc))
                                          + us / (fit.l_int + fit.k * np.exp(-fit.alpha * logc))))),
               _profile_nll(logc, us, nu, float(np.log(fit.alpha))))
    return max(2.0 * (_profile_nll(logc, us, nu, log_a) - best), 0.0)


def power_law_alpha_interval(depths, risk, dof, level: float = 0.95, n_grid: int = 60) -> tuple[float, float]:
    r"""Profile-likelihood interval of alpha: :math:`\{\alpha : D(\alpha) \le \chi^2_{1, \mathrm{level}}\}`.

    :func:`power_law_deviance` on a log grid over the fit's alpha bounds [1e-3, 20], refined by
    Brent's method at each crossing; an end that reaches a bound is that bound (the data do not
    exclude it). Use it instead of ``PowerLawFit.alpha_se`` when the total dof is small: with dof 1
    per depth over 7 depths (L_int 1, K 20, alpha 0.5; 200 simulated fits) the Wald interval of
    alpha covered 57 % at nominal 95 %, the profile interval 97 %; at dof 15, 98 % and 94 %
    (tests/test_theory_decomposition.py checks both dofs).
    """
    from scipy.optimize import brentq
    from scipy.stats import chi2

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), but got {level=}; use e.g. 0.95.")
    logc, us, nu = _gamma_data(depths, risk, dof)
    fit = fit_power_law(np.exp(logc), us, dof=nu)
    lc_hat = fit.l_int + fit.k * np.exp(-fit.alpha * logc)
    best = min(float(np.sum(0.5 * nu * (np.log(lc_hat) + us / lc_hat))), _profile_nll(logc, us, nu, float(np.log(fit.alpha))))
    cut = float(chi2.ppf(level, 1))

    def excess(log_a):
        return 2.0 * (_profile_nll(logc, us, nu, log_a) - best) - cut

    grid = np.linspace(_LOG_ALPHA_BOUNDS[0], _LOG_ALPHA_BOUNDS[1], int(n_grid))
    vals = np.array([excess(g) for g in grid])
    inside = np.flatnonzero(vals <= 0)
    if inside.size == 0:  # the grid missed a narrow interval: it contains the MLE
        return float(fit.alpha), float(fit.alpha)
    i, j = inside[0], inside[-1]
    lo = grid[0] if i == 0 else brentq(excess, grid[i - 1], grid[i], xtol=1e-6)
    hi = grid[-1] if j == grid.size - 1 else brentq(excess, grid[j], grid[j + 1], xtol=1e-6)
    return float(np.exp(lo)), float(np.exp(hi))
