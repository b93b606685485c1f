"""The memory-traffic model of the cost proxy (``memory_traffic``): the cache lines worker 0
misses in L1 and in L2 by a capacity model of the scheduled TIR loop nest, and the kernel's
compulsory lines; ``estimate(..., with_memory=True)`` reports them in ``Estimate.memory``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from tvmnet.proxy.codegen import threads_of

# ------------------------------------------------------------------------------- memory traffic
#
# A capacity model on the scheduled TIR loop nest (before lowering), from every block's
# declared reads/writes (``T.reads``/``T.writes``) in terms of the loops around it. For a loop
# L and a buffer B, F_B(L) is the number of distinct cache lines of B that one whole execution
# of L touches (the bounding box of B's accesses under L, loops outside L held fixed), and
# F(body of L) the lines of all buffers touched by ONE iteration of L. For a cache of C lines,
# the lines of B that L brings in are
#     T_B(L) = F_B(L)                               if F(body of L) <= C
#     T_B(L) = trips(L) * sum over children T_B     otherwise
# i.e. when one iteration's data fits, consecutive iterations keep what they share and each
# line of B comes in once; when it does not, every iteration brings its lines again. A
# parallel loop runs worker 0's share. T for the L1 and L2 sizes gives the lines each level
# misses. No prefetching, no conflict misses, padding conditions ignored.

CACHES = {  # mcpu -> (L1d bytes per core, L2 bytes per core)
    "cortex-a53": (32 << 10, 128 << 10),  # rpi3: 512 KB L2 shared by 4 cores
    "cortex-a72": (32 << 10, 256 << 10),  # rpi4: 1 MB L2 shared by 4 cores
    "cortex-a76": (64 << 10, 512 << 10),  # rpi5: 512 KB private L2
}
DEFAULT_CACHES = (32 << 10, 1 << 20)  # Skylake-SP / Cascade Lake: 32 KB L1d, 1 MB L2


def _bound(e, env) -> Tuple[int, int]:
    """Interval of an integer TIR expression; ``env`` maps variables to intervals or to
    expressions (block iterators bound to loop expressions)."""
    import tvm

    t = tvm.tirx
    if isinstance(e, t.IntImm):
        v = int(e.value)
        return v, v
    if isinstance(e, t.Var):
        b = env.get(e)
        if b is None:
            return 0, 0
        if isinstance(b, tuple):
            return b
        return _bound(b, env)
    if isinstance(e, t.Cast):
        return _bound(e.value, env)
    if isinstance(e, (t.Add, t.Sub, t.Mul, t.FloorDiv, t.FloorMod, t.Div, t.Mod, t.Min, t.Max)):
        a0, a1 = _bound(e.a, env)
        b0, b1 = _bound(e.b, env)
        if isinstance(e, t.Add):
            return a0 + b0, a1 + b1
        if isinstance(e, t.Sub):
            return a0 - b1, a1 - b0
        if isinstance(e, t.Mul):
            ps = (a0 * b0, a0 * b1, a1 * b0, a1 * b1)
            return min(ps), max(ps)
        if isinstance(e, t.Min):
            return min(a0, b0), min(a1, b1)
        if isinstance(e, t.Max):
            return max(a0, b0), max(a1, b1)
        if b0 == b1 and b0 > 0:
            d = b0
            if isinstance(e, (t.FloorDiv, t.Div)):
                return a0 // d, a1 // d
            if a1 - a0 + 1 >= d or a0 // d != a1 // d:
                return 0, d - 1
            return a0 % d, a1 % d
        return a0, a1
    return 0, 0


@dataclass
class _Node:
    var: object = None  # loop variable (None: the root)
    extent: int = 1
    parallel: bool = False
    children: List["_Node"] = field(default_factory=list)
    accesses: List[tuple] = field(default_factory=list)  # (buffer, [(min expr, extent)], bindings)


def _loop_tree(func) -> _Node:
    import tvm

    t, s = tvm.tirx, tvm.s_tir
    root = _Node()

    def visit(stmt, node, binds):
        if stmt is None:
            return
        if isinstance(stmt, t.SeqStmt):
            for x in stmt.seq:
                visit(x, node, binds)
        elif isinstance(stmt, t.For):
            ext = stmt.extent
            child = _Node(
                stmt.loop_var, int(ext.value) if isinstance(ext, t.IntImm) else 1, stmt.kind == t.ForKind.PARALLEL
            )
            node.children.append(child)
            visit(stmt.body, child, binds)
        elif isinstance(stmt, s.SBlockRealize):
            blk = stmt.block
            b2 = dict(binds)
            for iv, val in zip(blk.iter_vars, stmt.iter_values):
                b2[iv.var] = val
            for reg in list(blk.reads) + list(blk.writes):
                buf = getattr(reg, "buffer", None) or reg.source
                node.accesses.append(
                    (
                        buf,
                        [(r.min, int(r.extent.value) if isinstance(r.extent, t.IntImm) else 1) for r in reg.region],
                        b2,
                    )
                )
            visit(blk.body, node, b2)
        elif isinstance(stmt, t.IfThenElse):
            visit(stmt.then_case, node, binds)
            visit(stmt.else_case, node, binds)
        elif hasattr(stmt, "body"):
            visit(stmt.body, node, binds)

    visit(func.body, root, {})
    return root


def _all_accesses(node: _Node, loops: list):
    for a in node.accesses:
        yield a, loops
    for c in node.children:
        yield from _all_accesses(c, loops + [c])


def _footprint(node: _Node, line_bytes: int, with_self: bool, threads: int = 1) -> Dict[str, float]:
    """Buffer -> distinct cache lines touched by one execution of ``node`` (``with_self``) or
    by one iteration of it (its own variable held at 0). A parallel loop counts one worker's
    share of its iterations."""
    boxes: Dict[str, list] = {}
    dtype_bytes: Dict[str, int] = {}
    own = [node] if node.var is not None and with_self else []
    for (buf, region, binds), loops in _all_accesses(node, own):
        env = dict(binds)
        for lp in loops:
            ext = math.ceil(lp.extent / threads) if lp.parallel else lp.extent
            env[lp.var] = (0, ext - 1)
        box = []
        for mn, ext in region:
            lo, hi = _bound(mn, env)
            box.append((lo, hi + ext - 1))
        key = str(buf.name)
        old = boxes.get(key)
        boxes[key] = box if old is None else [(min(x[0], y[0]), max(x[1], y[1])) for x, y in zip(old, box)]
        dtype_bytes[key] = _dtype_bytes(buf.dtype)
    lines: Dict[str, float] = {}
    for key, box in boxes.items():
        n = 1.0
        for lo, hi in box[:-1]:
            n *= hi - lo + 1
        if box:
            lo, hi = box[-1]
            n *= math.ceil((hi - lo + 1) * dtype_bytes[key] / line_bytes)
        lines[key] = n
    return lines


def _footprint_lines(node: _Node, line_bytes: int) -> float:
    """Distinct cache lines one execution of ``node`` touches, all buffers."""
    return sum(_footprint(node, line_bytes, True).values())


def _dtype_bytes(dtype) -> int:
    import tvm

    dt = tvm.DataType(str(dtype))
    return max(1, dt.bits * dt.lanes // 8)


def _traffic(node: _Node, cap_lines: float, threads: int, line_bytes: int, memo: dict) -> Dict[str, float]:
    """Buffer -> lines brought into a cache of ``cap_lines`` lines by one execution of ``node``."""
    if node.var is not None:
        key = (id(node), "body")
        body = memo.get(key)
        if body is None:
            body = memo[key] = sum(_footprint(node, line_bytes, False, threads).values())
        if body <= cap_lines:
            key = (id(node), "all")
            if key not in memo:
                memo[key] = _footprint(node, line_bytes, True, threads)
            return memo[key]
    trips = node.extent if node.var is not None else 1
    if node.parallel:
        trips = math.ceil(trips / threads)
    total: Dict[str, float] = {}
    for c in node.children:
        for b, v in _traffic(c, cap_lines, threads, line_bytes, memo).items():
            total[b] = total.get(b, 0.0) + v
    if node.accesses:  # blocks right under this loop: their lines of one iteration
        for b, v in _footprint(_Node(None, 1, False, [], node.accesses), line_bytes, True).items():
            total[b] = total.get(b, 0.0) + v
    return {b: trips * v for b, v in total.items()}


def memory_traffic(scheduled_mod, spec, line_bytes: int = 64) -> Dict[str, float]:
    """Cache lines worker 0 misses in L1 and in L2 (``l1_lines``, ``l2_lines``) by the capacity
    model above, and the kernel's compulsory lines (``cold_lines``: every buffer once)."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    if isinstance(scheduled_mod, tvm.tirx.PrimFunc):
        scheduled_mod = tvm.IRModule({"main": scheduled_mod})
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(scheduled_mod)
    func = next(iter(mod.functions.values()))
    tree = _loop_tree(func)
    l1, l2 = CACHES.get(str(spec.target.get("mcpu")), DEFAULT_CACHES)
    threads = threads_of(spec)
    memo: dict = {}
    return {
        "l1_lines": sum(_traffic(tree, l1 / line_bytes, threads, line_bytes, memo).values()),
        "l2_lines": sum(_traffic(tree, l2 / line_bytes, threads, line_bytes, memo).values()),
        "cold_lines": sum(_footprint_lines(c, line_bytes) for c in tree.children),
    }
