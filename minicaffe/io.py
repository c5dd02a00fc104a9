"""pycaffe's ``caffe.io``: images in, net inputs out, and protobuf <-> array conversions.

Images are float arrays H x W x K with values in [0, 1] and channels in RGB order, as skimage
loads them (:func:`load_image`). :class:`Transformer` turns them into Caffe's layout (K x H x W,
usually BGR, scaled to [0, 255] and mean-subtracted) and back.
"""

from __future__ import annotations

import numpy as np
from google.protobuf.message import DecodeError

from minicaffe.errors import DataError, ShapeError, WeightsError
from minicaffe.proto import caffe_pb2


class BlobProtoError(WeightsError, ValueError):
    """A BlobProto whose values and shape do not fit together."""


class DatumError(DataError, ValueError):
    """An array that cannot become a Datum (or a Datum that cannot become an array)."""


class TransformerError(ShapeError, ValueError):
    """A Transformer setting or input that does not fit the net input it is for."""


# ---------------------------------------------------------------- protobuf <-> arrays


def blobproto_to_array(blob, return_diff: bool = False) -> np.ndarray:
    """The data (or diff) of a BlobProto as a float64 array of the blob's shape.

    The shape is the legacy num/channels/height/width when any of them is set, else
    ``shape.dim``. BlobProtoError (a ValueError) when the value count does not fit the shape.
    """
    values = blob.double_diff if return_diff else blob.double_data
    if not len(values):
        values = blob.diff if return_diff else blob.data
    arr = np.array(values, dtype=np.float64)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = tuple(blob.shape.dim)
    if arr.size != int(np.prod(shape)):
        what = "diff" if return_diff else "data"
        raise BlobProtoError(
            f"BlobProto holds {arr.size} {what} values but its shape {shape} "
            f"needs {int(np.prod(shape))}"
        )
    return arr.reshape(shape)


def array_to_blobproto(arr, diff=None):
    """A BlobProto with ``shape`` = arr.shape and the values (and ``diff``) as floats."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(arr.astype(np.float32).ravel().tolist())
    if diff is not None:
        diff = np.asarray(diff)
        if diff.size != arr.size:
            raise BlobProtoError(f"diff has {diff.size} values but the data has {arr.size}")
        blob.diff.extend(diff.astype(np.float32).ravel().tolist())
    return blob


def arraylist_to_blobprotovector_str(arraylist) -> bytes:
    """Serialized BlobProtoVector of the arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(a) for a in arraylist)
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(data: bytes) -> list[np.ndarray]:
    """The arrays of a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    try:
        vec.ParseFromString(data)
    except DecodeError as exc:
        raise BlobProtoError(f"not a serialized BlobProtoVector ({exc})") from None
    return [blobproto_to_array(b) for b in vec.blobs]


def array_to_datum(arr, label=None):
    """A Datum from a 3-D array C x H x W: uint8 arrays go to ``data`` (bytes), any other dtype
    to ``float_data``. ``label`` is set when given."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise DatumError(
            f"array_to_datum needs a 3-D array (channels, height, width); received "
            f"shape {arr.shape}"
        )
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = np.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float64).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum) -> np.ndarray:
    """A Datum's values as C x H x W: uint8 from ``data``, else float64 from ``float_data``.

    Encoded datums (``encoded: true``) hold a compressed image: decode those with
    minicaffe.data's image helpers instead.
    """
    shape = (datum.channels, datum.height, datum.width)
    if datum.encoded:
        raise DatumError(
            "datum_to_array: this Datum holds an encoded (compressed) image; "
            "decode it with minicaffe.data.image_io.datum_to_array"
        )
    if len(datum.data):
        arr = np.frombuffer(datum.data, dtype=np.uint8)
    else:
        arr = np.array(datum.float_data, dtype=np.float64)
    if arr.size != int(np.prod(shape)):
        raise DatumError(
            f"Datum holds {arr.size} values but channels x height x width = "
            f"{shape} needs {int(np.prod(shape))}"
        )
    return arr.reshape(shape).copy()


# ---------------------------------------------------------------- images


def load_image(filename, color: bool = True) -> np.ndarray:
    """An image file as float32 H x W x K in [0, 1] (skimage's convention).

    ``color``: True gives RGB (K = 3; grey images are repeated on 3 channels, alpha dropped);
    False gives grey (K = 1; colour images converted with luminance weights 0.2125 R +
    0.7154 G + 0.0721 B, as skimage's rgb2gray).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(filename) as img:
            img.load()
            arr = _pil_to_float(img)
    except FileNotFoundError:
        raise DataError(f"{filename}: no such image file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{filename}: cannot read as an image ({exc})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] in (2, 4):  # grey+alpha or RGBA: drop alpha
        arr = arr[:, :, :-1]
    if color:
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 3:
        weights = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
        arr = (arr @ weights)[:, :, None]
    return np.ascontiguousarray(arr, dtype=np.float32)


def _pil_to_float(img) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img, dtype=np.float64).astype(np.float32) / 65535.0
    if mode == "I":
        arr = np.asarray(img)
        top = 65535.0 if arr.max(initial=0) <= 65535 else float(2**31 - 1)
        return arr.astype(np.float32) / top
    if mode == "F":
        return np.asarray(img, dtype=np.float32)
    if mode == "1":
        return np.asarray(img, dtype=np.float32)
    if mode not in ("L", "LA", "RGB", "RGBA"):
        img = img.convert("RGBA" if "transparency" in img.info or "A" in mode else "RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


def _linear_axis(n_in: int, n_out: int):
    """Source indices and weights for resampling one axis with pixel-centre alignment."""
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def resize_image(im, new_dims, interp_order: int = 1) -> np.ndarray:
    """Resize H x W x K ``im`` to ``new_dims`` = (height, width); float32 out.

    interp_order 1: bilinear with pixel-centre alignment and edge replication (skimage's
    resize with mode="edge"); 0: nearest neighbour. Other orders use SciPy's spline zoom
    when SciPy is installed.
    """
    im = np.asarray(im, dtype=np.float32)
    if im.ndim not in (2, 3):
        raise ShapeError(f"resize_image needs an H x W (x K) image; received shape {im.shape}")
    h, w = int(new_dims[0]), int(new_dims[1])
    if h <= 0 or w <= 0:
        raise ShapeError(f"resize_image: new_dims must be positive; received {tuple(new_dims)}")
    squeeze = im.ndim == 2
    if squeeze:
        im = im[:, :, None]
    if im.shape[:2] == (h, w):
        out = im.copy()
    elif interp_order == 0:
        rows = np.minimum(((np.arange(h) + 0.5) * im.shape[0] / h).astype(np.intp), im.shape[0] - 1)
        cols = np.minimum(((np.arange(w) + 0.5) * im.shape[1] / w).astype(np.intp), im.shape[1] - 1)
        out = im[rows][:, cols]
    elif interp_order == 1:
        r0, r1, wr = _linear_axis(im.shape[0], h)
        c0, c1, wc = _linear_axis(im.shape[1], w)
        rows = im[r0] * (1 - wr)[:, None, None] + im[r1] * wr[:, None, None]
        out = rows[:, c0] * (1 - wc)[None, :, None] + rows[:, c1] * wc[None, :, None]
    else:
        try:
            from scipy.ndimage import zoom
        except ImportError:
            raise ShapeError(
                f"resize_image: interp_order {interp_order} needs SciPy; orders 0 "
                "and 1 work without it"
            ) from None
        scale = (h / im.shape[0], w / im.shape[1], 1)
        out = zoom(im, scale, order=interp_order)
    out = out.astype(np.float32, copy=False)
    return out[:, :, 0] if squeeze else out


def oversample(images, crop_dims) -> np.ndarray:
    """Ten crops per image: the four corners and the centre, then the same five mirrored.

    ``images``: N x H x W x K (or a list of equal-size H x W x K). Returns (10 N) x ch x cw x K
    float32, image by image in that order.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ShapeError(f"oversample needs N x H x W x K images; received shape {images.shape}")
    n, h, w, k = images.shape
    ch, cw = int(crop_dims[0]), int(crop_dims[1])
    if ch > h or cw > w:
        raise ShapeError(f"oversample: crop {ch}x{cw} is larger than the images ({h}x{w})")
    cy, cx = h / 2.0, w / 2.0
    starts = [
        (0, 0),
        (0, w - cw),
        (h - ch, 0),
        (h - ch, w - cw),
        (int(cy - ch / 2.0), int(cx - cw / 2.0)),
    ]
    five = np.stack([images[:, y : y + ch, x : x + cw, :] for y, x in starts], axis=1)
    ten = np.concatenate([five, five[:, :, :, ::-1, :]], axis=1)
    return np.ascontiguousarray(ten.reshape(n * 10, ch, cw, k))


# ---------------------------------------------------------------- Transformer


class Transformer:
    """Prepare images for a net's inputs and undo it: pycaffe's ``caffe.io.Transformer``.

    ``inputs``: {input name: input blob shape (N, K, H, W)}. Per input, optionally:
    transpose (axis order, e.g. (2, 0, 1) for H x W x K -> K x H x W), channel_swap (e.g.
    (2, 1, 0) for RGB -> BGR), raw_scale (e.g. 255), mean (K values or K x H x W), input_scale.

    preprocess: float32 -> resize to (H, W) -> transpose -> channel swap -> x raw_scale ->
    - mean -> x input_scale. deprocess applies the inverses in reverse order.
    """

    def __init__(self, inputs: dict):
        self.inputs = {name: tuple(int(d) for d in shape) for name, shape in inputs.items()}
        self.transpose: dict = {}
        self.channel_swap: dict = {}
        self.raw_scale: dict = {}
        self.mean: dict = {}
        self.input_scale: dict = {}

    def _check_input(self, name: str) -> None:
        if name not in self.inputs:
            raise TransformerError(f"{name!r} is not one of the net inputs: {list(self.inputs)}")

    def preprocess(self, in_: str, data) -> np.ndarray:
        """One image (H x W x K) as the net input ``in_`` expects it (K x H x W)."""
        self._check_input(in_)
        out = np.array(data, dtype=np.float32)  # a copy: the caller's image stays untouched
        if out.ndim == 2:  # a grey image without its channel axis (H x W x 1 in pycaffe)
            out = out[:, :, None]
        if out.ndim != 3:
            raise TransformerError(f"preprocess({in_!r}): expected one image H x W x K; "
                                   f"received shape {out.shape}")
        size = self.inputs[in_][2:]
        if out.shape[:2] != size and len(size) == 2:
            out = resize_image(out, size)
        transpose = self.transpose.get(in_)
        if transpose is not None:
            out = out.transpose(transpose)
        if transpose is not None:
            self.check_channels(in_, out.shape[0], f"preprocess({in_!r}): the image")
        swap = self.channel_swap.get(in_)
        if swap is not None:
            out = out[list(swap), :, :]
        return self.scale_and_center(in_, out)

    def check_channels(self, in_: str, found: int, what: str) -> None:
        """Raise TransformerError when ``found`` channels (after the transpose) differ from the
        input's; ``what`` names the images in the message."""
        channels = self.inputs[in_][1] if len(self.inputs[in_]) > 1 else None
        if channels is not None and found != channels:
            raise TransformerError(
                f"{what} has {found} channels but the input {in_!r} takes {channels} (load "
                "colour images with load_image(color=True), or grey ones with color=False)")

    def scale_and_center(self, in_: str, out: np.ndarray) -> np.ndarray:
        """The raw scale, mean subtraction and input scale of :meth:`preprocess`, in place on
        ``out`` (K x H x W, or N x K x H x W: the mean broadcasts over the items)."""
        raw_scale = self.raw_scale.get(in_)
        if raw_scale is not None:
            out *= raw_scale
        mean = self.mean.get(in_)
        if mean is not None:
            out -= mean
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            out *= input_scale
        return out

    def deprocess(self, in_: str, data) -> np.ndarray:
        """Undo :meth:`preprocess` for one net input (K x H x W, leading 1s squeezed)."""
        self._check_input(in_)
        out = np.array(data, dtype=np.float32).squeeze()
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            out /= input_scale
        mean = self.mean.get(in_)
        if mean is not None:
            out += mean
        raw_scale = self.raw_scale.get(in_)
        if raw_scale is not None:
            out /= raw_scale
        swap = self.channel_swap.get(in_)
        if swap is not None:
            out = out[np.argsort(swap), :, :]
        transpose = self.transpose.get(in_)
        if transpose is not None:
            out = out.transpose(np.argsort(transpose))
        return out

    def set_transpose(self, in_: str, order) -> None:
        """Axis order applied to the image, e.g. (2, 0, 1) for H x W x K -> K x H x W."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise TransformerError(
                f"transpose order {tuple(order)} must have "
                f"{len(self.inputs[in_]) - 1} axes (the input {in_!r} is "
                f"{self.inputs[in_]})"
            )
        self.transpose[in_] = tuple(order)

    def set_channel_swap(self, in_: str, order) -> None:
        """Channel order after transposing, e.g. (2, 1, 0) for RGB -> BGR."""
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise TransformerError(
                f"channel swap {tuple(order)} must list "
                f"{self.inputs[in_][1]} channels (the input {in_!r} is "
                f"{self.inputs[in_]})"
            )
        self.channel_swap[in_] = tuple(order)

    def set_raw_scale(self, in_: str, scale: float) -> None:
        """Multiplier from load_image's [0, 1] to the net's range (255 for most models)."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_: str, mean) -> None:
        """Mean to subtract: K values (one per channel) or K x H x W (resized to the input's
        H x W when it differs)."""
        self._check_input(in_)
        mean = np.asarray(mean, dtype=np.float32)
        shape = self.inputs[in_]
        if mean.ndim == 1:
            if mean.shape[0] != shape[1]:
                raise TransformerError(
                    f"mean has {mean.shape[0]} channels; the input {in_!r} has {shape[1]}"
                )
            mean = mean[:, None, None]
        else:
            if mean.ndim == 2:
                mean = mean[None]
            if mean.ndim != 3:
                raise TransformerError(
                    f"mean must be K values, H x W or K x H x W; received shape {mean.shape}"
                )
            if mean.shape[0] != shape[1]:
                raise TransformerError(
                    f"mean has {mean.shape[0]} channels; the input {in_!r} has {shape[1]}"
                )
            if mean.shape[1:] != shape[2:]:
                mean = (
                    resize_image(mean.transpose(1, 2, 0), shape[2:])
                    .reshape(shape[2], shape[3], -1)
                    .transpose(2, 0, 1)
                )
        self.mean[in_] = mean

    def set_input_scale(self, in_: str, scale: float) -> None:
        """Multiplier applied last, after the mean (e.g. 0.017 for some models)."""
        self._check_input(in_)
        self.input_scale[in_] = scale


__all__ = [
    "BlobProtoError",
    "DatumError",
    "Transformer",
    "TransformerError",
    "array_to_blobproto",
    "array_to_datum",
    "arraylist_to_blobprotovector_str",
    "blobproto_to_array",
    "blobprotovector_str_to_arraylist",
    "datum_to_array",
    "load_image",
    "oversample",
    "resize_image",
]
