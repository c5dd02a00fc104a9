"""The schema: generated code is current, and key numbers/defaults match Caffe's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from minicaffe.proto import caffe_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent


def _load_generator():
    path = ROOT / "tools" / "gen_proto.py"
    spec = importlib.util.spec_from_file_location("_gen_proto_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_module_is_current(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the pinned generator) is needed")
    written = _load_generator().generate(tmp_path)
    installed = Path(pb.__file__)
    for fresh in written:
        current = installed.with_name(fresh.name)
        assert current.is_file(), f"{current} is missing: reinstall with `pip install -e .`"
        assert fresh.read_text() == current.read_text(), (
            f"{current} is stale relative to proto/caffe.proto: reinstall with `pip install -e .`"
        )


def test_package_and_file_name():
    assert pb.DESCRIPTOR.package == "minicaffe"
    assert pb.DESCRIPTOR.name == "minicaffe/proto/caffe.proto"
    assert pb.NetParameter.DESCRIPTOR.full_name == "minicaffe.NetParameter"
    assert pb.NetParameter.__module__ == "minicaffe.proto.caffe_pb2"


ALL_MESSAGES = """
BlobShape BlobProto BlobProtoVector Datum FillerParameter NetParameter SolverParameter SolverState
NetState NetStateRule ParamSpec LayerParameter TransformationParameter LossParameter
AccuracyParameter ArgMaxParameter BatchNormParameter BiasParameter ClipParameter ConcatParameter
ContrastiveLossParameter ConvolutionParameter CropParameter DataParameter DropoutParameter
DummyDataParameter EltwiseParameter ELUParameter EmbedParameter ExpParameter FlattenParameter
HDF5DataParameter HDF5OutputParameter HingeLossParameter ImageDataParameter InfogainLossParameter
InnerProductParameter InputParameter LogParameter LRNParameter MemoryDataParameter MVNParameter
ParameterParameter PoolingParameter PowerParameter PReLUParameter PythonParameter
RecurrentParameter ReductionParameter ReLUParameter ReshapeParameter ScaleParameter
SigmoidParameter SoftmaxParameter SPPParameter SliceParameter SwishParameter TanHParameter
ThresholdParameter TileParameter WindowDataParameter V1LayerParameter V0LayerParameter
DataLayerState
""".split()


def test_every_caffe_message_exists():
    missing = [name for name in ALL_MESSAGES if name not in pb.DESCRIPTOR.message_types_by_name]
    assert missing == []


def _field(message: str, name: str) -> FieldDescriptor:
    return pb.DESCRIPTOR.message_types_by_name[message].fields_by_name[name]


# (message, field, number, default); None = "no explicit default to check".
FIELDS = [
    ("LayerParameter", "loss_param", 101, None),
    ("LayerParameter", "transform_param", 100, None),
    ("LayerParameter", "softmax_param", 125, None),
    ("LayerParameter", "convolution_param", 106, None),
    ("LayerParameter", "batch_norm_param", 139, None),
    ("LayerParameter", "clip_param", 148, None),
    ("LayerParameter", "swish_param", 147, None),
    ("LayerParameter", "recurrent_param", 146, None),
    ("LayerParameter", "propagate_down", 11, None),
    ("LayerParameter", "phase", 10, None),
    ("NetParameter", "layer", 100, None),
    ("NetParameter", "layers", 2, None),
    ("NetParameter", "input_shape", 8, None),
    ("NetState", "phase", 1, pb.TEST),
    ("LossParameter", "normalization", 3, pb.LossParameter.VALID),
    ("LossParameter", "normalize", 2, None),
    ("ConvolutionParameter", "bias_term", 2, True),
    ("ConvolutionParameter", "dilation", 18, None),
    ("ConvolutionParameter", "axis", 16, 1),
    ("PoolingParameter", "round_mode", 13, pb.PoolingParameter.CEIL),
    ("PoolingParameter", "stride", 3, 1),
    ("DataParameter", "backend", 8, pb.DataParameter.LEVELDB),
    ("DataParameter", "prefetch", 10, 4),
    ("FillerParameter", "type", 1, "constant"),
    ("FillerParameter", "std", 6, 1.0),
    ("FillerParameter", "sparse", 7, -1),
    ("ParamSpec", "lr_mult", 3, 1.0),
    ("ParamSpec", "decay_mult", 4, 1.0),
    ("BatchNormParameter", "moving_average_fraction", 2, pytest.approx(0.999)),
    ("BatchNormParameter", "eps", 3, pytest.approx(1e-5)),
    ("LRNParameter", "beta", 3, 0.75),
    ("EltwiseParameter", "operation", 1, pb.EltwiseParameter.SUM),
    ("ReductionParameter", "operation", 1, pb.ReductionParameter.SUM),
    ("HingeLossParameter", "norm", 1, pb.HingeLossParameter.L1),
    ("SolverParameter", "type", 40, "SGD"),
    ("SolverParameter", "solver_mode", 17, pb.SolverParameter.GPU),
    ("SolverParameter", "snapshot_format", 37, pb.SolverParameter.BINARYPROTO),
    ("SolverParameter", "random_seed", 20, -1),
    ("SolverParameter", "clip_gradients", 35, -1.0),
    ("SolverParameter", "delta", 31, pytest.approx(1e-8)),
    ("SolverParameter", "weights", 42, None),
    ("SolverState", "current_step", 4, 0),
    ("V1LayerParameter", "param", 1001, None),
    ("V1LayerParameter", "blob_share_mode", 1002, None),
    ("V1LayerParameter", "layer", 1, None),
    ("V1LayerParameter", "transform_param", 36, None),
    ("V0LayerParameter", "hdf5_output_param", 1001, None),
    ("V0LayerParameter", "det_crop_mode", 59, "warp"),
    ("WindowDataParameter", "crop_mode", 11, "warp"),
]


@pytest.mark.parametrize(("message", "name", "number", "default"), FIELDS)
def test_field_numbers_and_defaults(message, name, number, default):
    field = _field(message, name)
    assert field.number == number
    if default is not None:
        assert field.default_value == default


def test_clip_bounds_are_required():
    for name in ("min", "max"):
        assert _field("ClipParameter", name).is_required


def test_packing_matches_caffe():
    # Caffe packs exactly these; everything else repeated stays unpacked (proto2 default).
    packed = {
        ("BlobShape", "dim"),
        ("BlobProto", "data"),
        ("BlobProto", "diff"),
        ("BlobProto", "double_data"),
        ("BlobProto", "double_diff"),
    }
    found = set()
    for name, desc in pb.DESCRIPTOR.message_types_by_name.items():
        for field in desc.fields:
            if field.is_repeated and field.is_packed:
                found.add((name, field.name))
    assert found == packed


def test_packed_bytes_on_the_wire():
    # dim 1 and 3 as one length-delimited run: tag 0x0a, length 2, varints 1 and 3.
    assert pb.BlobShape(dim=[1, 3]).SerializeToString() == b"\x0a\x02\x01\x03"
    # float data 1.0, 2.0 packed under field 5: tag 0x2a, length 8, little-endian floats.
    blob = pb.BlobProto(data=[1.0, 2.0])
    assert blob.SerializeToString() == b"\x2a\x08\x00\x00\x80\x3f\x00\x00\x00\x40"
    # Unpacked repeated fields read back from a packed encoding and vice versa (proto2 rule).
    assert pb.BlobProto.FromString(blob.SerializeToString()) == blob


# Every field numbered 1000 or above: Caffe's own legacy ones, then minicaffe's extensions.
CAFFE_HIGH_FIELDS = {
    ("V1LayerParameter", "param"),
    ("V1LayerParameter", "blob_share_mode"),
    ("V0LayerParameter", "hdf5_output_param"),
}
MINICAFFE_FIELDS = {
    ("LossParameter", "class_weight"): 1000,
    ("LossParameter", "weight_normalization"): 1001,
    ("LossParameter", "label_smoothing"): 1002,
    ("LossParameter", "weight_by_label_freqs"): 1003,
    ("LossParameter", "class_weighting"): 1004,
    ("SolverState", "data_state"): 1000,
    ("LayerParameter", "permute_param"): 1000,
    ("LayerParameter", "continuation_indicator_param"): 1001,
    ("LayerParameter", "ctc_loss_param"): 1002,
    ("LayerParameter", "labelsequence_accuracy_param"): 1003,
    # py-faster-rcnn fork numbers, kept as the fork has them.
    ("LayerParameter", "roi_pooling_param"): 8266711,
    ("LayerParameter", "smooth_l1_loss_param"): 8266712,
}


def test_extensions_use_numbers_from_1000():
    for (message, name), number in MINICAFFE_FIELDS.items():
        assert _field(message, name).number == number
    high = set()
    for name, desc in pb.DESCRIPTOR.message_types_by_name.items():
        high |= {(name, f.name) for f in desc.fields if f.number >= 1000}
    assert high == CAFFE_HIGH_FIELDS | set(MINICAFFE_FIELDS)
    assert pb.LossParameter.WEIGHTED == 1000
    assert _field("LossParameter", "weight_normalization").default_value == pb.LossParameter.LOCAL
    assert (pb.LossParameter.LOCAL, pb.LossParameter.GLOBAL, pb.LossParameter.NO) == (0, 1, 2)


def test_engine_enums_everywhere():
    for message in (
        "ConvolutionParameter",
        "LRNParameter",
        "PoolingParameter",
        "ReLUParameter",
        "SigmoidParameter",
        "SoftmaxParameter",
        "TanHParameter",
        "SPPParameter",
    ):
        enum = pb.DESCRIPTOR.message_types_by_name[message].enum_types_by_name["Engine"]
        assert {v.name: v.number for v in enum.values} == {"DEFAULT": 0, "CAFFE": 1, "CUDNN": 2}


def test_v1_layer_type_enum():
    enum = pb.V1LayerParameter.LayerType
    assert enum.Value("SOFTMAX_LOSS") == 21
    assert enum.Value("DECONVOLUTION") == 39
    assert enum.Value("ABSVAL") == 35
    assert len(enum.keys()) == 40


def test_solver_state_round_trip():
    state = pb.SolverState(iter=7, learned_net="x.caffemodel", current_step=2)
    state.history.add().shape.dim.extend([2, 3])
    ds = state.data_state.add(layer="mnist", net="train", cursor=64, epoch=1, order=[3, 1, 2])
    ds.rng_state = b"\x00\x01"
    back = pb.SolverState.FromString(state.SerializeToString())
    assert back == state
    assert list(back.data_state[0].order) == [3, 1, 2]
