"""caffe.draw and `minicaffe draw`: DOT text always; images only through Graphviz."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from minicaffe import TEST, TRAIN, draw
from minicaffe.cli import main
from minicaffe.prototxt import read_net_param

LENET = (Path(__file__).parent / "data" / "corpus" / "BVLC__caffe" / "examples" / "mnist" /
         "lenet_train_test.prototxt")


def _nodes(dot: str) -> dict[str, str]:
    """node id -> its attribute text."""
    return dict(re.findall(r"^  (\w+) \[(.*)\];$", dot, flags=re.M))


def _label(attrs: str) -> str:
    return re.search(r'label="((?:[^"\\]|\\.)*)"', attrs).group(1)


def test_dot_graph_of_lenet_layers_blobs_colours_and_edges():
    net = read_net_param(str(LENET))
    dot = draw.get_dot_graph(net, "LR")
    assert dot.startswith('digraph "LeNet" {') and "rankdir=LR" in dot
    nodes = _nodes(dot)
    layers = {_label(a).split("\\n")[0]: a for a in nodes.values() if "shape=record" in a}
    blobs = {_label(a) for a in nodes.values() if "shape=octagon" in a}
    assert blobs == {"data", "label", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2",
                     "accuracy", "loss"}
    assert 'fillcolor="#FF5050"' in layers["conv1"]
    assert 'fillcolor="#FF9900"' in layers["pool1"]
    assert 'fillcolor="#CC33FF"' in layers["ip1"]
    assert 'fillcolor="#90EE90"' in layers["relu1"]  # in-place neuron
    assert 'fillcolor="#6495ED"' in layers["loss"]
    assert _label(layers["pool1"]) == "pool1\\n(Pooling MAX)\\nkernel size: 2\\nstride: 2\\npad: 0"
    assert _label(layers["conv1"]).startswith("conv1\\n(Convolution)\\nkernel size: 5")
    assert dot.count("[label=\"20\"]") == 1 and dot.count('[label="Batch 64"]') == 2
    # every edge joins declared nodes
    for a, b in re.findall(r"^  (\w+) -> (\w+)", dot, flags=re.M):
        assert a in nodes and b in nodes


def test_phase_filter_and_rankdir_and_lr_mult():
    net = read_net_param(str(LENET))
    train = draw.get_dot_graph(net, "TB", phase=TRAIN)
    test = draw.get_dot_graph(net, "TB", phase=TEST)
    assert "accuracy" not in train and "accuracy" in test
    assert train.count("(Data)") == 1 and draw.get_dot_graph(net, "LR").count("(Data)") == 2
    assert "kernel size: 5 stride: 1" in train  # TB joins with spaces
    assert "lr mult: 1, 2" in draw.get_dot_graph(net, "LR", display_lrm=True)
    with pytest.raises(draw.DrawError, match="rankdir"):
        draw.get_dot_graph(net, "XY")


def test_special_characters_are_escaped():
    net = read_net_param('name: "a\\"b" layer { name: "x{1}|y" type: "Input" top: "t\\"q" '
                         'input_param { shape { dim: 1 } } }')
    dot = draw.get_dot_graph(net, "LR")
    assert 'digraph "a\\"b"' in dot and "x\\{1\\}\\|y" in dot and 'label="t\\"q"' in dot


def test_draw_net_to_file_dot_and_pydot_style_object(tmp_path):
    net = read_net_param(str(LENET))
    out = tmp_path / "lenet.dot"
    draw.draw_net_to_file(net, str(out), "LR", phase=TRAIN)
    assert out.read_text() == draw.get_dot_graph(net, "LR", phase=TRAIN)
    g = draw.get_pydot_graph(net, "LR")
    assert g.to_string() == draw.get_dot_graph(net, "LR")
    assert draw.draw_net(net, "LR", ext="dot") == g.to_string().encode()


@pytest.mark.skipif(shutil.which("dot") is not None, reason="Graphviz is installed here")
def test_image_formats_without_graphviz_suggest_dot(tmp_path):
    with pytest.raises(draw.DrawError, match="Graphviz.*write a .dot file instead"):
        draw.draw_net_to_file(read_net_param(str(LENET)), str(tmp_path / "n.png"))
    assert not (tmp_path / "n.png").exists()


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz's dot")
def test_png_and_svg_with_graphviz(tmp_path):
    net = read_net_param(str(LENET))
    draw.draw_net_to_file(net, str(tmp_path / "n.png"))
    assert (tmp_path / "n.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    draw.draw_net_to_file(net, str(tmp_path / "n.svg"))
    assert b"<svg" in (tmp_path / "n.svg").read_bytes()


def test_cli_draw(tmp_path, capsys):
    out = tmp_path / "net.dot"
    assert main(["draw", str(LENET), str(out), "--rankdir", "TB", "--phase", "TEST"]) == 0
    text = out.read_text()
    assert "rankdir=TB" in text and "accuracy" in text and text.count("(Data)") == 1
    assert main(["draw", str(LENET), str(tmp_path / "noext")]) == 1
    assert "give the output an extension" in capsys.readouterr().err
    if shutil.which("dot") is None:
        assert main(["draw", str(LENET), str(tmp_path / "x.svg")]) == 1
        assert ".dot" in capsys.readouterr().err


def test_a_v1_net_parameter_is_drawn_after_upgrading():
    from google.protobuf import text_format

    from minicaffe.proto import caffe_pb2

    v1 = text_format.Merge(
        'name: "v1" input: "data" input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4\n'
        'layers { name: "r" type: RELU bottom: "data" top: "r" }', caffe_pb2.NetParameter())
    dot = draw.get_dot_graph(v1, "LR")
    assert re.search(r'label="r.*ReLU', dot) and "->" in dot
