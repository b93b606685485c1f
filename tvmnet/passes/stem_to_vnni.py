"""StemToVnni: the int8 stem (after ``QdqToInteger("NHWC")``) as two kernels of ``vnni_stem``: the
input's quantize written padded, then the conv on ``vpdpbusd``; its weights packed at compile time.

Before (the graph input's quantize, flattened; the stem convolves ``x - zx`` in int32)::

    q = R.quantize(R.reshape(x, (C * H * W,)), s, zx, out_dtype="uint8")
    t = R.permute_dims(R.reshape(R.subtract(R.astype(q, "int32"), zx), (1, C, H, W)), [0, 2, 3, 1])
    acc = R.nn.conv2d(t, W, strides=2, padding=1, data_layout="NHWC", kernel_layout="OHWI", out_dtype="int32")
    y = astype(clip(round(astype(acc + bias, "float32") * mult) + zo, 0, 255), "uint8")

After::

    xp = R.call_tir(stem_prep_cC_hH_wW, (x, s, zx), (C, H + 2, Wp), "uint8")
    y = R.reshape(R.call_tir(vnni_stem_..., (xp, pack(W), bias - zx * sum(W), mult, zo), (OH, OW, N), "uint8"), (1, OH, OW, N))

Bit-identical (the same integers and the same requantization). A stem the kernel does not take
(``vnni_stem.fits``: N a multiple of 16) stays as it is.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from tvmnet.passes import vnni_stem
from tvmnet.passes._common import const_value


class _Rewriter:
    def __init__(self, bb: relax.BlockBuilder):
        self.bb = bb
        self.added = []
        self.x, self.scale, self.zp, self.zx = wildcard(), is_const(), is_const(), is_const()
        self.quant = is_op("relax.quantize")(is_op("relax.reshape")(self.x, wildcard()), self.scale, self.zp)
        shifted = is_op("relax.subtract")(is_op("relax.astype")(self.quant), self.zx)
        self.w = is_const()
        self.conv = is_op("relax.nn.conv2d")(
            is_op("relax.permute_dims")(is_op("relax.reshape")(shifted, wildcard())), self.w
        )
        self.bias, self.mult, self.zo = is_const(), is_const(), is_const()
        self.lo, self.hi = wildcard(), wildcard()
        real = is_op("relax.multiply")(is_op("relax.astype")(is_op("relax.add")(self.conv, self.bias)), self.mult)
        clip = is_op("relax.clip")(is_op("relax.add")(is_op("relax.round")(real), self.zo), self.lo, self.hi)
        self.out = is_op("relax.astype")(clip)

    def add(self, func, name: str) -> relax.GlobalVar:
        gv = self.bb.add_func(func.without_attr("global_symbol"), name)
        self.added.append(name)
        return gv

    def __call__(self, expr, m):
        conv, x, quant = m[self.conv], m[self.x], m[self.quant]
        a = conv.attrs
        w, bias, mult, zo = (const_value(m[p]) for p in (self.w, self.bias, self.mult, self.zo))
        zp, zx, scale = const_value(m[self.zp]), const_value(m[self.zx]), const_value(m[self.scale])
        lo, hi = m[self.lo], m[self.hi]
        if (
            (a.data_layout, a.kernel_layout, str(a.out_dtype)) != ("NHWC", "OHWI", "int32")
            or [int(v) for v in a.strides] != [2, 2]
            or [int(v) for v in a.padding] != [1, 1, 1, 1]
            or [int(v) for v in a.dilation] != [1, 1]
            or int(a.groups) != 1
            or x.ty.dtype != "float32"
            or x.ty.shape is None
            or len(x.ty.shape) != 4
            or str(quant.attrs.out_dtype) != "uint8"
            or str(expr.attrs.dtype) != "uint8"
            or any(v is None or v.size != 1 for v in (zp, zx, scale, zo))
            or int(zp.reshape(())) != int(zx.reshape(()))
            or w is None
            or w.shape[1:3] != (3, 3)
            or np.abs(w).max() > 127
            or not all(isinstance(v, tvm.tirx.IntImm) for v in (lo, hi))
            or (int(lo.value), int(hi.value)) != (0, 255)
        ):
            return expr
        n_, c, h, wd = (int(v) for v in x.ty.shape)
        n = int(w.shape[0])
        if n_ != 1 or w.shape[3] != c or not vnni_stem.fits(c, h, wd, n):
            return expr
        packed, folded = vnni_stem.pack(w, bias.reshape(n), int(zx.reshape(())))
        prep = self.add(vnni_stem.prep(c, h, wd, str(zp.dtype)), f"stem_prep_c{c}_h{h}_w{wd}")
        xp = relax.call_tir(
            prep,
            [x, relax.const(scale.reshape(1).astype("float32")), relax.const(zp.reshape(1))],
            relax.TensorType(vnni_stem.padded_shape(c, h, wd), "uint8"),
        )
        oh, ow = vnni_stem.out_size(h), vnni_stem.out_size(wd)
        stem = self.add(vnni_stem.scheduled(c, h, wd, n), f"vnni_stem_c{c}_h{h}_w{wd}_n{n}")
        args = [
            xp,
            relax.const(packed, "int8"),
            relax.const(folded, "int32"),
            relax.const(np.ascontiguousarray(mult.reshape(n)), "float32"),
            relax.const(zo.reshape(1).astype("float32"), "float32"),
        ]
        y = relax.call_tir(stem, args, relax.TensorType((oh, ow, n), "uint8"))
        return relax.op.reshape(y, (1, oh, ow, n))


@tvm.transform.module_pass(opt_level=0, name="tvmnet.StemToVnni")
class StemToVnni:
    """Rewrite the int8 NHWC stem (with the graph input's quantize) into ``vnni_stem``'s kernels."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        bb = relax.BlockBuilder(mod)
        rw = _Rewriter(bb)
        rewritten = {
            gv: rewrite_call(rw.out, rw, f) for gv, f in mod.functions_items() if isinstance(f, relax.Function)
        }
        if not rw.added:
            return mod
        out = bb.get()
        for gv, f in rewritten.items():
            out[gv] = f
        return relax.transform.DeadCodeElimination()(out)
