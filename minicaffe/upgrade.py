"""Bring legacy nets and solvers up to the current Caffe format.

Pure functions on protobuf messages (no I/O). The steps and their order are Caffe's:

1. V0 nets (``layers { layer { type: "conv" ... } }``): fold ``padding`` layers into the
   convolution or pooling that reads them, then map every V0 field onto a V1 layer.
2. V1 nets (``layers { type: CONVOLUTION ... }``) become ``layer`` entries with string types;
   ``param``/``blob_share_mode``/``blobs_lr``/``weight_decay`` become ParamSpec entries.
3. Data layers: the deprecated ``scale``/``mean_file``/``crop_size``/``mirror`` of
   data_param, image_data_param and window_data_param move into ``transform_param`` (Caffe
   does this on V1 layers before step 2; doing it after gives the same result and also covers
   current-format nets that still use the old fields).
4. ``input``/``input_dim``/``input_shape`` become a first ``Input`` layer named "input".
5. BatchNorm layers that list exactly three ``param`` entries get lr_mult = decay_mult = 0 on
   all three (older nets froze the statistics blobs that way).

Solvers: the ``solver_type`` enum becomes the ``type`` string.

Each function returns the upgraded copy and a list of notes saying what changed, for logging.
"""

from __future__ import annotations

from google.protobuf.message import Message

from minicaffe.errors import UpgradeError
from minicaffe.proto import caffe_pb2

__all__ = [
    "V0_LAYER_TYPES",
    "V1_LAYER_TYPES",
    "net_needs_upgrade",
    "solver_needs_upgrade",
    "upgrade_net",
    "upgrade_solver",
]

_V1 = caffe_pb2.V1LayerParameter

# V1 enum value -> current type string.
V1_LAYER_TYPES: dict[int, str] = {
    _V1.NONE: "",
    _V1.ABSVAL: "AbsVal",
    _V1.ACCURACY: "Accuracy",
    _V1.ARGMAX: "ArgMax",
    _V1.BNLL: "BNLL",
    _V1.CONCAT: "Concat",
    _V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    _V1.CONVOLUTION: "Convolution",
    _V1.DATA: "Data",
    _V1.DECONVOLUTION: "Deconvolution",
    _V1.DROPOUT: "Dropout",
    _V1.DUMMY_DATA: "DummyData",
    _V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    _V1.ELTWISE: "Eltwise",
    _V1.EXP: "Exp",
    _V1.FLATTEN: "Flatten",
    _V1.HDF5_DATA: "HDF5Data",
    _V1.HDF5_OUTPUT: "HDF5Output",
    _V1.HINGE_LOSS: "HingeLoss",
    _V1.IM2COL: "Im2col",
    _V1.IMAGE_DATA: "ImageData",
    _V1.INFOGAIN_LOSS: "InfogainLoss",
    _V1.INNER_PRODUCT: "InnerProduct",
    _V1.LRN: "LRN",
    _V1.MEMORY_DATA: "MemoryData",
    _V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss",
    _V1.MVN: "MVN",
    _V1.POOLING: "Pooling",
    _V1.POWER: "Power",
    _V1.RELU: "ReLU",
    _V1.SIGMOID: "Sigmoid",
    _V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss",
    _V1.SILENCE: "Silence",
    _V1.SOFTMAX: "Softmax",
    _V1.SOFTMAX_LOSS: "SoftmaxWithLoss",
    _V1.SPLIT: "Split",
    _V1.SLICE: "Slice",
    _V1.TANH: "TanH",
    _V1.WINDOW_DATA: "WindowData",
    _V1.THRESHOLD: "Threshold",
}

# V0 type string -> V1 enum value ("padding" is folded away before this map is used).
V0_LAYER_TYPES: dict[str, int] = {
    "accuracy": _V1.ACCURACY,
    "bnll": _V1.BNLL,
    "concat": _V1.CONCAT,
    "conv": _V1.CONVOLUTION,
    "data": _V1.DATA,
    "dropout": _V1.DROPOUT,
    "euclidean_loss": _V1.EUCLIDEAN_LOSS,
    "flatten": _V1.FLATTEN,
    "hdf5_data": _V1.HDF5_DATA,
    "hdf5_output": _V1.HDF5_OUTPUT,
    "im2col": _V1.IM2COL,
    "images": _V1.IMAGE_DATA,
    "infogain_loss": _V1.INFOGAIN_LOSS,
    "innerproduct": _V1.INNER_PRODUCT,
    "lrn": _V1.LRN,
    "multinomial_logistic_loss": _V1.MULTINOMIAL_LOGISTIC_LOSS,
    "pool": _V1.POOLING,
    "relu": _V1.RELU,
    "sigmoid": _V1.SIGMOID,
    "softmax": _V1.SOFTMAX,
    "softmax_loss": _V1.SOFTMAX_LOSS,
    "split": _V1.SPLIT,
    "tanh": _V1.TANH,
    "window_data": _V1.WINDOW_DATA,
}

_SOLVER_TYPES: dict[int, str] = {
    caffe_pb2.SolverParameter.SGD: "SGD",
    caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad",
    caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta",
    caffe_pb2.SolverParameter.ADAM: "Adam",
}

# Data layer types whose parameter message still carries the deprecated transform fields.
_DATA_LAYERS = {
    "Data": "data_param",
    "ImageData": "image_data_param",
    "WindowData": "window_data_param",
}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

# Every "*_param" message a V1 layer can carry; LayerParameter has a field of the same name.
_V1_PARAM_FIELDS = tuple(
    f.name for f in _V1.DESCRIPTOR.fields if f.name.endswith("_param") and f.message_type
)


# V0 field -> {V0 type: (V1 parameter message, field in it)}. Convolution fields that became
# repeated (pad, kernel_size, stride) get the single V0 value appended; fillers are copied.
_V0_FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    "num_output": {
        "conv": ("convolution_param", "num_output"),
        "innerproduct": ("inner_product_param", "num_output"),
    },
    "biasterm": {
        "conv": ("convolution_param", "bias_term"),
        "innerproduct": ("inner_product_param", "bias_term"),
    },
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {
        "conv": ("convolution_param", "kernel_size"),
        "pool": ("pooling_param", "kernel_size"),
    },
    "weight_filler": {
        "conv": ("convolution_param", "weight_filler"),
        "innerproduct": ("inner_product_param", "weight_filler"),
    },
    "bias_filler": {
        "conv": ("convolution_param", "bias_filler"),
        "innerproduct": ("inner_product_param", "bias_filler"),
    },
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {
        "data": ("data_param", "source"),
        "window_data": ("window_data_param", "source"),
        "infogain_loss": ("infogain_loss_param", "source"),
        "images": ("image_data_param", "source"),
        "hdf5_data": ("hdf5_data_param", "source"),
    },
    "batchsize": {
        "data": ("data_param", "batch_size"),
        "hdf5_data": ("hdf5_data_param", "batch_size"),
        "images": ("image_data_param", "batch_size"),
        "window_data": ("window_data_param", "batch_size"),
    },
    "rand_skip": {
        "data": ("data_param", "rand_skip"),
        "images": ("image_data_param", "rand_skip"),
    },
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
}
# V0 image transformation settings of the data layers -> TransformationParameter fields.
_V0_TRANSFORM_FIELDS = {
    "scale": "scale",
    "meanfile": "mean_file",
    "cropsize": "crop_size",
    "mirror": "mirror",
}


# ---------------------------------------------------------------------------- detection


def _is_v0(net: caffe_pb2.NetParameter) -> bool:
    return any(entry.HasField("layer") for entry in net.layers)


def _old_data_fields(layer: caffe_pb2.LayerParameter, legacy: bool = False) -> list[str]:
    """The transform fields still set in the data layer's own parameter, to move into
    transform_param. ``legacy``: the layer came from a V0/V1 net. WindowData reads its scale
    from window_data_param (Caffe's layer never applies transform_param.scale), so there it
    stays, except in V0/V1 nets, whose upgrade moves it as Caffe's does (where it is lost)."""
    param_name = _DATA_LAYERS.get(layer.type)
    if param_name is None or not layer.HasField(param_name):
        return []
    param = getattr(layer, param_name)
    keep = ("scale",) if layer.type == "WindowData" and not legacy else ()
    return [name for name in _TRANSFORM_FIELDS if param.HasField(name) and name not in keep]


def _is_old_batch_norm(layer: caffe_pb2.LayerParameter) -> bool:
    return (
        layer.type == "BatchNorm"
        and len(layer.param) == 3
        and any(p.lr_mult != 0 or p.decay_mult != 0 for p in layer.param)
    )


def net_needs_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """True if :func:`upgrade_net` would change ``net``."""
    return bool(
        len(net.layers)
        or len(net.input)
        or len(net.input_dim)
        or len(net.input_shape)
        or any(_old_data_fields(layer) for layer in net.layer)
        or any(_is_old_batch_norm(layer) for layer in net.layer)
    )


def solver_needs_upgrade(sp: caffe_pb2.SolverParameter) -> bool:
    """True if :func:`upgrade_solver` would change ``sp``."""
    return sp.HasField("solver_type") or any(net_needs_upgrade(n) for n in _embedded_nets(sp))


# ---------------------------------------------------------------------------- nets


def upgrade_net(
    net: caffe_pb2.NetParameter, source: str = "<net>"
) -> tuple[caffe_pb2.NetParameter, list[str]]:
    """Return an upgraded copy of ``net`` and notes on what was changed.

    ``source`` (a file name, usually) is used in error messages. Raises
    :class:`~minicaffe.errors.UpgradeError` when the net cannot be upgraded.
    """
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    notes: list[str] = []

    if len(out.layer) and len(out.layers):
        raise UpgradeError(
            f"the net has both 'layer' entries (current format) and 'layers' entries (V1/V0 "
            f"format: {len(out.layers)} of them, the first named {out.layers[0].name!r}); "
            "write every layer in one format",
            filename=source,
        )
    legacy = len(out.layers) > 0  # V0 and V1 layers both sit in 'layers'
    if _is_v0(out):
        _upgrade_v0(out, source, notes)
    if len(out.layers):
        _upgrade_v1(out, notes)
    _upgrade_data_transform(out, source, notes, legacy)
    _upgrade_inputs(out, source, notes)
    _upgrade_batch_norm(out, notes)
    return out, notes


def _upgrade_v0(net: caffe_pb2.NetParameter, source: str, notes: list[str]) -> None:
    plain = [i for i, entry in enumerate(net.layers) if not entry.HasField("layer")]
    if plain:
        first = net.layers[plain[0]]
        raise UpgradeError(
            f"the net mixes V0 entries (layers {{ layer {{ ... }} }}) with V1 entries; entry "
            f"#{plain[0]} ({first.name or 'unnamed'!r}) has no nested 'layer'",
            filename=source,
        )
    entries = _fold_padding(net, source, notes)
    del net.layers[:]
    warnings: list[str] = []
    for entry in entries:
        _v0_to_v1(entry, net.layers.add(), source, warnings)
    notes.append(f"upgraded {len(entries)} V0 layers to V1")
    notes.extend(warnings)


def _fold_padding(
    net: caffe_pb2.NetParameter, source: str, notes: list[str]
) -> list[caffe_pb2.V1LayerParameter]:
    """V0 entries with every "padding" layer merged into the conv/pool that reads it."""
    kept: list[caffe_pb2.V1LayerParameter] = []
    producer: dict[str, int] = {name: -1 for name in net.input}  # blob -> entry index (-1: input)
    for i, entry in enumerate(net.layers):
        v0 = entry.layer
        if v0.type != "padding":
            copy = caffe_pb2.V1LayerParameter()
            copy.CopyFrom(entry)
            kept.append(copy)
        for j, blob in enumerate(entry.bottom):
            if blob not in producer:
                raise UpgradeError(
                    f"layer {v0.name!r} ({v0.type}) reads blob {blob!r}, which no earlier "
                    "layer or input produces",
                    filename=source,
                )
            k = producer[blob]
            if k < 0 or net.layers[k].layer.type != "padding":
                continue
            pad = net.layers[k]
            if v0.type not in ("conv", "pool"):
                raise UpgradeError(
                    f"padding layer {pad.layer.name!r} feeds layer {v0.name!r} of type "
                    f"{v0.type!r}; padding can only be folded into 'conv' or 'pool' layers",
                    filename=source,
                )
            if len(entry.bottom) != 1:
                raise UpgradeError(
                    f"layer {v0.name!r} ({v0.type}) reads padding layer {pad.layer.name!r} "
                    f"but has {len(entry.bottom)} bottoms; expected exactly 1",
                    filename=source,
                )
            if len(pad.bottom) != 1 or len(pad.top) != 1:
                raise UpgradeError(
                    f"padding layer {pad.layer.name!r} must have exactly one bottom and one "
                    f"top; received {len(pad.bottom)} bottoms and {len(pad.top)} tops",
                    filename=source,
                )
            target = kept[-1]
            target.layer.pad = pad.layer.pad
            target.bottom[j] = pad.bottom[0]
            notes.append(
                f"folded padding layer {pad.layer.name!r} (pad {pad.layer.pad}) into {v0.name!r}"
            )
        for blob in entry.top:
            producer[blob] = i
    return kept


def _v0_to_v1(
    entry: caffe_pb2.V1LayerParameter,
    out: caffe_pb2.V1LayerParameter,
    source: str,
    warnings: list[str],
) -> None:
    v0 = entry.layer
    out.bottom.extend(entry.bottom)
    out.top.extend(entry.top)
    if v0.HasField("name"):
        out.name = v0.name
    kind = v0.type
    if v0.HasField("type"):
        if kind not in V0_LAYER_TYPES:
            raise UpgradeError(
                f"layer {v0.name!r} has unknown V0 type {kind!r}; known V0 types: "
                f"{', '.join(sorted([*V0_LAYER_TYPES, 'padding']))}",
                filename=source,
            )
        out.type = V0_LAYER_TYPES[kind]
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)

    def unsupported(field: str) -> None:
        warnings.append(
            f"warning: V0 field {field!r} has no meaning for layer {v0.name!r} of type "
            f"{kind!r}; it was dropped"
        )

    for field, targets in _V0_FIELDS.items():
        if not v0.HasField(field):
            continue
        if kind not in targets:
            unsupported(field)
            continue
        param_name, target = targets[kind]
        param = getattr(out, param_name)
        value = getattr(v0, field)
        descriptor = param.DESCRIPTOR.fields_by_name[target]
        if descriptor.message_type:
            getattr(param, target).CopyFrom(value)
        elif descriptor.is_repeated:
            getattr(param, target).append(value)
        else:
            setattr(param, target, value)
    for field, target in _V0_TRANSFORM_FIELDS.items():
        if not v0.HasField(field):
            continue
        if kind not in ("data", "images", "window_data"):
            unsupported(field)
            continue
        setattr(out.transform_param, target, getattr(v0, field))
    if v0.HasField("hdf5_output_param"):
        if kind == "hdf5_output":
            out.hdf5_output_param.CopyFrom(v0.hdf5_output_param)
        else:
            unsupported("hdf5_output_param")
    for field in ("new_num", "new_channels"):
        if v0.HasField(field):
            unsupported(field)


def _move_transform_fields(
    param: Message,
    transform: caffe_pb2.TransformationParameter,
    fields: list[str],
    where: str,
    source: str,
) -> None:
    for name in fields:
        value = getattr(param, name)
        if transform.HasField(name) and getattr(transform, name) != value:
            raise UpgradeError(
                f"{where}: {param.DESCRIPTOR.name} sets the deprecated {name}={value!r} but "
                f"transform_param already sets {name}={getattr(transform, name)!r}; keep only "
                "the transform_param value",
                filename=source,
            )
        setattr(transform, name, value)
        param.ClearField(name)


def _upgrade_data_transform(
    net: caffe_pb2.NetParameter, source: str, notes: list[str], legacy: bool
) -> None:
    for layer in net.layer:
        fields = _old_data_fields(layer, legacy)
        if not fields:
            continue
        param_name = _DATA_LAYERS[layer.type]
        where = f"layer {layer.name!r} ({layer.type})"
        _move_transform_fields(
            getattr(layer, param_name), layer.transform_param, fields, where, source
        )
        notes.append(f"{where}: moved {', '.join(fields)} from {param_name} to transform_param")


def _upgrade_v1(net: caffe_pb2.NetParameter, notes: list[str]) -> None:
    # Only called when `layer` is empty (mixing both is rejected), so appending keeps order.
    for entry in net.layers:
        _v1_to_v2(entry, net.layer.add())
    count = len(net.layers)
    net.ClearField("layers")
    notes.append(f"upgraded {count} V1 layers ('layers') to the current format ('layer')")


def _param_spec(layer: caffe_pb2.LayerParameter, i: int) -> caffe_pb2.ParamSpec:
    while len(layer.param) <= i:
        layer.param.add()
    return layer.param[i]


def _v1_to_v2(entry: caffe_pb2.V1LayerParameter, layer: caffe_pb2.LayerParameter) -> None:
    layer.bottom.extend(entry.bottom)
    layer.top.extend(entry.top)
    if entry.HasField("name"):
        layer.name = entry.name
    layer.include.extend(entry.include)
    layer.exclude.extend(entry.exclude)
    if entry.HasField("type"):
        layer.type = V1_LAYER_TYPES[entry.type]
    layer.blobs.extend(entry.blobs)
    for i, name in enumerate(entry.param):
        _param_spec(layer, i).name = name
    for i, mode in enumerate(entry.blob_share_mode):
        # V1 and ParamSpec use the same numbers (STRICT 0, PERMISSIVE 1).
        _param_spec(layer, i).share_mode = mode
    for i, lr in enumerate(entry.blobs_lr):
        _param_spec(layer, i).lr_mult = lr
    for i, decay in enumerate(entry.weight_decay):
        _param_spec(layer, i).decay_mult = decay
    layer.loss_weight.extend(entry.loss_weight)
    for name in _V1_PARAM_FIELDS:
        if entry.HasField(name):
            getattr(layer, name).CopyFrom(getattr(entry, name))


def _upgrade_inputs(net: caffe_pb2.NetParameter, source: str, notes: list[str]) -> None:
    names, shapes, dims = list(net.input), list(net.input_shape), list(net.input_dim)
    if not (names or shapes or dims):
        return
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")
    if not shapes and not dims:
        # Old caffemodels name their inputs without shapes; there is nothing to build.
        notes.append(f"dropped input names without shapes: {', '.join(names)}")
        return
    if shapes and len(shapes) != len(names):
        raise UpgradeError(
            f"the net declares {len(names)} input(s) ({', '.join(names) or 'none'}) but "
            f"{len(shapes)} input_shape entries; expected one input_shape per input",
            filename=source,
        )
    if not shapes and len(dims) != 4 * len(names):
        raise UpgradeError(
            f"the net declares {len(names)} input(s) ({', '.join(names) or 'none'}) but "
            f"{len(dims)} input_dim values; expected 4 per input (N, C, H, W) = "
            f"{4 * len(names)}",
            filename=source,
        )
    layer = caffe_pb2.LayerParameter(name="input", type="Input")
    for i, name in enumerate(names):
        layer.top.append(name)
        shape = layer.input_param.shape.add()
        if shapes:
            shape.CopyFrom(shapes[i])
        else:
            shape.dim.extend(dims[4 * i : 4 * i + 4])
    rest = list(net.layer)
    net.ClearField("layer")
    net.layer.append(layer)
    net.layer.extend(rest)
    described = ", ".join(f"{n} {tuple(s.dim)}" for n, s in zip(names, layer.input_param.shape))
    notes.append(f"converted net inputs into a first Input layer 'input': {described}")


def _upgrade_batch_norm(net: caffe_pb2.NetParameter, notes: list[str]) -> None:
    for layer in net.layer:
        if not _is_old_batch_norm(layer):
            continue
        for spec in layer.param:
            spec.lr_mult = 0
            spec.decay_mult = 0
        notes.append(
            f"BatchNorm layer {layer.name!r}: set lr_mult and decay_mult of its 3 param "
            "entries to 0 (its blobs are statistics, not learned weights)"
        )


# ---------------------------------------------------------------------------- solvers


def _embedded_nets(sp: caffe_pb2.SolverParameter) -> list[caffe_pb2.NetParameter]:
    nets = [getattr(sp, name) for name in ("net_param", "train_net_param") if sp.HasField(name)]
    return nets + list(sp.test_net_param)


def upgrade_solver(
    sp: caffe_pb2.SolverParameter, source: str = "<solver>"
) -> tuple[caffe_pb2.SolverParameter, list[str]]:
    """Return an upgraded copy of ``sp`` and notes on what was changed.

    ``solver_type`` (enum) becomes ``type`` (string); nets written inline in the solver
    (net_param, train_net_param, test_net_param) are upgraded with :func:`upgrade_net`.
    """
    out = caffe_pb2.SolverParameter()
    out.CopyFrom(sp)
    notes: list[str] = []
    if out.HasField("solver_type"):
        old = caffe_pb2.SolverParameter.SolverType.Name(out.solver_type)
        new = _SOLVER_TYPES[out.solver_type]
        if out.HasField("type") and out.type != new:
            raise UpgradeError(
                f"the solver sets both the deprecated solver_type: {old} and type: "
                f"{out.type!r}, which disagree; keep only type (e.g. type: {new!r})",
                filename=source,
            )
        out.type = new
        out.ClearField("solver_type")
        notes.append(f"converted solver_type: {old} to type: {new!r}")
    for name in ("net_param", "train_net_param"):
        if out.HasField(name) and net_needs_upgrade(getattr(out, name)):
            upgraded, net_notes = upgrade_net(getattr(out, name), f"{source} ({name})")
            getattr(out, name).CopyFrom(upgraded)
            notes.extend(f"{name}: {note}" for note in net_notes)
    for i, net in enumerate(out.test_net_param):
        if net_needs_upgrade(net):
            upgraded, net_notes = upgrade_net(net, f"{source} (test_net_param #{i})")
            net.CopyFrom(upgraded)
            notes.extend(f"test_net_param #{i}: {note}" for note in net_notes)
    return out, notes
