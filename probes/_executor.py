"""Run independent jobs (probes, meta-dataset runs) locally or as Ray tasks.

The driver always gets the outcomes back and writes the records itself, so the local and Ray
backends share one atomic, resumable record format. A job that raises (or whose worker dies, on
Ray) is retried up to ``max_retries`` times and then reported as failed with its error; the other
jobs finish regardless. A programming error in a job (:data:`PROGRAMMING_ERRORS`) is a bug, not an
outcome: it is never retried and is re-raised in the driver on either backend.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

__all__ = ["Job", "JobOutcome", "BACKENDS", "PROGRAMMING_ERRORS", "execute", "check_backend"]

log = logging.getLogger(__name__)

BACKENDS = ("local", "ray")
#: Exceptions that mean the code is wrong, not that a job failed: re-raised, never recorded or retried.
PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, AssertionError)
_RAY_HINT = "install it with `pip install 'plan-probe[ray]'` (or `pip install ray`)"


@dataclass(frozen=True)
class Job:
    """One unit of work: ``fn(*args, **kwargs)`` must be a picklable top-level function for Ray."""

    key: str
    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass(frozen=True)
class JobOutcome:
    key: str
    ok: bool
    value: Any = None
    error: str | None = None
    attempts: int = 1


def check_backend(backend: str, ray_address: str | None = None) -> None:
    """Validate the backend name (and that Ray is importable for ``ray``) before any work starts."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, but got {backend=}; pick local or ray.")
    if ray_address is not None and backend != "ray":
        raise ValueError(f"--ray-address needs --backend ray, but got {backend=}; add --backend ray.")
    if backend == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError(f"backend 'ray' needs the ray package, which is not installed; {_RAY_HINT}.") from None


def _describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def _run_local(jobs: Iterable[Job], max_retries: int) -> Iterator[JobOutcome]:
    for job in jobs:
        for attempt in range(1, max_retries + 2):
            try:
                value = job.fn(*job.args, **job.kwargs)
            except PROGRAMMING_ERRORS:
                raise
            except Exception as exc:  # a failing job is a recorded outcome, not a crash of the portfolio
                log.warning("job %s failed (attempt %d): %s", job.key, attempt, _describe(exc))
                log.debug("%s", traceback.format_exc())
                if attempt > max_retries:
                    yield JobOutcome(job.key, ok=False, error=_describe(exc), attempts=attempt)
            else:
                yield JobOutcome(job.key, ok=True, value=value, attempts=attempt)
                break


def _call_reporting_bugs(fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[bool, Any]:
    """Run a job on a Ray worker; a programming error comes back as a value, so Ray does not retry
    it and the driver can re-raise it. Returns ``(is_bug, value_or_exception)``."""
    try:
        return False, fn(*args, **kwargs)
    except PROGRAMMING_ERRORS as exc:
        return True, exc


def _ray_cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    return _describe(cause) if isinstance(cause, BaseException) else _describe(exc)


def _run_ray(jobs: list[Job], max_retries: int, ray_address: str | None, num_cpus: int | None) -> Iterator[JobOutcome]:
    import ray

    started_here = False
    if not ray.is_initialized():
        init_kwargs = {"address": ray_address} if ray_address else {"num_cpus": num_cpus}
        ray.init(log_to_driver=False, include_dashboard=False, **{k: v for k, v in init_kwargs.items() if v is not None})
        started_here = True
    try:
        pending = {}
        for job in jobs:
            remote = ray.remote(
                num_cpus=job.num_cpus, num_gpus=job.num_gpus, max_retries=max_retries, retry_exceptions=True
            )(_call_reporting_bugs)
            pending[remote.remote(job.fn, job.args, job.kwargs)] = job
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            job = pending.pop(ref)
            try:
                is_bug, value = ray.get(ref)
            except ray.exceptions.RayError as exc:  # task error after retries, worker crash, lost node, OOM kill
                yield JobOutcome(job.key, ok=False, error=_ray_cause(exc), attempts=max_retries + 1)
            else:
                if is_bug:
                    raise value
                yield JobOutcome(job.key, ok=True, value=value)
    finally:
        if started_here:
            ray.shutdown()


def execute(
    jobs: Iterable[Job],
    *,
    backend: str = "local",
    ray_address: str | None = None,
    max_retries: int = 2,
    num_cpus: int | None = None,
) -> Iterator[JobOutcome]:
    """Run ``jobs`` and yield one :class:`JobOutcome` per job as each finishes.

    ``local`` runs them in order in this process; ``ray`` submits each as a Ray task with its
    resource request (connecting to ``ray_address`` when given, else starting a local instance
    with ``num_cpus``) and yields in completion order.
    """
    if max_retries < 0:
        raise ValueError(f"max_retries must be non-negative, but got {max_retries=}; pass 0 or more.")
    check_backend(backend, ray_address)
    if backend == "local":
        yield from _run_local(jobs, max_retries)
    else:
        yield from _run_ray(list(jobs), max_retries, ray_address, num_cpus)
