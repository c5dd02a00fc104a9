"""Python layers for the pycaffe example, written exactly as for BVLC Caffe's pycaffe.

ToyRegressionData: a data layer producing batches (x, y) with y = x . w_true + b_true + noise.
    param_str: "{'batch_size': 32, 'seed': 1}"
EuclideanLossLayer: loss = sum((pred - y)^2) / (2 N), with its gradient.
"""

import ast

import caffe
import numpy as np

W_TRUE = np.array([[0.5], [-1.0], [2.0], [0.25]], dtype=np.float32)
B_TRUE = 0.75


class ToyRegressionData(caffe.Layer):
    def setup(self, bottom, top):
        params = ast.literal_eval(self.param_str)
        self.batch_size = int(params["batch_size"])
        self.rng = np.random.RandomState(int(params.get("seed", 0)))
        if len(top) != 2:
            raise Exception("ToyRegressionData needs two tops: x and y.")

    def reshape(self, bottom, top):
        top[0].reshape(self.batch_size, W_TRUE.shape[0])
        top[1].reshape(self.batch_size, 1)

    def forward(self, bottom, top):
        x = self.rng.randn(self.batch_size, W_TRUE.shape[0]).astype(np.float32)
        noise = 0.01 * self.rng.randn(self.batch_size, 1).astype(np.float32)
        top[0].data[...] = x
        top[1].data[...] = x.dot(W_TRUE) + B_TRUE + noise

    def backward(self, top, propagate_down, bottom):
        pass


class EuclideanLossLayer(caffe.Layer):
    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff**2) / bottom[0].num / 2.0

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num
