r"""Decision-aware probing: the preposterior value of a probe for a go/no-go decision (docs/theory.md §2).

A user probes a candidate to decide whether to launch its full run, not to lower a mean squared
error. Preposterior analysis (Raiffa & Schlaifer 1961, *Applied Statistical Decision Theory*,
ch. 4-5) values an experiment before it is run by the expected loss of the terminal decision taken
after it, averaged over the experiment's possible outcomes.

**Model.** Before probing, the final score R has the static-only predictive
:math:`R \mid I_0 \sim N(m_0, S_0)`. After a probe of c steps the predictive is
:math:`R \mid I_c \sim N(m_c, \sigma^2_c)` with :math:`\sigma^2_c = \min(L(c), S_0)` from the risk
model (Prop. 4.1: :math:`L(c) = L_\mathrm{int} + K c^{-\alpha}`). Because :math:`m_c = E[R \mid I_c]`
is a martingale in c, the law of total variance gives, before the probe is run,

.. math:: m_c \sim N\bigl(m_0,\; v_c\bigr), \qquad v_c = \max(S_0 - L(c),\, 0),

the part of the static uncertainty the probe resolves (Raiffa & Schlaifer's "preposterior
distribution of the posterior mean").

**Terminal decision.** With costs :math:`C_{lb}` (launch a run that ends below τ) and
:math:`C_{kg}` (kill a run that would have reached τ), the Bayes decision at mean m is "go" iff
:math:`C_{lb} P(R<\tau\mid m) \le C_{kg} P(R\ge\tau\mid m)`, i.e. iff
:math:`m \ge m^\ast = \tau - \sigma_c z_q` with :math:`q = C_{kg}/(C_{lb}+C_{kg})` and
:math:`z_q = \Phi^{-1}(q)`. Its expected loss is

.. math:: \ell(c) = E_{m_c}\Bigl[\min\bigl(C_{lb}\,\Phi(\tfrac{\tau-m_c}{\sigma_c}),\;
          C_{kg}\,\Phi(\tfrac{m_c-\tau}{\sigma_c})\bigr)\Bigr],

and c = 0 ("decide now") gives :math:`\ell(0) = \min(C_{lb}\Phi(-u), C_{kg}\Phi(u))` with the
standardised distance :math:`u = (m_0-\tau)/\sqrt{S_0}`.

**Closed form.** Write :math:`m_c = m_0 + \sqrt{v_c} Z`, :math:`r = \sqrt{v_c/S_0}` (the share of the
static standard deviation the probe resolves, :math:`\sigma_c/\sqrt{S_0} = \sqrt{1-r^2}`) and
:math:`h = (m^\ast - m_0)/\sqrt{v_c} = (-u - \sqrt{1-r^2}\,z_q)/r`. Since
:math:`E[\Phi(a+bZ)\,1\{Z<h\}] = \Phi_2\bigl(a/\sqrt{1+b^2},\, h;\, -b/\sqrt{1+b^2}\bigr)`
(:math:`\Phi_2` the standard bivariate normal CDF),

.. math:: \ell(c) = C_{kg}\,\Phi_2(u, h; -r) + C_{lb}\,\Phi_2(-u, -h; -r)
                  = (C_{kg}+C_{lb})\,\Phi_2(u, h; -r) + C_{lb}\bigl(1-\Phi(u)-\Phi(h)\bigr),

and :math:`\Phi_2` is evaluated exactly through Owen's T function (Owen 1956):
:math:`\Phi_2(h,k;\rho) = \tfrac12[\Phi(h)+\Phi(k)] - T(h, \tfrac{k-\rho h}{h\sqrt{1-\rho^2}})
- T(k, \tfrac{h-\rho k}{k\sqrt{1-\rho^2}}) - \beta`. The loss depends on the label's units only
through u and r, so multiplying labels, τ and risks by a constant leaves every plan unchanged.

**Averaging over the risk model.** The probe's effect :math:`L(c)` is uncertain; the expected loss
is averaged over the posterior draws d of :math:`(L_\mathrm{int}, K, \alpha)`:
:math:`\bar\ell(c) = \frac1D\sum_d \ell(c; L_d(c))`, and
:math:`c_\mathrm{opt} = \arg\min_{c \in \{0\}\cup[c_\min, c_\max]} \bar\ell(c) + \lambda c`.

**Computation.** Per task, :math:`\ell` is a function of :math:`\vartheta = \arcsin r \in [0, \pi/2]`
only (u, q and the costs are fixed). It is tabulated exactly on a uniform grid of ``n_table`` nodes
in :math:`\vartheta` (smooth at both ends, unlike r or :math:`\sigma^2`, which have square-root
singularities at r = 0 near indifference and at r = 1) and linearly interpolated for each draw and
depth: the interpolation error is below :math:`2\cdot10^{-5}\max(C_{lb}, C_{kg})` at 65 nodes
(tested against the closed form). Tasks that no probe can pay for are skipped exactly: since
:math:`L(c) \ge L_\mathrm{int}` and the loss decreases with information (Blackwell),
:math:`\bar\ell(c) \ge \bar\ell_\infty := \frac1D\sum_d \ell(\infty; L_{\mathrm{int},d})`, so if
:math:`\bar\ell(0) - \bar\ell_\infty \le \lambda c_\min` then :math:`c_\mathrm{opt} = 0`; and
:math:`c_\mathrm{opt} \le \bar\ell(0)/\lambda` bounds the search from above.

**Setup steps.** A probe may cost :math:`s` steps beyond its depth (a readout's learning-rate cooldown
on a reference set): the objective is then :math:`\bar\ell(c) + \lambda(c + s\,[c > 0])`. The
constant moves only the choice between probing and deciding now, never the best depth of a probe;
the skipping rule becomes :math:`\bar\ell(0) - \bar\ell_\infty \le \lambda (c_\min + s)` and the
upper bound :math:`\bar\ell(0)/\lambda - s`.

**Anchoring the probe's variance to the prior.** :math:`S_0` and :math:`L(c)` come from two models
fitted apart (the static-only predictor's calibration and the risk model's regression on the risk
features), whose per-task variances need not agree: on the shipped LLM tier the static-only prior gave
most candidates the same :math:`S_0` while the risk model's :math:`L(5)` ranged from 0.5 to 2.4 times
it, so a 5-step probe looked like it resolved half of one candidate's uncertainty and added to
another's, although out of fold the 5-step predictor was no better than the static one. With a
measured ratio :math:`\kappa = \mathrm{MSE}(c_a)/\mathrm{MSE}_\mathrm{static}` of the depth-aware
predictor's out-of-fold mean squared error at depth :math:`c_a` to the static-only one's,
:func:`anchor_risk_draws` rescales each draw so that :math:`L'(c_a) = \kappa S_0`:
:math:`L'(c) = a\,L(c)` with :math:`a = \kappa S_0 / L(c_a)`, i.e. :math:`L'_\mathrm{int} = a L_\mathrm{int}`,
:math:`K' = a K` and α unchanged. The risk model keeps the curve's shape (how fast each task's
uncertainty falls with depth, Prop. 4.1); its level follows the prior the decision starts from and the
information the probe was measured to add at :math:`c_a` (none when :math:`\kappa \ge 1`). Realised on
held-out runs of that tier the anchored plans tie the plans as fitted (docs/theory.md §2), so callers opt in.

**Non-convexity.** :math:`\bar\ell(c) + \lambda c` is not convex in c: the value of information is
typically convex for small amounts of information and concave later (Radner & Stiglitz 1984), the
choice set :math:`\{0\}\cup[c_\min, c_\max]` has a gap, and a posterior mixture of curves can have
several local minima. So the objective is evaluated on a log-spaced integer grid over
:math:`[c_\min, c_\max]` (ratio ``grid_ratio`` between neighbours) and at 0, the best grid point is
refined by a parabola in :math:`\log c` through it and its neighbours (the floor and ceiling of the
vertex are evaluated) and by the geometric midpoints to both neighbours, and :math:`c_\mathrm{opt}`
is the best of all evaluated depths: against brute force over every integer depth its objective is
within :math:`0.05\lambda + 2\cdot10^{-5}\max(C_{lb}, C_{kg})` of the minimum (a twentieth of one
step's cost plus the table's own interpolation error; tested). A portfolio
budget is allocated on these per-task curves by :func:`allocate_decision_budget` (greedy on their
lower convex envelopes, then a pass over the non-envelope points).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri, owens_t

from plan_probe.theory._validate import as_float_array, check_depth_range, check_nonnegative, check_positive

__all__ = [
    "anchor_risk_draws",
    "bivariate_normal_cdf",
    "success_probability",
    "decision_loss_now",
    "decision_loss",
    "expected_decision_loss",
    "DecisionCurves",
    "decision_curves",
    "allocate_decision_budget",
    "probe_cost_steps",
]

_HALF_PI = 0.5 * math.pi
_N_REFINE = 4  # refined depths per task (see _chunk_curves)


def bivariate_normal_cdf(h, k, rho):
    r"""Standard bivariate normal CDF :math:`\Phi_2(h, k; \rho) = P(X \le h, Y \le k)`, corr(X, Y) = ρ.

    Owen (1956), eq. (2.1):

    .. math:: \Phi_2(h,k;\rho) = \tfrac12\bigl[\Phi(h)+\Phi(k)\bigr]
              - T\Bigl(h, \frac{k-\rho h}{h\sqrt{1-\rho^2}}\Bigr)
              - T\Bigl(k, \frac{h-\rho k}{k\sqrt{1-\rho^2}}\Bigr) - \beta,

    :math:`\beta = 0` if :math:`hk > 0` or (:math:`hk = 0` and :math:`h + k \ge 0`), else 1/2; with
    :math:`T(0, \pm\infty) = \pm 1/4`, :math:`\Phi_2(0,0;\rho) = 1/4 + \arcsin(\rho)/(2\pi)`, and the
    degenerate :math:`\rho = \pm 1` and infinite limits handled exactly. Arrays broadcast.
    """
    h, k, rho = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (h, k, rho)))
    if np.any(np.isnan(h) | np.isnan(k) | np.isnan(rho)) or np.any(np.abs(rho) > 1):
        raise ValueError("rho must lie in [-1, 1] and h, k must not be NaN, but got values outside; check the inputs.")
    s = np.sqrt(np.clip(1.0 - rho * rho, 0.0, None))
    fin = np.isfinite(h) & np.isfinite(k) & (s > 0)
    hf, kf, sf = np.where(fin, h, 1.0), np.where(fin, k, 1.0), np.where(fin, s, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        a_h = (kf - rho * hf) / (hf * sf)
        a_k = (hf - rho * kf) / (kf * sf)
    t_h = np.where(hf == 0, 0.25 * np.sign(kf - rho * hf), owens_t(hf, np.where(hf == 0, 0.0, a_h)))
    t_k = np.where(kf == 0, 0.25 * np.sign(hf - rho * kf), owens_t(kf, np.where(kf == 0, 0.0, a_k)))
    beta = np.where((hf * kf > 0) | ((hf * kf == 0) & (hf + kf >= 0)), 0.0, 0.5)
    out = 0.5 * (ndtr(hf) + ndtr(kf)) - t_h - t_k - beta
    out = np.where((hf == 0) & (kf == 0), 0.25 + np.arcsin(rho) / (2 * math.pi), out)
    # exact limits: perfectly (anti-)correlated pairs and infinite bounds
    lo = np.minimum(h, k)
    out = np.where(~fin & (rho >= 0), ndtr(lo), out)
    out = np.where(~fin & (rho < 0), np.maximum(ndtr(h) + ndtr(k) - 1.0, 0.0), out)
    out = np.where(np.isfinite(h) & np.isfinite(k) | (s == 0), out,
                   np.where((h == -np.inf) | (k == -np.inf), 0.0, np.where(h == np.inf, ndtr(k), ndtr(h))))
    return np.clip(out, 0.0, 1.0)


def success_probability(m0, s0, tau):
    r"""Static-only probability of success :math:`P(R \ge \tau \mid I_0) = \Phi\bigl((m_0-\tau)/\sqrt{S_0}\bigr)`."""
    m0 = as_float_array("m0", m0)
    s0 = check_positive("s0", s0)
    return ndtr((m0 - float(tau)) / np.sqrt(s0))


def _check_costs(launch_cost, kill_cost):
    return check_positive("launch_cost", launch_cost), check_positive("kill_cost", kill_cost)


def decision_loss_now(m0, s0, tau, launch_cost, kill_cost):
    r"""Expected loss of deciding now, from the static-only predictive (c = 0).

    .. math:: \ell(0) = \min\bigl(C_{lb}\,\Phi(-u),\; C_{kg}\,\Phi(u)\bigr), \qquad u = (m_0-\tau)/\sqrt{S_0}

    The minimum is attained by "go" (first term) when :math:`\Phi(u) \ge C_{lb}/(C_{lb}+C_{kg})`.
    Arrays broadcast.
    """
    c_lb, c_kg = _check_costs(launch_cost, kill_cost)
    p = success_probability(m0, s0, tau)
    return np.minimum(c_lb * (1.0 - p), c_kg * p)


def _loss_standard(u, r, rc, c_lb, c_kg):
    """The closed form in standardised terms: u = (m0 - tau)/sqrt(S0), r = sqrt(v/S0), rc = sqrt(1 - r^2)."""
    u, r, rc, c_lb, c_kg = np.broadcast_arrays(u, r, rc, c_lb, c_kg)
    z = ndtri(c_kg / (c_lb + c_kg))
    now = np.minimum(c_kg * ndtr(u), c_lb * ndtr(-u))
    mid = (r > 0) & (rc > 0)
    rs = np.where(mid, r, 0.5)
    h = (-u - rc * z) / rs
    loss = (c_kg + c_lb) * bivariate_normal_cdf(u, h, -rs) + c_lb * (1.0 - ndtr(u) - ndtr(h))
    loss = np.clip(loss, 0.0, now)  # information never hurts; clips rounding only
    return np.where(r <= 0, now, np.where(rc <= 0, 0.0, loss))


def decision_loss(m0, s0, post_var, tau, launch_cost, kill_cost):
    r"""Preposterior expected decision loss after a probe that leaves predictive variance ``post_var``.

    With :math:`\sigma^2 = \min(\text{post\_var}, S_0)`, :math:`v = S_0 - \sigma^2`,
    :math:`m_c \sim N(m_0, v)` and :math:`R \mid m_c \sim N(m_c, \sigma^2)`:

    .. math:: \ell = E_{m_c}\bigl[\min(C_{lb}\,P(R<\tau\mid m_c),\; C_{kg}\,P(R\ge\tau\mid m_c))\bigr]
                   = C_{kg}\,\Phi_2(u, h; -r) + C_{lb}\,\Phi_2(-u, -h; -r)

    with :math:`u = (m_0-\tau)/\sqrt{S_0}`, :math:`r = \sqrt{v/S_0}`,
    :math:`h = (-u - \sqrt{1-r^2}\,\Phi^{-1}(C_{kg}/(C_{lb}+C_{kg})))/r` (module docstring for the
    derivation). ``post_var >= S0`` is "no information" (:func:`decision_loss_now`), ``post_var = 0``
    perfect information (loss 0). Arrays broadcast; exact (closed form), no quadrature.
    """
    c_lb, c_kg = _check_costs(launch_cost, kill_cost)
    m0 = as_float_array("m0", m0)
    s0 = check_positive("s0", s0)
    post_var = check_nonnegative("post_var", post_var)
    w = np.minimum(post_var / s0, 1.0)
    return _loss_standard((m0 - float(tau)) / np.sqrt(s0), np.sqrt(1.0 - w), np.sqrt(w), c_lb, c_kg)


# ------------------------------------------------------------------------- tabulated curves
def _tables(u, c_lb, c_kg, n_table):
    """Exact loss on the uniform grid of theta = arcsin(r) in [0, pi/2], per task: (n_tasks, n_table)."""
    theta = np.linspace(0.0, _HALF_PI, n_table)
    r, rc = np.sin(theta), np.cos(theta)
    r[-1], rc[-1] = 1.0, 0.0
    return _loss_standard(u[:, None], r[None, :], rc[None, :], c_lb[:, None], c_kg[:, None])


class _Draws:
    """One block of tasks: its loss tables and draws, with a fused, in-place interpolation kernel.

    The kernel works in float32 (the interpolation error, 2e-5 of the costs, dominates float32
    rounding) and averages in float64; buffers are reused across depths.
    """

    def __init__(self, table, l_int, log_k, alpha, inv_s0):
        f4 = np.float32
        self.n_table = table.shape[1]
        self.flat = np.ascontiguousarray(table, dtype=f4).ravel()
        self.l_int, self.log_k, self.alpha = (np.ascontiguousarray(x, dtype=f4) for x in (l_int, log_k, alpha))
        self.inv_s0 = np.asarray(inv_s0, dtype=f4)
        n, d = l_int.shape
        self.offset = (np.arange(n, dtype=np.intp) * self.n_table)[:, None]
        self.buf, self.g0, self.g1 = (np.empty((n, d), dtype=f4) for _ in range(3))
        self.idx = np.empty((n, d), dtype=np.intp)
        self.scale = f4((self.n_table - 1) / _HALF_PI)

    def _interp(self, b):
        """Mean over draws of the table at ``b`` = L / S0 (overwritten)."""
        idx, g0, g1 = self.idx, self.g0, self.g1
        np.minimum(b, 1.0, out=b)
        np.sqrt(b, out=b)
        np.arccos(b, out=b)  # theta = arcsin(r) = arccos(sigma / sqrt(S0))
        b *= self.scale
        np.floor(b, out=idx, casting="unsafe")
        np.minimum(idx, self.n_table - 2, out=idx)
        b -= idx  # interpolation weight
        idx += self.offset
        np.take(self.flat, idx, out=g0)
        idx += 1
        np.take(self.flat, idx, out=g1)
        g1 -= g0
        g1 *= b
        g0 += g1
        return g0.mean(axis=1, dtype=np.float64)

    def mean_loss(self, log_c):
        """Mean over draws of the tabulated loss at depth exp(log_c) (one depth per task, or shared)."""
        b = self.buf
        log_c = np.asarray(log_c, dtype=np.float32)
        np.multiply(self.alpha, -(log_c[:, None] if log_c.ndim else log_c), out=b)
        b += self.log_k
        np.exp(b, out=b)
        b += self.l_int
        b *= self.inv_s0  # L(c) / S0
        return self._interp(b)

    def mean_loss_floor(self):
        """Mean over draws of the loss with an infinitely long free probe (L = L_int)."""
        b = self.buf
        np.multiply(self.l_int, self.inv_s0, out=b)
        return self._interp(b)


@dataclass(frozen=True)
class DecisionCurves:
    r"""Per-task decision curves and their optimum (output of :func:`decision_curves`).

    Attributes
    ----------
    depths : ndarray, shape (n_tasks, n_points)
        Evaluated probe depths per task (0 first, then the grid, then four refined depths).
    loss : ndarray, shape (n_tasks, n_points)
        :math:`\bar\ell(c)` at ``depths`` (NaN where not evaluated: tasks no probe can pay for, and
        depths above :math:`\bar\ell(0)/\lambda`, whose objective exceeds deciding now).
    step_cost : float
        :math:`\lambda`, so that ``objective = loss + step_cost * (depths + setup_steps * [depths > 0])``.
    c_opt : ndarray of int
        :math:`\arg\min_c \bar\ell(c) + \lambda c` (0 = decide now; ties go to the shorter probe).
    loss_now, loss_at_c_opt, loss_floor : ndarray
        :math:`\bar\ell(0)`, :math:`\bar\ell(c_\mathrm{opt})`, and :math:`\bar\ell_\infty` (the loss
        with an infinitely long free probe: what intrinsic risk leaves).
    value_of_probe : ndarray
        :math:`\bar\ell(0) - \bar\ell(c_\mathrm{opt}) - \lambda (c_\mathrm{opt} + s) \ge 0` (0 when
        :math:`c_\mathrm{opt} = 0`).
    p_success_now : ndarray
        :math:`\Phi((m_0-\tau)/\sqrt{S_0})`.
    go_now : ndarray of bool
        The decision without a probe: go iff ``p_success_now >= C_lb / (C_lb + C_kg)``.
    p_flip : ndarray
        Probability that the probe of ``c_opt`` steps reverses ``go_now`` (0 when ``c_opt`` = 0).
    setup_steps : float
        :math:`s`, the steps every probe costs beyond its depth (e.g. a readout's cooldown).
    """

    depths: np.ndarray
    loss: np.ndarray
    step_cost: float
    c_opt: np.ndarray
    loss_now: np.ndarray
    loss_at_c_opt: np.ndarray
    loss_floor: np.ndarray
    value_of_probe: np.ndarray
    p_success_now: np.ndarray
    go_now: np.ndarray
    p_flip: np.ndarray
    setup_steps: float = 0.0

    @property
    def objective(self) -> np.ndarray:
        """Expected loss plus probe cost at ``depths`` (NaN where not evaluated)."""
        return self.loss + self.step_cost * probe_cost_steps(self.depths, self.setup_steps)


def probe_cost_steps(depths, setup_steps: float = 0.0):
    r"""Steps a probe of ``depths`` costs: :math:`c + s\,[c > 0]` (no probe costs nothing)."""
    depths = np.asarray(depths, dtype=float)
    return depths + float(setup_steps) * (depths > 0)


def anchor_risk_draws(s0, l_int, k, alpha, depth, ratio):
    r"""Rescale risk-curve draws so that the probe's variance at ``depth`` is ``ratio`` times the prior's.

    .. math:: L'(c) = a\,L(c), \qquad a = \frac{\kappa S_0}{L_\mathrm{int} + K c_a^{-\alpha}},

    so :math:`L'_\mathrm{int} = a L_\mathrm{int}`, :math:`K' = a K`, α unchanged (module docstring,
    "Anchoring the probe's variance to the prior"; docs/theory.md §2).

    Parameters
    ----------
    s0 : array_like (n_tasks,)
        The static-only prior variance :math:`S_0` per task (label units²).
    l_int, k, alpha : array_like (n_tasks, n_draws)
        Posterior draws of :math:`L(c) = L_\mathrm{int} + K c^{-\alpha}`.
    depth : float
        The anchor depth :math:`c_a > 0` (e.g. the shallowest depth the depth-aware predictor was
        calibrated at).
    ratio : float or array_like (n_tasks,)
        :math:`\kappa > 0`, the depth-aware predictor's out-of-fold MSE at ``depth`` over the
        static-only predictor's (one for all tasks, or one per task).

    Returns
    -------
    (l_int, k) : ndarray (n_tasks, n_draws)
        The rescaled draws (α is unchanged).
    """
    depth = float(depth)
    if not (math.isfinite(depth) and depth > 0):
        raise ValueError(f"the anchor depth must be a positive number of steps, but got {depth=}; pass e.g. 5.")
    ratios = np.asarray(ratio, dtype=float).reshape(-1)
    bad = ratios[~(np.isfinite(ratios) & (ratios > 0))]
    if bad.size:
        raise ValueError(f"the anchor ratio must be a positive MSE ratio, but got ratio={float(bad[0])!r}; "
                         "pass MSE(depth) / MSE(static).")
    _, s0, l_int, k, alpha = _draw_arrays(np.zeros(np.size(s0)), s0, l_int, k, alpha)
    if ratios.size not in (1, s0.size):
        raise ValueError(f"the anchor ratio must be one number or one per task, but got {ratios.size} for {s0.size} "
                         "tasks; pass a scalar or an array of n_tasks.")
    scale = ratios[:, None] * s0[:, None] / (l_int + k * depth ** -alpha)
    return l_int * scale, k * scale


def _draw_arrays(m0, s0, l_int, k, alpha):
    m0 = as_float_array("m0", m0).reshape(-1)
    s0 = check_positive("s0", s0).reshape(-1)
    l_int = np.atleast_2d(check_nonnegative("l_int", l_int))
    k = np.atleast_2d(check_positive("k", k))
    alpha = np.atleast_2d(check_positive("alpha", alpha))
    n = m0.shape[0]
    if s0.shape[0] == 1:
        s0 = np.full(n, s0[0])
    if not (s0.shape[0] == n and l_int.shape == k.shape == alpha.shape and l_int.shape[0] == n):
        raise ValueError(
            f"m0, s0 and the draws must describe the same tasks, but got m0 {m0.shape}, s0 {s0.shape}, draws "
            f"{l_int.shape}/{k.shape}/{alpha.shape}; pass one row of draws per task."
        )
    return m0, s0, l_int, k, alpha


def _task_costs(n, launch_cost, kill_cost):
    c_lb, c_kg = _check_costs(launch_cost, kill_cost)
    return np.broadcast_to(c_lb, (n,)).astype(float), np.broadcast_to(c_kg, (n,)).astype(float)


def expected_decision_loss(depths, m0, s0, l_int, k, alpha, tau, launch_cost, kill_cost, *, exact: bool = False,
                           n_table: int = 65):
    r"""Posterior expected decision loss :math:`\bar\ell(c) = \frac1D\sum_d \ell(c; L_d(c))` at given depths.

    Parameters
    ----------
    depths : array_like, shape (n_depths,) or (n_tasks, n_depths)
        Probe lengths (0 = decide now from the static-only predictive).
    m0, s0 : array_like, shape (n_tasks,)
        Static-only predictive mean and variance (label units, units²).
    l_int, k, alpha : array_like, shape (n_tasks, n_draws)
        Posterior draws of the risk curve :math:`L(c) = L_\mathrm{int} + K c^{-\alpha}` (units²).
    tau : float
        The go threshold (label units).
    launch_cost, kill_cost : float or array_like, shape (n_tasks,)
        :math:`C_{lb}`, :math:`C_{kg}` (any cost unit, e.g. training steps).
    exact : bool
        Evaluate the closed form for every draw and depth (slow; the reference for tests) instead of
        interpolating the per-task table of ``n_table`` nodes.

    Returns
    -------
    ndarray, shape (n_tasks, n_depths)
    """
    m0, s0, l_int, k, alpha = _draw_arrays(m0, s0, l_int, k, alpha)
    n = m0.shape[0]
    c_lb, c_kg = _task_costs(n, launch_cost, kill_cost)
    depths = check_nonnegative("depths", depths)
    depths = np.broadcast_to(depths if depths.ndim == 2 else depths[None, :], (n, depths.shape[-1]))
    u = (m0 - float(tau)) / np.sqrt(s0)
    out = np.empty(depths.shape)
    if exact:
        for j in range(depths.shape[1]):
            c = depths[:, j:j + 1]
            with np.errstate(divide="ignore"):
                L = np.where(c > 0, l_int + k * np.exp(-alpha * np.log(np.where(c > 0, c, 1.0))), np.inf)
            w = np.minimum(L / s0[:, None], 1.0)
            out[:, j] = _loss_standard(u[:, None], np.sqrt(1.0 - w), np.sqrt(w), c_lb[:, None], c_kg[:, None]).mean(axis=1)
        return out
    table = _tables(u, c_lb, c_kg, n_table)
    draws = _Draws(table, l_int, np.log(k), alpha, (1.0 / s0)[:, None])
    for j in range(depths.shape[1]):
        c = depths[:, j]
        out[:, j] = np.where(c > 0, draws.mean_loss(np.log(np.where(c > 0, c, 1.0))), table[:, 0])
    return out


def _grid(c_lo: int, c_hi: int, ratio: float) -> np.ndarray:
    n = max(2, int(math.ceil(math.log(c_hi / c_lo) / math.log(ratio))) + 1) if c_hi > c_lo else 1
    return np.unique(np.rint(np.geomspace(c_lo, c_hi, n))).astype(float)


def _chunk_curves(draws: _Draws, grid, log_grid, step_cost, c_up, c_lo, c_hi):
    """Grid evaluation and local refinement for one block of tasks (all of them worth evaluating).

    Refinement around the best grid point: the floor and ceiling of the vertex of the parabola (in
    log c) through it and its neighbours, and the geometric midpoints to both neighbours (these catch
    a minimum the parabola misses when the curve is not convex there).
    """
    n = draws.offset.shape[0]
    extra = _N_REFINE
    loss = np.full((n, grid.size + extra), np.nan)
    depths = np.zeros((n, grid.size + extra))
    depths[:, :grid.size] = grid
    top = int(np.searchsorted(grid, c_up.max(), side="right"))  # grid points above c_up cannot win
    top = min(max(top, min(3, grid.size)), grid.size)
    for j in range(top):
        loss[:, j] = draws.mean_loss(log_grid[j])
    obj = loss[:, :grid.size] + step_cost * grid
    best = np.argmin(np.where(np.isnan(obj), np.inf, obj), axis=1)
    left, right = np.maximum(best - 1, 0), np.minimum(best + 1, top - 1)
    vertex = log_grid[best]
    if top >= 3:
        mid = np.clip(best, 1, top - 2)
        x = log_grid[np.stack([mid - 1, mid, mid + 1])]
        y = np.take_along_axis(obj, np.stack([mid - 1, mid, mid + 1], axis=1), axis=1).T
        # vertex of the parabola through three points (x, y), in log c
        d1, d2 = (y[1] - y[0]) / (x[1] - x[0]), (y[2] - y[1]) / (x[2] - x[1])
        curv = (d2 - d1) / (x[2] - x[0])
        with np.errstate(divide="ignore", invalid="ignore"):
            v = 0.5 * (x[0] + x[1]) - d1 / (2.0 * curv)
        vertex = np.where(np.isfinite(v) & (curv > 0), v, vertex)
    c_ref = np.exp(np.clip(vertex, log_grid[left], log_grid[right]))
    refine = (np.floor(c_ref), np.ceil(c_ref), np.rint(np.exp(0.5 * (log_grid[left] + log_grid[best]))),
              np.rint(np.exp(0.5 * (log_grid[best] + log_grid[right]))))
    for slot, c in enumerate(refine, start=grid.size):
        c = np.clip(c, c_lo, c_hi)
        depths[:, slot] = c
        loss[:, slot] = draws.mean_loss(np.log(c))
    return depths, loss


def decision_curves(m0, s0, l_int, k, alpha, tau, launch_cost, kill_cost, step_cost, c_min, c_max, *,
                    setup_steps: float = 0.0, grid_ratio: float = 1.25, n_table: int = 65, chunk: int = 64,
                    n_jobs: int | None = None):
    r"""Per-task decision curves :math:`\bar\ell(c) + \lambda c` and the decision-optimal probe length.

    .. math:: c_\mathrm{opt} = \arg\min_{c\,\in\,\{0\}\cup[c_\min, c_\max]\cap\mathbb Z}\;
              \frac1D\sum_d \ell\bigl(c;\, L_d(c)\bigr) + \lambda\,(c + s\,[c > 0])

    (preposterior analysis, Raiffa & Schlaifer 1961; see the module docstring for the loss, its
    closed form, the skipping rule and the grid with refinement that handles non-convex curves).

    Parameters
    ----------
    m0, s0 : array_like, shape (n_tasks,)
        Static-only predictive mean and variance of the final score.
    l_int, k, alpha : array_like, shape (n_tasks, n_draws)
        Posterior draws of the risk curve.
    tau : float
        Go threshold.
    launch_cost, kill_cost : float or array_like (n_tasks,)
        :math:`C_{lb}`, :math:`C_{kg}` in the unit of ``step_cost``.
    step_cost : float
        :math:`\lambda`, the cost of one probe step.
    c_min, c_max : float
        Probe length limits (whole steps inside them are used).
    setup_steps : float
        :math:`s \ge 0`, steps every probe costs beyond its depth (a readout's cooldown, a model load):
        it only moves the choice between probing and deciding now, never the depth of a probe.
    grid_ratio : float
        Ratio between neighbouring grid depths (> 1).
    n_table : int
        Nodes of the per-task loss table (interpolation error < 2e-5 max(C) at 65).
    chunk, n_jobs : int
        Tasks per vectorised block and worker threads (default: up to 4 CPU cores); results do not
        depend on either.

    Returns
    -------
    DecisionCurves
    """
    m0, s0, l_int, k, alpha = _draw_arrays(m0, s0, l_int, k, alpha)
    n = m0.shape[0]
    c_lb, c_kg = _task_costs(n, launch_cost, kill_cost)
    lam = float(check_positive("step_cost", step_cost))
    setup = float(check_nonnegative("setup_steps", setup_steps))
    lo, hi = check_depth_range(c_min, c_max)
    c_lo, c_hi = int(math.ceil(lo)), int(math.floor(hi))
    if c_lo > c_hi:
        raise ValueError(f"[c_min, c_max] must contain a whole step, but got [{lo:g}, {hi:g}]; widen it.")
    if not grid_ratio > 1:
        raise ValueError(f"grid_ratio must exceed 1, but got {grid_ratio=}; pass e.g. 1.25.")
    if int(n_table) < 3:
        raise ValueError(f"n_table must be at least 3, but got {n_table=}; pass e.g. 65.")
    u = (m0 - float(tau)) / np.sqrt(s0)
    log_k = np.log(k)
    inv_s0 = (1.0 / s0)[:, None]
    grid = _grid(c_lo, c_hi, grid_ratio)
    log_grid = np.log(grid)
    jobs = n_jobs if n_jobs is not None else min(4, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=jobs) if jobs > 1 and n > chunk else None
    run = pool.map if pool is not None else map

    def blocks(rows):
        return [rows[i:i + chunk] for i in range(0, rows.size, chunk)]

    def phase1(rows):  # exact tables, and the loss floor that decides whether any probe can pay
        table = _tables(u[rows], c_lb[rows], c_kg[rows], int(n_table))
        return rows, table, _Draws(table, l_int[rows], log_k[rows], alpha[rows], inv_s0[rows]).mean_loss_floor()

    try:
        table = np.empty((n, int(n_table)))
        floor = np.empty(n)
        for rows, tab, fl in run(phase1, blocks(np.arange(n))):
            table[rows], floor[rows] = tab, fl
        loss_now = table[:, 0]
        c_up = np.minimum(loss_now / lam - setup, c_hi)  # deeper, the probe's cost alone exceeds deciding now
        worth = (loss_now - floor > lam * (c_lo + setup)) & (c_up >= c_lo)
        depths = np.zeros((n, 1 + grid.size + _N_REFINE))
        depths[:, 1:grid.size + 1] = grid
        loss = np.full((n, 1 + grid.size + _N_REFINE), np.nan)
        loss[:, 0] = loss_now
        idx = np.flatnonzero(worth)
        idx = idx[np.argsort(c_up[idx], kind="stable")]  # similar upper bounds share a block

        def phase2(rows):
            d = _Draws(table[rows], l_int[rows], log_k[rows], alpha[rows], inv_s0[rows])
            return rows, _chunk_curves(d, grid, log_grid, lam, c_up[rows], c_lo, c_hi)

        for rows, (dep, los) in run(phase2, blocks(idx)):
            depths[rows, 1:] = dep
            loss[rows, 1:] = los
        obj = np.where(np.isnan(loss), np.inf, loss + lam * probe_cost_steps(depths, setup))
        best = _argmin_shortest(obj, depths)
        c_opt = depths[np.arange(n), best].astype(np.int64)
        loss_at = loss[np.arange(n), best]
        p_now = ndtr(u)
        go_now = p_now >= c_lb / (c_lb + c_kg)
        p_flip = np.zeros(n)

        def phase3(rows):
            return rows, _flip_probability(c_opt[rows], u[rows], s0[rows], l_int[rows], k[rows], alpha[rows],
                                           c_lb[rows], c_kg[rows], go_now[rows])

        for rows, pf in run(phase3, blocks(np.flatnonzero(c_opt > 0))):
            p_flip[rows] = pf
    finally:
        if pool is not None:
            pool.shutdown()
    return DecisionCurves(depths=depths, loss=loss, step_cost=lam, c_opt=c_opt, loss_now=loss_now,
                          loss_at_c_opt=loss_at, loss_floor=floor,
                          value_of_probe=np.maximum(loss_now - loss_at - lam * probe_cost_steps(c_opt, setup), 0.0),
                          p_success_now=p_now, go_now=go_now, p_flip=p_flip, setup_steps=setup)


def _argmin_shortest(obj, depths):
    """Per row, the index of the smallest objective; among (near-)ties the shortest depth."""
    m = obj.min(axis=1, keepdims=True)
    tol = 1e-12 * np.maximum(np.abs(m), 1.0)
    tied = obj <= m + tol
    return np.argmin(np.where(tied, depths, np.inf), axis=1)


def _flip_probability(c_opt, u, s0, l_int, k, alpha, c_lb, c_kg, go_now):
    r"""P(the decision after a ``c_opt``-step probe differs from ``go_now``), averaged over draws.

    Per draw: :math:`\sigma^2 = \min(L(c), S_0)`, :math:`m^\ast = \tau - \sigma z_q`, and
    :math:`P(m_c < m^\ast) = \Phi\bigl((m^\ast - m_0)/\sqrt{S_0-\sigma^2}\bigr)`, in standardised terms.
    """
    p = np.zeros(c_opt.shape[0])
    rows = np.flatnonzero(c_opt > 0)
    if rows.size == 0:
        return p
    c = c_opt[rows].astype(float)[:, None]
    L = l_int[rows] + k[rows] * np.exp(-alpha[rows] * np.log(c))
    w = np.minimum(L / s0[rows, None], 1.0)
    z = ndtri(c_kg[rows] / (c_lb[rows] + c_kg[rows]))[:, None]
    r = np.sqrt(1.0 - w)
    with np.errstate(divide="ignore", invalid="ignore"):
        below = ndtr((-u[rows, None] - np.sqrt(w) * z) / r)  # P(m_c < m*) = P(no-go after the probe)
    below = np.where(r > 0, below, np.where(go_now[rows, None], 0.0, 1.0))
    p[rows] = np.where(go_now[rows], below.mean(axis=1), 1.0 - below.mean(axis=1))
    return p


# ---------------------------------------------------------------------------------- budgets
def _envelope_segments(C, J):
    """Segments of each row's lower convex envelope from its first point, while the objective falls.

    ``C`` (n, P) depths sorted ascending per row (duplicates and unevaluated points have J = inf),
    ``J`` the objective. Jarvis march vectorised over rows: from the current envelope point, the next
    one is the later point of smallest slope (the farthest among ties). Returns arrays
    (task, from, to, gain per step) of every segment with a negative slope.
    """
    n, width = C.shape
    cur = np.zeros(n, dtype=np.intp)
    alive = np.ones(n, dtype=bool)
    rows = np.arange(n)
    out = []
    later = np.arange(width)[None, :]
    for _ in range(width - 1):
        if not alive.any():
            break
        c0, j0 = C[rows, cur][:, None], J[rows, cur][:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = np.where((later > cur[:, None]) & np.isfinite(J), (J - j0) / (C - c0), np.inf)
        best = slope.min(axis=1)
        # the farthest point among (near-)ties, so collinear points do not split a segment
        tie = slope <= best[:, None] + 1e-12 * np.maximum(np.abs(best[:, None]), 1.0)
        nxt = width - 1 - np.argmax(tie[:, ::-1], axis=1)
        step = alive & np.isfinite(best) & (best < 0)
        idx = np.flatnonzero(step)
        out.append(np.stack([idx, cur[idx], nxt[idx], -best[idx]], axis=1))
        cur = np.where(step, nxt, cur)
        alive = step
    seg = np.concatenate(out) if out else np.empty((0, 4))
    return seg[:, 0].astype(np.intp), seg[:, 1].astype(np.intp), seg[:, 2].astype(np.intp), seg[:, 3]


def allocate_decision_budget(curves: DecisionCurves, budget: float) -> np.ndarray:
    r"""Probe lengths under a portfolio budget :math:`\sum_i c_i \le B`, minimising :math:`\sum_i \bar\ell_i(c_i) + \lambda c_i`.

    Equal marginal value of information: the Lagrangian solution gives every task the depth where its
    curve's slope :math:`-\mathrm d(\bar\ell_i + \lambda c)/\mathrm dc` reaches a common :math:`\mu \ge 0`.
    The curves are not convex (see the module docstring), so the allocation works on each task's
    evaluated points (``curves.depths``, exact values): (1) the lower convex envelope of each task's
    points from c = 0; (2) greedy over all envelope segments in order of decreasing gain per step
    (a task's segments are taken in order; a segment that does not fit in what is left of B closes
    that task); (3) the leftover steps go, one move at a time, to the move to any evaluated depth
    that lowers the objective most and still fits. The sum never exceeds B; when the unconstrained
    optima fit (:math:`\sum c_\mathrm{opt} \le B`) they are returned unchanged.

    Returns
    -------
    ndarray of int, shape (n_tasks,)
    """
    budget = float(budget)
    if not (math.isfinite(budget) and budget >= 0):
        raise ValueError(f"budget must be a non-negative number of steps, but got {budget=}; pass B >= 0.")
    c_opt = curves.c_opt
    if c_opt.sum() <= budget:
        return c_opt.copy()
    obj = np.where(np.isnan(curves.objective), np.inf, curves.objective)
    n, width = curves.depths.shape
    order = np.lexsort((obj, curves.depths), axis=-1)  # by depth, then objective
    C = np.take_along_axis(curves.depths, order, axis=1)
    J = np.take_along_axis(obj, order, axis=1)
    dup = np.zeros_like(C, dtype=bool)
    dup[:, 1:] = C[:, 1:] == C[:, :-1]
    J = np.where(dup, np.inf, J)  # one point per depth: the best evaluation of it
    task, a_idx, b_idx, gain = _envelope_segments(C, J)
    at = np.zeros(n, dtype=np.intp)  # index into the sorted points (0 is c = 0)
    closed = np.zeros(n, dtype=bool)
    left = budget
    for s_i in np.lexsort((task, -gain)):  # decreasing gain per step; a task's segments come in order
        i = task[s_i]
        if closed[i] or at[i] != a_idx[s_i]:
            continue
        step = C[i, b_idx[s_i]] - C[i, a_idx[s_i]]
        if step <= left:
            at[i] = b_idx[s_i]
            left -= step
        else:
            closed[i] = True
    # leftover: the single best improving move that fits, repeatedly (vectorised over tasks)
    rows = np.arange(n)
    while left > 0:
        cur_c, cur_j = C[rows, at][:, None], J[rows, at][:, None]
        fits = (C > cur_c) & (C - cur_c <= left)
        gain = np.where(fits, cur_j - J, -np.inf)
        flat = int(np.argmax(gain))
        i, t = divmod(flat, width)
        if not gain[i, t] > 0:
            break
        left -= C[i, t] - C[i, at[i]]
        at[i] = t
    return C[np.arange(n), at].astype(np.int64)
