"""The opt-in `caffe` name: install_caffe_alias() and `python -m minicaffe.run script.py`."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from minicaffe.compat import install_caffe_alias, is_installed
from minicaffe.errors import MinicaffeError

ROOT = Path(__file__).resolve().parents[1]


def test_import_caffe_gives_minicaffe_names():
    shim = install_caffe_alias()
    assert install_caffe_alias() is shim and is_installed()  # idempotent
    import caffe
    import caffe.io
    from caffe import layers as L
    from caffe import params as P
    from caffe.coord_map import crop
    from caffe.proto import caffe_pb2

    import minicaffe.io
    import minicaffe.net_spec
    from minicaffe.compat import coord_map
    from minicaffe.proto import caffe_pb2 as ours

    assert caffe is shim and caffe.io is minicaffe.io and caffe_pb2 is ours
    assert caffe.Net is minicaffe.Net and caffe.Layer is minicaffe.Layer
    assert caffe.TRAIN == 0 and caffe.TEST == 1
    assert caffe.SGDSolver is minicaffe.SGDSolver and caffe.get_solver is minicaffe.get_solver
    assert caffe.Classifier is minicaffe.Classifier and caffe.Detector is minicaffe.Detector
    assert L is minicaffe.net_spec.layers and P is minicaffe.net_spec.params
    assert caffe.NetSpec is minicaffe.NetSpec and caffe.to_proto is minicaffe.to_proto
    assert caffe.net_spec is minicaffe.net_spec and crop is coord_map.crop
    assert caffe.layer_type_list() == minicaffe.layer_type_list()
    assert caffe.solver_count() == 1 and caffe.solver_rank() == 0 and not caffe.has_nccl()
    timer = caffe.Timer()
    timer.start()
    timer.stop()
    assert timer.ms >= 0
    assert {"Net", "SGDSolver", "layers", "io", "set_mode_cpu"} <= set(dir(caffe))
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        caffe.NoSuchThing  # noqa: B018
    with pytest.raises(ModuleNotFoundError):
        import caffe.no_such_submodule  # noqa: F401
    assert minicaffe.__spec__.name == "minicaffe"  # minicaffe's own modules are untouched


def test_an_already_imported_other_caffe_is_not_replaced_silently(monkeypatch):
    other = types.ModuleType("caffe")
    monkeypatch.setitem(sys.modules, "caffe", other)
    with pytest.raises(MinicaffeError, match="different 'caffe' module"):
        install_caffe_alias()
    assert install_caffe_alias(force=True) is not other
    assert sys.modules["caffe"].__minicaffe_alias__


def _run(args, cwd, timeout=120):
    return subprocess.run([sys.executable, "-m", "minicaffe.run", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_run_executes_a_script_like_python_does(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(
        "import sys, caffe\n"
        "from caffe import layers as L\n"
        "print('name', __name__)\n"
        "print('argv', sys.argv)\n"
        "print('path0', sys.path[0])\n"
        "print('net', caffe.Net.__module__)\n"
        "sys.exit(3)\n")
    proc = _run([str(script), "a", "--b"], cwd=ROOT)
    assert proc.returncode == 3, proc.stderr
    out = proc.stdout
    assert "name __main__" in out and f"argv ['{script}', 'a', '--b']" in out
    assert f"path0 {tmp_path}" in out and "net minicaffe.net" in out


def test_run_module_form_and_usage_errors(tmp_path):
    (tmp_path / "modq7.py").write_text("import sys, caffe\nprint('ok', sys.argv[1:], "
                                       "caffe.TEST)\n")
    proc = _run(["-m", "modq7", "x"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ok ['x'] 1" in proc.stdout
    assert _run([], cwd=tmp_path).returncode == 2
    missing = _run([str(tmp_path / "nope.py")], cwd=tmp_path)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_the_pycaffe_example_runs_unchanged(tmp_path):
    proc = _run(["examples/pycaffe/train_toy.py", "--out", str(tmp_path), "--iters", "150"],
                cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "learned w" in proc.stdout
    for name in ("train.prototxt", "deploy.prototxt", "solver.prototxt", "toy.caffemodel",
                 "train.dot"):
        assert (tmp_path / name).is_file(), name
    losses = [float(line.split()[-1]) for line in proc.stdout.splitlines()
              if line.startswith("iter")]
    assert len(losses) == 3 and losses[-1] < losses[0]
