"""PointwiseToGemm: lower 1x1, stride-1, ungrouped NCHW convolutions to a matmul.

In NCHW a pointwise conv *is* a GEMM with no data movement: the weight ``(O, I, 1, 1)`` is
an ``O x I`` row-major matrix and each image of the input ``(N, I, H, W)`` is an
``I x HW`` row-major matrix, so ``out[n] = W @ X[n]`` (M = O, K = I, N = H*W).

Before::

    y = R.nn.conv2d(x, w, strides=[1, 1], padding=[0, 0, 0, 0], groups=1)   # w: (O, I, 1, 1)

    z = R.nn.relu(R.add(y, b))                                               # b: (1, O, 1, 1)

After::

    g = R.matmul(R.reshape(w, (O, I)), R.reshape(x, (N, I, H*W)))           # (N, O, H*W)
    z = R.reshape(R.nn.relu(R.add(g, R.reshape(b, (1, O, 1)))), (N, O, H, W))

The reshapes are free (views of the same buffer). The bias add and ReLU stay on the 3-D
GEMM output so that ``FuseOps`` puts them in the matmul's kernel: MetaSchedule then tunes
``matmul + add + relu`` tasks with its GEMM rules (multi-level tiling, vectorisation,
weight pre-packing). A pointwise conv without a bias/ReLU epilogue becomes a bare matmul.
"""
from __future__ import annotations

import tvm
from tvm import relax
from ._common import rewrite_relax_functions
from tvm.relax.dpl import is_op, rewrite_call, wildcard


def _ints(values):
    return [int(v) for v in values]


def _is_pointwise(conv) -> bool:
    attrs = conv.attrs
    x, weight = conv.args
    wshape, xshape = weight.ty.shape, x.ty.shape
    return (attrs.data_layout == "NCHW" and attrs.kernel_layout == "OIHW" and attrs.out_layout == "NCHW"
            and int(attrs.groups) == 1 and _ints(attrs.strides) == [1, 1] and not any(_ints(attrs.padding))
            and _ints(attrs.dilation) == [1, 1] and wshape is not None and xshape is not None
            and [int(wshape[2]), int(wshape[3])] == [1, 1])


def _gemm(conv):
    """(N, O, H*W) matmul of a pointwise conv, and its 4-D output shape."""
    x, weight = conv.args
    n, cin, h, w = _ints(x.ty.shape)
    cout = int(weight.ty.shape[0])
    out_dtype = conv.attrs.out_dtype if conv.attrs.out_dtype else None
    gemm = relax.op.matmul(relax.op.reshape(weight, (cout, cin)), relax.op.reshape(x, (n, cin, h * w)),
                           out_dtype=out_dtype)
    return gemm, (n, cout, h, w)


def _bias_3d(bias, cout):
    """A (1, O, 1, 1) or (O, 1, 1) bias as (1, O, 1), or None if it is not per-channel."""
    shape = bias.ty.shape if bias.ty is not None else None
    shape = None if shape is None else [int(d) for d in shape]
    if shape is None or len(shape) not in (3, 4) or int(shape[-3]) != cout or any(int(d) != 1 for d in shape[-2:]):
        return None
    if len(shape) == 4 and int(shape[0]) != 1:
        return None
    return relax.op.reshape(bias, (1, cout, 1))


def _rewrite_function(func: relax.Function) -> relax.Function:
    conv = is_op("relax.nn.conv2d")(wildcard(), wildcard())
    bias = wildcard()
    add = is_op("relax.add")(conv, bias)
    relu = is_op("relax.nn.relu")(add)

    def with_epilogue(expr, matches):
        c = matches[conv]
        if not _is_pointwise(c):
            return expr
        gemm, shape = _gemm(c)
        b = _bias_3d(matches[bias], shape[1])
        if b is None:
            return expr
        y = relax.op.add(gemm, b)
        if relu in matches:
            y = relax.op.nn.relu(y)
        return relax.op.reshape(y, shape)

    def bare(expr, matches):
        c = matches[conv]
        if not _is_pointwise(c):
            return expr
        gemm, shape = _gemm(c)
        return relax.op.reshape(gemm, shape)

    # Keep bias and ReLU on the 3-D GEMM output, before the reshape back to NCHW, so that
    # FuseOps puts them in the matmul's kernel (a reshape between them would stop fusion).
    func = rewrite_call(relu, with_epilogue, func)
    func = rewrite_call(add, with_epilogue, func)
    return rewrite_call(conv, bare, func)


@tvm.transform.module_pass(opt_level=0, name="tvmnet.PointwiseToGemm")
class PointwiseToGemm:
    """Rewrite every 1x1 stride-1 conv2d as reshape -> matmul -> reshape."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        new = rewrite_relax_functions(mod, _rewrite_function)
        return new
