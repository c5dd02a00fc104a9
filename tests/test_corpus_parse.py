"""Every prototxt of the corpus (real Caffe files, master and older commits) parses and upgrades.

Nets are parsed as NetParameter and solvers (file name contains "solver") as SolverParameter
with protobuf's own text parser; both are then upgraded to the current format.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from minicaffe.proto import caffe_pb2 as pb
from minicaffe.upgrade import net_needs_upgrade, solver_needs_upgrade, upgrade_net, upgrade_solver

CORPUS = Path(__file__).parent / "data" / "corpus"
FILES = sorted(CORPUS.rglob("*.prototxt"))
SOLVERS = [f for f in FILES if "solver" in f.name]
NETS = [f for f in FILES if "solver" not in f.name]


def _id(path: Path) -> str:
    return str(path.relative_to(CORPUS))


def test_corpus_counts():
    # 54 files from master plus 22 from older commits and branches (see SOURCES.tsv).
    print(f"corpus: {len(FILES)} prototxt files = {len(NETS)} nets + {len(SOLVERS)} solvers")
    assert (len(FILES), len(NETS), len(SOLVERS)) == (76, 46, 30)
    master = [f for f in FILES if _id(f).startswith("BVLC__caffe/")]
    assert len(master) == 54


@pytest.mark.parametrize("path", NETS, ids=_id)
def test_net_parses_and_upgrades(path):
    net = text_format.Merge(path.read_text(), pb.NetParameter())
    assert len(net.layer) + len(net.layers) > 0
    out, _ = upgrade_net(net, str(path))
    assert not net_needs_upgrade(out)
    assert len(out.layers) == 0 and len(out.layer) > 0
    assert all(layer.type for layer in out.layer), "every upgraded layer has a type string"
    # The upgraded net survives a text round trip (what `minicaffe upgrade` would write).
    again = text_format.Merge(text_format.MessageToString(out), pb.NetParameter())
    assert again == out


@pytest.mark.parametrize("path", SOLVERS, ids=_id)
def test_solver_parses_and_upgrades(path):
    sp = text_format.Merge(path.read_text(), pb.SolverParameter())
    out, _ = upgrade_solver(sp, str(path))
    assert not solver_needs_upgrade(out)
    assert not out.HasField("solver_type")
    assert out.type in {"SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"}


def test_fork_only_fields_of_the_ctc_net():
    # The CTC branch's CRNN uses layer parameters that exist only in forks; they are accepted
    # under their fork names (minicaffe field numbers >= 1000).
    path = CORPUS / "BVLC__caffe@942f485c/examples/warpctc_captcha/crnn/crnn.prototxt"
    net = text_format.Merge(path.read_text(), pb.NetParameter())
    by_name = {layer.name: layer for layer in net.layer}
    assert list(by_name["permuted_data"].permute_param.order) == [2, 0, 1]
    ci = by_name["indicator"].continuation_indicator_param
    assert (ci.time_step, ci.batch_size) == (32, 64)
    ctc = by_name["ctc_loss"].ctc_loss_param
    assert (ctc.blank_label, ctc.alphabet_size, ctc.time_step) == (10, 11, 32)
    assert by_name["accuracy"].labelsequence_accuracy_param.blank_label == 10


def test_legacy_files_are_recognised():
    def needs(path: Path) -> bool:
        return net_needs_upgrade(text_format.Merge(path.read_text(), pb.NetParameter()))

    legacy = {_id(f) for f in NETS if needs(f)}
    # V0 and V1 files of old commits, deploy files with input/input_dim, and master's BatchNorm
    # example that still lists three param entries.
    assert "BVLC__caffe@91254090/data/lenet.prototxt" in legacy
    assert "BVLC__caffe@77fae0cb/examples/cifar/cifar10_18pct.prototxt" in legacy
    assert "BVLC__caffe@f15210cd/models/bvlc_googlenet/train_val.prototxt" in legacy
    assert "BVLC__caffe/examples/cifar10/cifar10_full_sigmoid_train_test_bn.prototxt" in legacy
    assert "BVLC__caffe/models/bvlc_alexnet/train_val.prototxt" not in legacy
    print(f"corpus: {len(legacy)} of {len(NETS)} nets needed an upgrade")
