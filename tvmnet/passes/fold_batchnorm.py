"""FoldBatchNorm: fold inference-mode BatchNorm into the convolution before it.

Before (any conv2d in NCHW/OIHW: the first full conv, depthwise and pointwise)::

    y = R.nn.conv2d(x, w, ...)
    bn = R.nn.batch_norm(y, gamma, beta, mean, var, axis=1, epsilon=eps)
    z = bn[0]

After::

    scale = gamma / sqrt(var + eps)                         # (O,)
    y = R.nn.conv2d(x, w * reshape(scale, (O, 1, 1, 1)), ...)
    z = y + reshape(beta - mean * scale, (1, O, 1, 1))      # one bias add

The rewrite is symbolic, so it works whether the weights are constants or function
parameters; with constant weights a following ``FoldConstant`` turns the scale arithmetic
into new constant weights and a constant bias, leaving ``conv2d -> add -> relu``.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, is_tuple_get_item, rewrite_call, wildcard

from tvmnet.passes._common import nchw_conv2d, rewrite_relax_functions


def _pattern():
    conv = is_op("relax.nn.conv2d")(wildcard(), wildcard())
    bn = is_op("relax.nn.batch_norm")(conv, wildcard(), wildcard(), wildcard(), wildcard())
    return conv, bn, is_tuple_get_item(bn, 0)


def _rewrite_function(func: relax.Function) -> relax.Function:
    conv_pat, bn_pat, out_pat = _pattern()

    def rewriter(expr, matches):
        conv, bn = matches[conv_pat], matches[bn_pat]
        cattrs, battrs = conv.attrs, bn.attrs
        if (
            cattrs.data_layout != "NCHW"
            or cattrs.kernel_layout != "OIHW"
            or cattrs.out_layout != "NCHW"
            or int(battrs.axis) not in (1, -3)
            or bool(battrs.training)
        ):
            return expr
        x, weight = conv.args
        _, gamma, beta, mean, var = bn.args
        out_channels = int(conv.ty.shape[1])
        scale = relax.op.divide(gamma, relax.op.sqrt(relax.op.add(var, relax.const(float(battrs.epsilon), "float32"))))
        new_weight = relax.op.multiply(weight, relax.op.reshape(scale, (out_channels, 1, 1, 1)))
        new_conv = nchw_conv2d(cattrs, x, new_weight, out_dtype=cattrs.out_dtype)
        bias = relax.op.subtract(beta, relax.op.multiply(mean, scale))
        return relax.op.add(new_conv, relax.op.reshape(bias, (1, out_channels, 1, 1)))

    return rewrite_call(out_pat, rewriter, func)


@tvm.transform.module_pass(opt_level=0, name="tvmnet.FoldBatchNorm")
class FoldBatchNorm:
    """Fold every inference-mode ``batch_norm`` that follows a ``conv2d`` into it."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        new = rewrite_relax_functions(mod, _rewrite_function)
        return relax.transform.DeadCodeElimination()(new) if new is not mod else mod
