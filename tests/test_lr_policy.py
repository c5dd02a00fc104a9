"""Learning-rate policies against their formulas and against Caffe's recorded rates."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from minicaffe.errors import SolverError
from minicaffe.proto import caffe_pb2
from minicaffe.prototxt import read_solver_param
from minicaffe.solver import learning_rate
from tests.test_solver_helpers import GOLDEN_CASES, GOLDENS, input_net


def sp(**fields) -> caffe_pb2.SolverParameter:
    p = caffe_pb2.SolverParameter(
        base_lr=0.1, **{k: v for k, v in fields.items() if k != "stepvalue"}
    )
    p.stepvalue.extend(fields.get("stepvalue", []))
    return p


def f32(x: float) -> float:
    return float(np.float32(x))


@pytest.mark.parametrize("it", [0, 1, 9, 10, 11, 25, 99])
def test_policies_match_formulas(it):
    base, gamma, power, stepsize, max_iter = f32(0.1), f32(0.9), f32(0.75), 10, 100
    cases = {
        "fixed": base,
        "step": base * gamma ** (it // stepsize),
        "exp": base * gamma**it,
        "inv": base * (1 + gamma * it) ** -power,
        "poly": base * (1 - it / max_iter) ** power,
        "sigmoid": base / (1 + math.exp(-gamma * (it - stepsize))),
    }
    for policy, want in cases.items():
        p = sp(lr_policy=policy, gamma=0.9, power=0.75, stepsize=stepsize, max_iter=max_iter)
        got, _ = learning_rate(p, it, 0)
        assert got == pytest.approx(want, rel=1e-6), policy
        assert got == f32(got)  # rounded to float32 like Caffe's Dtype rate


def test_step_sets_current_step():
    p = sp(lr_policy="step", gamma=0.5, stepsize=4)
    assert learning_rate(p, 9, 0) == (pytest.approx(0.1 * 0.25), 2)


def test_multistep_advances_one_step_per_call():
    p = sp(lr_policy="multistep", gamma=0.1, stepvalue=[2, 3, 4])
    step, rates = 0, []
    for it in range(6):
        rate, step = learning_rate(p, it, step)
        rates.append(rate)
    assert rates == pytest.approx([0.1, 0.1, 0.01, 1e-3, 1e-4, 1e-4])
    assert step == 3
    # resuming late with current_step 0 catches up one boundary per iteration, as Caffe does
    rate, step = learning_rate(p, 10, 0)
    assert step == 1 and rate == pytest.approx(0.01)


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_learning_rates(case):
    param = read_solver_param(os.path.join(GOLDENS, case, "solver.prototxt"))
    want = np.load(os.path.join(GOLDENS, case, "trajectory.npz"))["lr"]
    step, got = 0, []
    for it in range(len(want)):
        rate, step = learning_rate(param, it, step)
        got.append(rate)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({}, "lr_policy is not set"),
        ({"lr_policy": "cosine"}, "unknown lr_policy 'cosine'"),
        ({"lr_policy": "step"}, "stepsize > 0"),
        ({"lr_policy": "sigmoid", "gamma": 0.1}, "stepsize > 0"),
        ({"lr_policy": "exp", "gamma": -0.5}, "gamma >= 0"),
        ({"lr_policy": "poly", "power": 1.0}, "max_iter > 0"),
    ],
)
def test_bad_policies_are_solver_errors(fields, match):
    from minicaffe.solvers import SGDSolver

    p = sp(**fields)
    p.net_param.CopyFrom(input_net())
    with pytest.raises(SolverError, match=match):
        SGDSolver(p)


def test_unknown_policy_in_function():
    with pytest.raises(SolverError, match="known policies"):
        learning_rate(sp(lr_policy="nope"), 0)
