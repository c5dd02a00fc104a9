"""SmoothL1Loss (py-faster-rcnn fork): loss vs an explicit loop, gradients, bottom rules."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe.backend import to_numpy
from minicaffe.errors import LayerError, ShapeError
from tests.helpers import check_gradient, make_layer


def reference(p, t, w_in=None, w_out=None, sigma=1.0):
    s2 = sigma * sigma
    total = 0.0
    for k in np.ndindex(p.shape):
        d = p[k] - t[k]
        if w_in is not None:
            d *= w_in[k]
        f = 0.5 * s2 * d * d if abs(d) < 1.0 / s2 else abs(d) - 0.5 / s2
        total += f * (w_out[k] if w_out is not None else 1.0)
    return total / p.shape[0]


def arrays(shape=(4, 8), seed=0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(shape) * 1.5
    t = rng.standard_normal(shape)
    w_in = rng.integers(0, 2, shape) * 1.0
    w_in[0] = rng.uniform(0.2, 2.0, shape[1:])
    w_out = rng.uniform(0.1, 1.5, shape)
    return p, t, w_in, w_out


def loss_layer(arrs, sigma=None, xp=np, dtype=np.float64, extra=""):
    param = f"smooth_l1_loss_param {{ sigma: {sigma} }}" if sigma is not None else ""
    return make_layer(f'type: "SmoothL1Loss" {param} {extra}', arrs, xp=xp, dtype=dtype)


def kink_of(sigma, arrs):
    p, t = arrs[0], arrs[1]
    w_in = arrs[2] if len(arrs) == 4 else 1.0

    def kink(x, idx):
        pp = x if idx == 0 else p
        tt = x if idx == 1 else t
        wi = x if idx == 2 else w_in
        return np.broadcast_to(np.abs(np.abs(wi * (pp - tt)) - 1 / sigma**2) < 1e-3, p.shape)

    return kink


@pytest.mark.parametrize("sigma", [None, 3.0, 0.5])
@pytest.mark.parametrize("weighted", [False, True])
def test_forward_matches_loop(xp, sigma, weighted):
    arrs = list(arrays())
    arrs = arrs if weighted else arrs[:2]
    layer, bottom, top = loss_layer(arrs, sigma, xp=xp)
    layer.forward(bottom, top)
    want = reference(*arrs, sigma=sigma or 1.0)
    np.testing.assert_allclose(float(to_numpy(top[0].data)), want, rtol=1e-12)
    assert layer.loss_weights == [1.0] and top[0].shape == ()


def test_both_branches_used_and_float32():
    p = np.array([[0.05, -0.2, 2.0, -3.0]], np.float32)
    t = np.zeros_like(p)
    layer, bottom, top = loss_layer([p, t], 3.0, dtype=np.float32)
    layer.forward(bottom, top)
    s2 = 9.0
    want = 0.5 * s2 * 0.05**2 + (0.2 - 0.5 / s2) + (2.0 - 0.5 / s2) + (3.0 - 0.5 / s2)
    np.testing.assert_allclose(float(to_numpy(top[0].data)), want, rtol=1e-6)


@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_gradients_two_bottoms(sigma):
    arrs = list(arrays((3, 5), seed=1))[:2]
    layer, bottom, top = loss_layer(arrs, sigma, extra="loss_weight: 2.5")
    check_gradient(layer, bottom, top, kink=kink_of(sigma, arrs), eps=1e-6, rtol=1e-6)


def test_gradients_four_bottoms_including_weights():
    arrs = list(arrays((3, 2, 2), seed=2))
    layer, bottom, top = loss_layer(arrs, 3.0)
    check_gradient(layer, bottom, top, kink=kink_of(3.0, arrs), eps=1e-6, rtol=1e-6)


def test_target_gradient_is_opposite(xp):
    arrs = list(arrays(seed=4))
    layer, bottom, top = loss_layer(arrs, 2.0, xp=xp)
    layer.forward(bottom, top)
    layer.backward(top, [True, True, False, False], bottom)
    dp, dt = to_numpy(bottom[0].diff), to_numpy(bottom[1].diff)
    np.testing.assert_array_equal(dt, -dp)
    assert np.any(dp != 0)
    assert (dp[arrs[2] == 0] == 0).all()  # zero inside weight: no gradient


def test_bottom_count_and_shape_errors():
    p, t, w_in, w_out = arrays()
    with pytest.raises(ShapeError, match="received 3 bottoms"):
        loss_layer([p, t, w_in])
    with pytest.raises(ShapeError, match="at least 2 bottom"):
        loss_layer([p])
    with pytest.raises(ShapeError, match="at most 4 bottom"):
        loss_layer([p, t, w_in, w_out, p])
    with pytest.raises(ShapeError, match=r"outside_weights \(bottom 3\) must have"):
        loss_layer([p, t, w_in, w_out[:, :4]])
    with pytest.raises(ShapeError, match="target"):
        loss_layer([p, t[:, :3]])
    with pytest.raises(LayerError, match="sigma must be > 0"):
        loss_layer([p, t], 0.0)
