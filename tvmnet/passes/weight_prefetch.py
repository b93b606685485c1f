"""PrefetchWeights: a tuned x86 GEMM prefetches the weights its next column strip will read.

MobileNet 1.0-224's 17 MB of weights do not stay in the cache between inferences on a small
VM (Zen 3 here keeps ~8 MB of its L3), so every pointwise GEMM streams its packed weights from
DRAM. Our GEMM schedules walk the packed weights strip by strip (16 output channels x all of K,
contiguous): each parallel iteration reads one strip for one block of rows, and the rows of a
strip come one after the other. The hardware prefetcher does not run a whole strip ahead, so
the first row block of each strip waits on DRAM.

This pass makes each iteration of the kernel's parallel loop issue ``prefetch`` (``tirx.prefetch``,
locality 2: into L2) for its share of the strip after the one it reads: iteration ``i`` of
``n`` prefetches cache lines ``[i*L/n, (i+1)*L/n)`` shifted by one strip (``L`` the weights'
lines, a strip ``L / shape[0]`` of the packed layout). The prefetches are spread over the
iteration's k loop (at most 4 per k step, e.g. one per step), where the iteration has one as a
direct child; otherwise they come as one burst at the iteration's start, if there are at most 64
(a longer burst fills the line-fill buffers: on Zen 3 the 7x7x1024 GEMM and the fc got slower
with 103 and 2560). A prefetch never faults and the indices are clamped to the buffer, so the
result is the same computation, bit for bit.

Applied to kernels named ``*matmul*`` with a weight buffer of at least 128 KB.

Zen 3, 1.0-224 (Dec 1): bursts at the iteration's start made the 14x14x512 GEMMs 5-9% faster in
place and the model 0.979-0.986x in two quiet A/Bs; spread over the k loop, they also reach the
7x7x1024 GEMM (-14% in place), and the model ran 0.978x the bursts-only build's time, per round
(docs/findings.md, "Weight prefetch").
"""

from __future__ import annotations

import math
from typing import Optional

import tvm
from tvm import tirx

LINE_BYTES = 64
MIN_BYTES = 128 * 1024
MAX_PER_ITER = 64
LOCALITY = 2
INTERLEAVED_PER_STEP = 4  # prefetches per step of the k loop, when they are spread over it
KERNELS = "matmul"  # the kernels (by name) the pass looks at
ATTR = "tvmnet.prefetch_weights"  # marks the kernels this pass changed


def prefetching_kernels(mod: tvm.IRModule) -> list:
    return sorted(
        gv.name_hint
        for gv, f in mod.functions.items()
        if isinstance(f, tirx.PrimFunc) and f.attrs and f.attrs.get(ATTR) is not None
    )


def _weights(func: tirx.PrimFunc):
    """The largest input buffer besides the first (the activation) and the last (the output)."""
    params = list(func.params)
    cand = [
        b
        for b in params[1:-1]
        if isinstance(b, tirx.Buffer) and len(b.shape) >= 2 and all(isinstance(s, tirx.IntImm) for s in b.shape)
    ]
    return max(cand, key=lambda b: math.prod(int(s) for s in b.shape), default=None)


def prepend_prefetches(
    loop: tirx.For, buf: tirx.Buffer, per_iter: int, ahead: int, locality: int, base=None
) -> tirx.For:
    """``loop`` whose iteration ``i`` first prefetches cache lines ``[b + ahead, b + per_iter +
    ahead)`` of ``buf`` (flat, clamped to its last element), ``b`` = ``base`` or ``i*per_iter``."""
    shape = [int(s) for s in buf.shape]
    numel = math.prod(shape)
    per_line = LINE_BYTES // (tvm.DataType(str(buf.dtype)).bits // 8)
    dt = str(loop.extent.ty)
    p = tirx.Var("pf", dt)
    line = (loop.loop_var * per_iter if base is None else base) + p + tirx.IntImm(dt, ahead)
    flat = tirx.Cast("int64", tirx.Min(line * per_line, tirx.IntImm(dt, numel - 1)))
    index, stride = [], 1
    for d in reversed(shape):
        index.append(tirx.FloorMod(tirx.FloorDiv(flat, tirx.IntImm("int64", stride)), tirx.IntImm("int64", d)))
        stride *= d
    addr = tirx.address_of(tirx.BufferLoad(buf, index[::-1]))
    pf = tirx.For(
        p,
        tirx.IntImm(dt, 0),
        tirx.IntImm(dt, per_iter),
        tirx.ForKind.SERIAL,
        tirx.Evaluate(tirx.call_intrin("void", "tirx.prefetch", addr, 0, locality, 1)),
    )
    return tirx.For(
        loop.loop_var,
        loop.min,
        loop.extent,
        loop.kind,
        tirx.SeqStmt([pf, loop.body]),
        loop.thread_binding,
        loop.annotations,
    )


def _interleaved(loop: tirx.For, buf: tirx.Buffer, per_iter: int, ahead: int):
    """``loop`` (parallel) whose iteration's ``per_iter`` prefetches are spread over its longest
    serial child loop (e.g. the k loop), a few per k step instead of one burst; None if it has none
    long enough."""
    body = loop.body
    children = list(body.seq) if isinstance(body, tirx.SeqStmt) else [body]
    inner = [
        c
        for c in children
        if isinstance(c, tirx.For) and c.kind == tirx.ForKind.SERIAL and isinstance(c.extent, tirx.IntImm)
    ]
    if not inner:
        return None
    k = max(inner, key=lambda c: int(c.extent))
    q = -(-per_iter // int(k.extent))
    if q > INTERLEAVED_PER_STEP:
        return None
    new_k = prepend_prefetches(k, buf, q, ahead, LOCALITY, base=loop.loop_var * per_iter + k.loop_var * q)
    children = [new_k if c.same_as(k) else c for c in children]
    return tirx.For(
        loop.loop_var,
        loop.min,
        loop.extent,
        loop.kind,
        tirx.SeqStmt(children) if len(children) > 1 else children[0],
        loop.thread_binding,
        loop.annotations,
    )


def with_prefetch(func: tirx.PrimFunc, weights: Optional[tirx.Buffer] = None):
    """``func`` with the strip-ahead prefetches in its outermost parallel loop (of ``weights``,
    default the largest weight parameter); None if it does not qualify."""
    import tvm_ffi

    w = weights if weights is not None else _weights(func)
    if w is None:
        return None
    shape = [int(s) for s in w.shape]
    elem = tvm.DataType(str(w.dtype)).bits // 8
    numel = math.prod(shape)
    if numel * elem < MIN_BYTES:
        return None
    per_line = LINE_BYTES // elem
    lines = -(-numel // per_line)
    ahead = lines // shape[0]
    seen = []

    def on_for(loop):
        if seen or loop.kind != tirx.ForKind.PARALLEL or not isinstance(loop.extent, tirx.IntImm):
            return loop
        per_iter = -(-lines // int(loop.extent))
        new = _interleaved(loop, w, per_iter, ahead)
        if new is None and per_iter <= MAX_PER_ITER:
            new = prepend_prefetches(loop, w, per_iter, ahead, LOCALITY)
        seen.append(new)
        return loop if new is None else new

    body = tvm_ffi.structural_map(func.body, (tirx.For, on_for), order="pre")
    if not seen or seen[0] is None:
        return None
    return tirx.PrimFunc(list(func.params), body, func.ret_type, func.attrs).with_attr(ATTR, 1)


def prefetches_on(arch: str) -> bool:
    """Whether compile runs this pass for ``arch``."""
    return arch == "x86_64"


def prefetched_kernel(arch: str, name: str) -> bool:
    """Whether compile runs this pass on the kernel ``name`` for ``arch`` (it adds prefetches
    where the kernel then qualifies, see ``with_prefetch``)."""
    return prefetches_on(arch) and KERNELS in name


def _packed_weights(func: tirx.PrimFunc) -> Optional[tirx.Buffer]:
    """The largest buffer a MetaSchedule layout-rewrite preproc block of ``func`` writes (the
    weights packed; the builder makes it the kernel's parameter), or None."""
    import tvm_ffi
    from tvm.s_tir import SBlock

    found = []

    def visit(block, visitor):
        if block.annotations.get("meta_schedule.layout_rewrite_preproc") is not None:
            found.extend(r.source for r in block.writes)  # TensorRegions: .source is the buffer
        visitor.default_visit(block)

    tvm_ffi.structural_visit(func.body, (SBlock, visit))
    return max(found, key=lambda b: math.prod(int(s) for s in b.shape), default=None)


def as_compiled(mod: tvm.IRModule) -> tvm.IRModule:
    """A scheduled GEMM candidate (one ``main``, the weights packed by a layout-rewrite preproc
    block) with the strip-ahead prefetches of its packed weights, as compile builds the kernel,
    where it qualifies; else ``mod``. ``tvmnet refine`` times candidates so: built bare, they had
    no prefetches and lost in place to the compiled kernel by up to ~25% (the 7x7 GEMMs)."""
    func = mod["main"]
    w = _packed_weights(func)
    new = with_prefetch(func, w) if w is not None else None
    if new is None:
        return mod
    out = tvm.IRModule(dict(mod.functions))
    out.update_func(out.get_global_var("main"), new)
    return out


@tvm.transform.module_pass(opt_level=0, name="tvmnet.PrefetchWeights")
def PrefetchWeights(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Strip-ahead weight prefetches in the scheduled GEMM kernels of an x86 module."""
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tirx.PrimFunc) and KERNELS in gv.name_hint:
            new = with_prefetch(func)
            if new is not None:
                mod.update_func(gv, new)
    return mod
