"""The default split of NumPy passes between threads (functional.default_threads)."""

import numpy as np
import pytest

from minicaffe import functional, losses


@pytest.mark.parametrize(
    "cpus, blas_threads, expected",
    [
        (2, 2, 1),  # OpenBLAS spins on both cores: no helper thread
        (2, 1, 2),  # OpenBLAS held to one thread: the second core is ours
        (16, 16, 1),
        (16, 8, 2),  # at most 2
        (1, 1, 1),
        (2, None, 2),  # no OpenBLAS reachable: min(2, cores)
        (1, None, 1),
    ],
)
def test_default_threads_leave_openblas_cores(monkeypatch, cpus, blas_threads, expected):
    monkeypatch.delenv("MINICAFFE_NUM_THREADS", raising=False)
    monkeypatch.setattr(functional, "_cpus", lambda: cpus)
    monkeypatch.setattr(functional._blas, "count", lambda: blas_threads)
    assert functional.default_threads() == expected
    assert losses.num_threads() == expected


def test_environment_variable_wins(monkeypatch):
    monkeypatch.setattr(functional._blas, "count", lambda: 2)
    monkeypatch.setenv("MINICAFFE_NUM_THREADS", "2")
    assert functional.default_threads() == 2
    monkeypatch.setenv("MINICAFFE_NUM_THREADS", "0")
    assert functional.default_threads() == 1
    monkeypatch.setenv("MINICAFFE_NUM_THREADS", "two")
    with pytest.warns(UserWarning, match="not an integer"):
        assert functional.default_threads() == 1


def test_openblas_thread_count_is_read():
    count = functional._blas.count()
    assert count is None or count >= 1


def _overflow(a, b):
    np.exp(np.full(4, 1000.0, np.float32))  # overflows: warns unless the error state ignores it


def test_worker_threads_take_the_callers_numpy_error_state(monkeypatch):
    """NumPy's error state is per thread: passes split between threads must not warn where the
    caller silenced the warning (e.g. SoftmaxWithLoss's handled overflow on large logits)."""
    import warnings

    monkeypatch.setattr(functional, "NUM_THREADS", 2)
    monkeypatch.setattr(functional, "PARALLEL_MIN_ELEMS", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="ignore"):
            functional.parallel(_overflow, 4)
        with pytest.raises(RuntimeWarning), np.errstate(over="warn"):
            functional.parallel(_overflow, 4)
    monkeypatch.setattr(losses, "num_threads", lambda: 2)
    monkeypatch.setattr(losses, "PARALLEL_MIN", 0)
    plan = losses.ChunkPlan(np, 64, 10, 1, target=40)
    assert plan.workers == 2 and len(plan.chunks) > 2

    def work(j, chunks):
        for _ in chunks:
            _overflow(0, 0)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="ignore"):
            plan.run(work)
        with pytest.raises(RuntimeWarning), np.errstate(over="warn"):
            plan.run(work)
