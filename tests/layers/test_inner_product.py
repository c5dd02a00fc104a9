"""InnerProduct's weight gradient adds into the diff already held (Caffe accumulates over
iter_size and shared params), through the accumulating GEMM or the blocked fallback."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe import blas
from minicaffe.layers import inner_product
from tests.helpers import make_layer, run_forward


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("path", ["blas", "fallback", "blocked"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_gradient_accumulates(monkeypatch, transpose, path, dtype):
    if path == "blas" and not blas.available(dtype):
        pytest.skip("no OpenBLAS reachable")
    if path != "blas":
        monkeypatch.setattr(blas, "available", lambda dtype=None: False)
    if path == "blocked":  # several row blocks through the scratch
        monkeypatch.setattr(inner_product.InnerProductLayer, "SCRATCH_ELEMS", 7)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 3, 2, 2))
    text = (
        "type: 'InnerProduct' inner_product_param { num_output: 6 "
        f"transpose: {str(transpose).lower()} weight_filler {{ type: 'gaussian' }} }}"
    )
    layer, bottom, top = make_layer(text, [x], dtype=dtype)
    run_forward(layer, bottom, top)
    dy = rng.standard_normal(top[0].shape).astype(dtype)
    top[0].diff[...] = dy
    held = rng.standard_normal(layer.blobs[0].shape).astype(dtype)
    layer.blobs[0].diff[...] = held
    layer.backward(top, [True], bottom)
    grad = dy.T @ x.reshape(5, -1).astype(dtype)  # (num_output, K)
    expected = held + (grad.T if transpose else grad)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(layer.blobs[0].diff, expected, rtol=tol, atol=tol)
    w = layer.blobs[0].data
    dx = dy @ (w.T if transpose else w)
    np.testing.assert_allclose(bottom[0].diff.reshape(5, -1), dx, rtol=tol, atol=tol)
