"""Stand-in for py-faster-rcnn's roi_data_layer.layer.RoIDataLayer (tests only).

Tops: data (1, 3, H, W) made-up mean-subtracted image, im_info (1, 3) = (H, W, scale),
gt_boxes (G, 5) = (x1, y1, x2, y2, class). No dataset is read.
"""

import caffe
import numpy as np
from _params import parse

H, W = 64, 80


class RoIDataLayer(caffe.Layer):
    def setup(self, bottom, top):
        self._num_classes = parse(self.param_str)["num_classes"]
        self._rng = np.random.RandomState(3)
        self._name_to_top_map = {"data": 0, "im_info": 1, "gt_boxes": 2}
        top[0].reshape(1, 3, H, W)
        top[1].reshape(1, 3)
        top[2].reshape(1, 5)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        boxes = np.array([[4, 6, 30, 40, 3], [20, 10, 70, 60, 15]], dtype=np.float32)
        blobs = {"data": self._rng.randn(1, 3, H, W).astype(np.float32),
                 "im_info": np.array([[H, W, 1.0]], dtype=np.float32),
                 "gt_boxes": boxes}
        for name, i in self._name_to_top_map.items():
            top[i].reshape(*blobs[name].shape)
            top[i].data[...] = blobs[name]

    def backward(self, top, propagate_down, bottom):
        pass
