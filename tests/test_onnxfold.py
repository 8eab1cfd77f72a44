"""The exact PP-OCR graph rewrites (operators.models.onnxfold): the same function on a hand-built graph with every pattern
(including the padded-border case that must not be folded), and on the shipped PP-OCRv4 detector and recogniser."""

from __future__ import annotations

import collections
import os

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skimage.data
from onnx import TensorProto, helper, numpy_helper

from operators.models.onnxfold import fold_affine_graph


def _session(model: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _ops(model: bytes) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load_from_string(model).graph.node)


def _toy_graph() -> bytes:
    """x -> Conv3x3(pad 1) -> Mul(s) -> Add(b) -> hard-swish chain -> Mul -> Add -> Conv3x3(pad 1)
    -> Mul -> Add -> Conv1x1 -> y, written the way PP-OCRv4's export writes it (Constant nodes, constant first)."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def const(name, value):
        nodes.append(helper.make_node("Constant", [], [name],
                                      value=numpy_helper.from_array(np.asarray(value, np.float32), name)))
        return name

    def weight(name, shape):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name))
        return name

    def affine(x, tag, s, b):
        nodes.append(helper.make_node("Mul", [const(f"{tag}_s", s), x], [f"{tag}_m"]))
        nodes.append(helper.make_node("Add", [f"{tag}_m", const(f"{tag}_b", b)], [f"{tag}_a"]))
        return f"{tag}_a"

    nodes.append(helper.make_node("Conv", ["x", weight("w1", (4, 3, 3, 3)), weight("b1", (4,))], ["c1"],
                                  pads=[1, 1, 1, 1]))
    h = affine("c1", "ab1", 0.8, 0.3)
    nodes.append(helper.make_node("Add", [h, const("three", 3.0)], ["hs_a"]))
    nodes.append(helper.make_node("Clip", ["hs_a", const("zero", 0.0), const("six", 6.0)], ["hs_c"]))
    nodes.append(helper.make_node("Mul", [h, "hs_c"], ["hs_m"]))
    nodes.append(helper.make_node("Div", ["hs_m", const("six2", 6.0)], ["hs"]))
    h = affine("hs", "ab2", 1.7, -0.4)  # before a padded conv: the Add must stay
    nodes.append(helper.make_node("Conv", [h, weight("w2", (4, 1, 3, 3)), weight("b2", (4,))], ["c2"],
                                  pads=[1, 1, 1, 1], group=4))
    nodes.append(helper.make_node("Relu", ["c2"], ["r2"]))
    h = affine("r2", "ab3", 0.6, 0.25)  # before a 1x1 conv: folds whole
    nodes.append(helper.make_node("Conv", [h, weight("w3", (2, 4, 1, 1))], ["y"]))
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 11])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 9, 11])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)]).SerializeToString()


def test_every_rewrite_keeps_the_function():
    model = _toy_graph()
    folded, stats = fold_affine_graph(model)
    assert stats == {"conv_affine": 1, "affine_into_conv": 2, "hardswish": 1}
    ops = _ops(folded)
    # Left: the Add before the padded depthwise conv (its border would see b, not 0); everything else folded.
    assert ops == collections.Counter({"Conv": 3, "HardSwish": 1, "Add": 1, "Relu": 1}), ops
    x = np.random.default_rng(1).normal(0, 2, (1, 3, 9, 11)).astype(np.float32)
    a = _session(model).run(None, {"x": x})[0]
    b = _session(folded).run(None, {"x": x})[0]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    # The borders are where a wrong fold of the kept Add would show: they match as well as the inside.
    assert np.abs(b - a)[..., 0].max() < 1e-5 and np.abs(b - a)[..., -1].max() < 1e-5


def test_an_unexpected_graph_is_left_alone():
    """A graph without the patterns comes back with the same function and no rewrites counted."""
    w = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Sigmoid", ["c"], ["y"])],
                          "plain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)]).SerializeToString()
    folded, stats = fold_affine_graph(model)
    assert stats == {"conv_affine": 0, "affine_into_conv": 0, "hardswish": 0}
    assert _ops(folded) == _ops(model)


def _ppocr(name: str) -> bytes:
    import rapidocr_onnxruntime

    with open(os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models", name), "rb") as fh:
        return fh.read()


@pytest.mark.parametrize("name,shape", [("ch_PP-OCRv4_det_infer.onnx", (1, 3, 288, 480)),
                                        ("ch_PP-OCRv4_rec_infer.onnx", (3, 3, 48, 320))])
def test_shipped_ppocr_graphs(name, shape):
    model = _ppocr(name)
    folded, stats = fold_affine_graph(model)
    assert stats["conv_affine"] >= 20 and stats["hardswish"] >= 20, stats
    before, after = _ops(model), _ops(folded)
    assert after["Mul"] + after["Add"] <= (before["Mul"] + before["Add"]) * 0.6, (before, after)
    assert "Clip" not in after or after["Clip"] < before["Clip"]
    # A real picture, normalised as rapidocr does, resized to the model input.
    n, _, h, w = shape
    photo = cv2.resize(skimage.data.astronaut(), (w, h)).astype(np.float32) / 127.5 - 1.0
    x = np.ascontiguousarray(np.repeat(photo.transpose(2, 0, 1)[None], n, axis=0))
    a, b = _session(model), _session(folded)
    ya = a.run(None, {a.get_inputs()[0].name: x})[0]
    yb = b.run(None, {b.get_inputs()[0].name: x})[0]
    assert ya.shape == yb.shape
    np.testing.assert_allclose(yb, ya, atol=1e-4)
    # The recogniser's character table (model metadata) survives the rewrite.
    assert b.get_modelmeta().custom_metadata_map == a.get_modelmeta().custom_metadata_map
