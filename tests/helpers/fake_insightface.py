"""A synthetic antelopev2 / buffalo_l-shaped ONNX pack, generated at test time (no weights are downloaded).

insightface routes each ONNX file by tensor shapes, so tiny graphs of the right shapes exercise its real
code path. Unlike the static pack in faces.md §6, this detector takes any input size and *looks* at the
image: a stride-32 cell that is fully white scores `SCORE`; every other cell scores ~0. Each detection is a
box of 4 cells (128 px at the detector's scale) centred on that cell's anchor, with fixed keypoint offsets.
So a 32x32 white square at x 320..352, y 224..256 of a 640x640 grey image is one face at box
(256, 160, 384, 288) with kps `expected_kps(...)`. The landmark models return a fixed layout relative to the
face box (see `expected_landmarks`), so tests can check positions exactly.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 13)]
SCORE = 0.93
KPS_OFFSETS = np.array([-0.8, -0.5, 0.8, -0.5, 0.0, 0.2, -0.6, 1.0, 0.6, 1.0], np.float32)  # in stride units
BOX_DISTANCE = 2.0  # stride units on each side


def canonical_landmarks68() -> np.ndarray:
    """A plausible 68-point (iBUG order) face layout in [-1, 1] box-normalised coordinates."""
    t = np.linspace(-1.0, 1.0, 17)
    jaw = np.stack([0.8 * np.sin(t * 1.3), -0.1 + 0.9 * np.cos(t * 1.3) ** 0.5 * 0.9], 1)
    brow_r = np.stack([np.linspace(-0.65, -0.15, 5), [-0.35, -0.42, -0.44, -0.42, -0.38]], 1)
    brow_l = brow_r[::-1] * [-1, 1]
    nose = np.concatenate(
        [np.stack([np.zeros(4), np.linspace(-0.25, 0.1, 4)], 1), np.stack([np.linspace(-0.15, 0.15, 5), np.full(5, 0.18)], 1)]
    )

    def eye(cx):
        a = np.linspace(0, 2 * np.pi, 7)[:-1]
        return np.stack([cx + 0.15 * np.cos(a + np.pi), -0.22 + 0.06 * np.sin(a + np.pi)], 1)

    a12 = np.linspace(0, 2 * np.pi, 13)[:-1]
    lips_out = np.stack([0.32 * np.cos(a12 + np.pi), 0.45 + 0.12 * np.sin(a12 + np.pi)], 1)
    a8 = np.linspace(0, 2 * np.pi, 9)[:-1]
    lips_in = np.stack([0.2 * np.cos(a8 + np.pi), 0.45 + 0.05 * np.sin(a8 + np.pi)], 1)
    pts = np.concatenate([jaw, brow_r, brow_l, nose, eye(-0.38), eye(0.38), lips_out, lips_in])
    assert pts.shape == (68, 2)
    return pts.astype(np.float32)


def expected_box(anchor_xy, det_scale=1.0, stride=32):
    """The box (xyxy, image pixels) the detector reports for a firing cell whose anchor is `anchor_xy` (det px)."""
    cx, cy = anchor_xy
    d = BOX_DISTANCE * stride
    return np.array([cx - d, cy - d, cx + d, cy + d], np.float32) / det_scale


def expected_kps(anchor_xy, det_scale=1.0, stride=32):
    return (np.asarray(anchor_xy, np.float32) + KPS_OFFSETS.reshape(5, 2) * stride) / det_scale


def expected_landmarks(box) -> np.ndarray:
    """Where insightface's Landmark.get maps the constant layout: centre + p * max(w, h) * 1.5 / 2."""
    x0, y0, x1, y1 = box
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2], np.float32)
    return centre + canonical_landmarks68() * max(x1 - x0, y1 - y0) * 0.75


def _save(nodes, name, inputs, outputs, inits, path):
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.save(model, path)


def _const(inits, name, array):
    inits.append(numpy_helper.from_array(np.asarray(array), name))
    return name


def scrfd_like(path):
    """9 outputs (score / bbox / kps at strides 8, 16, 32; 2 anchors each), dynamic input size."""
    nodes, inits, outs = [], [], []
    # SCRFD feeds (rgb - 127.5) / 128, so white is ~+1 and grey 128 is ~0.
    nodes.append(helper.make_node("ReduceMean", ["input.1"], ["gray"], axes=[1], keepdims=1))
    for s in (8, 16, 32):
        nodes.append(helper.make_node("AveragePool", ["gray"], [f"pool{s}"], kernel_shape=[s, s], strides=[s, s]))
        # (1, 1, h, w) -> (h * w, 1), then two anchors per location: (h * w, 2) -> (h * w * 2, 1)
        nodes.append(helper.make_node("Reshape", [f"pool{s}", _const(inits, f"col{s}", np.array([-1, 1]))], [f"flat{s}"]))
        nodes.append(helper.make_node("Concat", [f"flat{s}", f"flat{s}"], [f"two{s}"], axis=1))
        nodes.append(helper.make_node("Reshape", [f"two{s}", f"col{s}"], [f"cell{s}"]))
        if s == 32:  # only fully-white cells pass the 0.5 threshold: score = SCORE * relu(2 * mean - 1)
            nodes.append(helper.make_node("Mul", [f"cell{s}", _const(inits, "two", np.float32(2.0))], ["m2"]))
            nodes.append(helper.make_node("Sub", ["m2", _const(inits, "one", np.float32(1.0))], ["m2s"]))
            nodes.append(helper.make_node("Relu", ["m2s"], ["m2r"]))
            nodes.append(helper.make_node("Mul", ["m2r", _const(inits, "sc", np.float32(SCORE))], ["score_32"]))
        else:
            nodes.append(helper.make_node("Mul", [f"cell{s}", _const(inits, f"zero{s}", np.float32(0.0))], [f"score_{s}"]))
        nodes.append(helper.make_node("Shape", [f"score_{s}"], [f"n{s}"]))
        for kind, value in (("bbox", np.full((1, 4), BOX_DISTANCE, np.float32)), ("kps", KPS_OFFSETS.reshape(1, 10))):
            nodes.append(helper.make_node("Expand", [_const(inits, f"{kind}{s}_c", value), f"n{s}"], [f"{kind}_{s}"]))
    for kind, w in (("score", 1), ("bbox", 4), ("kps", 10)):
        for s in (8, 16, 32):
            outs.append(helper.make_tensor_value_info(f"{kind}_{s}", TensorProto.FLOAT, [f"n{s}", w]))
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "H", "W"])
    _save(nodes, "scrfd_like", [inp], outs, inits, path)


def pooled_linear(path, hw, dim, seed):
    """ArcFace-like (112 -> 512) or genderage (96 -> 3): average-pool to 8x8x3, then a fixed random matrix."""
    weights = np.random.default_rng(seed).standard_normal((192, dim)).astype(np.float32) / 8
    k = hw // 8
    nodes = [
        helper.make_node("AveragePool", ["data"], ["p"], kernel_shape=[k, k], strides=[k, k]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "W"], ["out"]),
    ]
    inp = helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, hw, hw])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", dim])
    _save(nodes, "pl", [inp], [out], [numpy_helper.from_array(weights, "W")], path)


def constant_landmarks(path, dim):
    """192x192 input; output `dim` (212 = 2d106, 3309 = 1k3d68) holding a fixed layout in [-1, 1] crop units."""
    values = np.zeros((1, dim), np.float32)
    if dim == 3309:  # insightface keeps the last 68 rows of (1103, 3)
        tail = np.zeros((68, 3), np.float32)
        tail[:, :2] = canonical_landmarks68()
        values[0, -68 * 3 :] = tail.reshape(-1)
    nodes = [
        helper.make_node("ReduceMean", ["data"], ["m4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Flatten", ["m4"], ["m"], axis=1),  # (N, 1): keeps the input used, batch preserved
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["z", "lm"], ["out"]),
    ]
    inits = [numpy_helper.from_array(np.float32(0.0), "zero"), numpy_helper.from_array(values, "lm")]
    inp = helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 192, 192])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", dim])
    _save(nodes, "lmk", [inp], [out], inits, path)


PACK_FILES = {
    "antelopev2": ("scrfd_10g_bnkps", "glintr100", "2d106det", "1k3d68", "genderage"),
    "buffalo_l": ("det_10g", "w600k_r50", "2d106det", "1k3d68", "genderage"),
}


def build_fake_pack(root, name="antelopev2", with_68=True) -> str:
    """Write `<root>/models/<name>/*.onnx`; returns `root`."""
    folder = os.path.join(root, "models", name)
    os.makedirs(folder, exist_ok=True)
    det, rec, lmk106, lmk68, attr = PACK_FILES[name]
    scrfd_like(os.path.join(folder, f"{det}.onnx"))
    pooled_linear(os.path.join(folder, f"{rec}.onnx"), 112, 512, 1)
    constant_landmarks(os.path.join(folder, f"{lmk106}.onnx"), 212)
    if with_68:
        constant_landmarks(os.path.join(folder, f"{lmk68}.onnx"), 3309)
    pooled_linear(os.path.join(folder, f"{attr}.onnx"), 96, 3, 3)
    return str(root)


def face_image(size=640, cells=((10, 7),), cell=32) -> np.ndarray:
    """Grey RGB image with one white `cell`-sized square per (col, row) in `cells`: one synthetic face each."""
    img = np.full((size, size, 3), 128, np.uint8)
    for col, row in cells:
        img[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = 255
    return img
