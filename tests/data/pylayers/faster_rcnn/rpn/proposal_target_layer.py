"""Stand-in for py-faster-rcnn's rpn.proposal_target_layer.ProposalTargetLayer (tests only).

Bottoms: rpn_rois (R, 5), gt_boxes (G, 5). Tops: rois (R + G, 5), labels (R + G,), and
bbox_targets / inside / outside weights (R + G, 4 K) for K classes.
"""

import caffe
import numpy as np
from _params import parse


class ProposalTargetLayer(caffe.Layer):
    def setup(self, bottom, top):
        self._num_classes = parse(self.param_str)["num_classes"]
        top[0].reshape(1, 5)
        top[1].reshape(1)
        for t in top[2:]:
            t.reshape(1, self._num_classes * 4)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        gt = bottom[1].data
        gt_rois = np.hstack([np.zeros((len(gt), 1), np.float32), gt[:, :4]])
        rois = np.vstack([bottom[0].data, gt_rois]).astype(np.float32)
        labels = np.zeros(len(rois), np.float32)
        labels[len(bottom[0].data):] = gt[:, 4]
        k = self._num_classes * 4
        targets = np.zeros((len(rois), k), np.float32)
        inside = np.zeros_like(targets)
        for i, c in enumerate(labels.astype(int)):
            if c > 0:
                inside[i, 4 * c:4 * c + 4] = 1.0
        for t, value in zip(top, (rois, labels, targets, inside, (inside > 0).astype(np.float32))):
            t.reshape(*value.shape)
            t.data[...] = value

    def backward(self, top, propagate_down, bottom):
        pass
