"""Draw a net as a graph: pycaffe's ``caffe.draw``, writing Graphviz DOT text directly.

Layers are boxes (Convolution/Deconvolution #FF5050, Pooling #FF9900, InnerProduct #CC33FF,
others #6495ED; in-place neuron layers #90EE90), blobs are grey octagons, and edges from a layer
to its tops carry the output size (num_output, or the batch size of a Data layer). DOT needs
nothing installed; PNG, SVG, PDF ... need Graphviz's ``dot`` program on the PATH.

    from minicaffe import draw
    draw.draw_net_to_file(net_param, "net.svg", rankdir="LR", phase=minicaffe.TRAIN)
"""

from __future__ import annotations

import os
import shutil
import subprocess

from minicaffe.errors import MinicaffeError
from minicaffe.proto import caffe_pb2

LAYER_COLORS = {
    "Convolution": "#FF5050",
    "Deconvolution": "#FF5050",
    "Pooling": "#FF9900",
    "InnerProduct": "#CC33FF",
}
DEFAULT_COLOR = "#6495ED"
NEURON_COLOR = "#90EE90"
BLOB_COLOR = "#E0E0E0"
RANKDIRS = ("LR", "TB", "BT", "RL")


class DrawError(MinicaffeError):
    """A drawing that cannot be made (bad option, or Graphviz missing for an image format)."""


def _quote(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _pool_name(pool: int) -> str:
    return caffe_pb2.PoolingParameter.PoolMethod.Name(pool)


def choose_color_by_layertype(layer_type: str) -> str:
    return LAYER_COLORS.get(layer_type, DEFAULT_COLOR)


def get_edge_label(layer) -> str:
    """The label of the edges from ``layer`` to its tops ("" when there is none)."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return ""


def get_layer_label(layer, rankdir: str, display_lrm: bool = False) -> str:
    """Lines describing ``layer``: name, (type), kernel/stride/pad, optionally lr_mult.

    Lines are joined with a newline escape for LR/RL graphs and a space for TB/BT ones.
    Returned unquoted, with ``\\n`` as DOT's line break.
    """
    sep = " " if rankdir in ("TB", "BT") else "\\n"
    parts = [_escape(layer.name)]
    if layer.type == "Pooling":
        parts.append(f"({layer.type} {_pool_name(layer.pooling_param.pool)})")
    else:
        parts.append(f"({_escape(layer.type)})")
    if layer.type in ("Convolution", "Deconvolution", "Pooling"):
        if layer.type == "Pooling":
            p = layer.pooling_param
            kernel = p.kernel_size or p.kernel_h
            stride, pad = p.stride, p.pad
        else:
            p = layer.convolution_param
            kernel = p.kernel_size[0] if len(p.kernel_size) else (p.kernel_h or 1)
            stride = p.stride[0] if len(p.stride) else (p.stride_h or 1)
            pad = p.pad[0] if len(p.pad) else p.pad_h
        parts.append(sep.join([f"kernel size: {kernel}", f"stride: {stride}", f"pad: {pad}"]))
    if display_lrm and layer.type in ("Convolution", "Deconvolution", "InnerProduct"):
        mults = [f"{p.lr_mult:g}" for p in layer.param] or ["1"]
        parts.append("lr mult: " + ", ".join(mults))
    return sep.join(parts)


def _escape(text: str) -> str:
    """Text for a record-shaped node's label: DOT string escapes plus the record specials."""
    out = str(text).replace("\\", "\\\\").replace('"', '\\"')
    for ch in "{}|<>":
        out = out.replace(ch, "\\" + ch)
    return out


def _included(layer, phase) -> bool:
    """Phase-only filtering, as pycaffe's draw: a rule matches when its phase (if set) equals
    ``phase``; levels and stages are ignored so every stage's layers of a phase are drawn."""
    if phase is None:
        return True
    if len(layer.include) and len(layer.exclude):
        raise DrawError(f"layer '{layer.name}' has both include and exclude rules")

    if len(layer.include):  # a rule without a phase (stages only) counts as matching
        return any(not r.HasField("phase") or r.phase == phase for r in layer.include)
    return not any(r.HasField("phase") and r.phase == phase for r in layer.exclude)


def get_dot_graph(
    net_param, rankdir: str = "LR", label_edges: bool = True, phase=None, display_lrm: bool = False
) -> str:
    """DOT text for ``net_param`` (a NetParameter). ``phase``: TRAIN/TEST keeps only the
    layers of that phase (by their include/exclude rules); None draws every layer."""
    if rankdir not in RANKDIRS:
        raise DrawError(f"rankdir must be one of {', '.join(RANKDIRS)}; received {rankdir!r}")
    if len(net_param.layers):  # a V1/V0 net: its layers are drawn once upgraded
        from minicaffe.upgrade import upgrade_net

        net_param, _ = upgrade_net(net_param, "<NetParameter>")
    lines = [
        f"digraph {_quote(net_param.name or 'Net')} {{",
        f"  graph [rankdir={rankdir}];",
        '  node [fontname="Helvetica"];',
    ]
    blob_nodes: dict[str, str] = {}
    edges = []
    for li, layer in enumerate(net_param.layer):
        if not _included(layer, phase):
            continue
        node = f"layer{li}"
        label = get_layer_label(layer, rankdir, display_lrm)
        in_place = (
            len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        )
        color = NEURON_COLOR if in_place else choose_color_by_layertype(layer.type)
        lines.append(
            f'  {node} [label="{label}", shape=record, style=filled, fillcolor="{color}"];'
        )
        for name in list(layer.bottom) + list(layer.top):
            if name not in blob_nodes:
                blob_nodes[name] = f"blob{len(blob_nodes)}"
                lines.append(
                    f"  {blob_nodes[name]} [label={_quote(name)}, shape=octagon, "
                    f'style=filled, fillcolor="{BLOB_COLOR}"];'
                )
        for name in layer.bottom:
            edges.append(f"  {blob_nodes[name]} -> {node};")
        out_label = get_edge_label(layer) if label_edges else ""
        for name in layer.top:
            attr = f" [label={_quote(out_label)}]" if out_label else ""
            edges.append(f"  {node} -> {blob_nodes[name]}{attr};")
    lines.extend(edges)
    lines.append("}")
    return "\n".join(lines) + "\n"


class DotGraph:
    """What pycaffe's get_pydot_graph returns, without pydot: DOT text plus rendering."""

    def __init__(self, text: str):
        self.text = text

    def to_string(self) -> str:
        return self.text

    def create(self, prog: str = "dot", format: str = "png") -> bytes:  # noqa: A002 - pydot's name
        return render_dot(self.text, format, prog=prog)

    def create_png(self) -> bytes:
        return self.create(format="png")

    def create_svg(self) -> bytes:
        return self.create(format="svg")

    def write(self, path, format: str = "raw") -> None:  # noqa: A002
        from minicaffe.prototxt import atomic_write_bytes

        data = self.text.encode() if format in ("raw", "dot") else self.create(format=format)
        atomic_write_bytes(path, data)


def get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False):
    """pycaffe's name: a :class:`DotGraph` (``to_string()``, ``create_png()``, ``write()``)."""
    return DotGraph(get_dot_graph(caffe_net, rankdir, label_edges, phase, display_lrm))


def render_dot(text: str, fmt: str, prog: str = "dot") -> bytes:
    """Run Graphviz on DOT ``text``; DrawError suggesting .dot when Graphviz is missing."""
    exe = shutil.which(prog)
    if exe is None:
        raise DrawError(
            f"drawing to .{fmt} needs Graphviz's '{prog}' program, which is not on "
            "the PATH; install Graphviz (e.g. apt-get install graphviz) or write "
            "a .dot file instead and render it elsewhere"
        )
    proc = subprocess.run([exe, f"-T{fmt}"], input=text.encode(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise DrawError(
            f"Graphviz '{prog} -T{fmt}' failed: {proc.stderr.decode(errors='replace').strip()}"
        )
    return proc.stdout


def draw_net(caffe_net, rankdir, ext: str = "png", phase=None, display_lrm: bool = False) -> bytes:
    """The drawing as bytes in format ``ext`` ("dot" gives the DOT text itself)."""
    text = get_dot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    if ext in ("dot", "gv", "raw"):
        return text.encode()
    return render_dot(text, ext)


def draw_net_to_file(
    caffe_net, filename, rankdir: str = "LR", phase=None, display_lrm: bool = False
) -> None:
    """Write the drawing; the format follows the file's extension (.dot needs no Graphviz)."""
    from minicaffe.prototxt import atomic_write_bytes

    filename = os.fspath(filename)
    ext = os.path.splitext(filename)[1].lstrip(".").lower()
    if not ext:
        raise DrawError(f"{filename}: give the output an extension (.dot, .png, .svg, ...)")
    atomic_write_bytes(filename, draw_net(caffe_net, rankdir, ext, phase, display_lrm))


__all__ = [
    "DotGraph",
    "DrawError",
    "choose_color_by_layertype",
    "draw_net",
    "draw_net_to_file",
    "get_dot_graph",
    "get_edge_label",
    "get_layer_label",
    "get_pydot_graph",
    "render_dot",
]
