"""The training loop shared by every solver: Caffe's ``Solver`` and ``SGDSolver`` machinery.

A solver owns one train net and zero or more test nets (which share the train net's weights),
and repeats Caffe's iteration (``Solver::Step``)::

    clear parameter diffs
    test every ``test_interval`` iterations (and at 0 when ``test_initialization``)
    loss = mean over ``iter_size`` of net.forward_backward()     (diffs accumulate)
    smoothed loss over the last ``average_loss`` iterations; log it every ``display``
    rate = lr_policy(iter)
    clip: if clip_gradients >= 0 and ||g||_2 > clip_gradients, g *= clip_gradients / ||g||_2
    per learnable param: g /= iter_size;  g += decay * w (L2) or decay * sign(w) (L1)
                         u = rule(g, history, rate * lr_mult);  w -= u
    iter += 1; snapshot every ``snapshot`` iterations or on request (SIGINT/SIGHUP)

``decay = weight_decay * decay_mult``. The update rule (``compute_update_value``) is what the
solver classes in :mod:`minicaffe.solvers` differ by. Every step runs in place on the parameter,
diff and history arrays of the net's array module (numpy or cupy); the loss stays an array
scalar, read on the host only when it is displayed or checked for NaN/Inf (once per step).

Learning-rate policies (``iter`` = completed updates, before this one): fixed, step
(base_lr * gamma^floor(iter/stepsize)), exp (base_lr * gamma^iter), inv
(base_lr * (1 + gamma*iter)^-power), multistep (base_lr * gamma^k, k = stepvalues passed),
poly (base_lr * (1 - iter/max_iter)^power), sigmoid (base_lr / (1 + exp(-gamma*(iter-stepsize)))).

Snapshots are ``<snapshot_prefix>_iter_<N>.caffemodel`` + ``.solverstate`` (``.h5`` for
snapshot_format HDF5), each written atomically. minicaffe's .solverstate also records where every
data layer stood (``SolverState.data_state``, field 1000, which Caffe ignores), so a resumed run
consumes the same batches as an uninterrupted one.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
from google.protobuf import message as pb_message

from minicaffe import backend, blas
from minicaffe.backend import CPU_DEVICE, Device
from minicaffe.errors import (
    MinicaffeError,
    NonFiniteError,
    PrototxtError,
    SolverError,
    WeightsError,
)
from minicaffe.proto import caffe_pb2
from minicaffe.prototxt import HDF5_ERRORS

log = logging.getLogger("minicaffe.solver")

LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")

# solver type string -> class; filled by @register_solver in minicaffe/solvers/*.py
_SOLVERS: dict[str, type] = {}

# The record under which the process-wide random generator's state is saved with the data layers.
_RNG_RECORD = ("solver", "host_rng")


def register_solver(type_name: str):
    """Class decorator registering a Solver subclass under SolverParameter ``type``."""

    def decorate(cls):
        cls.type_name = type_name
        _SOLVERS[type_name] = cls
        return cls

    return decorate


def solver_types() -> list[str]:
    import minicaffe.solvers  # noqa: F401  (registers the update rules)

    return list(_SOLVERS)


def solver_class(type_name: str) -> type:
    import minicaffe.solvers  # noqa: F401

    cls = _SOLVERS.get(type_name)
    if cls is None:
        close = [name for name in _SOLVERS if name.lower() == type_name.lower()]
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SolverError(f"unknown solver type {type_name!r}; {hint}known types: "
                          f"{', '.join(_SOLVERS)} (the names are case-sensitive)")
    return cls


def get_solver(solver, **kwargs) -> Solver:
    """The solver named by the prototxt's ``type`` (pycaffe's ``caffe.get_solver``)."""
    param, source = load_solver_param(solver)
    try:
        cls = solver_class(param.type or "SGD")
    except SolverError as exc:
        raise SolverError(f"{source or '<solver text>'}: {exc}") from None
    return cls(param, _source=source, **kwargs)


def load_solver_param(solver):
    """(SolverParameter, path or None) from a path, prototxt text or SolverParameter."""
    if isinstance(solver, caffe_pb2.SolverParameter):
        from minicaffe.upgrade import upgrade_solver

        param, _ = upgrade_solver(solver, "<SolverParameter>")
        return param, None
    from minicaffe.prototxt import _looks_like_text, read_solver_param

    param = read_solver_param(solver)
    source = None if _looks_like_text(solver) else os.fspath(solver)
    return param, source


# ---------------------------------------------------------------------------- lr policies


def learning_rate(param, iteration: int, current_step: int = 0) -> tuple[float, int]:
    """(rate, current_step) for ``iteration`` completed updates, by Caffe's formulas.

    ``current_step`` matters for multistep only (it advances by at most one per call, as in
    Caffe, and is saved in the .solverstate); step recomputes it as iter // stepsize.
    The rate is rounded to float32, the precision Caffe computes it in.
    """
    policy = param.lr_policy
    base = float(param.base_lr)
    gamma, power = float(param.gamma), float(param.power)
    it = int(iteration)
    if policy == "fixed":
        rate = base
    elif policy == "step":
        current_step = it // param.stepsize
        rate = base * gamma**current_step
    elif policy == "exp":
        rate = base * gamma**it
    elif policy == "inv":
        rate = base * (1.0 + gamma * it) ** (-power)
    elif policy == "multistep":
        if current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
            current_step += 1
            log.info("MultiStep Status: Iteration %d, step = %d", it, current_step)
        rate = base * gamma**current_step
    elif policy == "poly":
        frac = 1.0 - it / param.max_iter if param.max_iter else 1.0
        rate = base * (frac**power if frac > 0 or power == int(power) else 0.0)
    elif policy == "sigmoid":
        rate = base / (1.0 + math.exp(-gamma * (it - param.stepsize)))
    else:
        raise SolverError(
            f"unknown learning rate policy {policy!r}; known policies: {', '.join(LR_POLICIES)}"
        )
    return float(np.float32(rate)), current_step


# ---------------------------------------------------------------------------- signals


class SolverAction:
    NONE = "none"
    SNAPSHOT = "snapshot"
    STOP = "stop"
    ALL = (NONE, SNAPSHOT, STOP)


class SignalHandler:
    """SIGINT/SIGHUP turned into solver actions (Caffe's -sigint_effect / -sighup_effect).

    Use as a context manager around training and pass :meth:`action` to
    ``solver.set_action_function``. As in Caffe, a SIGINT with the stop effect asks for a
    snapshot and a stop at the end of the iteration (and says so on stderr); pressing it twice
    more before then raises KeyboardInterrupt, so a stuck run can still be interrupted, while
    an impatient double press does not lose the snapshot.
    """

    ABORT_AFTER = 3  # SIGINTs while a stop is pending

    def __init__(
        self, sigint_effect: str = SolverAction.STOP, sighup_effect: str = SolverAction.SNAPSHOT
    ):
        for name, value in (("sigint_effect", sigint_effect), ("sighup_effect", sighup_effect)):
            if value not in SolverAction.ALL:
                raise SolverError(
                    f"{name} must be one of {', '.join(SolverAction.ALL)}; received {value!r}"
                )
        self.effects = {"SIGINT": sigint_effect, "SIGHUP": sighup_effect}
        self._pending: list[str] = []
        self._sigints = 0
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        name = "SIGINT" if signum == signal.SIGINT else "SIGHUP"
        if name == "SIGINT" and self.effects["SIGINT"] == SolverAction.STOP:
            self._sigints += 1
            if self._sigints >= self.ABORT_AFTER:
                raise KeyboardInterrupt
            left = self.ABORT_AFTER - self._sigints
            print(
                "minicaffe: stopping after this iteration, with a snapshot (Ctrl-C "
                f"{left} more time{'s' if left > 1 else ''} to abort without one)",
                file=sys.stderr,
                flush=True,
            )
            if "SIGINT" in self._pending:
                return
        self._pending.append(name)

    def action(self) -> str:
        """The action requested since the last call (``none`` when no signal came)."""
        if not self._pending:
            self._sigints = 0  # the stop was taken: a later Ctrl-C starts counting afresh
        while self._pending:
            effect = self.effects[self._pending.pop(0)]
            if effect != SolverAction.NONE:
                return effect
        return SolverAction.NONE

    def __enter__(self) -> SignalHandler:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, getattr(signal, "SIGHUP", None)):
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


# ---------------------------------------------------------------------------- the solver


def _resolve_path(path: str, base_dir: str | None) -> str:
    """``path`` as Caffe reads it (relative to the working directory), else next to the solver."""
    if os.path.isabs(path) or os.path.exists(path) or not base_dir:
        return path
    alt = os.path.join(base_dir, path)
    return alt if os.path.exists(alt) else path


class Solver:
    """Base of every solver (pycaffe names: ``net``, ``test_nets``, ``iter``, ``step``,
    ``solve``, ``snapshot``, ``restore``, ``add_callback``, ``apply_update``).

    ``Solver(solver, device=None, dtype=float32)``: ``solver`` is a solver prototxt path, its
    text, or a SolverParameter. ``device`` defaults to the process mode
    (``minicaffe.set_mode_gpu()``), as in pycaffe; ``minicaffe train`` also honours
    ``solver_mode``/``device_id``.
    """

    type_name = ""
    # history arrays per learnable parameter (AdaDelta and Adam keep two)
    num_history_sets = 1

    def __init__(
        self, solver, *, device: Device | None = None, dtype=np.float32, _source: str | None = None
    ):
        if _source is None:
            param, source = load_solver_param(solver)
        else:
            param, source = solver, _source
        self.param = param
        self.source = source
        self.base_dir = os.path.dirname(os.path.abspath(source)) if source else None
        if self.type_name and param.type and param.type != self.type_name:
            log.info(
                "solver %s has type %r; running it as %s", self.where(), param.type, self.type_name
            )
        self.device = device if device is not None else backend.default_device()
        self.dtype = np.dtype(dtype)
        self._check_params()
        self._set_snapshot_prefix()
        if param.random_seed >= 0:
            backend.set_random_seed(param.random_seed)
        self.iter = 0
        self.current_step = 0
        self.requested_early_exit = False
        self.losses: list = []
        self.smoothed_loss = 0.0
        self.last_lr: float | None = None
        self.action_function = None
        self._callbacks: list[tuple] = []
        self._progress: list = []
        self._iterations_last = 0
        self._timer = time.perf_counter()
        self._scratch_buffers: list = []
        self.weights_reports = []
        self.last_snapshot: str | None = None
        self._init_train_net()
        self._init_test_nets()
        self._init_history()
        if param.snapshot:
            self._check_snapshot_write_permissions()

    # ------------------------------------------------------------------ setup
    def where(self) -> str:
        return self.source or "<SolverParameter>"

    def _error(self, message: str) -> SolverError:
        return SolverError(f"{self.where()}: {message}")

    def _check_params(self) -> None:
        p = self.param
        if p.lr_policy not in LR_POLICIES:
            what = (
                "lr_policy is not set" if not p.lr_policy else f"unknown lr_policy {p.lr_policy!r}"
            )
            raise self._error(f"{what}; choose one of {', '.join(LR_POLICIES)}")
        if p.lr_policy in ("step", "sigmoid") and p.stepsize <= 0:
            raise self._error(
                f"lr_policy {p.lr_policy!r} needs stepsize > 0; received {p.stepsize}"
            )
        if p.lr_policy in ("step", "exp", "inv") and p.gamma < 0:
            raise self._error(f"lr_policy {p.lr_policy!r} needs gamma >= 0; received {p.gamma}")
        if p.lr_policy == "poly" and p.max_iter <= 0:
            raise self._error("lr_policy 'poly' needs max_iter > 0")
        if p.regularization_type not in ("L1", "L2"):
            raise self._error(
                f"regularization_type must be 'L1' or 'L2'; received {p.regularization_type!r}"
            )
        if p.iter_size < 1:
            raise self._error(f"iter_size must be >= 1; received {p.iter_size}")
        if p.average_loss < 1:
            raise self._error(f"average_loss must be >= 1; received {p.average_loss}")
        if p.max_iter < 0:
            raise self._error(f"max_iter must be >= 0; received {p.max_iter}")
        for name in ("display", "snapshot", "test_interval"):
            if getattr(p, name) < 0:
                raise self._error(f"{name} must be >= 0; received {getattr(p, name)}")
        if p.snapshot_format not in (
            caffe_pb2.SolverParameter.HDF5,
            caffe_pb2.SolverParameter.BINARYPROTO,
        ):
            raise self._error(f"unknown snapshot_format {p.snapshot_format}")
        self.check_solver_params()

    def check_solver_params(self) -> None:
        """Rule-specific checks (overridden by the solver classes)."""

    def _refuse_momentum(self, rule: str) -> None:
        """The check of the rules that have no momentum term (AdaGrad, RMSProp)."""
        if self.param.momentum != 0:
            raise self._error(
                f"{rule} does not use momentum; set momentum to 0 (received "
                f"{float(np.float32(self.param.momentum)):.7g})"
            )

    def _set_snapshot_prefix(self) -> None:
        p = self.param
        if not p.HasField("snapshot_prefix"):
            stem = os.path.splitext(self.source)[0] if self.source else "snapshot"
            p.snapshot_prefix = stem
        elif self.source and (os.path.isdir(p.snapshot_prefix) or p.snapshot_prefix.endswith("/")):
            p.snapshot_prefix = os.path.join(p.snapshot_prefix, Path(self.source).stem)

    def _make_net(self, net_param, what: str):
        from minicaffe.net import Net

        try:
            return Net(net_param, device=self.device, dtype=self.dtype)
        except MinicaffeError as exc:
            raise type(exc)(f"{self.where()} ({what}): {exc}") from exc

    def _read_net(self, path: str):
        from minicaffe.prototxt import read_net_param

        try:
            return read_net_param(_resolve_path(path, self.base_dir))
        except PrototxtError as exc:
            raise type(exc)(f"{exc.detail} (the net named by solver {self.where()})",
                            filename=exc.filename, line=exc.line, column=exc.column,
                            token=exc.token) from None

    def _init_train_net(self) -> None:
        p = self.param
        given = [f for f in ("train_net_param", "train_net", "net_param", "net") if p.HasField(f)]
        if not given:
            raise self._error("no train net: set one of net, net_param, train_net, train_net_param")
        if len(given) > 1:
            raise self._error(
                f"more than one train net given ({', '.join(given)}); set only "
                "one of net, net_param, train_net, train_net_param"
            )
        field = given[0]
        if field.endswith("_param"):
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(getattr(p, field))
        else:
            net_param = self._read_net(getattr(p, field))
        state = caffe_pb2.NetState(phase=caffe_pb2.TRAIN)
        state.MergeFrom(net_param.state)
        state.MergeFrom(p.train_state)
        net_param.state.CopyFrom(state)
        if field.endswith("_param"):  # Caffe's wording, for logs compared side by side
            log.info("Creating training net specified in %s.", field)
        else:
            log.info("Creating training net from %s file: %s", field, getattr(p, field))
        self.net = self._make_net(net_param, "train net")
        if self.net.learnable_params and not self.net.has_loss:
            log.warning(
                "the train net '%s' has no loss (no top with a loss weight): training will not "
                "change its weights", self.net.name
            )
        self._load_weights(self.net, list(p.weights), report=True)

    def _init_test_nets(self) -> None:
        p = self.param
        generic = p.HasField("net") or p.HasField("net_param")
        n_explicit = len(p.test_net_param) + len(p.test_net)
        if generic:
            if len(p.test_iter) < n_explicit:
                raise self._error(
                    f"test_iter must be given for each test net ({n_explicit}); "
                    f"received {len(p.test_iter)}"
                )
        elif len(p.test_iter) != n_explicit:
            raise self._error(
                f"test_iter must be given once per test net ({n_explicit}); "
                f"received {len(p.test_iter)}"
            )
        n_generic = len(p.test_iter) - n_explicit if generic else 0
        total = n_explicit + n_generic
        if len(p.test_state) and len(p.test_state) != total:
            raise self._error(
                f"test_state must be given once per test net ({total}); "
                f"received {len(p.test_state)}"
            )
        if total and p.test_interval <= 0:
            raise self._error(
                f"test_interval must be > 0 when there are test nets ({total}); "
                f"received {p.test_interval}"
            )
        sources = []
        for net in p.test_net_param:
            sources.append(("test_net_param", lambda net=net: net))
        for path in p.test_net:
            sources.append((f"test_net file: {path}", lambda path=path: self._read_net(path)))
        for _ in range(n_generic):
            if p.HasField("net_param"):
                sources.append(("net_param", lambda: p.net_param))
            else:
                sources.append((f"net file: {p.net}", lambda: self._read_net(p.net)))
        self.test_nets = []
        for i, (what, get) in enumerate(sources):
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(get())
            state = caffe_pb2.NetState(phase=caffe_pb2.TEST)
            state.MergeFrom(net_param.state)
            if len(p.test_state):
                state.MergeFrom(p.test_state[i])
            net_param.state.CopyFrom(state)
            log.info("Creating test net (#%d) specified by %s", i, what)
            net = self._make_net(net_param, f"test net #{i}")
            self._load_weights(net, list(p.weights), report=False)
            net.share_with(self.net)
            self.test_nets.append(net)

    def _load_weights(self, net, weights: list[str], report: bool) -> None:
        for entry in weights:
            for path in entry.split(","):
                if not path:
                    continue
                rep = net.copy_from(_resolve_path(path, self.base_dir))
                if report:
                    self.weights_reports.append((path, rep))

    def _init_history(self) -> None:
        params = self.net.learnable_params
        self.history = [
            blob.xp.zeros(blob.shape, dtype=blob.dtype)
            for _ in range(self.num_history_sets)
            for blob in params
        ]

    def _check_snapshot_write_permissions(self) -> None:
        probe = self.snapshot_filename(".tempfile")
        directory = os.path.dirname(probe)
        try:
            if directory:
                os.makedirs(directory, exist_ok=True)
            with open(probe, "wb"):
                pass
            os.remove(probe)
        except OSError as exc:
            raise self._error(
                f"cannot write snapshots with prefix {self.param.snapshot_prefix!r}"
                f" ({exc.strerror}); make sure its folder is writable"
            ) from None

    # ------------------------------------------------------------------ pycaffe surface
    def add_callback(self, on_start=None, on_gradients_ready=None) -> None:
        """Call ``on_start()`` before each iteration's forward and ``on_gradients_ready()``
        before its update (pycaffe's ``solver.add_callback``)."""
        self._callbacks.append((on_start, on_gradients_ready))

    def add_progress_callback(self, fn) -> None:
        """Call ``fn(solver)`` after every completed iteration (progress bars)."""
        self._progress.append(fn)

    def set_action_function(self, fn) -> None:
        """``fn() -> 'none' | 'snapshot' | 'stop'``, polled after each iteration and test batch."""
        self.action_function = fn

    def _requested_action(self) -> str:
        return self.action_function() if self.action_function is not None else SolverAction.NONE

    @property
    def test_net(self):
        return self.test_nets[0] if self.test_nets else None

    def share_weights(self, net) -> None:
        """Make ``net`` use the train net's weights (by layer name)."""
        net.share_with(self.net)

    # ------------------------------------------------------------------ the loop
    def solve(self, resume_file: str | None = None) -> None:
        """Train to max_iter (Caffe's ``Solver::Solve``), optionally resuming a snapshot."""
        p = self.param
        self.requested_early_exit = False
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        if p.snapshot_after_train and not p.snapshot:
            # the final snapshot may be the run's only output: find out now, not at the end
            self._check_snapshot_write_permissions()
        if resume_file:
            log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        start_iter = self.iter
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0:
            loss = self.net.forward_prefilled()
            self._update_smoothed_loss(loss, start_iter)
            log.info("Iteration %d, loss = %s", self.iter, _fmt(self.smoothed_loss))
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        log.info("Optimization Done.")

    def step(self, iters: int) -> None:
        """Run ``iters`` training iterations (Caffe's ``Solver::Step``)."""
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        self.losses = []
        self.smoothed_loss = 0.0
        self._timer = time.perf_counter()
        self._iterations_last = self.iter
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if (
                p.test_interval
                and self.iter % p.test_interval == 0
                and (self.iter > 0 or p.test_initialization)
            ):
                self.test_all()
                if self.requested_early_exit:
                    break
            for on_start, _ in self._callbacks:
                if on_start is not None:
                    on_start()
            display = bool(p.display) and self.iter % p.display == 0
            debug = display and p.debug_info
            self.net.debug_info = debug
            loss = self.net.forward_backward()
            for _ in range(p.iter_size - 1):
                loss = loss + self.net.forward_backward()
            if p.iter_size > 1:
                loss = loss / p.iter_size
            self._update_smoothed_loss(loss, start_iter)
            if debug:
                _debug_forward_backward(self.net)
            if display:
                self._display()
            self._check_finite(loss)
            for _, on_ready in self._callbacks:
                if on_ready is not None:
                    on_ready()
            self.apply_update()
            if debug:
                _debug_update(self.net)
            self.iter += 1
            for fn in self._progress:
                fn(self)
            request = self._requested_action()
            if (p.snapshot and self.iter % p.snapshot == 0) or request == SolverAction.SNAPSHOT:
                self.snapshot()
            if request == SolverAction.STOP:
                self.requested_early_exit = True
                break

    def _update_smoothed_loss(self, loss, start_iter: int) -> None:
        window = self.param.average_loss
        if len(self.losses) < window:
            self.losses.append(loss)
            n = len(self.losses)
            self.smoothed_loss = (self.smoothed_loss * (n - 1) + loss) / n
        else:
            idx = (self.iter - start_iter) % window
            self.smoothed_loss = self.smoothed_loss + (loss - self.losses[idx]) / window
            self.losses[idx] = loss

    def _display(self) -> None:
        now = time.perf_counter()
        lapse = now - self._timer
        per_s = (self.iter - self._iterations_last) / (lapse or 1.0)
        log.info(
            "Iteration %d (%s iter/s, %ss/%d iters), loss = %s",
            self.iter,
            _fmt(per_s),
            _fmt(lapse),
            self.param.display,
            _fmt(self.smoothed_loss),
            extra={"mc_kind": "display"},
        )
        self._timer = now
        self._iterations_last = self.iter
        for line in _output_lines(self.net, "Train", None):
            log.info("%s", line, extra={"mc_kind": "display"})

    # ------------------------------------------------------------------ non-finite guard
    def _check_finite(self, loss) -> None:
        """Stop before updating when the loss or any gradient holds NaN/Inf (one host read)."""
        xp = self.net.learnable_params[0].xp if self.net.learnable_params else np
        total = loss
        for blob in self.net.learnable_params:
            total = total + blob.diff.sum()
        if bool(xp.isfinite(total)):
            return
        loss_bad = not bool(xp.isfinite(loss))
        bad_params = [
            blob.name
            for blob in self.net.learnable_params
            if not bool(xp.isfinite(blob.diff).all())
        ]
        if not loss_bad and not bad_params:
            return  # a finite gradient whose sum overflowed float32
        what = (
            f"the loss is {float(loss)}"
            if loss_bad
            else f"the gradient of {', '.join(bad_params[:5])} is not finite"
        )
        culprit = _first_nonfinite_layer(self.net)
        where = (
            f"first non-finite output: {culprit}"
            if culprit
            else "no layer output is non-finite; the gradient went non-finite in backward"
        )
        if not culprit:
            grad_culprit = _first_nonfinite_backward(self.net)
            if grad_culprit:
                where += f" (first in backward: {grad_culprit})"
        raise NonFiniteError(
            f"training stopped at iteration {self.iter}: {what}; {where}. The weights were not "
            "updated and earlier snapshots are intact; lower base_lr, add clip_gradients, or "
            "check the data"
        )

    # ------------------------------------------------------------------ testing
    def test_all(self) -> None:
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)

    def test(self, test_net_id: int = 0) -> list[tuple[str, float]]:
        """Run test net ``test_net_id`` for its test_iter batches and log the mean outputs."""
        p = self.param
        log.info("Iteration %d, Testing net (#%d)", self.iter, test_net_id)
        net = self.test_nets[test_net_id]
        n_iter = p.test_iter[test_net_id]
        scores = None
        loss = 0.0
        for _ in range(n_iter):
            request = self._requested_action()
            while request != SolverAction.NONE:
                if request == SolverAction.SNAPSHOT:
                    self.snapshot()
                elif request == SolverAction.STOP:
                    self.requested_early_exit = True
                request = self._requested_action()
            if self.requested_early_exit:
                break
            iter_loss = net.forward_prefilled()
            if p.test_compute_loss:
                loss = loss + iter_loss
            outs = [net.blobs[name].data.ravel() for name in net.outputs]
            if scores is None:
                scores = [o.astype(self.dtype, copy=True) for o in outs]
            else:
                for acc, o in zip(scores, outs):
                    acc += o
        if self.requested_early_exit:
            log.info("Test interrupted.")
            return []
        if p.test_compute_loss and n_iter:
            log.info("Test loss: %s", _fmt(float(loss) / n_iter))
        results = []
        if scores is not None:
            means = [backend.to_numpy(s) / np.float32(n_iter) for s in scores]
            for line, item in zip(_output_lines(net, "Test", means), _flat_outputs(net, means)):
                log.info("%s", line)
                results.append(item)
        self.last_test_results = results
        return results

    # ------------------------------------------------------------------ the update
    @property
    def lr(self) -> float:
        """The learning rate of the next update (pycaffe's ``solver.lr``); reading it changes
        nothing."""
        return learning_rate(self.param, self.iter, self.current_step)[0]

    def get_learning_rate(self) -> float:
        rate, self.current_step = learning_rate(self.param, self.iter, self.current_step)
        return rate

    def apply_update(self) -> None:
        """Clip, normalise, regularise and apply one update to every learnable parameter."""
        p = self.param
        rate = self.get_learning_rate()
        self.last_lr = rate
        if p.display and self.iter % p.display == 0:
            log.info("Iteration %d, lr = %s", self.iter, _fmt(rate), extra={"mc_kind": "display"})
        if self._fusable() and (self.device.is_gpu or self._fused_reference):
            self._apply_fused(rate)
            return
        self.clip_gradients()
        for pid in range(len(self.net.learnable_params)):
            self.normalize(pid)
            self.regularize(pid)
            self.compute_update_value(pid, rate)
        for blob in self.net.learnable_params:
            data = blob.data
            blob.xp.subtract(data, blob.diff, out=data)  # (``data[...] -= diff`` copies twice)

    # GPU: one fused kernel per parameter (minicaffe.gpu.updates) does clip/iter_size scaling,
    # regularisation, the rule and w -= u. ``_fused_reference`` runs the same dispatch with the
    # kernels' array-op twins, so the CPU tests check it against the xp path above.
    fused_rule = ""
    _fused_reference = False

    def _fusable(self) -> bool:
        """True unless a subclass replaced a step the fused kernel would skip."""
        cls = type(self)

        def owner(name):
            return next(k for k in cls.__mro__ if name in k.__dict__)

        rule_owner = owner("fused_update")
        return (
            bool(self.fused_rule)
            and owner("compute_update_value") is rule_owner
            and all(owner(n) is Solver for n in ("clip_gradients", "normalize", "regularize"))
        )

    def _apply_fused(self, rate: float) -> None:
        from minicaffe.gpu import updates

        def pick(name: str):
            return getattr(updates, name + "_ref" if self._fused_reference else name)

        p = self.param
        params = self.net.learnable_params
        clip = updates.clip_scale([b.diff for b in params], p.clip_gradients)
        scale = clip
        if p.iter_size > 1:
            scale = scale * float(np.float32(1.0 / p.iter_size))
        for pid in range(len(params)):
            decay = float(
                np.float32(p.weight_decay) * np.float32(self.net.params_weight_decay[pid])
            )
            self.fused_update(pick, pid, self.local_rate(pid, rate), decay, scale)
        if p.clip_gradients >= 0 and p.display and self.iter % p.display == 0:
            # Caffe's line, but only on display iterations (Caffe: every clipped iteration):
            # reading the factor is a host sync, which the update otherwise avoids
            # (docs/gpu.md). It is read after the updates are queued.
            factor = float(clip)
            if factor < 1:
                self._log_clipping(float(p.clip_gradients) / factor, factor)

    def fused_update(self, pick, pid: int, lr: float, decay: float, scale) -> None:
        """Call the rule's fused kernel ``pick("<rule>_update")`` for learnable param ``pid``."""
        raise NotImplementedError

    def clip_gradients(self) -> None:
        clip = self.param.clip_gradients
        if clip < 0:
            return
        params = self.net.learnable_params
        sumsq = 0.0
        for blob in params:
            g = blob.diff.ravel()
            sumsq = sumsq + blob.xp.dot(g, g)
        norm = float(np.sqrt(np.float32(float(sumsq))))
        if norm > clip:
            scale = float(np.float32(clip / norm))
            self._log_clipping(norm, scale)
            for blob in params:
                blob.diff[...] *= scale

    def _log_clipping(self, norm: float, scale: float) -> None:
        log.info(
            "Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale factor %s",
            _fmt(norm),
            _fmt(self.param.clip_gradients),
            _fmt(scale),
        )

    def normalize(self, pid: int) -> None:
        if self.param.iter_size > 1:
            scale = float(np.float32(1.0 / self.param.iter_size))
            self.net.learnable_params[pid].diff[...] *= scale

    def regularize(self, pid: int) -> None:
        blob = self.net.learnable_params[pid]
        decay = float(
            np.float32(self.param.weight_decay) * np.float32(self.net.params_weight_decay[pid])
        )
        if not decay:
            return
        g, w = blob.diff, blob.data
        if self.param.regularization_type == "L2" and blas.axpy(decay, w, g):
            return  # (one pass, as Caffe's caffe_axpy)
        tmp = self.scratch(pid, 0)
        if self.param.regularization_type == "L2":
            blob.xp.multiply(w, decay, out=tmp)
        else:
            blob.xp.sign(w, out=tmp)
            tmp *= decay
        g += tmp

    def local_rate(self, pid: int, rate: float) -> float:
        return float(np.float32(rate) * np.float32(self.net.params_lr[pid]))

    def compute_update_value(self, pid: int, rate: float) -> None:
        """Turn the diff of learnable param ``pid`` into the step ``u`` (w -= u)."""
        raise NotImplementedError

    def scratch(self, pid: int, k: int):
        """Scratch array ``k`` shaped like learnable param ``pid`` (one shared buffer per k)."""
        blob = self.net.learnable_params[pid]
        while len(self._scratch_buffers) <= k:
            self._scratch_buffers.append(None)
        buf = self._scratch_buffers[k]
        if buf is None or buf.size < blob.count or buf.dtype != blob.dtype:
            size = max(b.count for b in self.net.learnable_params)
            buf = self._scratch_buffers[k] = blob.xp.empty(size, dtype=blob.dtype)
        return buf[: blob.count].reshape(blob.shape)

    # ------------------------------------------------------------------ snapshots
    def snapshot_filename(self, extension: str) -> str:
        return f"{self.param.snapshot_prefix}_iter_{self.iter}{extension}"

    def snapshot(self) -> str:
        """Write ``<prefix>_iter_<N>.caffemodel`` and ``.solverstate``; returns the state path."""
        hdf5 = self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5
        model = self.snapshot_filename(".caffemodel.h5" if hdf5 else ".caffemodel")
        directory = os.path.dirname(model)
        if directory:
            os.makedirs(directory, exist_ok=True)
        fmt = "HDF5" if hdf5 else "binary proto"
        log.info("Snapshotting to %s file %s", fmt, model)
        if hdf5:
            self.net.save_hdf5(model, self.param.snapshot_diff)
        else:
            self.net.save(model, write_diff=self.param.snapshot_diff)
        state_path = self.snapshot_filename(".solverstate.h5" if hdf5 else ".solverstate")
        log.info("Snapshotting solver state to %s file %s", fmt, state_path)
        state = caffe_pb2.SolverState(
            iter=self.iter, learned_net=model, current_step=self.current_step
        )
        state.data_state.extend(self._data_states())
        history = [backend.to_numpy(h) for h in self.history]
        if hdf5:
            _write_solverstate_h5(state_path, state, history)
        else:
            from minicaffe.prototxt import write_solverstate

            write_solverstate(state_path, state, history)
        self.last_snapshot = state_path
        return state_path

    def _nets(self):
        yield "train", self.net
        for i, net in enumerate(self.test_nets):
            yield f"test{i}", net

    def _data_states(self) -> list:
        records = []
        for net_name, net in self._nets():
            for layer in net.layers:
                fn = getattr(layer, "data_state", None)
                if callable(fn):
                    st = fn()
                    st.layer = layer.name
                    st.net = net_name
                    records.append(st)
        rng_state = backend.rng().bit_generator.state
        records.append(
            caffe_pb2.DataLayerState(
                net=_RNG_RECORD[0],
                layer=_RNG_RECORD[1],
                rng_state=json.dumps(rng_state, sort_keys=True).encode(),
            )
        )
        return records

    def restore(self, path: str) -> None:
        """Continue from a .solverstate (or .solverstate.h5) written by minicaffe or Caffe."""
        from minicaffe.prototxt import is_hdf5_file

        path = os.fspath(path)
        if is_hdf5_file(path, (".h5",)):
            state, history = _read_solverstate_h5(path)
        else:
            from minicaffe.prototxt import read_solverstate

            state, history = read_solverstate(path)
        if len(history) != len(self.history):
            raise WeightsError(
                f"{path}: holds {len(history)} history blobs but this {self.type_name} solver "
                f"has {len(self.history)} ({len(self.net.learnable_params)} learnable params x "
                f"{self.num_history_sets}); was it written for another net or solver type?"
            )
        for i, (src, dst) in enumerate(zip(history, self.history)):
            src = np.asarray(src)
            if src.size != dst.size:
                raise WeightsError(
                    f"{path}: history blob {i} has shape {src.shape} but learnable param "
                    f"{self.net.learnable_params[i % len(self.net.learnable_params)].name} "
                    f"needs {tuple(dst.shape)}"
                )
        if state.learned_net:
            model = state.learned_net
            if not os.path.exists(model):
                alt = os.path.join(os.path.dirname(path), os.path.basename(model))
                if not os.path.exists(alt):
                    raise WeightsError(
                        f"{path}: its weights file (learned_net) {model} is missing, also "
                        f"beside the state as {alt}")
                model = alt
            self.net.copy_from(model)
        for src, dst in zip(history, self.history):
            dst[...] = backend.to_xp(np.asarray(src).reshape(dst.shape), _xp_of(dst), dst.dtype)
        self.iter = state.iter
        self.current_step = state.current_step
        self._restore_data_states(state.data_state, path)

    def _restore_data_states(self, records, path: str) -> None:
        nets = dict(self._nets())
        for st in records:
            if (st.net, st.layer) == _RNG_RECORD:
                try:
                    backend.rng().bit_generator.state = json.loads(st.rng_state.decode())
                except (ValueError, TypeError, KeyError):
                    warnings.warn(
                        f"{path}: the saved random generator state is unreadable; "
                        "random draws will differ from the interrupted run",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                continue
            net = nets.get(st.net)
            layer = net.layer_dict.get(st.layer) if net is not None else None
            if layer is None or not callable(getattr(layer, "restore_data_state", None)):
                warnings.warn(
                    f"{path}: the snapshot records the position of data layer "
                    f"'{st.layer}' of the {st.net} net, which this solver does not "
                    "have; it starts from the beginning",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            layer.restore_data_state(st)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.where()!r} iter={self.iter}>"


# ---------------------------------------------------------------------------- helpers


def _xp_of(arr):
    return backend.array_module(arr)


def _fmt(value) -> str:
    """A number as C++ streams print it by default (6 significant digits)."""
    return f"{float(value):.6g}"


def _flat_outputs(net, values=None):
    """(name, value, loss weight) for every element of every net output, in Caffe's order."""
    for j, name in enumerate(net.outputs):
        arr = backend.to_numpy(net.blobs[name].data).ravel() if values is None else values[j]
        weight = net.blob_loss_weights.get(name, 0.0)
        for v in arr:
            yield name, float(v), weight


def _output_lines(net, kind: str, values):
    for k, (name, v, weight) in enumerate(_flat_outputs(net, values)):
        extra = (
            f" (* {_fmt(weight)} = {_fmt(np.float32(weight) * np.float32(v))} loss)"
            if weight
            else ""
        )
        yield f"    {kind} net output #{k}: {name} = {_fmt(v)}{extra}"


def _abs_mean(arr) -> str:
    xp = backend.array_module(arr)
    return _fmt(float(xp.abs(arr).mean())) if arr.size else "0"


def _debug_forward_backward(net) -> None:
    """Caffe's debug_info lines (mean absolute values) for the pass just run. Blobs computed in
    place show their final value."""
    lps = net.net_param.layer
    for li, lp in enumerate(lps):
        for ti, blob in enumerate(net._top_vecs[li][: len(lp.top)]):
            log.info(
                "    [Forward] Layer %s, top blob %s data: %s",
                lp.name,
                lp.top[ti],
                _abs_mean(blob.data),
            )
        for pi, blob in enumerate(net.layers[li].blobs):
            log.info(
                "    [Forward] Layer %s, param blob %d data: %s", lp.name, pi, _abs_mean(blob.data)
            )
    for li in range(len(lps) - 1, -1, -1):
        lp = lps[li]
        if not net.layer_need_backward[li]:
            continue
        for bi, blob in enumerate(net._bottom_vecs[li]):
            if net.bottom_need_backward[li][bi]:
                log.info(
                    "    [Backward] Layer %s, bottom blob %s diff: %s",
                    lp.name,
                    lp.bottom[bi],
                    _abs_mean(blob.diff),
                )
        for pi, blob in enumerate(net.layers[li].blobs):
            if (
                pi < len(net.layers[li].param_propagate_down)
                and net.layers[li].param_propagate_down[pi]
            ):
                log.info(
                    "    [Backward] Layer %s, param blob %d diff: %s",
                    lp.name,
                    pi,
                    _abs_mean(blob.diff),
                )


def _debug_update(net) -> None:
    for k, (li, pi) in enumerate(net.param_layer_indices):
        if net.param_owners[k] != -1:
            continue
        blob = net.layers[li].blobs[pi]
        log.info(
            "    [Update] Layer %s, param %s data: %s; diff: %s",
            net.layers[li].name,
            net.param_display_names[k],
            _abs_mean(blob.data),
            _abs_mean(blob.diff),
        )


def _nonfinite(arr) -> bool:
    xp = backend.array_module(arr)
    return arr.size > 0 and not bool(xp.isfinite(arr).all())


def _first_nonfinite_layer(net) -> str | None:
    """The first layer (forward order) whose top data holds NaN/Inf, recomputed layer by layer
    from the current inputs when that is safe (no source top is modified in place)."""
    lps = net.net_param.layer
    sources = {t for lp in lps if not lp.bottom for t in lp.top}
    rerun = not any(b in sources and b in lp.top for lp in lps for b in lp.bottom)
    for li, lp in enumerate(lps):
        if rerun and lp.bottom:
            try:
                net.forward_layer(li)
            except Exception:  # the scan must not hide the NaN report itself
                rerun = False
        for ti, blob in enumerate(net._top_vecs[li]):
            if _nonfinite(blob.data):
                name = lp.top[ti] if ti < len(lp.top) else f"#{ti}"
                return f"layer '{lp.name}' ({lp.type}), top '{name}'"
    return None


def _first_nonfinite_backward(net) -> str | None:
    lps = net.net_param.layer
    for li in range(len(lps) - 1, -1, -1):
        layer = net.layers[li]
        for i, blob in enumerate(layer.blobs):
            if blob.has_diff and _nonfinite(blob.diff):
                return f"layer '{lps[li].name}' ({lps[li].type}), param {i} diff"
        for bi, blob in enumerate(net._bottom_vecs[li]):
            if net.bottom_need_backward[li][bi] and blob.has_diff and _nonfinite(blob.diff):
                bname = lps[li].bottom[bi]
                return f"layer '{lps[li].name}' ({lps[li].type}), bottom '{bname}' diff"
    return None


# ---------------------------------------------------------------------------- HDF5 snapshots


def _h5py():
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        raise SolverError("snapshot_format: HDF5 needs h5py (pip install h5py)") from None
    return h5py


def _write_solverstate_h5(path: str, state, history) -> None:
    from minicaffe.prototxt import atomic_write_bytes

    h5py = _h5py()
    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        # Caffe's layout (hdf5_save_int / hdf5_save_string): the ints as 1-element arrays, the
        # path as a NUL-terminated fixed-length string, which Caffe's reader needs (it copies
        # the dataset into a buffer of its size and reads up to the first NUL).
        f.create_dataset("iter", data=np.array([state.iter], dtype=np.int32))
        _write_c_string(f, "learned_net", state.learned_net.encode())
        f.create_dataset("current_step", data=np.array([state.current_step], dtype=np.int32))
        g = f.create_group("history")
        for i, h in enumerate(history):
            g.create_dataset(str(i), data=np.asarray(h))
        if len(state.data_state):
            extra = caffe_pb2.SolverState()
            extra.data_state.extend(state.data_state)
            f.create_dataset(
                "minicaffe_data_state", data=np.void(extra.SerializeToString(deterministic=True))
            )
    atomic_write_bytes(path, bio.getvalue())


def _write_c_string(f, name: str, value: bytes) -> None:
    """A scalar dataset of a fixed-length NUL-terminated string (H5LTmake_dataset_string)."""
    h5py = _h5py()
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(value) + 1)
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    dset = h5py.h5d.create(f.id, name.encode(), tid, space)
    dset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(value + b"\0", dtype=f"S{len(value) + 1}"))


def _h5_int(dset) -> int:
    """An int dataset as Caffe's hdf5_load_int reads it: its first element (Caffe writes a
    1-element array; older minicaffe versions wrote a scalar)."""
    arr = np.asarray(dset[()])
    if arr.size < 1:
        raise ValueError(f"dataset {dset.name} is empty")
    return int(arr.reshape(-1)[0])


def _read_solverstate_h5(path: str):
    h5py = _h5py()
    state = caffe_pb2.SolverState()
    try:
        with h5py.File(path, "r") as f:
            state.iter = _h5_int(f["iter"])
            learned = f["learned_net"][()] if "learned_net" in f else b""
            if isinstance(learned, bytes):
                learned = learned.split(b"\0", 1)[0].decode()
            state.learned_net = str(learned)
            if "current_step" in f:
                state.current_step = _h5_int(f["current_step"])
            group = f["history"] if "history" in f else {}
            history = [np.asarray(group[k], dtype=np.float32) for k in sorted(group, key=int)]
            if "minicaffe_data_state" in f:
                extra = caffe_pb2.SolverState()
                extra.ParseFromString(f["minicaffe_data_state"][()].tobytes())
                state.data_state.extend(extra.data_state)
    except HDF5_ERRORS + (pb_message.DecodeError,) as exc:
        raise WeightsError(
            f"{path}: damaged or not a Caffe HDF5 solver state ({type(exc).__name__}: {exc}); "
            "expected datasets "
            "iter, learned_net, current_step and group history"
        ) from None
    return state, history


__all__ = [
    "LR_POLICIES",
    "SignalHandler",
    "Solver",
    "SolverAction",
    "get_solver",
    "learning_rate",
    "load_solver_param",
    "register_solver",
    "solver_class",
    "solver_types",
    "CPU_DEVICE",
]
