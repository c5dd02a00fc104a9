"""SoftmaxWithLoss: softmax cross-entropy over a class axis, as Caffe, plus class weights."""

from __future__ import annotations

import string

import numpy as np

from minicaffe.losses import (
    NEG_LOG_FLT_MIN,
    VALID,
    WEIGHTED,
    ClassLossBase,
    check_label_count,
    class_layout,
    normalizer,
    read_labels,
    scale_positions,
    softmax_pass,
)
from minicaffe.proto import caffe_pb2
from minicaffe.registry import register_layer


@register_layer("SoftmaxWithLoss")
class SoftmaxWithLossLayer(ClassLossBase):
    """loss = sum over valid positions of w * -log(max(p[y], FLT_MIN)) / n, p = softmax(x).

    View x as (O, C, I) around the class axis; y = trunc(label) at each of the O*I positions.

    Params: softmax_param.axis = 1 (negative counts from the end), softmax_param.engine
    (DEFAULT / CAFFE = NumPy / CUDNN = CuPy, resolved by the registry);
    loss_param.ignore_label (unset: none) -- such positions add 0 and get a zero gradient;
    loss_param.normalization = VALID: FULL n = O*I, VALID n = valid count, BATCH_SIZE n = O,
    NONE n = 1, WEIGHTED n = sum of w over valid positions (each at least 1; WEIGHTED: 1 if 0);
    legacy loss_param.normalize (only when normalization is unset: true VALID, false
    BATCH_SIZE); class weights w (default 1): loss_param.class_weight (C values), SegNet's
    weight_by_label_freqs + class_weighting, or a third bottom shaped (C,), like one sample or
    like x, with loss_param.weight_normalization LOCAL (default) / GLOBAL / NO (Mocha.jl);
    loss_param.label_smoothing = eps (PyTorch): the target becomes (1-eps)*onehot + eps/C, i.e.
    loss += eps/C * sum_c w_c * -log p_c (without the clamp) and (1-eps) scales the true term.

    Bottoms: x (any shape), label (O*I values, same first axis as x), optional weights.
    Tops: loss (scalar), optional prob (softmax of x, shape of x; no gradient flows from it).
    Gradient: dx = lambda/n * (A * p - (1-eps) * w_y * onehot(y) - eps/C * w), where
    A = (1-eps) * w_y + eps/C * sum_c w_c, zero at ignored positions; lambda = top[0].diff.
    """

    min_top_blobs, max_top_blobs = 1, 2
    exact_num_top_blobs = -1

    def setup(self, bottom, top):
        super().setup(bottom, top)
        self.setup_classes(bottom, VALID)
        self.fused = True  # GPU: one kernel for loss and gradient (see _forward_fused)
        self._fused_done = False

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        x_shape = bottom[0].shape
        a, O, C, I = class_layout(self, x_shape, self.layer_param.softmax_param.axis)
        check_label_count(self, x_shape, bottom[1].shape, a, O, I)
        self.layout(bottom, a, O, C, I)
        if len(top) == 2:
            top[1].reshape(x_shape)

    # ------------------------------------------------------------------ forward
    def forward(self, bottom, top):
        xp, O, C, I = self.xp, self.O, self.C, self.I
        self._fused_done = False
        if (
            self.device.is_gpu
            and self.fused
            and self.eps == 0
            and len(top) == 1
            and self.phase == caffe_pb2.TRAIN
        ):
            w4 = self.class_weights(bottom)
            if w4 is None or w4.shape == (1, 1, C, 1):
                self._forward_fused(bottom, top, w4)
                return
        x = bottom[0].data
        t = self.targets(bottom, defer=True)
        terms = self.scratch("terms", (O * I,))
        lse = self.scratch("lse", (O, 1, I)).reshape(-1)

        def post(a, b):  # -log(max(p_y, FLT_MIN)) * w_y of positions a..b-1
            tc = terms[a:b]
            xp.subtract(lse[a:b], tc, out=tc)
            xp.minimum(tc, NEG_LOG_FLT_MIN, out=tc)
            if t.a_true is not None:
                tc *= t.a_true[a:b]

        keep = self._softmax(
            x,
            keep=self.phase == caffe_pb2.TRAIN or len(top) == 2,
            into=bottom[0].diff.reshape(O, C, I) if xp is np else None,
            gather=(x.reshape(-1), t.idx, terms),
            pre=lambda a, b: self.fill_targets(t, a, b),
            post=post,
        )
        loss = terms.sum()
        a_all = t.a_true  # the coefficient of p at each position (None: all 1)
        if self.eps:
            x4 = self.view4(x)
            lse4 = lse.reshape(self.N, O // self.N, 1, I)

            def neg_log(w):  # sum_c w_c * (lse - x_c)
                if w is None:
                    return C * lse4[:, :, 0] - x4.sum(axis=2)
                return lse4[:, :, 0] * w.sum(axis=2) - (x4 * w).sum(axis=2)

            smooth, wsum = self.smoothing(t, neg_log)
            eps = self.eps
            loss = (1 - eps) * loss + (eps / C) * smooth.sum()
            base = 1 if t.a_true is None else t.a_true
            a_all = ((1 - eps) * base + (eps / C) * wsum).astype(self.dtype, copy=False)
        n = self.finish(t)
        top[0].data[...] = loss / n
        if len(top) == 2:
            inv3 = self.scratch("inv", (O, 1, I))
            scale_positions(xp, keep, inv3, top[1].data.reshape(O, C, I), self.plan)
        self._saved = (t, a_all, keep)

    def _softmax(self, x, *, keep: bool, into=None, gather=None, pre=None, post=None):
        """Fill the "lse" and "inv" scratch arrays; return exp(x - m) (O, C, I) when ``keep``
        (in the TEST phase it is dropped unless a backward asks for it).

        On NumPy ``into`` is bottom[0].diff: the exponentials wait there for the backward,
        which scales them in place (Caffe's GPU code uses that diff as scratch too). A few
        sampled values are remembered, so a diff changed in between is noticed and the pass
        redone."""
        O, C, I = self.O, self.C, self.I
        lse3, inv3 = self.scratch("lse", (O, 1, I)), self.scratch("inv", (O, 1, I))
        e3 = None
        if keep:
            e3 = into if into is not None else self.scratch("exp", (O, C, I))
        chunk = None
        if not keep:
            chunk = [
                self.scratch(f"chunk{j}", (self.plan.chunk_size,)) for j in range(self.plan.workers)
            ]
        softmax_pass(
            self.xp,
            x.reshape(O, C, I),
            lse3,
            inv3,
            self.plan,
            keep=e3,
            scratch=chunk,
            gather=gather,
            pre=pre,
            post=post,
        )
        self._mark = None
        if into is not None and keep:
            step = max(1, into.size // 64)
            self._mark = (step, into.reshape(-1)[::step].copy())
        return e3

    def _kept(self, keep, d3):
        """``keep`` if still valid, else None (see :meth:`_softmax`)."""
        if keep is None or self._mark is None:
            return keep
        step, sample = self._mark
        return keep if np.array_equal(d3.reshape(-1)[::step], sample) else None

    # ------------------------------------------------------------------ backward
    def backward(self, top, propagate_down, bottom):
        self.refuse_label_gradients(propagate_down)
        if not propagate_down[0]:
            return
        if self._fused_done:
            self._backward_fused(top, bottom)
            return
        xp, O, C, I, eps = self.xp, self.O, self.C, self.I, self.eps
        t, a_all, keep = self._saved
        d3 = bottom[0].diff.reshape(O, C, I)
        keep = self._kept(keep, d3)
        if keep is None:  # after a TEST-phase forward, or a changed diff: redo the pass
            keep = self._softmax(bottom[0].data, keep=True, into=d3 if xp is np else None)
        scale = self.lambda_over(top, t.n)
        true_coef = scale * (1 - eps)  # subtracted at each label entry (times w_y)
        sub = true_coef if t.a_true is None else self.scratch("sub", (O * I,))
        # the factor of exp(x - m) at each position: lambda/n * A / sum(exp(x - m))
        factor = self.scratch("factor", (O, 1, I)).reshape(-1)
        inv = self.scratch("inv", (O, 1, I)).reshape(-1)

        def pre(a, b):  # the factors and label entries of positions a..b-1
            f = factor[a:b]
            xp.multiply(inv[a:b], scale, out=f)
            if a_all is not None:
                f *= a_all[a:b]
            if t.a_true is not None:
                xp.multiply(t.a_true[a:b], true_coef, out=sub[a:b])

        scale_positions(
            xp, keep, factor.reshape(O, 1, I), d3, self.plan, scatter=(t.idx, sub), pre=pre
        )
        if eps:
            d4 = self.view4(d3)
            w = 1 if t.w4 is None else t.w4
            term = (scale * eps / C) * xp.broadcast_to(xp.asarray(w, dtype=self.dtype), d4.shape)
            valid4 = self.valid4(t)
            d4 -= term if valid4 is None else term * valid4

    # ------------------------------------------------------------------ GPU: fused kernels
    def _forward_fused(self, bottom, top, w4):
        """One CUDA kernel reads the logits once and writes the per-position loss and the
        gradient (scaled by the loss weight in top[0].diff at this time) into bottom[0].diff;
        backward only rescales when the top diff changed since. Bad labels set a flag checked
        after the kernel (one host sync)."""
        cp = self.xp
        O, C, I = self.O, self.C, self.I
        k = _fused_kernels(cp, self.dtype)
        label = bottom[1].data
        if label.dtype != self.dtype:
            label = label.astype(self.dtype)
        pos_loss = self.scratch("pos_loss", (O * I,))
        norm = self.scratch("norm", (), np.float64)
        bad = self.scratch("bad", (), np.int32)
        lam_f = self.scratch("lam_fwd", ())
        cw = w4.reshape(-1) if w4 is not None else self.scratch("no_cw", (1,))
        has_ignore = self.ignore_label is not None
        ignore = int(self.ignore_label) if has_ignore else 0
        if self.mode in (VALID, WEIGHTED) and (
            has_ignore or (self.mode == WEIGHTED and w4 is not None)
        ):
            weighted = int(self.mode == WEIGHTED and w4 is not None)
            k["count"](
                label.reshape(-1),
                cw,
                np.int32(C),
                np.int32(has_ignore),
                np.int32(ignore),
                np.int32(weighted),
                out=norm,
            )
            if self.mode == WEIGHTED and weighted:
                cp.copyto(norm, cp.where(norm > 0, norm, 1.0))
            else:
                cp.maximum(norm, 1.0, out=norm)
        else:
            norm.fill(normalizer(self.mode, outer=O, inner=I))
        bad.fill(0)
        cp.copyto(lam_f, top[0].diff)
        write_grad = np.int32(1)
        args = (
            bottom[0].data,
            label,
            bottom[0].diff,
            pos_loss,
            cw,
            np.int32(w4 is not None),
            top[0].diff,
            norm,
            bad,
            np.int64(O),
            np.int32(C),
            np.int64(I),
            np.int32(has_ignore),
            np.int32(ignore),
            write_grad,
        )
        threads = 256
        if I == 1:
            blocks = int(min(max(1, (O * 32 + threads - 1) // threads), 65535 * 8))
            k["rows"]((blocks,), (threads,), args)
        else:
            blocks = int(min(max(1, (O * I + threads - 1) // threads), 65535 * 64))
            k["cols"]((blocks,), (threads,), args)
        top[0].data[...] = pos_loss.sum() / norm
        if int(bad.get()):
            read_labels(self, bottom[1].data, C, self.ignore_label)  # raises, naming the label
        self._fused_done = True

    def _backward_fused(self, top, bottom):
        cp = self.xp
        k = _fused_kernels(cp, self.dtype)
        diff = bottom[0].diff
        n = diff.size
        blocks = int(min(max(1, (n + 255) // 256), 2048))
        k["rescale"](
            (blocks,), (256,), (diff, top[0].diff, self.scratch("lam_fwd", ()), np.int64(n))
        )


# The fused kernels, as CUDA C instantiated for float and double (compiled by CuPy's NVRTC on
# first use on a GPU; tests compile them with nvcc where it exists).
_CUDA_TEMPLATE = r"""
extern "C" __global__ void swl_rows_${SUFFIX}(
    const $TYPE* __restrict__ x, const $TYPE* __restrict__ label, $TYPE* __restrict__ diff,
    $TYPE* __restrict__ pos_loss, const $TYPE* __restrict__ cw, int has_cw,
    const $TYPE* __restrict__ top_diff, const double* __restrict__ norm, int* __restrict__ bad,
    long long rows, int C, long long inner, int has_ignore, int ignore, int write_grad)
{
    // one warp per row of C contiguous logits (inner == 1)
    const int lane = threadIdx.x & 31;
    const long long nwarps = ((long long)gridDim.x * blockDim.x) >> 5;
    for (long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < rows;
         r += nwarps) {
        const $TYPE* xr = x + r * C;
        $TYPE m = $LOWEST, s = 0;
        for (int c = lane; c < C; c += 32) {
            $TYPE v = xr[c];
            if (v > m) { s = s * $EXP(m - v) + ($TYPE)1; m = v; } else { s += $EXP(v - m); }
        }
        for (int off = 16; off > 0; off >>= 1) {
            $TYPE m2 = __shfl_xor_sync(0xffffffffu, m, off);
            $TYPE s2 = __shfl_xor_sync(0xffffffffu, s, off);
            $TYPE mn = m > m2 ? m : m2;
            s = (s == ($TYPE)0 ? ($TYPE)0 : s * $EXP(m - mn)) +
                (s2 == ($TYPE)0 ? ($TYPE)0 : s2 * $EXP(m2 - mn));
            m = mn;
        }
        const $TYPE lse = m + $LOG(s);
        const $TYPE lv = label[r];
        const int y = (int)lv;  // truncation toward zero, as Caffe
        const bool ign = has_ignore && y == ignore;
        const bool oob = !ign && (y < 0 || y >= C || !(lv == lv));
        if (oob && lane == 0) atomicOr(bad, 1);
        const bool use = !ign && !oob;
        const $TYPE w = use ? (has_cw ? cw[y] : ($TYPE)1) : ($TYPE)0;
        if (lane == 0) pos_loss[r] = use ? w * $MIN(lse - xr[y], ($TYPE)NEG_LOG_FLT_MIN) : ($TYPE)0;
        if (write_grad) {
            $TYPE lam = top_diff[0];
            if (lam == ($TYPE)0) lam = ($TYPE)1;
            const $TYPE coef = ($TYPE)((double)(w * lam) / norm[0]);
            $TYPE* dr = diff + r * C;
            for (int c = lane; c < C; c += 32) {
                const $TYPE p = $EXP(xr[c] - lse);
                dr[c] = coef * (c == y ? p - ($TYPE)1 : p);
            }
        }
    }
}

extern "C" __global__ void swl_cols_${SUFFIX}(
    const $TYPE* __restrict__ x, const $TYPE* __restrict__ label, $TYPE* __restrict__ diff,
    $TYPE* __restrict__ pos_loss, const $TYPE* __restrict__ cw, int has_cw,
    const $TYPE* __restrict__ top_diff, const double* __restrict__ norm, int* __restrict__ bad,
    long long outer, int C, long long inner, int has_ignore, int ignore, int write_grad)
{
    // one thread per position (o, i); neighbouring threads read neighbouring i (coalesced)
    const long long total = outer * inner;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long pos = (long long)blockIdx.x * blockDim.x + threadIdx.x; pos < total;
         pos += stride) {
        const long long o = pos / inner, i = pos - o * inner;
        const $TYPE* xc = x + o * C * inner + i;
        $TYPE m = $LOWEST, s = 0;
        for (int c = 0; c < C; ++c) {
            $TYPE v = xc[c * inner];
            if (v > m) { s = s * $EXP(m - v) + ($TYPE)1; m = v; } else { s += $EXP(v - m); }
        }
        const $TYPE lse = m + $LOG(s);
        const $TYPE lv = label[pos];
        const int y = (int)lv;
        const bool ign = has_ignore && y == ignore;
        const bool oob = !ign && (y < 0 || y >= C || !(lv == lv));
        if (oob) atomicOr(bad, 1);
        const bool use = !ign && !oob;
        const $TYPE w = use ? (has_cw ? cw[y] : ($TYPE)1) : ($TYPE)0;
        pos_loss[pos] = use ? w * $MIN(lse - xc[y * inner], ($TYPE)NEG_LOG_FLT_MIN) : ($TYPE)0;
        if (write_grad) {
            $TYPE lam = top_diff[0];
            if (lam == ($TYPE)0) lam = ($TYPE)1;
            const $TYPE coef = ($TYPE)((double)(w * lam) / norm[0]);
            $TYPE* dc = diff + o * C * inner + i;
            for (int c = 0; c < C; ++c) {
                const $TYPE p = $EXP(xc[c * inner] - lse);
                dc[c * inner] = coef * (c == y ? p - ($TYPE)1 : p);
            }
        }
    }
}

extern "C" __global__ void swl_rescale_${SUFFIX}(
    $TYPE* __restrict__ diff, const $TYPE* __restrict__ top_diff,
    const $TYPE* __restrict__ lam_fwd, long long n)
{
    // the gradient was written with the loss weight of forward time; rescale if it changed
    $TYPE lf = lam_fwd[0];
    if (lf == ($TYPE)0) lf = ($TYPE)1;
    const $TYPE lb = top_diff[0];
    if (lb == lf) return;
    const $TYPE f = lb / lf;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        diff[i] *= f;
}
"""

_TYPES = {
    "f": dict(
        TYPE="float",
        SUFFIX="f32",
        EXP="expf",
        LOG="logf",
        MIN="fminf",
        LOWEST="(-3.402823466e+38f)",
    ),
    "d": dict(
        TYPE="double",
        SUFFIX="f64",
        EXP="exp",
        LOG="log",
        MIN="fmin",
        LOWEST="(-1.7976931348623157e+308)",
    ),
}


def cuda_source(dtype) -> str:
    """The fused kernels' CUDA source for ``dtype`` (float32 or float64)."""
    body = string.Template(_CUDA_TEMPLATE).substitute(_TYPES[np.dtype(dtype).char])
    return f"#define NEG_LOG_FLT_MIN {NEG_LOG_FLT_MIN!r}\n{body}"


_KERNELS: dict = {}

_COUNT_MAP = (
    "(has_ignore && (int)label == ignore) || (int)label < 0 || (int)label >= n_class || "
    "!(label == label) ? 0.0 : (weighted ? (double)cw[(int)label] : 1.0)"
)


def _fused_kernels(cp, dtype):
    key = np.dtype(dtype).char
    if key not in _KERNELS:
        suffix = _TYPES[key]["SUFFIX"]
        module = cp.RawModule(code=cuda_source(dtype))
        _KERNELS[key] = {
            "rows": module.get_function(f"swl_rows_{suffix}"),
            "cols": module.get_function(f"swl_cols_{suffix}"),
            "rescale": module.get_function(f"swl_rescale_{suffix}"),
            "count": cp.ReductionKernel(
                "T label, raw T cw, int32 n_class, int32 has_ignore, int32 ignore, int32 weighted",
                "float64 out",
                _COUNT_MAP,
                "a + b",
                "out = a",
                "0",
                f"swl_count_{suffix}",
                reduce_type="float64",
            ),
        }
    return _KERNELS[key]
