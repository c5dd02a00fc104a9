"""The layer contract (Caffe's, in Python) and the two helper bases most layers use.

A layer is created once per net with its LayerParameter, phase, device and dtype, then driven as:

* ``setup(bottom, top)``: once; read and validate parameters, create ``self.blobs``.
* ``reshape(bottom, top)``: before every forward; size the tops (and scratch buffers).
* ``forward(bottom, top)``: write ``top[i].data``.
* ``backward(top, propagate_down, bottom)``: ASSIGN ``bottom[i].diff`` where
  ``propagate_down[i]``; ACCUMULATE into ``self.blobs[j].diff`` where
  ``self.param_propagate_down[j]``.

``bottom`` and ``top`` are lists of :class:`~minicaffe.blob.Blob`. Arrays come from ``self.xp``
(numpy or cupy), so one implementation serves both engines. A loss layer finds its loss weight in
``top[0].diff`` (Caffe's convention), written there by :meth:`Layer.set_up`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from minicaffe.backend import CPU_DEVICE, Device
from minicaffe.blob import Blob, shape_equals_legacy
from minicaffe.errors import LayerError, ShapeError, WeightsError


class Layer:
    """Base class of every layer. Subclasses are registered with ``@register_layer("Type")``."""

    type_name: ClassVar[str] = ""
    # Caffe's blob-count constraints; -1 means "no constraint".
    exact_num_bottom_blobs: ClassVar[int] = -1
    min_bottom_blobs: ClassVar[int] = -1
    max_bottom_blobs: ClassVar[int] = -1
    exact_num_top_blobs: ClassVar[int] = -1
    min_top_blobs: ClassVar[int] = -1
    max_top_blobs: ClassVar[int] = -1
    equal_num_bottom_top_blobs: ClassVar[bool] = False
    # Loss layers get anonymous tops when the prototxt names fewer than they need.
    auto_top_blobs: ClassVar[bool] = False
    # Loss layers get loss_weight 1 on top 0 when the prototxt gives none.
    is_loss: ClassVar[bool] = False
    # Layers that need host (NumPy) arrays whatever the net's device (Python layers, writers).
    host_only: ClassVar[bool] = False
    # Whether a backward will follow the forward (a net sets it from its backward sweep), so
    # that the forward may keep what the backward would reuse; True for layers run on their own.
    backward_expected: bool = True

    def __init__(
        self,
        layer_param,
        *,
        phase: int | None = None,
        device: Device = CPU_DEVICE,
        dtype=np.float32,
    ):
        from minicaffe.proto import caffe_pb2

        self.layer_param = caffe_pb2.LayerParameter()
        self.layer_param.CopyFrom(layer_param)
        if phase is not None and not self.layer_param.HasField("phase"):
            self.layer_param.phase = phase
        self.phase = self.layer_param.phase
        self.device = device
        self.xp = device.xp
        self.dtype = np.dtype(dtype)
        # Parameter values given in the prototxt/caffemodel replace the fillers.
        self.blobs: list[Blob] = [self.blob_from_proto(b) for b in self.layer_param.blobs]
        self.layer_param.ClearField("blobs")
        self.param_propagate_down: list[bool] = []
        self.loss_weights: list[float] = []

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return self.layer_param.name

    @property
    def type(self) -> str:
        return self.layer_param.type

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} ({self.type})>"

    def where(self) -> str:
        return f"layer '{self.name}' ({self.type})"

    def error(self, message: str, cls: type[Exception] = LayerError) -> Exception:
        """An exception of ``cls`` whose message starts by naming this layer."""
        return cls(f"{self.where()}: {message}")

    # ------------------------------------------------------------------ driver (Caffe's SetUp)
    def set_up(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.check_blob_counts(bottom, top)
        self.setup(bottom, top)
        self.reshape(bottom, top)
        self.set_loss_weights(top)

    def check_blob_counts(self, bottom: list[Blob], top: list[Blob]) -> None:
        nb, nt = len(bottom), len(top)

        def bad(what: str, want: str, got: int) -> Exception:
            return self.error(f"takes {want} {what} blob(s); received {got}", ShapeError)

        if self.exact_num_bottom_blobs >= 0 and nb != self.exact_num_bottom_blobs:
            raise bad("bottom", f"exactly {self.exact_num_bottom_blobs}", nb)
        if self.min_bottom_blobs >= 0 and nb < self.min_bottom_blobs:
            raise bad("bottom", f"at least {self.min_bottom_blobs}", nb)
        if self.max_bottom_blobs >= 0 and nb > self.max_bottom_blobs:
            raise bad("bottom", f"at most {self.max_bottom_blobs}", nb)
        if self.exact_num_top_blobs >= 0 and nt != self.exact_num_top_blobs:
            raise bad("top", f"exactly {self.exact_num_top_blobs}", nt)
        if self.min_top_blobs >= 0 and nt < self.min_top_blobs:
            raise bad("top", f"at least {self.min_top_blobs}", nt)
        if self.max_top_blobs >= 0 and nt > self.max_top_blobs:
            raise bad("top", f"at most {self.max_top_blobs}", nt)
        if self.equal_num_bottom_top_blobs and nb != nt:
            raise self.error(
                f"needs as many tops as bottoms; received {nb} bottoms, {nt} tops", ShapeError
            )

    def set_loss_weights(self, top: list[Blob]) -> None:
        weights = list(self.layer_param.loss_weight)
        if weights and len(weights) != len(top):
            raise self.error(
                f"loss_weight must be given once per top ({len(top)}) or not at all; "
                f"received {len(weights)} values"
            )
        self.loss_weights = weights or [0.0] * len(top)
        for blob, w in zip(top, self.loss_weights, strict=True):
            if w != 0:
                blob.diff.fill(w)

    def loss_weight(self, top_index: int) -> float:
        return self.loss_weights[top_index] if top_index < len(self.loss_weights) else 0.0

    @classmethod
    def needed_auto_tops(cls) -> int:
        return max(cls.exact_num_top_blobs, cls.min_top_blobs)

    def allow_force_backward(self, bottom_index: int) -> bool:
        """False for bottoms that never take a gradient (labels, indices) under force_backward."""
        return True

    # True when reading a bottom in the (C, H, W, N) order pays off only if this layer's tops
    # stay in that order too (see Net._mark_working_layout).
    chwn_needs_held_tops = False

    def takes_chwn(self, bottom_index: int) -> bool:
        """Whether this layer reads bottom ``bottom_index`` (data and diff) in the (C, H, W, N)
        working order when it is held that way (see :class:`Blob`); others see NCHW."""
        return False

    # ------------------------------------------------------------------ the contract
    def setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Read parameters and create ``self.blobs`` (Caffe's LayerSetUp)."""

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement reshape")

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """Default: no gradient. Layers with inputs that can take one must override."""
        if any(propagate_down):
            raise self.error("this layer cannot back-propagate to its bottoms")

    # ------------------------------------------------------------------ parameters
    def new_blob(self, *shape) -> Blob:
        return Blob(*shape, xp=self.xp, dtype=self.dtype)

    def blob_from_proto(self, proto) -> Blob:
        from minicaffe.prototxt import blobproto_to_array

        try:
            arr = blobproto_to_array(proto, dtype=self.dtype)
        except WeightsError as exc:
            raise self.error(f"a blob given in the layer definition: {exc}") from None
        blob = self.new_blob(arr.shape)
        blob.data[...] = self.xp.asarray(arr)
        return blob

    def init_param(self, index: int, shape, filler=None) -> Blob:
        """Create parameter blob ``index`` of ``shape`` filled by ``filler`` (a FillerParameter).

        When the blob was given (prototxt ``blobs`` or weights loaded before setup) its shape is
        checked instead, accepting Caffe's legacy 4-D dims.
        """
        from minicaffe.fillers import fill

        shape = tuple(int(d) for d in shape)
        if index < len(self.blobs):
            blob = self.blobs[index]
            if blob.shape != shape:
                if len(blob.shape) == 4 and shape_equals_legacy(shape, blob.shape):
                    blob.reshape(shape)
                else:
                    raise self.error(
                        f"parameter blob {index} must have shape {shape}; "
                        f"the given blob has shape {blob.shape}",
                        ShapeError,
                    )
            return blob
        if index != len(self.blobs):
            raise self.error(f"parameter blobs must be created in order (asked for {index})")
        blob = self.new_blob(shape)
        fill(blob, filler, layer=self)
        self.blobs.append(blob)
        return blob

    def require_4d(self, blob: Blob) -> tuple[int, int, int, int]:
        """The (num, channels, height, width) of ``blob``; ShapeError naming the layer if the
        blob does not have exactly 4 axes."""
        shape = blob.shape
        if len(shape) != 4:
            raise self.error(
                f"input must have 4 axes (num, channels, height, width); received shape {shape}",
                ShapeError,
            )
        return shape

    def canonical_axis(self, axis: int, num_axes: int) -> int:
        if not -num_axes <= axis < max(num_axes, 1):
            raise self.error(f"axis {axis} is out of range for {num_axes}-axis input", ShapeError)
        return axis % num_axes if num_axes else 0


class NeuronLayer(Layer):
    """One bottom, one top of the same shape; in-place allowed."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)


class LossLayer(Layer):
    """Predictions and targets in, a scalar loss out (loss_weight 1 by default)."""

    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1
    auto_top_blobs = True
    is_loss = True

    def set_loss_weights(self, top: list[Blob]) -> None:
        if not self.layer_param.loss_weight:
            self.layer_param.loss_weight.append(1.0)
        super().set_loss_weights(top)

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise self.error(
                "the data and label should have the same first dimension; received "
                f"{bottom[0].shape} and {bottom[1].shape}",
                ShapeError,
            )
        top[0].reshape(())

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1


def elementwise_io(bottom: Blob, top: Blob):
    """(x, y) arrays for an elementwise forward: flat, in the order the bottom is held when the
    top may hold it too (the top is then marked so), else both in Caffe's order."""
    x, layout = bottom.flat()
    if layout is not None and (top is bottom or top.chwn_ok):
        y, _ = top.flat()
        top.set_layout(layout)
        return x, y
    return bottom.data, top.data


def elementwise_grad_io(bottom: Blob, top: Blob):
    """(x, dy, dx) arrays for an elementwise backward, all in one order (flat when x and dy are
    held in the same working order; dx is then marked so), else all in Caffe's order."""
    x, layout = bottom.flat()
    dy, dlayout = top.flat(diff=True)
    if layout is not None and dlayout == layout and (top is bottom or bottom.chwn_ok):
        dx, _ = bottom.flat(diff=True)
        bottom.set_layout(layout, diff=True)
        return x, dy, dx
    return bottom.data, top.diff, bottom.diff
