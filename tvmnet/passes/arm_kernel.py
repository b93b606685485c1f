"""The int8 pointwise kernel for aarch64 boards: a register-blocked GEMM on NEON with the layer's
requantization in its epilogue, scheduled here (not by MetaSchedule); ``vnni_kernel``'s sibling.

    out[m, n] = clamp(round_half_even(float(sum_k A[m, k] * W[n, k] + bias[n]) * mult[n]) + zo, 0, 255)

``A`` is uint8 (the activations, zero point 0), ``W`` int8. Two inner steps, by the board's CPU:

- ``sdot`` (Cortex-A76, Pi 5: ``dotprod``): 4 output channels x 4 input channels per instruction,
  signed x signed. The activation's 4 bytes are broadcast with their top bits flipped
  (``a - 128`` as int8), so the kernel sums ``(a - 128) * w`` and the bias carries ``128 * sum(w)``
  (``pack``): the same integers. Weights packed ``[N/4, K/4, 4, 4]``.
- ``smlal`` (Cortex-A72 and A53, Pi 4 and Pi 3B: no dot product): 8 output channels x 1 input
  channel, the activation widened to int16 and broadcast, the weights widened to int16 at compile
  time and packed ``[N/8, K, 8]``; ``smull`` + add (LLVM fuses them into ``smlal``).

TVM's own ARM intrinsics (``dot_4x4_i8i8s32_neon`` / ``_sdot``) are signed x signed and declare
local variables, which this TVM allocates from the workspace pool inside the parallel loop
(``vnni_kernel``); tvmnet registers its own.
"""

from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm import te
from tvm.script import tirx as T

from tvmnet.passes._common import requant_u8

SDOT, SMLAL, SMULL = "tvmnet_dot_4x4_u8s8_sdot", "tvmnet_mla_8x1_u8s16_smlal", "tvmnet_dot_1x16_u8s8_smull"
PREFIX = {SDOT: "arm_sdot_gemm", SMLAL: "arm_smlal_gemm", SMULL: "arm_smull_gemm"}
KIND_OF = {v: k for k, v in PREFIX.items()}


def _pair_k(lane, j):
    """The input channel (of 16) that ``sadalp`` lane ``lane`` (0..3) sums as its ``j``-th (0..3) term:
    smull/smlal multiply bytes 0-7 and 8-15 into 8 int16 lanes, sadalp adds int16 lanes 2l and 2l+1."""
    return (j // 2) * 8 + 2 * lane + j % 2


@T.prim_func(s_tir=True)
def _sdot_desc(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((4, 4), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        for i in T.serial(0, 4):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + (T.cast(A[vk], "int32") - 128) * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _sdot_impl(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((4, 4), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(  # no local variables: each would be a workspace
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
            C.vload([0], dtype="int32x4"),
            T.reinterpret(
                T.broadcast(
                    T.bitwise_xor(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), T.int32(-2139062144)), 4
                ),
                dtype="int8x16",
            ),
            B.vload([0, 0], dtype="int8x16"),
            dtype="int32x4",
        )


@T.prim_func(s_tir=True)
def _smlal_desc(
    A: T.Buffer((1,), "uint8", offset_factor=1),
    B: T.Buffer((8,), "int16", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:1], B[0:8])
        T.writes(C[0:8])
        for i in T.serial(0, 8):
            with T.sblock("update"):
                vi = T.axis.remap("S", [i])
                C[vi] = C[vi] + T.cast(A[0], "int32") * T.cast(B[vi], "int32")


@T.prim_func(s_tir=True)
def _smlal_impl(
    A: T.Buffer((1,), "uint8", offset_factor=1),
    B: T.Buffer((8,), "int16", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:1], B[0:8])
        T.writes(C[0:8])
        C[T.ramp(T.int32(0), 1, 4)] = C.vload([0], dtype="int32x4") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v4i32"),
            T.broadcast(T.cast(A[0], "int16"), 4),
            B.vload([0], dtype="int16x4"),
            dtype="int32x4",
        )
        C[T.ramp(T.int32(4), 1, 4)] = C.vload([4], dtype="int32x4") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v4i32"),
            T.broadcast(T.cast(A[0], "int16"), 4),
            B.vload([4], dtype="int16x4"),
            dtype="int32x4",
        )


@T.prim_func(s_tir=True)
def _smull_desc(
    A: T.Buffer((16,), "uint8", offset_factor=1),
    B: T.Buffer((16,), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:16], B[0:16])
        T.writes(C[0:4])
        for lane in T.serial(0, 4):
            for j in T.serial(0, 4):
                with T.sblock("update"):
                    vl, vj = T.axis.remap("SR", [lane, j])
                    C[vl] = C[vl] + (T.cast(A[(vj // 2) * 8 + 2 * vl + vj % 2], "int32") - 128) * T.cast(
                        B[(vj // 2) * 8 + 2 * vl + vj % 2], "int32"
                    )


@T.prim_func(s_tir=True)
def _smull_impl(
    A: T.Buffer((16,), "uint8", offset_factor=1),
    B: T.Buffer((16,), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:16], B[0:16])
        T.writes(C[0:4])
        C[T.ramp(T.int32(0), 1, 4)] = C.vload([0], dtype="int32x4") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"),
            T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                T.reinterpret(T.bitwise_xor(A.vload([0], "uint8x8"), T.broadcast(T.uint8(128), 8)), dtype="int8x8"),
                B.vload([0], dtype="int8x8"),
                dtype="int16x8",
            )
            + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                T.reinterpret(T.bitwise_xor(A.vload([8], "uint8x8"), T.broadcast(T.uint8(128), 8)), dtype="int8x8"),
                B.vload([8], dtype="int8x8"),
                dtype="int16x8",
            ),
            dtype="int32x4",
        )


def int16_pairs_fit(w: np.ndarray) -> bool:
    """Whether SMULL's int16 sums of two products cannot overflow: |a - 128| <= 128 and |w| <= 127
    (ONNX Runtime's symmetric int8 weights are in [-127, 127]), so |p1 + p2| <= 32512."""
    return int(w.min()) > -128


@functools.cache
def register(kind: str) -> str:
    """Register the intrinsic of ``kind`` (SDOT or SMLAL) once per process; returns its name."""
    from tvm.s_tir import TensorIntrin

    desc, impl = {SDOT: (_sdot_desc, _sdot_impl), SMLAL: (_smlal_desc, _smlal_impl), SMULL: (_smull_desc, _smull_impl)}[
        kind
    ]
    TensorIntrin.register(kind, desc, impl, override=True)
    return kind


def kind_for(target):
    """SDOT or SMLAL for an aarch64 LLVM target, else None."""
    from tvm.target import codegen

    if str(target.kind.name) != "llvm" or not str(target.attrs.get("mtriple", "")).startswith("aarch64"):
        return None
    return SDOT if codegen.target_has_features("dotprod", target) else SMLAL


def _geometry(kind: str):
    """(output channels per step, input channels per step)."""
    return {SDOT: (4, 4), SMLAL: (8, 1), SMULL: (1, 16)}[kind]


def block(kind: str, m: int, n: int):
    """(mr, nr): rows and channel groups of one register tile, up to 32 NEON registers (mr * nr
    accumulators of 4 int32, the weights, the broadcast)."""
    lanes, _ = _geometry(kind)
    groups = n // lanes
    tiles = ((7, 4), (4, 4), (7, 2), (8, 2), (4, 2), (2, 2), (7, 1), (4, 1), (2, 1), (1, 1))
    if kind == SMLAL:  # a group is 8 channels: two accumulators
        tiles = ((7, 2), (4, 3), (4, 2), (8, 1), (7, 1), (4, 1), (2, 1), (1, 1))
    if kind == SMULL:  # a group is 1 channel: one accumulator; a row's 16 bytes and a channel's stay in registers
        tiles = ((4, 4), (7, 2), (4, 2), (2, 4), (7, 1), (4, 1), (2, 1), (1, 1))
    for mr, nr in tiles:
        if m % mr == 0 and groups % nr == 0:
            return mr, nr
    return None


def fits(kind: str, m: int, k: int, n: int) -> bool:
    lanes, kstep = _geometry(kind)
    return n % lanes == 0 and k % kstep == 0 and block(kind, m, n) is not None


def pack(kind: str, w: np.ndarray, bias: np.ndarray):
    """(packed weights, bias) for int8 weights ``[N, K]`` and the int32 bias: SDOT
    ``[N/4, K/4, 4, 4]`` int8 with ``128 * sum(w)`` added to the bias; SMLAL ``[N/8, K, 8]`` int16."""
    n, k = w.shape
    if kind == SMULL:  # read as it is: a channel's 16 input channels per step are contiguous
        return np.ascontiguousarray(w), (bias.astype(np.int64) + 128 * w.astype(np.int64).sum(axis=1)).astype(np.int32)
    if kind == SDOT:
        packed = np.ascontiguousarray(w.reshape(n // 4, 4, k // 4, 4).transpose(0, 2, 1, 3))
        return packed, (bias.astype(np.int64) + 128 * w.astype(np.int64).sum(axis=1)).astype(np.int32)
    return np.ascontiguousarray(w.astype(np.int16).reshape(n // 8, 8, k).transpose(0, 2, 1)), bias


def compute(kind: str, m: int, k: int, n: int) -> tvm.tirx.PrimFunc:
    """The kernel's arithmetic (unscheduled): args A, W (packed), bias, mult, zo, out."""
    a = te.placeholder((m, k), "uint8", name="A")
    bias = te.placeholder((n,), "int32", name="bias")
    mult = te.placeholder((n,), "float32", name="mult")
    zo = te.placeholder((1,), "float32", name="zo")
    r = te.reduce_axis((0, k), name="k")
    if kind == SMULL:
        return _smull_compute(a, bias, mult, zo, m, k, n)
    if kind == SDOT:
        w = te.placeholder((n // 4, k // 4, 4, 4), "int8", name="W")
        acc = te.compute(
            (m, n),
            lambda i, j: te.sum(
                (a[i, r].astype("int32") - 128) * w[j // 4, r // 4, j % 4, r % 4].astype("int32"), axis=r
            ),
            name="acc",
        )
    else:
        w = te.placeholder((n // 8, k, 8), "int16", name="W")
        acc = te.compute(
            (m, n),
            lambda i, j: te.sum(a[i, r].astype("int32") * w[j // 8, r, j % 8].astype("int32"), axis=r),
            name="acc",
        )
    out = te.compute((m, n), lambda i, j: requant_u8(acc[i, j], bias[j], mult[j], zo[0]), name="out")
    return te.create_prim_func([a, w, bias, mult, zo, out])


def _smull_compute(a, bias, mult, zo, m: int, k: int, n: int) -> tvm.tirx.PrimFunc:
    """SMULL: 4 partial sums per (row, channel), one per ``sadalp`` lane, added in the epilogue."""
    w = te.placeholder((n, k), "int8", name="W")
    kb = te.reduce_axis((0, k // 16), name="kb")
    j = te.reduce_axis((0, 4), name="j")
    acc = te.compute(
        (m, n, 4),
        lambda i, c, lane: te.sum(
            (a[i, kb * 16 + _pair_k(lane, j)].astype("int32") - 128) * w[c, kb * 16 + _pair_k(lane, j)].astype("int32"),
            axis=[kb, j],
        ),
        name="acc",
    )
    out = te.compute(
        (m, n),
        lambda i, c: requant_u8(acc[i, c, 0] + acc[i, c, 1] + acc[i, c, 2] + acc[i, c, 3], bias[c], mult[c], zo[0]),
        name="out",
    )
    return te.create_prim_func([a, w, bias, mult, zo, out])


def _schedule_smull(m: int, k: int, n: int):
    """The tile loop is the epilogue's, the partial sums computed at it (``reverse_compute_at`` fails
    on the lane axis that the epilogue reads by constant index)."""
    from tvm import s_tir

    mr, nr = block(SMULL, m, n)
    sch = s_tir.Schedule(compute(SMULL, m, k, n))
    gemm, epilogue = sch.get_sblock("acc"), sch.get_sblock("out")
    i, c = sch.get_loops(epilogue)
    io, ii = sch.split(i, [None, mr])
    co, ci = sch.split(c, [None, nr])
    sch.reorder(io, co, ii, ci)
    tile = sch.fuse(io, co)
    sch.parallel(tile)
    sch.compute_at(gemm, tile, preserve_unit_loops=True)
    gi, gc, lane, kb, j = sch.get_loops(gemm)[1:]
    sch.reorder(kb, gi, gc, lane, j)
    sch.decompose_reduction(gemm, kb)
    sch.tensorize(lane, register(SMULL))
    sch.unroll(gi)
    sch.unroll(gc)
    sch.unroll(ii)
    sch.unroll(ci)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def scheduled(kind: str, m: int, k: int, n: int) -> tvm.tirx.PrimFunc:
    """The kernel for (M, K, N), scheduled like ``vnni_kernel.scheduled``: tiles in parallel, the
    reduction tensorized, the requantization per tile, vectorized by 4."""
    from tvm import s_tir

    if kind == SMULL:
        return _schedule_smull(m, k, n)
    lanes, kstep = _geometry(kind)
    mr, nr = block(kind, m, n)
    sch = s_tir.Schedule(compute(kind, m, k, n))
    gemm, epilogue = sch.get_sblock("acc"), sch.get_sblock("out")
    i, j, r = sch.get_loops(gemm)
    io, ii = sch.split(i, [None, mr])
    jo, ji, jv = sch.split(j, [None, nr, lanes])
    if kstep > 1:
        ro, rv = sch.split(r, [None, kstep])
        sch.reorder(io, jo, ro, ii, ji, jv, rv)
    else:
        ro = r
        sch.reorder(io, jo, ro, ii, ji, jv)
    tile = sch.fuse(io, jo)
    sch.parallel(tile)
    sch.reverse_compute_at(epilogue, tile)
    sch.decompose_reduction(gemm, ro)
    sch.tensorize(jv, register(kind))
    sch.unroll(ii)
    sch.unroll(ji)
    _, vec = sch.split(sch.get_loops(epilogue)[-1], [None, 4])
    sch.vectorize(vec)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)
