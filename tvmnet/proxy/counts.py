"""Exact basic-block execution counts of a kernel's LLVM IR (``block_counts``).

The IR's control flow (loops, bounds, padding guards, the vectoriser's remainder and runtime
alias checks) depends on induction variables and constants only, so a small interpreter
executes the integer slice that decides the branches (scalars and integer vectors; pointers as
distinct buffers far apart, so alias checks pass as they do at run time; allocations never
null; runtime calls return 0). A loop entered again with the same live-in values is not re-run:
its summary is reused. Parallel loops run as worker 0 of ``num-cores`` workers, the one with
the largest chunk: the estimate is the slowest worker's time (the kernel's wall time), not the
sum over cores. A branch that is still not computable takes the side its ``!prof`` weights
favour (``Estimate.unknown_branches`` counts them; 0 in practice).
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

from tvmnet.proxy.ir import _BINOPS, _CASTS, _INTRINSICS, Block, Func, Inst, _int_width, _split_top, _tinfo

MAX_STEPS = 20_000_000  # interpreted block executions per function before giving up


def _norm(v: int, w: int) -> int:
    if w == 1:
        return v & 1
    v &= (1 << w) - 1
    return v - (1 << w) if v >> (w - 1) else v


def _u(v: int, w: int) -> int:
    return v & ((1 << w) - 1)


def _binop(op: str, x: int, y: int, w: int) -> Optional[int]:
    if op == "add":
        return x + y
    if op == "sub":
        return x - y
    if op == "mul":
        return x * y
    if op == "shl":
        return x << (y & 127)
    if op == "lshr":
        return _u(x, w) >> (y & 127)
    if op == "ashr":
        return x >> (y & 127)
    if op == "and":
        return x & y
    if op == "or":
        return x | y
    if op == "xor":
        return x ^ y
    if y == 0:
        return None
    if op == "udiv":
        return _u(x, w) // _u(y, w)
    if op == "urem":
        return _u(x, w) % _u(y, w)
    if op == "sdiv":
        return abs(x) // abs(y) * (1 if (x >= 0) == (y >= 0) else -1)
    return abs(x) % abs(y) * (1 if x >= 0 else -1)  # srem


def _dominators(func: Func) -> Dict[str, set]:
    order = func.order
    preds = {b: [] for b in order}
    for b in order:
        for s in func.blocks[b].succs:
            if s in preds:
                preds[s].append(b)
    entry = order[0]
    dom = {b: set(order) for b in order}
    dom[entry] = {entry}
    changed = True
    while changed:
        changed = False
        for b in order[1:]:
            ps = [dom[p] for p in preds[b]]
            new = set.intersection(*ps) | {b} if ps else {b}
            if new != dom[b]:
                dom[b], changed = new, True
    return dom, preds


def _loops(func: Func):
    """Natural loops: header -> set of blocks (loops sharing a header merged)."""
    dom, preds = _dominators(func)
    loops: Dict[str, set] = {}
    for b in func.order:
        for s in func.blocks[b].succs:
            if s in dom.get(b, ()):  # back edge b -> s
                body = loops.setdefault(s, {s})
                stack = [b]
                while stack:
                    x = stack.pop()
                    if x not in body:
                        body.add(x)
                        stack.extend(preds[x])
    return loops


class _Interp:
    """Executes the branch-deciding integer slice of one function; counts block executions."""

    def __init__(self, func: Func, known: Dict[str, int]):
        self.f = func
        self.known = known
        self.bases: Dict[str, int] = {}
        self.unknown_branches = 0
        defs = {}
        for b in func.blocks.values():
            for ins in b.phis + b.insts:
                if ins.dst:
                    defs[ins.dst] = (b.name, ins)
        self.defs = defs
        # the slice: every value a terminator's decision depends on
        need, stack = set(), []
        for b in func.blocks.values():
            t = b.term
            if t is not None and t.op == "br" and t.args and t.args[0]:
                stack.append(t.args[0])
            elif t is not None and t.op == "switch" and t.args and t.args[0]:
                stack.append(t.args[0])
        while stack:
            v = stack.pop()
            if v in need or not v.startswith("%"):
                continue
            need.add(v)
            d = defs.get(v)
            if d is None:
                continue
            stack.extend(x for x in _operands(d[1]) if isinstance(x, str))
        self.need = need
        self.slice = {
            n: ([p for p in b.phis if p.dst in need], [i for i in b.insts if i.dst in need])
            for n, b in func.blocks.items()
        }
        # loops, innermost first for each block, with live-in / live-out slice values
        self.loops = _loops(func)
        uses_in = {n: set() for n in func.blocks}
        for n, (phis, insts) in self.slice.items():
            for p in phis:  # a phi's operands count as used in the phi's block
                uses_in[n].update(v for v, _ in p.args)
            for i in insts:
                uses_in[n].update(a for a in _operands(i))
            t = func.blocks[n].term
            if t is not None and t.args and t.op in ("br", "switch") and t.args[0]:
                uses_in[n].add(t.args[0])
        self.loop_live = {}
        for h, body in self.loops.items():
            used_inside = set().union(*(uses_in[x] for x in body))
            defined_inside = {p.dst for x in body for p in self.slice[x][0] + self.slice[x][1]}
            live_in = sorted(v for v in used_inside if v in need and v not in defined_inside)
            used_outside = set().union(*(uses_in[x] for x in func.blocks if x not in body)) if body else set()
            live_out = sorted(defined_inside & used_outside)
            self.loop_live[h] = (live_in, live_out, sorted(body))
        self.cache = {}

    def value(self, env, v: str, w: int, lanes: Optional[int] = None):
        """An operand's value: an int, a tuple of ints for a vector, or None (unknown)."""
        v = v.strip()
        if v.startswith("%"):
            return env.get(v)
        if lanes:
            if v in ("zeroinitializer", "poison", "undef"):
                return (0,) * lanes
            m = re.fullmatch(r"splat\s*\(\s*\S+\s+(-?\d+|true|false)\s*\)", v)
            if m:
                c = {"true": 1, "false": 0}.get(m.group(1))
                return (_norm(int(m.group(1)), w) if c is None else c,) * lanes
            if v.startswith("<") and v.endswith(">"):
                vals = [self.value(env, el.split()[-1] if el else "0", w) for el in _split_top(v[1:-1])]
                return None if None in vals else tuple(vals)
            return None
        if v == "true":
            return 1
        if v in ("false", "null", "zeroinitializer", "poison", "undef"):
            return 0
        try:
            return _norm(int(v), w)
        except ValueError:
            return None

    def base(self, name: str) -> int:
        """A pointer the slice cannot compute (an argument, a loaded pointer, an allocation):
        a distinct buffer, far from every other (so runtime alias checks pass, as they do)."""
        b = self.bases.get(name)
        if b is None:
            b = self.bases[name] = (len(self.bases) + 1) << 40
        return b

    @staticmethod
    def _lanewise(fn, w, *xs):
        """``fn`` on scalars, or lane by lane on tuples (scalars broadcast)."""
        if any(x is None for x in xs):
            return None
        n = next((len(x) for x in xs if isinstance(x, tuple)), None)
        if n is None:
            r = fn(*xs)
            return None if r is None else _norm(r, w)
        out = []
        for i in range(n):
            r = fn(*(x[i] if isinstance(x, tuple) else x for x in xs))
            if r is None:
                return None
            out.append(_norm(r, w))
        return tuple(out)

    def step(self, env, ins: Inst):
        if ins.dst in self.known:
            return self.known[ins.dst]
        op = ins.op
        if ins.ty == "ptr":
            if op == "getelementptr" and ins.args:
                base, idx, ity, size = ins.args
                b = env.get(base) if base.startswith("%") else None
                i = self.value(env, idx, _int_width(ity) or 64)
                return None if b is None or i is None else b + i * size
            if op in ("load", "call", "alloca"):
                return self.base(ins.dst)
            if op == "select" and ins.args:
                c = self.value(env, ins.args[0], 1)
                return None if c is None else env.get(ins.args[1] if c else ins.args[2])
            return None
        info = _tinfo(ins.ty)
        if info is None or not ins.args and op != "call":
            return None
        lanes, w = info
        if op == "call":
            return 0 if lanes is None else None  # TVM's runtime calls return 0 on success
        if op == "ptrtoint":
            v = env.get(ins.args[1])
            return None if v is None or isinstance(v, tuple) else _norm(v, w)
        if op == "icmp":
            pred, ty, a, b = ins.args
            if ty == "ptr" and "null" in (a, b) and pred in ("eq", "ne"):
                return int(pred == "ne")  # an allocation or argument: never null here
            oinfo = _tinfo(ty)
            if oinfo is None:
                return None
            ol, ow = oinfo
            x, y = self.value(env, a, ow, ol), self.value(env, b, ow, ol)
            uns = pred[0] == "u"
            cmp = {
                "eq": lambda p, q: p == q,
                "ne": lambda p, q: p != q,
                "slt": lambda p, q: p < q,
                "sle": lambda p, q: p <= q,
                "sgt": lambda p, q: p > q,
                "sge": lambda p, q: p >= q,
                "ult": lambda p, q: p < q,
                "ule": lambda p, q: p <= q,
                "ugt": lambda p, q: p > q,
                "uge": lambda p, q: p >= q,
            }[pred]
            if uns:
                return self._lanewise(lambda p, q: int(cmp(_u(p, ow), _u(q, ow))), 1, x, y)
            return self._lanewise(lambda p, q: int(cmp(p, q)), 1, x, y)
        if op in _BINOPS:
            x, y = self.value(env, ins.args[0], w, lanes), self.value(env, ins.args[1], w, lanes)
            return self._lanewise(lambda p, q: _binop(op, p, q, w), w, x, y)
        if op in _CASTS:
            src_ty, val = ins.args
            sinfo = _tinfo(src_ty)
            if sinfo is None:
                return None
            x = self.value(env, val, sinfo[1], sinfo[0])
            if op == "zext":
                return self._lanewise(lambda p: _u(p, sinfo[1]), w, x)
            return self._lanewise(lambda p: p, w, x)
        if op == "select":
            c = self.value(env, ins.args[0], 1)
            if c is None or isinstance(c, tuple):
                return None
            return self.value(env, ins.args[1] if c else ins.args[2], w, lanes)
        if op in _INTRINSICS:
            vals = [self.value(env, a, w, lanes) for a in ins.args[:2]]
            if op == "abs":
                return self._lanewise(lambda p: abs(p), w, vals[0])
            u = op[0] == "u"
            f = min if op.endswith("min") else max
            return self._lanewise(lambda p, q: f(_u(p, w), _u(q, w)) if u else f(p, q), w, *vals)
        if op == "insertelement":
            vec, el, idx = ins.args
            v = self.value(env, vec, w, lanes)
            e, i = self.value(env, el, w), self.value(env, idx, 64)
            if v is None or e is None or i is None or not 0 <= i < len(v):
                return None
            return v[:i] + (e,) + v[i + 1 :]
        if op == "extractelement":
            vec, idx, vty = ins.args
            vinfo = _tinfo(vty)
            v = self.value(env, vec, w, vinfo[0] if vinfo else None)
            i = self.value(env, idx, 64)
            if not isinstance(v, tuple) or i is None or not 0 <= i < len(v):
                return None
            return v[i]
        if op == "shufflevector":
            a, b, mask, aty = ins.args
            ainfo = _tinfo(aty)
            if ainfo is None:
                return None
            va, vb = self.value(env, a, w, ainfo[0]), self.value(env, b, w, ainfo[0])
            if mask.strip() in ("zeroinitializer",):
                idx = [0] * lanes
            else:
                m = self.value(env, mask, 32, lanes)
                if m is None:
                    return None
                idx = list(m)
            both = (va or (None,) * ainfo[0]) + (vb or (None,) * ainfo[0])
            out = tuple(both[i] for i in idx)
            return None if None in out else out
        return None

    def _choose(self, block: Block, env) -> Optional[str]:
        t = block.term
        if t is None or t.op in ("ret", "unreachable", "resume"):
            return None
        if t.op == "br":
            cond, targets, weights = t.args
            if cond is None:
                return targets[0]
            c = self.value(env, cond, 1)
            if c is None:
                self.unknown_branches += 1
                if weights and len(weights) >= 2:
                    return targets[0] if weights[0] >= weights[1] else targets[1]
                return targets[1]
            return targets[0] if c else targets[1]
        if t.op == "switch":
            v, default, cases = t.args
            ty = re.match(r"switch (\S+)", t.text).group(1)
            x = self.value(env, v, _int_width(ty) or 64)
            if x is None:
                self.unknown_branches += 1
                return default
            for cv, tgt in cases:
                if _norm(cv, _int_width(ty) or 64) == x:
                    return tgt
            return default
        return None

    def run(self) -> Dict[str, int]:
        f = self.f
        counts = self.counts = {n: 0 for n in f.blocks}
        env = dict(self.known)
        for p in f.ptr_params:
            env.setdefault(p, self.base(p))
        block, pred = f.order[0], None
        frames = []  # loops being interpreted: (header, key, counts of the loop's blocks on entry)
        steps = 0
        while block is not None:
            live = self.loop_live.get(block)
            hit = None
            if live is not None and (pred is None or pred not in self.loops[block]):
                live_in, live_out, body = live
                key = (block, pred, tuple(env.get(v) for v in live_in))
                hit = self.cache.get(key)
                if hit is None:
                    frames.append((block, key, [counts[n] for n in body]))
            if hit is not None:  # a loop summarised before: its counts, its exit
                delta, out_vals, cur, nxt = hit
                for n, c in delta:
                    counts[n] += c
                env.update(out_vals)
            else:
                steps += 1
                if steps > MAX_STEPS:
                    raise RuntimeError(f"{f.name}: more than {MAX_STEPS} block executions to interpret")
                cur = block
                counts[cur] += 1
                phis, insts = self.slice[cur]
                if phis:
                    vals = []
                    for p in phis:
                        src = next((v for v, pb in p.args if pb == pred), None)
                        info = _tinfo(p.ty) or (None, 64)
                        vals.append(None if src is None else self.value(env, src, info[1], info[0]))
                    for p, v in zip(phis, vals):
                        env[p.dst] = v
                for ins in insts:
                    env[ins.dst] = self.step(env, ins)
                nxt = self._choose(f.blocks[cur], env)
            while frames and (nxt is None or nxt not in self.loops[frames[-1][0]]):
                header, key, snap = frames.pop()
                live_in, live_out, body = self.loop_live[header]
                delta = [(n, counts[n] - s) for n, s in zip(body, snap) if counts[n] != s]
                self.cache[key] = (delta, {v: env.get(v) for v in live_out}, cur, nxt)
            pred, block = cur, nxt
        return counts


def _operands(ins: Inst):
    """The value operands of an instruction the interpreter evaluates."""
    if not ins.args:
        return ()
    if ins.op == "icmp":
        return ins.args[2:]
    if ins.op in _CASTS or ins.op in ("ptrtoint", "inttoptr"):
        return ins.args[1:2]
    if ins.op in ("getelementptr", "extractelement"):
        return ins.args[:2]
    if ins.op == "shufflevector":
        return ins.args[:3]
    if ins.op == "phi":
        return [a for a, _ in ins.args]
    return ins.args


def block_counts(func: Func, threads: int) -> Tuple[Dict[str, int], int]:
    """How often each block of ``func`` runs (worker 0 of ``threads`` for a parallel lambda);
    returns (counts, branches decided by weights rather than computed)."""
    known = {}
    for p in func.params:
        if p == "%task_id":
            known[p] = 0
    interp = _Interp(func, known)
    # the parallel lambda's worker count is a load from its environment: give it the target's
    for b in func.blocks.values():
        for ins in b.insts:
            if ins.dst in ("%num_task",) and ins.op == "load":
                interp.known = dict(interp.known, **{ins.dst: threads})
                interp.need.add(ins.dst)
    counts = interp.run()
    return counts, interp.unknown_branches
