"""Graph passes: NetState rules, split insertion with Caffe's names, topology errors."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from minicaffe.errors import NetBuildError
from minicaffe.graph import (
    check_topology,
    filter_net,
    insert_splits,
    make_state,
    state_meets_rule,
)
from minicaffe.proto import caffe_pb2


def net(text: str):
    return text_format.Merge(text, caffe_pb2.NetParameter())


def rule(text: str):
    return text_format.Merge(text, caffe_pb2.NetStateRule())


@pytest.mark.parametrize(
    "rule_text, phase, level, stages, expected",
    [
        ("phase: TRAIN", 0, 0, [], True),
        ("phase: TRAIN", 1, 0, [], False),
        ("min_level: 2", 0, 1, [], False),
        ("min_level: 2", 0, 2, [], True),
        ("max_level: 2", 0, 3, [], False),
        ("stage: 'a' stage: 'b'", 0, 0, ["a"], False),
        ("stage: 'a' stage: 'b'", 0, 0, ["b", "a", "c"], True),
        ("not_stage: 'deploy'", 0, 0, ["deploy"], False),
        ("not_stage: 'deploy'", 0, 0, ["x"], True),
        ("phase: TEST min_level: 1 stage: 's'", 1, 1, ["s"], True),
        ("phase: TEST min_level: 1 stage: 's'", 1, 0, ["s"], False),
        ("", 0, 5, ["x"], True),
    ],
)
def test_rule_conditions_are_all_required(rule_text, phase, level, stages, expected):
    assert state_meets_rule(make_state(phase, level, stages), rule(rule_text)) is expected


NET = """
name: "n"
layer { name: "data" type: "Input" top: "x" }
layer { name: "train_only" type: "ReLU" bottom: "x" top: "a" include { phase: TRAIN } }
layer { name: "test_only" type: "ReLU" bottom: "x" top: "b" include { phase: TEST } }
layer { name: "not_deploy" type: "ReLU" bottom: "x" top: "c" exclude { stage: "deploy" } }
layer { name: "either" type: "ReLU" bottom: "x" top: "d"
        include { phase: TRAIN } include { stage: "extra" } }
layer { name: "lvl" type: "ReLU" bottom: "x" top: "e" include { min_level: 1 } }
"""


def names(param):
    return [layer.name for layer in param.layer]


def test_filter_by_phase_stage_level():
    p = net(NET)
    assert names(filter_net(p, make_state(0))) == ["data", "train_only", "not_deploy", "either"]
    assert names(filter_net(p, make_state(1))) == ["data", "test_only", "not_deploy"]
    assert names(filter_net(p, make_state(1, 0, ["deploy"]))) == ["data", "test_only"]
    assert names(filter_net(p, make_state(1, 0, ["extra"]))) == [
        "data",
        "test_only",
        "not_deploy",
        "either",
    ]
    assert names(filter_net(p, make_state(1, 1))) == ["data", "test_only", "not_deploy", "lvl"]


def test_default_state_is_test_phase():
    p = net(NET)
    assert p.state.phase == caffe_pb2.TEST
    assert "test_only" in names(filter_net(p))


def test_include_and_exclude_together_is_an_error():
    p = net('layer { name: "bad" type: "ReLU" include { phase: TRAIN } exclude { phase: TEST } }')
    with pytest.raises(NetBuildError, match="'bad'.*both include and exclude"):
        filter_net(p, make_state(0))


def test_split_insertion_names_and_rewiring():
    p = net("""
    layer { name: "data" type: "Input" top: "data" }
    layer { name: "a" type: "ReLU" bottom: "data" top: "a" }
    layer { name: "b" type: "ReLU" bottom: "data" top: "b" }
    layer { name: "c" type: "Eltwise" bottom: "a" bottom: "data" top: "c" }
    """)
    out = insert_splits(p)
    assert names(out) == ["data", "data_data_0_split", "a", "b", "c"]
    split = out.layer[1]
    assert split.type == "Split" and list(split.bottom) == ["data"]
    assert list(split.top) == [f"data_data_0_split_{k}" for k in range(3)]
    assert list(out.layer[2].bottom) == ["data_data_0_split_0"]
    assert list(out.layer[3].bottom) == ["data_data_0_split_1"]
    assert list(out.layer[4].bottom) == ["a", "data_data_0_split_2"]


def test_split_after_in_place_layer_uses_the_last_producer():
    p = net("""
    layer { name: "data" type: "Input" top: "x" }
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" }
    layer { name: "relu" type: "ReLU" bottom: "y" top: "y" }
    layer { name: "p" type: "Softmax" bottom: "y" top: "p" }
    layer { name: "q" type: "Softmax" bottom: "y" top: "q" }
    """)
    out = insert_splits(p)
    assert names(out) == ["data", "ip", "relu", "y_relu_0_split", "p", "q"]
    assert list(out.layer[3].top) == ["y_relu_0_split_0", "y_relu_0_split_1"]


def test_loss_weight_counts_as_a_consumer_and_moves_to_split():
    p = net("""
    layer { name: "data" type: "Input" top: "x" }
    layer { name: "l" type: "ReLU" bottom: "x" top: "y" loss_weight: 2.5 }
    layer { name: "s" type: "Softmax" bottom: "y" top: "p" }
    """)
    out = insert_splits(p)
    assert names(out) == ["data", "l", "y_l_0_split", "s"]
    assert list(out.layer[1].loss_weight) == [0.0]
    assert list(out.layer[2].loss_weight) == [2.5, 0.0]
    assert list(out.layer[3].bottom) == ["y_l_0_split_1"]


def test_unknown_bottom_names_layer_and_blob():
    p = net(
        'layer { name: "data" type: "Input" top: "x" } '
        'layer { name: "r" type: "ReLU" bottom: "nope" top: "y" }'
    )
    with pytest.raises(NetBuildError, match="layer 'r' \\(ReLU\\).*unknown bottom blob 'nope'"):
        insert_splits(p)
    with pytest.raises(NetBuildError, match="'r'.*'nope'"):
        check_topology(p)


def test_duplicate_top_is_an_error_naming_both():
    p = net(
        'layer { name: "d1" type: "Input" top: "x" } layer { name: "d2" type: "Input" top: "x" }'
    )
    with pytest.raises(NetBuildError, match="'d2'.*top blob 'x'.*multiple sources"):
        check_topology(p)


def test_in_place_must_use_the_same_position():
    p = net(
        'layer { name: "d" type: "Input" top: "x" top: "y" } '
        'layer { name: "s" type: "Slice" bottom: "x" bottom: "y" top: "y" top: "z" }'
    )
    with pytest.raises(NetBuildError, match="'s'.*top 'y'.*in-place"):
        check_topology(p)


def test_outputs_are_unconsumed_blobs_sorted_by_name():
    p = net("""
    layer { name: "d" type: "Input" top: "zeta" top: "alpha" }
    layer { name: "r" type: "ReLU" bottom: "zeta" top: "zeta" }
    layer { name: "m" type: "ReLU" bottom: "zeta" top: "mid" }
    """)
    topo = check_topology(p)
    assert topo.outputs == ["alpha", "mid"]
    assert topo.inputs == ["zeta", "alpha"]
