"""Kernel specs, the lazy CuPy kernel cache, and a stand-alone CUDA generator for compile tests.

Every fused kernel of :mod:`minicaffe.gpu` is declared at module level as a spec holding its CUDA C
text (:class:`Elementwise` for ``cupy.ElementwiseKernel``, :class:`Reduction` for
``cupy.ReductionKernel``, :class:`Raw` for ``cupy.RawKernel``). Nothing here imports CuPy: a spec
becomes a kernel object on its first call through :func:`get_kernel`, which asks
:func:`minicaffe.backend.get_cupy` for the module and caches the result per spec name (CuPy then
caches the compiled binary per dtype on disk).

:func:`standalone_source` turns specs into one self-contained ``.cu`` file in which each kernel
body sits inside a generated ``__global__`` wrapper that declares its parameters the way CuPy
does (inputs as ``const`` references to the element, outputs as references, ``raw`` arrays as
pointers, scalars by value, type placeholders as typedefs). ``nvcc --ptx`` on that file
type-checks every body without a GPU; tests/test_gpu_kernels.py does exactly that.
"""

from __future__ import annotations

import itertools
import re
import threading
from dataclasses import dataclass, field

from minicaffe.errors import DeviceError

# CuPy's type names in parameter lists -> C types (what CuPy emits for them).
C_TYPES = {
    "bool": "bool",
    "int8": "signed char",
    "uint8": "unsigned char",
    "int16": "short",
    "uint16": "unsigned short",
    "int32": "int",
    "uint32": "unsigned int",
    "int64": "long long",
    "uint64": "unsigned long long",
    "float16": "half",
    "float32": "float",
    "float64": "double",
}

# C types each type placeholder is instantiated with by the compile test.
DEFAULT_PLACEHOLDER_TYPES: dict[str, tuple[str, ...]] = {"T": ("float", "double")}


@dataclass(frozen=True)
class Param:
    raw: bool
    type: str
    name: str

    @property
    def is_placeholder(self) -> bool:
        return self.type not in C_TYPES


def parse_params(text: str) -> list[Param]:
    """CuPy's parameter list syntax: ``"raw T x, T y, int32 n"``."""
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        words = item.split()
        raw = words[0] == "raw"
        if raw:
            words = words[1:]
        if len(words) != 2 or not re.fullmatch(r"[A-Za-z_]\w*", words[1]):
            raise ValueError(f"bad kernel parameter {item!r}")
        out.append(Param(raw, words[0], words[1]))
    return out


@dataclass(frozen=True)
class Elementwise:
    """A ``cupy.ElementwiseKernel``: ``operation`` runs once per element index ``i``.

    ``scalars`` names the non-raw inputs that callers pass as Python scalars (CuPy decides per
    call; the compile-test wrapper needs to know).
    """

    name: str
    in_params: str
    out_params: str
    operation: str
    scalars: tuple[str, ...] = ()
    preamble: str = ""
    placeholder_types: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def build(self, cp):
        return cp.ElementwiseKernel(
            self.in_params, self.out_params, self.operation, self.name, preamble=self.preamble
        )


@dataclass(frozen=True)
class Reduction:
    """A ``cupy.ReductionKernel``: ``map_expr`` per input element, folded by ``reduce_expr``
    (in ``a`` and ``b``) from ``identity``, written by ``post_map_expr`` (in ``a``)."""

    name: str
    in_params: str
    out_params: str
    map_expr: str
    reduce_expr: str
    post_map_expr: str
    identity: str
    reduce_type: str = "T"
    preamble: str = ""
    placeholder_types: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def build(self, cp):
        return cp.ReductionKernel(
            self.in_params,
            self.out_params,
            self.map_expr,
            self.reduce_expr,
            self.post_map_expr,
            self.identity,
            self.name,
            reduce_type=self.reduce_type,
            preamble=self.preamble,
        )


@dataclass(frozen=True)
class Raw:
    """A ``cupy.RawKernel``: complete CUDA source defining ``extern "C" __global__ function``."""

    name: str
    source: str
    function: str

    def build(self, cp):
        return cp.RawKernel(self.source, self.function)


SPECS: dict[str, Elementwise | Reduction | Raw] = {}
_built: dict[str, object] = {}
_lock = threading.Lock()


def register(spec):
    """Record ``spec`` under its name (names are CUDA identifiers and must be unique)."""
    if not re.fullmatch(r"[A-Za-z_]\w*", spec.name):
        raise ValueError(f"kernel name {spec.name!r} is not a C identifier")
    old = SPECS.get(spec.name)
    if old is not None and old != spec:
        raise ValueError(f"two different kernels are named {spec.name!r}")
    SPECS[spec.name] = spec
    return spec


def get_kernel(spec):
    """The CuPy kernel object for ``spec``, built on first use and cached."""
    kernel = _built.get(spec.name)
    if kernel is not None:
        return kernel
    from minicaffe.backend import get_cupy

    cp = get_cupy()
    if cp is None:
        raise DeviceError(f"GPU kernel {spec.name!r} needs CuPy and a CUDA device")
    with _lock:
        kernel = _built.get(spec.name)
        if kernel is None:
            kernel = _built[spec.name] = spec.build(cp)
    return kernel


def require_cupy(*arrays) -> object:
    """The cupy module, after checking every array is a CuPy array (fused paths only)."""
    from minicaffe.backend import get_cupy

    cp = get_cupy()
    if cp is None:
        raise DeviceError("a fused GPU kernel was called but CuPy or a CUDA device is missing")
    for a in arrays:
        if not isinstance(a, cp.ndarray):
            raise DeviceError(
                f"fused GPU kernels take CuPy arrays; received {type(a).__name__} "
                "(use the matching *_ref function on NumPy arrays)"
            )
    return cp


def all_specs() -> dict[str, Elementwise | Reduction | Raw]:
    """Every kernel spec of the package (imports each kernel module; no CuPy needed)."""
    import importlib

    for mod in ("activations", "im2col", "pooling", "updates"):
        importlib.import_module(f"minicaffe.gpu.{mod}")
    return dict(SPECS)


# ---------------------------------------------------------------------------- compile-test source

_HEADER = """\
// Generated by minicaffe.gpu.kernels.standalone_source for nvcc type checking only.
typedef long long ptrdiff_t_;
"""


def _c_type(p: Param) -> str:
    return p.type if p.is_placeholder else C_TYPES[p.type]


def _typedefs(spec, choice: dict[str, str]) -> str:
    return "".join(f"typedef {ctype} {name};\n" for name, ctype in choice.items())


def _placeholder_choices(spec) -> list[dict[str, str]]:
    params = []
    if isinstance(spec, (Elementwise, Reduction)):
        params = parse_params(spec.in_params) + parse_params(spec.out_params)
    names = sorted({p.type for p in params if p.is_placeholder})
    if isinstance(spec, Reduction) and spec.reduce_type not in C_TYPES:
        names = sorted(set(names) | {spec.reduce_type})
    options = {**DEFAULT_PLACEHOLDER_TYPES, **spec.placeholder_types}
    lists = [options.get(n, ("float",)) for n in names]
    return [dict(zip(names, combo)) for combo in itertools.product(*lists)]


_DEVICE_LOOP = (
    "  for (long long {v} = blockIdx.x * (long long)blockDim.x + threadIdx.x; {v} < _n;\n"
    "       {v} += (long long)blockDim.x * gridDim.x) {{\n"
)
_HOST_LOOP = "  for (long long {v} = 0; {v} < _n; ++{v}) {{\n"


def host_function_name(spec, choice: dict[str, str]) -> str:
    """The C symbol of ``spec`` instantiated with ``choice`` in :func:`host_source`."""
    suffix = "_".join(f"{k}{v.replace(' ', '')}" for k, v in sorted(choice.items()))
    return f"{spec.name}__{suffix}" if suffix else spec.name


def _function(spec, choice, ns: str, args: list[str], body: str, var: str, host: bool) -> str:
    if host:
        head = f'extern "C" void {host_function_name(spec, choice)}'
        loop = _HOST_LOOP.format(v=var)
    else:
        head = f"__global__ void {spec.name}"
        loop = _DEVICE_LOOP.format(v=var)
    return (
        f"namespace {ns} {{\n{_typedefs(spec, choice)}{spec.preamble}\n"
        f"{head}({', '.join(args)}) {{\n{loop}{_indent(body, 4)}\n  }}\n}}\n"
        f"}}  // namespace {ns}\n"
    )


def _elementwise_source(spec: Elementwise, choice: dict[str, str], ns: str, host=False) -> str:
    ins, outs = parse_params(spec.in_params), parse_params(spec.out_params)
    args, binds = [], []
    for p, is_out in [(p, False) for p in ins] + [(p, True) for p in outs]:
        t = _c_type(p)
        if p.raw:
            args.append(f"{'' if is_out else 'const '}{t}* __restrict__ {p.name}")
        elif not is_out and p.name in spec.scalars:
            args.append(f"const {t} {p.name}")
        else:
            args.append(f"{'' if is_out else 'const '}{t}* __restrict__ _raw_{p.name}")
            binds.append(f"{'' if is_out else 'const '}{t} &{p.name} = _raw_{p.name}[i];")
    body = "\n".join(binds) + "\n" + spec.operation
    return _function(spec, choice, ns, args + ["long long _n"], body, "i", host)


def _reduction_source(spec: Reduction, choice: dict[str, str], ns: str, host=False) -> str:
    ins, outs = parse_params(spec.in_params), parse_params(spec.out_params)
    args, binds = [], []
    for p in ins:
        t = _c_type(p)
        if p.raw:
            args.append(f"const {t}* __restrict__ {p.name}")
        else:
            args.append(f"const {t}* __restrict__ _raw_{p.name}")
            binds.append(f"const {t} {p.name} = _raw_{p.name}[j * _m + k];")
    out_binds = []
    for p in outs:
        t = _c_type(p)
        args.append(f"{t}* __restrict__ _raw_{p.name}")
        out_binds.append(f"{t} &{p.name} = _raw_{p.name}[j];")
    rt = spec.reduce_type if spec.reduce_type not in C_TYPES else C_TYPES[spec.reduce_type]
    body = (
        f"typedef {rt} _type_reduce;\n"
        f"_type_reduce a = static_cast<_type_reduce>({spec.identity});\n"
        "for (long long k = 0; k < _m; ++k) {\n" + _indent("\n".join(binds), 2) + "\n"
        f"  _type_reduce b = static_cast<_type_reduce>({spec.map_expr});\n"
        f"  a = {spec.reduce_expr};\n}}\n" + "\n".join(out_binds) + "\n" + spec.post_map_expr + ";"
    )
    return _function(spec, choice, ns, args + ["long long _n", "long long _m"], body, "j", host)


def _indent(text: str, n: int) -> str:
    pad = " " * n
    return "\n".join(pad + line if line.strip() else line for line in text.splitlines())


def standalone_source(specs=None) -> str:
    """One self-contained .cu text with every Elementwise/Reduction spec wrapped as CuPy would,
    once per placeholder instantiation (T = float and double unless a spec says otherwise)."""
    return _render_all(specs, _HEADER, "v", host=False)


def _render_all(specs, header: str, tag: str, host: bool) -> str:
    """``header`` and every Elementwise/Reduction spec rendered once per placeholder
    instantiation, in namespaces ``<name>_<tag><k>``."""
    specs = all_specs() if specs is None else specs
    parts = [header]
    for spec in specs.values() if isinstance(specs, dict) else specs:
        if isinstance(spec, Raw):
            continue
        render = _elementwise_source if isinstance(spec, Elementwise) else _reduction_source
        for k, choice in enumerate(_placeholder_choices(spec)):
            parts.append(render(spec, choice, f"{spec.name}_{tag}{k}", host=host))
    return "\n".join(parts)


_HOST_HEADER = """\
// Generated by minicaffe.gpu.kernels.host_source: the kernel bodies as host C++ loops.
#include <cmath>
using std::exp;
using std::sqrt;
using std::tanh;
"""


def host_source(specs=None) -> str:
    """The Elementwise/Reduction bodies as plain C++ functions (one loop over the elements, or
    over the outputs of an (n, m) reduction), for running the kernel logic on a CPU in tests.
    Symbols are named by :func:`host_function_name`; argument order is CuPy's (inputs, outputs)
    followed by the element count ``_n`` (and the reduced length ``_m``)."""
    return _render_all(specs, _HOST_HEADER, "host", host=True)


def raw_sources(specs=None) -> list[tuple[str, str]]:
    """(name, source) of every RawKernel spec; these compile as they are."""
    specs = all_specs() if specs is None else specs
    values = specs.values() if isinstance(specs, dict) else specs
    return [(s.name, s.source) for s in values if isinstance(s, Raw)]
