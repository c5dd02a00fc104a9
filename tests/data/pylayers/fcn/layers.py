"""Stand-ins for FCN's data layers (module "layers" of fcn.berkeleyvision.org), for tests.

Same names, tops and param_str as the originals, but images are made up: each forward yields a
1 x 3 x H x W mean-subtracted BGR image and a 1 x 1 x H x W label map with classes 0..20 and
some 255 (ignored) pixels. H x W alternates between two sizes, as real images differ in size,
so the net reshapes on every pass. No dataset is read.
"""

import ast

import caffe
import numpy as np

SIZES = [(40, 48), (36, 44)]


class _SegDataLayer(caffe.Layer):
    def setup(self, bottom, top):
        params = ast.literal_eval(self.param_str)
        self.mean = np.array(params["mean"], dtype=np.float32)
        self.split = params["split"]
        self.random = params.get("randomize", True)
        self.rng = np.random.RandomState(params.get("seed", None))
        self.count = 0
        if len(top) != 2:
            raise Exception("Need to define two tops: data and label.")
        if len(bottom) != 0:
            raise Exception("Do not define a bottom.")

    def reshape(self, bottom, top):
        h, w = SIZES[self.count % len(SIZES)]
        self.data = self.rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
        self.data = (self.data - self.mean).transpose((2, 0, 1))[np.newaxis]
        label = self.rng.randint(0, 21, (h, w)).astype(np.uint8)
        label[: h // 8] = 255
        self.label = label[np.newaxis, np.newaxis]
        top[0].reshape(1, *self.data.shape[1:])
        top[1].reshape(1, *self.label.shape[1:])

    def forward(self, bottom, top):
        top[0].data[...] = self.data
        top[1].data[...] = self.label
        self.count += 1

    def backward(self, top, propagate_down, bottom):
        pass


class VOCSegDataLayer(_SegDataLayer):
    pass


class SBDDSegDataLayer(_SegDataLayer):
    pass
