"""Shared fixtures: the ``xp`` array module (NumPy always, CuPy when a GPU answers)."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe import backend


def _xp_params():
    params = [pytest.param(np, id="numpy")]
    params.append(pytest.param("cupy", id="cupy", marks=pytest.mark.gpu))
    return params


@pytest.fixture(params=_xp_params())
def xp(request):
    """numpy, or cupy (skipped cleanly when CuPy or a CUDA device is missing)."""
    if request.param is np:
        return np
    cp = backend.get_cupy()
    if cp is None:
        pytest.skip("CuPy and a CUDA device are needed")
    return cp


@pytest.fixture(autouse=True)
def _seed():
    backend.set_random_seed(1701)
    backend.set_mode_cpu()
    yield
