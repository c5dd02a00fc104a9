"""``minicaffe device_query``: what GPUs minicaffe can use (Caffe's ``device_query``).

Without CuPy or a CUDA device it says so and exits 0: minicaffe then runs on the CPU.
"""

from __future__ import annotations

import argparse

HELP = "show GPU diagnostics (or say that no GPU is usable)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-gpu",
        "--gpu",
        default=None,
        metavar="N|all",
        help="device number(s) to query (default: all)",
    )


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def run(args) -> int:
    from minicaffe import backend
    from minicaffe.commands.train import parse_gpu_ids
    from minicaffe.errors import DeviceError

    try:
        ids = parse_gpu_ids(args.gpu) if args.gpu is not None else "all"
    except ValueError as exc:
        print(f"minicaffe device_query: error: {exc}")
        return 2
    cp = backend.get_cupy()
    if cp is None:
        try:
            import cupy  # noqa: F401

            why = "CuPy is installed but no CUDA device answers"
        except Exception:
            why = "CuPy is not installed (pip install minicaffe[gpu])"
        print(f"No GPU available: {why}. minicaffe runs on the CPU with NumPy.")
        return 0
    rt = cp.cuda.runtime
    count = rt.getDeviceCount()
    ids = list(range(count)) if ids == "all" else ids
    for i in ids:
        if i >= count:
            raise DeviceError(f"no GPU {i}; this machine has {count}")
    print(
        f"CuPy {cp.__version__}, CUDA runtime {rt.runtimeGetVersion()}, "
        f"driver {rt.driverGetVersion()}, {count} device(s)"
    )
    for i in ids:
        prop = rt.getDeviceProperties(i)
        with cp.cuda.Device(i):
            free, total = rt.memGetInfo()
        rows = [
            ("Device id", i),
            ("Name", _text(prop.get("name", "?"))),
            ("Major revision number", prop.get("major")),
            ("Minor revision number", prop.get("minor")),
            ("Total global memory", prop.get("totalGlobalMem")),
            ("Free global memory", free),
            ("Total shared memory per block", prop.get("sharedMemPerBlock")),
            ("Total registers per block", prop.get("regsPerBlock")),
            ("Warp size", prop.get("warpSize")),
            ("Maximum memory pitch", prop.get("memPitch")),
            ("Maximum threads per block", prop.get("maxThreadsPerBlock")),
            ("Maximum dimension of block", prop.get("maxThreadsDim")),
            ("Maximum dimension of grid", prop.get("maxGridSize")),
            ("Clock rate", prop.get("clockRate")),
            ("Total constant memory", prop.get("totalConstMem")),
            ("Texture alignment", prop.get("textureAlignment")),
            ("Concurrent copy and execution", "Yes" if prop.get("deviceOverlap") else "No"),
            ("Number of multiprocessors", prop.get("multiProcessorCount")),
            ("Kernel execution timeout", "Yes" if prop.get("kernelExecTimeoutEnabled") else "No"),
        ]
        del total
        for key, value in rows:
            print(f"{key + ':':32s}{value}")
    return 0
