"""Schedule templates of our own that seed MetaSchedule's search (``tvmnet tune``).

MetaSchedule's generic x86 space (multi-level tiling, then vectorize/unroll rules) finds
~100-120 GFLOP/s for MobileNet's pointwise GEMMs on an AVX-512 core pair in a 30-min tune;
a register-blocked micro-kernel (the way BLAS libraries and XNNPACK write it) reaches
~210-230 GFLOP/s on the same kernels. So before the evolutionary search, ``tune`` measures
a small grid of such micro-kernels per GEMM kernel and commits them as ordinary records
(``seed_schedules`` below): they compete on measured time like any candidate, and since their
tile sizes are sampled (``sample_perfect_tile`` with a fixed decision), the search's
``MutateTileSize`` explores around them.

The micro-kernel, for ``out[b, i, j] = epilogue(sum_k X[b, i, k] * W[k, j])`` (the NHWC
pointwise convolution after ``PointwiseToGemm``)::

    parallel for (jo, io):                 # N/nj column panels x M/mi row blocks
      for ko:                              # K/kk
        unroll for ki:                     # kk
          unroll for ii:                   # mi rows: mi * nj/lanes accumulators in registers
            vector for ji:                 # nj columns: nj/lanes vector registers
              acc[ii, ji] += X[io*mi+ii, ko*kk+ki] * W[ko*kk+ki, jo*nj+ji]
      epilogue (bias, ReLU) on the mi x nj tile, vectorized

When no row tile divides M into full register blocks (the 7x7 layers: M = 49, whose only
divisor tile is 7 rows x 1 vector, 7 accumulators, too few to hide the FMA latency), the M axis
is padded up to a multiple of the tile (``pad_einsum``: X copied into a zero-padded buffer,
the epilogue writing only the real rows), at most ``PAD_WASTE`` of extra work: 49 -> 50 rows
in 5 x 16 tiles. Measured on Zen 3 (AVX2, 2 cores), each timed alone in turn: the 49x1024x1024
GEMM 1.3-1.5x faster than the best of a 2000-trial tune, the 49x512x1024 one 1.2-1.4x.

(A depthwise template of the same kind, a row of pixels x channel vectors in registers with
the padding made per output row, lost to MetaSchedule's own depthwise schedules here,
1.2-1.8x slower, so there is none.)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Tuple

from tvmnet.tune.logs import known_traces
from tvmnet.tune.measure import measure_per_task, postprocessed, tune_contexts
from tvmnet.tune.mslogging import keeps_metaschedule_logging

log = logging.getLogger(__name__)

# float32 lanes per vector register, and how many registers the accumulators may take
# (the rest hold the broadcast X value and the loaded W vectors)
LANES = {"avx512": 16, "avx2": 8, "sse": 4, "neon": 4, "neon-dotprod": 4}
ACC_REGS = {"avx512": 28, "avx2": 12, "sse": 12, "neon": 24, "neon-dotprod": 24}

ROW_TILES = (4, 5, 6, 7, 8, 14)
PAD_WASTE = 0.05  # a row tile that does not divide M pads it by at most this share
COL_VECTORS = (1, 2, 3, 4)  # nj = lanes * this
DEPTH_TILES = (4, 8)


def gemm_shape(func) -> Optional[Tuple[int, int, int]]:
    """(M, N, K) when ``func`` is a fused GEMM kernel this template schedules: one
    ``matmul`` block over (batch 1, i, j, k), spatial-spatial-spatial-reduce (the blocks after
    it become the tile's epilogue; a kernel where that fails gets no seed). None otherwise."""
    from tvm import s_tir

    try:
        sch = s_tir.Schedule(func)
        block = sch.get(sch.get_sblock("matmul"))
    except Exception:  # noqa: BLE001 - no block named matmul
        return None
    kinds = [int(iv.iter_type) for iv in block.iter_vars]
    if kinds != [0, 0, 0, 2]:
        return None
    extents = [int(iv.dom.extent) for iv in block.iter_vars]
    if extents[0] != 1:
        return None
    _, m, n, k = extents
    return m, n, k


def register_blocked_gemm(func, mi: int, nj: int, kk: int):
    """The micro-kernel above as a traced schedule of ``func`` (a ``tvm.s_tir.Schedule``)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    block = sch.get_sblock("matmul")
    if int(sch.get(sch.get_loops(block)[1]).extent) % mi:
        sch.pad_einsum(block, [1, mi, 1, 1])  # M up to a multiple of mi; the epilogue keeps the real rows
    after = []  # the elementwise chain after the GEMM (bias, ReLU): by consumers, not
    consumers = sch.get_consumers(block)  # the root's children (layout rewrites add blocks there)
    while len(consumers) == 1:
        after.append(consumers[0])
        consumers = sch.get_consumers(consumers[0])
    _, i, j, k = sch.get_loops(block)
    m, n, kd = (int(sch.get(x).extent) for x in (i, j, k))
    io, ii = sch.split(i, sch.sample_perfect_tile(i, n=2, max_innermost_factor=16, decision=[m // mi, mi]))
    jo, ji = sch.split(j, sch.sample_perfect_tile(j, n=2, max_innermost_factor=64, decision=[n // nj, nj]))
    ko, ki = sch.split(k, sch.sample_perfect_tile(k, n=2, max_innermost_factor=16, decision=[kd // kk, kk]))
    sch.reorder(jo, io, ko, ki, ii, ji)
    outer = sch.fuse(jo, io)
    sch.parallel(outer)
    for b in after[:-1]:  # bias add, ... : into the last elementwise block
        sch.compute_inline(b)
    if after:  # the epilogue runs on each tile while it is in cache
        sch.reverse_compute_at(after[-1], outer, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(after[-1])[-1])
    sch.vectorize(ji)
    sch.unroll(ii)
    sch.unroll(ki)
    sch.decompose_reduction(block, ko)
    return sch


def gemm_tiles(m: int, n: int, k: int, isa: str) -> List[Tuple[int, int, int]]:
    """The (mi, nj, kk) grid to measure for an M x N x K GEMM: row tiles dividing M (or padding
    it by at most ``PAD_WASTE``), column tiles of whole vectors dividing N, accumulators within
    the register file."""
    lanes, regs = LANES.get(isa, 4), ACC_REGS.get(isa, 12)
    tiles = []
    for mi in ROW_TILES:
        if m < mi or (-m % mi) > PAD_WASTE * m:
            continue
        for v in COL_VECTORS:
            nj = lanes * v
            if n % nj or mi * v > regs or mi * v < (8 if m % mi else 4):  # padding pays for full blocks only
                continue
            for kk in DEPTH_TILES:
                if k % kk == 0:
                    tiles.append((mi, nj, kk))
    return tiles


def seed_schedules_for(func, isa: str) -> list:
    """Traced schedules of ``func`` to measure as seeds; [] if no template covers it (or its
    shape admits no tile)."""
    shape = gemm_shape(func)
    if shape is None:
        return []
    seeds = []
    for tile in gemm_tiles(*shape, isa):
        try:
            seeds.append(register_blocked_gemm(func, *tile))
        except Exception as err:  # noqa: BLE001 - a tile the schedule primitives refuse is skipped
            log.debug("gemm seed %s refused: %s", tile, err)
    return seeds


# --------------------------------------------------------------- measured as seeds of a tune

# the seed phase runs when the budget leaves at least this many trials per kernel to tune
# (real tunes; the tests' tiny tunes skip it)
SEED_MIN_TRIALS_PER_TASK = 16


@keeps_metaschedule_logging
def packed_seeds(task, work_dir: Path, isa: str) -> list:
    """Our register-blocked GEMM micro-kernels (``seed_schedules_for``) for ``task``,
    each through the design space's postprocessors (weights packed, as compile lays them out);
    [] for a kernel the template does not cover."""

    grid = seed_schedules_for(task.dispatched[0], isa)
    if not grid:
        return []
    ctx = tune_contexts([task], work_dir)[0][0]
    return [p for p in (postprocessed(sch, ctx, task.task_name) for sch in grid) if p is not None]


@keeps_metaschedule_logging
def seed_schedules(
    tasks,
    contexts,
    db,
    builder,
    runner,
    target,
    isa: str,
    cost_model=None,
    on_batch=None,
    should_stop=lambda: False,
    limit: Optional[int] = None,
    per_kernel: Optional[int] = None,
) -> int:
    """Measure our register-blocked micro-kernels (``seed_schedules_for``) for every
    GEMM task, each as written and through the design space's postprocessors (which pack the
    weights: layout rewrite), and commit them to ``db`` with the times measured here.
    Seeds the database already holds (same trace) are not measured again, so a resumed or
    repeated run costs nothing. ``per_kernel`` caps the grid of each kernel (evenly spaced
    tiles of it, so that a small budget still covers every kernel). Returns the number of
    candidates measured."""

    def candidates_for(task, ctx):
        mod = task.dispatched[0]
        known = known_traces(db, db.commit_workload(mod)) if db.has_workload(mod) else set()
        pairs = []
        grid = seed_schedules_for(mod, isa)
        n = None if per_kernel is None else max(1, per_kernel // 2)  # each tile gives up to 2 variants
        if n is not None and len(grid) > n:
            grid = [grid[round(i * (len(grid) - 1) / max(1, n - 1))] for i in range(n)]
        for sch in grid:
            packed = postprocessed(sch, ctx, task.task_name)
            for v in [sch] + ([packed] if packed is not None else []):
                if str(v.trace) not in known:
                    known.add(str(v.trace))
                    pairs.append((v, v.trace))
        return pairs

    return measure_per_task(
        tasks, contexts, candidates_for, db, builder, runner, target, cost_model, on_batch, should_stop, limit
    )
