"""Decay envelope (Prop. 5.1) and the exact optimisation variance of the noisy quadratic model.

The noisy quadratic model (NQM) runs SGD on a diagonal quadratic with additive Gaussian gradient
noise, coordinate by coordinate:

.. math:: \\theta_{t+1} = \\theta_t - \\eta_t (h \\theta_t + \\xi_t), \\qquad
          \\xi_t \\sim \\mathcal N(0, \\sigma^2), \\qquad \\eta_t = \\eta_0 (1 + t/t_0)^{-\\rho}.

The dynamics are linear-Gaussian, so given the state at step ``c`` the final state is Gaussian:

.. math:: \\theta_T \\mid \\theta_c \\sim \\mathcal N\\big(a_{c\\to T}\\,\\theta_c,\\; s^2_{c\\to T}\\big),
          \\quad a_{c\\to T} = \\prod_{t=c}^{T-1} (1-\\eta_t h),
          \\quad s^2_{c\\to T} = \\sigma^2 \\sum_{t=c}^{T-1} \\eta_t^2 \\prod_{s=t+1}^{T-1}(1-\\eta_s h)^2 .

``s^2_{c->T}`` is the *optimisation variance*: the part of the final parameters that the future
noise has not yet decided at step ``c``. Everything here is computed exactly (products in log
space, sums accumulated between the requested depths), not by simulation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import zeta

from plan_probe.theory._validate import as_float_array, check_nonnegative, check_positive

__all__ = [
    "decay_bound",
    "sgd_step_sizes",
    "flat_future_variance",
    "curved_decay_exponent",
    "curved_future_variance",
    "NQMTransfer",
    "nqm_transfer",
    "nqm_risk",
    "nqm_conditional_moments",
    "loglog_slope",
]


def _check_schedule(eta0, t0, rho) -> tuple[float, float, float]:
    eta0 = float(check_positive("eta0", eta0))
    t0 = float(check_positive("t0", t0))
    rho = float(check_positive("rho", rho))
    return eta0, t0, rho


def _check_horizon(horizon) -> int:
    if isinstance(horizon, bool) or int(horizon) != horizon or horizon < 1:
        raise ValueError(f"horizon must be a positive integer number of steps, but got {horizon=}; pass e.g. horizon=1000.")
    return int(horizon)


def decay_bound(rho):
    r"""Upper bound on the decay exponent of :math:`V_\mathrm{opt}` for SGD with :math:`\eta_t \propto t^{-\rho}`.

    .. math:: \alpha \le 2\rho - 1

    (Prop. 5.1 of the risk-decomposition paper.) The final parameters still depend on the future
    noise :math:`\sum_{t \ge c} \eta_t \xi_t`, whose variance along a flat direction is
    :math:`\sigma^2\sum_{t\ge c}\eta_t^2 = \Omega(c^{-(2\rho-1)})`; a smooth score inherits it, so
    :math:`V_\mathrm{opt}(c) \gtrsim K c^{-(2\rho-1)}`. For :math:`\rho \le 1/2` the future noise does
    not vanish at all (the sum diverges), so the exponent is only defined for :math:`\rho > 1/2`.

    Parameters
    ----------
    rho : float or array_like
        Step-size decay exponent, > 0.5.

    Returns
    -------
    float or ndarray
        ``2 * rho - 1``.
    """
    rho_arr = check_positive("rho", rho)
    if np.any(rho_arr <= 0.5):
        raise ValueError(
            f"rho must exceed 0.5 for the future-noise variance to vanish, but got rho={float(np.min(rho_arr)):g}; "
            "use a step-size decay exponent in (0.5, inf)."
        )
    out = 2.0 * rho_arr - 1.0
    return float(out) if out.ndim == 0 else out


def sgd_step_sizes(horizon: int, eta0: float, t0: float, rho: float) -> np.ndarray:
    r"""Step sizes :math:`\eta_t = \eta_0 (1 + t/t_0)^{-\rho}` for :math:`t = 0, \dots, T-1`."""
    horizon = _check_horizon(horizon)
    eta0, t0, rho = _check_schedule(eta0, t0, rho)
    t = np.arange(horizon, dtype=float)
    return eta0 * (1.0 + t / t0) ** (-rho)


def flat_future_variance(c, horizon: int, eta0: float, t0: float, rho: float, noise_var: float = 1.0):
    r"""Closed-form optimisation variance of a flat direction (:math:`h = 0`).

    .. math:: s^2_{c\to T} = \sigma^2 \sum_{t=c}^{T-1} \eta_0^2 (1+t/t_0)^{-2\rho}
              = \sigma^2 \eta_0^2 t_0^{2\rho}\,\big[\zeta(2\rho, t_0 + c) - \zeta(2\rho, t_0 + T)\big]

    with the Hurwitz zeta function; for :math:`t_0 \ll c \ll T` this is
    :math:`\approx \sigma^2\eta_0^2 t_0^{2\rho} c^{-(2\rho-1)}/(2\rho-1)`, the envelope of Prop. 5.1.
    Requires :math:`\rho > 1/2` (else the Hurwitz series diverges; use :func:`nqm_transfer`).
    """
    horizon = _check_horizon(horizon)
    eta0, t0, rho = _check_schedule(eta0, t0, rho)
    decay_bound(rho)  # validates rho > 1/2
    c = check_nonnegative("c", c)
    if np.any(c > horizon):
        raise ValueError(f"depths must not exceed the horizon, but got c={float(np.max(c)):g} > {horizon=}; pass depths in [0, horizon].")
    noise_var = float(check_nonnegative("noise_var", noise_var))
    return noise_var * eta0**2 * t0 ** (2 * rho) * (zeta(2 * rho, t0 + c) - zeta(2 * rho, t0 + horizon))


def curved_decay_exponent(eta0: float, t0: float, curvature: float) -> float:
    r"""Decay exponent of the optimisation variance of a *curved* direction under :math:`\rho = 1`.

    With :math:`\eta_t = \eta_0 t_0/(t_0+t)` the contraction from step :math:`t` to :math:`T` is
    polynomial, :math:`\prod_{s=t+1}^{T-1}(1-\eta_s h) \approx ((t_0+t)/(t_0+T))^{q}`,
    :math:`q = \eta_0 h t_0`, so (:func:`curved_future_variance`)
    :math:`s^2_{c\to T} \propto (t_0+c)^{-(1-2q)}` for :math:`q < 1/2` and :math:`t_0 \ll c \ll T`:

    .. math:: \alpha = \max(1 - 2\eta_0 h t_0,\ 0) \;\le\; 2\rho - 1 = 1 .

    Curvature slows the decay below the envelope of Prop. 5.1 (the noise injected early is partly
    forgotten, so the not-yet-decided part shrinks more slowly in relative terms); for
    :math:`q \ge 1/2` the last steps dominate and :math:`V_\mathrm{opt}` is flat in c.
    """
    eta0, t0, _ = _check_schedule(eta0, t0, 1.0)
    h = float(check_nonnegative("curvature", curvature))
    return max(1.0 - 2.0 * eta0 * h * t0, 0.0)


def curved_future_variance(c, horizon: int, eta0: float, t0: float, curvature: float, noise_var: float = 1.0):
    r"""Closed-form optimisation variance of a curved direction under :math:`\rho = 1` (continuum contraction).

    .. math:: s^2_{c\to T} \approx \sigma^2\eta_0^2 t_0^2\,(t_0+T)^{-2q}
              \big[\zeta(2-2q,\ t_0+c) - \zeta(2-2q,\ t_0+T)\big], \qquad q = \eta_0 h t_0 < 1/2,

    using :math:`\prod_{s=t+1}^{T-1}(1-\eta_s h) \approx \exp(-h\sum_{s>t}\eta_s) \approx ((t_0+t)/(t_0+T))^{q}`
    (accurate when :math:`\eta_0 h \ll 1`). :func:`nqm_transfer` gives the exact value.
    """
    horizon = _check_horizon(horizon)
    eta0, t0, _ = _check_schedule(eta0, t0, 1.0)
    h = float(check_nonnegative("curvature", curvature))
    q = eta0 * h * t0
    if q >= 0.5:
        raise ValueError(f"eta0 * curvature * t0 must be below 1/2 for a power-law decay, but got q={q:g}; lower the curvature.")
    c = check_nonnegative("c", c)
    if np.any(c > horizon):
        raise ValueError(f"depths must not exceed the horizon, but got c={float(np.max(c)):g} > {horizon=}; pass depths in [0, horizon].")
    noise_var = float(check_nonnegative("noise_var", noise_var))
    p = 2.0 - 2.0 * q
    return noise_var * eta0**2 * t0**2 * (t0 + horizon) ** (-2 * q) * (zeta(p, t0 + c) - zeta(p, t0 + horizon))


@dataclass(frozen=True)
class NQMTransfer:
    """Exact Gaussian transfer of the NQM between step ``c`` and the horizon, per depth and direction.

    Attributes
    ----------
    depths : ndarray, shape (n,)
    transfer : ndarray, shape (n, d)
        :math:`a_{c\\to T} = \\prod_{t=c}^{T-1}(1-\\eta_t h)`.
    future_var : ndarray, shape (n, d)
        :math:`s^2_{c\\to T}`, the optimisation variance.
    prefix_mean, prefix_var : ndarray, shape (n, d)
        Mean and variance of :math:`\\theta_c` given the fixed start :math:`\\theta_0`.
    """

    depths: np.ndarray
    transfer: np.ndarray
    future_var: np.ndarray
    prefix_mean: np.ndarray
    prefix_var: np.ndarray


def nqm_transfer(depths, horizon: int, curvatures, noise_var, eta0: float, t0: float, rho: float, theta0=0.0) -> NQMTransfer:
    r"""Exact moments of the NQM's linear-Gaussian dynamics at the requested depths.

    With :math:`G(t) = \sum_{s<t} \log(1-\eta_s h)` (a cumulative sum, so products never underflow
    before they are differenced):

    .. math:: a_{c\to T} = e^{G(T)-G(c)}, \qquad
              s^2_{c\to T} = \sigma^2\sum_{t=c}^{T-1}\eta_t^2 e^{2(G(T)-G(t+1))},

    .. math:: \mathbb E[\theta_c] = e^{G(c)}\theta_0, \qquad
              \mathrm{Var}[\theta_c] = s^2_{0\to c} = \sigma^2\sum_{t<c}\eta_t^2 e^{2(G(c)-G(t+1))}.

    Sums are accumulated segment by segment between consecutive sorted depths, so the cost is
    :math:`O(T d)` time and :math:`O(T)` memory per direction whatever the number of depths.

    Parameters
    ----------
    depths : array_like of int, each in [0, horizon]
    horizon : int
        Number of SGD steps :math:`T`.
    curvatures, noise_var : array_like, shape (d,)
        Curvatures :math:`h_j \ge 0` and gradient-noise variances :math:`\sigma_j^2 \ge 0`;
        :math:`\eta_0 h_j < 1` so every step contracts.
    eta0, t0, rho : float
        Step-size schedule :math:`\eta_t = \eta_0 (1 + t/t_0)^{-\rho}`.
    theta0 : float or array_like, shape (d,)
        Fixed starting point.
    """
    horizon = _check_horizon(horizon)
    eta = sgd_step_sizes(horizon, eta0, t0, rho)
    h = np.atleast_1d(check_nonnegative("curvatures", curvatures))
    sig2 = np.broadcast_to(np.atleast_1d(check_nonnegative("noise_var", noise_var)), h.shape).astype(float)
    th0 = np.broadcast_to(np.atleast_1d(as_float_array("theta0", theta0)), h.shape).astype(float)
    if h.ndim != 1:
        raise ValueError(f"curvatures must be one-dimensional, but got shape {h.shape}; pass one curvature per direction.")
    if float(eta0) * float(h.max()) >= 1.0:
        raise ValueError(
            f"eta0 * max(curvature) must be < 1 so every SGD step contracts, but got {eta0 * float(h.max()):g}; "
            "lower eta0 or the largest curvature."
        )
    c = np.atleast_1d(as_float_array("depths", depths))
    if np.any(c != np.round(c)) or np.any(c < 0) or np.any(c > horizon):
        raise ValueError(f"depths must be integers in [0, horizon={horizon}], but got depths={c.tolist()}; pass whole steps within the horizon.")
    c = c.astype(np.int64)
    order = np.argsort(c, kind="stable")
    cs = c[order]
    n, d = cs.size, h.size
    transfer = np.empty((n, d))
    future_var = np.empty((n, d))
    prefix_mean = np.empty((n, d))
    prefix_var = np.empty((n, d))
    eta2 = eta**2
    for j in range(d):
        g = np.empty(horizon + 1)
        g[0] = 0.0
        np.cumsum(np.log1p(-eta * h[j]), out=g[1:])
        # future noise: walk backwards from T, adding the segment [c_k, c_{k+1}) each time
        acc, upper = 0.0, horizon
        for k in range(n - 1, -1, -1):
            lo = cs[k]
            if lo < upper:
                acc += float(np.sum(eta2[lo:upper] * np.exp(2.0 * (g[horizon] - g[lo + 1 : upper + 1]))))
            upper = lo
            future_var[k, j] = sig2[j] * acc
            transfer[k, j] = np.exp(g[horizon] - g[lo])
        # prefix noise: walk forwards from 0; the running sum is contracted onto each new depth
        acc, lower = 0.0, 0
        for k in range(n):
            hi = cs[k]
            acc = acc * np.exp(2.0 * (g[hi] - g[lower]))
            if hi > lower:
                acc += float(np.sum(eta2[lower:hi] * np.exp(2.0 * (g[hi] - g[lower + 1 : hi + 1]))))
            lower = hi
            prefix_var[k, j] = sig2[j] * acc
            prefix_mean[k, j] = np.exp(g[hi]) * th0[j]
    inverse = np.empty_like(order)
    inverse[order] = np.arange(n)
    return NQMTransfer(
        depths=c,
        transfer=transfer[inverse],
        future_var=future_var[inverse],
        prefix_mean=prefix_mean[inverse],
        prefix_var=prefix_var[inverse],
    )


def _score_weights(lin_weights, quad_weights, d: int) -> tuple[np.ndarray, np.ndarray]:
    b = np.broadcast_to(np.atleast_1d(as_float_array("lin_weights", lin_weights)), (d,)).astype(float)
    w = np.broadcast_to(np.atleast_1d(as_float_array("quad_weights", quad_weights)), (d,)).astype(float)
    return b, w


def nqm_risk(moments: NQMTransfer, lin_weights, quad_weights=0.0, eval_noise_var: float = 0.0):
    r"""Exact risk decomposition of the NQM score :math:`R = \sum_j (b_j\theta_{T,j} + \tfrac12 w_j\theta_{T,j}^2) + e`.

    ``e ~ N(0, eval_noise_var)`` is evaluation noise drawn per run. With
    :math:`\theta_{T,j}\mid\theta_c \sim \mathcal N(m_j, s_j^2)`, :math:`m_j = a_j\theta_{c,j}`, Gaussian
    moments give :math:`\mathrm{Var}(b\theta+\tfrac w2\theta^2) = s^2(b+wm)^2 + \tfrac12 w^2 s^4`, and
    averaging over :math:`\theta_{c,j}\sim\mathcal N(\mu_j, v_j)`:

    .. math:: L(c) = \mathbb E[\mathrm{Var}(R\mid I_c)] = \sigma_e^2 + \sum_j s_j^2\big[(b_j + w_j a_j\mu_j)^2
              + w_j^2 a_j^2 v_j\big] + \tfrac12 w_j^2 s_j^4 .

    The full trajectory fixes :math:`\theta_T`, so :math:`L_\mathrm{int} = \sigma_e^2` and
    :math:`V_\mathrm{opt}(c) = L(c) - L_\mathrm{int}` (Prop. 4.1).

    Returns
    -------
    risk : ndarray, shape (n,)
        :math:`L(c)` at ``moments.depths``.
    v_opt : ndarray, shape (n,)
    l_int : float
    """
    d = moments.transfer.shape[1]
    b, w = _score_weights(lin_weights, quad_weights, d)
    eval_noise_var = float(check_nonnegative("eval_noise_var", eval_noise_var))
    a, s2, mu, v = moments.transfer, moments.future_var, moments.prefix_mean, moments.prefix_var
    v_opt = np.sum(s2 * ((b + w * a * mu) ** 2 + (w * a) ** 2 * v) + 0.5 * w**2 * s2**2, axis=1)
    return v_opt + eval_noise_var, v_opt, eval_noise_var


def nqm_conditional_moments(theta_c, moments: NQMTransfer, index: int, lin_weights, quad_weights=0.0, eval_noise_var: float = 0.0):
    r"""Exact :math:`\mathbb E[R\mid\theta_c]` and :math:`\mathrm{Var}(R\mid\theta_c)` for given prefix states.

    .. math:: \mathbb E[R\mid\theta_c] = \sum_j b_j m_j + \tfrac12 w_j (m_j^2 + s_j^2), \qquad
              \mathrm{Var}(R\mid\theta_c) = \sigma_e^2 + \sum_j s_j^2 (b_j + w_j m_j)^2 + \tfrac12 w_j^2 s_j^4

    with :math:`m_j = a_j\theta_{c,j}`, for the depth ``moments.depths[index]``.

    Parameters
    ----------
    theta_c : array_like, shape (..., d)
    """
    theta_c = as_float_array("theta_c", theta_c)
    a = moments.transfer[index]
    s2 = moments.future_var[index]
    b, w = _score_weights(lin_weights, quad_weights, a.size)
    m = a * theta_c
    mean = np.sum(b * m + 0.5 * w * (m**2 + s2), axis=-1)
    var = float(eval_noise_var) + np.sum(s2 * (b + w * m) ** 2 + 0.5 * w**2 * s2**2, axis=-1)
    return mean, var


def loglog_slope(c, values) -> float:
    r"""Decay exponent :math:`\hat\alpha = -\,\mathrm{d}\log V / \mathrm{d}\log c` by least squares.

    Ordinary least squares of :math:`\log V` on :math:`\log c` (the paper's log-log protocol);
    returns minus the slope.
    """
    c = check_positive("c", c)
    values = check_positive("values", values)
    if c.shape != values.shape or c.size < 2:
        raise ValueError(
            f"c and values must have the same shape with at least 2 points, but got shapes {c.shape} and {values.shape}; pass matching arrays."
        )
    x, y = np.log(c), np.log(values)
    slope = np.polyfit(x, y, 1)[0]
    return float(-slope)
