"""Net: builds layers from a NetParameter with Caffe's rules and runs forward and backward.

The public surface follows pycaffe (``net.blobs``, ``net.params``, ``net.forward(**inputs)``,
``net.backward(**diffs)``, ``net.copy_from``, ``net.save`` ...). Construction follows Caffe's
Net::Init: upgrade, NetState filtering, split insertion, layer setup in order with in-place tops,
loss weights, the need-backward analysis (forward sweep, loss pruning, force_backward), net
outputs sorted by name, and parameter sharing by ParamSpec name.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from minicaffe import backend
from minicaffe.backend import Device, copy_into, to_xp
from minicaffe.blob import Blob, shape_equals_legacy
from minicaffe.errors import (
    MinicaffeError,
    NetBuildError,
    OutOfMemoryError,
    PhaseError,
    ShapeError,
    WeightsError,
)
from minicaffe.graph import check_topology, filter_net, insert_splits
from minicaffe.proto import caffe_pb2
from minicaffe.registry import create_layer, resolve_device

log = logging.getLogger("minicaffe")

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST
AUTO_TOP = "(automatic)"  # the name Caffe gives a top a layer adds beyond those listed


@dataclass
class CopyReport:
    """What :meth:`Net.copy_from` did, layer by layer."""

    copied: list[str] = field(default_factory=list)
    not_in_model: list[str] = field(default_factory=list)   # in the file, not in this net
    not_in_file: list[str] = field(default_factory=list)    # layers with params kept as filled

    def summary(self) -> str:
        return (f"copied {len(self.copied)} layers; ignored {len(self.not_in_model)} not in the "
                f"model; {len(self.not_in_file)} layers with parameters not in the file kept "
                "their initial values")


def _parse_phase(value) -> int:
    if isinstance(value, str):
        upper = value.upper()
        if upper not in ("TRAIN", "TEST"):
            raise PhaseError(f"phase must be TRAIN or TEST; received {value!r}")
        return TRAIN if upper == "TRAIN" else TEST
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number not in (TRAIN, TEST):
        raise PhaseError(f"phase must be TRAIN (0) or TEST (1); received {value!r}")
    return number


def _naming_layer(exc: MinicaffeError, lp) -> MinicaffeError:
    """``exc`` with the layer named in front when its message does not name it already (an
    error raised by a blob or helper on the layer's behalf)."""
    where = f"layer '{lp.name}' ({lp.type})"
    if f"layer '{lp.name}'" in str(exc):
        return exc
    try:
        return type(exc)(f"{where}: {exc}")
    except TypeError:  # an error type with another signature: keep it as it is
        return exc


def _out_of_memory(exc: MemoryError, lp) -> OutOfMemoryError:
    """A MemoryError raised while layer ``lp`` ran, as an OutOfMemoryError naming the layer."""
    if isinstance(exc, OutOfMemoryError):
        return _naming_layer(exc, lp)
    return OutOfMemoryError(f"layer '{lp.name}' ({lp.type}): out of memory: {exc}")


class _Transfer:
    """A bottom read by a layer on another device: a mirror blob on the layer's device."""

    __slots__ = ("index", "source", "mirror", "in_place")

    def __init__(self, index: int, source: Blob, mirror: Blob, in_place: bool):
        self.index, self.source, self.mirror, self.in_place = index, source, mirror, in_place


class Net:
    """A Caffe network.

    Forms (as pycaffe): ``Net(model, phase)``, ``Net(model, weights, phase)``, and the keyword
    form ``Net(model, phase=TEST, weights=None, device=None, level=0, stages=(), dtype=float32)``
    (pycaffe's ``network_file=`` names the model too). ``model`` is a prototxt path, prototxt
    text, or a NetParameter. As Caffe's Net(file, phase, level, stages), a model read from a file
    or text gets ``level`` (default 0) whatever its ``state`` says, and ``stages`` added to its
    own; a NetParameter keeps its state's level unless ``level`` is given. ``weights`` is one
    file, or (as the caffe tool's ``--weights``) several separated by commas.
    """

    def __init__(self, model=None, *args, phase=None, weights=None, device: Device | None = None,
                 level: int | None = None, stages=(), dtype=np.float32, network_file=None):
        if model is None:
            if network_file is None:
                raise TypeError("Net() needs the model (a prototxt path, text or NetParameter)")
            model = network_file
        elif network_file is not None:
            raise TypeError("Net() received both a model and network_file")
        for arg in args:
            if isinstance(arg, (str, os.PathLike)) and not (isinstance(arg, str)
                                                             and arg.upper() in ("TRAIN", "TEST")):
                weights = arg
            else:
                phase = arg
        self.device = device if device is not None else backend.default_device()
        self.dtype = np.dtype(dtype)
        self.source = model if isinstance(model, (str, os.PathLike)) and not isinstance(
            model, caffe_pb2.NetParameter) else None
        if isinstance(model, caffe_pb2.NetParameter):
            from minicaffe.upgrade import upgrade_net

            param, _ = upgrade_net(model, "<NetParameter>")
        else:
            from minicaffe.prototxt import read_net_param

            param = read_net_param(model)
        if phase is not None:
            param.state.phase = _parse_phase(phase)
        if level is not None or not isinstance(model, caffe_pb2.NetParameter):
            param.state.level = int(level or 0)
        if stages:
            param.state.stage.extend(list(stages))
        from minicaffe.layers.python import module_search_dirs

        # Python layer modules are also looked for beside the prototxt (as pycaffe users expect)
        here = [os.path.dirname(os.path.abspath(os.fspath(self.source)))] if (
            self.source is not None and os.path.isfile(os.fspath(self.source))) else []
        with module_search_dirs(here):
            self._build(param)
        if weights is not None:
            whole = os.fspath(weights)
            for path in [whole] if os.path.exists(whole) else whole.split(","):
                self.copy_from(path)

    # ------------------------------------------------------------------ construction
    def _build(self, param) -> None:
        self.name = param.name
        self.phase = param.state.phase
        self.force_backward = param.force_backward
        self.debug_info = param.debug_info
        filtered = filter_net(param)
        self.net_param = insert_splits(filtered)
        topo = check_topology(self.net_param)
        for layer in self.net_param.layer:
            if not layer.HasField("phase"):
                layer.phase = self.phase

        self.layers = []
        self._layer_names: list[str] = []
        self._hooks: dict[str, list] = {"before_forward": [], "after_forward": [],
                                        "before_backward": [], "after_backward": []}
        self.blobs: OrderedDict[str, Blob] = OrderedDict()
        self.bottom_names: OrderedDict[str, list[str]] = OrderedDict()
        self.top_names: OrderedDict[str, list[str]] = OrderedDict()
        self._bottom_vecs: list[list[Blob]] = []
        self._top_vecs: list[list[Blob]] = []
        self._transfers: list[list[_Transfer]] = []
        self._blob_device: dict[int, Device] = {}
        self._blob_need_backward: dict[str, bool] = {}
        self.bottom_need_backward: list[list[bool]] = []
        self.layer_need_backward: list[bool] = []
        self._loss_tops: list[list[tuple[int, float, int]]] = []
        self.blob_loss_weights: OrderedDict[str, float] = OrderedDict()
        self.inputs = list(topo.inputs)
        self.outputs = list(topo.outputs)
        cudnn_fallback: list[str] = []
        boundaries: list[str] = []

        # parameter sharing state
        self.learnable_params: list[Blob] = []
        self.params_lr: list[float] = []
        self.params_weight_decay: list[float] = []
        self.has_params_lr: list[bool] = []
        self.has_params_decay: list[bool] = []
        self.param_owners: list[int] = []
        self.param_display_names: list[str] = []
        self.param_layer_indices: list[tuple[int, int]] = []
        self.learnable_param_ids: list[int] = []
        owner_by_name: dict[str, int] = {}
        all_params: list[Blob] = []

        for li, lp in enumerate(self.net_param.layer):
            device, fell_back = resolve_device(lp, self.device)
            if fell_back:
                cudnn_fallback.append(lp.name)
            try:
                layer = create_layer(lp, phase=lp.phase, device=device, dtype=self.dtype)
            except MinicaffeError:
                raise
            if lp.propagate_down and len(lp.propagate_down) != len(lp.bottom):
                raise NetBuildError(f"layer '{lp.name}' ({lp.type}): propagate_down must be "
                                    f"given once per bottom ({len(lp.bottom)}) or not at all; "
                                    f"received {len(lp.propagate_down)}")
            self.layers.append(layer)
            self._layer_names.append(lp.name)
            bottoms, transfers, need_backward = [], [], False
            bottom_need = []
            for bi, bname in enumerate(lp.bottom):
                blob = self.blobs[bname]
                src_dev = self._blob_device[id(blob)]
                in_place = bi < len(lp.top) and lp.top[bi] == bname
                if src_dev != device:
                    mirror = Blob(*blob.shape, xp=device.xp, dtype=self.dtype, name=bname)
                    transfers.append(_Transfer(bi, blob, mirror, in_place))
                    boundaries.append(f"'{bname}' {src_dev} -> {device} for layer '{lp.name}'")
                    blob = mirror
                bottoms.append(blob)
                need = self._blob_need_backward.get(bname, False)
                if lp.propagate_down:
                    need = bool(lp.propagate_down[bi])
                bottom_need.append(need)
                need_backward |= self._blob_need_backward.get(bname, False)
            tops, top_names = [], []
            for ti, tname in enumerate(lp.top):
                if ti < len(lp.bottom) and lp.bottom[ti] == tname:
                    tops.append(bottoms[ti])  # in place: the very same blob (or its mirror)
                else:
                    blob = Blob(xp=device.xp, dtype=self.dtype, name=tname)
                    self.blobs[tname] = blob
                    self._blob_device[id(blob)] = device
                    tops.append(blob)
                top_names.append(tname)
            if layer.auto_top_blobs:
                while len(tops) < layer.needed_auto_tops():
                    # Caffe names an unlisted top "(automatic)", lists it among the net's
                    # blobs (one name: the last such top answers to it) and, as nothing can
                    # read it, among the outputs
                    blob = Blob(xp=device.xp, dtype=self.dtype, name=AUTO_TOP)
                    self.blobs[AUTO_TOP] = blob
                    self._blob_device[id(blob)] = device
                    tops.append(blob)
                    top_names.append(AUTO_TOP)
                    if AUTO_TOP not in self.outputs:
                        self.outputs = sorted(self.outputs + [AUTO_TOP])
            self.bottom_names[lp.name] = list(lp.bottom)
            self.top_names[lp.name] = top_names
            try:
                layer.set_up(bottoms, tops)
            except MinicaffeError as exc:
                raise _naming_layer(exc, lp) from exc
            except MemoryError as exc:
                raise _out_of_memory(exc, lp) from None
            except Exception as exc:  # a layer bug or unexpected input: name the layer
                raise NetBuildError(f"layer '{lp.name}' ({lp.type}) failed to set up: "
                                    f"{type(exc).__name__}: {exc}") from exc
            for tr in transfers:  # mirrored in-place tops keep the source blob's shape in step
                if tr.in_place:
                    tr.source.reshape(tr.mirror.shape)
            self._bottom_vecs.append(bottoms)
            self._top_vecs.append(tops)
            self._transfers.append(transfers)
            loss_tops = []
            for ti, blob in enumerate(tops):
                w = layer.loss_weight(ti)
                if w != 0:
                    loss_tops.append((ti, float(w), blob.count))
                if ti < len(top_names):
                    self.blob_loss_weights[top_names[ti]] = float(w)
            self._loss_tops.append(loss_tops)

            # parameters: sharing by ParamSpec name, lr/decay multipliers
            if len(lp.param) > len(layer.blobs):
                raise NetBuildError(f"layer '{lp.name}' ({lp.type}) has {len(layer.blobs)} "
                                    f"parameter blobs but {len(lp.param)} param specs")
            layer.param_propagate_down = []
            specs = layer.layer_param.param  # a layer's setup may add specs (BatchNorm: lr 0)
            for pi, pblob in enumerate(layer.blobs):
                spec = specs[pi] if pi < len(specs) else caffe_pb2.ParamSpec()
                pblob.name = f"{lp.name}[{pi}]"
                net_index = len(all_params)
                all_params.append(pblob)
                self.param_layer_indices.append((li, pi))
                display = spec.name or str(pi)
                self.param_display_names.append(display)
                param_need = spec.lr_mult != 0
                layer.param_propagate_down.append(param_need)
                need_backward |= param_need
                if not spec.name or spec.name not in owner_by_name:
                    if spec.name:
                        owner_by_name[spec.name] = net_index
                    self.param_owners.append(-1)
                    self.learnable_param_ids.append(len(self.learnable_params))
                    self.learnable_params.append(pblob)
                    self.params_lr.append(spec.lr_mult)
                    self.params_weight_decay.append(spec.decay_mult)
                    self.has_params_lr.append(spec.HasField("lr_mult"))
                    self.has_params_decay.append(spec.HasField("decay_mult"))
                else:
                    owner = owner_by_name[spec.name]
                    self._share_param(lp, pi, pblob, all_params[owner], spec, owner)
            self.layer_need_backward.append(need_backward)
            self.bottom_need_backward.append(bottom_need)
            for tname in top_names:
                self._blob_need_backward[tname] = need_backward

        self._all_params = all_params
        self._mark_working_layout()
        self._prune_backward()
        self.params = OrderedDict(
            (layer.name, layer.blobs) for layer in self.layers if layer.blobs)
        self.layer_dict = OrderedDict(zip(self._layer_names, self.layers, strict=True))
        if cudnn_fallback:
            warnings.warn("engine CUDNN requested but no usable GPU (CuPy and a CUDA device); "
                          f"running on NumPy instead: layers {', '.join(cudnn_fallback)}",
                          RuntimeWarning, stacklevel=3)
        self.device_boundaries = boundaries
        if boundaries:
            log.info("net %r moves blobs between devices: %s", self.name, "; ".join(boundaries))

    def _mark_working_layout(self) -> None:
        """Mark the blobs that may stay in the (C, H, W, N) working order between layers: on
        NumPy, read only by layers that take that order, neither net input nor output, and not
        mirrored to another device. A layer that gains from that order only when its own tops
        keep it (Convolution: otherwise its NCHW plans, e.g. the copy-free 1x1 one, are faster)
        counts as taking it only then, so the marks are settled by iterating to a fixed point
        (GoogLeNet's 1x1 reduce -> 3x3 pairs, whose 3x3 feeds a Concat, stay in NCHW).
        MINICAFFE_LAYOUT=nchw keeps every blob in Caffe's order."""
        if os.environ.get("MINICAFFE_LAYOUT", "auto").lower() == "nchw":
            return
        exposed = {id(self.blobs[n]) for n in set(self.inputs) | set(self.outputs)
                   if n in self.blobs}
        ok: dict[int, bool] = {}
        for li, layer in enumerate(self.layers):
            mirrored = {id(tr.mirror) for tr in self._transfers[li]}
            for bi, blob in enumerate(self._bottom_vecs[li]):
                takes = blob.xp is np and id(blob) not in mirrored and layer.takes_chwn(bi)
                ok[id(blob)] = ok.get(id(blob), True) and takes and id(blob) not in exposed
        changed = True
        while changed:
            changed = False
            for li, layer in enumerate(self.layers):
                if not layer.chwn_needs_held_tops:
                    continue
                tops_held = all(ok.get(id(t), False) for t in self._top_vecs[li])
                for blob in self._bottom_vecs[li]:
                    if ok.get(id(blob)) and not tops_held:
                        ok[id(blob)] = False
                        changed = True
        for blob in self.blobs.values():
            blob.chwn_ok = ok.get(id(blob), False)  # (exposed blobs were never marked ok)

    def _share_param(self, lp, pi, blob, owner_blob, spec, owner_index) -> None:
        strict = spec.share_mode == caffe_pb2.ParamSpec.STRICT
        if strict and blob.shape != owner_blob.shape:
            raise NetBuildError(
                f"layer '{lp.name}' ({lp.type}): shared parameter '{spec.name}' (param {pi}) has "
                f"shape {blob.shape} but its owner has {owner_blob.shape}; shapes must match in "
                "STRICT mode (share_mode: PERMISSIVE compares counts only)")
        if not strict and blob.count != owner_blob.count:
            raise NetBuildError(
                f"layer '{lp.name}' ({lp.type}): shared parameter '{spec.name}' (param {pi}) has "
                f"{blob.count} elements but its owner has {owner_blob.count}")
        blob.share_data(owner_blob)
        blob.share_diff(owner_blob)
        learnable = self.learnable_param_ids[owner_index]
        self.param_owners.append(owner_index)
        self.learnable_param_ids.append(learnable)
        for has, values, mine, what in (
                (self.has_params_lr, self.params_lr, spec.lr_mult, "lr_mult"),
                (self.has_params_decay, self.params_weight_decay, spec.decay_mult, "decay_mult")):
            if not spec.HasField(what):
                continue
            if has[learnable]:
                if values[learnable] != mine:
                    raise NetBuildError(
                        f"layer '{lp.name}' ({lp.type}): shared parameter '{spec.name}' has "
                        f"{what} {mine} but its owner has {values[learnable]}")
            else:
                has[learnable] = True
                values[learnable] = mine

    def _prune_backward(self) -> None:
        """Caffe's backward sweep: skip layers that do not lead to a loss; force_backward."""
        under_loss: set[str] = set()
        skip: set[str] = set()
        for li in range(len(self.layers) - 1, -1, -1):
            layer, lp = self.layers[li], self.net_param.layer[li]
            contributes, skip_down = False, True
            # Auto tops of loss layers (no name in the prototxt) count too, as in Caffe.
            names = list(lp.top) + [None] * (len(self._top_vecs[li]) - len(lp.top))
            for ti, tname in enumerate(names):
                if layer.loss_weight(ti) != 0 or tname in under_loss:
                    contributes = True
                if tname not in skip:
                    skip_down = False
                if contributes and not skip_down:
                    break
            if not names:
                skip_down = True
            if (self.layer_need_backward[li] and skip_down) or not contributes:
                self.layer_need_backward[li] = False
                self.bottom_need_backward[li] = [False] * len(lp.bottom)
            for bi, bname in enumerate(lp.bottom):
                if contributes:
                    under_loss.add(bname)
                if not self.bottom_need_backward[li][bi]:
                    skip.add(bname)
        if self.force_backward:
            for li, layer in enumerate(self.layers):
                self.layer_need_backward[li] = True
                need = self.bottom_need_backward[li]
                for bi in range(len(need)):
                    need[bi] = need[bi] or layer.allow_force_backward(bi)
                layer.param_propagate_down = [True] * len(layer.blobs)
        for layer, need in zip(self.layers, self.layer_need_backward):
            layer.backward_expected = need

    # ------------------------------------------------------------------ running
    def _layer_index(self, name: str) -> int:
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise NetBuildError(f"net {self.name!r} has no layer named {name!r}") from None

    def _sync_in(self, li: int) -> None:
        for tr in self._transfers[li]:
            tr.mirror.reshape(tr.source.shape)
            copy_into(tr.mirror.data, tr.source.data)

    def _sync_out(self, li: int) -> None:
        for tr in self._transfers[li]:
            if tr.in_place:
                tr.source.reshape(tr.mirror.shape)
                copy_into(tr.source.data, tr.mirror.data)

    @property
    def has_loss(self) -> bool:
        """Whether any top carries a loss weight (something for training to minimise)."""
        return any(self._loss_tops)

    def forward_layer(self, li: int):
        """Reshape and forward layer ``li``; returns its loss contribution (0 if none)."""
        layer = self.layers[li]
        bottoms, tops = self._bottom_vecs[li], self._top_vecs[li]
        if self._transfers[li]:
            self._sync_in(li)
        try:
            layer.reshape(bottoms, tops)
            layer.forward(bottoms, tops)
        except MemoryError as exc:
            raise _out_of_memory(exc, layer.layer_param) from None
        if self._transfers[li]:
            self._sync_out(li)
        loss = 0.0
        for k, (ti, w, count) in enumerate(self._loss_tops[li]):
            top = tops[ti]
            if top.count != count:  # a reshaped loss top: write its weight again
                top.diff.fill(w)
                self._loss_tops[li][k] = (ti, w, top.count)
            loss = loss + w * top.data.sum(dtype=top.dtype)
        return loss

    def forward_from_to(self, start: int = 0, end: int | None = None):
        end = len(self.layers) - 1 if end is None else end
        loss = 0.0
        before, after = self._hooks["before_forward"], self._hooks["after_forward"]
        for li in range(start, end + 1):
            for hook in before:
                hook(li)
            loss = loss + self.forward_layer(li)
            for hook in after:
                hook(li)
        return loss

    def backward_layer(self, li: int) -> None:
        if not self.layer_need_backward[li]:
            return
        transfers = self._transfers[li]
        for tr in transfers:
            if tr.in_place:
                copy_into(tr.mirror.diff, tr.source.diff)
        layer = self.layers[li]
        try:
            layer.backward(self._top_vecs[li], self.bottom_need_backward[li],
                           self._bottom_vecs[li])
        except MemoryError as exc:
            raise _out_of_memory(exc, layer.layer_param) from None
        for tr in transfers:
            if self.bottom_need_backward[li][tr.index]:
                copy_into(tr.source.diff, tr.mirror.diff)

    def backward_from_to(self, start: int | None = None, end: int = 0) -> None:
        start = len(self.layers) - 1 if start is None else start
        before, after = self._hooks["before_backward"], self._hooks["after_backward"]
        for li in range(start, end - 1, -1):
            for hook in before:
                hook(li)
            self.backward_layer(li)
            for hook in after:
                hook(li)

    def forward_prefilled(self):
        """Forward with whatever the input blobs hold; returns the loss."""
        return self.forward_from_to()

    def forward_backward(self):
        loss = self.forward_from_to()
        self.backward_from_to()
        return loss

    def forward(self, blobs=None, start: str | None = None, end: str | None = None, **kwargs):
        """pycaffe's forward: copy ``kwargs`` (input name -> array) into the input blobs, run
        layers ``start``..``end`` (layer names, both inclusive), and return {blob name: data}
        for the net outputs (or the tops of layer ``end``) plus the blobs named in ``blobs``.

        As in pycaffe the returned arrays are the blobs' own memory (NumPy views on the CPU;
        host copies on a GPU net), overwritten by the next pass. Unlike pycaffe, an input of a
        new shape reshapes the net instead of failing, and a subset of the inputs may be given.
        """
        blobs = list(blobs or [])
        start_i = 0 if start is None else self._layer_index(start)
        end_i = len(self.layers) - 1 if end is None else self._layer_index(end)
        outs = list(self.top_names[end]) if end is not None else list(self.outputs)
        self._check_blob_names(blobs, "forward", "blobs")
        if kwargs:
            unknown = set(kwargs) - set(self.inputs)
            if unknown:
                raise NetBuildError(f"forward() received {sorted(unknown)}, which are not net "
                                    f"inputs; the inputs are {self.inputs}")
            self._set_inputs(kwargs)
        self.loss = self.forward_from_to(start_i, end_i)
        return {name: backend.to_numpy(self.blobs[name].data)
                for name in dict.fromkeys(outs + blobs)}

    def _set_inputs(self, values: dict) -> None:
        """Copy ``values`` (input name -> array) into the input blobs, reshaping the net for new
        shapes. Input that is refused (not numeric, or a shape some layer rejects) leaves the
        net in the shapes it had, so the next call can go on as before."""
        arrays = {}
        for name, value in values.items():
            if not hasattr(value, "__cuda_array_interface__"):
                value = np.asarray(value)
                if value.dtype.kind not in "biuf":
                    raise ShapeError(f"input '{name}': expected a numeric array; received "
                                     f"{value.dtype} data of shape {value.shape}")
            arrays[name] = value
        before = {name: self.blobs[name].shape for name in arrays}
        reshaped = [name for name, value in arrays.items()
                    if tuple(value.shape) != before[name]]
        if reshaped:
            try:
                for name in reshaped:
                    self.blobs[name].reshape(arrays[name].shape)
                self.reshape()
            except BaseException:
                for name in reshaped:
                    self.blobs[name].reshape(before[name])
                self.reshape()
                raise
        for name, value in arrays.items():
            blob = self.blobs[name]
            blob.data[...] = to_xp(value, blob.xp)

    def backward(self, diffs=None, start: str | None = None, end: str | None = None, **kwargs):
        """pycaffe's backward: copy ``kwargs`` (output name -> array) into the output diffs, run
        layers ``start``..``end`` in reverse, and return {blob name: diff} for the net inputs
        (or the bottoms of layer ``end``) plus the blobs named in ``diffs``."""
        diffs = list(diffs or [])
        start_i = len(self.layers) - 1 if start is None else self._layer_index(start)
        end_i = 0 if end is None else self._layer_index(end)
        outs = list(self.bottom_names[end]) if end is not None else list(self.inputs)
        self._check_blob_names(diffs, "backward", "diffs")
        if kwargs:
            unknown = set(kwargs) - set(self.outputs)
            if unknown:
                raise NetBuildError(f"backward() received {sorted(unknown)}, which are not net "
                                    f"outputs; the outputs are {self.outputs}")
            for name, value in kwargs.items():
                blob = self.blobs[name]
                shape = tuple(np.shape(value))
                if shape[:1] != blob.shape[:1] or int(np.prod(shape)) != blob.count:
                    raise ShapeError(f"backward(): the diff for '{name}' has shape {shape}; the "
                                     f"blob has shape {blob.shape} (the batch size must match)")
                blob.diff[...] = to_xp(value, blob.xp).reshape(blob.shape)
        self.backward_from_to(start_i, end_i)
        return {name: backend.to_numpy(self.blobs[name].diff)
                for name in dict.fromkeys(outs + diffs)}

    def _check_blob_names(self, names, method: str, arg: str) -> None:
        unknown = [n for n in names if n not in self.blobs]
        if unknown:
            raise NetBuildError(f"{method}(): {arg} names {unknown}, which are not blobs of net "
                                f"{self.name!r}; its blobs are {list(self.blobs)}")

    # ------------------------------------------------------------------ pycaffe batching
    def _batch(self, arrays: dict):
        """Yield dicts of batch-sized slices of ``arrays`` (name -> array of N items), the last
        one zero-padded to the batch size, as pycaffe's Net._batch."""
        if not arrays:
            return
        lengths = {name: len(value) for name, value in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ShapeError(f"all arrays must hold the same number of items; received {lengths}")
        num = next(iter(lengths.values()))
        first = next(iter(arrays))
        batch = self.blobs[first].shape[0] if self.blobs[first].shape else 1
        if batch <= 0:
            raise ShapeError(f"blob '{first}' has batch size 0; reshape it before batching")
        for i in range(0, num - num % batch, batch):
            yield {name: value[i:i + batch] for name, value in arrays.items()}
        rest = num % batch
        if rest:
            padded = {}
            for name, value in arrays.items():
                value = np.asarray(backend.to_numpy(value))
                pad = np.zeros((batch - rest,) + value.shape[1:], dtype=value.dtype)
                padded[name] = np.concatenate([value[num - rest:], pad])
            yield padded

    @staticmethod
    def _gather(parts: dict, num: int | None, batch: int | None) -> dict:
        """Join per-batch results; batch-shaped ones are concatenated and trimmed to ``num``."""
        out = {}
        for name, chunks in parts.items():
            if num is not None and chunks and all(c.ndim and c.shape[0] == batch for c in chunks):
                out[name] = np.concatenate(chunks)[:num]
            elif len(chunks) == 1:
                out[name] = chunks[0]
            else:  # not batch-shaped (a scalar loss, say): one entry per batch
                out[name] = np.stack(chunks)
        return out

    def forward_all(self, blobs=None, **kwargs) -> dict:
        """Forward any number of input items in batches of the net's batch size.

        ``kwargs``: input name -> array of N items (any N). The last batch is zero-padded and
        the padding trimmed from the results. Returns {name: array of N items} for the outputs
        and the blobs named in ``blobs`` (copies, not views). Without inputs: one pass.
        """
        names = list(dict.fromkeys(list(self.outputs) + list(blobs or [])))
        parts: dict[str, list] = {name: [] for name in names}
        num = batch = None
        if kwargs:
            unknown = set(kwargs) - set(self.inputs)
            if unknown:
                raise NetBuildError(f"forward_all() received {sorted(unknown)}, which are not "
                                    f"net inputs; the inputs are {self.inputs}")
            num = len(next(iter(kwargs.values())))
            if num == 0:
                raise ShapeError("forward_all() received inputs of 0 items; give at least one")
            batch = self.blobs[next(iter(kwargs))].shape[0]
        for chunk in (self._batch(kwargs) if kwargs else [{}]):
            outs = self.forward(blobs=blobs, **chunk)
            for name in names:
                parts[name].append(np.array(outs[name], copy=True))
        return self._gather(parts, num, batch)

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """forward_all and backward together: ``kwargs`` holds inputs (fed forward) and
        outputs (their diffs fed backward), each of N items. Returns (outputs, diffs) dicts."""
        import itertools

        inputs = {k: v for k, v in kwargs.items() if k in self.inputs}
        top_diffs = {k: v for k, v in kwargs.items() if k in self.outputs}
        unknown = set(kwargs) - set(inputs) - set(top_diffs)
        if unknown:
            raise NetBuildError(f"forward_backward_all() received {sorted(unknown)}, which are "
                                f"neither inputs {self.inputs} nor outputs {self.outputs}")
        out_names = list(dict.fromkeys(list(self.outputs) + list(blobs or [])))
        diff_names = list(dict.fromkeys(list(self.inputs) + list(diffs or [])))
        outs: dict[str, list] = {n: [] for n in out_names}
        grads: dict[str, list] = {n: [] for n in diff_names}
        fwd = self._batch(inputs) if inputs else iter([{}])
        bwd = self._batch(top_diffs) if top_diffs else iter(())
        for f, b in itertools.zip_longest(fwd, bwd, fillvalue={}):
            o = self.forward(blobs=blobs, **f)
            g = self.backward(diffs=diffs, **b)
            for n in out_names:
                outs[n].append(np.array(o[n], copy=True))
            for n in diff_names:
                grads[n].append(np.array(g[n], copy=True))
        source = inputs or top_diffs
        num = len(next(iter(source.values()))) if source else None
        batch = self.blobs[next(iter(source))].shape[0] if source else None
        return self._gather(outs, num, batch), self._gather(grads, num, batch)

    # ------------------------------------------------------------------ pycaffe raw bindings
    def _forward(self, start: int, end: int):
        return self.forward_from_to(start, end)

    def _backward(self, start: int, end: int) -> None:
        self.backward_from_to(start, end)

    @property
    def _blob_names(self) -> list[str]:
        return list(self.blobs)

    @property
    def _blobs(self) -> list[Blob]:
        return list(self.blobs.values())

    @property
    def _inputs(self) -> list[int]:
        names = list(self.blobs)
        return [names.index(n) for n in self.inputs]

    @property
    def _outputs(self) -> list[int]:
        names = list(self.blobs)
        return [names.index(n) for n in self.outputs]

    @property
    def _blob_loss_weights(self) -> list[float]:
        return [self.blob_loss_weights.get(n, 0.0) for n in self.blobs]

    def _top_ids(self, i: int) -> list[int]:
        names = list(self.blobs)
        return [names.index(n) for n in self.top_names[self._layer_names[i]]]

    def _bottom_ids(self, i: int) -> list[int]:
        names = list(self.blobs)
        return [names.index(n) for n in self.bottom_names[self._layer_names[i]]]

    def before_forward(self, func) -> None:
        """Call ``func(layer_index)`` before each layer's forward (pycaffe's hook)."""
        self._hooks["before_forward"].append(func)

    def after_forward(self, func) -> None:
        self._hooks["after_forward"].append(func)

    def before_backward(self, func) -> None:
        self._hooks["before_backward"].append(func)

    def after_backward(self, func) -> None:
        self._hooks["after_backward"].append(func)

    def set_input_arrays(self, data, labels) -> None:
        """Hand (data, labels) to the net's first MemoryData layer (pycaffe's call).

        ``data``: float32 N x C x H x W; ``labels``: N values (1-D is reshaped to N x 1 x 1 x 1).
        The layer keeps using these arrays; N must be a multiple of its batch_size.
        """
        layer = next((l for l in self.layers if l.type == "MemoryData"), None)
        if layer is None:
            raise NetBuildError(f"set_input_arrays needs a MemoryData layer; net {self.name!r} "
                                f"has none (its layer types: {[l.type for l in self.layers]})")
        data = np.ascontiguousarray(backend.to_numpy(data), dtype=np.float32)
        labels = np.asarray(backend.to_numpy(labels), dtype=np.float32)
        if labels.ndim == 1:
            labels = labels.reshape(-1, 1, 1, 1)
        labels = np.ascontiguousarray(labels)
        if data.ndim != 4 or labels.ndim != 4:
            raise ShapeError(f"layer '{layer.name}' (MemoryData): set_input_arrays needs 4-D data "
                             f"and labels; received data {data.shape}, labels {labels.shape}")
        if data.shape[0] != labels.shape[0]:
            raise ShapeError(f"layer '{layer.name}' (MemoryData): data has {data.shape[0]} items "
                             f"but labels {labels.shape[0]}")
        self._input_arrays = (data, labels)  # the layer reads them later; keep them alive
        layer.reset(data, labels)

    def reshape(self) -> None:
        """Run every layer's reshape (after an input blob changed shape)."""
        for li, layer in enumerate(self.layers):
            if self._transfers[li]:
                for tr in self._transfers[li]:
                    tr.mirror.reshape(tr.source.shape)
            layer.reshape(self._bottom_vecs[li], self._top_vecs[li])
            for tr in self._transfers[li]:
                if tr.in_place:
                    tr.source.reshape(tr.mirror.shape)

    def clear_param_diffs(self) -> None:
        for blob in self.learnable_params:
            blob.zero_diff()

    # ------------------------------------------------------------------ weights
    def copy_from(self, weights, *, strict_report: bool = False) -> CopyReport:
        """Copy parameters from a .caffemodel (or .caffemodel.h5) by layer name."""
        from minicaffe.prototxt import is_hdf5_file, read_caffemodel

        if is_hdf5_file(weights):  # by content: a binary .caffemodel under a .h5 name loads
            return self.load_hdf5(weights)
        model = read_caffemodel(weights)
        return self.copy_from_arrays(model.weights, source=str(weights))

    def _first_layer_of_each_name(self) -> dict:
        """Layer name -> the first layer of that name (Caffe finds layers by a linear search
        from the start; ``layer_dict`` keeps the last of a repeated name)."""
        first: dict = {}
        for name, layer in zip(self._layer_names, self.layers):
            first.setdefault(name, layer)
        return first

    def copy_from_arrays(self, weights, source: str = "<arrays>") -> CopyReport:
        """``weights``: iterable of (layer name, [arrays or BlobArrays])."""
        report = CopyReport()
        seen = set()
        # as Caffe's CopyTrainedLayersFrom: each entry of the file goes to the first layer of
        # its name, and a later entry of the same name overwrites an earlier one
        first = self._first_layer_of_each_name()
        for name, blobs in weights:
            layer = first.get(name)
            if layer is None:
                if blobs:
                    report.not_in_model.append(name)
                continue
            if name not in seen:
                seen.add(name)
                if layer.blobs:
                    report.copied.append(name)
            if len(blobs) != len(layer.blobs):
                if not blobs and not layer.blobs:
                    continue
                raise WeightsError(
                    f"{source}: layer '{name}' ({layer.type}) has {len(blobs)} parameter blobs "
                    f"in the file but {len(layer.blobs)} in the net (e.g. bias_term differs)")
            for i, (src, dst) in enumerate(zip(blobs, layer.blobs, strict=True)):
                arr = getattr(src, "data", src)
                legacy = getattr(src, "legacy", None)
                arr = np.asarray(arr) if not hasattr(arr, "__cuda_array_interface__") else arr
                if tuple(arr.shape) != dst.shape:
                    ok = legacy is not None and shape_equals_legacy(dst.shape, legacy)
                    if not ok:
                        raise WeightsError(
                            f"{source}: cannot copy param {i} of layer '{name}' ({layer.type}): "
                            f"shape mismatch; the file has {tuple(arr.shape)} "
                            f"({int(np.prod(arr.shape))}), the net expects {dst.shape} "
                            f"({dst.count}). To learn this layer from scratch, rename it.")
                    arr = arr.reshape(dst.shape)
                dst.data[...] = to_xp(arr, dst.xp, dst.dtype)
        report.not_in_file = [name for name, l in zip(self._layer_names, self.layers)
                              if l.blobs and (name not in seen or first[name] is not l)]
        log.info("%s: %s", source, report.summary())
        self.last_copy_report = report
        return report

    def save_hdf5(self, path, write_diff: bool = False) -> None:
        """Write the parameters as Caffe's HDF5 weights (Net::ToHDF5): ``/data/<layer>/<i>``
        datasets (and ``/diff/<layer>/<i>`` with ``write_diff``), one group per layer name (the
        first layer of a repeated name); a shared parameter is written only by its owner. The
        file is replaced atomically."""
        import io

        import h5py

        from minicaffe.prototxt import atomic_write_bytes

        bio = io.BytesIO()
        borrowed = {idx for idx, owner in zip(self.param_layer_indices, self.param_owners)
                    if owner != -1}
        with h5py.File(bio, "w") as f:
            groups = [("data", f.create_group("data"))]
            if write_diff:
                groups.append(("diff", f.create_group("diff")))
            for li, layer in enumerate(self.layers):
                for role, group in groups:
                    if layer.name in group:
                        continue
                    lg = group.create_group(layer.name)
                    for i, blob in enumerate(layer.blobs):
                        if (li, i) not in borrowed:
                            arr = backend.to_numpy(blob.data if role == "data" else blob.diff)
                            lg.create_dataset(str(i), data=np.ascontiguousarray(arr))
        atomic_write_bytes(path, bio.getvalue())

    def load_hdf5(self, path) -> CopyReport:
        """Copy parameters from Caffe HDF5 weights (``/data/<layer>/<i>``) by layer name.

        Layers absent from the file keep their values; a dataset may be missing only for a
        parameter shared from another layer (Caffe writes shared parameters once)."""
        import h5py

        from minicaffe.prototxt import HDF5_ERRORS

        path = os.fspath(path)
        report = CopyReport()
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise WeightsError(f"{path}: cannot open as HDF5 weights ({exc})") from None
        try:
            with f:
                self._load_hdf5_groups(f, path, report)
        except HDF5_ERRORS as exc:
            raise WeightsError(
                f"{path}: damaged or not Caffe HDF5 weights ({type(exc).__name__}: {exc}); "
                "expected /data/<layer>/<index> datasets") from None
        log.info("%s: %s", path, report.summary())
        self.last_copy_report = report
        return report

    def _load_hdf5_groups(self, f, path: str, report: CopyReport) -> None:
        import h5py

        if "data" not in f or not isinstance(f["data"], h5py.Group):
            raise WeightsError(f"{path}: not Caffe HDF5 weights: no /data group (expected "
                               "/data/<layer>/<index> datasets)")
        owner_of = dict(zip(self.param_layer_indices, self.param_owners))
        group = f["data"]
        tops = {n.split("/")[0] for n in self._layer_names}
        report.not_in_model = [n for n in group if n not in tops]
        # a repeated layer name: Caffe's name -> layer map keeps the last layer of that name
        last = {name: li for li, name in enumerate(self._layer_names)}
        for li, layer in enumerate(self.layers):
            lg = group.get(layer.name)
            if lg is None or not isinstance(lg, h5py.Group) or last[layer.name] != li:
                if layer.blobs:
                    report.not_in_file.append(layer.name)
                continue
            stored = [k for k in lg if isinstance(lg[k], h5py.Dataset)]
            if len(stored) > len(layer.blobs):
                raise WeightsError(f"{path}: layer '{layer.name}' ({layer.type}) has "
                                   f"{len(stored)} parameter blobs in the file but "
                                   f"{len(layer.blobs)} in the net")
            for pi, blob in enumerate(layer.blobs):
                if str(pi) not in lg:
                    if owner_of.get((li, pi), -1) != -1:
                        continue
                    raise WeightsError(f"{path}: layer '{layer.name}' ({layer.type}) has no "
                                       f"dataset /data/{layer.name}/{pi}; the net has "
                                       f"{len(layer.blobs)} parameter blobs for it")
                arr = np.asarray(lg[str(pi)])
                if tuple(arr.shape) != blob.shape:
                    raise WeightsError(
                        f"{path}: cannot copy param {pi} of layer '{layer.name}' "
                        f"({layer.type}): shape mismatch; the file has {tuple(arr.shape)}, "
                        f"the net expects {blob.shape}")
                blob.data[...] = to_xp(arr, blob.xp, blob.dtype)
            if layer.blobs:
                report.copied.append(layer.name)

    def share_with(self, other: Net) -> None:
        """Share parameter data (not diffs) with ``other``'s layers of the same names (as
        Caffe's ShareTrainedLayersWith: each layer of ``other``, in order, with the first layer
        of its name here)."""
        first = self._first_layer_of_each_name()
        for name, src in zip(other._layer_names, other.layers):
            layer = first.get(name)
            if layer is None or not (layer.blobs or src.blobs):
                continue
            if len(src.blobs) != len(layer.blobs):
                raise WeightsError(f"layer '{layer.name}': {len(src.blobs)} vs "
                                   f"{len(layer.blobs)} parameter blobs; cannot share")
            for i, (a, b) in enumerate(zip(src.blobs, layer.blobs, strict=True)):
                if a.shape != b.shape:
                    raise WeightsError(f"layer '{layer.name}' param {i}: shapes {a.shape} and "
                                       f"{b.shape} differ; cannot share")
                b.share_data(a)

    def to_proto(self, write_diff: bool = False):
        """(NetParameter, per-layer arrays) as Caffe's Net::ToProto would write them."""
        out = caffe_pb2.NetParameter()
        out.name = self.name
        arrays = []
        for layer in self.layers:
            out.layer.add().CopyFrom(layer.layer_param)
            arrays.append([(backend.to_numpy(b.data), backend.to_numpy(b.diff))
                           if write_diff else backend.to_numpy(b.data) for b in layer.blobs])
        return out, arrays

    def save(self, path, write_diff: bool = False) -> None:
        """Write the weights as a binary .caffemodel (atomically)."""
        from minicaffe.prototxt import write_caffemodel

        net, arrays = self.to_proto(write_diff)
        write_caffemodel(path, net, arrays)

    # ------------------------------------------------------------------ inspection
    @property
    def layer_names(self) -> list[str]:
        return list(self._layer_names)

    def layer_device(self, name: str) -> Device:
        return self.layer_dict[name].device

    def __repr__(self) -> str:
        return (f"<Net {self.name!r} phase={'TRAIN' if self.phase == TRAIN else 'TEST'} "
                f"layers={len(self.layers)} device={self.device}>")
