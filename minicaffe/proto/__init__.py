"""Caffe's protobuf schema as Python classes: ``from minicaffe.proto import caffe_pb2``.

``caffe_pb2`` is generated from proto/caffe.proto when the package is built or installed
(see hatch_build.py); it is not kept in git.
"""

try:
    from minicaffe.proto import caffe_pb2
except Exception as exc:  # missing, or generated for a protobuf runtime newer than this one
    raise ImportError(
        "minicaffe.proto.caffe_pb2 could not be imported: it is generated from "
        "proto/caffe.proto at install time. Reinstall minicaffe (from a source checkout: "
        "`pip install -e .`) to regenerate it, and make sure the installed protobuf runtime "
        f"satisfies pyproject.toml. Cause: {exc}"
    ) from exc

__all__ = ["caffe_pb2"]
