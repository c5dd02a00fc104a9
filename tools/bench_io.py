"""Read/write speed of .caffemodel files: a 60M-parameter model (CaffeNet's size).

    python tools/bench_io.py [--params 60e6]

Prints the seconds to write the file, to read it (minicaffe.prototxt.read_caffemodel, blob
payloads as bytes), and, for reference, to parse the same bytes with plain protobuf and convert
every blob to NumPy element by element (what a straightforward reader does).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from minicaffe.proto import caffe_pb2
from minicaffe.prototxt import read_caffemodel, write_caffemodel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=60e6)
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()
    per = int(args.params) // args.layers
    net = caffe_pb2.NetParameter(name="bench")
    arrays = []
    rng = np.random.default_rng(0)
    for i in range(args.layers):
        net.layer.add(name=f"fc{i}", type="InnerProduct")
        arrays.append([rng.random(per, dtype=np.float32).reshape(-1, 1000)])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.caffemodel")
        t0 = time.perf_counter()
        write_caffemodel(path, net, arrays)
        t1 = time.perf_counter()
        model = read_caffemodel(path)
        t2 = time.perf_counter()
        msg = caffe_pb2.NetParameter()
        with open(path, "rb") as fh:
            msg.ParseFromString(fh.read())
        slow = [np.array(b.data, dtype=np.float32) for layer in msg.layer for b in layer.blobs]
        t3 = time.perf_counter()
        size = os.path.getsize(path) / 2**20
    assert sum(a.size for a in slow) == sum(b.data.size for _, bl in model.weights for b in bl)
    print(f"{args.params / 1e6:.0f}M parameters, {size:.0f} MiB")
    print(f"write (atomic)              {t1 - t0:6.2f} s")
    print(f"read  (minicaffe, as bytes) {t2 - t1:6.2f} s")
    print(
        f"read  (protobuf + per-element conversion, reference) {t3 - t2:6.2f} s  "
        f"ratio {(t3 - t2) / max(t2 - t1, 1e-9):.0f}x"
    )


if __name__ == "__main__":
    main()
