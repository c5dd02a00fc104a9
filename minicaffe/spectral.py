"""Stride-1 2-D convolution through the discrete Fourier transform, in the working layout.

A convolution with stride 1 is a product in the frequency domain: with the input zero-padded to
``L = H + 2 pad`` per axis, Caffe's cross-correlation of every output position equals the
circular one (no wrap-around reaches a valid output), so per frequency bin ``f`` the layer is
one small channel-mixing product ``Y_f (O, N) = K_f (O, C) @ X_f (C, N)`` of complex numbers.
For the 5x5 layers of cifar10_quick (16x16 and 8x8 maps, 32 and 64 channels) that mixing takes
a third to a seventh of the multiplications of the direct convolution.

The transforms are done as matrix products too (the DFT matrices are small, L = 12 to 20), so
every stage is a BLAS GEMM over the batch-innermost (C, H, W, N) blobs, with no FFT library
and no layout change at either end. Complex numbers are held as separate real and imaginary
planes, and every stage is a real linear map, so the backward pass is the same GEMMs with the
matrices transposed (exact adjoints). Stages of the forward (``Rh = Lh // 2 + 1`` bins along
H, which uses the input's real symmetry; all ``Lw`` bins along W):

* A: real DFT along H of each channel: ``(2 Rh, H) @ (H, W * N)``; the zero padding is folded
  into the matrix (phase of ``h + pad``), so no padded copy is made.
* B: complex DFT along W for each (channel, H bin): ``(Lw, 2 W) @ (2 W, N)`` for the real and
  the imaginary rows.
* mixing, per bin: ``(O, 2 C) @ (2 C, N)`` for the real and imaginary rows; the bias is added
  to the zero-frequency bin.
* B': inverse DFT along W of each (output channel, H bin): ``(2 W_out, 2 Lw) @ (2 Lw, N)``.
* A': inverse real DFT along H: ``(H_out, 2 Rh) @ (2 Rh, W_out * N)``, which writes the
  (O, H_out, W_out, N) top.

The weight spectra are one GEMM of the weights with the kernel's DFT matrix per forward. The
results equal the direct convolution's to float32 rounding (measured: largest error 2-3e-7 of
the largest output, the same as a GEMM over the kernel offsets); the order of the additions
differs from Caffe's, as it does between BLAS libraries. ``MINICAFFE_SPECTRAL=0`` turns the
plan off. Which layers take it is decided by counting multiplications (:func:`pays`).
"""

from __future__ import annotations

import os

import numpy as np

from minicaffe.functional import ConvGeometry, address_key

# The plan is taken where the direct convolution needs at least this many times the
# multiply-adds of all its stages (its GEMMs are smaller and run slower per multiply-add:
# cifar10_quick's conv2, 2.6x fewer, measured 1.7x faster forward and 2x backward).
MIN_GAIN = float(os.environ.get("MINICAFFE_SPECTRAL", 2.0))
# The per-bin mixing GEMMs have N columns: below MIN_BATCH they run too far below BLAS speed
# (cifar10_quick's conv2 at batch 16 was as fast either way, at batch 8 2x slower).
MIN_BATCH = int(os.environ.get("MINICAFFE_SPECTRAL_MIN_BATCH", 32))
# Largest weight spectrum (bins x C x O) and input or output spectrum (values) the plan may
# hold. The weight spectra are rebuilt at every forward and backward; for wide layers (256 x
# 384 channels on 13x13, 12 M values) that alone took longer than the direct convolution.
MAX_WEIGHT_SPECTRUM = int(os.environ.get("MINICAFFE_SPECTRAL_MAX_W", 1 << 20))
MAX_ELEMS = int(os.environ.get("MINICAFFE_SPECTRAL_MAX", 1 << 24))


def _sizes(geom: ConvGeometry):
    """(Lh, Lw, Rh): the transform lengths (the padded input) and the H bins kept."""
    (h, w), (ph, pw) = geom.in_size, geom.pad
    lh, lw = h + 2 * ph, w + 2 * pw
    return lh, lw, lh // 2 + 1


def stage_macs(num: int, channels: int, num_output: int, geom: ConvGeometry) -> int:
    """Multiply-adds of one forward: the five stages and the weights' transform."""
    (h, w), (ho, wo) = geom.in_size, geom.out_size
    lh, lw, rh = _sizes(geom)
    c, o, n, f = channels, num_output, num, rh * lw
    return n * (
        c * 2 * rh * h * w  # A
        + c * rh * 2 * lw * 2 * w  # B
        + f * 4 * o * c  # mixing
        + o * rh * 2 * wo * 2 * lw  # B'
        + o * ho * 2 * rh * wo  # A'
    ) + 2 * f * geom.kernel_count * o * c  # weight spectra


def pays(num: int, channels: int, num_output: int, geom: ConvGeometry, group: int) -> bool:
    """Whether this layer runs through the spectral plan: 2-D, stride 1, one group, a batch of
    at least MIN_BATCH, spectra within their caps, and the direct convolution's multiply-adds
    at least MIN_GAIN times the plan's."""
    if MIN_GAIN <= 0 or group != 1 or len(geom.kernel) != 2 or num < MIN_BATCH:
        return False
    if any(s != 1 for s in geom.stride):
        return False
    (ho, wo), (_, lw, rh) = geom.out_size, _sizes(geom)
    if rh * lw * channels * num_output > MAX_WEIGHT_SPECTRUM:
        return False
    if 2 * rh * lw * num * max(channels, num_output) > MAX_ELEMS:
        return False
    direct = num * num_output * channels * geom.kernel_count * ho * wo
    return direct >= MIN_GAIN * stage_macs(num, channels, num_output, geom)


def _phase(bins: int, positions, length: int) -> np.ndarray:
    """exp(-2 pi i m p / length) for the bins m (rows) and the positions p (columns)."""
    return np.exp(-2j * np.pi * np.outer(np.arange(bins), positions) / length)


class SpectralConvPlan:
    """Stride-1 convolution of a (C, H, W, N) input into a (O, H_out, W_out, N) top through
    per-frequency channel mixing (see the module docstring). Same interface as the other
    working-layout plans (minicaffe.chwn): ``source``, ``loaded_source``, ``forward`` and
    ``backward``."""

    def __init__(self, dtype, num: int, channels: int, num_output: int, geom: ConvGeometry):
        self.dtype = dt = np.dtype(dtype)
        self.n, self.c, self.o, self.geom = num, channels, num_output, geom
        (h, w), (ho, wo) = geom.in_size, geom.out_size
        (kh, kw), (ph, pw), (dh, dw) = geom.kernel, geom.pad, geom.dilation
        lh, lw, rh = _sizes(geom)
        self.h, self.w, self.ho, self.wo, self.lh, self.lw, self.rh = h, w, ho, wo, lh, lw, rh
        self.f = rh * lw
        # A: rows (H bin, re/im) over the input rows, shifted by the padding
        ea = _phase(rh, np.arange(h) + ph, lh)
        self.ta = np.stack([ea.real, ea.imag], 1).reshape(2 * rh, h).astype(dt)
        self.ta_t = np.ascontiguousarray(self.ta.T)
        # B: [real rows; imaginary rows] of the W-transform of (re, im) inputs
        eb = _phase(lw, np.arange(w) + pw, lw)
        self.tb = np.stack([np.hstack([eb.real, -eb.imag]), np.hstack([eb.imag, eb.real])])
        self.tb = self.tb.astype(dt)  # (2, Lw, 2W)
        self.tb_t = np.ascontiguousarray(self.tb.reshape(2 * lw, 2 * w).T)  # (2W, 2Lw)
        # B': inverse W-transform onto the output columns, (re, im) -> (re, im)
        ei = np.conj(_phase(lw, np.arange(wo), lw)).T  # (Wo, Lw)
        self.tb2 = np.block([[ei.real, -ei.imag], [ei.imag, ei.real]]).astype(dt)
        self.tb2_t = np.ascontiguousarray(self.tb2.T).reshape(2, lw, 2 * wo)
        # A': inverse real transform along H onto the output rows; bins other than 0 and the
        # Nyquist bin stand for their conjugate twins too (weight 2)
        weight = np.full(rh, 2.0)
        weight[0] = 1.0
        if lh % 2 == 0:
            weight[-1] = 1.0
        ea2 = np.conj(_phase(rh, np.arange(ho), lh)).T * weight / (lh * lw)  # (Ho, Rh)
        self.ta2 = np.stack([ea2.real, -ea2.imag], 2).reshape(ho, 2 * rh).astype(dt)
        self.ta2_t = np.ascontiguousarray(self.ta2.T)
        # kernel spectra: [Re; -Im] of the DFT of each filter (the cross-correlation takes the
        # conjugate), as one (2F, kh*kw) matrix applied to the filters
        ek = (
            _phase(rh, np.arange(kh) * dh, lh)[:, None, :, None]
            * _phase(lw, np.arange(kw) * dw, lw)[None, :, None, :]
        ).reshape(self.f, kh * kw)
        self.ek = np.vstack([ek.real, -ek.imag]).astype(dt)  # (2F, kh*kw)
        f, c, o, n = self.f, channels, num_output, num
        # mixing matrices per bin: rows (re/im out, o), columns (re/im in, c)
        self.m = np.empty((f, 2, o, 2, c), dt)
        self.kk = np.empty((2 * f, o * c), dt)
        self.z1 = np.empty((c, 2 * rh, w * n), dt)  # after A (and dL/d of it)
        self.x = np.empty((2, c, rh, lw, n), dt)  # input spectrum (kept for the backward)
        self.y = np.empty(f * 2 * o * n, dt)  # output spectrum (and its gradient)
        self.z2 = np.empty((o, 2 * rh, wo * n), dt)  # after B' (and dL/d of it)
        self.w_seen = None  # the weights self.m was made from
        self.dm = None
        self.xt = None  # (C, H, W, N) copy of an (N, C, H, W) bottom
        self._x_of = None  # the source whose spectrum self.x holds

    # --------------------------------------------------------------------------- input
    def source(self, x, chwn: bool):
        """The (C, H, W, N) input: ``x`` itself, or a copy of an (N, C, H, W) ``x``."""
        if chwn:
            return x
        if self.xt is None:
            self.xt = np.empty((self.c, self.h, self.w, self.n), self.dtype)
        self.xt[...] = x.transpose(1, 2, 3, 0)
        return self.xt

    def loaded_source(self, x, chwn: bool):
        return x if chwn else self.xt if self.xt is not None else self.source(x, chwn)

    # --------------------------------------------------------------------------- stages
    def _spectrum(self, src) -> None:
        """self.x = the input spectrum (stages A and B)."""
        c, rh, w, n = self.c, self.rh, self.w, self.n
        np.matmul(self.ta, src.reshape(c, self.h, w * n), out=self.z1)
        np.matmul(self.tb[None, None], self.z1.reshape(c, rh, 1, 2 * w, n),
                  out=self.x.transpose(1, 2, 0, 3, 4))
        self._x_of = address_key(src, thread=False)

    def _kernel(self, w2) -> None:
        """self.m = the mixing matrices of the weights ``w2`` (O, C * kh * kw), rebuilt only
        when the weights differ from the ones they were made from (the backward's data
        gradient reuses the forward's; weights changed in between are still honoured)."""
        if self.w_seen is not None and np.array_equal(self.w_seen, w2):
            return
        o, c, f = self.o, self.c, self.f
        np.matmul(self.ek, w2.reshape(o * c, -1).T, out=self.kk)
        kr, ki = self.kk[:f].reshape(f, o, c), self.kk[f:].reshape(f, o, c)
        m = self.m
        m[:, 0, :, 0] = kr
        np.negative(ki, out=m[:, 0, :, 1])
        m[:, 1, :, 0] = ki
        m[:, 1, :, 1] = kr
        if self.w_seen is None:
            self.w_seen = np.empty_like(w2)
        np.copyto(self.w_seen, w2)

    def forward(self, src, w2, y, bias=None) -> None:
        """y (O, H_out, W_out, N) = conv(src) (+ bias); ``src`` from :meth:`source`."""
        o, rh, lw, n, c = self.o, self.rh, self.lw, self.n, self.c
        self._kernel(w2)
        self._spectrum(src)
        spec = self.y.reshape(o, rh, 2, lw, n)
        xf = self.x.reshape(2 * c, rh, lw, n).transpose(1, 2, 0, 3)[:, :, None]
        np.matmul(self.m.reshape(rh, lw, 2, o, 2 * c), xf, out=spec.transpose(1, 3, 2, 0, 4))
        if bias is not None:  # a constant added everywhere is the zero bin times lh * lw
            spec[:, 0, 0, 0, :] += (bias * (self.lh * self.lw))[:, None]
        np.matmul(self.tb2, spec.reshape(o * rh, 2 * lw, n),
                  out=self.z2.reshape(o * rh, 2 * self.wo, n))
        np.matmul(self.ta2, self.z2, out=y.reshape(o, self.ho, self.wo * n))

    def backward(self, w2, dy, src, dw=None, db=None, dx=None) -> None:
        """dw += dL/dW, db += dL/db, dx = dL/dx ((C, H, W, N)); dy (O, H_out, W_out, N)
        contiguous; ``src`` is what the forward read (its spectrum is reused if still held)."""
        o, c, f, rh, lw, n = self.o, self.c, self.f, self.rh, self.lw, self.n
        if dw is None and dx is None:
            if db is not None:
                db += dy.reshape(o, -1).sum(axis=1)
            return
        # adjoints of A' and B': the output spectrum's gradient, rows (bin, re/im, o)
        np.matmul(self.ta2_t, dy.reshape(o, self.ho, self.wo * n), out=self.z2)
        dspec = self.y.reshape(rh, lw, 2, o, n)
        np.matmul(self.tb2_t[None, None], self.z2.reshape(o, rh, 1, 2 * self.wo, n),
                  out=dspec.transpose(3, 0, 2, 1, 4))
        dflat = dspec.reshape(f, 2 * o, n)
        if db is not None:
            db += dspec[0, 0, 0].sum(axis=1) * (self.lh * self.lw)
        if dw is not None:
            if self._x_of != address_key(src, thread=False):
                self._spectrum(src)
            if self.dm is None:
                self.dm = np.empty((f, 2, o, 2, c), self.dtype)
            np.matmul(dflat, self.x.reshape(2 * c, f, n).transpose(1, 2, 0),
                      out=self.dm.reshape(f, 2 * o, 2 * c))
            dm = self.dm
            # the weight spectra's gradients (rows [Re; Im] as self.kk), then the filters'
            dkk = self.kk.reshape(2, f, o, c)
            np.add(dm[:, 0, :, 0], dm[:, 1, :, 1], out=dkk[0])
            np.subtract(dm[:, 1, :, 0], dm[:, 0, :, 1], out=dkk[1])
            dw.reshape(o * c, -1)[...] += (self.ek.T @ self.kk).T
        if dx is not None:
            self._kernel(w2)
            dx_spec = self.x  # (its input spectrum is spent: the weight gradient is done)
            self._x_of = None
            mt = self.m.reshape(rh, lw, 2 * o, 2, c).transpose(0, 1, 3, 4, 2)
            np.matmul(mt, dflat.reshape(rh, lw, 1, 2 * o, n),
                      out=dx_spec.reshape(c, rh, 2, lw, n).transpose(1, 3, 2, 0, 4))
            np.matmul(self.tb_t, dx_spec.reshape(c * rh, 2 * lw, n),
                      out=self.z1.reshape(c * rh, 2 * self.w, n))
            np.matmul(self.ta_t, self.z1, out=dx.reshape(c, self.h, self.w * n))
