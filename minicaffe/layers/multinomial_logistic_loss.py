"""MultinomialLogisticLoss: cross-entropy of given probabilities, as Caffe, plus class weights."""

from __future__ import annotations

import math

from minicaffe.losses import (
    BATCH_SIZE,
    LOG_THRESHOLD,
    ClassLossBase,
    check_label_count,
)
from minicaffe.registry import register_layer


@register_layer("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(ClassLossBase):
    """loss = sum over valid positions of w * -log(max(P[y], 1e-20)) / n; P are probabilities.

    Layout: as Caffe, P (N, ...) is N rows of C = count/N classes when the label has N values;
    minicaffe also accepts N*H*W labels for P (N, C, H, W) (class axis 1, one label per pixel).

    Params (loss_param): ignore_label (unset: none); normalization = BATCH_SIZE when neither
    normalization nor the legacy normalize is set (Caffe divides by N), else as SoftmaxWithLoss
    (FULL, VALID, BATCH_SIZE, NONE, WEIGHTED); class weights (class_weight, SegNet's
    class_weighting, or a third bottom) with weight_normalization LOCAL / GLOBAL / NO;
    label_smoothing eps: loss += eps/C * sum_c w_c * -log(max(P_c, 1e-20)), true term * (1-eps).

    Bottoms: P, label, optional weights. Top: loss (scalar).
    Gradient: dP[y] = -lambda/n * (1-eps) * w_y / max(P[y], 1e-20) and
    dP[c] -= lambda/n * eps/C * w_c / max(P[c], 1e-20) at valid positions; 0 elsewhere.
    """

    exact_num_top_blobs = 1

    def setup(self, bottom, top):
        super().setup(bottom, top)
        self.setup_classes(bottom, BATCH_SIZE)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        shape, lcount = bottom[0].shape, bottom[1].count
        N = shape[0]
        if lcount == N and N:
            O, C, I, x_shape = N, bottom[0].count // N, 1, (N, bottom[0].count // N)
        elif len(shape) >= 2:
            O, C, I, x_shape = N, shape[1], math.prod(shape[2:]), shape
        else:
            O, C, I, x_shape = N, 1, 1, shape
        check_label_count(self, shape, bottom[1].shape, 1, O, I)
        w_shape = None
        if self.has_weight_bottom and x_shape != shape:
            # flattened classes: weights shaped like P (N, C, 1, 1) mean (N, C); C values (C,)
            w = bottom[2]
            if w.count == N * C and w.shape[:1] == (N,):
                w_shape = (N, C)
            elif w.count == C:
                w_shape = (C,)
        self.layout(bottom, 1, O, C, I, x_shape=x_shape, w_shape=w_shape)

    def forward(self, bottom, top):
        xp, O, C, I = self.xp, self.O, self.C, self.I
        P = bottom[0].data
        t = self.targets(bottom)
        py = self.scratch("py", (O * I,))
        xp.take(P.reshape(-1), t.idx, out=py)
        xp.maximum(py, LOG_THRESHOLD, out=py)
        terms = -xp.log(py)
        if t.a_true is not None:
            terms *= t.a_true
        loss = terms.sum()
        if self.eps:
            P4 = xp.maximum(self.view4(P), LOG_THRESHOLD)
            nlp = -xp.log(P4)

            def neg_log(w):
                return nlp.sum(axis=2) if w is None else (nlp * w).sum(axis=2)

            smooth, _ = self.smoothing(t, neg_log)
            loss = (1 - self.eps) * loss + (self.eps / C) * smooth.sum()
            self._clamped = P4
        top[0].data[...] = loss / self.finish(t)
        self._saved = (t, py)

    def backward(self, top, propagate_down, bottom):
        self.refuse_label_gradients(propagate_down)
        if not propagate_down[0]:
            return
        eps = self.eps
        t, py = self._saved
        scale = self.lambda_over(top, t.n)
        diff = bottom[0].diff
        diff.fill(0)
        coef = -scale * (1 - eps) / py
        if t.a_true is not None:
            coef *= t.a_true
        diff.reshape(-1)[t.idx] = coef
        if eps:
            w = 1 if t.w4 is None else t.w4
            term = (scale * eps / self.C) * w / self._clamped
            valid4 = self.valid4(t)
            d4 = self.view4(diff)
            d4 -= term if valid4 is None else term * valid4
