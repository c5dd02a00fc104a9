"""What the loss layers share: normalizers, labels, class weights, chunked softmax passes.

Notation (as in the loss docs): the prediction ``x`` is viewed as ``(O, C, I)`` around its class
axis ``a``: ``O = prod(shape[:a])`` (Caffe's outer_num), ``C = shape[a]``, ``I = prod(shape[a+1:])``
(inner_num). A *position* is a pair ``(o, i)``; there are ``O*I`` of them and one label each.

* :func:`normalization_mode` / :func:`normalizer`: Caffe's FULL / VALID / BATCH_SIZE / NONE (always
  at least 1) plus minicaffe's WEIGHTED (the summed class weights of the valid positions).
* :func:`read_labels`: float labels truncated toward zero (C++ ``static_cast<int>``), the ignore
  label, and a :class:`~minicaffe.errors.LabelError` for any other label outside ``[0, C)``
  (Caffe reads out of bounds there).
* :class:`ClassWeights`: Mocha.jl-style class weights (``loss_param.class_weight`` or an extra
  bottom) with LOCAL / GLOBAL / NO weight normalization, and SegNet's ``class_weighting``.
* :class:`LossBase`: the loss-layer base with scratch buffers, an optional second top, and the
  refusal of gradients into label-like bottoms.
* :func:`softmax_lse` / :func:`exp_shifted`: the two memory passes of a softmax loss, run over
  cache-sized chunks (and two threads on NumPy, which releases the GIL inside ufuncs).
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from minicaffe.errors import LabelError, LayerError, ShapeError
from minicaffe.functional import default_threads, with_callers_errstate
from minicaffe.layer import LossLayer
from minicaffe.proto import caffe_pb2

_LP = caffe_pb2.LossParameter
FULL, VALID, BATCH_SIZE, NONE = _LP.FULL, _LP.VALID, _LP.BATCH_SIZE, _LP.NONE
WEIGHTED = _LP.WEIGHTED
LOCAL, GLOBAL, NO = _LP.LOCAL, _LP.GLOBAL, _LP.NO
MODE_NAMES = {
    FULL: "FULL",
    VALID: "VALID",
    BATCH_SIZE: "BATCH_SIZE",
    NONE: "NONE",
    WEIGHTED: "WEIGHTED",
}

# Caffe clamps probabilities before the log: at FLT_MIN in SoftmaxWithLoss (even in double), at
# kLOG_THRESHOLD = 1e-20 in InfogainLoss and MultinomialLogisticLoss.
FLT_MIN = float(np.finfo(np.float32).tiny)
NEG_LOG_FLT_MIN = -math.log(FLT_MIN)  # 87.33654475...
LOG_THRESHOLD = 1e-20
NEG_LOG_THRESHOLD = -math.log(LOG_THRESHOLD)  # 46.0517...


# ---------------------------------------------------------------------------- normalization


def normalization_mode(layer, default: int) -> int:
    """The layer's normalization: ``normalization`` if set, else the legacy ``normalize``
    (true -> VALID, false -> BATCH_SIZE), else ``default``."""
    lp = layer.layer_param.loss_param
    if lp.HasField("normalization"):
        return int(lp.normalization)
    if lp.HasField("normalize"):
        return VALID if lp.normalize else BATCH_SIZE
    return default


def normalizer(mode: int, *, outer: int, inner: int, valid=None, weight_sum=None, xp=np):
    """Caffe's get_normalizer, never below 1, plus WEIGHTED.

    FULL: outer*inner; VALID: the valid count (outer*inner when ``valid`` is None); BATCH_SIZE:
    outer; NONE: 1; WEIGHTED: ``weight_sum`` (the summed weights of the valid positions; the valid
    count when None), or 1 when that sum is 0. Host numbers give a float, device scalars stay on
    the device.
    """
    if mode == FULL:
        return max(1.0, float(outer * inner))
    if mode == BATCH_SIZE:
        return max(1.0, float(outer))
    if mode == NONE:
        return 1.0
    if mode == WEIGHTED and weight_sum is not None:
        if _is_host(weight_sum):
            w = float(weight_sum)
            return w if w > 0 else 1.0
        return xp.where(weight_sum > 0, weight_sum, 1)
    if mode in (VALID, WEIGHTED):
        if valid is None:
            return max(1.0, float(outer * inner))
        if _is_host(valid):
            return max(1.0, float(valid))
        return xp.maximum(valid, 1)
    raise LayerError(f"unknown normalization mode {mode}")


def _is_host(value) -> bool:
    return isinstance(value, (int, float, np.number, np.ndarray))


# ---------------------------------------------------------------------------- shapes and labels


def class_layout(layer, shape: tuple[int, ...], axis: int) -> tuple[int, int, int, int]:
    """(canonical axis, O, C, I) of a prediction of ``shape`` with class axis ``axis``."""
    n = len(shape)
    if n == 0 or not -n <= axis < n:
        raise layer.error(
            f"class axis {axis} is out of range for a {n}-axis prediction of shape "
            f"{shape} (valid: {-n} <= axis < {n})",
            ShapeError,
        )
    a = axis + n if axis < 0 else axis
    return a, math.prod(shape[:a]), shape[a], math.prod(shape[a + 1 :])


def check_label_count(
    layer, x_shape, label_shape, axis: int, outer: int, inner: int, what: str = "label"
) -> None:
    """Caffe's rule: one label per position, i.e. ``count(label) == O*I``."""
    count = math.prod(label_shape)
    if count != outer * inner:
        raise layer.error(
            f"the number of {what}s must equal the number of positions, the product of the "
            f"prediction's axes other than the class axis {axis} (for a prediction (N, C, H, W) "
            f"with axis 1 that is N*H*W labels, each a class index in [0, C)); expected "
            f"{outer * inner} {what}s for prediction shape {tuple(x_shape)}, received {what} "
            f"shape {tuple(label_shape)} ({count} values)",
            ShapeError,
        )


class Labels:
    """Integer labels of every position: ``y`` (ignored positions hold 0), ``valid`` (bool per
    position, None when nothing is ignored) and ``count`` (valid positions: host int on NumPy,
    device scalar on CuPy)."""

    __slots__ = ("y", "valid", "count")

    def __init__(self, y, valid, count):
        self.y, self.valid, self.count = y, valid, count


def read_labels(
    layer, labels, classes: int, ignore_label: int | None, *, out=None, check: bool = True
) -> Labels:
    """Truncate ``labels`` toward zero, mark the ignore label, check the range ``[0, classes)``.

    ``out``: an intp array of ``labels.size`` elements to write ``y`` into (a fresh one if None).
    Raises LabelError naming the layer, the value, its index in the label blob and the range.
    """
    xp = layer.xp
    n = labels.size
    y = out if out is not None else xp.empty((n,), dtype=np.intp)
    valid = None if ignore_label is None else xp.empty((n,), dtype=bool)
    count = read_label_range(layer, labels, y, valid, 0, n, classes, ignore_label, check=check)
    return Labels(y, valid, count)


def read_label_range(
    layer, labels, y, valid, a: int, b: int, classes: int, ignore_label, *, check: bool = True
):
    """Labels ``a..b-1`` (of the flattened ``labels``) into ``y[a:b]`` (truncated toward zero,
    as Caffe's static_cast<int>; 0 where ignored) and ``valid[a:b]`` (when ``valid`` is not
    None); returns how many are valid (a device scalar on CuPy). Raises LabelError for a label
    outside ``[0, classes)`` that is not the ignore label."""
    xp = layer.xp
    ys = y[a:b]
    with np.errstate(invalid="ignore"):
        ys[...] = labels.reshape(-1)[a:b]
    count = b - a
    if valid is not None:
        vs = valid[a:b]
        xp.not_equal(ys, ignore_label, out=vs)
        count = xp.count_nonzero(vs)
        if xp is np:
            count = int(count)
        xp.multiply(ys, vs, out=ys)
    if check and ys.size:
        bad = (ys.min() < 0) | (ys.max() >= classes)
        if bad:  # one host sync on a GPU: a bad label is an error, never a wild read
            _raise_bad_label(layer, labels, y, valid, a, b, classes, ignore_label)
    return count


def _raise_bad_label(layer, labels, y, valid, a, b, classes, ignore_label):
    from minicaffe.backend import to_numpy

    yh, lh = to_numpy(y[a:b]), to_numpy(labels)
    bad = (yh < 0) | (yh >= classes)
    if valid is not None:
        bad &= to_numpy(valid[a:b])
    k = a + int(np.argmax(bad))
    where = tuple(int(i) for i in np.unravel_index(k, lh.shape)) if lh.ndim else ()
    value = lh.reshape(-1)[k]
    ignore = (
        f"the ignore label is {ignore_label}"
        if ignore_label is not None
        else "no ignore_label is set"
    )
    raise layer.error(
        f"label {value:g} at index {where} of the label blob (shape "
        f"{tuple(lh.shape)}) is outside the valid range [0, {classes - 1}] "
        f"({classes} classes) and {ignore}",
        LabelError,
    )


def ignore_label_of(param) -> int | None:
    """``param.ignore_label`` when set (presence matters), else None."""
    return int(param.ignore_label) if param.HasField("ignore_label") else None


# ---------------------------------------------------------------------------- class weights


class ClassWeights:
    """Class weights in the style of Mocha.jl's SoftmaxLossLayer, as LossParameter extensions.

    Sources (at most one): ``loss_param.class_weight`` (C values), SegNet's
    ``weight_by_label_freqs: true`` + ``class_weighting`` (C values, used as given unless
    ``weight_normalization`` is set), or an extra bottom shaped ``(C,)``, like one sample
    (``x.shape[1:]``, class axis >= 1) or like the whole prediction.

    ``weight_normalization`` (default LOCAL): LOCAL rescales the weights at each position so
    the C class weights sum to C; GLOBAL rescales each sample's weights to sum to its element
    count (C x spatial); NO uses them as given. For per-class weights LOCAL and GLOBAL agree.
    Internally weights are a 4-D array ``(Nw, Ow, C, Iw)`` broadcastable against the prediction
    viewed as ``(N, O/N, C, I)``.
    """

    def __init__(self, layer):
        lp = layer.layer_param.loss_param
        self.layer = layer
        self.vector = None  # the given per-class values (host float64), before normalization
        self.source = None
        if lp.class_weight:
            self.vector, self.source = np.asarray(lp.class_weight, np.float64), "class_weight"
        if lp.weight_by_label_freqs or lp.class_weighting:
            if self.source:
                raise layer.error(
                    "give class weights once: loss_param.class_weight or SegNet's "
                    "class_weighting, not both"
                )
            if not lp.weight_by_label_freqs:
                raise layer.error(
                    "loss_param.class_weighting is given but weight_by_label_freqs "
                    "is false; set weight_by_label_freqs: true to use the weights "
                    "(SegNet would ignore them) or remove them"
                )
            if not lp.class_weighting:
                raise layer.error(
                    "weight_by_label_freqs is true but no class_weighting values "
                    "are given (one per class)"
                )
            self.vector, self.source = np.asarray(lp.class_weighting, np.float64), "class_weighting"
        if lp.HasField("weight_normalization"):
            self.mode = int(lp.weight_normalization)
        else:
            self.mode = NO if self.source == "class_weighting" else LOCAL
        if self.vector is not None and (
            np.any(self.vector < 0) or not np.all(np.isfinite(self.vector))
        ):
            raise layer.error(
                f"loss_param.{self.source} must be finite and >= 0; received {self.vector.tolist()}"
            )
        self._param = None  # normalized (1, 1, C, 1) xp array
        self._param_key = None

    @property
    def from_param(self) -> bool:
        return self.vector is not None

    def check_unused(self, has_bottom: bool) -> None:
        lp = self.layer.layer_param.loss_param
        if has_bottom and self.from_param:
            raise self.layer.error(
                f"class weights are given twice: loss_param.{self.source} and "
                "a weight bottom; give one of them"
            )
        if not (has_bottom or self.from_param) and lp.HasField("weight_normalization"):
            raise self.layer.error(
                "loss_param.weight_normalization is set but no class weights "
                "are given (loss_param.class_weight or a weight bottom)"
            )

    def param_weights(self, classes: int, dtype):
        """The (normalized) per-class weights as a ``(1, 1, C, 1)`` xp array."""
        if len(self.vector) != classes:
            raise self.layer.error(
                f"loss_param.{self.source} has {len(self.vector)} values but "
                f"the prediction has {classes} classes",
                ShapeError,
            )
        key = (classes, np.dtype(dtype))
        if self._param is None or self._param_key != key:
            w = self.vector.reshape(1, 1, classes, 1)
            w = _normalize_weights(np, w, self.mode, classes)
            self._param = self.layer.xp.asarray(w.astype(dtype))
            self._param_key = key
        return self._param

    def check_bottom_shape(self, w_shape, x_shape, axis: int, N: int, Ow: int, C: int, I: int):
        """The 4-D view shape of a weight bottom, or a ShapeError naming the accepted shapes."""
        w_shape, x_shape = tuple(w_shape), tuple(x_shape)
        if w_shape == (C,):
            return (1, 1, C, 1)
        if axis >= 1 and w_shape == x_shape[1:]:
            return (1, Ow, C, I)
        if w_shape == x_shape:
            return (N, Ow, C, I)
        one = f", {x_shape[1:]} (one sample)" if axis >= 1 else ""
        raise self.layer.error(
            f"the weight bottom must have shape ({C},) (one weight per class)"
            f"{one} or {x_shape} (like the prediction); received {w_shape}",
            ShapeError,
        )

    def bottom_weights(self, w, view_shape, classes: int):
        """A weight bottom's values, checked (>= 0) and normalized, in its 4-D view."""
        xp = self.layer.xp
        w4 = w.reshape(view_shape)
        if w4.size and not bool(xp.isfinite(w4).all() & (w4.min() >= 0)):
            bad = float(w4.min()) if bool(xp.isfinite(w4).all()) else "a NaN or infinity"
            raise self.layer.error(
                f"class weights must be finite and >= 0; the weight bottom holds {bad}"
            )
        return _normalize_weights(xp, w4, self.mode, classes)


def _normalize_weights(xp, w4, mode: int, classes: int):
    """Mocha's weight normalization of a ``(Nw, Ow, C, Iw)`` array (zero sums stay zero)."""
    if mode == NO:
        return w4
    if mode == LOCAL or (w4.shape[1] == 1 and w4.shape[3] == 1):
        total = w4.sum(axis=2, keepdims=True)
        target = classes
    elif mode == GLOBAL:
        total = w4.sum(axis=(1, 2, 3), keepdims=True)
        target = w4[0].size
    else:
        raise LayerError(f"unknown weight_normalization {mode}")
    scale = xp.where(total > 0, target / xp.where(total > 0, total, 1), 0)
    return w4 * scale.astype(w4.dtype)


# ---------------------------------------------------------------------------- the base class


class LossBase(LossLayer):
    """LossLayer plus scratch buffers, the optional second top, and refused label gradients.

    ``label_bottoms``: {bottom index: description} of bottoms that never take a gradient;
    ``backward`` raises when one is asked for. ``loss_params``: the LossParameter fields the
    layer honours; any other one that is set raises at setup (nothing is silently ignored).
    """

    label_bottoms: dict[int, str] = {1: "label"}
    loss_params: frozenset[str] = frozenset()

    def setup(self, bottom, top):
        self._scratch: dict[str, object] = {}
        self._views: dict[tuple, object] = {}
        lp = self.layer_param.loss_param
        for field, _ in lp.ListFields():
            if field.name not in self.loss_params:
                raise self.error(
                    f"loss_param.{field.name} is not supported by {self.type}; it "
                    f"accepts {', '.join(sorted(self.loss_params)) or 'none'}"
                )

    def set_loss_weights(self, top):
        # A second top (the probabilities) gets weight 0 when no loss_weight is given, so the
        # two-top form works (in BVLC it fails setup: one weight is added for two tops).
        if not self.layer_param.loss_weight and len(top) == 2:
            self.layer_param.loss_weight.extend([1.0, 0.0])
        super().set_loss_weights(top)

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index not in self.label_bottoms

    def refuse_label_gradients(self, propagate_down) -> None:
        for i, what in self.label_bottoms.items():
            if i < len(propagate_down) and propagate_down[i]:
                raise self.error(
                    f"cannot back-propagate to the {what} input (bottom {i}); set "
                    f"propagate_down: false for it"
                )

    def scratch(self, name: str, shape: tuple, dtype=None):
        """A reused array of ``shape`` (grown only when a larger one is needed)."""
        key = (name, shape, dtype)
        view = self._views.get(key)
        if view is not None:
            return view
        dtype = np.dtype(dtype or self.dtype)
        size = math.prod(shape)
        buf = self._scratch.get(name)
        if buf is None or buf.dtype != dtype or buf.size < size:
            buf = self.xp.empty(max(size, 1), dtype=dtype)
            self._scratch[name] = buf
            self._views = {k: v for k, v in self._views.items() if k[0] != name}
        view = self._views[key] = buf[:size].reshape(shape)
        return view

    def lambda_over(self, top, n):
        """loss_weight / normalizer: a float on NumPy, a device scalar on CuPy."""
        lam = top[0].diff
        if self.xp is np:
            return float(lam) / float(n)
        return lam / n


class Targets:
    """The per-position targets of a class loss, computed once per forward.

    ``labels`` (:class:`Labels`); ``idx``: flat index into x of every position's true-class
    entry (class 0 at ignored positions); ``w4``: the normalized class weights (4-D view) or
    None; ``a_true``: the weight of each position's true-class term (float), zero where ignored
    (None when every position weighs 1); ``n``: the normalizer. When built with ``defer``, the
    positions are filled range by range (:meth:`ClassLossBase.fill_targets`, e.g. from the
    chunks of a pass) and ``labels.count`` is summed by :meth:`ClassLossBase.finish`.
    """

    __slots__ = ("labels", "idx", "w4", "a_true", "n", "source", "counts")


class ClassLossBase(LossBase):
    """A loss over a class axis with Caffe's ignore_label and normalization, minicaffe's class
    weights (a loss_param field or an optional third bottom) and label smoothing.

    Subclasses call :meth:`setup_classes` in ``setup`` and :meth:`layout` in ``reshape``; in
    ``forward`` :meth:`targets` gives the labels, true-class indices and weights, and
    :meth:`finish` the normalizer.
    """

    min_bottom_blobs, max_bottom_blobs = 2, 3
    exact_num_bottom_blobs = -1
    label_bottoms = {1: "label", 2: "class weight"}
    loss_params = frozenset(
        {
            "ignore_label",
            "normalization",
            "normalize",
            "class_weight",
            "weight_normalization",
            "label_smoothing",
            "weight_by_label_freqs",
            "class_weighting",
        }
    )
    weight_bottom = True

    def setup_classes(self, bottom, default_mode: int) -> None:
        lp = self.layer_param.loss_param
        self.ignore_label = ignore_label_of(lp)
        self.mode = normalization_mode(self, default_mode)
        self.eps = float(lp.label_smoothing)
        if not 0.0 <= self.eps <= 1.0:
            raise self.error(f"loss_param.label_smoothing must be in [0, 1]; received {self.eps}")
        self.weights = ClassWeights(self)
        self.has_weight_bottom = self.weight_bottom and len(bottom) == 3
        self.weights.check_unused(self.has_weight_bottom)
        self._key = None

    def layout(self, bottom, axis: int, O: int, C: int, I: int, x_shape=None, w_shape=None) -> None:
        """Record (axis, O, C, I) and N, check the weight bottom, cache the position indices.

        ``x_shape``/``w_shape``: the prediction and weight shapes to check (default: the
        bottoms'), for layers that view their input differently.
        """
        x_shape = tuple(x_shape or bottom[0].shape)
        self.axis, self.O, self.C, self.I = axis, O, C, I
        self.N = x_shape[0] if axis >= 1 and x_shape else 1
        if self.has_weight_bottom:
            self._w_view = self.weights.check_bottom_shape(
                w_shape or bottom[2].shape, x_shape, axis, self.N, O // self.N, C, I
            )
        elif self.weights.from_param:
            self.weights.param_weights(C, self.dtype)
        if self._key != (O, C, I):
            xp = self.xp
            self._key = (O, C, I)
            self.plan = ChunkPlan(xp, O, C, I)
            base = xp.arange(O, dtype=np.intp)[:, None] * (C * I) + xp.arange(I, dtype=np.intp)
            self._base = base.reshape(-1)

    def class_weights(self, bottom):
        """The normalized class weights (4-D view), or None."""
        if self.weights.from_param:
            return self.weights.param_weights(self.C, self.dtype)
        if self.has_weight_bottom:
            return self.weights.bottom_weights(bottom[2].data, self._w_view, self.C)
        return None

    def targets(self, bottom, w4="auto", *, defer: bool = False) -> Targets:
        """Labels, true-class indices and weights of every position (see :class:`Targets`)."""
        O, I = self.O, self.I
        n = O * I
        t = Targets()
        valid = None if self.ignore_label is None else self.scratch("valid", (n,), bool)
        t.labels = Labels(self.scratch("y", (n,), np.intp), valid, None)
        t.idx = self.scratch("idx", (n,), np.intp)
        t.w4 = self.class_weights(bottom) if isinstance(w4, str) else w4
        # a float array (not the bool mask): products with it stay in the layer's dtype
        t.a_true = None if valid is None and t.w4 is None else self.scratch("wy", (n,))
        t.source, t.counts, t.n = bottom[1].data, [], None
        if not defer:
            self.fill_targets(t, 0, n)
        return t

    def fill_targets(self, t: Targets, a: int, b: int) -> None:
        """Fill the targets of positions ``a..b-1`` (thread-safe for disjoint ranges)."""
        xp, labels = self.xp, t.labels
        t.counts.append(
            read_label_range(
                self, t.source, labels.y, labels.valid, a, b, self.C, self.ignore_label
            )
        )
        idx = t.idx[a:b]
        xp.multiply(labels.y[a:b], self.I, out=idx)
        idx += self._base[a:b]
        if t.w4 is not None:
            self._gather(t.w4, labels.y[a:b], idx, t.a_true[a:b])
            if labels.valid is not None:
                t.a_true[a:b] *= labels.valid[a:b]
        elif t.a_true is not None:
            xp.copyto(t.a_true[a:b], labels.valid[a:b])

    def _gather(self, w4, y, idx, out):
        """w[y] at positions, from the 4-D weight view (per class, one sample or full)."""
        xp = self.xp
        if w4.shape[1] == 1 and w4.shape[3] == 1:
            xp.take(w4.reshape(-1), y, out=out)
        elif w4.shape[0] == 1:
            xp.take(w4.reshape(-1), idx % w4.size, out=out)
        else:
            xp.take(w4.reshape(-1), idx, out=out)

    def finish(self, t: Targets):
        """Set and return ``t.n``, the normalizer of this forward."""
        if t.labels.count is None:
            t.labels.count = sum(t.counts) if t.labels.valid is not None else self.O * self.I
        weight_sum = None
        if self.mode == WEIGHTED:
            weight_sum = t.labels.count if t.w4 is None else t.a_true.sum()
            if self.xp is np:
                weight_sum = float(weight_sum)
        t.n = normalizer(
            self.mode,
            outer=self.O,
            inner=self.I,
            valid=t.labels.count,
            weight_sum=weight_sum,
            xp=self.xp,
        )
        return t.n

    def smoothing(self, t: Targets, neg_log):
        """Label smoothing parts, given ``neg_log`` = -log p as (N, O/N, C, I) or a callable
        giving sum_c w_c * -log p_c for a weight array w (broadcastable) or None (all 1).

        Returns (per-position sum_c w_c * -log p_c with zeros where ignored, the per-position
        sum_c w_c with zeros where ignored).
        """
        xp = self.xp
        shape = (self.N, self.O // self.N, self.I)
        wsum = self.C if t.w4 is None else t.w4.sum(axis=2)
        smooth = neg_log(t.w4)
        smooth = xp.broadcast_to(smooth, shape).reshape(-1)
        wsum = xp.broadcast_to(xp.asarray(wsum, dtype=self.dtype), shape).reshape(-1)
        if t.labels.valid is not None:
            smooth = smooth * t.labels.valid
            wsum = wsum * t.labels.valid
        return smooth, wsum

    def view4(self, arr):
        """``arr`` (any layout of x) as (N, O/N, C, I)."""
        return arr.reshape(self.N, self.O // self.N, self.C, self.I)

    def valid4(self, t: Targets):
        """The valid mask as (N, O/N, 1, I), or None."""
        v = t.labels.valid
        return None if v is None else v.reshape(self.N, self.O // self.N, 1, self.I)


# ---------------------------------------------------------------------------- chunked passes

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
CHUNK_ELEMENTS = 1 << 17  # 512 KB of float32: a chunk and its exponentials stay in L2
PARALLEL_MIN = 1 << 19  # below this many elements one thread is faster


def num_threads() -> int:
    """Threads for NumPy loss passes (functional.default_threads: MINICAFFE_NUM_THREADS, else
    the cores OpenBLAS's threads leave free, at most 2)."""
    return default_threads()


def _get_pool(n: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < n:
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="minicaffe-loss")
        return _pool


class ChunkPlan:
    """Slices of an ``(O, C, I)`` array into chunks of about ``CHUNK_ELEMENTS`` elements, shared
    by ``workers`` threads that each take the next chunk when done with one (so a core taken by
    another process slows the pass down instead of stalling it). On a GPU the whole array is one
    chunk.

    A chunk is ``(o slice, i slice, a, b, contiguous)``: it covers the positions ``a..b-1`` of
    the flattened (O*I) position list, so per-position work (label gathers and scatters) can
    run while the chunk is in cache.
    """

    def __init__(self, xp, O: int, C: int, I: int, *, target: int | None = None):
        target = CHUNK_ELEMENTS if target is None else target
        self.key = (O, C, I)
        total = O * C * I
        if xp is not np or total <= target:
            self.chunks = [(slice(None), slice(None), 0, O * I, True)]
        elif C * I <= target:
            rows = max(1, target // (C * I))
            self.chunks = [
                (slice(o, min(O, o + rows)), slice(None), o * I, min(O, o + rows) * I, True)
                for o in range(0, O, rows)
            ]
        else:
            cols = max(1, target // C)
            self.chunks = [
                (
                    slice(o, o + 1),
                    slice(i, min(I, i + cols)),
                    o * I + i,
                    o * I + min(I, i + cols),
                    I == 1,
                )
                for o in range(O)
                for i in range(0, I, cols)
            ]
        threads = num_threads() if xp is np and total >= PARALLEL_MIN else 1
        self.workers = min(threads, len(self.chunks))
        self.chunk_size = max(1, total if len(self.chunks) == 1 else max(target, C))
        self.index = {c[2]: k for k, c in enumerate(self.chunks)}  # first position -> chunk
        self.shifted = [False] * len(self.chunks)  # whether a chunk needed a shift last time

    def run(self, fn) -> None:
        """``fn(worker, chunks)`` in every worker (the calling thread is worker 0), ``chunks``
        yielding the chunks the worker takes, until all are done."""
        if self.workers == 1:
            fn(0, self.chunks)
            return
        lock = threading.Lock()
        remaining = iter(self.chunks)

        def take():
            while True:
                with lock:
                    chunk = next(remaining, None)
                if chunk is None:
                    return
                yield chunk

        worker = with_callers_errstate(fn)
        pool = _get_pool(self.workers - 1)
        futures = [pool.submit(worker, j, take()) for j in range(1, self.workers)]
        error = None
        try:
            fn(0, take())
        except BaseException as exc:  # let the other workers finish first, then raise
            error = exc
        for f in futures:
            try:
                f.result()
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error


def softmax_pass(
    xp,
    x3,
    lse3,
    inv3,
    plan: ChunkPlan,
    *,
    keep=None,
    scratch=None,
    gather=None,
    pre=None,
    post=None,
) -> None:
    """One pass of the softmax over x3 (O, C, I) along axis 1, chunk by chunk.

    Writes per position ``lse3 = log(sum_c exp(x))`` and ``inv3 = 1 / sum_c exp(x - m)``, both
    (O, 1, I), and, when ``keep`` (O, C, I) is given, ``keep = exp(x - m)``, so that
    ``softmax = keep * inv3``. The shift ``m`` is 0 (plain ``exp(x)``: no maximum pass) unless
    a position's sum leaves [sqrt(tiny), 1/sqrt(tiny)]; then the chunk is redone with
    per-position maxima (and starts that way next time, while its maximum stays large). Without
    ``keep`` the exponentials go to ``scratch`` (one chunk-sized buffer per thread group).

    Per chunk, while it is in cache: ``pre(a, b)`` before (positions a..b-1), then ``gather =
    (flat x, idx, out)``: ``out[a:b] = flat_x[idx[a:b]]``, then ``post(a, b)``.
    """
    if x3.size == 0:
        return
    if xp is not np:  # one pass with per-position maxima; no host check
        n = lse3.size
        if pre is not None:
            pre(0, n)
        m = x3.max(axis=1, keepdims=True)
        e = keep if keep is not None else scratch[0][: x3.size].reshape(x3.shape)
        xp.subtract(x3, m, out=e)
        xp.exp(e, out=e)
        xp.sum(e, axis=1, keepdims=True, out=inv3)
        xp.log(inv3, out=lse3)
        lse3 += m
        xp.reciprocal(inv3, out=inv3)
        if gather is not None:
            xp.take(gather[0], gather[1], out=gather[2])
        if post is not None:
            post(0, n)
        return
    ones = _ones(x3.shape[1], x3.dtype)
    safe = _SAFE_SUM[lse3.dtype.char]
    no_shift_max = _NO_SHIFT_MAX[lse3.dtype.char]

    def work(j, chunks):
        for so, si, a, b, contiguous in chunks:
            if pre is not None:
                pre(a, b)
            k = plan.index[a]
            xc, lc, ic = x3[so, :, si], lse3[so, :, si], inv3[so, :, si]
            if keep is not None:
                e = keep[so, :, si]
            else:
                e = scratch[j][: xc.size].reshape(xc.shape)
            if plan.shifted[k]:  # needed a shift last time: still?
                top = xc.max() if contiguous else xc.max(axis=1).max()
                plan.shifted[k] = not top < no_shift_max
            if not plan.shifted[k]:  # plain exp(x): no max pass, no subtraction
                np.exp(xc, out=e)
                _class_sum(e, ic, ones)
                plan.shifted[k] = not (ic.min() >= safe and ic.max() <= 1 / safe)
                m = 0
            if plan.shifted[k]:  # stable form: shift by each position's maximum
                m = xc.max(axis=1, keepdims=True)
                np.subtract(xc, m, out=e)
                np.exp(e, out=e)
                _class_sum(e, ic, ones)
            np.log(ic, out=lc)
            lc += m
            np.reciprocal(ic, out=ic)
            if gather is not None:
                np.take(gather[0], gather[1][a:b], out=gather[2][a:b])
            if post is not None:
                post(a, b)

    with np.errstate(under="ignore", over="ignore", invalid="ignore"):
        plan.run(work)


_ONES: dict = {}


def _ones(n: int, dtype):
    key = (n, np.dtype(dtype).char)
    if key not in _ONES:
        _ONES[key] = np.ones((n, 1), dtype=dtype)
    return _ONES[key]


def _class_sum(e, out, ones) -> None:
    """``out = e.sum(axis=1, keepdims=True)`` for e (r, C, i), through BLAS (several times
    faster than a NumPy reduction over the middle axis)."""
    if e.shape[2] == 1:
        np.matmul(e[:, :, 0], ones, out=out[:, :, 0])
    else:
        np.matmul(ones.T, e, out=out)


# sums below sqrt(tiny) mean the chunk's shift was far above this position's maximum
_SAFE_SUM = {
    "f": float(np.sqrt(np.finfo(np.float32).tiny)),
    "d": float(np.sqrt(np.finfo(np.float64).tiny)),
    "e": float(np.sqrt(np.finfo(np.float16).tiny)),
}
# chunk maxima below these may need no shift (sums stay below 1/_SAFE_SUM): tried again
_NO_SHIFT_MAX = {k: float(np.log(1 / v)) - 4 for k, v in _SAFE_SUM.items()}


def scale_positions(xp, e3, f3, out3, plan: ChunkPlan, *, scatter=None, pre=None) -> None:
    """``out3 = e3 * f3`` with f3 one factor per position (O, 1, I), chunk by chunk.

    With ``e3 = exp(x - m)`` from :func:`softmax_pass` and ``f3 = c * inv3`` this is
    ``c * softmax(x)``. Per chunk: ``pre(a, b)`` first (e.g. to compute the factors of
    positions a..b-1), then the product, then with ``scatter = (idx, v)``
    ``out3.flat[idx[a:b]] -= v`` (v a scalar or one value per position) while in cache.
    """
    if e3.size == 0:
        return
    flat = out3.reshape(-1)
    vector = scatter is not None and getattr(scatter[1], "ndim", 0) > 0

    def work(j, chunks):
        for so, si, a, b, _ in chunks:
            if pre is not None:
                pre(a, b)
            xp.multiply(e3[so, :, si], f3[so, :, si], out=out3[so, :, si])
            if scatter is not None:
                flat[scatter[0][a:b]] -= scatter[1][a:b] if vector else scatter[1]

    if xp is not np:
        work(0, plan.chunks)
        return
    plan.run(work)
