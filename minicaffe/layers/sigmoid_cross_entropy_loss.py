"""SigmoidCrossEntropyLoss: per-element logistic loss of logits against targets, as Caffe."""

from __future__ import annotations

import numpy as np

from minicaffe.errors import ShapeError
from minicaffe.losses import (
    BATCH_SIZE,
    WEIGHTED,
    LossBase,
    ignore_label_of,
    normalization_mode,
    normalizer,
)
from minicaffe.registry import register_layer


@register_layer("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(LossBase):
    """loss = sum over kept elements of max(x, 0) - x*t + log(1 + exp(-|x|)), divided by n.

    That is -[t log s(x) + (1 - t) log(1 - s(x))] in a form that never overflows; targets t
    are usually in [0, 1] (soft targets allowed).

    Params (loss_param): ignore_label (unset: none): an element is dropped when trunc(t) equals
    it; normalization = BATCH_SIZE when neither normalization nor the legacy normalize is set
    (Caffe's historical default): FULL n = count, VALID n = kept elements, BATCH_SIZE n =
    shape(0), NONE n = 1 (never below 1).
    Bottoms: x, t (same count, same first axis). Top: loss (scalar).
    Gradient: dx = lambda/n * (sigmoid(x) - t), 0 at dropped elements; none into t.
    """

    loss_params = frozenset({"ignore_label", "normalization", "normalize"})

    def setup(self, bottom, top):
        super().setup(bottom, top)
        self.ignore_label = ignore_label_of(self.layer_param.loss_param)
        self.mode = normalization_mode(self, BATCH_SIZE)
        if self.mode == WEIGHTED:
            raise self.error(
                "normalization WEIGHTED needs class weights, which "
                "SigmoidCrossEntropyLoss does not take; use FULL, VALID, BATCH_SIZE "
                "or NONE"
            )

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count != bottom[1].count:
            raise self.error(
                f"the logits and the targets must have the same count; received "
                f"shapes {bottom[0].shape} ({bottom[0].count}) and "
                f"{bottom[1].shape} ({bottom[1].count})",
                ShapeError,
            )

    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data.reshape(-1)
        t = bottom[1].data.reshape(-1)
        e = self.scratch("e", x.shape)  # exp(-|x|), reused by backward
        xp.abs(x, out=e)
        xp.negative(e, out=e)
        xp.exp(e, out=e)
        loss, tmp = self.scratch("loss", x.shape), self.scratch("tmp", x.shape)
        xp.log1p(e, out=loss)
        xp.maximum(x, 0, out=tmp)
        loss += tmp
        xp.multiply(x, t, out=tmp)
        loss -= tmp
        valid, count = None, x.size
        if self.ignore_label is not None:
            valid = self.scratch("valid", x.shape, bool)
            with np.errstate(invalid="ignore"):
                xp.not_equal(t.astype(np.intp), self.ignore_label, out=valid)
            count = xp.count_nonzero(valid)
            count = int(count) if xp is np else count
            loss *= valid
        outer = bottom[0].shape[0] if bottom[0].shape else 1
        n = normalizer(
            self.mode, outer=outer, inner=x.size // outer if outer else 0, valid=count, xp=xp
        )
        top[0].data[...] = loss.sum() / n
        self._saved = (valid, n)

    def backward(self, top, propagate_down, bottom):
        self.refuse_label_gradients(propagate_down)
        if not propagate_down[0]:
            return
        xp = self.xp
        valid, n = self._saved
        x = bottom[0].data.reshape(-1)
        t = bottom[1].data.reshape(-1)
        e, tmp = self.scratch("e", x.shape), self.scratch("tmp", x.shape)
        d = bottom[0].diff.reshape(-1)
        # sigmoid(x) = 1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0, with e = exp(-|x|)
        xp.add(e, 1, out=d)
        xp.reciprocal(d, out=d)
        xp.multiply(d, e, out=tmp)
        xp.copyto(d, tmp, where=x < 0)
        d -= t
        if valid is not None:
            d *= valid
        d *= self.lambda_over(top, n)
