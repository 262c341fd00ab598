"""Export to ONNX (``pip install "fastcnn[onnx]"``) and safetensors.

:func:`to_onnx` writes the model as it computes in eval mode: opset 17, a symbolic batch
dimension ``"batch"``, weights as initializers under their state-dict (= torch) names.
Padding is written out explicitly per side, so TensorFlow-style ``"same"`` (which puts the
odd cell at the bottom/right) needs no ``auto_pad``.  The graph is traced by running each
layer once on a zero input of the given shape, which also fixes every explicit padding.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import graph as G
from . import layers as L
from ._modelfile import atomic_write, save
from ._optional import require
from ._shapes import resolve_padding

__all__ = ["to_onnx", "quantize_int8", "to_safetensors", "OPSET"]

OPSET = 17
_IR_VERSION = 8  # the IR version of opset 17: readable by every runtime that runs opset 17


class _Builder:
    def __init__(self, onnx: Any) -> None:
        self.onnx = onnx
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.used: set[str] = set()

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def const(self, name: str, array: np.ndarray) -> str:
        name = self.fresh(name)
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], base: str, **attrs: Any) -> str:
        out = self.fresh(base)
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out


def _pads(layer: L.Conv2D | L.MaxPool2D | L.AvgPool2D | L.SumPool2D, x: np.ndarray) -> list[int]:
    t, b, l_, r = resolve_padding(layer.padding, layer.kernel_size, layer.stride, x.shape[2:],
                                  type(layer).__name__)
    return [t, l_, b, r]


def _emit(B: _Builder, layer: L.Layer, x: Any, v: Any, prefix: str) -> tuple[Any, Any]:
    """Append ONNX nodes for ``layer`` reading tensor name(s) ``x`` with value(s) ``v``.

    Returns ``(output name, output value)``; ``prefix`` is the layer's state-dict prefix.
    """
    base = prefix.rstrip(".") or type(layer).__name__.lower()
    kind = type(layer).__name__
    if isinstance(layer, L.Sequential):
        for i, sub in enumerate(layer):
            x, v = _emit(B, sub, x, v, f"{prefix}{i}.")
        return x, v
    if isinstance(layer, L.Residual):
        yb, vb = _emit(B, layer.body, x, v, prefix + "body.")
        ys, vs = _emit(B, layer.shortcut, x, v, prefix + "shortcut.")
        s = B.op("Add", [yb, ys], base + ".add")
        return B.op("Relu", [s], base + ".relu"), layer.forward(v)
    if isinstance(layer, G.Model):
        xs, vs = ([x], [v]) if layer.single_input else (list(x), list(v))
        names = dict(zip(layer.input_names, xs))
        values = dict(zip(layer.input_names, vs))
        for (name, sub), (srcs, multi) in zip(layer.named_layers(), layer.wiring):
            a, av = [names[s] for s in srcs], [values[s] for s in srcs]
            names[name], values[name] = _emit(B, sub, a if multi else a[0], av if multi else av[0],
                                              f"{prefix}{name}.")
        outs = [(names[k], values[k]) for k in layer.output_names]
        if layer.single_output:
            return outs[0]
        return [o[0] for o in outs], [o[1] for o in outs]
    y = layer.forward(v)
    if isinstance(layer, L.Conv2D):
        ins = [x, B.const(prefix + "weight", layer.weight.data)]
        if layer.bias is not None:
            ins.append(B.const(prefix + "bias", layer.bias.data))
        out = B.op("Conv", ins, base, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                   pads=_pads(layer, v), dilations=[1, 1], group=1)
    elif isinstance(layer, L.MaxPool2D):  # ONNX MaxPool never picks a padded cell, as fastcnn
        out = B.op("MaxPool", [x], base, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                   pads=_pads(layer, v), ceil_mode=0)
    elif isinstance(layer, L.AvgPool2D):  # int padding counts in the divisor (torch), "same" not (TF)
        out = B.op("AveragePool", [x], base, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                   pads=_pads(layer, v), ceil_mode=0, count_include_pad=int(layer.padding != "same"))
    elif isinstance(layer, L.SumPool2D):  # the sum: the average over k*k cells, padding counted
        kh, kw = layer.kernel_size
        avg = B.op("AveragePool", [x], base + ".avg", kernel_shape=[kh, kw], strides=list(layer.stride),
                   pads=_pads(layer, v), ceil_mode=0, count_include_pad=1)
        out = B.op("Mul", [avg, B.const(base + ".cells", np.array(kh * kw, np.float32))], base)
    elif isinstance(layer, L.GlobalAvgPool2D):
        out = B.op("GlobalAveragePool", [x], base if y.ndim == 4 else base + ".pool")
        if y.ndim == 2:
            out = B.op("Flatten", [out], base, axis=1)
    elif isinstance(layer, L.ReLU):
        out = B.op("Relu", [x], base)
    elif isinstance(layer, (L.Sigmoid, L.Tanh)):
        out = B.op(kind, [x], base)
    elif isinstance(layer, L.Dropout):  # identity in eval mode
        out = B.op("Identity", [x], base)
    elif isinstance(layer, L.Flatten):
        out = B.op("Flatten", [x], base, axis=1)
    elif isinstance(layer, L.Dense):
        ins = [x, B.const(prefix + "weight", layer.weight.data)]
        if layer.bias is not None:
            ins.append(B.const(prefix + "bias", layer.bias.data))
        out = B.op("Gemm", ins, base, transB=1)
    elif isinstance(layer, L.BatchNorm2D):
        ins = [x] + [B.const(prefix + n, getattr(layer, n) if n.startswith("running") else getattr(layer, n).data)
                     for n in ("weight", "bias", "running_mean", "running_var")]
        out = B.op("BatchNormalization", ins, base, epsilon=layer.eps)
    elif isinstance(layer, G.Add):
        out = B.op("Add" if len(x) == 2 else "Sum", x, base)
    elif isinstance(layer, G.Multiply):
        out = x[0]
        for i, other in enumerate(x[1:]):
            out = B.op("Mul", [out, other], base if i == len(x) - 2 else f"{base}.mul{i}")
    elif isinstance(layer, G.Concatenate):
        out = B.op("Concat", x, base, axis=layer.axis)
    else:
        raise TypeError(f"to_onnx: no ONNX export for layer {kind}")
    return out, y


def _input_shapes(model: L.Layer, input_shape: Any) -> list[tuple[int, ...]]:
    if isinstance(model, G.Model):
        shapes = [tuple(s) for s in model.input_shapes]
        if input_shape is not None:
            given = [tuple(input_shape)] if len(shapes) == 1 and not isinstance(input_shape[0], (tuple, list)) \
                else [tuple(s) for s in input_shape]
            given = [s[1:] if len(s) == len(ref) + 1 else s for s, ref in zip(given, shapes)]
            if given != shapes:
                raise ValueError(f"to_onnx: input_shape {input_shape} differs from the model's inputs {shapes}")
        return shapes
    if input_shape is None:
        raise ValueError("to_onnx: input_shape is required, e.g. (1, 28, 28) (per sample, without the batch)")
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 4:  # (N, C, H, W): the batch dimension is symbolic in the export
        shape = shape[1:]
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"to_onnx: invalid input_shape {input_shape}")
    return [shape]


def to_onnx(model: L.Layer, path: str | os.PathLike[str], input_shape: Sequence[Any] | None = None,
            check: bool = True) -> Any:
    """Write ``model`` (eval-mode computation) to an ONNX file at ``path``, atomically.

    Parameters
    ----------
    model : Sequential, graph Model or any fastcnn layer
    path : str or path-like
    input_shape : tuple
        Per-sample input shape ``(C, H, W)`` (a leading batch size is accepted and ignored:
        the exported batch dimension is symbolic).  Optional for a graph Model.
    check : bool
        Run ``onnx.checker.check_model(..., full_check=True)`` (shape inference included).

    Returns
    -------
    onnx.ModelProto
    """
    onnx = require("onnx", "onnx", "ONNX export")
    require("onnx.numpy_helper", "onnx", "ONNX export")
    from onnx import TensorProto, helper

    shapes = _input_shapes(model, input_shape)
    if isinstance(model, G.Model):
        in_names = model.input_names
    else:
        in_names = ["input"]
    B = _Builder(onnx)
    for n in in_names:
        B.used.add(n)
    was = model.training
    model.eval()
    try:
        dummies = [np.zeros((1,) + s, np.float32) for s in shapes]
        multi = isinstance(model, G.Model) and not model.single_input
        x, v = _emit(B, model, in_names if multi else in_names[0], dummies if multi else dummies[0], "")
    finally:
        model.train(was)
    outs, vals = (x, v) if isinstance(x, list) else ([x], [v])
    out_names = ["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]
    for o, name in zip(outs, out_names):  # rename the last node outputs (or add an Identity)
        B.nodes.append(helper.make_node("Identity", [o], [name], name=name + "_identity"))

    def vi(name: str, shape: Sequence[int]) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch"] + list(shape))

    g = helper.make_graph(B.nodes, "fastcnn", [vi(n, s) for n, s in zip(in_names, shapes)],
                          [vi(n, np.shape(v)[1:]) for n, v in zip(out_names, vals)], initializer=B.inits)
    proto = helper.make_model(g, producer_name="fastcnn", opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = _IR_VERSION
    if check:
        onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    atomic_write(path, lambda f: f.write(data))
    return proto


def quantize_int8(src: str | os.PathLike[str], dst: str | os.PathLike[str], calibration: ArrayLike,
                  batch_size: int = 32, reduce_range: bool = True) -> None:
    """Static int8 quantization of an exported ONNX file with onnxruntime (QDQ format,
    per-channel int8 weights, int8 activations whose ranges come from ``calibration``).

    Parameters
    ----------
    src, dst : paths of the float ONNX file (from :func:`to_onnx`) and of the int8 one
    calibration : float32 array ``(N, ...)``
        Representative model inputs (already normalised as in training), fed in batches.
    reduce_range : weights in 7 bits (onnxruntime's ``reduce_range``): x86 CPUs without VNNI
        add the int8 products in pairs into saturating 16-bit lanes, which full 8-bit weights
        can overflow (docs/INTEROP.md).  ``False`` only for files run where VNNI (or ARM) is.
    """
    require("onnxruntime", "onnx", "int8 quantization")
    q = require("onnxruntime.quantization", "onnx", "int8 quantization")
    onnx = require("onnx", "onnx", "int8 quantization")
    data = np.ascontiguousarray(calibration, dtype=np.float32)
    if data.ndim < 2 or not len(data):
        raise ValueError(f"quantize_int8: calibration must be a non-empty batch of inputs, got {data.shape}")
    name = onnx.load(os.fspath(src)).graph.input[0].name
    reader_base: Any = q.CalibrationDataReader

    class Reader(reader_base):
        def __init__(self) -> None:
            self.batches = iter([data[i:i + batch_size] for i in range(0, len(data), batch_size)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self.batches, None)
            return None if b is None else {name: b}

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "int8.onnx")
        q.quantize_static(os.fspath(src), out, Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                          activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                          reduce_range=reduce_range)
        with open(out, "rb") as f:
            model = f.read()
    atomic_write(dst, lambda f: f.write(model))


def to_safetensors(model: L.Layer, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> None:
    """Write ``model`` as safetensors (torch's key names; architecture in the metadata)."""
    save(model, path, metadata, format="safetensors")
