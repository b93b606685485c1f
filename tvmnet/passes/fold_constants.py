"""FoldWeightArithmetic: evaluate the graph's constant weight arithmetic with NumPy.

Relax's ``FoldConstant`` evaluates every call on constants by legalizing it, building the
resulting TIR kernel with LLVM and running it: one LLVM build per call. MobileNet's BatchNorm
folding leaves 5 such calls per convolution (the scale, the scaled weight, the bias), the NHWC
conversion one weight transpose per convolution, and the 1x1 convs -> GEMM rewrite one weight
reshape each: ~300 builds, 20 s of every compile and of every tune's set-up on a 2-core machine
(MobileNet 0.25-96: FoldConstant 14.2 + 3.6 + 2.4 s).

This pass computes exactly those calls (elementwise add/subtract/multiply/divide, sqrt,
permute_dims, reshape on float constants) with NumPy in the calls' own dtype, so the
``FoldConstant`` after it finds nothing left to build. IEEE float32 add, subtract, multiply,
divide and sqrt are correctly rounded in both, so the folded weights are the same bits
``FoldConstant`` would produce. Any other call on constants is left to ``FoldConstant``.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

from tvmnet.passes._common import rewrite_relax_functions

_BINARY = {"relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply, "relax.divide": np.divide}
_UNARY = {"relax.sqrt": np.sqrt}
_OPS = {*_BINARY, *_UNARY, "relax.permute_dims", "relax.reshape"}


def _static_tensor(sinfo):
    """(shape, dtype) of a tensor struct info with a known static shape; None otherwise."""
    if not isinstance(sinfo, relax.TensorType) or sinfo.shape is None:
        return None
    try:
        shape = tuple(int(s) for s in sinfo.shape.values)
    except (TypeError, AttributeError):
        return None
    return shape, str(sinfo.dtype)


def evaluate(call: relax.Call, args: list, out_shape: tuple):
    """``call`` (result shape ``out_shape``) evaluated on the NumPy arrays ``args`` (its tensor
    operands), or None when this pass does not handle it."""
    name = call.op.name
    if name in _BINARY and len(args) == 2:
        out = _BINARY[name](args[0], args[1])
    elif name in _UNARY and len(args) == 1:
        out = _UNARY[name](args[0])
    elif name == "relax.permute_dims" and len(args) == 1:
        axes = call.attrs.axes
        out = np.transpose(args[0], None if axes is None else [int(a) for a in axes])
    elif name == "relax.reshape" and len(args) == 1:
        out = np.reshape(args[0], out_shape)
    else:
        return None
    return np.ascontiguousarray(out)


def _rewrite_function(func: relax.Function) -> relax.Function:
    @relax.expr_functor.mutator
    class Folder(relax.PyExprMutator):
        def constant_of(self, expr):
            if isinstance(expr, relax.Var):
                try:
                    expr = self.lookup_binding(expr)
                except Exception:  # noqa: BLE001 - a function parameter has no binding
                    return None
            return expr if isinstance(expr, Constant) else None

        def visit_call_(self, call):
            call = self.builder_.normalize(super().visit_call_(call))
            if not isinstance(call.op, tvm.ir.Op) or call.op.name not in _OPS:
                return call
            out_t = _static_tensor(call.ty)
            if out_t is None or out_t[1] not in ("float32", "float64"):
                return call
            tensor_args = call.args[:1] if call.op.name == "relax.reshape" else call.args
            consts = [self.constant_of(a) for a in tensor_args]
            if any(c is None for c in consts):
                return call
            arrays = [c.value.numpy() for c in consts]
            if any(str(a.dtype) != out_t[1] for a in arrays):
                return call
            out = evaluate(call, arrays, out_t[0])
            if out is None or out.shape != out_t[0] or str(out.dtype) != out_t[1]:
                return call
            return relax.const(out, out_t[1])

    return Folder().visit_expr(func)


@tvm.transform.module_pass(opt_level=0, name="tvmnet.FoldWeightArithmetic")
class FoldWeightArithmetic:
    """Constant elementwise arithmetic, transposes and reshapes of the weights, done in NumPy."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        new = rewrite_relax_functions(mod, _rewrite_function)
        return relax.transform.DeadCodeElimination()(new) if new is not mod else mod
