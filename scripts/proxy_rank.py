"""Does the board-free cost proxy (tvmnet/proxy/) rank schedules as real measurements do?

    nice -n 19 python3 scripts/proxy_rank.py --db DIR [--alpha 1.0 --resolution 224] [--target x86]
        [--per-kernel 30] [--seed 0] [--kernels SUBSTR] [--out rows.jsonl] [--precision int8]
    python3 scripts/proxy_rank.py --from rows.jsonl          # re-aggregate without rebuilding

For each kernel (tuning task) of the model, up to --per-kernel records of the MetaSchedule
database DIR (a random sample, seeded; 0 = all) are replayed, built for --target and given to
the proxy; the measured time is the mean of the record's run_secs. It prints Spearman's rho of
proxy vs measured time per kernel (the ranking tuning needs is within a kernel), and per kernel
kind the mean of the per-kernel rhos and the rho of all the kind's records pooled, for each
variant of the proxy:

    mca          sum of block counts x llvm-mca cycles per iteration (Total Cycles / Iterations)
    rthroughput  the same with llvm-mca's Block RThroughput (throughput bound, no latency chains)
    ordered      as mca with llvm-mca -noalias=false: loads wait for older stores
    insts        dynamic instruction count (a baseline: what llvm-mca adds beyond counting)
    mem          the capacity model's L1 and L2 misses: L1_CYCLES x L1 lines + L2_CYCLES x L2 lines
    mca+mem      mca + mem (no overlap of compute and memory); ordered+mem likewise
    max(ord,mem) roofline-like: the larger of ordered and mem

Measured times must come from this machine class (the database's class.json says where); the
proxy's -mcpu is --target's. Nothing is run or timed here: building and analysing only.
"""

import argparse
import json
import math
import random
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

L1_CYCLES = 2.0  # cycles per 64-byte line brought into L1 from L2 (a priori: ~32 B/cycle)
L2_CYCLES = 16.0  # cycles per line from L3/DRAM for one core (a priori: ~4 B/cycle)


def _mem(r):
    return L1_CYCLES * r["l1_lines"] + L2_CYCLES * r["l2_lines"]


VARIANTS = {
    "mca": lambda r: r["cycles"],
    "rthroughput": lambda r: r["rthroughput_cycles"],
    "ordered": lambda r: r["ordered_cycles"],
    "insts": lambda r: r["instructions"],
    "mem": _mem,
    "mca+mem": lambda r: r["cycles"] + _mem(r),
    "ordered+mem": lambda r: r["ordered_cycles"] + _mem(r),
    "max(ord,mem)": lambda r: max(r["ordered_cycles"], _mem(r)),
}
from tvmnet.passes.pipeline import KERNEL_KINDS as KINDS  # noqa: E402
from tvmnet.passes.pipeline import kernel_kind  # noqa: E402


def spearman(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    try:
        from scipy.stats import spearmanr

        return float(spearmanr(x, y).statistic)
    except ImportError:

        def ranks(a):
            order = np.argsort(a, kind="mergesort")
            r = np.empty(len(a))
            r[order] = np.arange(len(a))
            for v in np.unique(a):  # ties: mean rank
                m = a == v
                r[m] = r[m].mean()
            return r

        return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def collect(args, out):
    import tvm

    from tvmnet.core.config import ModelConfig
    from tvmnet.core.targets import load_target
    from tvmnet.proxy.kernel import estimate
    from tvmnet.tune.builder import _install_light_tensor_intrin, intrin_families
    from tvmnet.tune.logs import open_database
    from tvmnet.tune.options import TuneOptions
    from tvmnet.tune.search import prepare_tasks

    spec = load_target(args.target)
    _install_light_tensor_intrin(intrin_families(spec))
    opts = TuneOptions(model=ModelConfig(args.alpha, args.resolution), target=spec, precision=args.precision)
    _, tasks = prepare_tasks(opts)
    if args.kernels:
        tasks = [t for t in tasks if args.kernels in t.task_name]
    db = open_database(Path(args.db))
    rng = random.Random(args.seed)
    rows = []
    for task in tasks:
        mod = task.dispatched[0]
        if not db.has_workload(mod):
            print(f"{task.task_name}: no records", file=sys.stderr)
            continue
        recs = [r for r in db.get_top_k(db.commit_workload(mod), 1 << 30) if r.run_secs]
        if args.per_kernel and len(recs) > args.per_kernel:
            recs = [recs[i] for i in sorted(rng.sample(range(len(recs)), args.per_kernel))]
        for i, rec in enumerate(recs):
            secs = [float(s) for s in rec.run_secs]
            row = {
                "kernel": task.task_name,
                "kind": kernel_kind(task.task_name, mod),
                "record": i,
                "measured_s": sum(secs) / len(secs),
            }
            t0 = time.perf_counter()
            try:
                sch = tvm.s_tir.Schedule(mod)
                rec.trace.apply_to_schedule(sch, remove_postproc=False)
                est = estimate(sch.mod, spec, with_memory=True)
            except Exception as err:  # noqa: BLE001 - a record that fails is counted, not fatal
                row["error"] = str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__
                print(f"{task.task_name} #{i}: {row['error']}", file=sys.stderr)
            else:
                row.update(
                    cycles=est.cycles,
                    rthroughput_cycles=est.rthroughput_cycles,
                    ordered_cycles=est.ordered_cycles,
                    call_cycles=est.call_cycles,
                    instructions=est.instructions,
                    unknown_branches=est.unknown_branches,
                    parallel_launches=est.parallel_launches,
                    workspace_allocs=est.workspace_allocs,
                    memset_bytes=est.memset_bytes,
                    unmapped_blocks=est.unmapped_blocks,
                    **est.memory,
                )
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            out.write(json.dumps(row) + "\n")
            out.flush()
        done = [r for r in rows if r["kernel"] == task.task_name and "error" not in r]
        rho = spearman([r["cycles"] for r in done], [r["measured_s"] for r in done]) if done else float("nan")
        print(f"{task.task_name}: {len(done)} records, rho(mca) {rho:+.2f}", file=sys.stderr)
    return rows


def report(rows, cmdline: str):
    ok = [r for r in rows if "error" not in r]
    failed = len(rows) - len(ok)
    print(f"command: {cmdline}")
    print(f"records analysed: {len(ok)} ({failed} failed); kernels: {len({r['kernel'] for r in ok})}")
    secs = [r["seconds"] for r in ok]
    if secs:
        print(
            f"time per estimate: median {np.median(secs):.2f} s, mean {np.mean(secs):.2f} s, max {max(secs):.1f} s "
            "(build + IR interpretation + llvm-mca + memory model; niced, machine shared)"
        )
    by_kernel = defaultdict(list)
    for r in ok:
        by_kernel[r["kernel"]].append(r)
    names = list(VARIANTS)
    print("\nSpearman's rho, proxy vs measured time, per kernel")
    print(f"{'kernel':32s} {'kind':15s} {'n':>3s} " + " ".join(f"{v:>12s}" for v in names))
    per_kernel_rho = {}
    for k in sorted(by_kernel, key=lambda k: (KINDS.index(by_kernel[k][0]["kind"]), k)):
        rs = by_kernel[k]
        meas = [r["measured_s"] for r in rs]
        rhos = {v: spearman([f(r) for r in rs], meas) for v, f in VARIANTS.items()}
        per_kernel_rho[k] = rhos
        print(f"{k:32s} {rs[0]['kind']:15s} {len(rs):3d} " + " ".join(f"{rhos[v]:+12.2f}" for v in names))
    print("\nper kernel kind: mean of per-kernel rho / pooled rho (all the kind's records together)")
    print(f"{'kind':15s} {'kernels':>7s} {'n':>4s} " + " ".join(f"{v:>13s}" for v in names))
    for kind in KINDS:
        ks = [k for k in by_kernel if by_kernel[k][0]["kind"] == kind]
        if not ks:
            continue
        rs = [r for k in ks for r in by_kernel[k]]
        meas = [r["measured_s"] for r in rs]
        cells = []
        for v, f in VARIANTS.items():
            vals = [per_kernel_rho[k][v] for k in ks if not math.isnan(per_kernel_rho[k][v])]
            mean = float(np.mean(vals)) if vals else float("nan")
            pooled = spearman([f(r) for r in rs], meas)
            cells.append(f"{mean:+.2f}/{pooled:+.2f}")
        print(f"{kind:15s} {len(ks):7d} {len(rs):4d} " + " ".join(f"{c:>13s}" for c in cells))
    allk = list(by_kernel)
    cells = []
    for v, f in VARIANTS.items():
        vals = [per_kernel_rho[k][v] for k in allk if not math.isnan(per_kernel_rho[k][v])]
        cells.append(f"{float(np.mean(vals)):+.2f}/{spearman([f(r) for r in ok], [r['measured_s'] for r in ok]):+.2f}")
    print(f"{'all':15s} {len(allk):7d} {len(ok):4d} " + " ".join(f"{c:>13s}" for c in cells))
    print("\nwhat tuning by the proxy would pick: per kind, the mean over kernels of the measured time of the")
    print("record the variant ranks first, over the best measured time in the sample (1.00: it picks the best;")
    print("'median' is a record picked at random, roughly)")
    print(f"{'kind':15s} {'median':>7s} " + " ".join(f"{v:>12s}" for v in names))
    for kind in KINDS:
        ks = [k for k in by_kernel if by_kernel[k][0]["kind"] == kind and len(by_kernel[k]) >= 3]
        if not ks:
            continue
        med = np.mean(
            [
                np.median([r["measured_s"] for r in by_kernel[k]]) / min(r["measured_s"] for r in by_kernel[k])
                for k in ks
            ]
        )
        picks = [
            np.mean([min(by_kernel[k], key=f)["measured_s"] / min(r["measured_s"] for r in by_kernel[k]) for k in ks])
            for f in VARIANTS.values()
        ]
        print(f"{kind:15s} {med:7.2f} " + " ".join(f"{p:12.2f}" for p in picks))
    unk = sum(r.get("unknown_branches", 0) for r in ok)
    unm = sum(r.get("unmapped_blocks", 0) for r in ok)
    print(f"\nbranches decided by weights, not computed: {unk}; executed blocks without marked code: {unm}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", help="MetaSchedule database directory (work on a copy if a tune is writing it)")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--target", default="x86", help="target preset/JSON; its mcpu is llvm-mca's")
    ap.add_argument(
        "--precision", default="fp32", choices=["fp32", "int8"], help="the build's kernels (int8: the searched ones)"
    )
    ap.add_argument("--per-kernel", type=int, default=30, help="records sampled per kernel (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kernels", help="only kernels whose name contains this")
    ap.add_argument("--out", help="write one JSON line per record here")
    ap.add_argument("--from", dest="from_file", help="re-aggregate rows written by --out; builds nothing")
    args = ap.parse_args()
    cmdline = "python3 " + " ".join(shlex.quote(a) for a in sys.argv)
    if args.from_file:
        rows = [json.loads(line) for line in open(args.from_file) if line.strip()]
    else:
        if not args.db:
            ap.error("--db is required (or --from)")
        out = open(args.out, "w") if args.out else open("/dev/null", "w")
        with out:
            rows = collect(args, out)
    report(rows, cmdline)


if __name__ == "__main__":
    main()
