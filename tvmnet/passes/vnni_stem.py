"""The int8 stem (the first conv: 3x3, stride 2, padding 1, 3 input channels) on AVX-512 VNNI:
two kernels scheduled here, not by MetaSchedule.

1. ``prep``: the graph input's quantize, written padded and still NCHW, ``xp[c, 1 + h, 1 + w] =
   quantize(x[0, c, h, w])``, with the zero point on the border (a padded pixel then adds nothing,
   as the float model's zero padding). Rows in parallel, 16 lanes at a time.
2. ``conv``: the conv as a VNNI GEMM without im2col. One ``vpdpbusd`` step reads 4 bytes: the
   kernel row ``kh`` of channel ``c`` at the output pixel's window, ``xp[c, 2 oh + kh, 2 ow + kw]``
   for ``kw = 0..3``; those are contiguous in NCHW, and the fourth (``kw = 3``) has weight 0. So K is
   ``C x 3`` steps of 4 (9 for RGB), the weights are packed ``[N/16, C*3, 16, 4]``, and a tile of
   ``mr`` output columns x 16 ``nr`` channels keeps its accumulators in registers.

The arithmetic is that of ``QdqToInteger``'s stem, ``sum((x - zx) * w)``, computed as
``sum(x * w) - zx * sum(w)``: the second term is a constant folded into the bias. The
requantization is ``vnni_kernel``'s, so the output is bit-identical.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te
from tvm.script import tirx as T

from tvmnet.passes import vnni_kernel
from tvmnet.passes._common import requant_u8


def out_size(size: int) -> int:
    """Output rows (or columns) of a 3x3, stride 2, padding 1 conv."""
    return (size - 1) // 2 + 1


def padded_shape(c: int, h: int, w: int) -> tuple:
    """``prep``'s output: one border row above and below, one column left, two or more right (the
    last window reads ``kw = 3``), the row rounded up to 16 bytes."""
    return c, h + 2, -(-(w + 3) // 16) * 16


def block(ow: int, n: int):
    """(mr, nr): output columns and 16-channel groups of one register tile; a divisor of the output
    width. Measured on a Zen 4 (Dec 6), 0.5-224 (112 columns, 16 channels), us: 7 x 1 25, 14 x 1 27,
    16 x 1 37, 28 x 1 36; 1.0-224 (32 channels): 14 x 2 62, 8 x 2 65, 7 x 2 76, 7 x 1 84."""
    groups = n // 16
    for mr, nr in ((14, 2), (7, 1), (8, 2), (8, 1), (4, 1), (2, 1), (1, 1)):
        if ow % mr == 0 and groups % nr == 0:
            return mr, nr
    return None


def fits(c: int, h: int, w: int, n: int) -> bool:
    return n % 16 == 0 and h >= 2 and w >= 2 and block(out_size(w), n) is not None


def pack(w_ohwi: np.ndarray, bias: np.ndarray, zx: int):
    """(weights ``[N/16, C*3, 16, 4]`` int8, bias with ``- zx * sum(w)`` folded in) from the stem's
    OHWI weights (N, 3, 3, C) and int32 bias."""
    n, kh, kw, c = w_ohwi.shape
    packed = np.zeros((n // 16, c * 3, 16, 4), np.int8)
    w = w_ohwi.astype(np.int64)
    for ci in range(c):
        for r in range(kh):
            packed[:, ci * 3 + r, :, :kw] = w[:, r, :, ci].reshape(n // 16, 16, kw)
    folded = bias.reshape(n).astype(np.int64) - zx * w.reshape(n, -1).sum(axis=1)
    return packed, folded.astype(np.int32)


def prep(c: int, h: int, w: int, zp_dtype: str) -> tvm.tirx.PrimFunc:
    """x (1, C, H, W) float32, scale (1,), zero point (1,) -> uint8 ``padded_shape``, ``quantize``'s
    expression as Relax legalizes it: ``clip(round(x / scale) + zp, 0, 255)``."""
    _, hp, wp = padded_shape(c, h, w)

    @T.prim_func(private=True, s_tir=True)
    def kernel(
        x: T.Buffer((1, c, h, w), "float32"),
        scale: T.Buffer((1,), "float32"),
        zp: T.Buffer((1,), zp_dtype),
        out: T.Buffer((c, hp, wp), "uint8"),
    ):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        with T.sblock("root"):  # the root block that Relax's passes expect
            for row in T.parallel(c * hp):  # (channel, padded row); no local variables (each would be a workspace)
                with T.sblock("prep"):  # one opaque block per row: Relax's passes expect a compute block
                    vr = T.axis.spatial(c * hp, row)
                    T.reads(x[0, 0:c, 0:h, 0:w], scale[0], zp[0])
                    T.writes(out[vr // hp, vr % hp, 0:wp])
                    if vr % hp == 0 or vr % hp == hp - 1:
                        for j0 in range(wp // 16):
                            for j1 in T.vectorized(16):
                                out[vr // hp, vr % hp, j0 * 16 + j1] = T.Cast("uint8", zp[0])
                    else:
                        out[vr // hp, vr % hp, 0] = T.Cast("uint8", zp[0])
                        for j0 in range(w // 16):
                            for j1 in T.vectorized(16):
                                out[vr // hp, vr % hp, 1 + j0 * 16 + j1] = T.Cast(
                                    "uint8",
                                    T.max(
                                        T.min(
                                            T.round(x[0, vr // hp, vr % hp - 1, j0 * 16 + j1] / scale[0])
                                            + T.Cast("float32", zp[0]),
                                            T.float32(255),
                                        ),
                                        T.float32(0),
                                    ),
                                )
                        for j in range(w // 16 * 16, w):
                            out[vr // hp, vr % hp, 1 + j] = T.Cast(
                                "uint8",
                                T.max(
                                    T.min(
                                        T.round(x[0, vr // hp, vr % hp - 1, j] / scale[0]) + T.Cast("float32", zp[0]),
                                        T.float32(255),
                                    ),
                                    T.float32(0),
                                ),
                            )
                        for j in range(wp - w - 1):
                            out[vr // hp, vr % hp, w + 1 + j] = T.Cast("uint8", zp[0])

    return kernel


def compute(c: int, h: int, w: int, n: int) -> tvm.tirx.PrimFunc:
    """The stem conv's arithmetic (unscheduled): args xp, W (packed), bias, mult, zo, out (OH, OW, N)."""
    oh, ow = out_size(h), out_size(w)
    xp = te.placeholder(padded_shape(c, h, w), "uint8", name="xp")
    wt = te.placeholder((n // 16, c * 3, 16, 4), "int8", name="W")
    bias = te.placeholder((n,), "int32", name="bias")
    mult = te.placeholder((n,), "float32", name="mult")
    zo = te.placeholder((1,), "float32", name="zo")
    r = te.reduce_axis((0, c * 12), name="k")
    acc = te.compute(
        (oh, ow, n),
        lambda y, x, j: te.sum(
            xp[r // 12, 2 * y + r // 4 % 3, 2 * x + r % 4].astype("int32")
            * wt[j // 16, r // 4, j % 16, r % 4].astype("int32"),
            axis=r,
        ),
        name="acc",
    )
    out = te.compute((oh, ow, n), lambda y, x, j: requant_u8(acc[y, x, j], bias[j], mult[j], zo[0]), name="out")
    return te.create_prim_func([xp, wt, bias, mult, zo, out])


def scheduled(c: int, h: int, w: int, n: int) -> tvm.tirx.PrimFunc:
    """The stem conv, scheduled like ``vnni_kernel.scheduled``: tiles of ``block`` (columns of one
    output row x channel groups) in parallel, the reduction on ``vpdpbusd``, the requantization
    per tile, vectorized by 16."""
    from tvm import s_tir

    mr, nr = block(out_size(w), n)
    sch = s_tir.Schedule(compute(c, h, w, n))
    gemm, epilogue = sch.get_sblock("acc"), sch.get_sblock("out")
    y, x, j, r = sch.get_loops(gemm)
    xo, xi = sch.split(x, [None, mr])
    jo, ji, jv = sch.split(j, [None, nr, 16])
    ro, rv = sch.split(r, [None, 4])
    sch.reorder(y, xo, jo, ro, xi, ji, jv, rv)
    tile = sch.fuse(y, xo, jo)
    sch.parallel(tile)
    sch.reverse_compute_at(epilogue, tile)
    sch.decompose_reduction(gemm, ro)
    sch.tensorize(jv, vnni_kernel.register())
    sch.unroll(xi)
    sch.unroll(ji)
    _, lanes = sch.split(sch.get_loops(epilogue)[-1], [None, 16])
    sch.vectorize(lanes)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)
