"""Accuracy: the fraction of positions whose true class is among the top_k scores, as Caffe."""

from __future__ import annotations

import numpy as np

from minicaffe.errors import ShapeError
from minicaffe.layer import Layer
from minicaffe.losses import check_label_count, class_layout, ignore_label_of, read_labels
from minicaffe.registry import register_layer


@register_layer("Accuracy")
class AccuracyLayer(Layer):
    """accuracy = #correct / #valid positions (0 when none is valid).

    x is viewed as (O, C, I) around accuracy_param.axis; a valid position is correct when at
    most top_k classes score >= the true class (the true class included), so ties count
    against the true class.

    Params (accuracy_param): top_k = 1 (<= C), axis = 1, ignore_label (unset: none).
    Bottoms: x, label (O*I values in [0, C) or the ignore label).
    Tops: accuracy (scalar); optional per-class accuracy (C,): correct_c / count_c, 0 when a
    class has no valid position. No gradient.
    """

    exact_num_bottom_blobs = 2
    min_top_blobs, max_top_blobs = 1, 2

    def setup(self, bottom, top):
        p = self.layer_param.accuracy_param
        self.top_k = int(p.top_k)
        self.ignore_label = ignore_label_of(p)

    def reshape(self, bottom, top):
        x_shape = bottom[0].shape
        a, O, C, I = class_layout(self, x_shape, self.layer_param.accuracy_param.axis)
        if self.top_k > C or self.top_k < 1:
            raise self.error(
                f"top_k must be between 1 and the number of classes ({C}); received {self.top_k}",
                ShapeError,
            )
        check_label_count(self, x_shape, bottom[1].shape, a, O, I)
        self.O, self.C, self.I = O, C, I
        top[0].reshape(())
        if len(top) == 2:
            top[1].reshape((C,))

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def forward(self, bottom, top):
        xp, O, C, I = self.xp, self.O, self.C, self.I
        labels = read_labels(self, bottom[1].data, C, self.ignore_label)
        x3 = bottom[0].data.reshape(O, C, I)
        idx = (
            xp.arange(O, dtype=np.intp)[:, None] * (C * I) + xp.arange(I, dtype=np.intp)
        ).reshape(-1) + labels.y * I
        true_score = xp.take(x3.reshape(-1), idx).reshape(O, 1, I)
        better = (x3 >= true_score).sum(axis=1).reshape(-1)  # the true class counts itself
        correct = better <= self.top_k
        if labels.valid is not None:
            correct &= labels.valid
        count = labels.count if xp is np else xp.asarray(labels.count)
        top[0].data[...] = correct.sum() / xp.maximum(count, 1)
        if len(top) == 2:
            weights = None if labels.valid is None else labels.valid.astype(self.dtype)
            per_class = xp.bincount(labels.y, weights=weights, minlength=C)
            hits = xp.bincount(labels.y, weights=correct.astype(self.dtype), minlength=C)
            top[1].data[...] = xp.where(per_class > 0, hits / xp.maximum(per_class, 1), 0)

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise self.error("Accuracy has no gradient; set propagate_down: false for its bottoms")
