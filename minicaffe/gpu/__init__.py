"""The CuPy engine's fused kernels, each with an xp reference twin (no CuPy import at load time).

Modules: :mod:`~minicaffe.gpu.activations` (ReLU/leaky ReLU, Sigmoid, TanH, ELU, PReLU),
:mod:`~minicaffe.gpu.im2col` (im2col/col2im with pad, stride, dilation),
:mod:`~minicaffe.gpu.pooling` (MAX/AVE forward and backward with Caffe's window rules),
:mod:`~minicaffe.gpu.updates` (one kernel per parameter update for every Caffe solver),
:mod:`~minicaffe.gpu.transfer` (pinned host-to-device batch copies), and :func:`sync_check`
(asserts that a block of GPU work makes no host round trip). Kernel sources are module-level
specs (:mod:`~minicaffe.gpu.kernels`); each is compiled on its first call. See docs/gpu.md.
"""

from __future__ import annotations

from minicaffe.gpu.sync import HostSyncError, sync_check

__all__ = ["HostSyncError", "sync_check"]
