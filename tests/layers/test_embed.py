"""Embed: lookup forward, accumulated weight gradient for repeated indices, index errors."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe.backend import to_numpy
from minicaffe.errors import LabelError, LayerError
from tests.golden import replay
from tests.helpers import check_gradient, make_layer, run_forward

TEXT = """type: 'Embed' embed_param {{ num_output: 4 input_dim: 5 bias_term: {bias}
  weight_filler {{ type: 'gaussian' }} bias_filler {{ type: 'gaussian' }} }}"""
IDX = np.array([[0.0, 3.0, 3.0], [4.0, 1.0, 3.0]])


def test_golden(xp):
    replay("embed", xp=xp)


@pytest.mark.parametrize("bias", ["true", "false"])
def test_forward(bias, xp):
    layer, bottom, top = make_layer(TEXT.format(bias=bias), [IDX], xp=xp)
    (y,) = run_forward(layer, bottom, top)
    w = to_numpy(layer.blobs[0].data)
    assert w.shape == (5, 4)
    want = w[IDX.astype(int)]
    if bias == "true":
        want = want + to_numpy(layer.blobs[1].data)
    else:
        assert len(layer.blobs) == 1
    assert y.shape == (2, 3, 4)
    np.testing.assert_allclose(y, want, rtol=1e-12)


@pytest.mark.parametrize("bias", ["true", "false"])
def test_gradient(bias):
    layer, bottom, top = make_layer(TEXT.format(bias=bias), [IDX])
    grads = check_gradient(layer, bottom, top, check_bottoms=[])
    # index 3 appears three times: its row accumulates three top rows; index 2 never appears
    assert np.all(grads[("param", 0)][2] == 0)
    assert not layer.allow_force_backward(0)


def test_weight_gradient_accumulates(xp):
    layer, bottom, top = make_layer(TEXT.format(bias="true"), [IDX], xp=xp)
    run_forward(layer, bottom, top)
    dy = np.random.default_rng(0).standard_normal((2, 3, 4))
    top[0].diff[...] = xp.asarray(dy)
    for b in layer.blobs:
        b.diff[...] = 1.0  # parameter diffs accumulate
    layer.backward(top, [False], bottom)
    want = np.ones((5, 4))
    for i, k in enumerate(IDX.astype(int).ravel()):
        want[k] += dy.reshape(-1, 4)[i]
    np.testing.assert_allclose(to_numpy(layer.blobs[0].diff), want, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(layer.blobs[1].diff), 1 + dy.reshape(-1, 4).sum(0))


@pytest.mark.parametrize("bad", [5.0, -1.0, 7.5])
def test_out_of_range_index_is_a_label_error(bad):
    idx = IDX.copy()
    idx[1, 2] = bad
    layer, bottom, top = make_layer(TEXT.format(bias="true"), [idx], name="emb")
    with pytest.raises(LabelError, match=rf"layer 'emb' \(Embed\): .*\[0, 5\); received {bad:g}"):
        run_forward(layer, bottom, top)


def test_param_errors():
    with pytest.raises(LayerError, match=r"\(Embed\): embed_param.num_output"):
        make_layer("type: 'Embed' embed_param { input_dim: 3 }", [IDX])
    with pytest.raises(LayerError, match=r"\(Embed\): embed_param.input_dim"):
        make_layer("type: 'Embed' embed_param { num_output: 3 }", [IDX])
    layer, bottom, top = make_layer(TEXT.format(bias="true"), [IDX])
    run_forward(layer, bottom, top)
    with pytest.raises(LayerError, match="cannot back-propagate to the indices"):
        layer.backward(top, [True], bottom)
