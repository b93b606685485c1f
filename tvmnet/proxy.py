"""Used by ``tvmnet tune --estimate`` (``tvmnet/proxy_tune.py``) for the kernel kinds it ranks
as measurements do, and by the board latency estimate (``tvmnet/estimate.py``). On this
project's measured x86 NHWC schedules (``scripts/proxy_rank.py``, 25 records per kernel of a
2021-trial tune of MobileNet 0.5-224), Spearman's rho of all of a kind's records pooled, with
the Block RThroughput sum as the score: pointwise GEMMs 0.86, stem conv 0.89, depthwise convs
0.70, fc 0.53 (within one GEMM kernel's near-optimal records, 0.60 on average). The record
it ranks first runs 1.09x the best measured for the GEMMs, 1.00x for the stem, 2.79x for the
depthwise convs (a random record: 1.43x, 5.8x, 3.1x).

A board-free cost proxy for one compiled kernel: ``llvm-mca`` on its machine code, weighted
by how often each piece of code runs.

What ``estimate_cycles(scheduled_mod, spec)`` models, exactly:

1. **The code that would be measured.** The scheduled TIR kernel is built as MetaSchedule's
   builder builds it (``RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)``, then
   ``tvm.tirx.build`` for ``spec``'s target: cross-compiled for aarch64, no board needed), and
   TVM's optimised LLVM IR of it is taken.
2. **Which machine code belongs to which IR basic block.** A marker (an inline-asm comment)
   is put at the top of every IR block and TVM's own LLVM turns the marked IR into assembly;
   the instructions after a marker, up to the next marker, are that block's code. (Inline asm
   is opaque to the code generator, so the code analysed can differ from the unmarked build by
   a few instructions, e.g. a jump where an empty block would have been folded away.)
3. **How often each block runs, exactly.** The IR's control flow (loops, bounds, padding
   guards, the vectoriser's remainder and runtime alias checks) depends on induction variables
   and constants only, so a small interpreter executes the integer slice that decides the
   branches (scalars and integer vectors; pointers as distinct buffers far apart, so alias
   checks pass as they do at run time; allocations never null; runtime calls return 0). A
   loop entered again with the same live-in values is not re-run: its summary is reused.
   Parallel loops run as worker 0 of ``num-cores`` workers, the one with the largest chunk:
   the estimate is the slowest worker's time (the kernel's wall time), not the sum over cores.
   A branch that is still not computable takes the side its ``!prof`` weights favour
   (``Estimate.unknown_branches`` counts them; 0 in practice).
4. **What a block costs.** Each executed block's instructions are one ``llvm-mca`` code region
   (``-mtriple``/``-mcpu``/``-mattr`` of the target: cascadelake, cortex-a72...): cycles per
   iteration of the block run back to back (``Total Cycles / Iterations``). For an innermost
   loop body that is the loop's steady state, loop-carried dependencies (FMA accumulators)
   included; every load is an L1 hit and loads never wait for stores (llvm-mca's defaults).
   Calls are not simulated: ``memset``/``memcpy`` of a constant size cost
   ``bytes / STORE_BYTES_PER_CYCLE``, a runtime call (workspace allocation, parallel launch)
   ``CALL_CYCLES``.
5. **Sum**: ``sum(count(block) * cycles(block))`` over the compute function and its parallel
   lambdas; the argument checks of the packed-function wrapper are left out (the same for
   every schedule of a kernel).

Not modelled: caches and memory bandwidth, the thread pool's launch and barrier, frequency,
other processes. ``estimate`` returns more than the cycles, for variants of the proxy
(``scripts/proxy_rank.py`` compares them against measured times): the same sum with llvm-mca's
``Block RThroughput`` (no latency chains) and with ``-noalias=false`` (loads wait for older
stores), the dynamic instruction count, parallel launches, workspace allocations, memset
bytes, and with ``with_memory=True`` the cache lines the L1 and L2 miss by a capacity model of
the TIR loop nest (``memory_traffic``).

The same code serves x86 (``-mcpu`` of this host, where real run times exist to check the
ranking) and aarch64 boards (cortex-a53/a72/a76), whose kernels are cross-compiled here and
analysed with ``llvm-mca -mtriple=aarch64-linux-gnu -mcpu=cortex-a72``. Needs ``llvm-mca``
(Debian/Ubuntu: ``apt-get install llvm``; LLVM 14's scheduling models suffice).
"""
from __future__ import annotations

import functools
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .errors import ToolchainError, UsageError

log = logging.getLogger(__name__)

MARK = "@@BB"
CALL_CYCLES = 50.0            # a call that is not memset/memcpy (workspace alloc/free, parallel launch)
STORE_BYTES_PER_CYCLE = 32.0  # memset/memcpy speed
MAX_STEPS = 20_000_000        # interpreted block executions per function before giving up


# ----------------------------------------------------------------------------------- toolchain

def llvm_mca_path() -> str:
    """The ``llvm-mca`` binary (any version suffix), or a one-line ToolchainError."""
    for name in ("llvm-mca", *(f"llvm-mca-{v}" for v in range(22, 10, -1))):
        path = shutil.which(name)
        if path:
            return path
    raise ToolchainError("the cost proxy needs llvm-mca, which is not on PATH; install it with "
                         "`apt-get install llvm` (Debian/Ubuntu)")


# An -mcpu this llvm-mca does not know (LLVM 14 predates znver4/znver5, sapphirerapids' newer
# siblings, ...) makes it fall back to a generic model, whose assembler rejects AVX-512 code.
# Such a CPU is analysed with a known model of the same vector ISA.
MCA_STANDIN = {"avx512": "icelake-server", "avx2": "skylake", "neon-dotprod": "cortex-a76", "neon": "cortex-a72"}


@functools.lru_cache(maxsize=None)
def mca_known_cpus(triple: str) -> frozenset:
    """The -mcpu names this llvm-mca has a model for (``-mcpu=help``)."""
    proc = subprocess.run([llvm_mca_path(), f"-mtriple={triple}", "-mcpu=help"], input="",
                          capture_output=True, text=True, timeout=60)
    names = re.findall(r"^\s+([\w.-]+)\s+- Select the", proc.stdout + proc.stderr, flags=re.M)
    return frozenset(names)


@functools.lru_cache(maxsize=None)      # said once per CPU, not once per llvm-mca run
def mca_standin(mcpu: str, isa: str) -> str:
    """The known CPU llvm-mca analyses an unknown ``mcpu`` of vector ISA ``isa`` as."""
    standin = MCA_STANDIN.get(isa, "generic")
    log.info("llvm-mca has no model for %s: analysing as %s (same vector ISA, %s)", mcpu, standin, isa)
    return standin


def mca_args(spec) -> List[str]:
    """llvm-mca's -mtriple/-mcpu/-mattr for a target."""
    tgt = spec.target
    triple = tgt.get("mtriple") or ("aarch64-linux-gnu" if spec.arch == "aarch64" else "x86_64-unknown-linux-gnu")
    mcpu = tgt.get("mcpu")
    if not mcpu or mcpu == "@host":
        from .targets import host_cpu

        mcpu = host_cpu() if spec.arch == os.uname().machine else "generic"
    known = mca_known_cpus(triple)
    if known and mcpu not in known:
        mcpu = mca_standin(mcpu, spec.vector_isa())
    args = [f"-mtriple={triple}", f"-mcpu={mcpu}"]
    mattr = tgt.get("mattr")
    if mattr:
        args.append("-mattr=" + ",".join(mattr if isinstance(mattr, (list, tuple)) else [mattr]))
    return args


def threads_of(spec) -> int:
    return max(1, int(spec.target.get("num-cores") or 1))


# ------------------------------------------------------------------------------------- building

def build_kernel(scheduled_mod, spec):
    """Build a scheduled TIR kernel as MetaSchedule's builder does; returns the LLVM module."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    if spec.device != "cpu":
        raise UsageError(f"the cost proxy analyses CPU code; target {spec.name} is {spec.device}")
    if isinstance(scheduled_mod, tvm.tirx.PrimFunc):
        scheduled_mod = tvm.IRModule({"main": scheduled_mod})
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(scheduled_mod)
    built = tvm.tirx.build(mod, target=spec.tvm_target())
    # an Executable wraps the module; never getattr a runtime Module (that looks up, and JIT-
    # compiles, a function of that name, which fails for a cross-compiled one)
    return built.mod if isinstance(built, tvm.runtime.Executable) else built


def kernel_ir(scheduled_mod, spec) -> str:
    """TVM's optimised LLVM IR of the kernel (the IR its machine code is generated from)."""
    return build_kernel(scheduled_mod, spec).inspect_source("ll")


def asm_of_ir(ir_text: str) -> str:
    """Machine code (assembly) of LLVM IR text, generated by TVM's own LLVM; the target is the
    IR's triple and its functions' target-cpu/target-features."""
    import tvm

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ll")
        with open(path, "w") as f:
            f.write(ir_text)
        return tvm.runtime.load_module(path).inspect_source("s")


# ------------------------------------------------------------------------------ LLVM IR parsing

_LABEL = re.compile(r'^("?)([-\w$.]+)\1:(\s|$)')
_DEFINE = re.compile(r'^define\b.*?@("?)([-\w$.]+)\1\((.*)\).*\{\s*$')
_RESULT = re.compile(r'^\s+(%[-\w$.]+|%"[^"]+")\s*=\s*(.*)$')
_VALUE = r'(?:%[-\w$.]+|%"[^"]+"|-?\d+|true|false|poison|undef|null|zeroinitializer)'
_META = re.compile(r"^!(\d+)\s*=\s*(?:distinct\s+)?!\{(.*)\}\s*$")

_BINOPS = {"add", "sub", "mul", "shl", "lshr", "ashr", "and", "or", "xor", "udiv", "sdiv", "urem", "srem"}
_CASTS = {"trunc", "zext", "sext", "freeze"}
_FLAGS = {"nuw", "nsw", "exact", "disjoint", "nneg", "samesign"}
_INTRINSICS = ("smin", "smax", "umin", "umax", "abs")


@dataclass
class Inst:
    dst: Optional[str]
    op: str
    text: str           # the full instruction text, without trailing metadata
    ty: Optional[str] = None
    args: Tuple = ()    # parsed operands (values, and for casts/icmp extra fields)


@dataclass
class Block:
    name: str
    phis: List[Inst] = field(default_factory=list)
    insts: List[Inst] = field(default_factory=list)
    term: Optional[Inst] = None
    succs: List[str] = field(default_factory=list)
    line: int = 0       # index in the IR lines where the block's first non-phi line goes
    calls: List[str] = field(default_factory=list)


@dataclass
class Func:
    name: str
    params: List[str]
    blocks: Dict[str, Block]
    order: List[str]
    globals_loaded: Dict[str, str] = field(default_factory=dict)   # %x -> @G for ``%x = load ptr, ptr @G``
    ptr_params: List[str] = field(default_factory=list)


def _strip_meta(s: str) -> str:
    """An instruction without its trailing ``, !dbg !1, !prof !2`` attachments."""
    i = s.find(", !")
    return s[:i] if i >= 0 else s


def _split_top(s: str) -> List[str]:
    """Split at the commas outside <>, (), [] and {}."""
    out, depth, cur = [], 0, []
    for ch in s:
        if ch in "<([{":
            depth += 1
        elif ch in ">)]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if cur and "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _take_type(s: str) -> Tuple[str, str]:
    """(leading type, the rest) of ``s``: ``<16 x i32> %x`` -> (``<16 x i32>``, ``%x``)."""
    s = s.strip()
    if s.startswith("<"):
        j = s.index(">") + 1
        return s[:j], s[j:].strip()
    parts = s.split(None, 1)
    return parts[0], (parts[1] if len(parts) > 1 else "")


def _tinfo(ty: Optional[str]) -> Optional[Tuple[Optional[int], int]]:
    """(lanes or None for a scalar, bit width) of an integer or pointer type; None otherwise."""
    if not ty:
        return None
    m = re.fullmatch(r"<\s*(\d+)\s+x\s+(i\d+|ptr)\s*>", ty.strip())
    if m:
        return int(m.group(1)), (64 if m.group(2) == "ptr" else int(m.group(2)[1:]))
    if re.fullmatch(r"i\d+", ty):
        return None, int(ty[1:])
    if ty == "ptr":
        return None, 64
    return None


def _int_width(ty: str) -> Optional[int]:
    return int(ty[1:]) if re.fullmatch(r"i\d+", ty or "") else None


def _operand(s: str) -> str:
    """The value of a ``type value`` operand (attributes dropped)."""
    ty, rest = _take_type(s)
    rest = rest.strip()
    return rest.split()[-1] if rest and not rest.startswith(("<", "splat")) else rest


def _parse_inst(text: str) -> Inst:
    m = _RESULT.match(text)
    dst, body = (m.group(1), m.group(2)) if m else (None, text.strip())
    body = _strip_meta(body)
    words = body.split()
    op = words[0] if words else ""
    if op in ("tail", "musttail", "notail"):
        op = words[1]
    inst = Inst(dst, op, body)
    rest = body.split(None, 1)[1] if len(words) > 1 else ""
    if op in ("tail", "musttail", "notail") or words[:1] in (["tail"], ["musttail"], ["notail"]):
        rest = body.split("call", 1)[1]
    while rest.split(None, 1)[:1] and rest.split(None, 1)[0] in _FLAGS:
        rest = rest.split(None, 1)[1]
    try:
        if op in _BINOPS:
            inst.ty, rest = _take_type(rest)
            inst.args = tuple(_split_top(rest)[:2])
        elif op == "icmp":
            pred, rest = rest.split(None, 1)
            ty, rest = _take_type(rest)
            a, b = _split_top(rest)[:2]
            info = _tinfo(ty)
            inst.ty = f"<{info[0]} x i1>" if info and info[0] else "i1"
            inst.args = (pred, ty, a, b)
        elif op in _CASTS or op in ("ptrtoint", "inttoptr"):
            src_ty, rest = _take_type(rest)
            if " to " in rest:
                val, dst_ty = rest.rsplit(" to ", 1)
            else:
                val, dst_ty = rest, src_ty
            inst.ty = dst_ty.strip()
            inst.args = (src_ty, val.strip())
        elif op == "select":
            parts = _split_top(rest)
            cty, c = _take_type(parts[0])
            vty, a = _take_type(parts[1])
            inst.ty = vty
            inst.args = (c.split()[-1], _operand(parts[1]), _operand(parts[2]))
        elif op == "phi":
            inst.ty, rest = _take_type(rest)
            inst.args = tuple((v.strip(), p.strip())
                              for v, p in re.findall(r"\[\s*((?:<[^>]*>|[^,\]])+?),\s*(%[^\s\]]+)\s*\]", rest))
        elif op == "insertelement":
            parts = _split_top(rest)
            inst.ty = _take_type(parts[0])[0]
            inst.args = (_operand(parts[0]), _operand(parts[1]), _operand(parts[2]))
        elif op == "extractelement":
            parts = _split_top(rest)
            vty = _take_type(parts[0])[0]
            info = _tinfo(vty)
            inst.ty = (f"i{info[1]}" if info and vty.find("ptr") < 0 else None)
            inst.args = (_operand(parts[0]), _operand(parts[1]), vty)
        elif op == "shufflevector":
            parts = _split_top(rest)
            mty, mask = _take_type(parts[2])
            info = _tinfo(mty)
            ety = re.search(r"x\s+(i\d+|ptr)", _take_type(parts[0])[0])
            if info and ety:
                inst.ty = f"<{info[0]} x {ety.group(1)}>"
            inst.args = (_operand(parts[0]), _operand(parts[1]), mask.strip(), _take_type(parts[0])[0])
        elif op == "call":
            m2 = re.search(r"@llvm\.(smin|smax|umin|umax|abs)\.(v\d+i\d+|i\d+)\((.*)\)", body)
            if m2:
                n = re.match(r"v(\d+)(i\d+)", m2.group(2))
                inst.ty = f"<{n.group(1)} x {n.group(2)}>" if n else m2.group(2)
                inst.op = m2.group(1)
                inst.args = tuple(_operand(x) for x in _split_top(m2.group(3)))
            else:   # a runtime call (workspace allocation, free, parallel launch): its status code
                m2 = re.search(r"\bcall\s+(?:\w+\s+)*?(i\d+|ptr)\s", body)
                inst.ty = m2.group(1) if m2 else None
        elif op == "load":
            inst.ty = _take_type(rest)[0].rstrip(",")
        elif op == "getelementptr":
            m2 = re.match(r"(?:(?:inbounds|nuw|nusw|inrange\(\S+\))\s+)*([^,]+),\s*ptr\s+([^,\s]+)((?:,\s*\S+\s+[^,\s]+)*)\s*$",
                          rest)
            if m2:
                idx = re.findall(r",\s*(\S+)\s+([^,\s]+)", m2.group(3))
                size = _type_size(m2.group(1).strip())
                if len(idx) == 1 and size and _int_width(idx[0][0]):
                    inst.ty = "ptr"
                    inst.args = (m2.group(2), idx[0][1], idx[0][0], size)
        elif op == "alloca":
            inst.ty = "ptr"
    except (ValueError, IndexError, AttributeError):   # a form this parser does not know: opaque
        inst.ty, inst.args = None, ()
    return inst


def _type_size(ty: str) -> Optional[int]:
    sizes = {"i8": 1, "i16": 2, "half": 2, "bfloat": 2, "i32": 4, "float": 4, "i64": 8, "double": 8, "ptr": 8}
    if ty in sizes:
        return sizes[ty]
    m = re.fullmatch(r"<\s*(\d+)\s+x\s+(\w+)\s*>", ty)
    if m and m.group(2) in sizes:
        return int(m.group(1)) * sizes[m.group(2)]
    return None


def parse_ir(ir_text: str):
    """Functions of an LLVM IR module (blocks, phis, terminators), the branch weights, and
    the IR's lines (for inserting markers)."""
    lines = ir_text.split("\n")
    meta = {}
    for line in lines:
        m = _META.match(line)
        if m and "branch_weights" in m.group(2):
            meta["!" + m.group(1)] = [int(w) for w in re.findall(r"i32 (\d+)", m.group(2))]
    funcs: Dict[str, Func] = {}
    i = 0
    while i < len(lines):
        m = _DEFINE.match(lines[i])
        if not m:
            i += 1
            continue
        fname = m.group(2)
        params = re.findall(r"(%[-\w$.]+)(?=\s*(?:,|$))", m.group(3))
        ptr_params = [p for p in params if re.search(r"(?:^|,)\s*ptr\b[^,]*" + re.escape(p) + r"(?=\s*(?:,|$))", m.group(3))]
        blocks: Dict[str, Block] = {}
        order: List[str] = []
        loaded: Dict[str, str] = {}
        cur = None
        i += 1
        while i < len(lines) and not lines[i].startswith("}"):
            line = lines[i]
            lm = _LABEL.match(line)
            if lm:
                cur = Block("%" + lm.group(2), line=i + 1)
                blocks[cur.name] = cur
                order.append(cur.name)
                i += 1
                continue
            s = line.strip()
            if not s or s.startswith(";") or s.startswith("#dbg_"):
                i += 1
                continue
            if cur is None:       # an unnamed entry block
                cur = Block("%<entry>", line=i)
                blocks[cur.name] = cur
                order.append(cur.name)
            if s.startswith("switch "):
                while "]" not in line and i + 1 < len(lines):
                    i += 1
                    line += " " + lines[i].strip()
                s = line.strip()
            inst = _parse_inst(line)
            if inst.op == "phi":
                cur.phis.append(inst)
                cur.line = i + 1
            elif inst.op in ("br", "switch", "ret", "unreachable", "indirectbr", "resume"):
                prof = re.search(r"!prof (!\d+)", s)
                if inst.op == "br":
                    targets = re.findall(r"label (%[-\w$.]+|%\"[^\"]+\")", s)
                    cond = re.match(r"br i1 (\S+),", s)
                    inst.args = (cond.group(1) if cond else None, targets, meta.get(prof.group(1)) if prof else None)
                    cur.succs = targets
                elif inst.op == "switch":
                    sm = re.match(r"switch (\S+) (\S+), label (\S+) \[(.*)\]", s)
                    cases = re.findall(r"\S+ (-?\d+), label (%[-\w$.]+)", sm.group(4)) if sm else []
                    inst.args = (sm.group(2) if sm else None, sm.group(3) if sm else None,
                                 [(int(v), t) for v, t in cases])
                    cur.succs = ([sm.group(3)] if sm else []) + [t for _, t in cases]
                cur.term = inst
            else:
                cur.insts.append(inst)
                if inst.op == "call" or " call " in f" {inst.text} ":
                    cur.calls.append(inst.text)
                elif inst.op == "load" and inst.dst:
                    g = re.match(r"load ptr, ptr (@[-\w$.]+)", inst.text)
                    if g:
                        loaded[inst.dst] = g.group(1)
            i += 1
        funcs[fname] = Func(fname, params, blocks, order, loaded, ptr_params)
        i += 1
    return funcs, lines


def mark_blocks(ir_text: str, funcs: Dict[str, Func], lines: List[str], wanted) -> Tuple[str, Dict[int, Tuple[str, str]]]:
    """The IR with an inline-asm comment ``@@BB <id>`` at the top of every block of the
    ``wanted`` functions; returns (marked IR, id -> (function, block))."""
    ids: Dict[int, Tuple[str, str]] = {}
    inserts = {}
    for fname in wanted:
        for bname in funcs[fname].order:
            k = len(ids)
            ids[k] = (fname, bname)
            inserts.setdefault(funcs[fname].blocks[bname].line, []).append(
                f'  call void asm sideeffect "# {MARK} {k}", ""()')
    out = []
    for n, line in enumerate(lines):
        if n in inserts:
            out.extend(inserts[n])
        out.append(line)
    return "\n".join(out), ids


# ---------------------------------------------------------------------------------- interpreter

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
    return abs(x) % abs(y) * (1 if x >= 0 else -1)     # srem


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
            if s in dom.get(b, ()):   # back edge b -> s
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
        self.slice = {n: ([p for p in b.phis if p.dst in need], [i for i in b.insts if i.dst in need])
                      for n, b in func.blocks.items()}
        # loops, innermost first for each block, with live-in / live-out slice values
        self.loops = _loops(func)
        uses_in = {n: set() for n in func.blocks}
        for n, (phis, insts) in self.slice.items():
            for p in phis:   # a phi's operands count as used in the phi's block
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
            return 0 if lanes is None else None      # TVM's runtime calls return 0 on success
        if op == "ptrtoint":
            v = env.get(ins.args[1])
            return None if v is None or isinstance(v, tuple) else _norm(v, w)
        if op == "icmp":
            pred, ty, a, b = ins.args
            if ty == "ptr" and "null" in (a, b) and pred in ("eq", "ne"):
                return int(pred == "ne")     # an allocation or argument: never null here
            oinfo = _tinfo(ty)
            if oinfo is None:
                return None
            ol, ow = oinfo
            x, y = self.value(env, a, ow, ol), self.value(env, b, ow, ol)
            uns = pred[0] == "u"
            cmp = {"eq": lambda p, q: p == q, "ne": lambda p, q: p != q, "slt": lambda p, q: p < q,
                   "sle": lambda p, q: p <= q, "sgt": lambda p, q: p > q, "sge": lambda p, q: p >= q,
                   "ult": lambda p, q: p < q, "ule": lambda p, q: p <= q, "ugt": lambda p, q: p > q,
                   "uge": lambda p, q: p >= q}[pred]
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
            return v[:i] + (e,) + v[i + 1:]
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
        frames = []    # loops being interpreted: (header, key, counts of the loop's blocks on entry)
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
            if hit is not None:       # a loop summarised before: its counts, its exit
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


# ---------------------------------------------------------------------------------- assembly side

_DIRECTIVE = re.compile(r"^\s*\.")


def asm_segments(asm: str) -> Dict[int, List[List[str]]]:
    """Marker id -> the instruction lines after each copy of the marker, up to the next marker
    (labels, directives and comments dropped)."""
    segs: Dict[int, List[List[str]]] = {}
    cur = None
    for raw in asm.split("\n"):
        line = raw.strip()
        if MARK in line:
            k = int(line.split(MARK, 1)[1].split()[0])
            cur = []
            segs.setdefault(k, []).append(cur)
            continue
        if cur is None or not line:
            continue
        if line.startswith(("#", "//", ";", "@")) or _DIRECTIVE.match(line) or line.endswith(":"):
            if line.startswith(".Lfunc_end") or line.startswith(".size"):
                cur = None
            continue
        if re.match(r"^[\w.$]+:", line):     # a label with an instruction after it
            line = line.split(":", 1)[1].strip()
            if not line:
                continue
        line = re.split(r"\s+(#|//)\s", line)[0]
        cur.append(line)
    return segs


_CALL = re.compile(r"^\s*(call|callq|bl|blr)\b")


@dataclass
class McaResult:
    cycles_per_iter: float
    rthroughput: float
    instructions: int


def run_mca(regions: Dict[int, List[str]], spec, iterations: int = 100, timeout: float = 300,
            extra: Tuple[str, ...] = ()) -> Dict[int, McaResult]:
    """One llvm-mca run over many code regions; region id -> cycles per iteration. ``extra``:
    more llvm-mca options (``-noalias=false``: every load waits for the older stores)."""
    if not regions:
        return {}
    mca = llvm_mca_path()
    comment = "#"     # llvm-mca 14 finds region markers after '#' on x86 and AArch64 alike (not after '//')
    body = []
    for k, lines in regions.items():
        body.append(f"{comment} LLVM-MCA-BEGIN r{k}")
        body.extend(lines)
        body.append(f"{comment} LLVM-MCA-END r{k}")
    text = "\n".join(body) + "\n"
    cmd = [mca, *mca_args(spec), f"-iterations={iterations}", "-resource-pressure=0", "-instruction-info=0", *extra]
    dropped = 0
    for _ in range(50):
        proc = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=timeout)
        if proc.returncode == 0:
            break
        # an instruction llvm-mca's assembler does not know: drop that line and retry
        m = re.search(r"<stdin>:(\d+):\d+: error", proc.stderr)
        if not m:
            raise ToolchainError(f"llvm-mca failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
        lines_ = text.split("\n")
        lines_[int(m.group(1)) - 1] = ""
        text = "\n".join(lines_)
        dropped += 1
    else:
        raise ToolchainError("llvm-mca rejects too many instructions of this kernel")
    out = {}
    parts = re.split(r"\n\[\d+\] Code Region - ", "\n" + proc.stdout)[1:]
    if not parts and len(regions) == 1:    # llvm-mca prints no region header for a single region
        parts = [f"r{next(iter(regions))}\n" + proc.stdout]
    for part in parts:
        name = part.split("\n", 1)[0].strip()
        it = re.search(r"Iterations:\s+(\d+)", part)
        tc = re.search(r"Total Cycles:\s+(\d+)", part)
        ins = re.search(r"Instructions:\s+(\d+)", part)
        rt = re.search(r"Block RThroughput:\s+([\d.]+)", part)
        if name.startswith("r") and it and tc:
            n_it = int(it.group(1))
            out[int(name[1:])] = McaResult(int(tc.group(1)) / n_it, float(rt.group(1)) if rt else 0.0,
                                           int(ins.group(1)) // n_it if ins else 0)
    return out


def call_kind(call_text: str, func: "Func") -> Tuple[str, float]:
    """What a call is and what it costs here: ``("memset", bytes)`` for memset/memcpy/memmove
    of a constant size, ``("launch", 0)`` for the parallel launch, ``("alloc"|"free", 0)`` for
    TVM's workspace calls, ``("intrinsic", 0)`` for LLVM intrinsics and inline asm (real
    instructions, analysed by llvm-mca), ``("call", 0)`` for anything else."""
    m = re.search(r"@llvm\.(memset|memcpy|memmove)\.[^(]*\(.*?,\s*i64\s+(\d+)", call_text)
    if m:
        return "memset", float(m.group(2))
    if "asm sideeffect" in call_text or "@llvm." in call_text:
        return "intrinsic", 0.0
    callee = re.search(r"\bcall\b[^@%]*?([@%][-\w$.]+)\(", call_text)
    name = callee.group(1) if callee else ""
    name = func.globals_loaded.get(name, name)
    if "ParallelLaunch" in name:
        return "launch", 0.0
    if "AllocWorkspace" in name:
        return "alloc", 0.0
    if "FreeWorkspace" in name:
        return "free", 0.0
    return "call", 0.0


def _call_cycles(kind: str, amount: float) -> float:
    if kind == "memset":
        return amount / STORE_BYTES_PER_CYCLE
    if kind == "intrinsic":
        return 0.0
    return CALL_CYCLES


# ---------------------------------------------------------------------------------- the estimate

@dataclass
class Estimate:
    cycles: float                 # sum over blocks of count * llvm-mca cycles per iteration
    rthroughput_cycles: float     # the same with llvm-mca's Block RThroughput (no latency chains)
    call_cycles: float            # memset/memcpy and other calls (included in both above)
    instructions: float           # dynamic instruction count (worker 0)
    ordered_cycles: float = 0.0   # as ``cycles`` with llvm-mca -noalias=false (loads wait for older stores)
    parallel_launches: int = 0    # parallel regions started (thread-pool launch + barrier each)
    workspace_allocs: int = 0     # TVMBackendAllocWorkspace calls (worker 0 and the serial part)
    memset_bytes: float = 0.0     # bytes memset/memcpy'd (worker 0 and the serial part)
    memory: Dict[str, float] = field(default_factory=dict)   # ``memory_traffic``, when asked for
    unknown_branches: int = 0
    unmapped_blocks: int = 0      # executed IR blocks whose code no marker delimits
    blocks: List[dict] = field(default_factory=list)


def _wanted_functions(funcs: Dict[str, Func]) -> List[str]:
    """The kernel's compute functions: the body (``*_compute_``) and its parallel lambdas."""
    names = [n for n in funcs if "parallel_lambda" in n or n.endswith("_compute_")]
    if not names:   # a kernel without the compute split: every function that is not runtime glue
        names = [n for n in funcs if not n.startswith(("__tvm_ffi", "__tvm_set_raised", "__truncsfhf2",
                                                       "__extendhfsf2", "__TVMBackend"))]
    return names


def estimate(scheduled_mod, spec, with_memory: bool = False, iterations: int = 100) -> Estimate:
    """Analyse one scheduled kernel (an IRModule or PrimFunc after ``trace.apply_to_schedule``):
    see the module's docstring for what is modelled."""
    ir = kernel_ir(scheduled_mod, spec)
    est = estimate_from_ir(ir, spec, iterations=iterations)
    if with_memory:
        est.memory = memory_traffic(scheduled_mod, spec)
    return est


def estimate_from_ir(ir: str, spec, iterations: int = 100) -> Estimate:
    funcs, lines = parse_ir(ir)
    wanted = _wanted_functions(funcs)
    marked, ids = mark_blocks(ir, funcs, lines, wanted)
    asm = asm_of_ir(marked)
    segs = asm_segments(asm)
    threads = threads_of(spec)
    counts: Dict[Tuple[str, str], int] = {}
    unknown = 0
    for fname in wanted:
        c, u = block_counts(funcs[fname], threads)
        unknown += u
        for b, n in c.items():
            counts[(fname, b)] = n
    regions, copies = {}, {}
    for k, fb in ids.items():
        if counts.get(fb, 0) and k in segs:
            code = [ln for seg in segs[k] for ln in seg if not _CALL.match(ln)]
            copies[k] = len(segs[k])
            if code:
                regions[k] = code
    mca, ordered = {}, {}
    # llvm-mca's cost grows with instructions x iterations: fewer iterations for big blocks
    # (their pipeline fill is small against one iteration anyway)
    buckets: Dict[int, dict] = {}
    for k, code in regions.items():
        n = len(code)
        it = iterations if n <= 150 else max(5, min(iterations, 3000 // n))
        buckets.setdefault(it, {})[k] = code
    for it, group in buckets.items():
        mca.update(run_mca(group, spec, iterations=it))
        ordered.update(run_mca(group, spec, iterations=it, extra=("-noalias=false",)))
    est = Estimate(0.0, 0.0, 0.0, 0.0, unknown_branches=unknown)
    for k, fb in ids.items():
        n = counts.get(fb, 0)
        if not n:
            continue
        fname, bname = fb
        calls = 0.0
        for c in funcs[fname].blocks[bname].calls:
            kind, amount = call_kind(c, funcs[fname])
            calls += _call_cycles(kind, amount)
            if kind == "launch":
                est.parallel_launches += n
            elif kind == "alloc":
                est.workspace_allocs += n
            elif kind == "memset":
                est.memset_bytes += n * amount
        r = mca.get(k)
        if k not in segs:
            est.unmapped_blocks += 1
        # a block the code generator duplicated has its code in several places: one copy runs
        cyc = r.cycles_per_iter / copies.get(k, 1) if r else 0.0
        rth = r.rthroughput / copies.get(k, 1) if r else 0.0
        ins = r.instructions / copies.get(k, 1) if r else 0
        ro = ordered.get(k)
        cyo = ro.cycles_per_iter / copies.get(k, 1) if ro else 0.0
        est.cycles += n * (cyc + calls)
        est.ordered_cycles += n * (cyo + calls)
        est.rthroughput_cycles += n * (rth + calls)
        est.call_cycles += n * calls
        est.instructions += n * ins
        est.blocks.append({"function": fname, "block": bname, "count": n, "cycles": cyc, "rthroughput": rth,
                           "ordered_cycles": cyo, "instructions": ins, "call_cycles": calls})
    return est


def estimate_cycles(scheduled_mod, spec) -> float:
    """Estimated cycles of one run of a scheduled kernel on ``spec``'s CPU (the slowest worker
    of ``num-cores``), from llvm-mca and exact block counts; see the module docstring."""
    return estimate(scheduled_mod, spec).cycles


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

CACHES = {   # mcpu -> (L1d bytes per core, L2 bytes per core)
    "cortex-a53": (32 << 10, 128 << 10),   # rpi3: 512 KB L2 shared by 4 cores
    "cortex-a72": (32 << 10, 256 << 10),   # rpi4: 1 MB L2 shared by 4 cores
    "cortex-a76": (64 << 10, 512 << 10),   # rpi5: 512 KB private L2
}
DEFAULT_CACHES = (32 << 10, 1 << 20)       # Skylake-SP / Cascade Lake: 32 KB L1d, 1 MB L2


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
    var: object = None       # loop variable (None: the root)
    extent: int = 1
    parallel: bool = False
    children: List["_Node"] = field(default_factory=list)
    accesses: List[tuple] = field(default_factory=list)   # (buffer, [(min expr, extent)], bindings)


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
            child = _Node(stmt.loop_var, int(ext.value) if isinstance(ext, t.IntImm) else 1,
                          stmt.kind == t.ForKind.PARALLEL)
            node.children.append(child)
            visit(stmt.body, child, binds)
        elif isinstance(stmt, s.SBlockRealize):
            blk = stmt.block
            b2 = dict(binds)
            for iv, val in zip(blk.iter_vars, stmt.iter_values):
                b2[iv.var] = val
            for reg in list(blk.reads) + list(blk.writes):
                buf = getattr(reg, "buffer", None) or reg.source
                node.accesses.append((buf, [(r.min, int(r.extent.value) if isinstance(r.extent, t.IntImm) else 1)
                                                   for r in reg.region], b2))
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
    if node.accesses:   # blocks right under this loop: their lines of one iteration
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
    return {"l1_lines": sum(_traffic(tree, l1 / line_bytes, threads, line_bytes, memo).values()),
            "l2_lines": sum(_traffic(tree, l2 / line_bytes, threads, line_bytes, memo).values()),
            "cold_lines": sum(_footprint_lines(c, line_bytes) for c in tree.children)}
