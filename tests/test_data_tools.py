"""convert-imageset and compute-image-mean: LMDB of Datum as Caffe writes it, read back."""

from __future__ import annotations

import io
import os
from pathlib import Path

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


# ----------------------------------------------------------------- encodings, failures, lists


def _raw_records(db):
    env = lmdb.open(db, readonly=True, lock=False)
    with env.begin() as txn:
        items = [(k, caffe_pb2.Datum.FromString(v)) for k, v in txn.cursor()]
    env.close()
    return items


def _leftovers(folder):
    """Names under ``folder`` that a convert-imageset run may have created."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("db"))


@pytest.mark.parametrize("enc", ["tif", "TIFF", "bmp", "dib", "ppm", "pnm", "png", "webp"])
def test_encode_type_takes_opencv_extensions(image_set, enc):
    assert main(["convert-imageset", f"--encode_type={enc}", "imgs/", "list.txt", "db"]) == 0
    records = _records("db")
    assert all(d.encoded for _, d in records)
    layer, tops = build_data_layer(
        'type: "Data" top: "data" top: "label" data_param { source: "db" batch_size: 6 }',
        prefetch=0,
    )
    np.testing.assert_array_equal(next_batch(layer, tops)[0], image_set)  # lossless formats


def test_encoded_tif_input_and_lossy_jpe(image_set, tmp_path):
    Image.open("imgs/im 0.png").save(tmp_path / "imgs" / "a.tif")
    (tmp_path / "tif.txt").write_text("a.tif 1\n")
    # a colour .tif stored grey must be re-encoded as tif (was KeyError: 'TIF')
    assert main(["convert-imageset", "--encoded", "--gray", "imgs/", "tif.txt", "db"]) == 0
    d = _records("db")[0][1]
    assert d.data[:4] in (b"II*\0", b"MM\0*") and Image.open(io.BytesIO(d.data)).mode == "L"
    assert main(["convert-imageset", "--encoded", "imgs/", "tif.txt", "db2"]) == 0
    assert _records("db2")[0][1].data == (tmp_path / "imgs" / "a.tif").read_bytes()  # as is
    assert main(["convert-imageset", "-encode_type=jpe", "imgs/", "list.txt", "db3"]) == 0
    assert _records("db3")[0][1].data[:2] == b"\xff\xd8"


def test_encode_type_that_cannot_be_written_is_a_data_error(image_set, capsys):
    assert main(["convert-imageset", "--encode_type=bmpx", "imgs/", "list.txt", "db"]) == 1
    err = capsys.readouterr().err
    assert "--encode_type 'bmpx'" in err and "choices: " in err and "tif" in err
    assert main(["convert-imageset", "--encode_type=exr", "imgs/", "list.txt", "db"]) == 1
    assert "choices: " in capsys.readouterr().err
    assert main(["convert-imageset", "--encode_type=pgm", "imgs/", "list.txt", "db"]) == 1
    assert "add --gray" in capsys.readouterr().err
    assert _leftovers(Path(".")) == []
    assert main(["convert-imageset", "--encode_type=pgm", "--gray", "imgs/", "list.txt", "db"]) == 0


def test_failed_convert_leaves_no_db_and_the_rerun_works(image_set, tmp_path, monkeypatch, capsys):
    from minicaffe.commands import convert_imageset

    monkeypatch.setattr(convert_imageset, "_COMMIT_EVERY", 2)  # records committed, then failure
    Image.new("RGB", (7, 7)).save(tmp_path / "imgs" / "big.png")
    (tmp_path / "mixed.txt").write_text(
        "".join(f"im {i}.png 0\n" for i in range(5)) + "big.png 0\n"
    )
    assert main(["convert-imageset", "--check_size", "imgs/", "mixed.txt", "db"]) == 1
    assert "'mixed.txt' line 6: 'imgs/big.png' is (3, 7, 7)" in capsys.readouterr().err
    assert _leftovers(tmp_path) == []
    # nothing readable (ROOT without its '/')
    assert main(["convert-imageset", "imgs", "list.txt", "db"]) == 1
    assert "did you mean 'imgs/'?" in capsys.readouterr().err
    assert _leftovers(tmp_path) == []
    # an encoding that cannot be guessed, after some records were written; the DB's missing
    # parent folders go too
    (tmp_path / "imgs" / "noext").write_bytes((tmp_path / "imgs" / "im 0.png").read_bytes())
    (tmp_path / "noext.txt").write_text("im 0.png 0\nim 1.png 0\nim 2.png 0\nnoext 1\n")
    argv = ["convert-imageset", "--encoded", "-resize_height=2", "-resize_width=2", "imgs/"]
    assert main(argv + ["noext.txt", "dbdir/sub/db"]) == 1
    assert "'noext.txt' line 4: cannot guess the encoding" in capsys.readouterr().err
    assert _leftovers(tmp_path) == []
    # Ctrl-C in the middle of the run
    from minicaffe.data import image_io

    real_read, calls = image_io.read_image, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_read(*args, **kwargs)

    monkeypatch.setattr(image_io, "read_image", interrupted)
    assert main(["convert-imageset", "imgs/", "list.txt", "db"]) == 130
    assert _leftovers(tmp_path) == []
    monkeypatch.setattr(image_io, "read_image", real_read)
    assert main(["convert-imageset", "imgs/", "list.txt", "db"]) == 0
    assert len(_records("db")) == 6 and _leftovers(tmp_path) == ["db"]
    assert main(["convert-imageset", "imgs/", "list.txt", "db/"]) == 1  # still refused
    assert "already exists" in capsys.readouterr().err


def test_labels_must_fit_int32(image_set, capsys):
    Path("huge.txt").write_text("im 0.png 2147483647\nim 1.png 99999999999\n")
    assert main(["convert-imageset", "imgs/", "huge.txt", "db"]) == 1
    err = capsys.readouterr().err
    assert "'huge.txt' line 2: label 99999999999 does not fit Datum.label" in err
    assert "Value out of range" not in err and _leftovers(Path(".")) == []
    Path("neg.txt").write_text("im 0.png -2147483649\n")
    assert main(["convert-imageset", "imgs/", "neg.txt", "db"]) == 1
    assert "'neg.txt' line 1: label -2147483649" in capsys.readouterr().err
    Path("ok.txt").write_bytes(b"\xef\xbb\xbfim 0.png 2147483647\nim 1.png -2147483648\n")
    assert main(["convert-imageset", "imgs/", "ok.txt", "db"]) == 0  # a BOM is no part of a name
    assert [d.label for _, d in _records("db")] == [2**31 - 1, -(2**31)]


def test_list_file_need_not_be_utf8(image_set, tmp_path, capsys):
    latin1 = b"caf\xe9 1.png"  # 'café 1.png' in Latin-1: not UTF-8
    try:
        os.rename("imgs/im 1.png", b"imgs/" + latin1)
    except OSError:
        pytest.skip("this filesystem takes only UTF-8 file names")
    Image.open("imgs/im 0.png").save("imgs/\u00e9t\u00e9.png")  # a UTF-8 name
    Path("lat.txt").write_bytes(latin1 + b" 7\n\xe9t\xe9.png 8\n" + "été.png 9\n".encode())
    assert main(["convert-imageset", "imgs/", "lat.txt", "db"]) == 0
    err = capsys.readouterr().err
    assert "'lat.txt' line 2: image 'imgs/\\xe9t\\xe9.png' not found" in err  # Latin-1 'été'
    records = _raw_records("db")
    # keys hold the names' bytes as the list gives them and the list index, as Caffe writes them
    assert [k for k, _ in records] == [b"00000000_" + latin1, "00000002_été.png".encode()]
    assert records[0][1].data == image_set[1].tobytes() and records[0][1].label == 7
    assert main(["compute-image-mean", "db"]) == 0


def test_compute_image_mean_names_what_the_folder_is(image_set, tmp_path, capsys):
    Path("emptydir").mkdir()
    assert main(["compute-image-mean", "emptydir"]) == 1
    err = capsys.readouterr().err
    assert "'emptydir' is an empty folder, not an LMDB" in err and "LevelDB" not in err
    Path("other").mkdir()
    Path("other/readme.txt").write_text("x")
    assert main(["compute-image-mean", "other"]) == 1
    err = capsys.readouterr().err
    assert "'other' is a folder without data.mdb, not an LMDB" in err and "LevelDB" not in err
    Path("ldb").mkdir()
    Path("ldb/CURRENT").write_text("MANIFEST-000001\n")
    assert main(["compute-image-mean", "ldb"]) == 1
    assert "'ldb' is a LevelDB" in capsys.readouterr().err
    assert main(["convert-imageset", "imgs/", "list.txt", "db"]) == 0
    capsys.readouterr()
    # an output that cannot be written is refused before the DB is read
    assert main(["compute-image-mean", "db", "nodir/mean.binaryproto"]) == 1
    err = capsys.readouterr().err
    assert "nodir/mean.binaryproto: cannot write: folder 'nodir' does not exist" in err
    assert "Processed" not in err
    assert main(["compute-image-mean", "db", "emptydir"]) == 1
    assert "emptydir: cannot write: it is a folder" in capsys.readouterr().err


def test_image_over_pillows_pixel_limit_is_skipped_not_a_traceback(image_set, monkeypatch, capsys):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4)  # 5x4 images: a "decompression bomb"
    assert main(["convert-imageset", "imgs/", "list.txt", "db"]) == 1
    err = capsys.readouterr().err
    assert "line 1: cannot read image 'imgs/im 0.png'" in err and "Traceback" not in err
    assert "could be read; no DB was written" in err and _leftovers(Path(".")) == []


def test_encoded_rgba_file_is_re_encoded_to_decode_as_colour(image_set, tmp_path):
    """An RGBA PNG stored as it is would decode (as stored, like Caffe's DecodeDatumNative) to 4
    channels; converting for colour re-encodes it so the Datum decodes to the 3 asked for."""
    rgba = np.random.default_rng(1).integers(0, 256, (5, 4, 4)).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "imgs" / "a.png")
    (tmp_path / "a.txt").write_text("a.png 1\nim 0.png 2\n")
    assert main(["convert-imageset", "--encoded", "imgs/", "a.txt", "db"]) == 0
    (_, first), (_, second) = _records("db")
    assert first.data != (tmp_path / "imgs" / "a.png").read_bytes()
    assert second.data == (tmp_path / "imgs" / "im 0.png").read_bytes()  # stored as it is
    layer, tops = build_data_layer(
        'type: "Data" top: "data" top: "label" data_param { source: "db" batch_size: 2 }',
        prefetch=0,
    )
    x, _ = next_batch(layer, tops)
    np.testing.assert_array_equal(x[0], rgba[..., 2::-1].transpose(2, 0, 1))  # alpha dropped
    np.testing.assert_array_equal(x[1], image_set[0])
