"""Text and binary file I/O: errors with locations, Caffe-written files, exact round trips."""

from __future__ import annotations

import numpy as np
import pytest

from minicaffe.errors import PrototxtError, WeightsError
from minicaffe.proto import caffe_pb2
from minicaffe.prototxt import (
    array_to_blobproto,
    blobproto_to_array,
    caffemodel_bytes,
    read_binaryproto,
    read_caffemodel,
    read_net_param,
    read_solver_param,
    read_solverstate,
    solverstate_bytes,
    write_binaryproto,
    write_caffemodel,
)
from tests.golden import GOLDENS

NETS = ["net_lenet", "net_cifar10_quick", "net_resnet_block"]


def test_prototxt_error_has_file_line_col_and_token(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "a"\n  typo: "ReLU"\n}\n')
    with pytest.raises(PrototxtError) as info:
        read_net_param(str(path))
    err = info.value
    assert str(err).startswith(f"{path}:4:3: ")
    assert "typo" in str(err) and err.token == "typo:"
    assert (err.line, err.column) == (4, 3)


def test_prototxt_error_for_bad_value_and_unbalanced_braces(tmp_path):
    with pytest.raises(PrototxtError, match=r"<text>:1:\d+: .*(phase|TRIAN)"):
        read_net_param("state { phase: TRIAN }")
    path = tmp_path / "open.prototxt"
    path.write_text("layer {\n  name: 'a'\n")
    with pytest.raises(PrototxtError, match=f"{path}:"):
        read_net_param(str(path))


def test_missing_and_binary_files_are_clear(tmp_path):
    with pytest.raises(PrototxtError, match="no such net prototxt"):
        read_net_param(str(tmp_path / "nope.prototxt"))
    blob = tmp_path / "x.prototxt"
    blob.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(PrototxtError, match="binary"):
        read_net_param(str(blob))


def test_solver_upgrade_of_solver_type():
    sp = read_solver_param("solver_type: ADAGRAD base_lr: 0.1 net: 'x.prototxt'")
    assert sp.type == "AdaGrad" and not sp.HasField("solver_type")


def test_read_net_param_upgrades_legacy_inputs():
    net = read_net_param('input: "data" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 5')
    assert net.layer[0].type == "Input" and list(net.layer[0].input_param.shape[0].dim) == [
        1,
        3,
        4,
        5,
    ]


@pytest.mark.parametrize("name", NETS)
def test_caffe_written_caffemodel_loads_and_reserializes_byte_identical(name):
    path = GOLDENS / f"{name}.caffemodel"
    raw = path.read_bytes()
    model = read_caffemodel(path)
    z = np.load(GOLDENS / f"{name}.npz")
    arrays = model.arrays_by_layer()
    for key in z.files:
        if key.startswith("param::"):
            _, layer, i = key.split("::")
            np.testing.assert_array_equal(arrays[layer][int(i)], z[key])
    again = caffemodel_bytes(model.net, [[b.data for b in blobs] for _, blobs in model.weights])
    assert again == raw


@pytest.mark.parametrize("name", NETS)
def test_net_save_load_save_is_byte_identical(name, tmp_path):
    from minicaffe import TEST, Net

    net = Net(str(GOLDENS / f"{name}.prototxt"), TEST, weights=str(GOLDENS / f"{name}.caffemodel"))
    first, second = tmp_path / "a.caffemodel", tmp_path / "b.caffemodel"
    net.save(first)
    Net(str(GOLDENS / f"{name}.prototxt"), TEST, weights=str(first)).save(second)
    assert first.read_bytes() == second.read_bytes()
    # and the file parses with plain protobuf as a Caffe NetParameter
    msg = caffe_pb2.NetParameter()
    msg.ParseFromString(first.read_bytes())
    assert [layer.name for layer in msg.layer] == net.layer_names


@pytest.mark.parametrize("cut", [1, 100, 1000, -7])
def test_truncated_caffemodel_is_a_weights_error(tmp_path, cut):
    raw = (GOLDENS / "net_lenet.caffemodel").read_bytes()
    bad = tmp_path / "cut.caffemodel"
    bad.write_bytes(raw[:cut] if cut > 0 else raw[:cut])
    with pytest.raises(WeightsError, match=f"{bad}.*(truncated|corrupt)"):
        read_caffemodel(bad)


def test_garbage_and_missing_weights(tmp_path):
    bad = tmp_path / "g.caffemodel"
    bad.write_bytes(b"\x07" * 64)
    with pytest.raises(WeightsError, match="g.caffemodel"):
        read_caffemodel(bad)
    with pytest.raises(WeightsError, match="no such file"):
        read_caffemodel(tmp_path / "absent.caffemodel")


def test_write_caffemodel_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "w.caffemodel"
    net = caffe_pb2.NetParameter(name="n")
    net.layer.add(name="ip", type="InnerProduct")
    write_caffemodel(path, net, [[np.ones((2, 3), np.float32)]])
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        write_caffemodel(path, net, [[np.zeros((2, 3), np.float32)]])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.caffemodel"]  # no temp file left


def test_binaryproto_legacy_and_nd(tmp_path):
    mean = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    legacy = tmp_path / "mean.binaryproto"
    write_binaryproto(legacy, mean, legacy=True)
    proto = caffe_pb2.BlobProto()
    proto.ParseFromString(legacy.read_bytes())
    assert (proto.num, proto.channels, proto.height, proto.width) == (1, 3, 4, 5)
    np.testing.assert_array_equal(read_binaryproto(legacy), mean.reshape(1, 3, 4, 5))
    nd = tmp_path / "h.binaryproto"
    write_binaryproto(nd, mean)
    np.testing.assert_array_equal(read_binaryproto(nd), mean)
    back = blobproto_to_array(array_to_blobproto(mean))
    np.testing.assert_array_equal(back, mean)


def test_blob_count_mismatch_is_reported(tmp_path):
    proto = caffe_pb2.BlobProto()
    proto.shape.dim.extend([2, 3])
    proto.data.extend([1.0, 2.0])
    path = tmp_path / "bad.binaryproto"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(WeightsError, match="needs 6 values but holds 2"):
        read_binaryproto(path)


def test_caffe_solverstate_round_trip():
    path = GOLDENS / "solvers" / "sgd_step" / "snap_iter_15.solverstate"
    state, history = read_solverstate(path)
    assert state.iter == 15 and state.learned_net.endswith("snap_iter_15.caffemodel")
    assert len(history) == 4
    assert solverstate_bytes(state, history) == path.read_bytes()


def test_large_model_reads_as_bytes(tmp_path):
    """8M parameters: the blob payload goes through frombuffer, not element by element."""
    w = np.arange(8_000_000, dtype=np.float32).reshape(2000, 4000)
    net = caffe_pb2.NetParameter(name="big")
    net.layer.add(name="fc", type="InnerProduct")
    path = tmp_path / "big.caffemodel"
    write_caffemodel(path, net, [[w]])
    model = read_caffemodel(path)
    got = model.weights[0][1][0].data
    assert got.shape == (2000, 4000) and got[1999, 3999] == w[1999, 3999]


# ---------------------------------------------------------------------------- damaged files


def _blob_bytes(**fields) -> bytes:
    proto = caffe_pb2.BlobProto()
    for name, value in fields.items():
        if name == "dims":
            proto.shape.dim.extend(value)
        elif name == "data":
            proto.data.extend(value)
        else:
            setattr(proto, name, value)
    return proto.SerializeToString()


@pytest.mark.parametrize(
    "raw, message",
    [
        (_blob_bytes(dims=[5, 36]), "needs 180 values but holds 0"),  # Caffe's FromProto check
        (_blob_bytes(num=-5), "negative dimension"),
        (_blob_bytes(dims=[1 << 40, 1 << 20]), "holds 0"),  # no 4 EiB of zeros
        # packed floats whose length is not a whole number of values
        (bytes([0x2A, 7]) + b"\x00" * 7, "not whole 4-byte values"),
    ],
)
def test_damaged_blobs_are_weights_errors(tmp_path, raw, message):
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(raw)
    with pytest.raises(WeightsError, match=message):
        read_binaryproto(path)
    net = caffe_pb2.NetParameter(name="n")
    layer = net.layer.add(name="ip", type="InnerProduct")
    model = tmp_path / "m.caffemodel"
    model.write_bytes(net.SerializeToString() + b"")
    # the same blob inside a layer of a .caffemodel (field 7 of LayerParameter)
    body = layer.SerializeToString() + bytes([0x3A, len(raw)]) + raw
    model.write_bytes(bytes([0xA2, 0x06, len(body)]) + body)
    with pytest.raises(WeightsError, match=f"{model}.*{message}"):
        read_caffemodel(model)


def test_v0_caffemodel_with_a_bad_blob_names_the_file(tmp_path):
    net = caffe_pb2.NetParameter(name="v0")
    inner = net.layers.add().layer
    inner.name, inner.type = "conv1", "conv"
    blob = inner.blobs.add(num=7, channels=3, height=3, width=3)
    blob.data.extend([0.5] * 108)  # 189 needed
    path = tmp_path / "v0.caffemodel"
    path.write_bytes(net.SerializeToString())
    with pytest.raises(WeightsError, match=f"{path}.*needs 189 values but holds 108"):
        read_caffemodel(path)


def test_binary_caffemodel_under_an_h5_name_is_read_by_content(tmp_path):
    net = caffe_pb2.NetParameter(name="n")
    net.layer.add(name="ip", type="InnerProduct")
    path = tmp_path / "weights.h5"
    write_caffemodel(path, net, [[np.arange(6, dtype=np.float32).reshape(2, 3)]])
    model = read_caffemodel(path)
    np.testing.assert_array_equal(model.arrays_by_layer()["ip"][0], np.arange(6).reshape(2, 3))


def test_written_files_follow_the_umask_and_keep_an_existing_mode(tmp_path):
    import os

    old = os.umask(0o027)
    try:
        fresh = tmp_path / "fresh.binaryproto"
        write_binaryproto(fresh, np.ones(3, np.float32))
        assert fresh.stat().st_mode & 0o777 == 0o640  # 0666 less the umask, not mkstemp's 0600
        kept = tmp_path / "kept.binaryproto"
        kept.write_bytes(b"")
        kept.chmod(0o604)
        write_binaryproto(kept, np.ones(3, np.float32))
        assert kept.stat().st_mode & 0o777 == 0o604
    finally:
        os.umask(old)


def test_a_failed_write_names_the_path_asked_for(tmp_path):
    from minicaffe.errors import FileWriteError, MinicaffeError

    target = tmp_path / "no_folder" / "mean.binaryproto"
    with pytest.raises(FileWriteError) as info:
        write_binaryproto(target, np.ones(3, np.float32))
    assert str(info.value) == f"{target}: cannot write: No such file or directory"
    assert isinstance(info.value, OSError) and isinstance(info.value, MinicaffeError)
    with pytest.raises(FileWriteError, match="Is a directory"):
        write_binaryproto(tmp_path, np.ones(3, np.float32))
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


@pytest.mark.parametrize("path", ["runs/2024-01-01T10:00/deploy.prototxt", "C:/m/deploy.prototxt",
                                  "snap:1.prototxt"])
def test_a_missing_path_with_a_colon_is_a_missing_file(path):
    with pytest.raises(PrototxtError, match=f"^{path}: no such net prototxt"):
        read_net_param(path)
    # prototxt text on one line stays text
    assert read_net_param('name: "x"').name == "x"
    assert read_net_param("name:'a/b.c'").name == "a/b.c"


def test_a_prototxt_with_non_utf8_comments_loads(tmp_path):
    path = tmp_path / "gbk.prototxt"
    # a GBK comment, and a Latin-1 one at the end of a line
    path.write_bytes(b'name: "gbk"\n# ' + "这是中文注释".encode("gbk")
                     + b'\ninput: "data"  # caf\xe9\ninput_shape { dim: 1 }\n')
    with pytest.raises(UnicodeDecodeError):
        path.read_bytes().decode("utf-8")
    net = read_net_param(str(path))
    assert net.name == "gbk" and [l.top[0] for l in net.layer] == ["data"]
