"""The examples: data preparation and converters (values), nets that build, a light training run
of the digits example (the full run, >= 98.5 % test accuracy, is marked slow)."""

from __future__ import annotations

import gzip
import importlib.util
import re
import sys
from pathlib import Path

import h5py
import lmdb
import numpy as np
import pytest

from minicaffe.cli import main as minicaffe_main
from minicaffe.proto import caffe_pb2

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _load(path: Path):
    """Import an example script as a module (the examples are not a package)."""
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(
            f"example_{path.parent.name}_{path.stem}", path
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(path.parent))


def _retarget(text: str, mapping: dict[str, str]) -> str:
    for old, new in mapping.items():
        text = text.replace(old, new)
    return text


# ----------------------------------------------------------------------------------- digits


def test_digits_prepare_values(tmp_path):
    prep = _load(EXAMPLES / "digits" / "prepare.py")
    info = prep.prepare(tmp_path)
    assert info["prepared"] and (info["train"], info["test"]) == (1437, 360)
    with h5py.File(tmp_path / "train.h5", "r") as f:
        data, label = f["data"][...], f["label"][...]
    assert data.shape == (1437, 1, 28, 28) and data.dtype == np.float32
    assert data.min() == 0 and data.max() < 1
    np.testing.assert_array_equal(data * 256, np.rint(data * 256))  # grey levels / 256, as MNIST
    assert np.all(data[:, :, :4] == 0) and np.all(data[:, :, :, 24:] == 0)  # 20x20 box, centred
    assert sorted(np.unique(label)) == list(range(10))
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, target = prep.load_digits()  # the CSV scikit-learn ships, read without sklearn
    np.testing.assert_array_equal(images, digits.images)
    np.testing.assert_array_equal(target, digits.target)
    order = np.random.default_rng(prep.SPLIT_SEED).permutation(len(digits.target))
    np.testing.assert_array_equal(label, digits.target[order[360:]])
    np.testing.assert_array_equal(data, prep.digits_as_mnist(digits.images)[order[360:]])
    # a constant 8x8 image stays constant inside its box; the scale maps 16 -> 255/256
    flat = prep.digits_as_mnist(np.full((1, 8, 8), 16.0))
    np.testing.assert_array_equal(flat[0, 0, 4:24, 4:24], np.float32(255 / 256))
    assert (tmp_path / "train.txt").read_text().strip() == str((tmp_path / "train.h5").resolve())
    assert not prep.prepare(tmp_path)["prepared"]  # found: not rebuilt


def _digits_quick_files(tmp_path, iters: int, batch: int):
    prep = _load(EXAMPLES / "digits" / "prepare.py")
    prep.prepare(tmp_path / "data", n_train=160, n_test=40)
    net = _retarget(
        (EXAMPLES / "digits" / "lenet_train_test.prototxt").read_text(),
        {
            "examples/digits/data/": f"{tmp_path}/data/",
            "batch_size: 64": f"batch_size: {batch}",
            "batch_size: 120": "batch_size: 40",
        },
    )
    (tmp_path / "net.prototxt").write_text(net)
    solver = (EXAMPLES / "digits" / "lenet_solver.prototxt").read_text()
    solver = _retarget(
        solver,
        {
            "examples/digits/lenet_train_test.prototxt": f"{tmp_path}/net.prototxt",
            "examples/digits/snapshots/lenet": f"{tmp_path}/lenet",
            "max_iter: 500": f"max_iter: {iters}",
            "test_iter: 3": "test_iter: 1",
            "display: 100": "display: 1",
        },
    )
    (tmp_path / "solver.prototxt").write_text(solver)
    return prep


def test_digits_quick_training_through_the_cli(tmp_path, monkeypatch):
    """The digits example's own files, retargeted to a data subset: 12 iterations learn."""
    _digits_quick_files(tmp_path, iters=12, batch=16)
    monkeypatch.chdir(tmp_path)
    rc = minicaffe_main(
        [
            "train",
            "--solver",
            str(tmp_path / "solver.prototxt"),
            "--no-progress",
            "--log",
            str(tmp_path / "train.log"),
        ]
    )
    assert rc == 0
    assert (tmp_path / "lenet_iter_12.caffemodel").exists()
    log = (tmp_path / "train.log").read_text()
    losses = [float(v) for v in re.findall(r"Iteration \d+ .*loss = ([\d.eE+-]+)", log)]
    assert len(losses) >= 10 and np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < np.mean(losses[:3])  # learning, not just running
    run = _load(EXAMPLES / "digits" / "run.py")
    correct, total = run.score(str(tmp_path / "lenet_iter_12.caffemodel"), tmp_path / "data")
    assert total == 40 and correct > 8  # better than chance (4) after a dozen steps


@pytest.mark.slow
def test_digits_full_run_reaches_98_5_percent(tmp_path, monkeypatch, capsys):
    """The README's main job: python examples/digits/run.py (data prepared if missing)."""
    monkeypatch.chdir(tmp_path)  # run.py works from any directory
    run = _load(EXAMPLES / "digits" / "run.py")
    assert run.main(["--", "--no-progress"]) == 0
    out = capsys.readouterr().out
    accuracy = float(re.search(r"test accuracy of .*: ([\d.]+)%", out).group(1))
    assert accuracy >= 98.5, out


def test_digits_deploy_net_loads_the_trained_layout(tmp_path):
    import minicaffe

    net = minicaffe.Net(str(EXAMPLES / "digits" / "lenet.prototxt"), phase="TEST")
    prob = net.forward(data=np.zeros((2, 1, 28, 28), np.float32))["prob"]
    assert prob.shape == (2, 10)
    np.testing.assert_allclose(np.asarray(prob).sum(axis=1), 1, rtol=1e-5)
    assert [n for n in net.params] == ["conv1", "conv2", "ip1", "ip2"]


# ------------------------------------------------------------------------------------ mnist


def _write_idx(path: Path, array: np.ndarray, magic: int, compress: bool) -> None:
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def test_mnist_converter_lmdb_and_hdf5(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    src = tmp_path / "mnist"
    src.mkdir()
    sets = {}
    for prefix, n, gz in (("train", 7, True), ("t10k", 5, False)):
        images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        _write_idx(src / f"{prefix}-images-idx3-ubyte", images, 2051, gz)
        _write_idx(src / f"{prefix}-labels-idx1-ubyte", labels, 2049, gz)
        sets[prefix] = (images, labels)
    conv = _load(EXAMPLES / "mnist" / "convert_mnist.py")
    assert conv.main([str(src), "--out-dir", str(tmp_path)]) == 0
    assert conv.main([str(src), "--format", "hdf5", "--out-dir", str(tmp_path)]) == 0
    env = lmdb.open(str(tmp_path / "mnist_train_lmdb"), readonly=True, lock=False)
    with env.begin() as txn:
        records = list(txn.cursor())
    env.close()
    assert [k for k, _ in records] == [b"%08d" % i for i in range(7)]
    d = caffe_pb2.Datum.FromString(records[3][1])
    assert (d.channels, d.height, d.width, d.label) == (1, 28, 28, sets["train"][1][3])
    assert d.data == sets["train"][0][3].tobytes()
    # the example's own net reads both forms
    monkeypatch.chdir(tmp_path)
    import minicaffe

    for name, batch in (("lenet_train_test.prototxt", 64), ("lenet_train_test_hdf5.prototxt", 64)):
        text = _retarget(
            (EXAMPLES / "mnist" / name).read_text(),
            {"examples/mnist/": f"{tmp_path}/", "batch_size: 100": "batch_size: 5"},
        )
        net = minicaffe.Net(text, phase="TEST")
        net.forward()
        np.testing.assert_allclose(
            net.blobs["data"].data[:, 0], sets["t10k"][0] * np.float32(0.00390625)
        )
        np.testing.assert_array_equal(net.blobs["label"].data, sets["t10k"][1])
        assert net.blobs["ip2"].data.shape == (5, 10) and batch == 64
    (src / "t10k-images-idx3-ubyte").write_bytes(b"\0\0\x08\x01" + b"\0" * 12)
    with pytest.raises(SystemExit, match="not an MNIST idx file"):
        conv.load_split(src, "test")


# ---------------------------------------------------------------------------------- cifar10


def test_cifar10_converter_binary_batches(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    src = tmp_path / "bin"
    src.mkdir()
    all_images = []
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, 2).astype(np.uint8)
        images = rng.integers(0, 256, (2, 3, 32, 32)).astype(np.uint8)
        rec = np.concatenate([labels[:, None], images.reshape(2, -1)], axis=1)
        rec.tofile(src / name)
        all_images.append((images, labels))
    conv = _load(EXAMPLES / "cifar10" / "convert_cifar10.py")
    out = tmp_path / "out"
    assert conv.main([str(src), "--out-dir", str(out)]) == 0
    env = lmdb.open(str(out / "cifar10_train_lmdb"), readonly=True, lock=False)
    with env.begin() as txn:
        records = list(txn.cursor())
    env.close()
    assert [k for k, _ in records] == [b"%05d" % i for i in range(10)]
    d = caffe_pb2.Datum.FromString(records[5][1])  # batch 3, record 1
    assert (d.channels, d.height, d.width, d.label) == (3, 32, 32, all_images[2][1][1])
    assert d.data == all_images[2][0][1].tobytes()  # planes kept in the file's R, G, B order
    train = np.concatenate([im for im, _ in all_images[:5]])
    from minicaffe.prototxt import read_binaryproto

    np.testing.assert_allclose(
        read_binaryproto(out / "mean.binaryproto")[0], train.mean(0), rtol=1e-6
    )
    # the example's net reads them, mean subtracted
    import minicaffe

    text = _retarget(
        (EXAMPLES / "cifar10" / "cifar10_quick_train_test.prototxt").read_text(),
        {"examples/cifar10/": f"{out}/", "batch_size: 100": "batch_size: 2"},
    )
    net = minicaffe.Net(text, phase="TEST")
    net.forward()
    np.testing.assert_allclose(
        net.blobs["data"].data, all_images[5][0] - train.mean(0), rtol=1e-5, atol=1e-4
    )
    assert net.blobs["ip2"].data.shape == (2, 10)
    (src / "data_batch_2.bin").write_bytes(b"\0" * 100)
    with pytest.raises(SystemExit, match="not a multiple"):
        conv.read_batches(src, ["data_batch_2.bin"])


# ----------------------------------------------------------------------------- segmentation


def test_segmentation_dataset_and_weighted_net(tmp_path):
    shapes = _load(EXAMPLES / "segmentation" / "shapes.py")
    img, lab = shapes.make_shapes(64, seed=3)
    assert img.shape == (64, 3, 32, 32) and lab.shape == (64, 1, 32, 32)
    assert 0 <= img.min() and img.max() < 1
    assert set(np.unique(lab)) == {0, 1, 2, 3, 255}
    again = shapes.make_shapes(64, seed=3)
    np.testing.assert_array_equal(again[1], lab)
    # 255 marks only borders: no ignored pixel lies in plain background
    lab2 = lab[:, 0]
    ignored = lab2 == 255
    padded = np.pad(lab2, ((0, 0), (1, 1), (1, 1)), constant_values=0)
    near = np.zeros_like(ignored)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        nb = padded[:, dy : dy + 32, dx : dx + 32]
        near |= nb != 0
    assert np.all(near[ignored]) and 0.03 < ignored.mean() < 0.2
    # the shipped class weights are the median-frequency weights of the default training set
    _, train_lab = shapes.make_shapes(768, seed=1)
    weights = shapes.median_frequency_weights(shapes.class_frequencies(train_lab))
    text = (EXAMPLES / "segmentation" / "fcn_train_test_weighted.prototxt").read_text()
    shipped = [float(v) for v in re.findall(r"class_weight: ([\d.]+)", text)]
    np.testing.assert_allclose(shipped, weights, atol=6e-4)


def test_segmentation_nets_train_a_few_steps(tmp_path, monkeypatch):
    import minicaffe

    shapes = _load(EXAMPLES / "segmentation" / "shapes.py")
    shapes.prepare(tmp_path, n_train=32, n_test=16)
    monkeypatch.chdir(tmp_path)
    for name in ("fcn_train_test", "fcn_train_test_weighted"):
        net_text = _retarget(
            (EXAMPLES / "segmentation" / f"{name}.prototxt").read_text(),
            {
                "examples/segmentation/data/": f"{tmp_path}/",
                "batch_size: 16": "batch_size: 4",
                "batch_size: 64": "batch_size: 16",
            },
        )
        (tmp_path / f"{name}.prototxt").write_text(net_text)
        solver = minicaffe.get_solver(
            f'net: "{tmp_path}/{name}.prototxt" type: "Adam" base_lr: 0.002 momentum: 0.9 '
            f'momentum2: 0.999 lr_policy: "fixed" max_iter: 4 display: 0 random_seed: 1 '
            f'snapshot_prefix: "{tmp_path}/{name}" test_iter: 1 test_interval: 1000 '
            "test_initialization: false"
        )
        solver.step(4)
        assert solver.net.blobs["upscore"].data.shape == (4, 4, 32, 32)
        assert np.isfinite(float(solver.net.blobs["loss"].data))
        solver.test_nets[0].forward()
        assert 0 <= float(solver.test_nets[0].blobs["accuracy"].data) <= 1
