"""convert-imageset and compute-image-mean: LMDB of Datum as Caffe writes it, read back."""

from __future__ import annotations

import lmdb
import numpy as np
import pytest
from PIL import Image

from minicaffe.cli import main
from minicaffe.proto import caffe_pb2
from tests.data_layers.util import build_data_layer, next_batch


@pytest.fixture
def image_set(tmp_path, monkeypatch):
    """6 RGB PNGs of 5x4 in imgs/ and list.txt ('name with space.png label'); BGR arrays."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 4, 3)).astype(np.uint8)
    for i, im in enumerate(rgb):
        Image.fromarray(im).save(tmp_path / "imgs" / f"im {i}.png")
    (tmp_path / "list.txt").write_text("".join(f"im {i}.png {i + 1}\n" for i in range(6)))
    return rgb[..., ::-1].transpose(0, 3, 1, 2)


def _records(db):
    env = lmdb.open(db, readonly=True, lock=False)
    with env.begin() as txn:
        items = [(k.decode(), caffe_pb2.Datum.FromString(v)) for k, v in txn.cursor()]
    env.close()
    return items


def test_convert_then_data_layer_round_trip(image_set):
    assert main(["convert-imageset", "imgs/", "list.txt", "db"]) == 0
    records = _records("db")
    assert [k for k, _ in records] == [f"{i:08d}_im {i}.png" for i in range(6)]
    d = records[2][1]
    assert (d.channels, d.height, d.width, d.label, d.encoded) == (3, 5, 4, 3, False)
    assert d.data == image_set[2].tobytes()  # uint8 C x H x W, BGR
    layer, tops = build_data_layer(
        'type: "Data" top: "data" top: "label" data_param { source: "db" batch_size: 6 '
        "backend: LMDB }",
        prefetch=0,
    )
    x, y = next_batch(layer, tops)
    np.testing.assert_array_equal(x, image_set)
    np.testing.assert_array_equal(y, np.arange(1, 7))


def test_caffe_flag_spellings_shuffle_gray_resize_encoded(image_set):
    argv = [
        "convert_imageset",
        "-shuffle",
        "-seed=4",
        "-gray",
        "-resize_height=3",
        "-resize_width=2",
        "imgs/",
        "list.txt",
        "db",
    ]
    assert main(argv) == 0
    records = _records("db")
    names = [k.split("_", 1)[1] for k, _ in records]
    assert sorted(names) == [f"im {i}.png" for i in range(6)]
    assert names != sorted(names)  # shuffled
    assert [k[:8] for k, _ in records] == [f"{i:08d}" for i in range(6)]
    assert all((d.channels, d.height, d.width) == (1, 3, 2) for _, d in records)
    assert main(argv[:1] + ["-shuffle", "-seed=4", "imgs/", "list.txt", "db2"]) == 0
    assert [k for k, _ in _records("db2")] == [k for k, _ in records]  # seeded: repeatable
    assert main(["convert-imageset", "--encoded", "imgs/", "list.txt", "enc"]) == 0
    key, d = _records("enc")[0]
    assert d.encoded and d.data == open("imgs/im 0.png", "rb").read()
    layer, tops = build_data_layer(
        'type: "Data" top: "data" top: "label" data_param { source: "enc" batch_size: 6 }',
        prefetch=0,
    )
    np.testing.assert_array_equal(next_batch(layer, tops)[0], image_set)


def test_convert_skips_unreadable_and_refuses_existing_db(image_set, capsys):
    with open("list.txt", "a") as fh:
        fh.write("missing.png 0\n")
    assert main(["convert-imageset", "imgs/", "list.txt", "db"]) == 0
    err = capsys.readouterr().err
    assert "line 7: image 'imgs/missing.png' not found" in err and "(1 skipped)" in err
    assert len(_records("db")) == 6
    assert main(["convert-imageset", "imgs/", "list.txt", "db"]) == 1
    assert "'db' already exists" in capsys.readouterr().err
    assert main(["convert-imageset", "-backend=leveldb", "imgs/", "list.txt", "x"]) == 1
    assert "LevelDB databases are not supported" in capsys.readouterr().err


def test_compute_image_mean(image_set, capsys):
    assert main(["convert-imageset", "imgs/", "list.txt", "db"]) == 0
    assert main(["compute_image_mean", "-backend=lmdb", "db", "mean.binaryproto"]) == 0
    blob = caffe_pb2.BlobProto.FromString(open("mean.binaryproto", "rb").read())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 5, 4)
    assert not blob.HasField("shape")  # legacy dims, as Caffe's tool writes
    mean = image_set.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(np.asarray(blob.data).reshape(3, 5, 4), mean, rtol=1e-6)
    out = capsys.readouterr().out
    assert f"mean_value channel [2]: {mean[2].mean():.6g}" in out
    # the mean file is what transform_param { mean_file } reads
    layer, tops = build_data_layer(
        'type: "Data" top: "data" top: "label" data_param { source: "db" batch_size: 6 '
        'backend: LMDB } transform_param { mean_file: "mean.binaryproto" }',
        prefetch=0,
    )
    x = next_batch(layer, tops)[0]
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-4)


def test_compute_image_mean_errors(image_set, capsys):
    assert main(["compute-image-mean", "nope"]) == 1
    assert "database 'nope' not found" in capsys.readouterr().err
    env = lmdb.open("mixed", map_size=1 << 20)
    with env.begin(write=True) as txn:
        for i, shape in enumerate([(3, 2, 2), (1, 2, 2)]):
            d = caffe_pb2.Datum(channels=shape[0], height=2, width=2, data=bytes(np.prod(shape)))
            txn.put(b"%d" % i, d.SerializeToString())
    env.close()
    assert main(["compute-image-mean", "mixed", "m.binaryproto"]) == 1
    assert "record 1 (key '1'): Datum is (1, 2, 2)" in capsys.readouterr().err
