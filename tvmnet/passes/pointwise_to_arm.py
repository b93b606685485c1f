"""PointwiseToArm: the int8 1x1 convolutions (NHWC, after ``QdqToInteger("NHWC")``) on an aarch64
board as calls of ``arm_kernel``'s GEMM: ``sdot`` where the CPU has the dot product (Pi 5), ``smlal``
where it has not (Pi 4, Pi 3B). The same rewrite as ``PointwiseToVnni`` (see there for the before and
after), with the ARM kernel's weight packing; bit-identical to the conv it replaces.
"""

from __future__ import annotations

import numpy as np
import tvm

from tvmnet.passes import arm_kernel
from tvmnet.passes.pointwise_to_vnni import rewrite_pointwise


class ArmBackend:
    """sdot where the CPU has the dot product; else smull (two products summed in int16, 2x the
    multiply-adds per instruction of smlal) where K is a multiple of 16 and no weight is -128
    (``arm_kernel.int16_pairs_fit``), smlal otherwise."""

    def __init__(self, kind: str):
        self.kind = kind

    def choose(self, m: int, k: int, n: int, w: np.ndarray):
        kind = self.kind
        if kind == arm_kernel.SMLAL and arm_kernel.fits(arm_kernel.SMULL, m, k, n) and arm_kernel.int16_pairs_fit(w):
            kind = arm_kernel.SMULL
        return arm_kernel.PREFIX[kind] if arm_kernel.fits(kind, m, k, n) else None

    def pack(self, variant: str, w: np.ndarray, bias: np.ndarray):
        return arm_kernel.pack(arm_kernel.KIND_OF[variant], w, bias)

    def scheduled(self, variant: str, m: int, k: int, n: int):
        return arm_kernel.scheduled(arm_kernel.KIND_OF[variant], m, k, n)


@tvm.transform.module_pass(opt_level=0, name="tvmnet.PointwiseToArm")
class PointwiseToArm:
    """Rewrite every int8 NHWC 1x1 convolution into the ARM GEMM of ``kind`` (``arm_kernel.SDOT``
    or ``SMLAL``; ``arm_kernel.kind_for(target)`` picks it)."""

    def __init__(self, kind: str):
        self.kind = kind

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_pointwise(mod, ArmBackend(self.kind))
