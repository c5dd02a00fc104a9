"""The exception family of minicaffe.

Every error a user can cause derives from :class:`MinicaffeError`, so a caller (or the CLI) can
catch one type. Each message says where the problem is (file:line:col, or the layer name and
type), what was expected and what was received.
"""

from __future__ import annotations


class MinicaffeError(Exception):
    """Base class of every error minicaffe raises on bad input."""


class PrototxtError(MinicaffeError):
    """Malformed or invalid prototxt text (carries ``file:line:col`` when known)."""

    def __init__(
        self,
        message: str,
        *,
        filename: str | None = None,
        line: int | None = None,
        column: int | None = None,
        token: str | None = None,
    ):
        self.filename, self.line, self.column, self.token = filename, line, column, token
        self.detail = message
        where = filename or "<text>"
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {message}")


class UpgradeError(PrototxtError):
    """A legacy (V0/V1) net or solver that cannot be upgraded to the current format."""


class NetBuildError(MinicaffeError):
    """The layer graph cannot be built (unknown bottom, duplicate top, bad rule, ...)."""


class UnknownLayerError(NetBuildError):
    """A layer type that no registered layer implements."""


class PhaseError(NetBuildError, ValueError):
    """A phase other than TRAIN/TEST (0/1); also a ValueError, as it used to be."""


class LayerError(MinicaffeError):
    """A layer rejected its parameters or inputs."""


class ShapeError(LayerError):
    """Blob shapes that do not fit what a layer expects."""


class LabelError(LayerError):
    """Labels outside the valid range (and not equal to the ignore label)."""


class WeightsError(MinicaffeError):
    """A weights or binary file (.caffemodel, .binaryproto, .solverstate, .h5) that is unusable."""


class SolverError(MinicaffeError):
    """Invalid solver settings or a training run that cannot go on."""


class NonFiniteError(SolverError):
    """Training produced NaN or Inf (names the iteration and the first layer that did)."""


class DataError(MinicaffeError):
    """A data source that is missing, unreadable or of the wrong size."""


class FileWriteError(MinicaffeError, OSError):
    """A file that cannot be written (missing folder, no permission, disk full); names the path
    asked for. Also an OSError, so ``except OSError`` keeps catching it."""

    def __init__(self, path, reason: str, errno: int | None = None):
        super().__init__(errno, reason, str(path))
        self.message = f"{path}: cannot write: {reason}"

    def __str__(self) -> str:
        return self.message


class OutOfMemoryError(MinicaffeError, MemoryError):
    """An array too large for the memory left (names the blob or layer, its shape and size).
    Also a MemoryError, so ``except MemoryError`` keeps catching it."""


class DeviceError(MinicaffeError):
    """A requested device or engine that is not usable."""
