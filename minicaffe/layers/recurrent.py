"""LSTM and RNN: recurrent layers over a (T, N, ...) sequence, with Caffe's semantics.

Caffe builds these as an unrolled net of InnerProduct, Scale, Eltwise and LSTMUnit (or TanH)
layers. minicaffe computes the same values directly, time step by time step, with the same
parameter blobs in the same order (so .caffemodel weights load unchanged):

* LSTM (hidden size H = num_output): W_xc (4H, D), b_c (4H), [W_xc_static (4H, D_static)],
  W_hc (4H, H). Gates in the order i, f, o, g.
* RNN (H = num_output): W_xh (H, D), b_h (H), [W_xh_static (H, D_static)], W_hh (H, H),
  W_ho (H, H), b_o (H).

Bottoms: x (T, N, ...) (D = its values per item), cont (T, N) (0 marks the start of a sequence:
the previous hidden and cell state are cut off there), optionally a static input (N, ...) added
to every step, then, with ``expose_hidden``, the initial state (h_0 (1, N, H), and c_0 for LSTM).
Tops: h (T, N, H) (RNN: its output o), then, with ``expose_hidden``, the final state.

Without ``expose_hidden`` the final state of one forward is the initial state of the next (as in
Caffe, so a long sequence can be fed in consecutive chunks); it starts at zero, and a batch of
a new size starts again from zero. No gradient flows to ``cont``, nor into that carried state.
"""

from __future__ import annotations

from minicaffe.errors import ShapeError
from minicaffe.layer import Layer
from minicaffe.registry import register_layer


def sigmoid(xp, a, out=None):
    """1 / (1 + exp(-a)) (in ``out`` when given)."""
    out = xp.negative(a, out=out)
    xp.exp(out, out=out)
    out += 1
    return xp.reciprocal(out, out=out)


def lstm_unit_forward(xp, c_prev, gates, cont):
    """One LSTM step (Caffe's LSTMUnit). c_prev (N, H), gates (N, 4H) pre-activations in the
    order i, f, o, g, cont (N,). Returns (c, h, act) with act (N, 4H) = [i, f, o, g] activated,
    f multiplied by cont (exactly 0 where cont is 0)."""
    h_dim = c_prev.shape[-1]
    act = xp.empty_like(gates)
    sigmoid(xp, gates[:, : 3 * h_dim], out=act[:, : 3 * h_dim])
    xp.tanh(gates[:, 3 * h_dim :], out=act[:, 3 * h_dim :])
    f = act[:, h_dim : 2 * h_dim]
    c_col = cont.reshape(-1, 1)
    f *= c_col
    f[...] = xp.where(c_col == 0, 0, f)
    i, o, g = act[:, :h_dim], act[:, 2 * h_dim : 3 * h_dim], act[:, 3 * h_dim :]
    c = f * c_prev + i * g
    h = o * xp.tanh(c)
    return c, h, act


def lstm_unit_backward(xp, c_prev, c, act, dc, dh):
    """Gradients of one LSTM step: (dc_prev, dgates) from the gradients dc, dh of its outputs
    (Caffe's formulas: the f gate's derivative is taken as f (1 - f) with f already scaled by
    cont)."""
    h_dim = c.shape[-1]
    i, f = act[:, :h_dim], act[:, h_dim : 2 * h_dim]
    o, g = act[:, 2 * h_dim : 3 * h_dim], act[:, 3 * h_dim :]
    tanh_c = xp.tanh(c)
    c_term = dc + dh * o * (1 - tanh_c * tanh_c)
    dgates = xp.empty_like(act)
    dgates[:, :h_dim] = c_term * g * i * (1 - i)
    dgates[:, h_dim : 2 * h_dim] = c_term * c_prev * f * (1 - f)
    dgates[:, 2 * h_dim : 3 * h_dim] = dh * tanh_c * o * (1 - o)
    dgates[:, 3 * h_dim :] = c_term * i * (1 - g * g)
    return c_term * f, dgates


class RecurrentLayer(Layer):
    """Shared bottoms/tops handling, input transforms and carried state of LSTM and RNN."""

    min_bottom_blobs = 2
    min_top_blobs = 1
    gate_factor = 1  # rows of the input transform per hidden unit (LSTM: 4 gates)
    n_states = 1  # recurrent state blobs (LSTM: h and c)

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1  # never to the sequence indicators

    def check_blob_counts(self, bottom, top):
        p = self.layer_param.recurrent_param
        self.expose = p.expose_hidden
        states = self.n_states if self.expose else 0
        n_bottom, n_top = len(bottom), len(top)
        if n_bottom not in (2 + states, 3 + states):
            raise self.error(
                "takes x, cont, an optional static input"
                + (f" and {states} initial state blob(s) (expose_hidden)" if states else "")
                + f"; received {n_bottom} bottoms",
                ShapeError,
            )
        if n_top != 1 + states:
            raise self.error(
                f"has {1 + states} top(s) (h"
                + (", then the final state" if states else "")
                + f"); received {n_top}",
                ShapeError,
            )
        self.static = n_bottom == 3 + states

    def setup(self, bottom, top):
        p = self.layer_param.recurrent_param
        if p.num_output <= 0:
            raise self.error("recurrent_param.num_output must be set and > 0")
        self.hidden = int(p.num_output)
        x = bottom[0]
        if x.num_axes < 2:
            raise self.error(f"x must have at least 2 axes (T, N, ...); received {x.shape}",
                             ShapeError)
        self.in_dim = x.count_range(2)
        self.static_dim = bottom[2].count_range(1) if self.static else 0
        wf = p.weight_filler if p.HasField("weight_filler") else None
        bf = p.bias_filler if p.HasField("bias_filler") else None
        self.make_params(wf, bf)
        self._state = None  # carried (h, c) between forwards without expose_hidden

    def reshape(self, bottom, top):
        x, cont = bottom[0], bottom[1]
        if x.num_axes < 2 or x.count_range(2) != self.in_dim:
            raise self.error(
                f"x must be (T, N, ...) with {self.in_dim} values per item (as at setup); "
                f"received shape {x.shape}",
                ShapeError,
            )
        t, n = x.shape[:2]
        if cont.shape != (t, n):
            raise self.error(f"cont must have shape (T, N) = {(t, n)}; received {cont.shape}",
                             ShapeError)
        if self.static:
            s = bottom[2]
            if s.num_axes < 1 or s.shape[0] != n or s.count_range(1) != self.static_dim:
                raise self.error(
                    f"the static input must be (N, ...) with N = {n} and {self.static_dim} "
                    f"values per item; received shape {s.shape}",
                    ShapeError,
                )
        if self.expose:
            first = 3 if self.static else 2
            for k, blob in enumerate(bottom[first:]):
                if blob.shape != (1, n, self.hidden):
                    raise self.error(
                        f"initial state bottom {first + k} must have shape (1, {n}, "
                        f"{self.hidden}); received {blob.shape}",
                        ShapeError,
                    )
            for blob in top[1:]:
                blob.reshape(1, n, self.hidden)
        top[0].reshape(t, n, self.hidden)
        self.t, self.n = t, n

    # ------------------------------------------------------------------ shared pieces
    def make_input_params(self, rows: int, wf, bf) -> int:
        """The input transform's params, in Caffe's order: W_x (rows, in), b (rows), and with a
        static input W_static (rows, static); returns the index of the next param, the
        recurrent weight (``self.w_h_index``)."""
        self.init_param(0, (rows, self.in_dim), wf)
        self.init_param(1, (rows,), bf)
        if self.static:
            self.init_param(2, (rows, self.static_dim), wf)
        self.w_h_index = 3 if self.static else 2
        return self.w_h_index

    def input_weights(self):
        """(W_x, b, W_static or None) blobs."""
        return self.blobs[0], self.blobs[1], self.blobs[2] if self.static else None

    def initial_state(self, bottom):
        xp, n, h = self.xp, self.n, self.hidden
        if self.expose:
            first = 3 if self.static else 2
            return [b.data.reshape(n, h).copy() for b in bottom[first : first + self.n_states]]
        state = self._state
        if state is None or state[0].shape != (n, h):
            state = [xp.zeros((n, h), self.dtype) for _ in range(self.n_states)]
        return [s.copy() for s in state]

    def finish_forward(self, top, final) -> None:
        if self.expose:
            for blob, value in zip(top[1:], final, strict=True):
                blob.data[...] = value.reshape(1, self.n, self.hidden)
        else:
            self._state = [v.copy() for v in final]

    def input_transform(self, bottom, w, b, w_static):
        """x W^T + b for every step, plus the static input's transform: (T, N, rows)."""
        xp = self.xp
        x2 = bottom[0].data.reshape(self.t * self.n, self.in_dim)
        out = xp.matmul(x2, w.data.T)
        out += b.data
        out = out.reshape(self.t, self.n, -1)
        if self.static:
            s2 = bottom[2].data.reshape(self.n, self.static_dim)
            out += xp.matmul(s2, w_static.data.T)[None]
        return out

    def input_backward(self, bottom, propagate_down, dpre, w, b, w_static) -> None:
        """Gradients of :meth:`input_transform` from dpre (T, N, rows)."""
        xp = self.xp
        d2 = dpre.reshape(self.t * self.n, -1)
        ppd = self.param_propagate_down
        x2 = bottom[0].data.reshape(self.t * self.n, self.in_dim)
        if ppd[0]:
            w.diff += xp.matmul(d2.T, x2)
        if ppd[1]:
            b.diff += d2.sum(axis=0)
        if propagate_down[0]:
            bottom[0].diff.reshape(self.t * self.n, self.in_dim)[...] = xp.matmul(d2, w.data)
        if self.static:
            ds = dpre.sum(axis=0)  # (N, rows): the static input feeds every step
            s2 = bottom[2].data.reshape(self.n, self.static_dim)
            if ppd[2]:
                w_static.diff += xp.matmul(ds.T, s2)
            if propagate_down[2]:
                bottom[2].diff.reshape(self.n, self.static_dim)[...] = xp.matmul(ds, w_static.data)

    def state_backward(self, bottom, propagate_down, grads) -> None:
        """Gradients of the exposed initial state (dropped for the carried state)."""
        if not self.expose:
            return
        first = 3 if self.static else 2
        for k, (blob, g) in enumerate(zip(bottom[first:], grads, strict=True)):
            if propagate_down[first + k]:
                blob.diff[...] = g.reshape(blob.shape)

    def check_propagate(self, propagate_down) -> None:
        if len(propagate_down) > 1 and propagate_down[1]:
            raise self.error("cannot back-propagate to the sequence indicators (bottom 1, cont)")

    def final_state_diffs(self, top):
        """Gradients arriving at the exposed final-state tops (zeros without them)."""
        xp, n, h = self.xp, self.n, self.hidden
        if self.expose:
            return [blob.diff.reshape(n, h).copy() for blob in top[1:]]
        return [xp.zeros((n, h), self.dtype) for _ in range(self.n_states)]


@register_layer("LSTM")
class LSTMLayer(RecurrentLayer):
    """Long short-term memory over T steps (Caffe's LSTM; see the module docstring).

    Params (recurrent_param): num_output H (required), weight_filler, bias_filler,
    expose_hidden = false, debug_info (ignored).
    Per step t: h' = cont_t * h_{t-1}; gates = W_xc x_t + b_c [+ W_xc_static x_static]
    + W_hc h'; i, f, o = sigmoid, g = tanh of the gate blocks; f *= cont_t;
    c_t = f c_{t-1} + i g; h_t = o tanh(c_t).
    """

    gate_factor = 4
    n_states = 2

    def make_params(self, wf, bf):
        k = self.make_input_params(4 * self.hidden, wf, bf)
        self.init_param(k, (4 * self.hidden, self.hidden), wf)

    def _weights(self):
        return self.input_weights() + (self.blobs[self.w_h_index],)

    def forward(self, bottom, top):
        xp = self.xp
        w, b, w_static, w_h = self._weights()
        pre = self.input_transform(bottom, w, b, w_static)
        cont = bottom[1].data
        h_prev, c_prev = self.initial_state(bottom)
        t_total = self.t
        self._h_in = xp.empty((t_total, self.n, self.hidden), self.dtype)
        self._c_in = xp.empty_like(self._h_in)
        self._c = xp.empty_like(self._h_in)
        self._act = xp.empty((t_total, self.n, 4 * self.hidden), self.dtype)
        y = top[0].data
        for t in range(t_total):
            h_in = h_prev * cont[t].reshape(-1, 1)
            gates = pre[t] + xp.matmul(h_in, w_h.data.T)
            c, h, act = lstm_unit_forward(xp, c_prev, gates, cont[t])
            self._h_in[t], self._c_in[t], self._c[t], self._act[t] = h_in, c_prev, c, act
            y[t] = h
            h_prev, c_prev = h, c
        self.finish_forward(top, [h_prev, c_prev])

    def backward(self, top, propagate_down, bottom):
        self.check_propagate(propagate_down)
        xp = self.xp
        w, b, w_static, w_h = self._weights()
        cont = bottom[1].data
        dy = top[0].diff
        dh_next, dc_next = self.final_state_diffs(top)
        dpre = xp.empty((self.t, self.n, 4 * self.hidden), self.dtype)
        dw_h = xp.zeros(w_h.shape, self.dtype)
        for t in range(self.t - 1, -1, -1):
            dh = dy[t] + dh_next
            dc_prev, dgates = lstm_unit_backward(
                xp, self._c_in[t], self._c[t], self._act[t], dc_next, dh
            )
            dpre[t] = dgates
            dw_h += xp.matmul(dgates.T, self._h_in[t])
            dh_next = xp.matmul(dgates, w_h.data) * cont[t].reshape(-1, 1)
            dc_next = dc_prev
        if self.param_propagate_down[self.w_h_index]:
            w_h.diff += dw_h
        self.input_backward(bottom, propagate_down, dpre, w, b, w_static)
        self.state_backward(bottom, propagate_down, [dh_next, dc_next])


@register_layer("RNN")
class RNNLayer(RecurrentLayer):
    """Simple recurrent net over T steps (Caffe's RNN; see the module docstring).

    Params (recurrent_param): num_output H (required), weight_filler, bias_filler,
    expose_hidden = false, debug_info (ignored).
    Per step t: h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]);
    o_t = tanh(W_ho h_t + b_o). Top: o (T, N, H).
    """

    def make_params(self, wf, bf):
        h = self.hidden
        k = self.make_input_params(h, wf, bf)
        self.init_param(k, (h, h), wf)  # W_hh
        self.init_param(k + 1, (h, h), wf)  # W_ho
        self.init_param(k + 2, (h,), bf)  # b_o

    def _weights(self):
        k = self.w_h_index
        return self.input_weights() + tuple(self.blobs[k : k + 3])

    def forward(self, bottom, top):
        xp = self.xp
        w, b, w_static, w_hh, w_ho, b_o = self._weights()
        pre = self.input_transform(bottom, w, b, w_static)
        cont = bottom[1].data
        (h_prev,) = self.initial_state(bottom)
        self._h_in = xp.empty((self.t, self.n, self.hidden), self.dtype)
        self._h = xp.empty_like(self._h_in)
        y = top[0].data
        for t in range(self.t):
            h_in = h_prev * cont[t].reshape(-1, 1)
            h = xp.tanh(pre[t] + xp.matmul(h_in, w_hh.data.T))
            self._h_in[t], self._h[t] = h_in, h
            y[t] = xp.tanh(xp.matmul(h, w_ho.data.T) + b_o.data)
            h_prev = h
        self.finish_forward(top, [h_prev])

    def backward(self, top, propagate_down, bottom):
        self.check_propagate(propagate_down)
        xp = self.xp
        k = self.w_h_index
        w, b, w_static, w_hh, w_ho, b_o = self._weights()
        cont = bottom[1].data
        y, dy = top[0].data, top[0].diff
        (dh_next,) = self.final_state_diffs(top)
        dpre = xp.empty((self.t, self.n, self.hidden), self.dtype)
        dw_hh = xp.zeros(w_hh.shape, self.dtype)
        dw_ho = xp.zeros(w_ho.shape, self.dtype)
        db_o = xp.zeros(b_o.shape, self.dtype)
        for t in range(self.t - 1, -1, -1):
            do = dy[t] * (1 - y[t] * y[t])
            dw_ho += xp.matmul(do.T, self._h[t])
            db_o += do.sum(axis=0)
            dh = xp.matmul(do, w_ho.data) + dh_next
            da = dh * (1 - self._h[t] * self._h[t])
            dpre[t] = da
            dw_hh += xp.matmul(da.T, self._h_in[t])
            dh_next = xp.matmul(da, w_hh.data) * cont[t].reshape(-1, 1)
        ppd = self.param_propagate_down
        for blob, grad, need in ((w_hh, dw_hh, ppd[k]), (w_ho, dw_ho, ppd[k + 1]),
                                 (b_o, db_o, ppd[k + 2])):
            if need:
                blob.diff += grad
        self.input_backward(bottom, propagate_down, dpre, w, b, w_static)
        self.state_backward(bottom, propagate_down, [dh_next])


@register_layer("LSTMUnit")
class LSTMUnitLayer(Layer):
    """One LSTM step (the unit Caffe's LSTM unrolls into).

    Bottoms: c_prev (1, N, H), gates (1, N, 4H) (pre-activations i, f, o, g), cont (1, N).
    Tops: c (1, N, H), h (1, N, H). c = f c_prev + i g with f multiplied by cont; h = o tanh(c).
    No gradient to cont.
    """

    exact_num_bottom_blobs = 3
    exact_num_top_blobs = 2

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 2

    def reshape(self, bottom, top):
        c_prev, gates, cont = bottom
        if c_prev.num_axes != 3 or c_prev.shape[0] != 1:
            raise self.error(f"c_prev must be (1, N, H); received {c_prev.shape}", ShapeError)
        _, n, h = c_prev.shape
        if gates.shape != (1, n, 4 * h):
            raise self.error(
                f"the gates must be (1, {n}, {4 * h}) for c_prev {c_prev.shape}; received "
                f"{gates.shape}",
                ShapeError,
            )
        if cont.shape != (1, n):
            raise self.error(f"cont must be (1, {n}); received {cont.shape}", ShapeError)
        for blob in top:
            blob.reshape(1, n, h)

    def forward(self, bottom, top):
        c_prev, gates, cont = (b.data[0] for b in bottom)
        c, h, self._act = lstm_unit_forward(self.xp, c_prev, gates, cont)
        top[0].data[0] = c
        top[1].data[0] = h

    def backward(self, top, propagate_down, bottom):
        if propagate_down[2]:
            raise self.error("cannot back-propagate to the sequence indicators (bottom 2, cont)")
        c_prev = bottom[0].data[0]
        dc_prev, dgates = lstm_unit_backward(
            self.xp, c_prev, top[0].data[0], self._act, top[0].diff[0], top[1].diff[0]
        )
        if propagate_down[0]:
            bottom[0].diff[0] = dc_prev
        if propagate_down[1]:
            bottom[1].diff[0] = dgates
