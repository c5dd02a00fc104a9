"""Caffe's protobuf schema as Python classes: ``from minicaffe.proto import caffe_pb2``.

``caffe_pb2`` is generated from proto/caffe.proto when the package is built or installed
(see hatch_build.py); it is not kept in git.
"""

from pathlib import Path

try:
    from minicaffe.proto import caffe_pb2
except Exception as exc:  # missing, or generated for a protobuf runtime newer than this one
    if not (Path(__file__).with_name("caffe_pb2.py")).is_file():
        cause = "the generated file minicaffe/proto/caffe_pb2.py does not exist"
    else:
        cause = f"{type(exc).__name__}: {exc}"
    raise ImportError(
        "minicaffe.proto.caffe_pb2 could not be imported: it is generated from "
        "proto/caffe.proto at install time. Reinstall minicaffe (from a source checkout: "
        "`pip install -e .`) to regenerate it, and make sure the installed protobuf runtime "
        f"satisfies pyproject.toml. Cause: {cause}"
    ) from exc

__all__ = ["caffe_pb2"]
