"""Shared plumbing of tvmnet's module passes."""

from __future__ import annotations

from typing import Callable

import tvm
from tvm import relax


def rewrite_relax_functions(mod: tvm.IRModule, rewrite: Callable[[relax.Function], relax.Function]) -> tvm.IRModule:
    """Apply ``rewrite`` to every Relax function; returns ``mod`` itself when nothing changed."""
    updates = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            new = rewrite(func)
            if not new.same_as(func):
                updates[gvar] = new
    if not updates:
        return mod
    mod = mod.clone() if hasattr(mod, "clone") else tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod


def const_value(expr):
    """The numpy value of a Relax constant, or None."""
    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None


def ints(values) -> list:
    """Python ints of a TVM shape or attribute array."""
    return [int(v) for v in values]


def nchw_conv2d(attrs, data, weight, out_dtype=None, layout: str = "NCHW"):
    """A conv2d like the one whose ``attrs`` are given (strides, padding, dilation, groups), on new
    operands: NCHW data with OIHW weights, or (``layout="NHWC"``) NHWC data with OHWI weights."""
    return relax.op.nn.conv2d(
        data,
        weight,
        strides=attrs.strides,
        padding=attrs.padding,
        dilation=attrs.dilation,
        groups=attrs.groups,
        data_layout=layout,
        kernel_layout="OIHW" if layout == "NCHW" else "OHWI",
        out_layout=layout,
        out_dtype=out_dtype,
    )


def requant_u8(acc, bias, mult, zo):
    """The TE expression of a layer's requantization to uint8, as ONNX Runtime's integer kernels
    compute it: ``clamp(round_half_even(float(acc + bias) * mult) + zo, 0, 255)`` (the int8
    kernels' epilogue: vnni_kernel, vnni_stem, arm_kernel)."""
    from tvm import te, tirx

    lo, hi = tirx.const(0.0, "float32"), tirx.const(255.0, "float32")
    return te.max(te.min(te.round((acc + bias).astype("float32") * mult) + zo, hi), lo).astype("uint8")
