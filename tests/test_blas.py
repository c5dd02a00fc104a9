"""minicaffe.blas.gemm: C = alpha A B + beta C on strided views, through OpenBLAS or NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe import blas


def _operands(rng, dtype, m, k, n, trans_a, trans_b, pad):
    """A (m, k), B (k, n), C (m, n) as views with leading dimensions ``pad`` larger than
    needed, A and/or B stored transposed."""
    def view(rows, cols, trans):
        if trans:
            return rng.standard_normal((cols, rows + pad)).astype(dtype)[:, :rows].T
        return rng.standard_normal((rows, cols + pad)).astype(dtype)[:, :cols]

    return view(m, k, trans_a), view(k, n, trans_b), view(m, n, False)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
def test_gemm_matches_numpy(dtype, trans_a, trans_b, pad, beta):
    rng = np.random.default_rng(0)
    a, b, c = _operands(rng, dtype, 7, 5, 9, trans_a, trans_b, pad)
    if beta == 0:
        c[...] = np.nan  # ignored, as BLAS does with beta 0
        expected = 1.5 * (a @ b)
    else:
        expected = 1.5 * (a @ b) + beta * c
    base = c.base
    out = blas.gemm(a, b, c, beta=beta, alpha=1.5)
    assert out is c and c.base is base  # written in place
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c, expected, rtol=rtol, atol=rtol)


def test_gemm_reaches_numpys_openblas():
    # NumPy's wheels bundle OpenBLAS; the working-layout convolution relies on reaching it
    import numpy

    config = str(numpy.show_config(mode="dicts"))
    if "openblas" not in config.lower():
        pytest.skip("this NumPy does not use OpenBLAS")
    assert blas.available(np.float32) and blas.available(np.float64)


def test_fallbacks(monkeypatch):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 6)).astype(np.float32)
    b = rng.standard_normal((6, 3)).astype(np.float32)
    # operands BLAS cannot take (no unit stride, mixed dtypes) go through NumPy
    c = np.ones((3, 4), np.float32).T
    blas.gemm(a, b, c, beta=1.0)
    np.testing.assert_allclose(c, a @ b + 1, rtol=1e-5)
    c64 = np.ones((4, 3))
    blas.gemm(a, b, c64, beta=2.0)
    np.testing.assert_allclose(c64, a.astype(np.float64) @ b + 2, rtol=1e-5)
    a2 = np.repeat(a, 2, axis=1)[:, ::2]  # both strides non-unit
    c = np.zeros((4, 3), np.float32)
    blas.gemm(a2, b, c)
    np.testing.assert_allclose(c, a @ b, rtol=1e-5)
    # switched off: everything through NumPy, same results
    monkeypatch.setenv("MINICAFFE_CBLAS", "0")
    monkeypatch.setattr(blas, "_cblas", blas._Cblas())
    assert not blas.available(np.float32)
    c = np.full((4, 3), 3.0, np.float32)
    blas.gemm(a, b, c, beta=1.0, alpha=-1.0)
    np.testing.assert_allclose(c, 3 - a @ b, rtol=1e-5)


def test_gemm_shape_mismatch():
    with pytest.raises(ValueError, match="do not match"):
        blas.gemm(np.ones((2, 3), np.float32), np.ones((4, 2), np.float32),
                  np.ones((2, 2), np.float32))


def test_empty_inner_dimension():
    c = np.full((2, 2), 5.0, np.float32)
    blas.gemm(np.ones((2, 0), np.float32), np.ones((0, 2), np.float32), c)
    np.testing.assert_array_equal(c, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_axpby_and_axpy(dtype):
    if not blas.available(dtype):
        pytest.skip("no OpenBLAS reachable")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 40)).astype(dtype)
    y = rng.standard_normal((3, 40)).astype(dtype)
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    expected = 0.25 * x + 0.9 * y
    assert blas.axpby(0.25, x, 0.9, y)
    np.testing.assert_allclose(y, expected, rtol=rtol, atol=rtol)
    expected = y - 1.5 * x
    assert blas.axpy(-1.5, x, y)
    np.testing.assert_allclose(y, expected, rtol=rtol, atol=rtol)


def test_axpby_refuses_what_it_cannot_do_in_place(monkeypatch):
    """Strided, mixed-dtype, mismatched, read-only or non-NumPy operands: False and y kept
    (the caller's own path runs); likewise without OpenBLAS."""
    x = np.ones(8, np.float32)
    cases = [
        (x, np.zeros(16, np.float32)[::2]),
        (x, np.zeros(8, np.float64)),
        (x, np.zeros(9, np.float32)),
        (np.ones(0, np.float32), np.zeros(0, np.float32)),
        (x.tolist(), np.zeros(8, np.float32)),
    ]
    readonly = np.zeros(8, np.float32)
    readonly.flags.writeable = False
    cases.append((x, readonly))
    for a, y in cases:
        before = np.array(y, copy=True)
        assert not blas.axpby(2.0, a, 1.0, y)
        assert not blas.axpy(2.0, a, y)
        np.testing.assert_array_equal(y, before)
    monkeypatch.setattr(blas._cblas, "vector", {})
    y = np.zeros(8, np.float32)
    assert not blas.axpby(2.0, x, 1.0, y) and not blas.axpy(2.0, x, y)
    np.testing.assert_array_equal(y, 0)
