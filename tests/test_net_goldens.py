"""Whole nets recorded from real Caffe: LeNet, cifar10_quick, a ResNet block (forward values,
the loss, and the gradients of every blob and parameter), on NumPy and (when present) CuPy."""

from __future__ import annotations

import numpy as np
import pytest

from tests.golden import GOLDENS, case_names, replay


@pytest.mark.parametrize("name", case_names(kind="net"))
def test_net_golden(name, xp):
    replay(name, xp=xp, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("name", case_names(kind="net"))
def test_net_golden_from_caffemodel(name):
    """The recorded weights, loaded from Caffe's own .caffemodel, give Caffe's loss."""
    from minicaffe import TEST, Net

    z = np.load(GOLDENS / f"{name}.npz")
    net = Net(str(GOLDENS / f"{name}.prototxt"), TEST, weights=str(GOLDENS / f"{name}.caffemodel"))
    for key in z.files:
        if key.startswith("in::"):
            net.blobs[key[4:]].data[...] = z[key]
    loss = float(net.forward_prefilled())
    np.testing.assert_allclose(loss, float(z["loss"]), rtol=2e-4)
