"""PointwiseToVnni: the int8 1x1 convolutions (NHWC, after ``QdqToInteger("NHWC")``) as calls to
the VNNI GEMM kernel (``vnni_kernel``), with their weights packed at compile time.

Before (uint8 activations with zero point 0, int8 OHWI weights, the requantization of
``QdqToInteger``)::

    acc = R.nn.conv2d(x, W, data_layout="NHWC", kernel_layout="OHWI", out_dtype="int32")   # 1x1, stride 1
    y = astype(clip(round(astype(acc + bias, "float32") * mult) + zo, 0, 255), "uint8")

After::

    a = R.reshape(x, (H * W, K))
    y = R.reshape(R.call_tir(vnni_gemm_mM_kK_nN, (a, pack(W), bias, mult, zo), (H * W, N), "uint8"), (1, H, W, N))

The kernel computes the same expression in the same order (int32 sum, float32 multiply, round
half to even, add, clamp), so the output is bit-identical. A layer whose shape the kernel does not
take (``vnni_kernel.fits``) stays as it is.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from tvmnet.passes import vnni_kernel
from tvmnet.passes._common import const_value


class VnniBackend:
    """What the rewrite asks of a kernel family: which kernel (if any) takes a layer, its packed
    weights and bias, its scheduled PrimFunc (``pointwise_to_arm`` has a sibling)."""

    def choose(self, m: int, k: int, n: int, w: np.ndarray):
        """The kernel variant for this layer (its name's prefix), or None to leave the layer alone."""
        return "vnni_gemm" if vnni_kernel.fits(m, k, n) else None

    def pack(self, variant: str, w: np.ndarray, bias: np.ndarray):
        return vnni_kernel.pack_weights(w), bias

    def scheduled(self, variant: str, m: int, k: int, n: int):
        return vnni_kernel.scheduled(m, k, n)


class _Rewriter:
    def __init__(self, bb: relax.BlockBuilder, backend=None):
        self.bb = bb  # the kernels are added to its module
        self.backend = backend or VnniBackend()
        self.by_shape = {}
        self.x, self.w = wildcard(), is_const()
        self.bias, self.mult, self.zo = is_const(), is_const(), is_const()
        self.lo, self.hi = wildcard(), wildcard()
        self.conv = is_op("relax.nn.conv2d")(self.x, self.w)
        real = is_op("relax.multiply")(is_op("relax.astype")(is_op("relax.add")(self.conv, self.bias)), self.mult)
        self.clip = is_op("relax.clip")(is_op("relax.add")(is_op("relax.round")(real), self.zo), self.lo, self.hi)
        self.out = is_op("relax.astype")(self.clip)

    def gvar(self, variant: str, m: int, k: int, n: int) -> relax.GlobalVar:
        key = (variant, m, k, n)
        if key not in self.by_shape:
            func = self.backend.scheduled(variant, m, k, n).without_attr("global_symbol")
            self.by_shape[key] = self.bb.add_func(func, f"{variant}_m{m}_k{k}_n{n}")
        return self.by_shape[key]

    def __call__(self, expr, match):
        conv, x = match[self.conv], match[self.x]
        a = conv.attrs
        w, bias, mult, zo = (const_value(match[p]) for p in (self.w, self.bias, self.mult, self.zo))
        lo, hi = match[self.lo], match[self.hi]
        if (
            (a.data_layout, a.kernel_layout, str(a.out_dtype)) != ("NHWC", "OHWI", "int32")
            or [int(v) for v in a.strides] != [1, 1]
            or int(a.groups) != 1
            or any(int(v) for v in a.padding)
            or x.ty.dtype != "uint8"
            or str(expr.attrs.dtype) != "uint8"
            or w is None
            or w.shape[1:3] != (1, 1)
            or not all(isinstance(v, tvm.tirx.IntImm) for v in (lo, hi))
            or (int(lo.value), int(hi.value)) != (0, 255)
        ):
            return expr
        shape = [int(v) for v in x.ty.shape]
        m, k, n = shape[1] * shape[2], shape[3], int(w.shape[0])
        variant = self.backend.choose(m, k, n, w) if shape[0] == 1 and zo.size == 1 else None
        if variant is None:
            return expr
        packed, bias = self.backend.pack(variant, w.reshape(n, k), bias.reshape(n))
        args = [
            relax.op.reshape(x, (m, k)),
            relax.const(packed),
            relax.const(np.ascontiguousarray(bias), "int32"),
            relax.const(np.ascontiguousarray(mult.reshape(n)), "float32"),
            relax.const(zo.reshape(1).astype("float32"), "float32"),
        ]
        y = relax.call_tir(self.gvar(variant, m, k, n), args, relax.TensorType((m, n), "uint8"))
        return relax.op.reshape(y, (1, shape[1], shape[2], n))


@tvm.transform.module_pass(opt_level=0, name="tvmnet.PointwiseToVnni")
class PointwiseToVnni:
    """Rewrite every int8 NHWC 1x1 convolution with its requantization into the VNNI GEMM kernel."""

    backend = VnniBackend

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_pointwise(mod, self.backend())


def rewrite_pointwise(mod: tvm.IRModule, backend) -> tvm.IRModule:
    """Every int8 NHWC 1x1 convolution with its requantization as a call of ``backend``'s GEMM."""
    bb = relax.BlockBuilder(mod)
    rw = _Rewriter(bb, backend)
    rewritten = {gv: rewrite_call(rw.out, rw, f) for gv, f in mod.functions_items() if isinstance(f, relax.Function)}
    if not rw.by_shape:
        return mod
    out = bb.get()
    for gv, f in rewritten.items():
        out[gv] = f
    return out
