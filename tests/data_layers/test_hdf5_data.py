"""HDF5Data: Caffe's row walk (wrap mid-batch, across files), shuffle, prefetch, saved position."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from minicaffe import backend
from minicaffe.errors import DataError
from minicaffe.proto import caffe_pb2
from tests.data_layers.util import build_data_layer, next_batch

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "goldens" / "solvers" / "sgd_step"


def _write_h5(path, **arrays):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)


def _layer_text(source, batch=8, shuffle=False, tops=("data", "label")):
    top_lines = "".join(f' top: "{t}"' for t in tops)
    return (
        f'type: "HDF5Data"{top_lines} hdf5_data_param {{ source: "{source}" '
        f"batch_size: {batch} shuffle: {str(shuffle).lower()} }}"
    )


@pytest.fixture
def three_files(tmp_path):
    """Files of 5, 3 and 4 rows; row r of the whole set has data = r, label = 100 + r."""
    sizes, start, names = [5, 3, 4], 0, []
    for i, n in enumerate(sizes):
        rows = np.arange(start, start + n, dtype=np.float32)
        data = np.repeat(rows[:, None, None], 2, axis=1).reshape(n, 2, 1) * [[[1], [-1]]]
        _write_h5(tmp_path / f"f{i}.h5", data=data.astype(np.float32), label=100 + rows)
        names.append(f"f{i}.h5")
        start += n
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    return tmp_path


@pytest.mark.parametrize("prefetch", [0, 3])
def test_golden_batch_rows(monkeypatch, prefetch):
    """Micro-batch g reads rows (8g .. 8g+7) mod 52, as recorded from Caffe."""
    monkeypatch.chdir(GOLDEN)
    z = np.load(GOLDEN / "trajectory.npz")
    layer, tops = build_data_layer(_layer_text("data_list.txt"), prefetch=prefetch)
    assert tops[0].shape == (8, 20) and tops[1].shape == (8,)
    for g in range(30):
        data, label = next_batch(layer, tops)
        rows = z["batch_rows"][g, 0].astype(int)
        np.testing.assert_array_equal(data, z["X"][rows])
        np.testing.assert_array_equal(label, z["y"][rows])


def test_wraps_across_files_mid_batch(three_files, monkeypatch):
    monkeypatch.chdir(three_files)
    layer, tops = build_data_layer(_layer_text("list.txt", batch=5), prefetch=0)
    assert tops[0].shape == (5, 2, 1)
    seen = [next_batch(layer, tops)[1] - 100 for _ in range(4)]
    np.testing.assert_array_equal(np.concatenate(seen), np.arange(20) % 12)
    data = next_batch(layer, tops)[0]
    np.testing.assert_array_equal(data[:, 1, 0], -data[:, 0, 0])
    state = layer.data_state()
    assert (state.cursor, state.epoch, state.layer) == ((25) % 12, 2, "data")


def test_paths_beside_list_file_from_other_cwd(three_files, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    layer, tops = build_data_layer(_layer_text(three_files / "list.txt", batch=12), prefetch=0)
    np.testing.assert_array_equal(next_batch(layer, tops)[1], 100 + np.arange(12))


def test_shuffle_is_a_per_epoch_permutation_grouped_by_file(three_files, monkeypatch):
    monkeypatch.chdir(three_files)
    backend.set_random_seed(7)
    layer, tops = build_data_layer(_layer_text("list.txt", batch=12, shuffle=True), prefetch=0)
    epochs = [next_batch(layer, tops)[1].astype(int) - 100 for _ in range(3)]
    file_of = np.searchsorted([5, 8, 12], np.arange(12), side="right")
    for rows in epochs:
        assert sorted(rows) == list(range(12))
        assert len(np.flatnonzero(np.diff(file_of[rows]))) == 2  # three contiguous file runs
    assert not all(np.array_equal(epochs[0], e) for e in epochs[1:])
    backend.set_random_seed(7)
    again, atops = build_data_layer(_layer_text("list.txt", batch=12, shuffle=True), prefetch=3)
    for rows in epochs:
        np.testing.assert_array_equal(next_batch(again, atops)[1] - 100, rows)


@pytest.mark.parametrize("shuffle", [False, True])
def test_restore_gives_identical_batches(three_files, monkeypatch, shuffle):
    monkeypatch.chdir(three_files)
    text = _layer_text("list.txt", batch=5, shuffle=shuffle)
    layer, tops = build_data_layer(text, prefetch=3)
    for _ in range(3):
        next_batch(layer, tops)
    saved = caffe_pb2.DataLayerState()
    saved.ParseFromString(layer.data_state().SerializeToString())
    expected = [next_batch(layer, tops) for _ in range(6)]
    # the same layer rewound, and a fresh one (other seed) restored, both replay the same batches
    fresh, ftops = build_data_layer(text, prefetch=0)
    for lay, tp in ((layer, tops), (fresh, ftops)):
        lay.restore_data_state(saved)
        for want in expected:
            for got, w in zip(next_batch(lay, tp), want):
                np.testing.assert_array_equal(got, w)


def test_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="'missing.txt' not found"):
        build_data_layer(_layer_text("missing.txt"))
    (tmp_path / "list.txt").write_text("a.h5\nnope.h5\n")
    _write_h5(tmp_path / "a.h5", data=np.zeros((3, 2), np.float32), label=np.zeros(3))
    with pytest.raises(DataError, match="'nope.h5' listed at 'list.txt' line 2 not found"):
        build_data_layer(_layer_text("list.txt"))
    (tmp_path / "list.txt").write_text("a.h5\n")
    with pytest.raises(DataError, match="no dataset 'extra'.*data, label"):
        build_data_layer(_layer_text("list.txt", tops=("data", "extra")))
    _write_h5(tmp_path / "b.h5", data=np.zeros((3, 2), np.float32), label=np.zeros(4))
    (tmp_path / "list.txt").write_text("b.h5\n")
    with pytest.raises(DataError, match="same number of rows.*'data' has 3, 'label' has 4"):
        build_data_layer(_layer_text("list.txt"))
    _write_h5(tmp_path / "c.h5", data=np.zeros((3, 5), np.float32), label=np.zeros(3))
    (tmp_path / "list.txt").write_text("a.h5\nc.h5\n")
    with pytest.raises(DataError, match="row shapes in 'c.h5'"):
        build_data_layer(_layer_text("list.txt"))
    (tmp_path / "list.txt").write_text("a.h5\n")
    with pytest.raises(DataError, match="batch_size must be positive"):
        build_data_layer(_layer_text("list.txt", batch=0))
    (tmp_path / "list.txt").write_text("\n\n")
    with pytest.raises(DataError, match="lists no files"):
        build_data_layer(_layer_text("list.txt"))
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    (tmp_path / "list.txt").write_text("bad.h5\n")
    with pytest.raises(DataError, match="cannot read HDF5 file 'bad.h5'.*line 1"):
        build_data_layer(_layer_text("list.txt"))


def test_restore_rejects_a_changed_source(three_files, monkeypatch):
    monkeypatch.chdir(three_files)
    layer, tops = build_data_layer(_layer_text("list.txt", shuffle=True), prefetch=0)
    state = layer.data_state()
    state.cursor = 50
    with pytest.raises(DataError, match="outside the source's 12 records"):
        layer.restore_data_state(state)
    state = layer.data_state()
    del state.order[3:]
    with pytest.raises(DataError, match="order has 3 entries but the source has 12"):
        layer.restore_data_state(state)
