"""Every loss and accuracy case recorded from real BVLC Caffe, in float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest

from tests.golden import case_names, replay

PREFIXES = (
    "swl_",
    "sce_",
    "euclidean",
    "hinge_",
    "contrastive",
    "infogain_",
    "multinomial_logistic",
    "accuracy_",
)
NAMES = [n for n in case_names() if n.startswith(PREFIXES)]


def test_every_loss_golden_is_listed():
    assert len(NAMES) == 29


@pytest.mark.parametrize("name", NAMES)
def test_golden_float32(name, xp):
    replay(name, xp=xp, dtype=np.float32, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_golden_float64(name):
    # Caffe ran in float32: its numbers carry float32 rounding, hence rtol 1e-5 here
    replay(name, dtype=np.float64, rtol=1e-5, atol=1e-6)
