"""WindowData: window-file parsing, fg/bg split, batch layout, the warp with context and square
mode, mirror, means, scale, errors, resume, and the corpus's PASCAL fine-tuning net."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minicaffe import Net, backend
from minicaffe.data.image_io import resize_linear
from minicaffe.errors import DataError
from minicaffe.proto import caffe_pb2
from minicaffe.prototxt import read_net_param, write_binaryproto
from minicaffe.solver import get_solver
from tests.data_layers.util import build_data_layer, next_batch

CORPUS = Path(__file__).parents[1] / "data" / "corpus"
PASCAL = "examples/finetune_pascal_detection/pascal_finetune_trainval_test.prototxt"
COLOUR = (10, 20, 30)  # RGB of the uniform image; BGR (30, 20, 10) in the data top


def _record(index, name, windows, width=40, height=30, channels=3):
    lines = [f"# {index}", name, str(channels), str(height), str(width), str(len(windows))]
    return "\n".join(lines + [" ".join(map(str, w)) for w in windows]) + "\n"


@pytest.fixture
def imgs(tmp_path, monkeypatch):
    """img/grad.png (40x30 colour gradient), img/flat.png (40x30, one colour), img/sq.png
    (20x20 random); returns their BGR C x H x W arrays."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "img").mkdir()
    yy, xx = np.mgrid[0:30, 0:40]
    grad = np.stack([xx * 6, yy * 8, (xx * 3 + yy * 5) % 256], -1).astype(np.uint8)
    flat = np.empty((30, 40, 3), np.uint8)
    flat[...] = COLOUR
    sq = np.random.default_rng(3).integers(0, 256, (20, 20, 3)).astype(np.uint8)
    out = {}
    for name, rgb in (("grad", grad), ("flat", flat), ("sq", sq)):
        Image.fromarray(rgb).save(tmp_path / "img" / f"{name}.png")
        out[name] = np.ascontiguousarray(rgb[..., ::-1].transpose(2, 0, 1))
    return out


def _write(records, name="win.txt"):
    Path(name).write_text("".join(records))


def _layer(extra="", transform="crop_size: 20", batch=8, prefetch=0, **kw):
    text = (
        'type: "WindowData" top: "data" top: "label" window_data_param { source: "win.txt" '
        f'root_folder: "img/" batch_size: {batch} {extra} }} transform_param {{ {transform} }}'
    )
    return build_data_layer(text, prefetch=prefetch, **kw)


def _one_window(name, box, cls=0, overlap=0.0):
    """A file whose only window (background by default) is ``box`` of ``name``."""
    _write([_record(0, f"{name}.png", [(cls, overlap, *box)])])
    return "fg_fraction: 1" if overlap >= 0.5 else "fg_fraction: 0"


# ------------------------------------------------------------------------------ parsing


def test_fg_bg_split_thresholds_and_counts(imgs, caplog):
    _write(
        [
            _record(
                0,
                "grad.png",
                [
                    (1, 0.8, 0, 0, 9, 9),
                    (2, 0.6, 1, 1, 5, 5),
                    (7, 0.59, 2, 2, 6, 6),
                    (3, 0.3, 0, 0, 3, 3),
                ],
            ),
            _record(
                1, "flat.png", [(2, 1, 0, 0, 39, 29), (5, 0.29, 4, 4, 8, 8), (0, 0, 1, 1, 2, 2)]
            ),
        ]
    )
    with caplog.at_level(logging.INFO, logger="minicaffe"):
        layer, tops = _layer("fg_threshold: 0.6 bg_threshold: 0.3 fg_fraction: 0.5", batch=40)
    text = caplog.text
    # 0.59 and 0.3 fall between the thresholds and are dropped; 0.29 and 0 are background
    assert "3 foreground windows (overlap >= 0.6), 2 background (< 0.3), 2 dropped" in text
    assert "class 0 has 2 samples" in text and "class 1 has 1 samples" in text
    assert "class 2 has 2 samples" in text and "class 7" not in text and "class 3" not in text
    labels = np.concatenate([next_batch(layer, tops)[1] for _ in range(3)])
    assert tops[0].shape == (40, 3, 20, 20) and tops[1].shape == (40,)
    assert set(labels[:20]) == {0} and set(labels[20:40]) == {1, 2}  # class 5 forced to 0


def test_batch_is_background_then_foreground(imgs):
    fg = [(c, 0.9, 0, 0, 9, 9) for c in (4, 5, 6)]
    _write([_record(0, "grad.png", fg + [(9, 0.1, 3, 3, 12, 12), (0, 0.2, 5, 5, 8, 8)])])
    layer, tops = _layer(batch=10)  # fg_fraction 0.25: int(2.5) = 2 foreground windows
    seen = set()
    for _ in range(8):
        _, y = next_batch(layer, tops)
        assert (y[:8] == 0).all() and set(y[8:]) <= {4, 5, 6}
        seen |= set(y[8:].tolist())
    assert seen == {4, 5, 6}  # drawn uniformly with replacement: every window turns up
    layer, tops = _layer("fg_fraction: 0.3", batch=10)
    assert (next_batch(layer, tops)[1] > 0).sum() == 3


def test_tokens_may_spread_over_lines_and_blank_lines(imgs):
    """Caffe reads whitespace-separated tokens: layout does not matter."""
    _write(["# 0 grad.png 3 30 40 2 1 0.9 0 0 9 9\n\n0 0.1\n5 5 8 8\n\n# 1\nflat.png\n3 30 40 0\n"])
    layer, tops = _layer(batch=4, extra="fg_fraction: 0.5")
    x, y = next_batch(layer, tops)
    np.testing.assert_array_equal(y, [0, 0, 1, 1])
    np.testing.assert_array_equal(x[1], resize_linear(imgs["grad"][:, 5:9, 5:9], 20, 20))


# ------------------------------------------------------------------------------ the warp


def test_plain_warp_values(imgs):
    _write(
        [
            _record(0, "flat.png", [(0, 0, 3, 4, 20, 11)]),
            _record(1, "sq.png", [(1, 1, 0, 0, 19, 19)], 20, 20),
        ]
    )
    layer, tops = _layer(batch=2, extra="fg_fraction: 0.5")
    x, y = next_batch(layer, tops)
    np.testing.assert_array_equal(y, [0, 1])
    assert (x[0] == np.array(COLOUR[::-1], np.float32)[:, None, None]).all()
    np.testing.assert_array_equal(x[1], imgs["sq"])  # whole image at its own size: BGR image


def test_context_pad_places_the_clipped_window(imgs):
    # whole 40x30 image, crop 20, context_pad 2: grown box x -5..45, y -4..34 (51x39); the
    # image part warps to round(40*20/51) x round(30*20/39) = 16 x 15 at (2, 2)
    extra = _one_window("grad", (0, 0, 39, 29)) + " context_pad: 2"
    layer, tops = _layer(extra, batch=1)
    x = next_batch(layer, tops)[0][0]
    inside = np.zeros(x.shape, bool)
    inside[:, 2:17, 2:18] = True
    assert (x[~inside] == 0).all()
    np.testing.assert_array_equal(x[:, 2:17, 2:18], resize_linear(imgs["grad"], 15, 16))


def test_context_pad_at_the_left_edge_and_mirror(imgs):
    # window x 0..9, y 10..19, crop 20, context_pad 4: grown x -3..13, y 7..23 (17x17); the
    # image part x 0..13 warps to 16 x 20, placed after round(3 * 20/17) = 4 cut columns on the
    # left, or (mirrored) after the 0 columns cut on the right
    extra = _one_window("grad", (0, 10, 9, 19)) + " context_pad: 4"
    warped = resize_linear(imgs["grad"][:, 7:24, 0:14], 20, 16)
    layer, tops = _layer(extra, transform="crop_size: 20 mirror: true", batch=16)
    x = next_batch(layer, tops)[0]
    flipped = (x[:, :, :, 16:] == 0).all(axis=(1, 2, 3))
    assert 0 < flipped.sum() < 16
    for item, f in zip(x, flipped):
        if f:
            np.testing.assert_array_equal(item[:, :, :16], warped[:, :, ::-1])
        else:
            assert (item[:, :, :4] == 0).all()
            np.testing.assert_array_equal(item[:, :, 4:], warped)


def test_mirror_without_context_flips_the_warp(imgs):
    extra = _one_window("grad", (5, 3, 24, 22))
    layer, tops = _layer(extra, transform="crop_size: 10 mirror: true", batch=12)
    warped = resize_linear(imgs["grad"][:, 3:23, 5:25], 10, 10)
    x = next_batch(layer, tops)[0]
    same = [np.array_equal(item, warped) for item in x]
    flip = [np.array_equal(item, warped[:, :, ::-1]) for item in x]
    assert all(a or b for a, b in zip(same, flip)) and any(same) and any(flip)


def test_square_mode(imgs):
    # window x 10..19, y 13..16: square half size 5 about (15, 15): box 10..20 both ways (11x11)
    extra = _one_window("grad", (10, 13, 19, 16)) + ' crop_mode: "square"'
    layer, tops = _layer(extra, transform="crop_size: 10", batch=1)
    x = next_batch(layer, tops)[0][0]
    np.testing.assert_array_equal(x, resize_linear(imgs["grad"][:, 10:21, 10:21], 10, 10))
    # at the top edge the square box is cut: rows of zeros on top
    extra = _one_window("flat", (10, 0, 19, 1)) + ' crop_mode: "square"'
    layer, tops = _layer(extra, transform="crop_size: 10", batch=1)
    x = next_batch(layer, tops)[0][0]  # box y -4..6 (11 rows, 4 cut): round(4*10/11) = 4
    assert (x[:, :4] == 0).all()
    assert (x[:, 4:] == np.array(COLOUR[::-1], np.float32)[:, None, None]).all()


def test_grown_corners_round_halves_away_from_zero(imgs):
    # window 11..14 both ways, crop 10, context_pad 1 (growth 1.25): corners 13 -/+ 2.5 round
    # to 11 and 16 (C's round; round-half-even would give 10 and 16)
    extra = _one_window("grad", (11, 11, 14, 14)) + " context_pad: 1"
    layer, tops = _layer(extra, transform="crop_size: 10", batch=1)
    x = next_batch(layer, tops)[0][0]
    np.testing.assert_array_equal(x, resize_linear(imgs["grad"][:, 11:17, 11:17], 10, 10))


# ------------------------------------------------------------------------------ mean and scale


def test_mean_file_offset_uses_the_width_for_both_axes(imgs, tmp_path):
    mean = np.random.default_rng(1).uniform(0, 50, (1, 3, 30, 24)).astype(np.float32)
    write_binaryproto(tmp_path / "mean.binaryproto", mean)
    bgr = np.array(COLOUR[::-1], np.float32)[:, None, None]
    transform = 'crop_size: 20 mean_file: "mean.binaryproto"'
    extra = _one_window("flat", (0, 0, 39, 29))
    layer, tops = _layer(extra, transform=transform, batch=1)
    x = next_batch(layer, tops)[0][0]
    # (24 - 20) / 2 = 2 from the width, for the rows as well (not (30 - 20) / 2 = 5)
    np.testing.assert_array_equal(x, bgr - mean[0, :, 2:22, 2:22])
    layer, tops = _layer(extra + " context_pad: 2 scale: 0.5", transform=transform, batch=1)
    x = next_batch(layer, tops)[0][0]
    inside = np.zeros(x.shape, bool)
    inside[:, 2:17, 2:18] = True
    assert (x[~inside] == 0).all()  # the canvas stays 0, not -mean
    ref = (bgr - mean[0, :, 4:19, 4:20]) * np.float32(0.5)
    np.testing.assert_array_equal(x[:, 2:17, 2:18], ref)


def test_mean_value_and_scale(imgs, caplog):
    extra = _one_window("flat", (0, 0, 39, 29))
    bgr = np.array(COLOUR[::-1], np.float32)
    for values, want in (
        ("mean_value: 1 mean_value: 2 mean_value: 4", bgr - [1, 2, 4]),
        ("mean_value: 5", bgr - 5),
    ):
        layer, tops = _layer(extra + " scale: 0.25", transform="crop_size: 4 " + values)
        x = next_batch(layer, tops)[0]
        np.testing.assert_array_equal(x, np.broadcast_to((want * 0.25)[:, None, None], x.shape))
    # Caffe's WindowData never applies transform_param.scale: it warns and leaves it out
    with caplog.at_level(logging.WARNING, logger="minicaffe"):
        layer, tops = _layer(extra, transform="crop_size: 4 scale: 0.5")
    assert "does not apply transform_param scale 0.5" in caplog.text
    x = next_batch(layer, tops)[0]
    assert (x == bgr[:, None, None]).all()


# ------------------------------------------------------------------------------ errors


def _raises(match, extra="", transform="crop_size: 20", forward=False, **kw):
    with pytest.raises(DataError, match=match):
        layer, tops = _layer(extra, transform=transform, **kw)
        if forward:
            next_batch(layer, tops)


def test_window_file_errors(imgs):
    _raises("window file 'win.txt' not found")
    Path("win.txt").write_text("\n  \n")
    _raises("'win.txt' is empty")
    _write([_record(0, "grad.png", [(1, 0.9, 0, 0, 9, 9)]), "0\ngrad.png\n"])
    _raises("'win.txt' line 8: expected '#' starting an image record; received '0'")
    _write([_record(0, "grad.png", [(1, 0.9, 0, 0, 9, 9), (0, 0.1, 0, "x", 9, 9)])])
    _raises(
        "'win.txt' line 8: expected a window's y1 \\(window 2 of 2\\), an integer; received 'x'"
    )
    _write([_record(0, "grad.png", [(1, 0.9, 0, 0, 9, 9)]), "# 1\nflat.png\n3\n30\n"])
    _raises("'win.txt' line 11: the file ends where the image's width was expected")
    _write([_record(0, "grad.png", [(1, 0.9, 0, 0, 9, 9)]), _record(2, "flat.png", [])])
    _raises("'win.txt' line 8: image index 2 is outside 0..1")
    _write([_record(0, "grad.png", [(1, 0.9, 0, 0, 9, 9)], channels=1)])
    _raises("'win.txt' line 3: the last image record gives 1 channels")


def test_window_errors(imgs):
    _write([_record(0, "grad.png", [(0, 0.1, 0, 0, 9, 9), (0, 0.7, 1, 1, 5, 5)])])
    _raises(
        "'win.txt' line 8: a foreground window \\(overlap 0.7 >= fg_threshold 0.5\\) needs "
        "a class > 0; received 0"
    )
    _write([_record(0, "grad.png", [(0, 0.1, 0, 0, 9, 9)])])
    _raises("has no foreground windows .* each batch takes 2 \\(batch_size 8, fg_fraction 0.25")
    _write([_record(0, "grad.png", [(1, 0.9, 0, 0, 9, 9)])])
    _raises("has no background windows .* each batch takes 6")
    _layer("fg_fraction: 1")  # a batch of foreground windows only needs none
    _write([_record(0, "grad.png", [(1, 0.9, 0, 0, 9, 9), (0, 0.1, 9, 0, 4, 9)])])
    _raises("line 8: window \\(x1, y1, x2, y2\\) = \\(9, 0, 4, 9\\) is empty")
    _write([_record(0, "grad.png", [(0, 0.1, 30, 0, 40, 29)])])
    _raises(
        "'win.txt' line 7: window \\(x1, y1, x2, y2\\) = \\(30, 0, 40, 29\\) lies outside "
        "image 'img/grad.png' \\(40x30, WxH",
        "fg_fraction: 0",
        forward=True,
    )
    _write([_record(0, "grad.png", [(0, 0.1, 45, 0, 50, 29)])])
    _raises("lies outside image", "fg_fraction: 0 context_pad: 2", forward=True)
    _layer("fg_fraction: 0 context_pad: 2", transform="crop_size: 20")  # partly outside is fine
    _write([_record(0, "grad.png", [(0, 0.1, 30, 0, 45, 29)])])
    next_batch(*_layer("fg_fraction: 0 context_pad: 2"))


def test_image_and_param_errors(imgs, tmp_path):
    _write([_record(0, "missing.png", [(0, 0.1, 0, 0, 9, 9)])])
    _raises(
        "'win.txt' line 7: image 'img/missing.png' not found",
        "fg_fraction: 0",
        forward=True,
        prefetch=2,
    )
    _raises(
        "'win.txt' line 2: image 'img/missing.png' not found", "fg_fraction: 0 cache_images: true"
    )
    _write([_record(0, "grad.png", [(0, 0.1, 0, 0, 9, 9)])])
    _raises("transform_param.crop_size must be > 0", "fg_fraction: 0", transform="")
    _raises(
        "mean_value needs 1 value or one per channel \\(3\\); received 2",
        "fg_fraction: 0",
        transform="crop_size: 4 mean_value: 1 mean_value: 2",
    )
    _raises(
        "crop_mode must be 'warp' or 'square'; received 'Square'",
        'fg_fraction: 0 crop_mode: "Square"',
    )
    _raises("2 \\* context_pad must be < crop_size", "context_pad: 10")
    _raises("fg_fraction must be in \\[0, 1\\]; received 1.5", "fg_fraction: 1.5")
    _raises(
        "window_data_param.crop_size, mirror: Caffe's WindowData reads these from transform_param",
        "crop_size: 20 mirror: true",
    )
    write_binaryproto(tmp_path / "mean.binaryproto", np.zeros((3, 30, 18), np.float32))
    _raises(
        "mean_file 'mean.binaryproto' is 3x30x18 \\(CxHxW\\)",
        "fg_fraction: 0",
        transform='crop_size: 20 mean_file: "mean.binaryproto"',
    )


# ------------------------------------------------------------------------------ determinism


def test_cache_and_prefetch_give_the_same_batches(imgs):
    _write(
        [
            _record(0, "grad.png", [(1, 0.9, 0, 0, 9, 9), (0, 0.1, 3, 3, 30, 20)]),
            _record(1, "sq.png", [(2, 0.7, 2, 2, 15, 17), (0, 0.2, 0, 0, 19, 19)], 20, 20),
        ]
    )
    runs = []
    for extra, prefetch in (("", 0), ("", 3), ("cache_images: true", 2)):
        backend.set_random_seed(5)
        layer, tops = _layer(
            extra + " context_pad: 3",
            "crop_size: 12 mirror: true",
            batch=6,
            prefetch=prefetch,
            phase=caffe_pb2.TEST,
        )
        runs.append([next_batch(layer, tops) for _ in range(4)])
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])


NET = """name: "windows"
layer { name: "data" type: "WindowData" top: "data" top: "label"
  transform_param { crop_size: 8 mirror: true mean_value: 100 }
  window_data_param { source: "win.txt" root_folder: "img/" batch_size: 4 fg_fraction: 0.5
    context_pad: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.001 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""
SOLVER = """net: "net.prototxt"
base_lr: 0.01
lr_policy: "fixed"
max_iter: 6
snapshot: 3
snapshot_prefix: "snap"
display: 0
solver_mode: CPU
random_seed: 13
"""


def test_resume_continues_bit_for_bit(imgs):
    _write(
        [
            _record(
                0,
                "grad.png",
                [
                    (1, 0.9, 0, 0, 9, 9),
                    (2, 0.8, 5, 5, 30, 25),
                    (0, 0.1, 3, 3, 30, 20),
                    (0, 0.3, 10, 0, 39, 9),
                ],
            ),
            _record(1, "sq.png", [(2, 0.7, 2, 2, 15, 17), (0, 0.2, 0, 0, 19, 19)], 20, 20),
        ]
    )
    Path("net.prototxt").write_text(NET)
    Path("solver.prototxt").write_text(SOLVER)

    def run(resume=None):
        solver = get_solver("solver.prototxt")
        seen = []
        solver.add_callback(
            on_gradients_ready=lambda: seen.append(
                (solver.net.blobs["data"].data.copy(), solver.net.blobs["label"].data.copy())
            )
        )
        solver.solve(resume)
        return solver, seen

    full, batches = run()
    assert os.path.exists("snap_iter_3.solverstate") and len(batches) == 6
    resumed, rest = run("snap_iter_3.solverstate")
    assert len(rest) == 3
    for (x, y), (x2, y2) in zip(batches[3:], rest):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    for a, b in zip(full.net.learnable_params, resumed.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)
    assert not all(np.array_equal(batches[0][0], b[0]) for b in batches[1:])


# ------------------------------------------------------------------------------ corpus net


def _pascal_text(which):
    text = (CORPUS / which / PASCAL).read_text()
    text = text.replace(
        "examples/finetune_pascal_detection/window_file_2007_trainval.txt", "win.txt"
    ).replace("data/ilsvrc12/imagenet_mean.binaryproto", "mean.bp")
    text = text.replace("batch_size: 128", "batch_size: 4")  # 3 background, 1 foreground
    assert text.count("win.txt") == 1 and text.count("mean.bp") == 2
    return text


def test_pascal_finetune_net_builds_and_runs(imgs, tmp_path):
    mean = np.random.default_rng(2).uniform(90, 130, (1, 3, 256, 256)).astype(np.float32)
    write_binaryproto(tmp_path / "mean.bp", mean)
    windows = [(c, 0.7, 2 * c, c, 20 + c, 25) for c in range(1, 21)] + [(0, 0.1, 0, 0, 39, 29)]
    _write([_record(0, "img/grad.png", windows), _record(1, "img/flat.png", windows)])
    backend.set_random_seed(1)
    path = tmp_path / "pascal.prototxt"
    path.write_text(_pascal_text("BVLC__caffe"))
    net = Net(str(path), "TRAIN")
    layer = net.layer_dict["data"]
    assert layer.type == "WindowData" and (layer.crop, layer.context_pad) == (227, 16)
    assert layer.mirror and layer._mean_off == 14
    net.forward()
    assert net.blobs["data"].shape == (4, 3, 227, 227)
    label = net.blobs["label"].data
    assert (label[:3] == 0).all() and 1 <= label[3] <= 20
    assert np.isfinite(float(net.loss)) and float(net.loss) > 0
    # the V1 spelling of the same net (type: WINDOW_DATA) upgrades to the same data layers
    (tmp_path / "v1.prototxt").write_text(_pascal_text("BVLC__caffe@f15210cd"))
    old, new = read_net_param(str(tmp_path / "v1.prototxt")), read_net_param(str(path))
    assert [lp for lp in old.layer if lp.type == "WindowData"] == list(new.layer[:2])
