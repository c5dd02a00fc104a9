"""Stand-in for py-faster-rcnn's rpn.proposal_layer.ProposalLayer (tests only).

Bottoms: rpn_cls_prob_reshape (1, 2A, h, w), rpn_bbox_pred, im_info. Top: rpn_rois (R, 5) =
(batch index, x1, y1, x2, y2): the R boxes with the highest foreground score, one per anchor
position, inside the image.
"""

import caffe
import numpy as np
from _params import parse

R = 8


class ProposalLayer(caffe.Layer):
    def setup(self, bottom, top):
        self._feat_stride = parse(self.param_str)["feat_stride"]
        top[0].reshape(1, 5)
        if len(top) > 1:
            top[1].reshape(1, 1, 1, 1)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        scores = bottom[0].data[:, bottom[0].data.shape[1] // 2:]
        im_h, im_w = bottom[2].data[0, :2]
        flat = scores.reshape(-1)
        order = np.argsort(-flat, kind="stable")[:R]
        h, w = scores.shape[-2:]
        ys, xs = (order // w) % h, order % w
        x1 = np.clip(xs * self._feat_stride, 0, im_w - 2)
        y1 = np.clip(ys * self._feat_stride, 0, im_h - 2)
        rois = np.zeros((len(order), 5), dtype=np.float32)
        rois[:, 1], rois[:, 2] = x1, y1
        rois[:, 3] = np.minimum(x1 + 16, im_w - 1)
        rois[:, 4] = np.minimum(y1 + 16, im_h - 1)
        top[0].reshape(*rois.shape)
        top[0].data[...] = rois

    def backward(self, top, propagate_down, bottom):
        pass
