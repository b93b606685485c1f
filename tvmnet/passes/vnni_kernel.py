"""The int8 pointwise kernel for x86 CPUs with AVX-512 VNNI: a register-blocked GEMM on
``vpdpbusd`` with the layer's requantization in its epilogue, scheduled here (not by MetaSchedule).

    out[m, n] = clamp(round_half_even(float(sum_k A[m, k] * W[n, k] + bias[n]) * mult[n]) + zo, 0, 255)

``A`` is the uint8 NHWC activation as a matrix (H*W rows, K channels), ``W`` the int8 weights
packed at compile time as ``[N/16, K/4, 16, 4]``: the 64 bytes one ``vpdpbusd`` reads (16 output
channels x 4 input channels). Each step broadcasts 4 bytes of a row of ``A`` and accumulates 16
int32 lanes; a tile of ``mr`` rows x ``16 nr`` columns keeps its ``mr x nr`` accumulators in
registers over the whole K, then requantizes and stores uint8.

TVM 0.27's own ``dot_16x4_vnni`` does not build (its operands are int32x16 where the wheel's LLVM
declares ``vpdpbusd`` on 8-bit vectors; tvm-field-notes), so tvmnet registers its own, whose
accumulator is a local (register) buffer.
"""

from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm import te
from tvm.script import tirx as T

from tvmnet.passes._common import requant_u8

INTRIN = "tvmnet_dot_16x4_vnni"


@T.prim_func(s_tir=True)
def _desc(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        for i in T.serial(0, 16):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _impl(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(  # no local variables: each would be a workspace
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            C.vload([0], dtype="int32x16"),
            T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16), dtype="uint8x64"),
            B.vload([0, 0], dtype="int8x64"),
            dtype="int32x16",
        )


@functools.cache
def register() -> str:
    """Register the intrinsic (once per process); returns its name."""
    from tvm.s_tir import TensorIntrin

    TensorIntrin.register(INTRIN, _desc, _impl, override=True)
    return INTRIN


def has_vnni(target) -> bool:
    """Whether the LLVM target has AVX-512 VNNI."""
    from tvm.target import codegen

    return str(target.kind.name) == "llvm" and bool(codegen.target_has_features("avx512vnni", target))


def fits(m: int, k: int, n: int) -> bool:
    """Whether the kernel takes a GEMM of this shape (the packing needs N % 16 and K % 4; the row
    blocking needs a divisor of M among the block heights)."""
    return n % 16 == 0 and k % 4 == 0 and block(m, n) is not None


def block(m: int, n: int):
    """(mr, nr): rows and 16-column groups of one register tile. Measured on a Zen 4 (Dec 6) over
    0.5-224's pointwise shapes: 7 x 2 within a few percent of the best everywhere; 7 divides every
    MobileNet H*W at 224 (112^2 ... 7^2). Up to 32 zmm: mr*nr accumulators + nr weights + 1."""
    groups = n // 16
    for mr, nr in ((7, 2), (8, 2), (4, 2), (7, 1), (8, 1), (4, 1), (2, 1), (1, 1)):
        if m % mr == 0 and groups % nr == 0:
            return mr, nr
    return None


def pack_weights(w: np.ndarray) -> np.ndarray:
    """int8 weights ``[N, K]`` (OHWI of a 1x1 conv, flattened) -> ``[N/16, K/4, 16, 4]``."""
    n, k = w.shape
    return np.ascontiguousarray(w.reshape(n // 16, 16, k // 4, 4).transpose(0, 2, 1, 3))


def compute(m: int, k: int, n: int) -> tvm.tirx.PrimFunc:
    """The kernel's arithmetic (unscheduled): args A, W (packed), bias, mult, zo, out."""
    a = te.placeholder((m, k), "uint8", name="A")
    w = te.placeholder((n // 16, k // 4, 16, 4), "int8", name="W")
    bias = te.placeholder((n,), "int32", name="bias")
    mult = te.placeholder((n,), "float32", name="mult")
    zo = te.placeholder((1,), "float32", name="zo")
    r = te.reduce_axis((0, k), name="k")
    acc = te.compute(
        (m, n),
        lambda i, j: te.sum(a[i, r].astype("int32") * w[j // 16, r // 4, j % 16, r % 4].astype("int32"), axis=r),
        name="acc",
    )
    out = te.compute((m, n), lambda i, j: requant_u8(acc[i, j], bias[j], mult[j], zo[0]), name="out")
    return te.create_prim_func([a, w, bias, mult, zo, out])


def scheduled(m: int, k: int, n: int) -> tvm.tirx.PrimFunc:
    """The kernel for (M, K, N), scheduled: tiles of ``block(m, n)`` in parallel, the reduction
    tensorized on ``vpdpbusd``, the requantization per tile, vectorized by 16."""
    from tvm import s_tir

    mr, nr = block(m, n)
    sch = s_tir.Schedule(compute(m, k, n))
    gemm, epilogue = sch.get_sblock("acc"), sch.get_sblock("out")
    i, j, r = sch.get_loops(gemm)
    io, ii = sch.split(i, [None, mr])
    jo, ji, jv = sch.split(j, [None, nr, 16])
    ro, rv = sch.split(r, [None, 4])
    sch.reorder(io, jo, ro, ii, ji, jv, rv)
    tile = sch.fuse(io, jo)
    sch.parallel(tile)
    sch.reverse_compute_at(epilogue, tile)
    sch.decompose_reduction(gemm, ro)
    sch.tensorize(jv, register())
    sch.unroll(ii)
    sch.unroll(ji)
    _, lanes = sch.split(sch.get_loops(epilogue)[-1], [None, 16])
    sch.vectorize(lanes)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)
