"""Embed: a learned lookup table; each index selects one row of the weights."""

from __future__ import annotations

import numpy as np

from minicaffe.errors import LabelError
from minicaffe.functional import scatter_add
from minicaffe.layer import Layer
from minicaffe.registry import register_layer


def checked_indices(layer, values, limit: int, what: str):
    """``values`` (floats) truncated to integers, after checking 0 <= value < limit."""
    index = values.astype(np.int64)
    if index.size:
        outside = (index < 0) | (index >= limit)
        if bool(outside.any()):  # one host sync: a bad index must not wrap around silently
            bad = values.ravel()[int(outside.ravel().argmax())]
            raise layer.error(
                f"{what} must lie in [0, {limit}); received {float(bad):g}", LabelError
            )
    return index


@register_layer("Embed")
class EmbedLayer(Layer):
    """y[..., :] = W[int(x[...]), :] + b.

    Params (embed_param): num_output (required, > 0); input_dim (required, > 0: the number of
    rows, i.e. the vocabulary size); bias_term = true; weight_filler, bias_filler (unset =
    constant 0).
    Bottom: x, indices stored as floats (truncated to integers), any shape. Top: x.shape +
    (num_output,). Blobs: W (input_dim, num_output); b (num_output,) if bias_term.
    Gradient: dW[k] += sum of dy over the positions holding index k; db += sum of dy. The indices
    take no gradient.
    """

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom, top):
        p = self.layer_param.embed_param
        if p.num_output <= 0:
            raise self.error("embed_param.num_output must be set and > 0")
        if p.input_dim <= 0:
            raise self.error("embed_param.input_dim must be set and > 0")
        self.n_out, self.k = int(p.num_output), int(p.input_dim)
        self.bias_term = bool(p.bias_term)
        self.init_param(
            0, (self.k, self.n_out), p.weight_filler if p.HasField("weight_filler") else None
        )
        if self.bias_term:
            self.init_param(1, (self.n_out,), p.bias_filler if p.HasField("bias_filler") else None)
        elif len(self.blobs) > 1:
            raise self.error(f"bias_term is false but {len(self.blobs)} parameter blobs were given")

    def reshape(self, bottom, top):
        if top[0] is bottom[0]:
            raise self.error("Embed cannot run in place")
        top[0].reshape(bottom[0].shape + (self.n_out,))

    def forward(self, bottom, top):
        xp = self.xp
        self._index = checked_indices(self, bottom[0].data.reshape(-1), self.k, "indices")
        y = top[0].data.reshape(-1, self.n_out)
        xp.take(self.blobs[0].data, self._index, axis=0, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise self.error("cannot back-propagate to the indices (bottom 0)")
        dy = top[0].diff.reshape(-1, self.n_out)
        if self.param_propagate_down[0]:
            scatter_add(self.xp, self.blobs[0].diff, self._index, dy)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0)
