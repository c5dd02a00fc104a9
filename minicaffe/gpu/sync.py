"""``sync_check``: assert that a block of GPU work makes no host round trip.

    with sync_check():
        net.forward_backward()          # raises HostSyncError on .get(), float(), .item(), ...

Two detectors run together:

1. CuPy's own synchronisation guard (``cupyx.allow_synchronize(False)``, where this CuPy still has
   it): CuPy raises at its sync points (``.get()``, ``.item()``, ``float()``/``bool()`` of an
   array, ``cupy.asnumpy``, stream and event waits).
2. CUDA stream capture (``capture=True``): the block is recorded as a CUDA graph on a private
   non-blocking stream. Any synchronous device-to-host copy, any wait on the device and any use of
   the legacy default stream invalidates the capture, and CUDA reports it. Kernels are only
   RECORDED during capture; on a clean exit the graph is launched once (``replay=True``) so the
   block's results are there afterwards as if it had run normally.

Warm up first (run the block once outside the check): compiling a kernel or growing CuPy's memory
pool for the first time inside a capture is legal but slow, and some libraries' one-time setup
synchronises. Data-layer host-to-device copies belong outside the checked block (they are host
work by nature).
"""

from __future__ import annotations

import contextlib
import warnings

from minicaffe.backend import get_cupy
from minicaffe.errors import DeviceError

# cudaErrorStreamCapture* (900-908): what CUDA answers when a captured stream is synchronised,
# copied to the host synchronously, or mixed with the legacy stream.
_CAPTURE_ERRORS = range(900, 909)


class HostSyncError(AssertionError):
    """The checked block synchronised the host with the device."""


def _is_sync_error(exc: BaseException, cp) -> bool:
    try:
        import cupyx

        sync_cls = getattr(cupyx, "DeviceSynchronized", None)
    except ImportError:  # pragma: no cover - cupyx ships with cupy
        sync_cls = None
    if sync_cls is not None and isinstance(exc, sync_cls):
        return True
    runtime_error = getattr(cp.cuda.runtime, "CUDARuntimeError", None)
    return (
        runtime_error is not None
        and isinstance(exc, runtime_error)
        and getattr(exc, "status", None) in _CAPTURE_ERRORS
    )


@contextlib.contextmanager
def _cupy_guard():
    try:
        import cupyx
    except ImportError:  # pragma: no cover
        yield
        return
    allow = getattr(cupyx, "allow_synchronize", None)
    if allow is None:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated in CuPy >= 10 but still the best signal
        guard = allow(False)
        guard.__enter__()
    try:
        yield
    finally:
        guard.__exit__(None, None, None)


@contextlib.contextmanager
def sync_check(*, capture: bool = True, replay: bool = True):
    """Raise :class:`HostSyncError` if the block synchronises host and device (see module doc)."""
    cp = get_cupy()
    if cp is None:
        raise DeviceError("sync_check needs CuPy and a CUDA device")
    if not capture:
        try:
            with _cupy_guard():
                yield
        except Exception as exc:
            if _is_sync_error(exc, cp):
                raise HostSyncError(f"host round trip inside the checked block: {exc}") from exc
            raise
        return

    stream = cp.cuda.Stream(non_blocking=True)
    failure: BaseException | None = None
    graph = None
    with stream:
        stream.begin_capture()
        try:
            with _cupy_guard():
                yield
        except BaseException as exc:  # the capture must be ended whatever happened
            failure = exc
        finally:
            try:
                graph = stream.end_capture()
            except Exception as exc:
                if failure is None:
                    failure = exc
    if failure is not None:
        if _is_sync_error(failure, cp):
            raise HostSyncError(
                f"host round trip inside the checked block (stream capture was broken): {failure}"
            ) from failure
        raise failure
    if replay and graph is not None:
        graph.launch(stream)
        stream.synchronize()
