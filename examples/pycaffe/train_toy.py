"""A pycaffe script: NetSpec net with Python layers, SGD training, deploy, draw.

Written for BVLC Caffe's pycaffe; runs unchanged on minicaffe with
    python -m minicaffe.run examples/pycaffe/train_toy.py [--out DIR] [--iters N]
"""

import argparse
import os
import sys
import tempfile

import caffe
import numpy as np
import toy_layers  # beside this script; the script's folder is on sys.path
from caffe import layers as L
from caffe.proto import caffe_pb2


def train_net(batch_size):
    n = caffe.NetSpec()
    n.x, n.y = L.Python(
        module="toy_layers",
        layer="ToyRegressionData",
        ntop=2,
        param_str=str(dict(batch_size=batch_size, seed=1)),
    )
    n.pred = L.InnerProduct(
        n.x,
        num_output=1,
        weight_filler=dict(type="gaussian", std=0.1),
        bias_filler=dict(type="constant", value=0),
    )
    n.loss = L.Python(n.pred, n.y, module="toy_layers", layer="EuclideanLossLayer", loss_weight=1)
    return n.to_proto()


def deploy_net(batch_size):
    n = caffe.NetSpec()
    n.x = L.Input(shape=dict(dim=[batch_size, 4]))
    n.pred = L.InnerProduct(n.x, num_output=1)
    return n.to_proto()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None, help="folder for prototxts and weights")
    parser.add_argument("--iters", type=int, default=300)
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="pycaffe-example-")
    if not os.path.isdir(out):
        os.makedirs(out)

    caffe.set_mode_cpu()
    caffe.set_random_seed(0)

    train_path = os.path.join(out, "train.prototxt")
    deploy_path = os.path.join(out, "deploy.prototxt")
    with open(train_path, "w") as f:
        f.write(str(train_net(32)))
    with open(deploy_path, "w") as f:
        f.write(str(deploy_net(8)))

    solver_param = caffe_pb2.SolverParameter()
    solver_param.train_net = train_path
    solver_param.base_lr = 0.05
    solver_param.momentum = 0.9
    solver_param.lr_policy = "fixed"
    solver_param.max_iter = args.iters
    solver_param.display = 0
    solver_param.snapshot_prefix = os.path.join(out, "toy")
    solver_path = os.path.join(out, "solver.prototxt")
    with open(solver_path, "w") as f:
        f.write(str(solver_param))

    solver = caffe.SGDSolver(solver_path)
    net = solver.net
    print("layers:", [(name, layer.type) for name, layer in zip(net._layer_names, net.layers)])
    print("blobs:", [(name, blob.data.shape) for name, blob in net.blobs.items()])

    losses = []
    for _ in range(args.iters // 50):
        solver.step(50)
        losses.append(float(net.blobs["loss"].data.ravel()[0]))
        print(f"iter {solver.iter:4d}  loss {losses[-1]:.6f}")

    weights_path = os.path.join(out, "toy.caffemodel")
    net.save(weights_path)

    deploy = caffe.Net(deploy_path, caffe.TEST, weights=weights_path)
    w = deploy.params["pred"][0].data.ravel()
    b = float(deploy.params["pred"][1].data[0])
    print("learned w", np.round(w, 3), f"b {b:.3f}")
    print("true    w", toy_layers.W_TRUE.ravel(), f"b {toy_layers.B_TRUE:.3f}")

    x = np.random.RandomState(3).randn(13, 4).astype(np.float32)  # any N: forward_all batches
    pred = deploy.forward_all(x=x)["pred"]
    err = np.abs(pred - (x.dot(toy_layers.W_TRUE) + toy_layers.B_TRUE)).max()
    print(f"max |prediction error| on 13 new points: {err:.4f}")

    caffe.draw.draw_net_to_file(train_net(32), os.path.join(out, "train.dot"), "LR")
    print("wrote", out)
    if not losses[-1] < losses[0] or err > 0.1:
        sys.exit("training did not converge")


if __name__ == "__main__":
    main()
