"""Write tools/nets/resnet50_deploy.prototxt: ResNet-50 (deploy) in Caffe's layer vocabulary.

    python tools/gen_resnet50.py [--batch N] [--out PATH]

The layout follows the published Caffe ResNet-50: a 7x7/2 convolution (no bias) + BatchNorm
(use_global_stats) + Scale (bias) + ReLU, 3x3/2 max pooling, four stages of bottleneck blocks
(3, 4, 6, 3 blocks; widths 64, 128, 256, 512; 4x expansion; the stride-2 downsampling sits in the
first 1x1 convolution of stages 3-5 and in its projection shortcut), 7x7 average pooling, a
1000-way InnerProduct and Softmax. Layer names follow the usual convention (conv1, bn_conv1,
scale_conv1, res2a_branch1, res2a_branch2a, bn2a_branch2a, ..., res2a, res2a_relu, pool5, fc1000,
prob) so weights published for that layout load by name.
"""

from __future__ import annotations

import argparse
from pathlib import Path

OUT = Path(__file__).parent / "nets" / "resnet50_deploy.prototxt"


def _conv(name, bottom, top, num_output, kernel, stride=1, pad=0):
    return (
        f'layer {{\n  name: "{name}"\n  type: "Convolution"\n  bottom: "{bottom}"\n'
        f'  top: "{top}"\n  convolution_param {{\n    num_output: {num_output}\n'
        f"    kernel_size: {kernel}\n    pad: {pad}\n    stride: {stride}\n"
        '    bias_term: false\n    weight_filler { type: "msra" }\n  }\n}\n'
    )


def _bn_scale(suffix, blob):
    return (
        f'layer {{\n  name: "bn{suffix}"\n  type: "BatchNorm"\n  bottom: "{blob}"\n'
        f'  top: "{blob}"\n  batch_norm_param {{ use_global_stats: true }}\n}}\n'
        f'layer {{\n  name: "scale{suffix}"\n  type: "Scale"\n  bottom: "{blob}"\n'
        f'  top: "{blob}"\n  scale_param {{ bias_term: true }}\n}}\n'
    )


def _relu(name, blob):
    return f'layer {{\n  name: "{name}"\n  type: "ReLU"\n  bottom: "{blob}"\n  top: "{blob}"\n}}\n'


def _block(stage: int, letter: str, bottom: str, width: int, stride: int, project: bool):
    tag = f"{stage}{letter}"
    out = f"res{tag}"
    parts = []
    shortcut = bottom
    if project:
        b1 = f"res{tag}_branch1"
        parts.append(_conv(b1, bottom, b1, 4 * width, 1, stride))
        parts.append(_bn_scale(f"{tag}_branch1", b1))
        shortcut = b1
    prev = bottom
    for sub, (kernel, pad, s, n) in zip(
        "abc", [(1, 0, stride, width), (3, 1, 1, width), (1, 0, 1, 4 * width)]
    ):
        name = f"res{tag}_branch2{sub}"
        parts.append(_conv(name, prev, name, n, kernel, s, pad))
        parts.append(_bn_scale(f"{tag}_branch2{sub}", name))
        if sub != "c":
            parts.append(_relu(f"{name}_relu", name))
        prev = name
    parts.append(
        f'layer {{\n  name: "{out}"\n  type: "Eltwise"\n  bottom: "{shortcut}"\n'
        f'  bottom: "{prev}"\n  top: "{out}"\n'
        "  eltwise_param { operation: SUM }\n}\n"
    )
    parts.append(_relu(f"{out}_relu", out))
    return "".join(parts), out


def resnet50_prototxt(batch: int = 1) -> str:
    """The prototxt text of ResNet-50 deploy with an Input of (batch, 3, 224, 224)."""
    parts = [
        'name: "ResNet-50"\n',
        'layer {\n  name: "data"\n  type: "Input"\n  top: "data"\n'
        f"  input_param {{ shape: {{ dim: {batch} dim: 3 dim: 224 dim: 224 }} }}\n}}\n",
        _conv("conv1", "data", "conv1", 64, 7, 2, 3),
        _bn_scale("_conv1", "conv1"),
        _relu("conv1_relu", "conv1"),
        'layer {\n  name: "pool1"\n  type: "Pooling"\n  bottom: "conv1"\n  top: "pool1"\n'
        "  pooling_param { pool: MAX kernel_size: 3 stride: 2 }\n}\n",
    ]
    blob = "pool1"
    for stage, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)], start=2):
        for k in range(blocks):
            stride = 2 if (k == 0 and stage > 2) else 1
            text, blob = _block(stage, "abcdef"[k], blob, width, stride, project=(k == 0))
            parts.append(text)
    parts.append(
        f'layer {{\n  name: "pool5"\n  type: "Pooling"\n  bottom: "{blob}"\n'
        '  top: "pool5"\n  pooling_param { pool: AVE kernel_size: 7 stride: 1 }\n}\n'
    )
    parts.append(
        'layer {\n  name: "fc1000"\n  type: "InnerProduct"\n  bottom: "pool5"\n'
        '  top: "fc1000"\n  inner_product_param {\n    num_output: 1000\n'
        '    weight_filler { type: "xavier" }\n  }\n}\n'
    )
    parts.append(
        'layer {\n  name: "prob"\n  type: "Softmax"\n  bottom: "fc1000"\n  top: "prob"\n}\n'
    )
    return "".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(resnet50_prototxt(args.batch))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
