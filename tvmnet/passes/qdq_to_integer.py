"""QdqToInteger: the quantized (QDQ) convolutions and the classifier computed on integers.

A QDQ model (ONNX Runtime's ``quantize_static``) says what each layer means in float: dequantize
the uint8 input and the int8 weights, convolve in float, add the dequantized int32 bias,
quantize to uint8. Before (every conv2d: stem, depthwise, pointwise)::

    x = R.dequantize(xq, sx, zx)                   # uint8 -> float32, one scale per tensor
    w = R.dequantize(Wq, sw, 0, axis=0)            # int8 constant, one scale per output channel
    y = R.nn.conv2d(x, w, ...)
    b = R.reshape(R.dequantize(Bq, sx * sw, 0), (1, O, 1, 1))   # int32 constant
    yq = R.quantize(R.add(y, b), so, zo)           # -> uint8 (ReLU is the clamp at zo)

After::

    acc = R.nn.conv2d(xq, Wq, ..., out_dtype="int32")       # uint8 x int8 -> int32, exact
    y = astype(clip(round(astype(acc + Bq, "float32") * M) + zo, 0, 255), "uint8")

where the input's zero point is 0 (every input after a ReLU); the stem, whose input has one,
convolves ``astype(xq, "int32") - zx`` (the padded border then adds nothing, as in float), and
``M = sx * sw / so`` in float32: ONNX Runtime's own
requantization (its integer kernels: float multiplier, round half to even, zero point, clamp),
which makes the two bit-identical. The convolution reads the uint8 activations and the int8
weights as they are, the operand types of VNNI's ``vpdpbusd``; uint8 travels between the layers
and no float tensor does (the float multiplier lives in the epilogue of the same kernel). The
classifier (``matmul`` with the transposed dequantized weights, then the bias) is rewritten the
same way.

A rewrite happens only where the bias scale is the product of the input's and the weights'
scales, as the quantizer makes it; anything else is left as it is. What stays in float (the
input's quantize, the global pool, the flatten, the output's dequantize) gets its scalar scales and
zero points as tensors of shape (1,): every constant of a layer is then a kernel argument, never a
number written into the kernel, so the kernels (and their tuning records) do not depend on
calibration. (Vectors along the op's axis, as before, made the input's quantize gather its scale
per lane: 198 us on 224x224x3.)
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from tvmnet.passes._common import const_value, nchw_conv2d, rewrite_relax_functions


def _scalar(expr):
    v = const_value(expr)
    return None if v is None or v.size != 1 else v.reshape(())


class _Layer:
    """The patterns of one quantized layer's pieces, so that a match reads each of them."""

    def __init__(self):
        self.xq, self.sx, self.zx = wildcard(), is_const(), is_const()
        self.wq, self.sw, self.zw = is_const(), is_const(), is_const()
        self.bq, self.sb, self.zb = is_const(), is_const(), is_const()
        self.x = is_op("relax.dequantize")(self.xq, self.sx, self.zx)
        self.w = is_op("relax.dequantize")(self.wq, self.sw, self.zw)
        self.b = is_op("relax.dequantize")(self.bq, self.sb, self.zb)

    def parts(self, m):
        """(xq, zx, Wq, Bq, bias scale) when the layer is the quantizer's, else None."""
        sx, zx = _scalar(m[self.sx]), _scalar(m[self.zx])
        wq, sw, zw = const_value(m[self.wq]), const_value(m[self.sw]), const_value(m[self.zw])
        bq, sb, zb = const_value(m[self.bq]), const_value(m[self.sb]), const_value(m[self.zb])
        xq = m[self.xq]
        if sx is None or zx is None or xq.ty.dtype not in ("uint8", "int8"):
            return None
        if wq.dtype != "int8" or bq.dtype != "int32" or np.any(zw != 0) or np.any(zb != 0):
            return None  # symmetric int8 weights and an int32 bias, as quantize_static makes them
        if not np.allclose(sb.astype(np.float64), (sx * sw).astype(np.float64), rtol=1e-6, atol=0):
            return None  # the bias does not share the accumulator's scale: an integer add would change it
        return xq, int(zx), wq, bq, (np.float32(sx) * sw.astype(np.float32))


def _requantize(acc, bias_q, multiplier, zero_point, out_dtype, shape):
    """clamp(round_half_even(float(acc + bias) * multiplier) + zero_point) in ``out_dtype``: the
    requantization of ONNX Runtime's integer kernels (MLAS), multiplier = sx * sw / so in float32."""
    summed = relax.op.add(acc, relax.const(bias_q.reshape(shape), "int32"))
    real = relax.op.multiply(relax.op.astype(summed, "float32"), relax.const(multiplier.reshape(shape), "float32"))
    lo, hi = (0, 255) if out_dtype == "uint8" else (-128, 127)
    ones = tuple(1 for _ in shape)  # a tensor, not a scalar: a kernel takes it as an argument
    shifted = relax.op.add(relax.op.round(real), relax.const(np.full(ones, zero_point, "float32")))
    return relax.op.astype(relax.op.clip(shifted, lo, hi), out_dtype)


def _requant_like(acc, bias_q, acc_scale, quant, shape):
    """The layer's own QuantizeLinear (scalar scale and zero point) as an integer requantization."""
    so, zo = _scalar(quant.args[1]), _scalar(quant.args[2])
    if so is None or zo is None:
        return None
    multiplier = (acc_scale / np.float32(so)).astype(np.float32)
    return _requantize(acc, bias_q, multiplier, int(zo), str(quant.attrs.out_dtype), shape)


def _flat_zero_point_off(xq, zx: int):
    """``astype(xq, int32) - zx``; where ``xq`` is the graph input's per-tensor quantize, computed on
    the flattened tensor (one contiguous elementwise kernel: on (1, 3, 224, 224) the tuned 4-D one
    computed its addresses lane by lane, 131 us) and reshaped back for free."""
    zero = relax.const(np.full((1,), zx, "int32"))
    call = xq if isinstance(xq, relax.Call) and getattr(xq.op, "name", "") == "relax.quantize" else None
    scale, zp = (const_value(call.args[1]), const_value(call.args[2])) if call is not None else (None, None)
    if call is None or xq.ty.shape is None or scale is None or zp is None or scale.size != 1 or zp.size != 1:
        return relax.op.subtract(relax.op.astype(xq, "int32"), relax.const(np.full((1, 1, 1, 1), zx, "int32")))
    shape = [int(v) for v in xq.ty.shape]
    flat = relax.op.reshape(call.args[0], (int(np.prod(shape)),))
    q = relax.op.quantize(
        flat,
        relax.const(scale.reshape(1)),
        relax.const(zp.reshape(1)),
        axis=0,
        out_dtype=call.attrs.out_dtype,
    )
    return relax.op.reshape(relax.op.subtract(relax.op.astype(q, "int32"), zero), shape)


def _cancel_transposes(func: relax.Function) -> relax.Function:
    """permute_dims(permute_dims(x, p), q) -> x where q undoes p (NHWC -> NCHW -> NHWC between layers)."""
    inner = is_op("relax.permute_dims")(wildcard())
    outer = is_op("relax.permute_dims")(inner)

    def rewriter(expr, m):
        p, q = m[inner].attrs.axes, m[outer].attrs.axes
        if p is None or q is None:
            return expr
        p, q = [int(v) for v in p], [int(v) for v in q]
        return m[inner].args[0] if [p[i] for i in q] == list(range(len(p))) else expr

    return rewrite_call(outer, rewriter, func)


def _rewrite_function(func: relax.Function, layout: str = "NCHW") -> relax.Function:
    conv = _Layer()
    conv_call = is_op("relax.nn.conv2d")(conv.x, conv.w)
    conv_out = is_op("relax.quantize")(
        is_op("relax.add")(conv_call, is_op("relax.reshape")(conv.b, wildcard())), is_const(), is_const()
    )

    def conv_rewriter(expr, m):
        a, quant = m[conv_call].attrs, m[conv_out]
        parts = conv.parts(m)
        if parts is None or (a.data_layout, a.kernel_layout, a.out_layout) != ("NCHW", "OIHW", "NCHW"):
            return expr
        xq, zx, wq, bq, sb = parts
        if layout == "NHWC":
            wq = np.ascontiguousarray(wq.transpose(0, 2, 3, 1))  # OIHW -> OHWI
        weights = relax.const(wq, "int8")
        if zx:  # the stem (ReLU'd activations have zero point 0): x - zx in int32, the zero point an argument
            xq = _flat_zero_point_off(xq, zx)
            weights = relax.const(wq.astype("int32"), "int32")
        if layout == "NHWC":
            xq = relax.op.permute_dims(xq, [0, 2, 3, 1])
        acc = nchw_conv2d(a, xq, weights, out_dtype="int32", layout=layout)
        out = _requant_like(acc, bq, sb, quant, (1, -1, 1, 1) if layout == "NCHW" else (1, 1, 1, -1))
        if out is not None and layout == "NHWC":  # back to NCHW; between two convs the pair cancels
            out = relax.op.permute_dims(out, [0, 3, 1, 2])
        return expr if out is None else out

    func = rewrite_call(conv_out, conv_rewriter, func)

    fc = _Layer()
    transposed = is_op("relax.permute_dims")(fc.w)
    fc_out = is_op("relax.quantize")(
        is_op("relax.add")(is_op("relax.matmul")(fc.x, transposed), fc.b), is_const(), is_const()
    )

    def fc_rewriter(expr, m):
        parts = fc.parts(m)
        axes = m[transposed].attrs.axes
        if parts is None or (axes is not None and [int(v) for v in axes] != [1, 0]):
            return expr
        xq, zx, wq, bq, sb = parts
        acc = relax.op.matmul(xq, relax.const(np.ascontiguousarray(wq.T), "int8"), out_dtype="int32")
        folded = bq.astype(np.int64) - zx * wq.astype(np.int64).sum(axis=1)
        out = _requant_like(acc, folded.astype(np.int32), sb, m[fc_out], (1, -1))
        return expr if out is None else out

    func = rewrite_call(fc_out, fc_rewriter, func)

    # what is left in float (the input's quantize, the pool, the flatten, the output): scalar scales and
    # zero points become tensors of shape (1,), same values; a kernel then takes them as arguments, where
    # a scalar is written into its code, so the kernels and their tuning records do not depend on calibration
    for name in ("relax.quantize", "relax.dequantize"):
        qdq = is_op(name)(wildcard(), is_const(), is_const())

        def vectorize(expr, m, qdq=qdq, name=name):
            call = m[qdq]
            scale, zero = _scalar(call.args[1]), _scalar(call.args[2])
            axis = int(call.attrs.axis)
            shape = call.args[0].ty.shape
            if scale is None or zero is None or shape is None:
                return expr
            op = relax.op.quantize if name == "relax.quantize" else relax.op.dequantize
            return op(  # shape (1,): one value read by every lane (a per-axis vector would be gathered)
                call.args[0],
                relax.const(np.full(1, scale, scale.dtype)),
                relax.const(np.full(1, zero, zero.dtype)),
                axis=axis,
                out_dtype=call.attrs.out_dtype,
            )

        func = rewrite_call(qdq, vectorize, func)
    return _cancel_transposes(func) if layout == "NHWC" else func


@tvm.transform.module_pass(opt_level=0, name="tvmnet.QdqToInteger")
class QdqToInteger:
    """Rewrite every quantized conv2d and classifier of a QDQ graph into integer arithmetic; with
    ``layout="NHWC"`` the convolutions run in NHWC/OHWI (the input and the pooled features are
    transposed once; between two layers the transposes cancel)."""

    def __init__(self, layout: str = "NCHW"):
        if layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout {layout!r}: expected NCHW or NHWC")
        self.layout = layout

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        new = rewrite_relax_functions(mod, lambda f: _rewrite_function(f, self.layout))
        return relax.transform.DeadCodeElimination()(new) if new is not mod else mod
