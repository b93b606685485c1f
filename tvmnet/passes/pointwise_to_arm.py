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
    def __init__(self, kind: str):
        self.kind = kind
        self.prefix = "arm_sdot_gemm" if kind == arm_kernel.SDOT else "arm_smlal_gemm"

    def fits(self, m: int, k: int, n: int) -> bool:
        return arm_kernel.fits(self.kind, m, k, n)

    def pack(self, w: np.ndarray, bias: np.ndarray):
        return arm_kernel.pack(self.kind, w, bias)

    def scheduled(self, m: int, k: int, n: int):
        return arm_kernel.scheduled(self.kind, m, k, n)


@tvm.transform.module_pass(opt_level=0, name="tvmnet.PointwiseToArm")
class PointwiseToArm:
    """Rewrite every int8 NHWC 1x1 convolution into the ARM GEMM of ``kind`` (``arm_kernel.SDOT``
    or ``SMLAL``; ``arm_kernel.kind_for(target)`` picks it)."""

    def __init__(self, kind: str):
        self.kind = kind

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_pointwise(mod, ArmBackend(self.kind))
