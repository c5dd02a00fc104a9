"""Stand-in for py-faster-rcnn's rpn.anchor_target_layer.AnchorTargetLayer (tests only).

Bottoms: rpn_cls_score (1, 2A, h, w), gt_boxes, im_info, data. Tops: rpn_labels
(1, 1, A h, w) in {-1, 0, 1}, and bbox targets / inside / outside weights (1, 4A, h, w).
"""

import caffe
import numpy as np
from _params import parse

A = 9


class AnchorTargetLayer(caffe.Layer):
    def setup(self, bottom, top):
        self._feat_stride = parse(self.param_str)["feat_stride"]
        self._rng = np.random.RandomState(5)
        h, w = bottom[0].data.shape[-2:]
        top[0].reshape(1, 1, A * h, w)
        for t in top[1:]:
            t.reshape(1, A * 4, h, w)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        h, w = bottom[0].data.shape[-2:]
        labels = self._rng.randint(-1, 2, (1, 1, A * h, w)).astype(np.float32)
        top[0].reshape(*labels.shape)
        top[0].data[...] = labels
        for t, value in zip(top[1:], (0.1, 1.0, 1.0 / max(1, h * w))):
            t.reshape(1, A * 4, h, w)
            t.data[...] = value

    def backward(self, top, propagate_down, bottom):
        pass
