"""LSTM, RNN and LSTMUnit: Caffe's recurrent semantics, parameter layout and gradients."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe.errors import LayerError, ShapeError
from tests.helpers import check_gradient, make_layer, run_forward

T, N, H = 4, 3, 5
CONT = np.array([[0, 0, 0], [1, 1, 0], [1, 0, 1], [1, 1, 1]], float)  # 0 = a sequence starts
FILL = "weight_filler { type: 'uniform' min: -0.5 max: 0.5 } " \
       "bias_filler { type: 'uniform' min: -0.5 max: 0.5 }"


def _text(kind, expose=False):
    extra = " expose_hidden: true" if expose else ""
    return f"type: '{kind}' recurrent_param {{ num_output: {H} {FILL}{extra} }}"


def _sig(a):
    return 1 / (1 + np.exp(-a))


def reference_lstm(x, cont, w_xc, b_c, w_hc, h0, c0, static=None, w_static=None):
    """The LSTM written out from Caffe's unrolled net (independent of the layer's code)."""
    t_total, n = cont.shape
    x2 = x.reshape(t_total, n, -1)
    h, c, out = h0.copy(), c0.copy(), []
    for t in range(t_total):
        h_in = cont[t][:, None] * h
        gates = x2[t] @ w_xc.T + b_c + h_in @ w_hc.T
        if static is not None:
            gates = gates + static.reshape(n, -1) @ w_static.T
        i, f, o = _sig(gates[:, :H]), _sig(gates[:, H : 2 * H]), _sig(gates[:, 2 * H : 3 * H])
        g = np.tanh(gates[:, 3 * H :])
        f = np.where(cont[t][:, None] == 0, 0, cont[t][:, None] * f)
        c = f * c + i * g
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out), h, c


def reference_rnn(x, cont, w_xh, b_h, w_hh, w_ho, b_o, h0):
    t_total, n = cont.shape
    x2 = x.reshape(t_total, n, -1)
    h, out = h0.copy(), []
    for t in range(t_total):
        h = np.tanh(x2[t] @ w_xh.T + b_h + (cont[t][:, None] * h) @ w_hh.T)
        out.append(np.tanh(h @ w_ho.T + b_o))
    return np.stack(out), h


def _x(seed=0, shape=(T, N, 2, 3)):
    return np.random.default_rng(seed).standard_normal(shape)


def test_lstm_forward_matches_the_unrolled_definition():
    x = _x()
    layer, bottom, top = make_layer(_text("LSTM"), [x, CONT])
    assert [b.shape for b in layer.blobs] == [(4 * H, 6), (4 * H,), (4 * H, H)]  # W_xc b_c W_hc
    out = run_forward(layer, bottom, top)[0]
    w_xc, b_c, w_hc = (b.data for b in layer.blobs)
    zeros = np.zeros((N, H))
    ref, _, _ = reference_lstm(x, CONT, w_xc, b_c, w_hc, zeros, zeros)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


def test_lstm_static_input_and_exposed_state():
    x, static = _x(1), _x(2, (N, 4))
    rng = np.random.default_rng(3)
    h0, c0 = rng.standard_normal((1, N, H)), rng.standard_normal((1, N, H))
    cont = np.ones((T, N))
    cont[2, 1] = 0
    layer, bottom, top = make_layer(_text("LSTM", expose=True), [x, cont, static, h0, c0],
                                    num_tops=3)
    shapes = [b.shape for b in layer.blobs]
    assert shapes == [(4 * H, 6), (4 * H,), (4 * H, 4), (4 * H, H)]  # W_xc b_c W_xc_static W_hc
    out, h_t, c_t = run_forward(layer, bottom, top)
    w_xc, b_c, w_static, w_hc = (b.data for b in layer.blobs)
    ref, ref_h, ref_c = reference_lstm(x, cont, w_xc, b_c, w_hc, h0[0], c0[0], static, w_static)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h_t[0], ref_h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c_t[0], ref_c, rtol=1e-12, atol=1e-12)
    check_gradient(layer, bottom, top, check_bottoms=[0, 2, 3, 4])


def test_lstm_gradient(xp):
    layer, bottom, top = make_layer(_text("LSTM"), [_x(4), CONT], xp=xp)
    check_gradient(layer, bottom, top, check_bottoms=[0])


def test_rnn_gradient(xp):
    layer, bottom, top = make_layer(_text("RNN"), [_x(12), CONT], xp=xp)
    check_gradient(layer, bottom, top, check_bottoms=[0])


def test_rnn_forward_and_gradient():
    x = _x(5)
    layer, bottom, top = make_layer(_text("RNN"), [x, CONT])
    assert [b.shape for b in layer.blobs] == [(H, 6), (H,), (H, H), (H, H), (H,)]
    out = run_forward(layer, bottom, top)[0]
    ref, _ = reference_rnn(x, CONT, *(b.data for b in layer.blobs), np.zeros((N, H)))
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    check_gradient(layer, bottom, top, check_bottoms=[0])


def test_rnn_static_input_and_exposed_state():
    x, static = _x(6), _x(7, (N, 2, 2))
    h0 = np.random.default_rng(8).standard_normal((1, N, H))
    layer, bottom, top = make_layer(_text("RNN", expose=True), [x, np.ones((T, N)), static, h0],
                                    num_tops=2)
    assert [b.shape for b in layer.blobs] == [(H, 6), (H,), (H, 4), (H, H), (H, H), (H,)]
    check_gradient(layer, bottom, top, check_bottoms=[0, 2, 3])


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_state_carries_over_between_forwards(kind):
    """Without expose_hidden the last state of one forward starts the next, as in Caffe: two
    halves fed in turn give the whole sequence's output."""
    x = _x(9, (2 * T, N, 6))
    whole, bottom, top = make_layer(_text(kind), [x, np.ones((2 * T, N))])
    expected = run_forward(whole, bottom, top)[0]
    halves, bottom, top = make_layer(_text(kind), [x[:T], np.ones((T, N))])
    for src, dst in zip(whole.blobs, halves.blobs, strict=True):
        dst.data[...] = src.data
    first = run_forward(halves, bottom, top)[0].copy()
    bottom[0].data[...] = x[T:]
    second = run_forward(halves, bottom, top)[0]
    np.testing.assert_allclose(np.concatenate([first, second]), expected, rtol=1e-12)
    # a sequence start (cont 0) cuts the carried state off again
    bottom[1].data[0] = 0
    restarted = run_forward(halves, bottom, top)[0]
    fresh, b2, t2 = make_layer(_text(kind), [x[T:], bottom[1].data.copy()])
    for src, dst in zip(whole.blobs, fresh.blobs, strict=True):
        dst.data[...] = src.data
    np.testing.assert_allclose(restarted, run_forward(fresh, b2, t2)[0], rtol=1e-12)


def test_lstm_unit():
    rng = np.random.default_rng(10)
    c_prev, gates = rng.standard_normal((1, N, H)), rng.standard_normal((1, N, 4 * H))
    cont = np.array([[1.0, 0.0, 1.0]])
    layer, bottom, top = make_layer("type: 'LSTMUnit'", [c_prev, gates, cont], num_tops=2)
    c, h = run_forward(layer, bottom, top)
    g = gates[0]
    i, f, o = _sig(g[:, :H]), _sig(g[:, H : 2 * H]) * cont[0][:, None], _sig(g[:, 2 * H : 3 * H])
    ref_c = f * c_prev[0] + i * np.tanh(g[:, 3 * H :])
    np.testing.assert_allclose(c[0], ref_c, rtol=1e-12)
    np.testing.assert_allclose(h[0], o * np.tanh(ref_c), rtol=1e-12)
    assert np.all(c[0][1] == (i * np.tanh(g[:, 3 * H :]))[1])  # cont 0: no memory of c_prev
    check_gradient(layer, bottom, top, check_bottoms=[0, 1])


def test_no_gradient_to_sequence_indicators():
    layer, bottom, top = make_layer(_text("LSTM"), [_x(), CONT])
    run_forward(layer, bottom, top)
    with pytest.raises(LayerError, match="sequence indicators"):
        layer.backward(top, [True, True], bottom)
    assert not layer.allow_force_backward(1) and layer.allow_force_backward(0)


@pytest.mark.parametrize(
    "text,bottoms,err,match",
    [
        (_text("LSTM"), [_x(), np.ones((T, N + 1))], ShapeError, "cont must have shape"),
        ("type: 'LSTM' recurrent_param { num_output: 0 }", [_x(), CONT], LayerError,
         "num_output"),
        (_text("LSTM", expose=True), [_x(), CONT], ShapeError, "initial state"),
        (_text("RNN"), [np.ones(5), np.ones((5, 1))], ShapeError, "at least 2 axes"),
    ],
)
def test_errors(text, bottoms, err, match):
    with pytest.raises(err, match=match):
        make_layer(text, bottoms)
