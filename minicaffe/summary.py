"""A text table describing a built Net: layers, blobs, shapes, parameters and memory."""

from __future__ import annotations

from minicaffe.net import TRAIN


def _shape(shape) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.2f} MiB"


def net_summary(net) -> str:
    """One row per layer: index, name, type, bottoms -> tops, top shapes, parameter shapes and
    count (shared parameters counted once), then totals of parameters and activation memory."""
    rows = [("#", "name", "type", "bottoms -> tops", "top shapes", "params", "count")]
    seen_params: set[int] = set()
    owners = {id(b) for b in net.learnable_params}
    total_params = 0
    for i, layer in enumerate(net.layers):
        name = layer.name
        bottoms = ", ".join(net.bottom_names[name])
        tops = ", ".join(net.top_names[name])
        shapes = ", ".join(_shape(net.blobs[t].shape) for t in net.top_names[name])
        pshapes = ", ".join(_shape(b.shape) for b in layer.blobs)
        count = 0
        for b in layer.blobs:
            if id(b) in owners and id(b) not in seen_params:
                seen_params.add(id(b))
                count += b.count
        total_params += count
        link = f"{bottoms} -> {tops}" if bottoms else f"-> {tops}"
        shared = "" if count or not layer.blobs else " (shared)"
        rows.append(
            (
                str(i),
                name,
                layer.type,
                link,
                shapes,
                pshapes,
                (f"{count:,}" if layer.blobs else "") + shared,
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = [
        f"Net '{net.name}' (phase {'TRAIN' if net.phase == TRAIN else 'TEST'}, "
        f"device {net.device}, {len(net.layers)} layers)"
    ]
    for k, r in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    itemsize = net.dtype.itemsize
    act = sum(b.count for b in {id(b): b for b in net.blobs.values()}.values())
    lines.append("")
    lines.append(
        f"parameters: {total_params:,} ({_mib(total_params * itemsize)}); "
        f"activations: {act:,} values ({_mib(act * itemsize)}, data only; backward "
        "doubles it)"
    )
    lines.append(
        f"inputs: {', '.join(net.inputs) or '-'}; outputs: {', '.join(net.outputs) or '-'}"
    )
    return "\n".join(lines)
