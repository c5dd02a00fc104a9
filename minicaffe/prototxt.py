"""Reading and writing Caffe's text and binary protobuf files.

Text (.prototxt): protobuf text format; errors become :class:`PrototxtError` with
``file:line:col`` and the offending token. Nets and solvers are upgraded from legacy formats.

Binary (.caffemodel, .solverstate, .binaryproto): blob payloads are converted as raw bytes with
``numpy.frombuffer`` by a small wire-format walker, never element by element, so a 60M-parameter
model loads in about a second. Files are written canonically (fields in number order, floats
packed), atomically (temporary file in the same folder, then rename).
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import message as pb_message
from google.protobuf import text_format

from minicaffe.errors import FileWriteError, PrototxtError, WeightsError
from minicaffe.proto import caffe_pb2

log = logging.getLogger("minicaffe")

# ---------------------------------------------------------------------------- files

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# What h5py raises on a damaged or unexpected file: OSError/RuntimeError from the HDF5 library
# (bad signatures, addresses past the end), KeyError/TypeError/ValueError from a layout other
# than the one expected.
HDF5_ERRORS = (OSError, RuntimeError, KeyError, TypeError, ValueError)


def is_hdf5_file(path, suffixes=(".h5", ".hdf5")) -> bool:
    """Whether ``path`` is HDF5, by its content as Caffe decides (H5Fis_hdf5), whatever its
    name; a file that cannot be read goes by its name (one of ``suffixes``), so the error
    comes from the reader the user meant."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == HDF5_MAGIC
    except OSError:
        return path.endswith(tuple(suffixes))


def _new_file_mode(path: str) -> int:
    """The permission bits ``open(path, "w")`` would leave: an existing file keeps its own,
    a new one gets 0666 less the umask (a temporary file from mkstemp starts at 0600)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash never leaves a partial file behind: a
    temporary file in the same folder, synced, then renamed over ``path`` with the permission
    bits a plain write would give. FileWriteError (an OSError) names ``path`` on failure."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _new_file_mode(str(path)))
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(exc, OSError) and not isinstance(exc, FileWriteError):
            raise FileWriteError(path, exc.strerror or str(exc), exc.errno) from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _looks_like_text(source) -> bool:
    """Whether a string given as a net or solver is prototxt text rather than a path. Text has
    a newline or a brace, or a ``field: value`` pair; a missing path that holds ':' (a
    timestamp folder, ``C:/...``) stays a path when it has no spaces or quotes and has a folder
    separator or a file extension, so the error says that the file does not exist."""
    if not isinstance(source, str) or os.path.isfile(source):
        return False
    if "\n" in source or "{" in source:
        return True
    if ":" not in source:
        return False
    pathlike = not any(c in source for c in " \t\"'") and (
        "/" in source or "\\" in source or os.path.splitext(source)[1] != ""
    )
    return not pathlike


# ---------------------------------------------------------------------------- text format


def parse_text(text: str, message, filename: str | None = None):
    """Merge protobuf ``text`` into ``message``; PrototxtError with file:line:col on failure."""
    try:
        text_format.Merge(text, message)
    except text_format.ParseError as exc:
        line, col = exc.GetLine(), exc.GetColumn()
        raw = str(exc)
        # ParseError's text starts with "line:col : "; keep only the explanation.
        detail = raw.split(" : ", 1)[1] if " : " in raw else raw
        token = None
        if line:
            lines = text.splitlines()
            if 0 < line <= len(lines):
                rest = lines[line - 1][max(col - 1, 0) :]
                token = rest.split()[0] if rest.split() else None
        msg = detail.replace('"minicaffe.', '"')
        if token:
            msg += f" (at {token!r})"
        raise PrototxtError(
            msg, filename=filename, line=line or None, column=col or None, token=token
        ) from None
    return message


def read_text(source, message_type, *, what: str = "file"):
    """Parse a path or a text into a new ``message_type``; returns (message, filename)."""
    if _looks_like_text(source):
        return parse_text(source, message_type(), None), None
    path = os.fspath(source)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise PrototxtError(f"no such {what}", filename=path) from None
    except OSError as exc:
        raise PrototxtError(f"cannot read {what}: {exc.strerror}", filename=path) from None
    return parse_text(_decode_prototxt(raw, path), message_type(), path), path


def _decode_prototxt(raw: bytes, path: str) -> str:
    """The text of a prototxt file. UTF-8 as protobuf expects; a file in another encoding (a
    GBK or Latin-1 comment, common in published models) is read byte for byte as Latin-1, so
    its comments are skipped as Caffe skips them. A file with NUL bytes is binary."""
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark (some Windows editors)
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if b"\x00" in raw:
            raise PrototxtError(
                "is not a text prototxt (it is binary; a .caffemodel is passed as "
                "weights, not as the model definition)",
                filename=path,
            ) from None
        line = raw[: exc.start].count(b"\n") + 1
        log.warning("%s:%d: not UTF-8; reading the file as Latin-1", path, line)
        return raw.decode("latin-1")


def _is_binary_net(source) -> bool:
    """Whether a net given as ``source`` is a binary .caffemodel: by its name, or by its
    content whatever the name (as ``minicaffe upgrade`` and the weights readers decide)."""
    if _looks_like_text(source):
        return False
    path = os.fspath(source)
    if str(path).endswith((".caffemodel", ".caffemodel.h5")):
        return True
    try:
        with open(path, "rb") as fh:
            return binary_kind(fh.read(4096)) == "caffemodel"
    except OSError:
        return False


def read_net_param(source, *, upgrade: bool = True):
    """A NetParameter from a prototxt path or text, upgraded from V0/V1 and legacy inputs.

    A binary .caffemodel path is accepted too (parsed fully, blobs included).
    """
    if _is_binary_net(source):
        net = read_caffemodel(source).to_net_param()
        filename = os.fspath(source)
    else:
        net, filename = read_text(source, caffe_pb2.NetParameter, what="net prototxt")
    if upgrade:
        from minicaffe.upgrade import upgrade_net

        net, _ = upgrade_net(net, filename or "<net>")
    return net


def read_solver_param(source, *, upgrade: bool = True):
    """A SolverParameter from a prototxt path or text (``solver_type`` upgraded to ``type``)."""
    solver, filename = read_text(source, caffe_pb2.SolverParameter, what="solver prototxt")
    if upgrade:
        from minicaffe.upgrade import upgrade_solver

        solver, _ = upgrade_solver(solver, filename or "<solver>")
    return solver


def write_text(message, path: str | os.PathLike) -> None:
    atomic_write_text(path, text_format.MessageToString(message))


def to_text(message) -> str:
    return text_format.MessageToString(message)


# ---------------------------------------------------------------------------- wire format


class _Truncated(Exception):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Truncated("a varint runs past the end of its message")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise _Truncated("a varint is longer than 10 bytes")


def _fields(buf, start: int, end: int):
    """Yield (field number, wire type, value-or-start, end) for each field of a message."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos, end)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise _Truncated("field number 0")
        if wt == 0:
            value, pos = _varint(buf, pos, end)
            yield num, wt, value, pos, field_start
            continue
        if wt == 1:
            vstart, pos = pos, pos + 8
        elif wt == 2:
            length, pos = _varint(buf, pos, end)
            vstart, pos = pos, pos + length
        elif wt == 5:
            vstart, pos = pos, pos + 4
        else:
            raise _Truncated(f"unsupported wire type {wt} (field {num})")
        if pos > end:
            raise _Truncated(f"field {num} runs past the end of its message")
        yield num, wt, vstart, pos, field_start


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(num: int, wt: int) -> bytes:
    return _encode_varint((num << 3) | wt)


def _len_field(num: int, payload: bytes) -> bytes:
    return _key(num, 2) + _encode_varint(len(payload)) + payload


# BlobProto field numbers
_B_NUM, _B_CH, _B_H, _B_W, _B_DATA, _B_DIFF, _B_SHAPE, _B_DDATA, _B_DDIFF = (
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
)


@dataclass
class BlobArrays:
    data: np.ndarray
    diff: np.ndarray | None = None
    legacy: tuple[int, int, int, int] | None = None  # num, channels, height, width when given


def _parse_blob(buf, start: int, end: int) -> BlobArrays:
    legacy = [None, None, None, None]
    dims: list[int] | None = None
    parts: dict[int, list] = {}
    for num, wt, v, vend, _ in _fields(buf, start, end):
        if num in (_B_NUM, _B_CH, _B_H, _B_W) and wt == 0:
            legacy[num - 1] = v - (1 << 64) if v >= 1 << 63 else v
        elif num in (_B_DATA, _B_DIFF, _B_DDATA, _B_DDIFF):
            dtype = "<f4" if num in (_B_DATA, _B_DIFF) else "<f8"
            size = 4 if dtype == "<f4" else 8
            if wt == 2:
                if (vend - v) % size:
                    raise _Truncated(
                        f"blob field {num} holds {vend - v} bytes, not whole {size}-byte values"
                    )
                parts.setdefault(num, []).append(np.frombuffer(buf[v:vend], dtype=dtype))
            elif (wt == 5 and dtype == "<f4") or (wt == 1 and dtype == "<f8"):
                parts.setdefault(num, []).append(np.frombuffer(buf[v:vend], dtype=dtype))
            else:
                raise _Truncated(f"blob field {num} has wire type {wt}")
        elif num == _B_SHAPE and wt == 2:
            dims = []
            for dnum, dwt, dv, dvend, _ in _fields(buf, v, vend):
                if dnum != 1:
                    continue
                if dwt == 2:
                    p = dv
                    while p < dvend:
                        d, p = _varint(buf, p, dvend)
                        dims.append(d)
                else:
                    dims.append(dv)
    has_legacy = any(x is not None for x in legacy)
    leg = tuple(x or 0 for x in legacy) if has_legacy else None

    def joined(num):
        chunks = parts.get(num)
        if not chunks:
            return None
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    data = joined(_B_DDATA) if _B_DDATA in parts else joined(_B_DATA)
    diff = joined(_B_DDIFF) if _B_DDIFF in parts else joined(_B_DIFF)
    if has_legacy:
        shape = leg
    elif dims is not None:
        shape = tuple(dims)
    else:
        shape = (0,) if data is None else (len(data),) if len(data) != 1 else ()
    if any(d < 0 for d in shape):
        raise _Truncated(f"a blob has a negative dimension in its shape {tuple(shape)}")
    count = math.prod(shape)
    if data is None:
        data = np.zeros(0, np.float32)
    if data.size != count:  # as Caffe's Blob::FromProto, a shape needs all its values
        raise _Truncated(
            f"a blob of shape {tuple(shape)} needs {count} values but holds {data.size}"
        )
    data = data.reshape(shape)
    if diff is not None and diff.size == count:
        diff = diff.reshape(shape)
    return BlobArrays(data=data, diff=diff, legacy=leg)


def blob_proto_bytes(data: np.ndarray, diff: np.ndarray | None = None) -> bytes:
    """Serialized BlobProto (shape + packed data), as Caffe's Blob::ToProto writes it."""
    arr = np.asarray(data)
    double = arr.dtype == np.float64
    out = bytearray()
    if not double:
        if arr.size:
            out += _len_field(_B_DATA, arr.astype("<f4", copy=False).tobytes())
        if diff is not None and np.asarray(diff).size:
            out += _len_field(_B_DIFF, np.asarray(diff).astype("<f4", copy=False).tobytes())
    if arr.ndim:
        out += _len_field(
            _B_SHAPE, _len_field(1, b"".join(_encode_varint(int(d)) for d in arr.shape))
        )
    if double:
        if arr.size:
            out += _len_field(_B_DDATA, arr.astype("<f8", copy=False).tobytes())
        if diff is not None and np.asarray(diff).size:
            out += _len_field(_B_DDIFF, np.asarray(diff).astype("<f8", copy=False).tobytes())
    return bytes(out)


def blobproto_to_array(proto, dtype=None, *, return_diff: bool = False) -> np.ndarray:
    """A BlobProto message as an ndarray (legacy num/channels/height/width dims accepted)."""
    try:
        blob = _parse_blob(memoryview(proto.SerializeToString()), 0, proto.ByteSize())
    except _Truncated as exc:
        raise WeightsError(f"unusable BlobProto: {exc}") from None
    arr = blob.diff if return_diff else blob.data
    if arr is None:
        arr = np.zeros_like(blob.data)
    arr = np.array(arr, dtype=dtype or arr.dtype)
    return arr


def array_to_blobproto(arr, diff=None):
    """An ndarray as a BlobProto message (N-d ``shape`` form)."""
    proto = caffe_pb2.BlobProto()
    proto.ParseFromString(
        blob_proto_bytes(
            np.asarray(arr, dtype=np.float32) if np.asarray(arr).dtype != np.float64 else arr, diff
        )
    )
    return proto


def _strip_blobs(buf, start: int, end: int, blob_field: int):
    """Split a message into its bytes without ``blob_field`` and the parsed blobs."""
    kept = bytearray()
    blobs = []
    for num, wt, v, vend, fstart in _fields(buf, start, end):
        if num == blob_field and wt == 2:
            blobs.append(_parse_blob(buf, v, vend))
        else:
            kept += buf[fstart:vend]
    return bytes(kept), blobs


def _insert_before(serialized: bytes, field_number: int, payload: bytes) -> bytes:
    """Insert ``payload`` (whole encoded fields) before the first field numbered above
    ``field_number``, keeping a canonical field order."""
    if not payload:
        return serialized
    buf = memoryview(serialized)
    for num, _wt, _v, _vend, fstart in _fields(buf, 0, len(serialized)):
        if num > field_number:
            return serialized[:fstart] + payload + serialized[fstart:]
    return serialized + payload


def _read_binary(path) -> bytes:
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read: {exc.strerror}") from None


# ---------------------------------------------------------------------------- .caffemodel

_NET_LAYER, _NET_LAYERS_V1 = 100, 2
_LAYER_BLOBS, _V1_BLOBS, _V1_V0LAYER = 7, 6, 1


@dataclass
class CaffeModel:
    """A parsed .caffemodel: the net definition (blobs removed) and each layer's arrays."""

    net: object  # caffe_pb2.NetParameter, layers without blobs, as stored (not upgraded)
    weights: list[tuple[str, list[BlobArrays]]] = field(default_factory=list)
    path: str = ""

    def arrays_by_layer(self) -> dict[str, list[np.ndarray]]:
        out: dict[str, list[np.ndarray]] = {}
        for name, blobs in self.weights:
            out.setdefault(name, [b.data for b in blobs])
        return out

    def to_net_param(self):
        """The full NetParameter with blobs (slow for big models; for inspection)."""
        net = caffe_pb2.NetParameter()
        net.CopyFrom(self.net)
        layers = net.layer if len(net.layer) else net.layers
        for layer, (_, blobs) in zip(layers, self.weights, strict=False):
            for b in blobs:
                layer.blobs.add().ParseFromString(blob_proto_bytes(b.data, b.diff))
        return net


def binary_kind(raw: bytes) -> str | None:
    """What a file meant to be binary protobuf looks like it is, for clearer errors: "empty",
    "hdf5", "text", "caffemodel" (a NetParameter), "solverstate", or None (unknown)."""
    if not raw:
        return "empty"
    if raw[:8] == HDF5_MAGIC:
        return "hdf5"
    head = raw[:4096]
    if b"\x00" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError as exc:  # a multi-byte character cut at 4096 bytes is text
            text = head[: exc.start].decode("utf-8") if exc.start > len(head) - 4 else ""
        printable = all(c.isprintable() or c in "\t\r\n" for c in text)
        if printable and re.search(r"[A-Za-z_]\w*\s*[:{]", text):  # a "field:" or "message {"
            return "text"
    try:
        fields = []
        for num, wt, *_ in _fields(memoryview(raw), 0, len(raw)):
            fields.append((num, wt))
            if len(fields) == 2:
                break
    except _Truncated:
        return None
    if fields and fields[0] == (1, 0) and (len(fields) < 2 or fields[1] == (2, 2)):
        return "solverstate"  # iter (varint), then learned_net (string)
    if fields and fields[0][0] in (1, 2, 3, 100) and fields[0][1] == 2:
        return "caffemodel"  # name, layers, input or layer: length-delimited
    return None


_KIND_HINTS = {
    "empty": "the file is empty",
    "text": "it is a text prototxt; this takes the binary file Caffe wrote",
    "solverstate": "it is a .solverstate (solver history); resume from it with --snapshot, and "
    "give its .caffemodel as weights",
    "caffemodel": "it is a .caffemodel (weights); give it as weights (--weights), and resume "
    "from its .solverstate",
}


def read_caffemodel(path) -> CaffeModel:
    """Read a binary NetParameter (.caffemodel); WeightsError names the file on damage."""
    raw = _read_binary(path)
    path = os.fspath(path)
    kind = binary_kind(raw)
    if kind == "hdf5":  # by content, as Caffe (H5Fis_hdf5), whatever the name
        return _read_caffemodel_h5(path)
    if kind in ("empty", "text", "solverstate"):
        raise WeightsError(f"{path}: not a .caffemodel: {_KIND_HINTS[kind]}")
    try:
        return _parse_caffemodel(raw, path)
    except (_Truncated, pb_message.DecodeError) as exc:
        raise WeightsError(
            f"{path}: truncated or corrupt .caffemodel ({exc}); expected a binary "
            "NetParameter as written by Caffe"
        ) from None


def _parse_caffemodel(raw: bytes, path: str) -> CaffeModel:
    buf = memoryview(raw)
    header = bytearray()
    layer_entries = []
    weights: list[tuple[str, list[BlobArrays]]] = []
    for num, wt, v, vend, fstart in _fields(buf, 0, len(raw)):
        if num in (_NET_LAYER, _NET_LAYERS_V1) and wt == 2:
            blob_field = _LAYER_BLOBS if num == _NET_LAYER else _V1_BLOBS
            kept, blobs = _strip_blobs(buf, v, vend, blob_field)
            layer_entries.append(_len_field(num, kept))
            weights.append(("", blobs))
        else:
            header += buf[fstart:vend]
    net = caffe_pb2.NetParameter()
    net.ParseFromString(bytes(header) + b"".join(layer_entries))
    if len(net.layer) and len(net.layers):
        raise WeightsError(f"{path}: holds both 'layer' and legacy 'layers' entries")
    if len(net.layers):
        names = [(lp.layer.name if lp.HasField("layer") else lp.name) for lp in net.layers]
        if any(lp.HasField("layer") for lp in net.layers):  # V0: blobs live in the inner layer
            full = caffe_pb2.NetParameter()
            full.ParseFromString(raw)
            weights = [
                (lp.layer.name, [_parse_blob_msg(b) for b in lp.layer.blobs]) for lp in full.layers
            ]
            net = full
            for lp in net.layers:
                lp.layer.ClearField("blobs")
            return CaffeModel(net=net, weights=weights, path=path)
    else:
        names = [lp.name for lp in net.layer]
    weights = [(name, blobs) for name, (_, blobs) in zip(names, weights, strict=True)]
    return CaffeModel(net=net, weights=weights, path=path)


def _parse_blob_msg(proto) -> BlobArrays:
    raw = proto.SerializeToString()
    return _parse_blob(memoryview(raw), 0, len(raw))


def _read_caffemodel_h5(path: str) -> CaffeModel:
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        raise WeightsError(f"{path}: reading HDF5 weights needs h5py") from None
    weights = []
    net = caffe_pb2.NetParameter()
    try:
        with h5py.File(path, "r") as f:
            group = f["data"]
            for name in group:
                layer_group = group[name]
                if not isinstance(layer_group, h5py.Group) or not all(
                    k.isdigit() for k in layer_group
                ):
                    raise TypeError(f"/data/{name} is not a group of datasets 0, 1, ...")
                idx = sorted(layer_group, key=int)
                weights.append(
                    (name, [BlobArrays(np.asarray(layer_group[i], dtype=np.float32)) for i in idx])
                )
                net.layer.add(name=name)
    except HDF5_ERRORS as exc:
        raise WeightsError(
            f"{path}: not a Caffe HDF5 weights file or damaged ({type(exc).__name__}: {exc}); "
            "expected groups /data/<layer>/<index>"
        ) from None
    return CaffeModel(net=net, weights=weights, path=path)


def caffemodel_bytes(net_param, layer_blobs: list[list]) -> bytes:
    """Serialize a NetParameter whose layer i gets the arrays ``layer_blobs[i]``.

    Each entry of ``layer_blobs[i]`` is an array, or a (data, diff) pair.
    """
    header = caffe_pb2.NetParameter()
    header.CopyFrom(net_param)
    header.ClearField("layer")
    out = [header.SerializeToString(deterministic=True)]
    for layer, blobs in zip(net_param.layer, layer_blobs, strict=True):
        lp = caffe_pb2.LayerParameter()
        lp.CopyFrom(layer)
        lp.ClearField("blobs")
        payload = b"".join(
            _len_field(_LAYER_BLOBS, blob_proto_bytes(*(b if isinstance(b, tuple) else (b,))))
            for b in blobs
        )
        body = _insert_before(lp.SerializeToString(deterministic=True), _LAYER_BLOBS, payload)
        out.append(_len_field(_NET_LAYER, body))
    return b"".join(out)


def write_caffemodel(path, net_param, layer_blobs: list[list]) -> None:
    atomic_write_bytes(path, caffemodel_bytes(net_param, layer_blobs))


# ---------------------------------------------------------------------------- .binaryproto


def read_binaryproto(path) -> np.ndarray:
    """A BlobProto file (mean image, infogain matrix) as an array (legacy dims kept 4-D)."""
    raw = _read_binary(path)
    try:
        return _parse_blob(memoryview(raw), 0, len(raw)).data
    except _Truncated as exc:
        raise WeightsError(
            f"{os.fspath(path)}: truncated or corrupt .binaryproto ({exc}); "
            "expected a serialized BlobProto"
        ) from None


def write_binaryproto(path, arr, *, legacy: bool = False) -> None:
    """Write an array as a BlobProto; ``legacy`` writes num/channels/height/width (<= 4-D),
    as Caffe's compute_image_mean does."""
    arr = np.asarray(arr)
    if not legacy:
        atomic_write_bytes(path, blob_proto_bytes(arr))
        return
    if arr.ndim > 4:
        raise WeightsError(f"{os.fspath(path)}: legacy dims hold at most 4 axes; shape {arr.shape}")
    dims = (1,) * (4 - arr.ndim) + arr.shape
    head = b"".join(_key(i + 1, 0) + _encode_varint(d) for i, d in enumerate(dims))
    data = _len_field(_B_DATA, arr.astype("<f4").tobytes()) if arr.size else b""
    atomic_write_bytes(path, head + data)


# ---------------------------------------------------------------------------- .solverstate

_STATE_HISTORY = 3


def read_solverstate(path):
    """(SolverState without history, list of history arrays)."""
    raw = _read_binary(path)
    kind = binary_kind(raw)
    if kind in ("empty", "text", "caffemodel", "hdf5"):
        hint = _KIND_HINTS.get(kind, "it is HDF5: name it .solverstate.h5")
        raise WeightsError(f"{os.fspath(path)}: not a .solverstate: {hint}")
    try:
        kept, blobs = _strip_blobs(memoryview(raw), 0, len(raw), _STATE_HISTORY)
        state = caffe_pb2.SolverState()
        state.ParseFromString(kept)
    except (_Truncated, pb_message.DecodeError) as exc:
        raise WeightsError(
            f"{os.fspath(path)}: truncated or corrupt .solverstate ({exc}); "
            "expected a serialized SolverState"
        ) from None
    if state.iter < 0:
        raise WeightsError(f"{os.fspath(path)}: corrupt .solverstate: iteration {state.iter}")
    return state, [b.data for b in blobs]


def solverstate_bytes(state, history: list[np.ndarray]) -> bytes:
    st = caffe_pb2.SolverState()
    st.CopyFrom(state)
    st.ClearField("history")
    payload = b"".join(_len_field(_STATE_HISTORY, blob_proto_bytes(h)) for h in history)
    return _insert_before(st.SerializeToString(deterministic=True), _STATE_HISTORY, payload)


def write_solverstate(path, state, history: list[np.ndarray]) -> None:
    atomic_write_bytes(path, solverstate_bytes(state, history))


__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "parse_text",
    "read_text",
    "read_net_param",
    "read_solver_param",
    "write_text",
    "to_text",
    "read_caffemodel",
    "write_caffemodel",
    "caffemodel_bytes",
    "CaffeModel",
    "BlobArrays",
    "read_binaryproto",
    "write_binaryproto",
    "blobproto_to_array",
    "array_to_blobproto",
    "blob_proto_bytes",
    "read_solverstate",
    "write_solverstate",
    "solverstate_bytes",
]
