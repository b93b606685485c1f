"""PointwiseToGemm: lower 1x1, stride-1, ungrouped NCHW convolutions to a matmul.

In NCHW a pointwise conv *is* a GEMM with no data movement: the weight ``(O, I, 1, 1)`` is
an ``O x I`` row-major matrix and each image of the input ``(N, I, H, W)`` is an
``I x HW`` row-major matrix, so ``out[n] = W @ X[n]`` (M = O, K = I, N = H*W).

Before::

    y = R.nn.conv2d(x, w, strides=[1, 1], padding=[0, 0, 0, 0], groups=1)   # w: (O, I, 1, 1)

After::

    y = R.reshape(R.matmul(R.reshape(w, (O, I)), R.reshape(x, (N, I, H*W))), (N, O, H, W))

The reshapes are free (views of the same buffer); ``FuseOps`` later fuses the bias add and
ReLU that follow into the matmul's kernel, so MetaSchedule tunes ``matmul + add + relu``
tasks with its GEMM rules (multi-level tiling, vectorisation, weight pre-packing).
"""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, rewrite_call, wildcard


def _ints(values):
    return [int(v) for v in values]


def _rewrite_function(func: relax.Function) -> relax.Function:
    pattern = is_op("relax.nn.conv2d")(wildcard(), wildcard())

    def rewriter(expr, matches):
        conv = matches[pattern]
        attrs = conv.attrs
        x, weight = conv.args
        wshape, xshape = weight.ty.shape, x.ty.shape
        if (attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or attrs.out_layout != "NCHW"
                or int(attrs.groups) != 1 or _ints(attrs.strides) != [1, 1] or any(_ints(attrs.padding))
                or _ints(attrs.dilation) != [1, 1] or wshape is None or xshape is None
                or [int(wshape[2]), int(wshape[3])] != [1, 1]):
            return expr
        n, cin, h, w = _ints(xshape)
        cout = int(wshape[0])
        gemm = relax.op.matmul(relax.op.reshape(weight, (cout, cin)), relax.op.reshape(x, (n, cin, h * w)),
                               out_dtype=attrs.out_dtype if attrs.out_dtype else None)
        return relax.op.reshape(gemm, (n, cout, h, w))

    return rewrite_call(pattern, rewriter, func)


@tvm.transform.module_pass(opt_level=0, name="tvmnet.PointwiseToGemm")
class PointwiseToGemm:
    """Rewrite every 1x1 stride-1 conv2d as reshape -> matmul -> reshape."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                new = _rewrite_function(func)
                if not new.same_as(func):
                    updates[gvar] = new
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod
