"""Pure passes over NetParameter messages (no layers are created here).

* :func:`filter_net` keeps the layers whose include/exclude rules admit a NetState.
* :func:`insert_splits` adds a Split layer after every top that feeds more than one bottom,
  with Caffe's names, so that no layer ever sums gradients coming from several consumers.
* :func:`check_topology` finds unknown bottoms and tops produced twice, and returns the net's
  inputs and outputs (unconsumed blobs, sorted by name, as Caffe orders them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from minicaffe.errors import NetBuildError


def _pb2():
    from minicaffe.proto import caffe_pb2

    return caffe_pb2


def make_state(phase: int | None = None, level: int | None = None, stages=()):
    """A NetState with Caffe's defaults (phase TEST, level 0, no stages)."""
    state = _pb2().NetState()
    if phase is not None:
        state.phase = phase
    if level is not None:
        state.level = level
    state.stage.extend(stages)
    return state


def state_meets_rule(state, rule) -> bool:
    """True when every condition the rule sets holds for the state."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def layer_included(layer, state) -> bool:
    """Caffe's rule: no include rules means kept; any matching exclude drops it; any matching
    include keeps it. A layer may not carry both kinds of rule."""
    if layer.include and layer.exclude:
        raise NetBuildError(
            f"layer '{layer.name}' ({layer.type}) has both include and exclude "
            "rules; give one kind only"
        )
    included = not layer.include
    if any(state_meets_rule(state, r) for r in layer.exclude):
        included = False
    if any(state_meets_rule(state, r) for r in layer.include):
        included = True
    return included


def filter_net(net_param, state=None):
    """A copy of ``net_param`` holding only the layers admitted by ``state``.

    ``state`` defaults to ``net_param.state``; the copy's ``state`` is set to it.
    """
    state = net_param.state if state is None else state
    out = _pb2().NetParameter()
    out.CopyFrom(net_param)
    out.ClearField("layer")
    out.state.CopyFrom(state)
    out.layer.extend(layer for layer in net_param.layer if layer_included(layer, state))
    return out


def split_layer_name(blob: str, layer: str, top_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split"


def split_blob_name(blob: str, layer: str, top_index: int, k: int) -> str:
    return f"{blob}_{layer}_{top_index}_split_{k}"


def insert_splits(net_param):
    """A copy of ``net_param`` with Split layers wherever one top feeds several bottoms.

    A non-zero explicit loss_weight on a top counts as one more consumer; the weight moves to the
    Split's first top (its other tops get 0) and the producer's weight for that top becomes 0.
    """
    last_producer: dict[str, tuple[int, int]] = {}
    source_of: dict[tuple[int, int], tuple[int, int]] = {}
    consumers: dict[tuple[int, int], int] = {}
    loss_weight: dict[tuple[int, int], float] = {}
    layers = net_param.layer
    for i, layer in enumerate(layers):
        for j, bottom in enumerate(layer.bottom):
            if bottom not in last_producer:
                raise NetBuildError(
                    f"layer '{layer.name}' ({layer.type}): unknown bottom blob "
                    f"'{bottom}' (bottom {j}); no earlier layer produces it"
                )
            src = last_producer[bottom]
            source_of[(i, j)] = src
            consumers[src] = consumers.get(src, 0) + 1
        for j, top in enumerate(layer.top):
            last_producer[top] = (i, j)
        for j, w in enumerate(layer.loss_weight):
            if w != 0:
                loss_weight[(i, j)] = w
                consumers[(i, j)] = consumers.get((i, j), 0) + 1

    out = _pb2().NetParameter()
    out.CopyFrom(net_param)
    out.ClearField("layer")
    next_split: dict[tuple[int, int], int] = {}
    for i, layer in enumerate(layers):
        new = out.layer.add()
        new.CopyFrom(layer)
        for j in range(len(layer.bottom)):
            src = source_of[(i, j)]
            if consumers.get(src, 0) > 1:
                k = next_split.get(src, 0)
                next_split[src] = k + 1
                producer = layers[src[0]]
                new.bottom[j] = split_blob_name(producer.top[src[1]], producer.name, src[1], k)
        for j, top in enumerate(layer.top):
            count = consumers.get((i, j), 0)
            if count <= 1:
                continue
            split = out.layer.add()
            split.name = split_layer_name(top, layer.name, j)
            split.type = "Split"
            split.bottom.append(top)
            split.top.extend(split_blob_name(top, layer.name, j, k) for k in range(count))
            w = loss_weight.get((i, j), 0.0)
            if w != 0:
                # Split top 0 carries the loss; consumers take tops 1.. in order. Caffe clears
                # every loss weight of the producer here; minicaffe zeroes only this top's, so
                # other weighted tops keep their weight and a loss layer does not get its
                # default weight of 1 back (documented departure).
                split.loss_weight.extend([w] + [0.0] * (count - 1))
                new.loss_weight[j] = 0.0
                next_split[(i, j)] = 1
    return out


@dataclass
class Topology:
    inputs: list[str] = field(default_factory=list)  # tops of Input layers, in order
    outputs: list[str] = field(default_factory=list)  # unconsumed blobs, sorted by name
    blob_order: list[str] = field(default_factory=list)  # every named blob, in creation order


def check_topology(net_param) -> Topology:
    """Validate bottoms and tops in order, as Caffe's Net::Init does, and find inputs/outputs."""
    produced: set[str] = set()
    available: set[str] = set()
    topo = Topology()
    for layer in net_param.layer:
        for j, bottom in enumerate(layer.bottom):
            if bottom not in produced:
                raise NetBuildError(
                    f"layer '{layer.name}' ({layer.type}): unknown bottom blob "
                    f"'{bottom}' (bottom {j})"
                )
            available.discard(bottom)
        for j, top in enumerate(layer.top):
            in_place = j < len(layer.bottom) and layer.bottom[j] == top
            if top in produced and not in_place:
                if top in layer.bottom:
                    raise NetBuildError(
                        f"layer '{layer.name}' ({layer.type}): top '{top}' (top {j}) reuses a "
                        f"bottom name at another position; in-place computation needs top {j} "
                        f"to equal bottom {j}"
                    )
                raise NetBuildError(
                    f"layer '{layer.name}' ({layer.type}): top blob '{top}' is "
                    "produced by multiple sources"
                )
            if top not in produced:
                topo.blob_order.append(top)
            produced.add(top)
            available.add(top)
            if layer.type == "Input":
                topo.inputs.append(top)
    topo.outputs = sorted(available)
    return topo
