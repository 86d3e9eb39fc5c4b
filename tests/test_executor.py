"""The job executor: local and Ray backends give the same outcomes; failures are bounded and recorded."""

from __future__ import annotations

import importlib.util

import pytest

from plan_probe.probes._executor import Job, check_backend, execute


def _square(x: int) -> int:
    return x * x


def _boom(x: int) -> int:
    raise RuntimeError(f"worker failed on {x}")


class _Flaky:
    """Fails on its first ``n_fail`` calls, then succeeds: a transient worker error."""

    def __init__(self, n_fail: int):
        self.calls = 0
        self.n_fail = n_fail

    def __call__(self, x: int) -> int:
        self.calls += 1
        if self.calls <= self.n_fail:
            raise MemoryError("transient out of memory")
        return x + 1


class _Buggy:
    """A job with a programming error; counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x: int) -> int:
        self.calls += 1
        return x.no_such_attribute


def _jobs():
    return [Job(f"j{i}", _square, (i,)) for i in range(4)] + [Job("bad", _boom, (7,))]


def test_local_backend_records_failure_and_finishes_the_rest():
    outcomes = {o.key: o for o in execute(_jobs(), backend="local", max_retries=1)}
    assert {k: o.value for k, o in outcomes.items() if o.ok} == {"j0": 0, "j1": 1, "j2": 4, "j3": 9}
    bad = outcomes["bad"]
    assert not bad.ok and bad.attempts == 2 and "worker failed on 7" in bad.error


def test_local_backend_retries_transient_errors_a_bounded_number_of_times():
    flaky = _Flaky(n_fail=2)
    (outcome,) = execute([Job("f", flaky, (1,))], backend="local", max_retries=2)
    assert outcome.ok and outcome.value == 2 and outcome.attempts == 3
    flaky = _Flaky(n_fail=5)
    (outcome,) = execute([Job("f", flaky, (1,))], backend="local", max_retries=2)
    assert not outcome.ok and flaky.calls == 3 and "MemoryError" in outcome.error


def test_programming_errors_are_re_raised_not_retried_or_recorded():
    buggy = _Buggy()
    outcomes = execute([Job("ok", _square, (3,)), Job("bug", buggy, (1,)), Job("never", _square, (4,))],
                       backend="local", max_retries=3)
    assert next(outcomes).value == 9
    with pytest.raises(AttributeError, match="no_such_attribute"):
        next(outcomes)
    assert buggy.calls == 1


@pytest.mark.parametrize(
    "backend, address, fragment",
    [("spark", None, "backend must be one of"), ("local", "auto", "--ray-address needs --backend ray")],
)
def test_bad_backend_arguments_are_one_clear_error(backend, address, fragment):
    with pytest.raises(ValueError, match=fragment):
        check_backend(backend, address)


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install 'plan-probe[ray]')")
def test_ray_backend_matches_local_backend_and_isolates_failures():
    import cloudpickle

    import tests.test_executor as this_module

    # Workers cannot import the tests folder; ship this module's functions by value.
    cloudpickle.register_pickle_by_value(this_module)
    local = {o.key: (o.ok, o.value) for o in execute(_jobs(), backend="local", max_retries=0)}
    remote = {o.key: (o.ok, o.value) for o in execute(_jobs(), backend="ray", max_retries=1, num_cpus=2)}
    assert remote == local
    assert local["bad"] == (False, None)


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install 'plan-probe[ray]')")
def test_ray_backend_re_raises_a_programming_error_in_the_driver():
    import cloudpickle

    import tests.test_executor as this_module

    cloudpickle.register_pickle_by_value(this_module)
    with pytest.raises(AttributeError, match="no_such_attribute"):
        list(execute([Job("bug", _Buggy(), (1,))], backend="ray", max_retries=2, num_cpus=1))
