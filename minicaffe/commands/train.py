"""``minicaffe train``: train or fine-tune a model, as ``caffe train`` does.

Takes a solver prototxt (``minicaffe train solver.prototxt`` or Caffe's ``-solver``), or a net
prototxt, in which case the solver settings come from flags with sensible defaults. Caffe's flags
are accepted with one dash or two (``-solver x``, ``--solver=x``): -weights, -snapshot, -gpu,
-level, -stage, -sigint_effect, -sighup_effect.

Logs go to a file in Caffe's format (``--log``; default ``<snapshot_prefix>.log``) so existing
log parsers work, and to stderr: every line when stderr is not a terminal, else a progress bar
with the tests and snapshots printed above it.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time

HELP = "train or fine-tune a model (solver prototxt, or a net prototxt plus flags)"
DESCRIPTION = (
    "Train a model from a solver prototxt (as caffe train -solver), or from a net prototxt "
    "with the solver settings given as flags. Caffe's single-dash flags (-solver, -weights, "
    "-snapshot, -gpu, ...) are accepted too."
)

EFFECTS = ("stop", "snapshot", "none")
SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "prototxt",
        nargs="?",
        metavar="PROTOTXT",
        help="a solver prototxt, or a net prototxt (then the solver settings below apply)",
    )
    g = p.add_argument_group("Caffe's flags (one dash or two)")
    g.add_argument("-solver", "--solver", metavar="FILE", help="the solver prototxt")
    g.add_argument(
        "-weights",
        "--weights",
        metavar="A.caffemodel[,B.caffemodel]",
        help="start from these weights (fine-tuning); not with --snapshot",
    )
    g.add_argument(
        "-snapshot",
        "--snapshot",
        metavar="FILE.solverstate",
        help="resume training from this solver state",
    )
    g.add_argument(
        "-gpu",
        "--gpu",
        metavar="N|all",
        help="train on GPU N ('all' or a list: the first one); default: the "
        "solver's solver_mode, else the CPU",
    )
    g.add_argument(
        "-phase",
        "--phase",
        metavar="TRAIN",
        help="accepted for Caffe compatibility; training always uses TRAIN",
    )
    g.add_argument("-level", "--level", type=int, default=None, help="train net state level")
    g.add_argument(
        "-stage",
        "--stage",
        default=None,
        metavar="A,B",
        help="train net state stages (comma-separated)",
    )
    g.add_argument(
        "-sigint_effect",
        "--sigint_effect",
        "--sigint-effect",
        choices=EFFECTS,
        default="stop",
        help="on Ctrl-C: snapshot and stop (stop, the default), "
        "snapshot and go on (snapshot), or ignore (none)",
    )
    g.add_argument(
        "-sighup_effect",
        "--sighup_effect",
        "--sighup-effect",
        choices=EFFECTS,
        default="snapshot",
        help="on SIGHUP (default: snapshot and go on)",
    )
    s = p.add_argument_group("solver settings (defaults for a net prototxt; override a solver's)")
    s.add_argument("--iters", type=int, help="max_iter (net prototxt default 1000)")
    s.add_argument("--lr", type=float, help="base_lr (default 0.01)")
    s.add_argument("--lr-policy", choices=LR_POLICIES, help="lr_policy (default fixed)")
    s.add_argument("--gamma", type=float, help="gamma of the step, exp, inv, multistep and "
                   "sigmoid policies")
    s.add_argument("--power", type=float, help="power of the inv and poly policies")
    s.add_argument("--stepsize", type=int, metavar="N", help="stepsize of the step and sigmoid "
                   "policies")
    s.add_argument("--stepvalue", metavar="N[,M...]", help="the iterations at which multistep "
                   "lowers the rate (comma-separated)")
    s.add_argument("--momentum", type=float, help="momentum (default 0.9; 0 for AdaGrad/RMSProp)")
    s.add_argument("--weight-decay", type=float, help="weight_decay (default 5e-4)")
    s.add_argument("--solver-type", choices=SOLVER_TYPES, help="update rule (default SGD)")
    s.add_argument(
        "--snapshot-prefix",
        help="snapshot_prefix (default: the prototxt path without its extension)",
    )
    s.add_argument(
        "--snapshot-every",
        type=int,
        metavar="N",
        help="snapshot every N iterations (default: only at the end)",
    )
    s.add_argument("--display", type=int, metavar="N", help="log the loss every N iterations")
    s.add_argument(
        "--test-iter",
        type=int,
        metavar="N",
        help="batches per test (default 50 when the net has TEST-phase layers)",
    )
    s.add_argument(
        "--test-interval",
        type=int,
        metavar="N",
        help="test every N iterations (default: at the end)",
    )
    s.add_argument("--seed", type=int, help="random_seed")
    o = p.add_argument_group("output")
    o.add_argument(
        "--log", metavar="FILE", help="log file in Caffe's format (default <snapshot_prefix>.log)"
    )
    o.add_argument("--no-log", action="store_true", help="write no log file")
    o.add_argument(
        "--no-progress",
        action="store_true",
        help="print log lines instead of a progress bar on a terminal",
    )
    o.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")


def _usage(message: str) -> int:
    print(f"minicaffe train: error: {message}", file=sys.stderr)
    return 2


def load_prototxt(path: str):
    """("solver" or "net", message) for a prototxt that is either a solver or a net."""
    from minicaffe.errors import PrototxtError
    from minicaffe.prototxt import read_net_param, read_solver_param

    if not os.path.isfile(path):  # a command-line argument is a file, never inline text
        what = "is a folder, not a prototxt" if os.path.isdir(path) else "no such solver prototxt"
        raise PrototxtError(what, filename=path)
    try:
        return "solver", read_solver_param(path)
    except PrototxtError as solver_error:
        try:
            return "net", read_net_param(path)
        except PrototxtError as net_error:
            try:
                with open(path, encoding="utf-8", errors="replace") as fh:
                    text = fh.read()
            except OSError:
                raise solver_error from None
            raise (net_error if _looks_like_net(text) else solver_error) from None


def _looks_like_net(text: str) -> bool:
    """Whether prototxt text that failed to parse both ways was meant as a net: by its
    top-level field names (a solver's inline ``net_param { layer { ... } }`` stays a solver)."""
    from minicaffe.proto import caffe_pb2

    net_fields = set(caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name)
    solver_fields = set(caffe_pb2.SolverParameter.DESCRIPTOR.fields_by_name)
    votes = 0
    depth = 0
    for line in text.splitlines():
        line = re.sub(r"#.*", "", re.sub(r"\"[^\"]*\"|'[^']*'", '""', line))
        if depth == 0:
            m = re.match(r"\s*([A-Za-z_]\w*)\s*[{:]", line)
            if m:
                name = m.group(1)
                votes += (name in net_fields and name not in solver_fields) - (
                    name in solver_fields and name not in net_fields)
        depth = max(0, depth + line.count("{") - line.count("}"))
    if votes:
        return votes > 0
    return bool(re.search(r"^\s*(layers?|input|input_shape)\s*[{:]", text, re.M))


def solver_from_net(path: str, net_param, args):
    """A SolverParameter training the net at ``path`` with the flags' settings."""
    from minicaffe.proto import caffe_pb2

    sp = caffe_pb2.SolverParameter()
    sp.net = path
    sp.type = args.solver_type or "SGD"
    sp.base_lr = 0.01
    sp.lr_policy = "fixed"
    sp.momentum = 0.0 if sp.type in ("AdaGrad", "RMSProp") else 0.9
    sp.weight_decay = 5e-4
    sp.max_iter = 1000 if args.iters is None else args.iters
    sp.display = max(1, min(100, sp.max_iter // 20))
    sp.snapshot_prefix = os.path.splitext(path)[0]
    sp.solver_mode = caffe_pb2.SolverParameter.CPU
    has_test = any(
        rule.HasField("phase")
        for layer in net_param.layer
        for rule in list(layer.include) + list(layer.exclude)
    )
    if has_test:
        sp.test_iter.append(50)
        sp.test_interval = max(sp.max_iter, 1)
        sp.test_initialization = False
    return sp


# command-line flag -> the SolverParameter field it overrides (when given)
_OVERRIDES = {
    "iters": "max_iter",
    "lr": "base_lr",
    "lr_policy": "lr_policy",
    "momentum": "momentum",
    "weight_decay": "weight_decay",
    "solver_type": "type",
    "snapshot_prefix": "snapshot_prefix",
    "snapshot_every": "snapshot",
    "display": "display",
    "test_interval": "test_interval",
    "seed": "random_seed",
    "gamma": "gamma",
    "power": "power",
    "stepsize": "stepsize",
}

# what each lr_policy reads besides base_lr (Caffe's formulas): for a net prototxt, where no
# solver file can give them, the flags must
_POLICY_NEEDS = {
    "step": ("gamma", "stepsize"),
    "exp": ("gamma",),
    "inv": ("gamma", "power"),
    "multistep": ("gamma", "stepvalue"),
    "poly": ("power",),
    "sigmoid": ("gamma", "stepsize"),
}


def check_flags(args, kind: str) -> str | None:
    """A usage problem of the solver flags, or None."""
    for flag in ("iters", "display", "test_iter", "test_interval", "snapshot_every", "stepsize"):
        value = getattr(args, flag)
        if value is not None and value < 0:
            return f"--{flag.replace('_', '-')} must be >= 0; received {value}"
    if args.stepvalue is not None:
        try:
            [int(v) for v in args.stepvalue.split(",")]
        except ValueError:
            return f"--stepvalue takes iterations separated by commas; received {args.stepvalue!r}"
    if kind == "net" and args.lr_policy:
        missing = [f"--{name}" for name in _POLICY_NEEDS.get(args.lr_policy, ())
                   if getattr(args, name) is None]
        if missing:
            return f"--lr-policy {args.lr_policy} needs {' and '.join(missing)}"
    return None


def apply_overrides(sp, args) -> None:
    for flag, field in _OVERRIDES.items():
        value = getattr(args, flag)
        if value is not None:
            setattr(sp, field, value)
    if args.test_iter is not None:
        if len(sp.test_iter):
            for i in range(len(sp.test_iter)):
                sp.test_iter[i] = args.test_iter
        else:
            sp.test_iter.append(args.test_iter)
    if args.stepvalue is not None:
        sp.ClearField("stepvalue")
        sp.stepvalue.extend(int(v) for v in args.stepvalue.split(","))
    if args.level is not None:
        sp.train_state.level = args.level
    sp.train_state.stage.extend(flag_stages(args.stage))


def flag_stages(value: str | None) -> list[str]:
    """Caffe's -stage: split on commas; not given, it is one empty stage (as Caffe's flag
    default "" splits), so ``include { stage: "" }`` layers are in by default."""
    return (value or "").split(",")


def parse_gpu_ids(value: str) -> list[int] | str:
    """Device ids of --gpu: a list, "all", or [] for an empty value (the CPU, as in Caffe,
    where scripts pass ``-gpu "$GPU"``)."""
    if value.strip() == "":
        return []
    if value.strip().lower() == "all":
        return "all"
    try:
        ids = [int(v) for v in value.split(",") if v.strip() != ""]
    except ValueError:
        raise ValueError(
            f"--gpu takes a device number, a comma list or 'all'; received {value!r}"
        ) from None
    if not ids or any(i < 0 for i in ids):
        raise ValueError(f"--gpu takes device numbers >= 0; received {value!r}")
    return ids


def choose_device(gpu_flag: str | None, sp, log: logging.Logger, what: str = "train"):
    """Caffe's rule: --gpu wins (an empty one is the CPU); else solver_mode GPU (+device_id)
    when set; else the CPU."""
    from minicaffe import backend
    from minicaffe.errors import DeviceError
    from minicaffe.proto import caffe_pb2

    if gpu_flag is not None:
        ids = parse_gpu_ids(gpu_flag)
        if not ids:  # an empty --gpu
            return backend.CPU_DEVICE
        cp = backend.get_cupy()
        if cp is None:
            raise DeviceError(
                f"--gpu {gpu_flag}: no usable GPU (CuPy is not installed or no "
                f"CUDA device answers); install minicaffe[gpu] or leave out --gpu "
                f"to {what} on the CPU"
            )
        count = cp.cuda.runtime.getDeviceCount()
        ids = list(range(count)) if ids == "all" else ids
        bad = [i for i in ids if i >= count]
        if bad:
            raise DeviceError(f"--gpu {gpu_flag}: no GPU {bad[0]}; this machine has {count}")
        if len(ids) > 1:
            log.warning("minicaffe trains on one GPU; using GPU %d of %s", ids[0], ids)
        return backend.gpu_device(ids[0])
    if sp.HasField("solver_mode") and sp.solver_mode == caffe_pb2.SolverParameter.GPU:
        if backend.gpu_available():
            return backend.gpu_device(sp.device_id)
        log.warning(
            "the solver asks for solver_mode: GPU but no usable GPU was found (CuPy or "
            "a CUDA device is missing); training on the CPU"
        )
    return backend.CPU_DEVICE


def listed(items) -> str:
    """The first 8 of ``items`` for a message: " (a, b, ...)", or "" when there are none."""
    shown = ", ".join(items[:8]) + (", ..." if len(items) > 8 else "")
    return f" ({shown})" if items else ""


def _report_weights(solver, log: logging.Logger) -> None:
    for path, rep in solver.weights_reports:
        log.info(
            "Fine-tuning from %s: copied %d layers%s; skipped %d layers not in this net%s; "
            "re-initialised %d layers not in the file%s",
            path,
            len(rep.copied),
            listed(rep.copied),
            len(rep.not_in_model),
            listed(rep.not_in_model),
            len(rep.not_in_file),
            listed(rep.not_in_file),
        )


class _Progress:
    """A tqdm bar fed after every iteration; the loss is read at most twice a second."""

    def __init__(self, solver):
        from tqdm import tqdm

        self.bar = tqdm(
            total=solver.param.max_iter,
            unit="iter",
            dynamic_ncols=True,
            file=sys.stderr,
            leave=True,
        )
        self.last = 0.0
        self.started = False

    def __call__(self, solver) -> None:
        if not self.started:  # after a restore the first iteration is not 1
            self.bar.n = self.bar.last_print_n = solver.iter - 1
            self.started = True
        now = time.monotonic()
        if now - self.last >= 0.5 or solver.iter >= solver.param.max_iter:
            self.last = now
            post = {"loss": f"{float(solver.smoothed_loss):.4g}"}
            if solver.last_lr is not None:
                post["lr"] = f"{solver.last_lr:.3g}"
            self.bar.set_postfix(post, refresh=False)
        self.bar.update(solver.iter - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def run(args) -> int:
    from minicaffe.errors import MinicaffeError
    from minicaffe.logs import training_log
    from minicaffe.solver import SignalHandler, solver_class

    path = args.solver or args.prototxt
    if args.solver and args.prototxt and args.solver != args.prototxt:
        return _usage(f"two prototxts given ({args.prototxt} and --solver {args.solver}); give one")
    if not path:
        return _usage(
            "need a solver prototxt (or a net prototxt) to train: minicaffe train solver.prototxt"
        )
    if args.snapshot and args.weights:
        return _usage("give --snapshot to resume training or --weights to fine-tune, not both")
    if args.phase is not None and args.phase.upper() != "TRAIN":
        return _usage(
            f"training builds the train net in phase TRAIN; received --phase {args.phase}"
        )
    if args.gpu is not None:
        try:
            parse_gpu_ids(args.gpu)
        except ValueError as exc:
            return _usage(str(exc))

    kind, message = load_prototxt(path)
    problem = check_flags(args, kind)
    if problem:
        return _usage(problem)
    if kind == "net":
        sp = solver_from_net(path, message, args)
    else:
        sp = message
    apply_overrides(sp, args)
    if not sp.HasField("snapshot_prefix"):
        sp.snapshot_prefix = os.path.splitext(path)[0]
    elif os.path.isdir(sp.snapshot_prefix) or sp.snapshot_prefix.endswith("/"):
        sp.snapshot_prefix = os.path.join(
            sp.snapshot_prefix, os.path.splitext(os.path.basename(path))[0]
        )
    if args.snapshot:
        sp.ClearField("weights")
    elif args.weights:
        sp.ClearField("weights")
        sp.weights.append(args.weights)

    default_log = (sp.snapshot_prefix if os.path.basename(sp.snapshot_prefix)
                   else os.path.join(sp.snapshot_prefix, "train")) + ".log"
    log_path = None if args.no_log else (args.log or default_log)
    if log_path and os.path.isdir(log_path):
        return _usage(f"--log {log_path} is a folder; give a file name")
    tty = sys.stderr.isatty()
    console = "none" if args.quiet else ("bar" if tty and not args.no_progress else "glog")
    progress = None
    with (
        training_log(log_path, console=console) as log,
        SignalHandler(args.sigint_effect, args.sighup_effect) as signals,
    ):
        try:
            log.info("minicaffe train %s (%s prototxt)", path, kind)
            device = choose_device(args.gpu, sp, log)
            log.info("Using %s", device)
            solver = solver_class(sp.type or "SGD")(sp, _source=path, device=device)
            _report_weights(solver, log)
            solver.set_action_function(signals.action)
            if console == "bar":
                progress = _Progress(solver)
                solver.add_progress_callback(progress)
            solver.solve(args.snapshot or None)
        except MinicaffeError as exc:
            if log_path:  # (the CLI prints it; with no log file nothing else may)
                log.error("%s", exc, extra={"mc_kind": "file_only"})
            raise
        finally:
            if progress is not None:
                progress.close()
    if not args.quiet:
        parts = [f"trained '{solver.net.name}' to iteration {solver.iter}"]
        if solver.last_snapshot:
            parts.append(f"last snapshot {solver.last_snapshot}")
        if log_path:
            parts.append(f"log {log_path}")
        print("; ".join(parts))
    return 0
