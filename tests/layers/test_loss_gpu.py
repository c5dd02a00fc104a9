"""The fused CUDA kernels of SoftmaxWithLoss: they compile (nvcc, where present) and, on a GPU,
equal the xp path for every option they cover."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from minicaffe.backend import get_cupy, to_numpy
from minicaffe.errors import LabelError
from minicaffe.layers.softmax_with_loss import cuda_source
from tests.helpers import make_layer


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_fused_kernel_source_compiles_with_nvcc(tmp_path):
    src = tmp_path / "swl.cu"
    src.write_text(cuda_source(np.float32) + cuda_source(np.float64))
    ptx = tmp_path / "swl.ptx"
    run = subprocess.run(
        ["nvcc", "--ptx", "-arch=sm_90", str(src), "-o", str(ptx)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    text = ptx.read_text()
    for name in (
        "swl_rows_f32",
        "swl_cols_f32",
        "swl_rescale_f32",
        "swl_rows_f64",
        "swl_cols_f64",
        "swl_rescale_f64",
    ):
        assert f".entry {name}" in text


def cupy_or_skip():
    cp = get_cupy()
    if cp is None:
        pytest.skip("CuPy and a CUDA device are needed")
    return cp


def both_paths(text, arrays, dtype, lam_after=None):
    results = []
    for fused in (True, False):
        layer, bottom, top = make_layer(text, arrays, xp=cupy_or_skip(), dtype=dtype)
        layer.fused = fused
        layer.forward(bottom, top)
        assert layer._fused_done == fused
        if lam_after is not None:
            top[0].diff[...] = lam_after
        layer.backward(top, [True] + [False] * (len(bottom) - 1), bottom)
        results.append((float(to_numpy(top[0].data)), to_numpy(bottom[0].diff).copy()))
    return results


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(64, 1000), (7, 3), (4, 21, 9, 11), (3, 5, 40)])
@pytest.mark.parametrize(
    "params",
    [
        "",
        "ignore_label: 255",
        "ignore_label: 255 normalization: FULL",
        "ignore_label: 255 normalization: BATCH_SIZE",
        "normalization: NONE",
        "class_weight: 0.2 class_weight: 1 class_weight: 3 ignore_label: 255",
        "class_weight: 0.2 class_weight: 1 class_weight: 3 normalization: WEIGHTED "
        "ignore_label: 255",
    ],
)
def test_fused_equals_xp_path(dtype, shape, params):
    if "class_weight" in params and shape[1] != 3:
        shape = (shape[0], 3) + shape[2:]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) * 3
    y = rng.integers(0, shape[1], (shape[0],) + shape[2:]).astype(float)
    y.reshape(-1)[::7] = 255 if "ignore" in params else 0
    text = f'type: "SoftmaxWithLoss" loss_param {{ {params} }}'
    (fl, fd), (xl, xd) = both_paths(text, [x, y], dtype)
    tol = 2e-5 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(fl, xl, rtol=tol)
    np.testing.assert_allclose(fd, xd, rtol=tol, atol=tol * 1e-3)


@pytest.mark.gpu
def test_fused_rescales_when_the_loss_weight_changes_after_forward():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((16, 10)), rng.integers(0, 10, 16).astype(float)
    (fl, fd), (xl, xd) = both_paths('type: "SoftmaxWithLoss"', [x, y], np.float64, 2.5)
    np.testing.assert_allclose(fd, xd, rtol=1e-12)


@pytest.mark.gpu
def test_fused_bad_label_is_an_error():
    cp = cupy_or_skip()
    layer, bottom, top = make_layer('type: "SoftmaxWithLoss"', [np.zeros((2, 3)), [0, 5]], xp=cp)
    with pytest.raises(LabelError, match=r"label 5 at index \(1,\)"):
        layer.forward(bottom, top)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "layer_type",
    ["MultinomialLogisticLoss", "InfogainLoss", "SigmoidCrossEntropyLoss", "EuclideanLoss"],
)
def test_other_losses_equal_numpy(layer_type):
    cp = cupy_or_skip()
    rng = np.random.default_rng(2)
    x = rng.uniform(0.05, 1, (4, 3, 2))
    y = rng.integers(0, 3, (4, 2)).astype(float)
    arrays = {
        "InfogainLoss": [x, y, rng.uniform(0, 1, (3, 3))],
        "SigmoidCrossEntropyLoss": [x, rng.uniform(0, 1, x.shape)],
        "EuclideanLoss": [x, rng.standard_normal(x.shape)],
    }.get(layer_type, [x, y])
    got = []
    for xp in (np, cp):
        layer, bottom, top = make_layer(f'type: "{layer_type}"', arrays, xp=xp)
        layer.forward(bottom, top)
        layer.backward(top, [True] + [False] * (len(bottom) - 1), bottom)
        got.append((float(to_numpy(top[0].data)), to_numpy(bottom[0].diff).copy()))
    np.testing.assert_allclose(got[1][0], got[0][0], rtol=1e-10)
    np.testing.assert_allclose(got[1][1], got[0][1], rtol=1e-10, atol=1e-14)
