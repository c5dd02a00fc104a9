"""Generate minicaffe/proto/caffe_pb2.py (+ .pyi) from proto/caffe.proto.

This is the one generation routine: the hatchling build hook (hatch_build.py) loads this file
by path on every build, and tests/test_proto.py calls it to check that the installed module is
up to date. It can also be run by hand::

    python tools/gen_proto.py [OUT_DIR]      # default: minicaffe/proto
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PROTO_FILE = PROTO_DIR / "caffe.proto"
DEFAULT_OUT = ROOT / "minicaffe" / "proto"
OUTPUTS = ("caffe_pb2.py", "caffe_pb2.pyi")
# The schema is compiled as if it lived at this path, so that the descriptor is registered as
# "minicaffe/proto/caffe.proto" (no clash with any other "caffe.proto" in the process) and the
# generated classes report their real module, minicaffe.proto.caffe_pb2 (pickle needs that).
VIRTUAL_PATH = Path("minicaffe") / "proto" / "caffe.proto"


class ProtoGenerationError(RuntimeError):
    """protoc could not generate the Python module."""


def _well_known_include() -> str:
    # grpc_tools ships descriptor.proto and friends inside its package.
    return str(resources.files("grpc_tools") / "_proto")


def generate(out_dir: str | Path = DEFAULT_OUT, proto_file: str | Path = PROTO_FILE) -> list[Path]:
    """Run grpc_tools' protoc on ``proto_file``; return the paths of the files written."""
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ProtoGenerationError(
            "grpcio-tools is needed to generate minicaffe/proto/caffe_pb2.py; "
            "install it with `pip install grpcio-tools` (pyproject.toml pins the version)"
        ) from exc

    proto_file = Path(proto_file).resolve()
    if not proto_file.is_file():
        raise ProtoGenerationError(f"schema not found: {proto_file}")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="minicaffe-proto-") as tmp:
        src_root, gen_root = Path(tmp) / "src", Path(tmp) / "gen"
        staged = src_root / VIRTUAL_PATH
        staged.parent.mkdir(parents=True)
        gen_root.mkdir()
        shutil.copyfile(proto_file, staged)
        args = [
            "grpc_tools.protoc",
            f"--proto_path={src_root}",
            f"--proto_path={_well_known_include()}",
            f"--python_out={gen_root}",
            f"--pyi_out={gen_root}",
            str(staged),
        ]
        status = protoc.main(args)
        if status != 0:
            raise ProtoGenerationError(
                f"protoc failed with exit status {status} on {proto_file} "
                "(its messages are printed above)"
            )
        written = []
        for name in OUTPUTS:
            produced = gen_root / VIRTUAL_PATH.parent / name
            if not produced.is_file():
                raise ProtoGenerationError(f"protoc reported success but did not write {name}")
            target = out_dir / name
            shutil.copyfile(produced, target)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else DEFAULT_OUT
    for path in generate(out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
