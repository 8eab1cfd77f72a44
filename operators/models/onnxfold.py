"""Exact rewrites of PP-OCRv4's ONNX graphs that ONNX Runtime's optimiser does not make on its own.

PP-OCRv4's backbone (PP-LCNetV3) follows most convolutions with a learnable affine block, a scalar `Mul` then a
scalar `Add` (exported with the constant as the *first* operand and as `Constant` nodes), and spells hard-swish as
`Add(x, 3) -> Clip(0, 6) -> Mul(x, .) -> Div(6)`. ONNX Runtime fuses neither, so each costs a pass over the feature
map plus NCHWc layout reorders around it (~30 % of the detector's time in an ORT profile on 288x480 input). The
rewrites, each the same function up to float rounding:

1. `Conv -> Mul(s) -> Add(b)` (either or both, in that order, each the conv's only consumer):
   `Conv(W * s, B * s + b)`.
2. A scalar `Mul(s)` (optionally followed by `Add(b)`) whose only consumers are convolutions: `s` goes into their
   weights (`W * s`; exact with zero padding too, since s * 0 = 0) and `b` into their biases (`B + b * sum(W)`), the
   latter only for convolutions without padding, where no output sees a padded input. Before a padded convolution
   the `Add` stays, as `x + b / s` (a padded border sees b in the original and would see 0 in a folded bias).
3. The hard-swish chain becomes one `HardSwish` node (ONNX opset 14), which ONNX Runtime fuses into the preceding
   convolution.

The graph is first converted to opset 14 (`onnx.version_converter`) and its `Constant` nodes become initializers.
Measured on one core (`bench/operators_cpu.py --fold`, bench/BENCHMARKS.md): detector at 288x480 -20 %, recogniser
on 2 crops at 48x320 -23 %; outputs within ~1e-6 of the original graph, the same readings on the sample set.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def _scalar(init: dict, name: str) -> float | None:
    from onnx import numpy_helper

    if name not in init:
        return None
    v = numpy_helper.to_array(init[name])
    return float(v.reshape(-1)[0]) if v.size == 1 and v.dtype == np.float32 else None


def _scalar_operand(init: dict, node) -> tuple[float, str] | None:
    """(constant, other input) of a binary node with one float32 scalar initializer operand."""
    if len(node.input) != 2:
        return None
    a, b = node.input
    for const, other in ((b, a), (a, b)):
        v = _scalar(init, const)
        if v is not None and other not in init:
            return v, other
    return None


def _consumers(nodes: Iterable) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _unpadded(conv) -> bool:
    for a in conv.attribute:
        if a.name == "pads" and any(a.ints):
            return False
        if a.name == "auto_pad" and a.s not in (b"", b"NOTSET", b"VALID"):
            return False
    return True


def fold_affine_graph(model_bytes: bytes) -> tuple[bytes, dict[str, int]]:
    """The rewritten model (serialised) and how many of each rewrite were made (see the module docstring)."""
    import onnx
    from onnx import helper, numpy_helper, version_converter

    m = onnx.load_from_string(model_bytes)
    if any(o.domain in ("", "ai.onnx") and o.version < 14 for o in m.opset_import):
        m = version_converter.convert_version(m, 14)
    g = m.graph
    nodes = []
    for n in g.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            g.initializer.append(t)
        else:
            nodes.append(n)
    init = {i.name: i for i in g.initializer}
    outputs = {o.name for o in g.output}
    stats = {"conv_affine": 0, "affine_into_conv": 0, "hardswish": 0}

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(init[name]).astype(np.float32)

    def set_conv(conv, x: str, w: np.ndarray, b: np.ndarray) -> None:
        names = (f"{conv.output[0]}/folded_W", f"{conv.output[0]}/folded_B")
        for name, value in zip(names, (w, b)):
            t = numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name)
            g.initializer.append(t)
            init[name] = t
        del conv.input[:]
        conv.input.extend([x, *names])

    def weights(conv) -> tuple[np.ndarray, np.ndarray]:
        w = array(conv.input[1])
        b = array(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0], np.float32)
        return w, b

    # 1. Conv -> Mul(s) -> Add(b)
    cons, drop = _consumers(nodes), set()
    for n in nodes:
        if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in init:
            continue
        chain, cur = [], n.output[0]
        while len(chain) < 2 and cur not in outputs:
            nxt = cons.get(cur, [])
            if len(nxt) != 1 or nxt[0].op_type not in ("Mul", "Add") or id(nxt[0]) in drop:
                break
            op = _scalar_operand(init, nxt[0])
            if op is None or op[1] != cur or (chain and chain[-1][0].op_type == "Add" and nxt[0].op_type == "Mul"):
                break
            chain.append((nxt[0], op[0]))
            cur = nxt[0].output[0]
        if not chain:
            continue
        w, b = weights(n)
        for op, v in chain:
            if op.op_type == "Mul":
                w, b = w * v, b * v
            else:
                b = b + v
        set_conv(n, n.input[0], w, b)
        n.output[0] = chain[-1][0].output[0]
        drop.update(id(op) for op, _ in chain)
        stats["conv_affine"] += 1
    nodes = [n for n in nodes if id(n) not in drop]

    # 2. Mul(s) [-> Add(b)] feeding convolutions only
    cons, drop = _consumers(nodes), set()
    for n in nodes:
        op = _scalar_operand(init, n) if n.op_type == "Mul" else None
        if op is None or n.output[0] in outputs:
            continue
        s, x = op
        add, b = None, 0.0
        nxt = cons.get(n.output[0], [])
        if len(nxt) == 1 and nxt[0].op_type == "Add" and nxt[0].output[0] not in outputs:
            op2 = _scalar_operand(init, nxt[0])
            if op2 is not None and op2[1] == n.output[0]:
                add, b = nxt[0], op2[0]
        last = add.output[0] if add is not None else n.output[0]
        convs = cons.get(last, [])
        if not convs or any(c.op_type != "Conv" or c.input[0] != last or len(c.input) < 2 or c.input[1] not in init
                            for c in convs):
            continue
        if add is not None and not all(_unpadded(c) for c in convs):
            if s == 0.0:
                continue
            # s * x + b = s * (x + b / s): the Add stays (as x + b / s), the scale moves into the weights.
            shifted = f"{add.output[0]}/shift"
            t = numpy_helper.from_array(np.asarray(b / s, np.float32), shifted)
            g.initializer.append(t)
            init[shifted] = t
            del add.input[:]
            add.input.extend([x, shifted])
            for c in convs:
                w, cb = weights(c)
                set_conv(c, add.output[0], w * s, cb)
            drop.add(id(n))
            stats["affine_into_conv"] += 1
            continue
        for c in convs:
            w, cb = weights(c)
            set_conv(c, x, w * s, cb + b * w.sum(axis=tuple(range(1, w.ndim))))
        drop.add(id(n))
        if add is not None:
            drop.add(id(add))
        stats["affine_into_conv"] += 1
    nodes = [n for n in nodes if id(n) not in drop]

    # 3. Add(x, 3) -> Clip(0, 6) -> Mul(x, .) -> Div(6)  ==>  HardSwish(x)
    cons, drop, replace = _consumers(nodes), set(), {}
    for n in nodes:
        op = _scalar_operand(init, n) if n.op_type == "Add" else None
        if op is None or op[0] != 3.0:
            continue
        x = op[1]
        clip = cons.get(n.output[0], [])
        if len(clip) != 1 or clip[0].op_type != "Clip" or len(clip[0].input) < 3:
            continue
        clip = clip[0]
        if _scalar(init, clip.input[1]) != 0.0 or _scalar(init, clip.input[2]) != 6.0:
            continue
        mul = cons.get(clip.output[0], [])
        if len(mul) != 1 or mul[0].op_type != "Mul" or sorted(mul[0].input) != sorted([x, clip.output[0]]):
            continue
        mul = mul[0]
        div = cons.get(mul.output[0], [])
        if len(div) != 1 or div[0].op_type != "Div" or _scalar(init, div[0].input[1]) != 6.0:
            continue
        div = div[0]
        if {n.output[0], clip.output[0], mul.output[0]} & outputs:
            continue
        replace[id(div)] = helper.make_node("HardSwish", [x], [div.output[0]], name=f"{div.output[0]}/hardswish")
        drop.update((id(n), id(clip), id(mul)))
        stats["hardswish"] += 1
    nodes = [replace.get(id(n), n) for n in nodes if id(n) not in drop]

    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input} | outputs
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    onnx.checker.check_model(m)
    return m.SerializeToString(), stats
