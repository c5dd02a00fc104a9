"""Host-to-device batch copies through pinned staging buffers (asynchronous on the GPU).

A data layer (or a Net device boundary) that produces batches on the host hands them to the GPU
with :class:`HostToDevice`: the batch is copied into a page-locked host buffer, then an
asynchronous ``cudaMemcpyAsync`` on the current stream moves it into the (preallocated) device
array, so the host returns at once and the copy overlaps the GPU work queued before it.

``slots`` buffers are used round robin. Before a buffer is refilled the host waits for the copy
that last read it (an event), which only blocks when the GPU is ``slots`` batches behind.
With a NumPy destination (CPU engine) :meth:`HostToDevice.copy` is a plain ``np.copyto``.
"""

from __future__ import annotations

import numpy as np

from minicaffe.errors import ShapeError


class HostToDevice:
    """Round-robin pinned staging for host -> device batch copies."""

    def __init__(self, slots: int = 2):
        if slots < 1:
            raise ValueError(f"HostToDevice needs at least one slot; received {slots}")
        self._buffers: list = [None] * slots
        self._events: list = [None] * slots
        self._next = 0

    def copy(self, src, dst):
        """Copy host array ``src`` into ``dst`` (NumPy or CuPy, same shape; dtype converted on
        the host). Returns ``dst``; on the GPU the copy is queued on the current stream."""
        src = np.asarray(src)
        if tuple(src.shape) != tuple(dst.shape) and src.size != dst.size:
            raise ShapeError(
                f"batch copy: source {src.shape} does not fit destination {tuple(dst.shape)}"
            )
        if isinstance(dst, np.ndarray):
            np.copyto(dst, src.reshape(dst.shape), casting="same_kind")
            return dst
        from minicaffe.gpu.kernels import require_cupy

        cp = require_cupy(dst)
        import cupyx

        if not dst.flags.c_contiguous:
            raise ShapeError("batch copy: the device destination must be C-contiguous")
        slot = self._next
        self._next = (slot + 1) % len(self._buffers)
        if self._events[slot] is not None:
            self._events[slot].synchronize()
        nbytes = dst.nbytes
        buf = self._buffers[slot]
        if buf is None or buf.nbytes < nbytes:
            buf = self._buffers[slot] = cupyx.empty_pinned((max(nbytes, 1),), np.uint8)
        staged = buf[:nbytes].view(dst.dtype).reshape(dst.shape)
        np.copyto(staged, src.reshape(dst.shape), casting="same_kind")
        stream = cp.cuda.get_current_stream()
        dst.set(staged, stream=stream)
        self._events[slot] = stream.record()
        return dst
