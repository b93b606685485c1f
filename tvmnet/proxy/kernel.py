"""A board-free cost proxy for one compiled kernel: ``llvm-mca`` on its machine code, weighted
by how often each piece of code runs. This module holds the entry point, ``estimate(scheduled_mod,
spec)``, its result (``Estimate``), and the glue: the cost of calls and the sum.

Used by ``tvmnet tune --estimate`` (``tvmnet/proxy/tuning.py``) for the kernel kinds it ranks
as measurements do, and by the board latency estimate (``tvmnet/proxy/estimate.py``). On this
project's measured x86 NHWC schedules (``scripts/proxy_rank.py``, 25 records per kernel of a
2021-trial tune of MobileNet 0.5-224), Spearman's rho of all of a kind's records pooled, with
the Block RThroughput sum as the score: pointwise GEMMs 0.86, stem conv 0.89, depthwise convs
0.70, fc 0.53 (within one GEMM kernel's near-optimal records, 0.60 on average). The record
it ranks first runs 1.09x the best measured for the GEMMs, 1.00x for the stem, 2.79x for the
depthwise convs (a random record: 1.43x, 5.8x, 3.1x).

What ``estimate_cycles(scheduled_mod, spec)`` models, exactly (each step is explained in full
where its code is):

1. **The code that would be measured**: the kernel built as MetaSchedule's builder builds it,
   and TVM's optimised LLVM IR of it (``tvmnet.proxy.codegen``).
2. **Which machine code belongs to which IR basic block**: markers at the top of every IR
   block, carried into the assembly (``tvmnet.proxy.codegen``; the IR is read by
   ``tvmnet.proxy.ir``).
3. **How often each block runs, exactly**: an interpreter of the integer slice that decides
   the branches; parallel loops run as worker 0 of ``num-cores`` workers, so the estimate is
   the slowest worker's time (``tvmnet.proxy.counts``).
4. **What a block costs**: llvm-mca's cycles per iteration of the block's code as one region
   (``tvmnet.proxy.mca``). Calls are not simulated: ``memset``/``memcpy`` of a constant size
   cost ``bytes / STORE_BYTES_PER_CYCLE``, a runtime call (workspace allocation, parallel
   launch) ``CALL_CYCLES``.
5. **Sum**: ``sum(count(block) * cycles(block))`` over the compute function and its parallel
   lambdas; the argument checks of the packed-function wrapper are left out (the same for
   every schedule of a kernel).

Not modelled: caches and memory bandwidth, the thread pool's launch and barrier, frequency,
other processes. ``estimate`` returns more than the cycles, for variants of the proxy
(``scripts/proxy_rank.py`` compares them against measured times): the same sum with llvm-mca's
``Block RThroughput`` (no latency chains) and with ``-noalias=false`` (loads wait for older
stores), the dynamic instruction count, parallel launches, workspace allocations, memset
bytes, and with ``with_memory=True`` the cache lines the L1 and L2 miss by a capacity model of
the TIR loop nest (``memory_traffic``, ``tvmnet.proxy.memory``).

The same code serves x86 (``-mcpu`` of this host, where real run times exist to check the
ranking) and aarch64 boards (cortex-a53/a72/a76), whose kernels are cross-compiled here and
analysed with ``llvm-mca -mtriple=aarch64-linux-gnu -mcpu=cortex-a72``. Needs ``llvm-mca``
(Debian/Ubuntu: ``apt-get install llvm``; LLVM 14's scheduling models suffice).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from tvmnet.proxy.codegen import asm_of_ir, asm_segments, kernel_ir, mark_blocks, threads_of
from tvmnet.proxy.counts import block_counts
from tvmnet.proxy.ir import Func, parse_ir
from tvmnet.proxy.mca import run_mca
from tvmnet.proxy.memory import memory_traffic

CALL_CYCLES = 50.0  # a call that is not memset/memcpy (workspace alloc/free, parallel launch)
STORE_BYTES_PER_CYCLE = 32.0  # memset/memcpy speed


# --------------------------------------------------------------------------------------- calls

_CALL = re.compile(r"^\s*(call|callq|bl|blr)\b")


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
    cycles: float  # sum over blocks of count * llvm-mca cycles per iteration
    rthroughput_cycles: float  # the same with llvm-mca's Block RThroughput (no latency chains)
    call_cycles: float  # memset/memcpy and other calls (included in both above)
    instructions: float  # dynamic instruction count (worker 0)
    ordered_cycles: float = 0.0  # as ``cycles`` with llvm-mca -noalias=false (loads wait for older stores)
    parallel_launches: int = 0  # parallel regions started (thread-pool launch + barrier each)
    workspace_allocs: int = 0  # TVMBackendAllocWorkspace calls (worker 0 and the serial part)
    memset_bytes: float = 0.0  # bytes memset/memcpy'd (worker 0 and the serial part)
    memory: Dict[str, float] = field(default_factory=dict)  # ``memory_traffic``, when asked for
    unknown_branches: int = 0
    unmapped_blocks: int = 0  # executed IR blocks whose code no marker delimits
    blocks: List[dict] = field(default_factory=list)


def _wanted_functions(funcs: Dict[str, Func]) -> List[str]:
    """The kernel's compute functions: the body (``*_compute_``) and its parallel lambdas."""
    names = [n for n in funcs if "parallel_lambda" in n or n.endswith("_compute_")]
    if not names:  # a kernel without the compute split: every function that is not runtime glue
        names = [
            n
            for n in funcs
            if not n.startswith(("__tvm_ffi", "__tvm_set_raised", "__truncsfhf2", "__extendhfsf2", "__TVMBackend"))
        ]
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
        est.blocks.append(
            {
                "function": fname,
                "block": bname,
                "count": n,
                "cycles": cyc,
                "rthroughput": rth,
                "ordered_cycles": cyo,
                "instructions": ins,
                "call_cycles": calls,
            }
        )
    return est


def estimate_cycles(scheduled_mod, spec) -> float:
    """Estimated cycles of one run of a scheduled kernel on ``spec``'s CPU (the slowest worker
    of ``num-cores``), from llvm-mca and exact block counts; see the module docstring."""
    return estimate(scheduled_mod, spec).cycles
