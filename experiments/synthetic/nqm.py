"""The noisy quadratic model (NQM): configuration, exact risk decomposition and Monte Carlo forks.

SGD on a diagonal quadratic with Gaussian gradient noise (see :mod:`theory._envelope`):
``theta_{t+1} = theta_t - eta_t (h * theta_t + xi_t)``, ``xi_t ~ N(0, diag(noise_var))``,
``eta_t = eta0 (1 + t/t0)^-rho``, ``t = 0 .. horizon-1``, from a fixed ``theta0``. The score is
``R = sum_j (lin_w_j theta_T,j + quad_w_j theta_T,j^2 / 2) + e``, ``e ~ N(0, eval_noise_var)``.

The exact moments come from :func:`theory.nqm_transfer` / :func:`theory.nqm_risk`; the Monte
Carlo here simulates the same recursion step by step (no closed form used), vectorised over
prefixes and forks, with an explicit :class:`numpy.random.Generator`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from plan_probe.theory import nqm_risk, nqm_transfer, sgd_step_sizes
from plan_probe.theory._validate import as_float_array, check_nonnegative, check_positive

__all__ = ["NQMConfig", "simulate_forks", "simulate_fork_table"]

_VECTOR_FIELDS = ("curvatures", "noise_var", "lin_weights", "quad_weights", "theta0")


@dataclass(frozen=True)
class NQMConfig:
    """A validated NQM task; round-trips through JSON (:meth:`to_dict` / :meth:`from_dict`).

    Parameters
    ----------
    curvatures : tuple of float, length d
        Hessian eigenvalues ``h_j >= 0`` (stiff: large; flat: ~0). ``eta0 * max(h) < 1``.
    noise_var : tuple of float, length d
        Gradient-noise variances ``sigma_j^2 >= 0``.
    lin_weights, quad_weights : tuple of float, length d
        Score ``R = sum_j lin_w_j theta_j + quad_w_j theta_j^2 / 2`` at the final step.
    theta0 : tuple of float, length d
        Fixed starting point.
    eta0, t0, rho : float
        Step sizes ``eta_t = eta0 (1 + t/t0)^-rho``.
    horizon : int
        Number of SGD steps ``T``.
    eval_noise_var : float
        Variance of the evaluation noise added to each run's score (the intrinsic floor L_int).
    """

    curvatures: tuple
    noise_var: tuple
    lin_weights: tuple
    quad_weights: tuple
    theta0: tuple
    eta0: float = 0.5
    t0: float = 10.0
    rho: float = 0.75
    horizon: int = 1000
    eval_noise_var: float = 0.0

    def __post_init__(self):
        d = len(np.atleast_1d(self.curvatures))
        for name in _VECTOR_FIELDS:
            arr = np.atleast_1d(as_float_array(name, getattr(self, name)))
            if arr.ndim != 1 or arr.size not in (1, d):
                raise ValueError(
                    f"{name} must have one value per direction (d={d}) or a single value, but got {arr.size} values; "
                    "give every vector field the same length."
                )
            object.__setattr__(self, name, tuple(float(v) for v in np.broadcast_to(arr, (d,))))
        check_nonnegative("curvatures", self.curvatures)
        check_nonnegative("noise_var", self.noise_var)
        check_positive("eta0", self.eta0)
        check_positive("t0", self.t0)
        check_positive("rho", self.rho)
        check_nonnegative("eval_noise_var", self.eval_noise_var)
        if isinstance(self.horizon, bool) or int(self.horizon) != self.horizon or self.horizon < 1:
            raise ValueError(f"horizon must be a positive integer, but got horizon={self.horizon!r}; pass a number of steps.")
        object.__setattr__(self, "horizon", int(self.horizon))
        if self.eta0 * max(self.curvatures) >= 1.0:
            raise ValueError(
                f"eta0 * max(curvatures) must be < 1 so every step contracts, but got {self.eta0 * max(self.curvatures):g}; "
                "lower eta0 or the stiffest curvature."
            )

    @property
    def dim(self) -> int:
        return len(self.curvatures)

    def step_sizes(self) -> np.ndarray:
        return sgd_step_sizes(self.horizon, self.eta0, self.t0, self.rho)

    def transfer(self, depths):
        """Exact Gaussian transfer moments (:class:`theory.NQMTransfer`) at ``depths``."""
        return nqm_transfer(depths, self.horizon, self.curvatures, self.noise_var, self.eta0, self.t0, self.rho, self.theta0)

    def exact_risk(self, depths):
        """Exact ``(L(c), V_opt(c), L_int)`` at ``depths`` (Prop. 4.1, Gaussian moments)."""
        return nqm_risk(self.transfer(depths), self.lin_weights, self.quad_weights, self.eval_noise_var)

    def score(self, theta: np.ndarray) -> np.ndarray:
        """Noise-free score of final states, shape (..., d) -> (...)."""
        b = np.asarray(self.lin_weights)
        w = np.asarray(self.quad_weights)
        return theta @ b + 0.5 * (theta**2) @ w

    def to_dict(self) -> dict:
        from plan_probe.probes._version import __version__

        out = asdict(self)
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
        out["version"] = __version__
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "NQMConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names - {"version"}
        if unknown:
            raise ValueError(f"NQM config keys must be among {sorted(names)}, but got unknown {sorted(unknown)}; remove them.")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names})


def _check_counts(depth, n_prefixes, n_forks, horizon) -> tuple[int, int, int]:
    for name, value, low in (("n_prefixes", n_prefixes, 1), ("n_forks", n_forks, 1)):
        if isinstance(value, bool) or int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, but got {name}={value!r}; pass a positive count.")
    if isinstance(depth, bool) or int(depth) != depth or not 0 <= depth <= horizon:
        raise ValueError(f"depth must be an integer in [0, horizon={horizon}], but got depth={depth!r}; pass a step inside the run.")
    return int(depth), int(n_prefixes), int(n_forks)


def simulate_forks(config: NQMConfig, depth: int, n_prefixes: int, n_forks: int, rng: np.random.Generator):
    """Monte Carlo fork protocol at one depth, by simulating every SGD step.

    ``n_prefixes`` independent runs go from ``theta0`` to step ``depth``; each prefix state is then
    continued ``n_forks`` times with fresh gradient noise to the horizon, and each final state is
    scored with its own evaluation noise.

    Returns
    -------
    scores : ndarray, shape (n_prefixes, n_forks)
    prefix_states : ndarray, shape (n_prefixes, d)
        ``theta_c`` of each prefix (for checks against the exact conditional moments).
    """
    depth, n_prefixes, n_forks = _check_counts(depth, n_prefixes, n_forks, config.horizon)
    eta = config.step_sizes()
    h = np.asarray(config.curvatures)
    sigma = np.sqrt(np.asarray(config.noise_var))
    theta = np.broadcast_to(np.asarray(config.theta0), (n_prefixes, config.dim)).copy()
    for t in range(depth):
        theta -= eta[t] * (h * theta + sigma * rng.standard_normal(theta.shape))
    prefix_states = theta.copy()
    theta = np.repeat(theta[:, None, :], n_forks, axis=1)
    for t in range(depth, config.horizon):
        theta -= eta[t] * (h * theta + sigma * rng.standard_normal(theta.shape))
    scores = config.score(theta) + np.sqrt(config.eval_noise_var) * rng.standard_normal((n_prefixes, n_forks))
    return scores, prefix_states


def simulate_fork_table(config: NQMConfig, depths, n_prefixes: int, n_forks: int, rng: np.random.Generator):
    """Fork samples at each depth (independent prefixes per depth), as a list of ``(P, F)`` arrays."""
    depths = np.atleast_1d(as_float_array("depths", depths))
    return [simulate_forks(config, int(c), n_prefixes, n_forks, rng)[0] for c in depths]
