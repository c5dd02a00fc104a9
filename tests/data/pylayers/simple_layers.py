"""Small Python layers exercising pycaffe's Python-layer contract (for tests/test_pycaffe_*.py).

They import ``caffe`` as pycaffe users' modules do; minicaffe's alias provides it.
"""

import caffe
import numpy as np


class TimesTen(caffe.Layer):
    """y = 10 x; dx = 10 dy."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff


class RaisesInSetup(caffe.Layer):
    def setup(self, bottom, top):
        raise RuntimeError("this layer refuses to set up")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        pass


class ParamStrValue(caffe.Layer):
    """Writes float(param_str) into its top (one value per bottom item)."""

    def setup(self, bottom, top):
        self.value = float(self.param_str)

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].num, 1)

    def forward(self, bottom, top):
        top[0].data[...] = self.value

    def backward(self, top, propagate_down, bottom):
        pass


class PhaseLayer(caffe.Layer):
    """A scalar top holding the layer's phase (caffe.TRAIN = 0, caffe.TEST = 1)."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape()

    def forward(self, bottom, top):
        top[0].data[...] = self.phase


class ScaleByParam(caffe.Layer):
    """y = w * x with one learnable scalar w (created with self.blobs.add_blob(1))."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = float(self.param_str or 1.0)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += np.sum(top[0].diff * bottom[0].data)
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff


class ShapeReport(caffe.Layer):
    """Records the pycaffe blob attributes it sees (num/channels/height/width/count/shape)."""

    seen = {}

    def setup(self, bottom, top):
        b = bottom[0]
        ShapeReport.seen = dict(num=b.num, channels=b.channels, height=b.height, width=b.width,
                                count=b.count, shape=tuple(b.shape), is_numpy=isinstance(
                                    b.data, np.ndarray))

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data


class NoForward(caffe.Layer):
    def reshape(self, bottom, top):
        pass


class NoBackward(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data


class NotALayer:
    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass
