"""StemReadsNCHW: the first conv of an NHWC graph reads the NCHW image itself.

``ConvertLayout`` to NHWC leaves a transpose of the model input in front of the first conv
(the image arrives as NCHW, PyTorch's layout). On its own that transpose is a memory-bound
kernel with nothing to tune (MobileNet 0.5-224 on a 2-core Cascade Lake: 0.33 ms, 11% of the
tuned model). This pass folds it into the conv, whose loads then index the NCHW input:

Before::

    t = R.permute_dims(x, axes=[0, 2, 3, 1])                       # x: (N, C, H, W)
    y = R.nn.conv2d(t, w, data_layout="NHWC", kernel_layout="OHWI")  # y: (N, OH, OW, O)

After::

    y = R.call_tir(conv2d_nchw_in_nhwc_out, (x, w), out_ty=R.Tensor((N, OH, OW, O)))

The new kernel is written in TE (pad + a 7-deep loop nest with a sum over C, KH, KW), so it
is a reduction like any conv: the bias add and ReLU after it fuse into it, and MetaSchedule
tunes it with its multi-level tiling rules. Only ungrouped convs whose input is the transpose
of an NCHW tensor are rewritten (Relax's conv2d legalization does not accept an output
layout other than the input's, hence a kernel of our own).
"""

from __future__ import annotations

import tvm
from tvm import relax, te, topi
from tvm.relax.dpl import is_op, rewrite_call, wildcard

from tvmnet.passes._common import ints


def conv2d_nchw_in_nhwc_out(x: te.Tensor, w: te.Tensor, strides, padding, dilation) -> te.Tensor:
    """out[n, oh, ow, o] = sum_{c, kh, kw} x[n, c, oh*s + kh*d - pad, ow*s + kw*d - pad] * w[o, kh, kw, c]."""
    _, c, _, _ = x.shape
    o, kh, kw, _ = w.shape
    pt, pl, pb, pr = padding
    sh, sw = strides
    dh, dw = dilation
    pad = topi.nn.pad(x, [0, 0, pt, pl], [0, 0, pb, pr], name="pad_nchw")
    oh = (pad.shape[2] - (kh - 1) * dh - 1) // sh + 1
    ow = (pad.shape[3] - (kw - 1) * dw - 1) // sw + 1
    rc = te.reduce_axis((0, c), name="rc")
    rh = te.reduce_axis((0, kh), name="rh")
    rw = te.reduce_axis((0, kw), name="rw")
    return te.compute(
        (x.shape[0], oh, ow, o),
        lambda n, y, z, f: te.sum(pad[n, rc, y * sh + rh * dh, z * sw + rw * dw] * w[f, rh, rw, rc], axis=[rc, rh, rw]),
        name="conv2d_nchw_nhwc",
    )


def _rewrite(mod: tvm.IRModule) -> tvm.IRModule:
    bb = relax.BlockBuilder(mod)  # holds the new kernels (add_func gives their GlobalVars a type)
    new_funcs = {}
    x_pat = wildcard()
    t_pat = is_op("relax.permute_dims")(x_pat)
    conv_pat = is_op("relax.nn.conv2d")(t_pat, wildcard())

    def rewriter(expr, matches):
        conv, t = matches[conv_pat], matches[t_pat]
        attrs = conv.attrs
        axes = ints(t.attrs.axes) if t.attrs.axes is not None else None
        x, w = matches[x_pat], conv.args[1]
        if (
            axes != [0, 2, 3, 1]
            or (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NHWC", "OHWI", "NHWC")
            or int(attrs.groups) != 1
            or x.ty.shape is None
            or w.ty.shape is None
            or (attrs.out_dtype and str(attrs.out_dtype) not in ("", "void", str(x.ty.dtype)))
        ):
            return expr
        xs, ws = ints(x.ty.shape), ints(w.ty.shape)
        key = (
            tuple(xs),
            tuple(ws),
            tuple(ints(attrs.strides)),
            tuple(ints(attrs.padding)),
            tuple(ints(attrs.dilation)),
        )
        if key not in new_funcs:
            i64 = lambda dims: [tvm.tirx.IntImm("int64", d) for d in dims]  # noqa: E731 - as legalized kernels
            xt = te.placeholder(i64(xs), x.ty.dtype, name="x")
            wt = te.placeholder(i64(ws), w.ty.dtype, name="w")
            out = conv2d_nchw_in_nhwc_out(xt, wt, ints(attrs.strides), ints(attrs.padding), ints(attrs.dilation))
            gvar = bb.add_func(
                te.create_prim_func([xt, wt, out]).without_attr("global_symbol"), "conv2d_nchw_in_nhwc_out"
            )
            new_funcs[key] = (gvar, ints(out.shape))
        gvar, shape = new_funcs[key]
        return relax.call_tir(gvar, [x, w], relax.TensorType(shape, x.ty.dtype))

    rewritten = {
        gv: rewrite_call(conv_pat, rewriter, f) for gv, f in mod.functions_items() if isinstance(f, relax.Function)
    }
    if not new_funcs:
        return mod
    out = bb.get()
    for gv, f in rewritten.items():
        out[gv] = f
    return out


@tvm.transform.module_pass(opt_level=0, name="tvmnet.StemReadsNCHW")
class StemReadsNCHW:
    """Fold the input transpose ConvertLayout leaves before the first conv into that conv."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return _rewrite(mod)
