"""Images and Datum records as Caffe stores them: uint8 C x H x W in BGR channel order.

Caffe reads images with OpenCV, which yields BGR; minicaffe decodes with Pillow and reverses the
channels so that every array here has Caffe's layout and order. Resizing uses Pillow's bilinear
filter (OpenCV's INTER_LINEAR can differ by one grey level at some pixels).
"""

from __future__ import annotations

import io
import os

import numpy as np

from minicaffe.errors import DataError

_GREY_MODES = ("1", "L", "I", "I;16", "F", "LA", "La")


def _pil_to_chw(img, color: bool | None, where: str, height: int = 0, width: int = 0):
    """A PIL image as uint8 C x H x W: BGR when colour, 1 channel when grey; resized (after the
    colour conversion, as OpenCV reads then resizes) when both sizes are > 0.

    ``color``: True = 3 channels, False = 1 channel, None = as stored (grey stays grey).
    """
    from PIL import Image

    if color is None:
        color = img.mode not in _GREY_MODES
    try:
        img = img.convert("RGB" if color else "L")
        if height > 0 and width > 0 and img.size != (width, height):
            img = img.resize((width, height), Image.BILINEAR)
        arr = np.asarray(img)
    except (OSError, ValueError) as exc:
        raise DataError(f"{where}: cannot decode image: {exc}") from None
    if color:
        return np.ascontiguousarray(arr[:, :, ::-1].transpose(2, 0, 1))
    return arr[None]


def read_image(
    path: str, *, height: int = 0, width: int = 0, color: bool | None = True, where: str = ""
) -> np.ndarray:
    """Decode the image file ``path`` as uint8 C x H x W (BGR), resized when both sizes > 0."""
    from PIL import Image, UnidentifiedImageError

    label = f"{where}: " if where else ""
    try:
        with Image.open(path) as img:
            img.load()
            return _pil_to_chw(img, color, f"{label}'{path}'", height, width)
    except FileNotFoundError:
        raise DataError(f"{label}image '{path}' not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{label}cannot read image '{path}': {exc}") from None


def decode_image_bytes(
    data: bytes, *, color: bool | None = None, height: int = 0, width: int = 0, where: str = ""
) -> np.ndarray:
    """Decode an encoded (JPEG/PNG/...) image held in memory as uint8 C x H x W (BGR)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return _pil_to_chw(img, color, where, height, width)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{where}: cannot decode the encoded image: {exc}") from None


def encode_image(chw: np.ndarray, fmt: str) -> bytes:
    """Encode a uint8 C x H x W BGR (or grey) array as ``fmt`` ("png", "jpg", ...)."""
    from PIL import Image

    img = Image.fromarray(chw[0] if chw.shape[0] == 1 else chw[::-1].transpose(1, 2, 0))
    buf = io.BytesIO()
    fmt = {"jpg": "JPEG", "jpeg": "JPEG"}.get(fmt.lower(), fmt.upper())
    img.save(buf, format=fmt)
    return buf.getvalue()


def image_format(path: str) -> str:
    """The lower-case extension of ``path`` without the dot ("" if none)."""
    return os.path.splitext(path)[1].lstrip(".").lower()


# ------------------------------------------------------------------------------- Datum


def datum_to_array(datum, *, where: str, color: bool | None = None) -> np.ndarray:
    """A Datum's pixels as C x H x W: uint8 from ``data`` (or the decoded image when
    ``encoded``), float32 from ``float_data``."""
    if datum.encoded:
        return decode_image_bytes(datum.data, color=color, where=where)
    c, h, w = datum.channels, datum.height, datum.width
    if c <= 0 or h <= 0 or w <= 0:
        raise DataError(f"{where}: Datum has channels/height/width {c}x{h}x{w}; all must be > 0")
    if datum.data:
        if len(datum.data) != c * h * w:
            raise DataError(
                f"{where}: Datum data holds {len(datum.data)} bytes but "
                f"channels*height*width = {c}*{h}*{w} = {c * h * w}"
            )
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(c, h, w)
    if len(datum.float_data) != c * h * w:
        raise DataError(
            f"{where}: Datum float_data holds {len(datum.float_data)} values but "
            f"channels*height*width = {c}*{h}*{w} = {c * h * w}"
        )
    return np.asarray(datum.float_data, dtype=np.float32).reshape(c, h, w)


def array_to_datum(chw: np.ndarray, label: int = 0):
    """A raw (not encoded) Datum holding a uint8 C x H x W array."""
    from minicaffe.proto import caffe_pb2

    chw = np.ascontiguousarray(chw, dtype=np.uint8)
    c, h, w = chw.shape
    return caffe_pb2.Datum(channels=c, height=h, width=w, data=chw.tobytes(), label=int(label))
