#!/usr/bin/python3
"""onnx_import.py: converts an ONNX model into an edgetune backbone file (a layer list).

Runs on the developer's machine (Debian: python3-onnx, python3-numpy), never on the device:
the device loads only the .etb file (storage/FORMAT.md, "Backbone files": the checkpoint
envelope with CRC-32 around a cereal portable-binary payload, written here byte for byte).

    onnx_import.py model.onnx backbone.etb [--output NODE] [--input-shape C,H,W]
                   [--mean M[,M..]] [--std S[,S..]] [--head-output NODE --head head.etk]

--output cuts the graph at a feature node (a node name, or a value name; default: the graph's
output): the features are that node's output, flattened. Only the nodes it depends on are
converted. BatchNormalization is folded into the convolution before it (or becomes a per-channel
multiply and add). Shape arithmetic (Shape, Gather, Concat, ... on constants) is evaluated here.

--head-output cuts a shipped classifier: the single Linear layer (Gemm, or MatMul + Add) from the
feature node to NODE is written to --head as a linear head checkpoint (tensors net.0.weight
[F x C], net.0.bias [1 x C]), the encoding Personalizer checkpoints and `edgetune export` use,
keyed to the backbone's digest.

Every unsupported operator or attribute is listed in one error (op type and node name); on any
error nothing is written. Exit status 0 on success, 1 on error, 2 on bad usage.
"""
import argparse
import os
import re
import struct
import sys
import tempfile
import zlib

import numpy as np

try:
    import onnx
    from onnx import helper, numpy_helper
except ImportError:  # pragma: no cover - reported, not raised
    onnx = None


class ConvertError(Exception):
    pass


# ---- the checkpoint encoding (FORMAT.md) ------------------------------------------------------


def _u64(v):
    return struct.pack("<Q", v)


def _str(s):
    b = s.encode("utf-8")
    return _u64(len(b)) + b


def _matrix(m):
    m = np.ascontiguousarray(m, dtype="<f4")
    assert m.ndim == 2
    return _u64(m.shape[0]) + _u64(m.shape[1]) + m.tobytes()


def encode_checkpoint(kind, attrs, tensors):
    """Envelope + payload as storage/checkpoint.cpp writes them; no optimizer state."""
    for name, m in tensors:
        if not np.all(np.isfinite(m)):
            raise ConvertError(f"tensor '{name}' holds NaN or Inf")
    p = b"\x01" + _str(kind) + _u64(len(attrs))
    for k, v in attrs:
        p += _str(k) + _str(v)
    p += _u64(len(tensors))
    for name, m in tensors:
        p += _str(name) + _matrix(m)
    p += _str("") + struct.pack("<q", 0) + _u64(0) + _u64(0)  # optimizer kind, step, lrs, slots
    p += struct.pack("<q", 0) + _u64(0) * 4 + _str("")  # step, rng, metrics
    return b"ETCK" + struct.pack("<I", 1) + _u64(len(p)) + struct.pack("<I", zlib.crc32(p)) + p


def fnv1a64_hex(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def real(v):
    return "%.9g" % float(np.float32(v))


def ints(v):
    return ",".join(str(int(x)) for x in v)


# ---- what is supported ----------------------------------------------------------------------

UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Erf": "erf",
         "HardSwish": "hard_swish", "LeakyRelu": "leaky_relu", "HardSigmoid": "hard_sigmoid",
         "Clip": "clip", "Gelu": "gelu"}
BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div"}
ALIAS = {"Identity", "Dropout"}
FOLDABLE = {"Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Reshape",
            "Add", "Sub", "Mul", "Div", "Identity", "Slice", "Sqrt", "Neg", "ConstantOfShape",
            "Equal", "Where", "Expand"}
RUNTIME = set(UNARY) | set(BINARY) | ALIAS | {
    "Conv", "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean",
    "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Gemm", "MatMul", "Concat", "Gather", "Cast",
    "Pad"}


def attributes(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def describe(node):
    return f"{node.op_type} node '{node.name or node.output[0]}'"


def attribute_problems(node):
    """Attributes the layers cannot express (checked before converting anything)."""
    a, op, out = attributes(node), node.op_type, []

    def need(cond, what):
        if not cond:
            out.append(f"{describe(node)}: {what}")

    if op in ("Conv", "MaxPool", "AveragePool"):
        pad = a.get("auto_pad", b"NOTSET")
        pad = pad.decode() if isinstance(pad, bytes) else pad
        need(pad in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"), f"auto_pad {pad}")
        if "kernel_shape" in a:
            need(len(a["kernel_shape"]) == 2, f"{len(a['kernel_shape'])}-D window (only 2-D)")
    if op in ("MaxPool", "AveragePool"):
        need(a.get("ceil_mode", 0) == 0, "ceil_mode 1")
        need(all(d == 1 for d in a.get("dilations", [1, 1])), "dilations other than 1")
        need(a.get("storage_order", 0) == 0, "storage_order 1")
        need(len(node.output) == 1 or not node.output[1], "the Indices output")
    if op == "BatchNormalization":
        need(a.get("training_mode", 0) == 0, "training_mode 1")
        need(len([o for o in node.output if o]) == 1, "running-statistics outputs")
    if op == "Gemm":
        need(a.get("transA", 0) == 0, "transA 1")
    if op == "Flatten":
        need(a.get("axis", 1) == 1, f"axis {a.get('axis')} (only 1: keep the batch axis)")
    if op == "Reshape":
        need(a.get("allowzero", 0) == 0, "allowzero 1")
    if op == "Cast":
        need(a.get("to") == onnx.TensorProto.FLOAT, "a cast to a type other than float")
    if op == "LeakyRelu" or op == "HardSigmoid" or op == "Clip" or op in BINARY:
        pass
    if op == "Gelu":
        need(a.get("approximate", b"none") in (b"none", "none"), "approximate tanh")
    if op == "Pad":
        mode = a.get("mode", b"constant")
        need(mode in (b"constant", "constant"), f"mode {mode.decode() if isinstance(mode, bytes) else mode}")
    if op == "ReduceMean":
        need(a.get("noop_with_empty_axes", 0) == 0, "noop_with_empty_axes 1")
    return out


# ---- the converter --------------------------------------------------------------------------


class Layer:
    def __init__(self, op, inputs, out, fields=None, tensors=None):
        self.op, self.inputs, self.out = op, list(inputs), out
        self.fields = fields or []  # [(key, text)]
        self.tensors = tensors or {}  # field -> np.ndarray (2-D when written)

    def line(self, names):
        parts = [self.op]
        if self.op != "constant":
            parts.append("in=" + ",".join(self.inputs))
        parts.append("out=" + self.out)
        for key in ("weight", "bias"):
            if key in self.tensors:
                parts.append(f"{key}={names[(id(self), key)]}")
        parts += [f"{k}={v}" for k, v in self.fields]
        return " ".join(parts)


class Converter:
    def __init__(self, model, args):
        self.model, self.args = model, args
        self.graph = model.graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        self.values = {}  # onnx name -> (edgetune name, per-sample shape)
        self.pending_pads = {}  # Pad output -> (its input, [t, l, b, r]) until a reader absorbs it
        self.layers = []
        self.producer = {}  # edgetune value name -> layer
        self.used = set()
        self.consumers = {}
        for n in self.graph.node:
            for i in n.input:
                self.consumers[i] = self.consumers.get(i, 0) + 1
        self.opset = max([o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
                         or [13])

    # -- names, shapes --
    def new_name(self, onnx_name):
        base = re.sub(r"[^A-Za-z0-9_.:/\-]", "_", onnx_name) or "v"
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def define(self, onnx_name, shape, layer):
        name = layer.out
        self.values[onnx_name] = (name, tuple(int(d) for d in shape))
        self.producer[name] = layer
        self.layers.append(layer)

    def emit(self, node, op, inputs, shape, fields=None, tensors=None, out=None):
        out = out or node.output[0]
        layer = Layer(op, inputs, self.new_name(out), fields, tensors)
        self.define(out, shape, layer)
        return layer

    def value(self, node, name):
        if name in self.pending_pads:
            raise ConvertError(f"cannot convert:\n  {describe(node)} reads the output of a Pad "
                               "(only Conv and AveragePool absorb one)")
        if name not in self.values:
            raise ConvertError(f"{describe(node)} reads '{name}', which is neither computed nor "
                               "a constant")
        return self.values[name]

    def const(self, node, name, what):
        if name not in self.consts:
            raise ConvertError(f"{describe(node)}: {what} '{name}' must be a constant")
        return self.consts[name]

    def constant_layer(self, node, array, per_sample_rank):
        """A constant operand as a value: leading batch axes of size 1 dropped."""
        c = np.asarray(array, dtype=np.float32)
        while c.ndim > per_sample_rank:
            if c.shape[0] != 1:
                raise ConvertError(f"{describe(node)}: constant of shape {c.shape} varies along "
                                   "the batch axis")
            c = c[0]
        shape = c.shape or (1,)
        layer = Layer("constant", [], self.new_name(node.output[0] + ".const"),
                      [("shape", ints(shape))], {"weight": c.reshape(1, -1)})
        self.layers.append(layer)
        return layer.out, shape

    # -- the graph --
    def input_value(self):
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ConvertError(f"the model has {len(inputs)} inputs; edgetune backbones take one")
        x = inputs[0]
        t = x.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in t.shape.dim]
        if len(dims) < 2:
            raise ConvertError(f"input '{x.name}' has rank {len(dims)}; it needs a batch axis "
                               "and at least one more")
        if not (isinstance(dims[0], str) or dims[0] == 1):
            raise ConvertError(f"input '{x.name}' has a fixed batch size {dims[0]}; export it "
                               "with a dynamic or unit batch axis")
        per = dims[1:]
        if self.args.input_shape:
            fixed = [int(v) for v in self.args.input_shape.split(",")]
            if len(fixed) != len(per) or any(not isinstance(d, str) and d != f
                                             for d, f in zip(per, fixed)):
                raise ConvertError(f"--input-shape {self.args.input_shape} does not fit input "
                                   f"'{x.name}' of per-sample shape {per}")
            per = fixed
        for axis, d in enumerate(per, start=1):
            if isinstance(d, str) or d <= 0:
                raise ConvertError(f"input '{x.name}' has a dynamic dimension '{d}' (axis "
                                   f"{axis}); fix it with --input-shape")
        if t.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            if len(per) != 1:
                raise ConvertError(f"token input '{x.name}' must be [batch x L], got {per}")
            kind = "tokens"
        elif t.elem_type == onnx.TensorProto.FLOAT:
            kind = "image" if len(per) == 3 else "floats"
        else:
            raise ConvertError(f"input '{x.name}' has element type "
                               f"{onnx.TensorProto.DataType.Name(t.elem_type)}")
        return x.name, kind, per

    def needed_nodes(self, cut):
        producers = {o: n for n in self.graph.node for o in n.output}
        need, stack = set(), [cut]
        while stack:
            v = stack.pop()
            n = producers.get(v)
            if n is None or id(n) in need:
                continue
            need.add(id(n))
            stack += [i for i in n.input if i]
        return [n for n in self.graph.node if id(n) in need]

    def resolve_node(self, spec):
        for n in self.graph.node:
            if n.name == spec:
                return n.output[0]
        names = {o for n in self.graph.node for o in n.output} | {o.name for o in
                                                                   self.graph.output}
        if spec in names:
            return spec
        raise ConvertError(f"no node or value named '{spec}' in the model")

    def run(self):
        cut = self.resolve_node(self.args.output) if self.args.output else self.graph.output[0].name
        nodes = self.needed_nodes(cut)
        problems = []
        for n in nodes:
            if n.domain not in ("", "ai.onnx"):
                problems.append(f"{describe(n)}: operator domain '{n.domain}'")
            elif n.op_type not in RUNTIME and n.op_type not in FOLDABLE:
                problems.append(f"{describe(n)}: unsupported operator")
            else:
                problems += attribute_problems(n)
        if problems:
            raise ConvertError("cannot convert:\n  " + "\n  ".join(problems))
        name, kind, per = self.input_value()
        self.kind, self.input_shape = kind, per
        in_layer = Layer("input", [], self.new_name(name))
        self.values[name] = (in_layer.out, tuple(per))
        self.input_name = in_layer.out
        for n in nodes:
            self.convert(n)
        if cut in self.consts:
            raise ConvertError(f"the feature node '{cut}' is a constant")
        self.cut = cut
        return self.write_backbone()

    # -- one node --
    def convert(self, node):
        ins = [i for i in node.input]
        live = [i for i in ins if i and i not in self.consts]
        if node.op_type in FOLDABLE and not live and node.op_type != "Shape":
            return self.fold(node)
        if node.op_type == "Shape":  # of a computed value: its batch axis reads as 1
            if ins[0] in self.consts:
                shape = self.consts[ins[0]].shape
            else:
                shape = (1,) + self.value(node, ins[0])[1]
            self.consts[node.output[0]] = np.array(shape, dtype=np.int64)
            return
        handler = getattr(self, "op_" + node.op_type, None)
        if handler is None:
            raise ConvertError(f"cannot convert:\n  {describe(node)}: unsupported on computed "
                               "inputs")
        handler(node, attributes(node))

    def fold(self, node):
        a = attributes(node)
        x = [self.consts.get(i) if i else None for i in node.input]
        op = node.op_type
        if op == "Constant":
            if "value" in a:
                r = numpy_helper.to_array(a["value"])
            else:
                key = next(iter(a))
                r = np.array(a[key], dtype=np.float32 if "float" in key else np.int64)
        elif op == "Gather":
            r = np.take(x[0], x[1], axis=a.get("axis", 0))
        elif op == "Unsqueeze":
            axes = a.get("axes", x[1] if len(x) > 1 else None)
            r = x[0]
            for ax in sorted(int(v) % (r.ndim + len(axes)) for v in axes):
                r = np.expand_dims(r, ax)
        elif op == "Squeeze":
            axes = a.get("axes", x[1] if len(x) > 1 else None)
            r = np.squeeze(x[0], axis=None if axes is None else tuple(int(v) for v in axes))
        elif op == "Concat":
            r = np.concatenate(x, axis=a["axis"])
        elif op == "Cast":
            r = x[0].astype(helper.tensor_dtype_to_np_dtype(a["to"]))
        elif op == "Reshape":
            r = x[0].reshape([d if d != 0 else x[0].shape[i] for i, d in enumerate(x[1])])
        elif op in BINARY:
            r = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
                 "Div": np.divide}[op](x[0], x[1])
            if np.issubdtype(x[0].dtype, np.integer) and op == "Div":
                r = (x[0] // x[1]).astype(x[0].dtype)
        elif op in ("Identity",):
            r = x[0]
        elif op == "Sqrt":
            r = np.sqrt(x[0])
        elif op == "Neg":
            r = -x[0]
        elif op == "Slice":
            starts, ends = x[1], x[2]
            axes = x[3] if len(x) > 3 and x[3] is not None else range(len(starts))
            steps = x[4] if len(x) > 4 and x[4] is not None else [1] * len(starts)
            sl = [slice(None)] * x[0].ndim
            for s, e, ax, st in zip(starts, ends, axes, steps):
                sl[int(ax)] = slice(int(s), int(e), int(st))
            r = x[0][tuple(sl)]
        elif op == "Equal":
            r = np.equal(x[0], x[1])
        elif op == "Where":
            r = np.where(x[0], x[1], x[2])
        elif op == "Expand":  # NOTE: Shape reads the batch axis as 1, so this stays per sample
            r = x[0] * np.ones([int(d) for d in x[1]], dtype=x[0].dtype)
        elif op == "ConstantOfShape":
            v = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
            r = np.full(tuple(int(d) for d in x[0]), v.flat[0], dtype=v.dtype)
        else:
            raise ConvertError(f"{describe(node)}: cannot evaluate on constants")
        self.consts[node.output[0]] = np.asarray(r)

    # -- windows --
    def window(self, node, a, shape, kernel):
        if len(shape) != 3:
            raise ConvertError(f"{describe(node)} needs a [C x H x W] input, got {list(shape)}")
        strides = list(a.get("strides", [1, 1]))
        dil = list(a.get("dilations", [1, 1]))
        pads = list(a.get("pads", [0, 0, 0, 0]))
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto == "VALID":
            pads = [0, 0, 0, 0]
        elif auto.startswith("SAME"):
            for axis in range(2):
                size = shape[1 + axis]
                out = -(-size // strides[axis])
                total = max((out - 1) * strides[axis] + (kernel[axis] - 1) * dil[axis] + 1 - size, 0)
                small, big = total // 2, total - total // 2
                pads[axis], pads[axis + 2] = (small, big) if auto == "SAME_UPPER" else (big, small)
        outs = []
        for axis in range(2):
            span = dil[axis] * (kernel[axis] - 1) + 1
            size = shape[1 + axis] + pads[axis] + pads[axis + 2]
            if size < span:
                raise ConvertError(f"{describe(node)}: window {kernel} larger than its input "
                                   f"{list(shape)}")
            outs.append((size - span) // strides[axis] + 1)
        return strides, dil, pads, outs

    def op_Conv(self, node, a):
        src, a = self.absorb_pad(node, a, node.input[0])
        x, shape = self.value(node, src)
        w = self.const(node, node.input[1], "weight").astype(np.float64)
        if w.ndim != 4:
            raise ConvertError(f"{describe(node)}: weight of rank {w.ndim} (only 2-D conv)")
        b = (self.const(node, node.input[2], "bias").astype(np.float64)
             if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0]))
        g = a.get("group", 1)
        kernel = list(a.get("kernel_shape", w.shape[2:]))
        strides, dil, pads, outs = self.window(node, a, shape, kernel)
        if shape[0] != w.shape[1] * g:
            raise ConvertError(f"{describe(node)}: weight {list(w.shape)} with {g} groups does "
                               f"not fit input {list(shape)}")
        layer = self.emit(node, "conv", [x], (w.shape[0],) + tuple(outs),
                          [("kernel", ints(kernel)), ("stride", ints(strides)),
                           ("pad", ints(pads)), ("dilation", ints(dil)), ("groups", str(g))],
                          {"weight": w, "bias": b})
        layer.conv_groups = g
        layer.consumers = self.consumers.get(node.output[0], 0)

    def op_BatchNormalization(self, node, a):
        x, shape = self.value(node, node.input[0])
        scale, bias, mean, var = (self.const(node, n, "statistic").astype(np.float64)
                                  for n in node.input[1:5])
        s = scale / np.sqrt(var + a.get("epsilon", 1e-5))
        t = bias - mean * s
        prev = self.producer.get(x)
        if prev is not None and prev.op == "conv" and prev.consumers == 1:
            # Fold: conv(x) * s + t == conv with weight * s, bias * s + t (per output channel).
            prev.tensors["weight"] = prev.tensors["weight"] * s[:, None, None, None]
            prev.tensors["bias"] = prev.tensors["bias"] * s + t
            self.values[node.output[0]] = self.values.pop(node.input[0])
            return
        rank = len(shape)
        per_channel = (-1,) + (1,) * (rank - 1)
        sc, _ = self.constant_layer(node, s.reshape(per_channel), rank)
        mid = self.emit(node, "mul", [x, sc], shape, out=node.output[0] + ".scaled")
        sh, _ = self.constant_layer(node, t.reshape(per_channel), rank)
        self.emit(node, "add", [mid.out, sh], shape)

    def op_MaxPool(self, node, a, op="max_pool"):
        src = node.input[0]
        if op == "avg_pool":
            src, a = self.absorb_pad(node, a, src)
        x, shape = self.value(node, src)
        kernel = list(a["kernel_shape"])
        strides, _, pads, outs = self.window(node, a, shape, kernel)
        if any(pads[i] >= kernel[i % 2] for i in range(4)):
            raise ConvertError(f"{describe(node)}: padding {pads} not below the kernel {kernel}")
        fields = [("kernel", ints(kernel)), ("stride", ints(strides)), ("pad", ints(pads))]
        if op == "avg_pool":
            fields.append(("count_pad", str(a.get("count_include_pad", 0))))
        self.emit(node, op, [x], (shape[0],) + tuple(outs), fields)

    def op_AveragePool(self, node, a):
        self.op_MaxPool(node, a, "avg_pool")

    def op_GlobalAveragePool(self, node, a):
        x, shape = self.value(node, node.input[0])
        if len(shape) != 3:
            raise ConvertError(f"{describe(node)} needs a [C x H x W] input, got {list(shape)}")
        self.emit(node, "global_avg_pool", [x], (shape[0], 1, 1))

    def op_ReduceMean(self, node, a):
        x, shape = self.value(node, node.input[0])
        axes = a.get("axes")
        if axes is None and len(node.input) > 1:
            axes = self.const(node, node.input[1], "axes")
        axes = sorted(int(v) % (len(shape) + 1) for v in (axes if axes is not None else []))
        if len(shape) != 3 or axes != [2, 3]:
            raise ConvertError(f"cannot convert:\n  {describe(node)}: axes {axes} (only the "
                               "spatial mean over axes 2, 3 of an image)")
        if a.get("keepdims", 1):
            self.emit(node, "global_avg_pool", [x], (shape[0], 1, 1))
        else:
            gap = self.emit(node, "global_avg_pool", [x], (shape[0], 1, 1),
                            out=node.output[0] + ".pooled")
            self.emit(node, "reshape", [gap.out], (shape[0],), [("shape", str(shape[0]))])

    # -- shapes --
    def reshape_to(self, node, new_shape):
        x, shape = self.value(node, node.input[0])
        new_shape = tuple(int(d) for d in new_shape)
        if int(np.prod(new_shape)) != int(np.prod(shape)) or not new_shape or len(new_shape) > 4:
            raise ConvertError(f"{describe(node)}: cannot reshape {list(shape)} to "
                               f"{list(new_shape)} per sample")
        if new_shape == shape:
            self.values[node.output[0]] = (x, shape)
            return
        self.emit(node, "reshape", [x], new_shape, [("shape", ints(new_shape))])

    def op_Flatten(self, node, a):
        _, shape = self.value(node, node.input[0])
        self.reshape_to(node, (int(np.prod(shape)),))

    def op_Reshape(self, node, a):
        _, shape = self.value(node, node.input[0])
        target = [int(v) for v in self.const(node, node.input[1], "shape")]
        if not target or target[0] not in (0, 1, -1):
            raise ConvertError(f"{describe(node)}: target shape {target} does not keep the "
                               "batch axis first")
        rest = [shape[i] if d == 0 else d for i, d in enumerate(target[1:])]
        if target[0] == -1 and -1 in rest:
            raise ConvertError(f"{describe(node)}: target shape {target} infers two axes")
        if -1 in rest:
            known = int(np.prod([d for d in rest if d != -1]))
            rest[rest.index(-1)] = int(np.prod(shape)) // max(known, 1)
        self.reshape_to(node, rest)

    def axes_of(self, node, a):
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.const(node, node.input[1], "axes")
        return axes

    def op_Squeeze(self, node, a):
        _, shape = self.value(node, node.input[0])
        axes = self.axes_of(node, a)
        if axes is None:
            self.reshape_to(node, [d for d in shape if d != 1] or [1])
            return
        axes = {int(v) % (len(shape) + 1) for v in axes}
        if 0 in axes:
            raise ConvertError(f"{describe(node)}: squeezes the batch axis")
        self.reshape_to(node, [d for i, d in enumerate(shape, start=1) if i not in axes])

    def op_Unsqueeze(self, node, a):
        _, shape = self.value(node, node.input[0])
        axes = sorted(int(v) % (len(shape) + 1 + len(self.axes_of(node, a)))
                      for v in self.axes_of(node, a))
        full = [None] + list(shape)
        for ax in axes:
            if ax == 0:
                raise ConvertError(f"{describe(node)}: unsqueezes before the batch axis")
            full.insert(ax, 1)
        self.reshape_to(node, full[1:])

    def op_Identity(self, node, a):
        self.values[node.output[0]] = self.value(node, node.input[0])

    op_Dropout = op_Identity

    def op_Pad(self, node, a):
        """Zero padding of H and W, absorbed by the Conv or AveragePool that reads it (PyTorch
        1.13 exports avg_pool2d(count_include_pad=True, padding=p) as Pad + AveragePool)."""
        pads = a.get("pads")
        if pads is None:
            pads = self.const(node, node.input[1], "pads")
        pads = [int(p) for p in pads]
        value = 0.0
        if len(node.input) > 2 and node.input[2]:
            value = float(self.const(node, node.input[2], "constant_value"))
        x, shape = self.value(node, node.input[0])
        if not any(pads):
            return self.op_Identity(node, a)
        if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or value != 0.0:
            raise ConvertError(f"cannot convert:\n  {describe(node)}: pads {pads} value "
                               f"{value} (only zero padding of H and W)")
        self.pending_pads[node.output[0]] = (node.input[0], [pads[2], pads[3], pads[6], pads[7]])

    def absorb_pad(self, node, a, name):
        """The padding of a pending Pad that `node` (Conv or AveragePool) reads, added to a."""
        if name not in self.pending_pads:
            return name, a
        src, extra = self.pending_pads[name]
        a = dict(a)
        own = list(a.get("pads", [0, 0, 0, 0]))
        if node.op_type == "AveragePool":
            if any(own) and not a.get("count_include_pad", 0):
                raise ConvertError(f"{describe(node)}: own padding without count_include_pad "
                                   "after a Pad")
            a["count_include_pad"] = 1
        a["pads"] = [o + e for o, e in zip(own, extra)]
        return src, a
    op_Cast = op_Identity  # only casts to float reach here (attribute_problems)

    # -- products --
    def dense(self, node, x, shape, w, b):
        if shape[-1] != w.shape[0]:
            raise ConvertError(f"{describe(node)}: weight {list(w.shape)} does not fit input "
                               f"{list(shape)}")
        layer = self.emit(node, "dense", [x], tuple(shape[:-1]) + (w.shape[1],), [],
                          {"weight": w, "bias": b})
        layer.matmul_only = node.op_type == "MatMul"
        layer.consumers = self.consumers.get(node.output[0], 0)

    def op_Gemm(self, node, a):
        x, shape = self.value(node, node.input[0])
        w = self.const(node, node.input[1], "B").astype(np.float64)
        if a.get("transB", 0):
            w = w.T
        w = w * a.get("alpha", 1.0)
        b = np.zeros(w.shape[1])
        if len(node.input) > 2 and node.input[2]:
            c = self.const(node, node.input[2], "C").astype(np.float64).reshape(-1)
            if c.size not in (1, w.shape[1]):
                raise ConvertError(f"{describe(node)}: bias C of {c.size} values for "
                                   f"{w.shape[1]} outputs")
            b = np.broadcast_to(c * a.get("beta", 1.0), (w.shape[1],)).copy()
        if len(shape) != 1:
            raise ConvertError(f"{describe(node)}: input {list(shape)} is not a vector")
        self.dense(node, x, shape, w, b)

    def op_MatMul(self, node, a):
        x, shape = self.value(node, node.input[0])
        w = self.const(node, node.input[1], "second operand")
        if w.ndim != 2:
            raise ConvertError(f"{describe(node)}: second operand of rank {w.ndim}")
        self.dense(node, x, shape, w.astype(np.float64), np.zeros(w.shape[1]))

    def binary(self, node, a):
        op = BINARY[node.op_type]
        i0, i1 = node.input[0], node.input[1]
        if i0 in self.consts:
            y, ys = self.value(node, i1)
            c, cs = self.constant_layer(node, self.consts[i0], len(ys))
            operands, shapes = [c, y], [cs, ys]
        elif i1 in self.consts:
            x, xs = self.value(node, i0)
            prev = self.producer.get(x)
            bias = np.asarray(self.consts[i1], dtype=np.float64)
            if (op == "add" and prev is not None and getattr(prev, "matmul_only", False)
                    and prev.consumers == 1 and bias.size == xs[-1]
                    and bias.reshape(-1).shape == (xs[-1],) and bias.shape[-1] == xs[-1]):
                prev.tensors["bias"] = prev.tensors["bias"] + bias.reshape(-1)
                prev.matmul_only = False
                self.values[node.output[0]] = self.values.pop(i0)
                return
            c, cs = self.constant_layer(node, self.consts[i1], len(xs))
            operands, shapes = [x, c], [xs, cs]
        else:
            (x, xs), (y, ys) = self.value(node, i0), self.value(node, i1)
            if len(xs) != len(ys):
                raise ConvertError(f"{describe(node)}: computed operands of ranks {len(xs) + 1} "
                                   f"and {len(ys) + 1}")
            operands, shapes = [x, y], [xs, ys]
        try:
            out = np.broadcast_shapes(*shapes)
        except ValueError:
            raise ConvertError(f"{describe(node)}: cannot broadcast {shapes[0]} with {shapes[1]}")
        self.emit(node, op, operands, out)

    op_Add = op_Sub = op_Mul = op_Div = binary

    def unary(self, node, a):
        x, shape = self.value(node, node.input[0])
        op = UNARY[node.op_type]
        fields = []
        if op == "leaky_relu":
            fields = [("alpha", real(a.get("alpha", 0.01)))]
        elif op == "hard_sigmoid":
            fields = [("alpha", real(a.get("alpha", 0.2))), ("beta", real(a.get("beta", 0.5)))]
        elif op == "clip":
            lo, hi = a.get("min", -3.4028234e38), a.get("max", 3.4028234e38)
            if len(node.input) > 1 and node.input[1]:
                lo = float(self.const(node, node.input[1], "min"))
            if len(node.input) > 2 and node.input[2]:
                hi = float(self.const(node, node.input[2], "max"))
            fields = [("min", real(lo)), ("max", real(hi))]
        self.emit(node, op, [x], shape, fields)

    op_Relu = op_Sigmoid = op_Tanh = op_Erf = op_HardSwish = op_LeakyRelu = unary
    op_HardSigmoid = op_Clip = op_Gelu = unary

    def op_Concat(self, node, a):
        live = [i for i in node.input if i not in self.consts]
        rank = len(self.value(node, live[0])[1])
        names, shapes = [], []
        for i in node.input:
            if i in self.consts:
                n, s = self.constant_layer(node, self.consts[i], rank)
            else:
                n, s = self.value(node, i)
            names.append(n)
            shapes.append(s)
        axis = a["axis"] % (rank + 1)
        if axis == 0:
            raise ConvertError(f"{describe(node)}: concatenates along the batch axis")
        out = list(shapes[0])
        out[axis - 1] = sum(s[axis - 1] for s in shapes)
        self.emit(node, "concat", names, out, [("axis", str(axis - 1))])

    def op_Gather(self, node, a):
        table = self.const(node, node.input[0], "table")
        if (self.kind != "tokens" or node.input[1] not in self.values
                or self.values[node.input[1]][0] != self.input_name or a.get("axis", 0) != 0
                or table.ndim != 2):
            raise ConvertError(f"{describe(node)}: only an embedding lookup (a 2-D table "
                               "indexed by the token input) is supported")
        self.emit(node, "gather", [self.input_name], (self.input_shape[0], table.shape[1]), [],
                  {"weight": table})

    # -- output --
    def input_attr(self, tensors):
        per = self.input_shape
        text = f"kind={self.kind} shape={ints(per)} name={self.input_name}"
        if self.kind == "image":
            c = per[0]
            mean = self.channel_values(self.args.mean, c, 0.0, "--mean")
            std = self.channel_values(self.args.std, c, 1.0, "--std")
            if np.any(std == 0):
                raise ConvertError("--std has a zero")
            tensors += [("input.mean", mean.reshape(1, c)), ("input.std", std.reshape(1, c))]
            text += " mean=input.mean std=input.std"
        elif self.args.mean or self.args.std:
            raise ConvertError(f"--mean/--std apply to image inputs, this input is {self.kind}")
        return text

    @staticmethod
    def channel_values(text, c, default, flag):
        if not text:
            return np.full(c, default, dtype=np.float32)
        v = np.array([float(t) for t in text.split(",")], dtype=np.float32)
        if v.size == 1:
            v = np.full(c, v[0], dtype=np.float32)
        if v.size != c:
            raise ConvertError(f"{flag} has {v.size} values for {c} channels")
        return v

    def write_backbone(self):
        tensors = []
        attrs = [("graph", "1"), ("input", self.input_attr(tensors))]
        names = {}
        out_name, _ = self.values[self.cut]
        # Only the layers the feature value depends on (folds may leave others unused).
        live, need = [], {out_name}
        for layer in reversed(self.layers):
            if layer.out in need:
                live.append(layer)
                need |= set(layer.inputs)
        live.reverse()
        for layer in live:
            for key in ("weight", "bias"):
                if key not in layer.tensors:
                    continue
                t = layer.tensors[key]
                if layer.op == "conv" and key == "weight":
                    t = pack_conv_weight(t, layer.conv_groups)
                elif key == "bias":
                    t = t.reshape(1, -1)
                names[(id(layer), key)] = f"{layer.out}.{key}"
                tensors.append((f"{layer.out}.{key}", np.asarray(t, dtype=np.float32)))
        for i, layer in enumerate(live):
            attrs.append((f"layer.{i}", layer.line(names)))
        attrs += [("layers", str(len(live))), ("output", out_name)]
        producer = f"{self.model.producer_name} {self.model.producer_version}".strip()
        attrs += [("source", f"{producer} opset {self.opset}"), ("cut", self.cut)]
        if not live:
            raise ConvertError(f"the feature node '{self.cut}' is the input itself")
        self.layer_count = len(live)
        return encode_checkpoint("backbone", attrs, tensors)

    def head(self, head_out, digest):
        """The Linear layer from the feature node to head_out, as a linear head checkpoint."""
        producers = {o: n for n in self.graph.node for o in n.output}
        n = producers.get(head_out)
        bias = None
        if n is not None and n.op_type == "Add":
            b_name = next((i for i in n.input if i in self.consts), None)
            bias = self.consts.get(b_name)
            n = producers.get(next((i for i in n.input if i != b_name), ""))
        if n is None or n.op_type not in ("Gemm", "MatMul"):
            raise ConvertError(f"the head from '{self.cut}' to '{head_out}' must be one Linear "
                               "layer (Gemm, or MatMul + Add)")
        src = n.input[0]
        while src != self.cut and src in producers and producers[src].op_type in (
                "Flatten", "Identity", "Reshape", "Dropout"):
            src = producers[src].input[0]
        if src != self.cut:
            raise ConvertError(f"the head's Linear layer {describe(n)} does not read the "
                               f"feature node '{self.cut}'")
        a = attributes(n)
        w = self.const(n, n.input[1], "weight").astype(np.float64)
        if n.op_type == "Gemm":
            w = (w.T if a.get("transB", 0) else w) * a.get("alpha", 1.0)
            if len(n.input) > 2 and n.input[2]:
                bias = self.consts[n.input[2]] * a.get("beta", 1.0)
        features = int(np.prod(self.values[self.cut][1]))
        if w.ndim != 2 or w.shape[0] != features:
            raise ConvertError(f"the head's weight {list(w.shape)} does not take the "
                               f"{features} features")
        b = np.zeros(w.shape[1]) if bias is None else np.broadcast_to(
            np.asarray(bias, np.float64).reshape(-1), (w.shape[1],))
        classes = w.shape[1]
        attrs = [("head", f"linear outputs={classes} hidden=[] temperature=0.1 normalize=0"),
                 ("backbone_digest", digest), ("seen_classes", "1" * classes)]
        tensors = [("net.0.weight", w.astype(np.float32)),
                   ("net.0.bias", b.astype(np.float32).reshape(1, -1))]
        return encode_checkpoint("head", attrs, tensors)


def pack_conv_weight(w, groups):
    """[M x C/g x kh x kw] -> [M x K], column (c*kh + i)*kw + k (groups: consecutive rows)."""
    return w.reshape(w.shape[0], -1)


def load_model(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConvertError(f"cannot read '{path}': {e.strerror}")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise ConvertError(f"'{path}' is not a valid ONNX file ({type(e).__name__}: {e})")
    if not model.graph.node:
        raise ConvertError(f"'{path}' is not a valid ONNX file (no graph nodes)")
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvertError(f"'{path}' is not a valid ONNX model: {first}")
    return model


def write_atomic(files):
    """Writes every (path, bytes) or none: temporaries first, then renames."""
    temps = []
    try:
        for path, data in files:
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                       prefix=os.path.basename(path) + ".tmp")
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in temps:
            os.replace(tmp, path)
    except OSError as e:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise ConvertError(f"cannot write: {e}")


def main(argv):
    p = argparse.ArgumentParser(prog="edgetune import", description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("backbone")
    p.add_argument("--output", help="the feature node (node or value name)")
    p.add_argument("--input-shape", help="C,H,W (or the per-sample shape) for dynamic inputs")
    p.add_argument("--mean", help="per-channel mean of image inputs (one value or C)")
    p.add_argument("--std", help="per-channel std of image inputs (one value or C)")
    p.add_argument("--head-output", help="the shipped classifier's output node")
    p.add_argument("--head", help="where to write the shipped head (with --head-output)")
    args = p.parse_args(argv)
    if bool(args.head_output) != bool(args.head):
        p.error("--head-output and --head go together")
    if onnx is None:
        print("edgetune import: needs python3-onnx (apt-get install python3-onnx)",
              file=sys.stderr)
        return 1
    try:
        model = load_model(args.model)
        conv = Converter(model, args)
        backbone = conv.run()
        files = [(args.backbone, backbone)]
        if args.head_output:
            head_out = conv.resolve_node(args.head_output)
            files.append((args.head, conv.head(head_out, fnv1a64_hex(backbone))))
        write_atomic(files)
    except ConvertError as e:
        print(f"edgetune import: {e}", file=sys.stderr)
        return 1
    print(f"{args.backbone}: {conv.layer_count} layers, input {conv.kind} "
          f"{ints(conv.input_shape)}, features {int(np.prod(conv.values[conv.cut][1]))} "
          f"('{conv.cut}'), digest {fnv1a64_hex(backbone)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
