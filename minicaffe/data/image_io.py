"""Images and Datum records as Caffe stores them: uint8 C x H x W in BGR channel order.

Caffe reads images with OpenCV, which yields BGR; minicaffe decodes with Pillow and reverses the
channels so that every array here has Caffe's layout and order. Resizing reproduces OpenCV's
INTER_LINEAR bit for bit (:func:`resize_linear`).
"""

from __future__ import annotations

import functools
import io
import os
import warnings

import numpy as np

from minicaffe.errors import DataError


def _deep(img) -> bool:
    """Whether the image holds more than 8 bits per sample (16-bit PNG/TIFF, 32-bit integer or
    float images); Pillow opens 16-bit colour PNGs as 8-bit RGB, which only the raw mode of the
    file's tiles still tells."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return True
    tiles = getattr(img, "tile", None) or []
    return any(";16" in str(getattr(t, "args", t[3] if len(t) > 3 else "")) for t in tiles)


def _eight_bit(img):
    """A 16-bit grey image as 8-bit grey by its high byte, as OpenCV reduces 16-bit samples
    when it decodes to colour or grey (Pillow's own conversion would clip at 255)."""
    if img.mode.startswith("I;16"):
        from PIL import Image

        return Image.fromarray((np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8))
    return img


def native_channels(img, deep: bool | None = None) -> int | None:
    """The channels OpenCV gives the image decoded unchanged (Caffe's DecodeDatumNative): 1
    for grey, 3 for colour, 4 when there is an alpha channel (RGBA, grey + alpha, or a PNG
    transparency chunk on a palette or colour image); None for more than 8 bits per sample
    (``deep``: :func:`_deep` taken before the image was loaded, which clears its tiles)."""
    if _deep(img) if deep is None else deep:
        return None
    mode = img.mode
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        mode in ("P", "RGB") and "transparency" in img.info
    ):
        return 4
    return 1 if mode in ("1", "L") else 3


def _native_chw(img, where: str, deep: bool):
    """The image as stored (:func:`native_channels`), BGR or BGRA; more than 8 bits per sample
    is refused, as Caffe's data transformer refuses anything but 8-bit images."""
    channels = native_channels(img, deep)
    if channels is None:
        raise DataError(
            f"{where}: the encoded image has more than 8 bits per sample (mode {img.mode}); "
            "Caffe's data transformer takes 8-bit images only (set transform_param "
            "force_color or force_gray to decode it to 8 bits)"
        )
    if channels == 1:
        return np.asarray(img.convert("L"))[None].copy()
    arr = np.asarray(img.convert("RGBA" if channels == 4 else "RGB"))
    order = [2, 1, 0, 3] if channels == 4 else [2, 1, 0]
    return np.ascontiguousarray(arr[:, :, order].transpose(2, 0, 1))


def _load(img) -> bool:
    """Load the pixels of an opened image; returns whether it has more than 8 bits per sample
    (known only before loading)."""
    deep = _deep(img)
    img.load()
    return deep


def _pil_to_chw(
    img, color: bool | None, where: str, height: int = 0, width: int = 0, deep: bool = False
):
    """A PIL image as uint8 C x H x W: BGR when colour, 1 channel when grey; resized (after the
    colour conversion, as OpenCV reads then resizes) when both sizes are > 0.

    ``color``: True = 3 channels, False = 1 channel (16-bit samples reduced to their high
    byte, as OpenCV does), None = as stored (:func:`_native_chw`).
    """
    try:
        if color is None:
            chw = _native_chw(img, where, deep)
        else:
            arr = np.asarray(_eight_bit(img).convert("RGB" if color else "L"))
            chw = np.ascontiguousarray(arr[:, :, ::-1].transpose(2, 0, 1)) if color else arr[None]
    except (OSError, ValueError) as exc:
        raise DataError(f"{where}: cannot decode image: {exc}") from None
    if height > 0 and width > 0 and chw.shape[1:] != (height, width):
        chw = resize_linear(chw, height, width)
    return chw


# OpenCV's fixed-point bilinear resize of 8-bit images: weights in units of 1/2048
_COEF_ONE = 1 << 11


def _linear_taps(out: int, size: int):
    """Per output index along one axis: the first source index and the fractional offset, as
    OpenCV computes them (pixel centres aligned; the offset in float32)."""
    f = ((np.arange(out, dtype=np.float64) + 0.5) * (size / out) - 0.5).astype(np.float32)
    first = np.floor(f).astype(np.intp)
    return first, f - first.astype(np.float32)


def _fixed_weights(frac):
    """(2, n) int32: the weights 1 - frac and frac in units of 1/2048, rounded half to even."""
    one = np.float32(_COEF_ONE)
    return np.rint(np.stack([(np.float32(1) - frac) * one, frac * one])).astype(np.int32)


def resize_linear(chw: np.ndarray, height: int, width: int) -> np.ndarray:
    """A uint8 C x H x W image resized to C x ``height`` x ``width`` exactly as OpenCV's
    ``cv::resize`` with INTER_LINEAR does it (what Caffe's image reading and WindowData use):
    pixel-centre aligned taps with edge replication, weights rounded to 1/2048, the vertical
    pass in OpenCV's 8-bit fixed-point form, and a halving in both directions taken as 2x2
    block means (OpenCV switches to its area filter there). No antialiasing, unlike Pillow's
    bilinear filter when shrinking. Checked bit for bit against OpenCV 3.4, 4.5 and 5.0."""
    img = np.asarray(chw, dtype=np.uint8)
    c, h, w = img.shape
    if (height, width) == (h, w):
        return img.copy()
    if (h, w) == (2 * height, 2 * width):
        s = img[:, 0::2, 0::2].astype(np.int32)
        for part in (img[:, 1::2, 0::2], img[:, 0::2, 1::2], img[:, 1::2, 1::2]):
            s += part
        return ((s + 2) >> 2).astype(np.uint8)
    # horizontal taps: a tap left of the image or on/after its last column reads that edge
    # column with full weight
    sx, fx = _linear_taps(width, w)
    edge = (sx < 0) | (sx >= w - 1)
    fx[edge] = 0
    sx = np.clip(sx, 0, w - 1)
    ax = _fixed_weights(fx)
    sx1 = np.minimum(sx + 1, w - 1)
    # vertical taps: both source rows clipped to the image, weights kept
    sy, fy = _linear_taps(height, h)
    by = _fixed_weights(fy)[:, :, None]

    def across(rows):  # the horizontal pass (values scaled by 2048) of the given source rows
        r = img[:, rows]
        t = r[:, :, sx] * ax[0]
        t += r[:, :, sx1] * ax[1]
        t >>= 4
        return t

    top = across(np.clip(sy, 0, h - 1))
    top *= by[0]
    top >>= 16
    bottom = across(np.clip(sy + 1, 0, h - 1))
    bottom *= by[1]
    bottom >>= 16
    top += bottom
    top += 2
    top >>= 2
    return top.astype(np.uint8)


def shown_path(path) -> str:
    """``path`` as text that prints anywhere: bytes that are not UTF-8 (kept in a str as
    surrogate escapes, as Python reads names from the filesystem) appear as ``\\xNN``."""
    if isinstance(path, bytes):
        raw = path
    else:
        try:
            raw = os.fsencode(path)
        except UnicodeError:
            return str(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def read_image(
    path: str, *, height: int = 0, width: int = 0, color: bool | None = True, where: str = ""
) -> np.ndarray:
    """Decode the image file ``path`` as uint8 C x H x W (BGR), resized when both sizes > 0."""
    return _read_image(path, height, width, color, where, keep_file=False)[0]


def read_image_file(
    path: str, *, height: int = 0, width: int = 0, color: bool | None = True, where: str = ""
) -> tuple[np.ndarray, bytes, int | None]:
    """:func:`read_image` from one read of the file, also returning the file's bytes and
    :func:`native_channels` (what storing the file as it is would decode to)."""
    return _read_image(path, height, width, color, where, keep_file=True)


def _read_image(path, height, width, color, where, keep_file: bool):
    from PIL import Image, UnidentifiedImageError

    label = f"{where}: " if where else ""
    shown = shown_path(path)
    try:
        data = None
        if keep_file:
            with open(path, "rb") as fh:
                data = fh.read()
        with Image.open(path if data is None else io.BytesIO(data)) as img:
            deep = _load(img)
            native = native_channels(img, deep) if keep_file else None
            return _pil_to_chw(img, color, f"{label}'{shown}'", height, width, deep), data, native
    except FileNotFoundError:
        raise DataError(f"{label}image '{shown}' not found") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise DataError(f"{label}cannot read image '{shown}': {exc}") from None


def decode_image_bytes(
    data: bytes, *, color: bool | None = None, height: int = 0, width: int = 0, where: str = ""
) -> np.ndarray:
    """Decode an encoded (JPEG/PNG/...) image held in memory as uint8 C x H x W (BGR)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            deep = _load(img)
            return _pil_to_chw(img, color, where, height, width, deep)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise DataError(f"{where}: cannot decode the encoded image: {exc}") from None


# The file extensions OpenCV's imencode takes (what Caffe's convert_imageset -encode_type names)
# that Pillow can write: extension -> (Pillow format, Pillow feature the codec needs or None,
# save options giving OpenCV's defaults: JPEG/AVIF quality 95, lossless WebP). pbm/pgm/ppm/pnm
# are Pillow's one "PPM" writer, which picks the variant from the image mode. WebP and GIF have
# no grey variant: a grey image comes back as 3 equal channels (as with OpenCV).
_ENCODERS = {
    "bmp": ("BMP", None, {}),
    "dib": ("BMP", None, {}),
    "jpg": ("JPEG", "jpg", {"quality": 95}),
    "jpeg": ("JPEG", "jpg", {"quality": 95}),
    "jpe": ("JPEG", "jpg", {"quality": 95}),
    "jp2": ("JPEG2000", "jpg_2000", {}),
    "png": ("PNG", None, {}),
    "webp": ("WEBP", "webp", {"lossless": True}),
    "tif": ("TIFF", None, {}),
    "tiff": ("TIFF", None, {}),
    "pbm": ("PPM", None, {}),
    "pgm": ("PPM", None, {}),
    "ppm": ("PPM", None, {}),
    "pnm": ("PPM", None, {}),
    "pxm": ("PPM", None, {}),
    "gif": ("GIF", None, {}),
    "avif": ("AVIF", "avif", {"quality": 95}),
}
# the variants that hold only grey (1 channel) or only colour (3 channels) images
_GREY_ONLY = ("pbm", "pgm")
_COLOUR_ONLY = ("ppm",)


@functools.cache
def encode_formats() -> tuple[str, ...]:
    """The extensions :func:`encode_image` can write with this Pillow (sorted)."""
    from PIL import Image, features

    Image.init()
    usable = []
    for ext, (pil_format, feature, _) in _ENCODERS.items():
        if pil_format not in Image.SAVE:
            continue
        if feature is not None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if not features.check(feature):
                        continue
            except Exception:  # a Pillow that does not know the feature's name
                continue
        usable.append(ext)
    return tuple(sorted(usable))


def normalize_format(fmt: str) -> str:
    """``fmt`` as a lower-case extension without a leading dot ("JPG", ".jpg" -> "jpg")."""
    return fmt.strip().lstrip(".").lower()


def same_encoding(a: str, b: str) -> bool:
    """Whether the extensions ``a`` and ``b`` name the same encoding (jpg/jpeg/jpe, tif/tiff,
    bmp/dib; pbm, pgm and ppm stay distinct)."""
    a, b = normalize_format(a), normalize_format(b)
    if a == b:
        return True
    groups = ({"jpg", "jpeg", "jpe"}, {"tif", "tiff"}, {"bmp", "dib"})
    return any(a in g and b in g for g in groups)


def encoding_problem(fmt: str, channels: int) -> str:
    """Why an image of ``channels`` channels cannot be encoded as ``fmt`` ("" when it can)."""
    fmt = normalize_format(fmt)
    if fmt not in encode_formats():
        return f"cannot encode images as '{fmt}'; choices: {', '.join(encode_formats())}"
    if fmt in _GREY_ONLY and channels != 1:
        return f"'{fmt}' holds grey (1-channel) images only, not {channels}-channel ones"
    if fmt in _COLOUR_ONLY and channels != 3:
        return f"'{fmt}' holds colour (3-channel) images only, not {channels}-channel ones"
    return ""


def encode_image(chw: np.ndarray, fmt: str, *, where: str = "") -> bytes:
    """Encode a uint8 C x H x W BGR (or grey) array as ``fmt``, a file extension as OpenCV's
    imencode takes it ("png", "jpg", "tif", "pgm", ...; see :func:`encode_formats`).
    DataError (prefixed with ``where``) for a format this Pillow cannot write or that cannot
    hold the image, or when the encoder fails."""
    from PIL import Image

    label = f"{where}: " if where else ""
    problem = encoding_problem(fmt, chw.shape[0])
    if problem:
        raise DataError(label + problem)
    fmt = normalize_format(fmt)
    pil_format, _, options = _ENCODERS[fmt]
    img = Image.fromarray(chw[0] if chw.shape[0] == 1 else chw[::-1].transpose(1, 2, 0))
    if fmt == "pbm":  # 1 bit per pixel: threshold at half grey, as a plain conversion would
        img = img.convert("1", dither=Image.Dither.NONE)
    buf = io.BytesIO()
    try:
        img.save(buf, format=pil_format, **options)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{label}cannot encode the image as '{fmt}': {exc}") from None
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
