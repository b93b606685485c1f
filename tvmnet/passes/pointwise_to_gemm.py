"""PointwiseToGemm: lower 1x1, stride-1, ungrouped convolutions (NCHW or NHWC) to a matmul.

In NCHW a pointwise conv *is* a GEMM with no data movement: the weight ``(O, I, 1, 1)`` is
an ``O x I`` row-major matrix and each image of the input ``(N, I, H, W)`` is an
``I x HW`` row-major matrix, so ``out[n] = W @ X[n]`` (M = O, K = I, N = H*W).

In NHWC (the CPU layout, see ``pipeline.graph_passes``) each image is an ``HW x I`` matrix
and ``out[n] = X[n] @ W^T`` (M = H*W, K = I, N = O): the innermost axis of the output is the
channel count (a multiple of the vector width at every MobileNet width) instead of H*W (49
at 7x7). ``W^T`` is a constant and is folded at compile time.

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
from tvm.relax.dpl import is_op, rewrite_call, wildcard

from tvmnet.passes._common import ints, rewrite_relax_functions

_LAYOUTS = {("NCHW", "OIHW", "NCHW"): "NCHW", ("NHWC", "OHWI", "NHWC"): "NHWC"}


def _layout(conv):
    attrs = conv.attrs
    return _LAYOUTS.get((attrs.data_layout, attrs.kernel_layout, attrs.out_layout))


def _is_pointwise(conv) -> bool:
    attrs = conv.attrs
    x, weight = conv.args
    wshape, xshape = weight.ty.shape, x.ty.shape
    layout = _layout(conv)
    if layout is None or wshape is None or xshape is None:
        return False
    kernel = [int(wshape[2]), int(wshape[3])] if layout == "NCHW" else [int(wshape[1]), int(wshape[2])]
    return (
        int(attrs.groups) == 1
        and ints(attrs.strides) == [1, 1]
        and not any(ints(attrs.padding))
        and ints(attrs.dilation) == [1, 1]
        and kernel == [1, 1]
    )


def _gemm(conv):
    """The 3-D matmul of a pointwise conv, its 4-D output shape, and its layout."""
    x, weight = conv.args
    out_dtype = conv.attrs.out_dtype if conv.attrs.out_dtype else None
    cout = int(weight.ty.shape[0])
    if _layout(conv) == "NCHW":  # (N, O, H*W) = W (O, I) @ X (N, I, H*W)
        n, cin, h, w = ints(x.ty.shape)
        gemm = relax.op.matmul(
            relax.op.reshape(weight, (cout, cin)), relax.op.reshape(x, (n, cin, h * w)), out_dtype=out_dtype
        )
        return gemm, (n, cout, h, w), "NCHW"
    n, h, w, cin = ints(x.ty.shape)  # (N, H*W, O) = X (N, H*W, I) @ W^T (I, O)
    wt = relax.op.permute_dims(relax.op.reshape(weight, (cout, cin)), [1, 0])
    gemm = relax.op.matmul(relax.op.reshape(x, (n, h * w, cin)), wt, out_dtype=out_dtype)
    return gemm, (n, h, w, cout), "NHWC"


def _bias_3d(bias, cout, layout):
    """A per-channel bias as (1, O, 1) for NCHW or (1, 1, O) for NHWC, or None if it is not per-channel."""
    shape = bias.ty.shape if bias.ty is not None else None
    shape = None if shape is None else [int(d) for d in shape]
    if shape is None or len(shape) not in (3, 4) or (len(shape) == 4 and shape[0] != 1):
        return None
    if layout == "NCHW":
        if shape[-3] != cout or any(d != 1 for d in shape[-2:]):
            return None
        return relax.op.reshape(bias, (1, cout, 1))
    if shape[-1] != cout or any(d != 1 for d in shape[:-1]):
        return None
    return relax.op.reshape(bias, (1, 1, cout))


def _rewrite_function(func: relax.Function) -> relax.Function:
    conv = is_op("relax.nn.conv2d")(wildcard(), wildcard())
    bias = wildcard()
    add = is_op("relax.add")(conv, bias)
    relu = is_op("relax.nn.relu")(add)

    def with_epilogue(expr, matches):
        c = matches[conv]
        if not _is_pointwise(c):
            return expr
        gemm, shape, layout = _gemm(c)
        b = _bias_3d(matches[bias], shape[1] if layout == "NCHW" else shape[3], layout)
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
        gemm, shape, _ = _gemm(c)
        return relax.op.reshape(gemm, shape)

    # Keep bias and ReLU on the 3-D GEMM output, before the reshape back to 4-D, so that
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
