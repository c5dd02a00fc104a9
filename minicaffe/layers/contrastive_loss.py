"""ContrastiveLoss: pull similar pairs together, push dissimilar ones past a margin, as Caffe."""

from __future__ import annotations

import numpy as np

from minicaffe.errors import ShapeError
from minicaffe.losses import LossBase
from minicaffe.registry import register_layer


@register_layer("ContrastiveLoss")
class ContrastiveLossLayer(LossBase):
    """loss = sum_n l_n / (2N), with d_n^2 = |a_n - b_n|^2 and, per pair n:

    similar (trunc(sim_n) != 0): l = d^2; dissimilar: l = max(m - d, 0)^2, or with
    legacy_version max(m - d^2, 0).

    Params (contrastive_loss_param): margin m = 1, legacy_version = false.
    Bottoms: a (N, ...), b (same shape), sim (N values). Top: loss (scalar).
    Gradient: da = lambda/N * c_n * (a - b), db = -da, with c = 1 (similar); dissimilar,
    non-legacy: c = -(m - d) / (d + 1e-4) when m > d (Caffe's backward, slightly off the exact
    derivative), legacy: c = -1 when m > d^2; else 0. No gradient into sim.
    """

    exact_num_bottom_blobs = 3
    label_bottoms = {2: "similarity"}

    def setup(self, bottom, top):
        super().setup(bottom, top)
        p = self.layer_param.contrastive_loss_param
        self.margin, self.legacy = float(p.margin), bool(p.legacy_version)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].shape != bottom[1].shape:
            raise self.error(
                f"the two inputs must have the same shape; received "
                f"{bottom[0].shape} and {bottom[1].shape}",
                ShapeError,
            )
        N = bottom[0].shape[0] if bottom[0].shape else 1
        if bottom[2].count != N:
            raise self.error(
                f"the similarity input must hold one value per pair (N = {N}); "
                f"received shape {bottom[2].shape}",
                ShapeError,
            )
        self.N = N

    def forward(self, bottom, top):
        xp, N = self.xp, self.N
        d = self.scratch("d", (N, bottom[0].count // max(N, 1)))
        xp.subtract(bottom[0].data.reshape(d.shape), bottom[1].data.reshape(d.shape), out=d)
        dist_sq = (d * d).sum(axis=1)
        with np.errstate(invalid="ignore"):
            similar = bottom[2].data.reshape(-1).astype(np.intp) != 0
        if self.legacy:
            far = xp.maximum(self.margin - dist_sq, 0)
            coef = xp.where(similar, 1.0, -1.0 * (far > 0))
        else:
            dist = xp.sqrt(dist_sq)
            mdist = self.margin - dist
            far = xp.maximum(mdist, 0) ** 2
            coef = xp.where(similar, 1.0, xp.where(mdist > 0, -mdist / (dist + 1e-4), 0.0))
        loss = xp.where(similar, dist_sq, far)
        top[0].data[...] = loss.sum() / (2 * max(N, 1))
        self._coef = coef.astype(self.dtype, copy=False)

    def backward(self, top, propagate_down, bottom):
        self.refuse_label_gradients(propagate_down)
        xp, N = self.xp, self.N
        d = self.scratch("d", (N, bottom[0].count // max(N, 1)))
        scale = self.lambda_over(top, max(N, 1))
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                out = bottom[i].diff.reshape(d.shape)
                xp.multiply(d, (sign * scale) * self._coef[:, None], out=out)
