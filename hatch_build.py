"""Hatchling build hook: generate minicaffe/proto/caffe_pb2.py(+.pyi) before every build.

Runs for every target (wheel, sdist) and for editable installs, so the generated module always
matches proto/caffe.proto. The generation itself lives in tools/gen_proto.py, loaded here by
path because tools/ is not a package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def _load_generator(root: Path):
    path = root / "tools" / "gen_proto.py"
    spec = importlib.util.spec_from_file_location("_minicaffe_gen_proto", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load the proto generator from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ProtoBuildHook(BuildHookInterface):
    PLUGIN_NAME = "minicaffe-proto"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        gen = _load_generator(root)
        out_dir = root / "minicaffe" / "proto"
        written = gen.generate(out_dir, root / "proto" / "caffe.proto")
        self.app.display_info(
            f"minicaffe: generated {', '.join(p.name for p in written)} "
            f"from proto/caffe.proto ({self.target_name}, {version})"
        )
        # The generated files are git-ignored; make sure they are packaged anyway.
        build_data.setdefault("artifacts", []).extend(
            str(p.relative_to(root).as_posix()) for p in written
        )
