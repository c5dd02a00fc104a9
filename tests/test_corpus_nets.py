"""Every net of the corpus made of BVLC layer types builds and runs forward and backward.

Data layers (Data, ImageData, HDF5Data, WindowData, MemoryData, Python layers without bottoms)
become Input layers of the shapes their sources imply, with the batch cut to 1-2. Parameters are
drawn at random (He-scaled gaussians; BatchNorm statistics kept valid), inputs are uniform in
[0, 1) and labels are 0 or 1 (valid for every loss and accuracy layer of the corpus).

* Nets with a loss run in TRAIN: forward, then backward from the loss.
* Nets without one (deploy files) run in TEST with force_backward and random output diffs.
* Nets with TRAIN/TEST rules also run their TEST net forward (Accuracy and the test data path).

Python layers run when the project ships a stand-in for their module in tests/data/pylayers
(imported with the ``caffe`` alias installed, as pycaffe modules expect).

Recurrent nets (LRCN) keep their (T, N) sequence layout consistent with the cut batch
(:func:`_sequence_shapes`). Nets that need fork-only types (the CTC branch's CRNN) or Python
layers whose modules are not shipped are listed with their reason and skipped.
``python tests/test_corpus_nets.py`` prints the same accounting as a table.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from minicaffe import Net, layer_type_list
from minicaffe.proto import caffe_pb2 as pb
from minicaffe.upgrade import upgrade_net

CORPUS = Path(__file__).parent / "data" / "corpus"
PYLAYERS = Path(__file__).parent / "data" / "pylayers"
NETS = sorted(f for f in CORPUS.rglob("*.prototxt") if "solver" not in f.name)

# The 61 types BVLC Caffe registers (master 9b89154).
BVLC_TYPES = set(
    "AbsVal Accuracy ArgMax BatchNorm BatchReindex Bias BNLL Clip Concat ContrastiveLoss "
    "Convolution Crop Data Deconvolution Dropout DummyData ELU Eltwise Embed EuclideanLoss Exp "
    "Filter Flatten HDF5Data HDF5Output HingeLoss Im2col ImageData InfogainLoss InnerProduct Input "
    "Log LRN LSTM LSTMUnit MemoryData MultinomialLogisticLoss MVN Parameter Pooling Power PReLU "
    "Python Reduction ReLU Reshape RNN Scale Sigmoid SigmoidCrossEntropyLoss Silence Slice Softmax "
    "SoftmaxWithLoss Split SPP Swish TanH Threshold Tile WindowData".split()
)
RECURRENT = {"LSTM", "RNN", "LSTMUnit"}
DATA_TYPES = {"Data", "ImageData", "HDF5Data", "WindowData", "MemoryData"}
LABEL_TOPS = {"label", "sim"}
BIG_SIDE = 200  # inputs at least this wide (ImageNet nets) run with batch 1, else 2
# ImageNet-size nets are marked slow, except one GoogLeNet (Concat-heavy) kept in the quick run.
QUICK_BIG = {"BVLC__caffe/models/bvlc_googlenet/deploy.prototxt"}


def _id(path: Path) -> str:
    return str(path.relative_to(CORPUS))


def load(path: Path):
    param = text_format.Merge(path.read_text(), pb.NetParameter())
    out, _ = upgrade_net(param, str(path))
    return out


def _is_data_layer(layer) -> bool:
    return layer.type in DATA_TYPES or (layer.type == "Python" and not layer.bottom)


def out_of_scope(param) -> str | None:
    """Why a net cannot run with the layers of issue 4 (None when it can)."""
    types = {layer.type for layer in param.layer if not _is_data_layer(layer)}
    reasons = []
    fork = sorted(types - BVLC_TYPES)
    if fork:
        reasons.append(f"types no BVLC release registers: {', '.join(fork)}")
    python = [
        f"{lp.name} ({lp.python_param.module}.{lp.python_param.layer})"
        for lp in param.layer
        if lp.type == "Python"
        and lp.bottom  # (data layers become Input layers here)
        and not (PYLAYERS / f"{lp.python_param.module}.py").is_file()
    ]
    if python:
        reasons.append(f"Python layers whose modules are not shipped: {', '.join(python)}")
    return "; ".join(reasons) or None


def _sample_shape(layer) -> tuple[int, ...]:
    """(C, H, W) (or feature shape) of one item of a data layer's first top."""
    crop = layer.transform_param.crop_size
    if layer.type == "Data":
        src = layer.data_param.source.lower()
        if "siamese" in src:
            return (2, 28, 28)  # image pairs, split in two by a Slice layer
        if "mnist" in src:
            return (1, 28, 28)
        if "cifar" in src:
            return (3, 32, 32)
        if crop:
            return (3, crop, crop)
    elif layer.type == "ImageData":
        p = layer.image_data_param
        c = 3 if p.is_color else 1
        if crop:
            return (c, crop, crop)
        if p.new_height and p.new_width:
            return (c, p.new_height, p.new_width)
    elif layer.type == "WindowData" and crop:
        return (3, crop, crop)
    elif layer.type == "HDF5Data" and "hdf5_classification" in layer.hdf5_data_param.source:
        return (4,)  # the example's 4 features per item
    elif layer.type == "Python" and layer.python_param.module == "sequence_input_layer":
        return (3, 227, 227)  # LRCN's video frames (clip markers: see _sequence_shapes)
    elif layer.type == "HDF5Data" and "coco_caption" in layer.hdf5_data_param.source:
        return ()  # word streams: (T, N) per top, set by _sequence_shapes
    elif layer.type == "MemoryData":
        p = layer.memory_data_param
        return (p.channels, p.height, p.width)
    raise ValueError(f"no known item shape for data layer '{layer.name}' ({layer.type})")


def _batch_for(item_shape) -> int:
    return 1 if len(item_shape) >= 2 and max(item_shape[-2:]) >= BIG_SIDE else 2


SEQUENCE_T = 3  # time steps of the recurrent nets' word streams in these runs


def _sequence_shapes(out) -> None:
    """Recurrent nets keep their (T, N) layout consistent with the cut batch: word streams
    become (SEQUENCE_T, N) with N the image batch (or 2), an LSTM's static image features
    (N, D), and the LRCN video nets' 16 x N frames (T x N, folded by Reshape layers) 2 x 1."""
    images = [
        s.dim[0] for lp in out.layer if lp.type == "Input" for s in lp.input_param.shape
        if len(s.dim) == 4 and lp.top and lp.top[0] == "data"
    ]
    n = images[0] if images else 2
    for lp in out.layer:
        if lp.type == "Input":
            for top, shape in zip(lp.top, lp.input_param.shape, strict=False):
                if "sentence" in top:
                    del shape.dim[:]
                    shape.dim.extend([SEQUENCE_T, n])
                elif top == "image_features":
                    shape.dim[0] = n
                elif top == "clip_markers":
                    del shape.dim[1:]  # one marker per frame
                    shape.dim[0] = 2
                elif "clip_markers" in lp.top:
                    shape.dim[0] = 2  # 16 frames x 10 (or 24, or 3) clips in the original
        elif lp.type == "Reshape" and list(lp.reshape_param.shape.dim[:1]) == [16]:
            lp.reshape_param.shape.dim[0], lp.reshape_param.shape.dim[1] = 2, 1


def with_inputs(param):
    """A copy of ``param`` whose data layers are Input layers and whose batches are 1-2."""
    out = pb.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for layer in param.layer:
        if _is_data_layer(layer):
            item = _sample_shape(layer)
            batch = _batch_for(item)
            new = pb.LayerParameter(name=layer.name, type="Input", top=layer.top)
            new.include.extend(layer.include)
            new.exclude.extend(layer.exclude)
            for top in layer.top:
                dims = (batch,) if top in LABEL_TOPS else (batch, *item)
                if not item:
                    dims = (SEQUENCE_T, batch)
                new.input_param.shape.add().dim.extend(dims)
            out.layer.append(new)
            continue
        new = out.layer.add()
        new.CopyFrom(layer)
        if layer.type == "Input":
            for shape in new.input_param.shape:
                if shape.dim:
                    shape.dim[0] = min(shape.dim[0], _batch_for(tuple(shape.dim[1:])))
    if any(lp.type in RECURRENT for lp in out.layer):
        _sequence_shapes(out)
    return out


def has_loss(param) -> bool:
    return any(layer.type.endswith("Loss") or any(layer.loss_weight) for layer in param.layer)


def _phases(param) -> set[int]:
    return {r.phase for layer in param.layer for r in layer.include if r.HasField("phase")}


# Nets whose layers need several stages at once (as their solvers set them).
STAGES = {
    "lrcn_caffenet_to_lstm": {
        pb.TRAIN: ["factored", "2-layer"],
        pb.TEST: ["factored", "2-layer", "test-on-val"],
    },
}


def _stages(param, phase: int) -> list[str]:
    if param.name in STAGES:
        return STAGES[param.name][phase]
    for layer in param.layer:
        for rule in layer.include:
            if rule.HasField("phase") and rule.phase == phase and rule.stage:
                return [rule.stage[0]]
    return []


def randomize(net, rng) -> None:
    for layer in net.layers:
        for i, blob in enumerate(layer.blobs):
            shape = blob.shape
            if layer.type == "BatchNorm":
                values = (
                    rng.standard_normal(shape) * 0.1,
                    rng.uniform(0.5, 1.5, shape),
                    np.ones(shape),
                )[i]
            else:
                fan_in = blob.count // shape[0] if len(shape) > 1 else 50
                values = rng.standard_normal(shape, dtype=np.float32) * math.sqrt(2.0 / fan_in)
            blob.data[...] = values
    for name in net.inputs:
        blob = net.blobs[name]
        if name in LABEL_TOPS or name.endswith("label"):
            blob.data[...] = rng.integers(0, 2, blob.shape)
        else:
            blob.data[...] = rng.random(blob.shape, dtype=np.float32)


def _finite(array) -> bool:
    return bool(np.isfinite(np.asarray(array)).all())


@contextlib.contextmanager
def python_layer_modules():
    """tests/data/pylayers importable, and ``import caffe`` giving minicaffe, for the duration."""
    from minicaffe.compat import install_caffe_alias, is_installed, uninstall_caffe_alias

    had_alias = is_installed()
    if "caffe" not in sys.modules or had_alias:
        install_caffe_alias()
    sys.path.insert(0, str(PYLAYERS))
    try:
        yield
    finally:
        sys.path.remove(str(PYLAYERS))
        if not had_alias:
            uninstall_caffe_alias()


def run_net(path: Path, *, verbose: bool = False) -> str:
    """Build, forward and backward one corpus net; returns a one-line account of what ran."""
    with python_layer_modules():
        return _run_net(path, verbose)


def _run_net(path: Path, verbose: bool) -> str:
    from minicaffe.summary import net_summary

    rng = np.random.default_rng(0)
    param = with_inputs(load(path))
    train = has_loss(param)
    if not train:
        param.force_backward = True
    phase = pb.TRAIN if train else pb.TEST
    net = Net(param, phase=phase, stages=_stages(param, phase))
    summary = net_summary(net)
    if verbose:
        print(f"\n{_id(path)} ({pb.Phase.Name(phase)})\n{summary}")
    assert all(layer.name in summary for layer in net.layers)
    randomize(net, rng)
    loss = net.forward_prefilled()
    assert _finite(loss), f"{_id(path)}: loss {loss}"
    for name, blob in net.blobs.items():
        assert _finite(blob.data), f"{_id(path)}: blob '{name}' has non-finite values"
    net.clear_param_diffs()
    if not train:
        for name in net.outputs:
            net.blobs[name].diff[...] = rng.standard_normal(net.blobs[name].shape)
    net.backward_from_to()
    with_grad = [
        (layer, blob)
        for layer in net.layers
        for blob, need in zip(layer.blobs, layer.param_propagate_down, strict=False)
        if need
    ]
    assert with_grad, f"{_id(path)}: no parameter takes a gradient"
    for layer, blob in with_grad:
        assert _finite(blob.diff), f"{_id(path)}: non-finite gradient in '{layer.name}'"
    first_layer, first = with_grad[0]
    assert np.any(np.asarray(first.diff) != 0), (
        f"{_id(path)}: the gradient never reached the first layer '{first_layer.name}'"
    )
    account = (
        f"{pb.Phase.Name(phase)} forward+backward ({len(net.layers)} layers, loss "
        f"{float(loss):.4g})"
    )
    if train and pb.TEST in _phases(param):
        test = Net(param, phase=pb.TEST, stages=_stages(param, pb.TEST))
        randomize(test, rng)
        test.forward_prefilled()
        for name in test.outputs:
            assert _finite(test.blobs[name].data), f"{_id(path)}: TEST output '{name}'"
        account += f"; TEST forward ({len(test.layers)} layers)"
    return account


def _case(path: Path):
    param = load(path)
    marks = []
    reason = out_of_scope(param)
    if reason is None:
        shapes = [
            s
            for layer in with_inputs(param).layer
            if layer.type == "Input"
            for s in layer.input_param.shape
        ]
        big = any(len(s.dim) >= 4 and max(s.dim[-2:]) >= BIG_SIDE for s in shapes)
        if big and _id(path) not in QUICK_BIG:
            marks.append(pytest.mark.slow)
    return pytest.param(path, reason, id=_id(path), marks=marks)


CASES = [_case(p) for p in NETS]


@pytest.mark.parametrize("path,reason", CASES)
def test_corpus_net_runs(path, reason):
    if reason is not None:
        pytest.skip(f"out of scope: {reason}")
    param = with_inputs(load(path))
    missing = sorted({layer.type for layer in param.layer} - set(layer_type_list()))
    if missing:
        pytest.skip(f"layer types not registered yet: {', '.join(missing)}")
    print(run_net(path, verbose=True))


def test_scope_accounting():
    in_scope = [c for c in CASES if c.values[1] is None]
    out = {_id(c.values[0]): c.values[1] for c in CASES if c.values[1] is not None}
    print(f"\ncorpus nets: {len(NETS)}; in scope: {len(in_scope)}; out of scope: {len(out)}")
    for name, reason in out.items():
        print(f"  {name}: {reason}")
    assert len(NETS) == 46
    # Only the CTC branch's CRNN, made of fork-only types; everything else is BVLC layers
    # (the LRCN nets included: LSTM, RNN and LSTMUnit are implemented).
    assert len(out) == 1
    assert all(re.search(r"no BVLC", r) for r in out.values())


def test_data_layers_become_inputs():
    param = with_inputs(load(CORPUS / "BVLC__caffe/models/bvlc_alexnet/train_val.prototxt"))
    data = [layer for layer in param.layer if layer.name == "data"]
    assert [layer.type for layer in data] == ["Input", "Input"]
    assert [list(s.dim) for s in data[0].input_param.shape] == [[1, 3, 227, 227], [1]]
    assert data[0].include[0].phase == pb.TRAIN and data[1].include[0].phase == pb.TEST
    param = with_inputs(load(CORPUS / "BVLC__caffe/examples/siamese/mnist_siamese.prototxt"))
    assert list(param.layer[0].input_param.shape[0].dim) == [2, 1, 28, 28]


if __name__ == "__main__":
    import time

    ok = 0
    for case in CASES:
        path, reason = case.values
        start = time.perf_counter()
        try:
            if reason:
                raise RuntimeError(f"out of scope: {reason}")
            status = run_net(path)
            ok += 1
        except Exception as exc:  # report every net, whatever happens
            status = f"FAILED {type(exc).__name__}: {str(exc)[:300]}"
        print(f"{_id(path)} [{time.perf_counter() - start:.1f} s]: {status}", flush=True)
    print(f"{ok} of {len(NETS)} corpus nets build and run forward and backward")
