"""What the Pi build ships, kernel by kernel, estimated with the board-free cost proxy.

    nice -n 19 python3 scripts/arm_estimate.py [--target rpi4] [--alpha 0.5] [--resolution 224]
        [--clock-ghz 1.5] [--json out.json]

For each kernel (tuning task) of the model lowered for the board, as ``tvmnet compile`` would
lower it, two schedules are built for the board's CPU (cross-compiled, no board needed) and
given to the proxy (``tvmnet/proxy/``: llvm-mca with the board's -mcpu, weighted by exact
block counts):

    naive     the kernel as TVM legalizes it (what the Pi build shipped before: no record)
    applied   the record compile applies now (``choose_logs``: this board's class, else another
              architecture's class, replayed)

and it prints, per kernel kind and end to end, the estimated time of each (cycles at
--clock-ghz, times how often the kernel runs in the model) and the ratio. These are ESTIMATES
of a proxy whose rank agreement with measured times on x86 is 0.84 for GEMMs and ~0.5 for
depthwise convs (scripts/proxy_rank.py): they say which is faster by a wide margin, not what a
Pi would measure. Nothing here runs on a board.
"""

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="rpi4")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--clock-ghz", type=float, help="board clock (default: rpi3b 1.2, rpi4 1.5, rpi5 2.4)")
    ap.add_argument("--json", type=Path, help="write the per-kernel rows here")
    args = ap.parse_args()

    import tvm

    from tvmnet.core.config import ModelConfig
    from tvmnet.core.targets import load_target
    from tvmnet.passes.pipeline import kernel_kind
    from tvmnet.proxy.estimate import CLOCK_GHZ
    from tvmnet.proxy.kernel import estimate
    from tvmnet.tune.builder import _install_light_tensor_intrin, intrin_families
    from tvmnet.tune.classes import choose_logs
    from tvmnet.tune.options import TuneOptions
    from tvmnet.tune.search import prepare_tasks

    spec = load_target(args.target)
    ghz = args.clock_ghz or CLOCK_GHZ.get(spec.name)
    if ghz is None:
        ap.error(f"--clock-ghz is needed for target {spec.name}")
    _install_light_tensor_intrin(intrin_families(spec))
    _, tasks = prepare_tasks(TuneOptions(model=ModelConfig(args.alpha, args.resolution), target=spec))
    choice = choose_logs(spec, "auto", tasks)
    print(
        f"{spec.name} ({spec.machine_class()['key']}), MobileNet {args.alpha:g}-{args.resolution}: "
        f"records applied {choice.kernels_tuned}/{len(tasks)} ({choice.match}: {dict(choice.by_source)})",
        file=sys.stderr,
    )
    rows = []
    for task in tasks:
        mod = task.dispatched[0]
        row = {"kernel": task.task_name, "kind": kernel_kind(task.task_name, mod), "weight": int(task.weight)}
        t0 = time.perf_counter()
        row["naive_cycles"] = estimate(mod, spec).cycles
        rec = None
        if choice.database is not None:
            from tvmnet.tune.logs import best_record

            rec = best_record(choice.database, task, spec.tvm_target())
        if rec is not None:
            sch = tvm.s_tir.Schedule(mod)
            rec.trace.apply_to_schedule(sch, remove_postproc=False)
            row["applied_cycles"] = estimate(sch.mod, spec).cycles
        else:
            row["applied_cycles"] = row["naive_cycles"]
        row["applied"] = "record" if rec is not None else "naive"
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(
            f"  {task.task_name:32s} x{row['weight']}  naive {row['naive_cycles'] / ghz / 1e6:9.2f} ms  "
            f"{row['applied']} {row['applied_cycles'] / ghz / 1e6:8.2f} ms  ({row['seconds']} s)",
            file=sys.stderr,
        )

    ms = lambda cyc: cyc / ghz / 1e6  # noqa: E731
    by_kind = defaultdict(lambda: [0.0, 0.0, 0])
    for r in rows:
        k = by_kind[r["kind"]]
        k[0] += r["weight"] * r["naive_cycles"]
        k[1] += r["weight"] * r["applied_cycles"]
        k[2] += r["weight"]
    print(
        f"ESTIMATED by the proxy (llvm-mca -mcpu={spec.target.get('mcpu')}, {ghz} GHz), not measured; "
        f"{spec.name}, MobileNet {args.alpha:g}-{args.resolution}, {spec.target.get('num-cores')} threads"
    )
    print("| kernel kind | kernels run | naive (before) ms | shipped now ms | speed-up |")
    print("|---|---|---|---|---|")
    total = [0.0, 0.0]
    for kind, (naive, applied, n) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
        total[0] += naive
        total[1] += applied
        print(f"| {kind} | {n} | {ms(naive):.2f} | {ms(applied):.2f} | {naive / applied:.1f}x |")
    print(
        f"| **end to end** | {sum(v[2] for v in by_kind.values())} | {ms(total[0]):.2f} | {ms(total[1]):.2f} | "
        f"{total[0] / total[1]:.1f}x |"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "target": spec.name,
                    "alpha": args.alpha,
                    "resolution": args.resolution,
                    "clock_ghz": ghz,
                    "match": choice.match,
                    "rows": rows,
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
