"""The cost proxy calibrated on this machine, where the truth is known.

The proxy (llvm-mca with every load an L1 hit) reads low: on a Zen 4, the kernels of the x86
build measured ~1.9x its estimate, by kind 1.2-1.4x for depthwise convs and up to 2.5-2.7x for
the classifier. So ``calibrate`` builds this machine's own x86 build of a model, kernel by kernel
(the records ``compile`` would apply), and per kernel kind compares

    measured cycles = the kernel's time here (warm cache, MetaSchedule's runner) x this core's clock
    estimated cycles = the proxy's Total Cycles for the same kernel, with this host's -mcpu

The factor of a kind is the ratio of their sums over the kind's kernels (weighted by calls, so
that the end to end stays consistent); its spread is the range of the per-kernel ratios. The
clock is measured (a chain of dependent adds), never read from /proc (a Zen 4 VM reported
2.6 GHz and ran at 3.6).

A board estimate is then multiplied, kind by kind, by this machine's factors. What carries over
from an x86 core to a Cortex-A72 and what does not is in docs/proxy.md: the factor mostly
stands for what the proxy leaves out (cache misses, memory bandwidth, thread-pool launches),
and those differ between the machines; it is a correction of scale, not a measurement.

The factors are cached per machine class in ``~/.cache/tvmnet/calibration/<class>.json``.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import tempfile
import time
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Callable, Optional

from tvmnet.core.errors import ToolchainError, UsageError
from tvmnet.core.paths import CACHE_DIR

FORMAT = "tvmnet-calibration/1"
POOLED = "all kinds"  # the factor for a kind the calibration had no kernel of: pooled over KINDS
# the kinds with a factor of their own; the rest (the pool's mean, layout copies) hold microseconds
# and the proxy hardly models them (a transpose estimated at ~0 cycles gave a factor of 110)
KINDS = ("pointwise GEMM", "depthwise conv", "stem conv", "fc")

_CLOCK_C = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
    long n = 300000000, x = 0;
    struct timespec a, b;
    for (int rep = 0; rep < 2; rep++) {  /* the first pass wakes the core up */
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (long i = 0; i < n; i++)
            __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
        clock_gettime(CLOCK_MONOTONIC, &b);
    }
    double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
    printf("%.4f\n", 4.0 * n / s / 1e9);
    return (int)(x & 0);
}
"""


def measured_clock_ghz() -> float:
    """This core's clock while busy: four dependent adds per loop trip, one cycle each."""
    import platform

    if platform.machine() != "x86_64":
        raise UsageError("measuring the clock needs an x86-64 host (the calibration runs on x86)")
    with tempfile.TemporaryDirectory() as d:
        src, exe = Path(d) / "clock.c", Path(d) / "clock"
        src.write_text(_CLOCK_C)
        try:
            subprocess.run(["cc", "-O1", "-o", str(exe), str(src)], check=True, capture_output=True, timeout=60)
            out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=120).stdout
        except (OSError, subprocess.SubprocessError) as err:
            raise ToolchainError(
                f"cannot measure the clock ({err}); install a C compiler (apt-get install gcc)"
            ) from err
    return float(out.strip())


def threads_first() -> None:
    """TVM_NUM_THREADS for this host's cores, set before TVM is imported: set later, MetaSchedule's
    runner measured the kernels with one thread (226 us instead of 118 for a GEMM of 0.5-224)."""
    from tvmnet.core.targets import host_cores

    os.environ.setdefault("TVM_NUM_THREADS", str(host_cores()))


def _worker_threads(n: int) -> None:
    """In the runner's worker, before its first kernel: the target's thread count."""
    os.environ["TVM_NUM_THREADS"] = str(n)


def cache_path(spec, precision: str = "fp32") -> Path:
    """fp32's factors in ``<class>.json``, int8's (fitted on the int8 build) in ``<class>-int8.json``."""
    return (
        CACHE_DIR
        / "calibration"
        / (f"{spec.machine_class()['key']}" + ("-int8" if precision == "int8" else "") + ".json")
    )


def load_calibration(spec, precision: str = "fp32") -> Optional[dict]:
    try:
        cal = json.loads(cache_path(spec, precision).read_text())
        return cal if cal.get("format") == FORMAT else None
    except (OSError, ValueError):
        return None


def _kernels(cfg, spec, precision: str):
    """(name, kind, calls, scheduled module) of each kernel of ``cfg``'s build here, as compile
    builds it: the records of the log for the searched kernels; in int8 also tvmnet's own."""
    import tvm

    from tvmnet.passes import pipeline
    from tvmnet.tune.classes import choose_logs
    from tvmnet.tune.logs import best_record

    if precision == "int8":
        from tvmnet.passes.int8 import lowered_int8

        with tempfile.TemporaryDirectory(prefix="tvmnet-cal-") as tmp:
            lowered, _ = lowered_int8(cfg, spec, Path(tmp))
    else:
        from tvmnet.frontend import import_model

        mod, *_ = import_model(cfg)
        lowered = pipeline.lower_to_tir(mod, spec)
    tasks = pipeline.extract_tasks(lowered, spec)
    choice = choose_logs(spec, "auto", tasks)
    items = []
    for task in tasks:
        sch = tvm.s_tir.Schedule(task.dispatched[0])
        rec = best_record(choice.database, task, spec.tvm_target()) if choice.database is not None else None
        if rec is not None:
            rec.trace.apply_to_schedule(sch, remove_postproc=False)
        kind = pipeline.kernel_kind(task.task_name, task.dispatched[0])
        items.append((task.task_name, kind, int(task.weight), sch.mod))
    for name, func, calls in pipeline.own_kernel_calls(lowered):
        items.append(
            (
                name,
                pipeline.own_kernel_kind(name),
                calls,
                tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
            )
        )
    return items


def kernel_rows(cfgs: list, spec, say: Callable[[str], None] = print, rounds: int = 3, precision: str = "fp32") -> list:
    """For each model of ``cfgs``, each kernel of its x86 build (the records compile applies):
    kind, calls, measured seconds here (warm cache) and the proxy's cycles. The models' kernels
    are measured in turn, one of each in a row, so that a slow phase of the VM (its speed moves by
    a third within minutes) falls on every model alike, in ``rounds`` rounds (a kernel's median).

    Every kernel is built before the first is timed and estimated after the last: with a build and
    llvm-mca between two timings, a third of the kernels timed at half speed (one thread's worth,
    Zen 4, Dec 6), which made the factors of one model miss another's by 25-30%."""
    spec.use_threads()
    from tvm.s_tir import meta_schedule as ms

    from tvmnet.proxy.kernel import estimate
    from tvmnet.tune.builder import make_builder

    target = spec.tvm_target()
    queues = [_kernels(cfg, spec, precision) for cfg in cfgs]
    builder = make_builder(spec)
    runner = ms.runner.LocalRunner(
        timeout_sec=60,
        evaluator_config=ms.runner.EvaluatorConfig(number=20, repeat=5, min_repeat_ms=0, enable_cpu_cache_flush=False),
        initializer=partial(_worker_threads, int(spec.target.get("num-cores") or 1)),
    )
    # everything built first and estimated after: a build or llvm-mca between two runs left the
    # next kernel measured at half speed (one thread's worth) in about a third of the kernels
    say(f"building {sum(len(q) for q in queues)} kernels")
    built = []
    for items in queues:
        inputs = [ms.builder.BuilderInput(fmod, target) for *_, fmod in items]
        results = builder.build(inputs)
        for (name, *_), res in zip(items, results):
            if res.error_msg:
                raise ToolchainError(f"{name}: build failed: {res.error_msg.strip().splitlines()[-1]}")
        built.append([r.artifact_path for r in results])
    samples = [[[] for _ in q] for q in queues]
    total = rounds * sum(len(q) for q in queues)
    done = 0
    for rnd in range(rounds):
        for k in range(max(len(q) for q in queues)):
            for m, items in enumerate(queues):
                if k >= len(items):
                    continue
                name, _, _, fmod = items[k]
                args = ms.arg_info.ArgInfo.from_entry_func(fmod, remove_preproc=True)
                (res,) = [f.result() for f in runner.run([ms.runner.RunnerInput(built[m][k], "cpu", args)])]
                if res.error_msg:
                    raise ToolchainError(f"{name}: run failed: {res.error_msg.strip().splitlines()[-1]}")
                secs = sorted(float(s) for s in res.run_secs)
                samples[m][k].append(secs[len(secs) // 2])
                done += 1
                say(f"  [{done}/{total}] round {rnd + 1}/{rounds} {cfgs[m].alpha:g}-{cfgs[m].resolution} "
                    f"{name}: {1e6 * samples[m][k][-1]:.1f} us")  # fmt: skip
    seconds = [[sorted(s)[len(s) // 2] for s in q] for q in samples]
    say("estimating each kernel with the proxy")
    out = []
    for m, items in enumerate(queues):
        rows = []
        for k, (name, kind, calls, fmod) in enumerate(items):
            est = estimate(fmod, spec, with_memory=True)
            rows.append(
                {
                    "kernel": name,
                    "kind": kind,
                    "calls": calls,
                    "seconds": seconds[m][k],
                    "cycles": est.cycles,
                    "launches": est.parallel_launches,
                    **{key: est.memory.get(key) for key in ("l1_lines", "l2_lines", "cold_lines")},
                }
            )
        out.append(rows)
    return out


def factors(rows: list, ghz: float) -> dict:
    """Per kind (and pooled): measured / estimated cycles, weighted by calls, and its spread."""
    groups = defaultdict(list)
    for r in rows:
        if r["kind"] in KINDS:
            groups[r["kind"]].append(r)
            groups[POOLED].append(r)
    out = {}
    for kind, rs in groups.items():
        measured = sum(r["seconds"] * ghz * 1e9 * r["calls"] for r in rs)
        est = sum(r["cycles"] * r["calls"] for r in rs)
        each = [r["seconds"] * ghz * 1e9 / r["cycles"] for r in rs if r["cycles"] > 0]
        out[kind] = {
            "factor": round(measured / est, 4) if est else None,
            "min": round(min(each), 3) if each else None,
            "max": round(max(each), 3) if each else None,
            "kernels": len(rs),
        }
    return out


def calibrate(spec, cfg, say: Callable[[str], None] = print, check_cfg=None, precision: str = "fp32") -> dict:
    """Fit the factors on ``cfg``'s x86 build here and cache them for this machine class; with
    ``check_cfg``, measure that model's kernels in turn with them and check the fit on it
    (``cal["check"]``: measured / calibrated, a model the factors were not fitted on)."""
    why = spec.host_mismatch()
    if why or spec.arch != "x86_64" or not spec.is_cpu:
        raise UsageError(f"the calibration measures an x86 build on this machine; target {spec.name} does not run here")
    say("measuring this core's clock")
    ghz = measured_clock_ghz()
    say(f"clock {ghz:.2f} GHz; measuring and estimating each kernel of {cfg.display()} here")
    t0 = time.perf_counter()
    rows, *other = kernel_rows([cfg] + ([check_cfg] if check_cfg is not None else []), spec, say, precision=precision)
    cal = {
        "format": FORMAT,
        "precision": precision,
        "class": spec.machine_class()["key"],
        "clock_ghz": round(ghz, 3),
        "model": f"{cfg.alpha:g}-{cfg.resolution}",
        "factors": factors(rows, ghz),
        "measured_ms": round(1e3 * sum(r["seconds"] * r["calls"] for r in rows), 4),
        "estimated_ms": round(sum(r["cycles"] * r["calls"] for r in rows) / ghz / 1e6, 4),
        "rows": rows,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if other:
        cal["check"] = check(cal, check_cfg, other[0])
    path = cache_path(spec, precision)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cal, indent=1) + "\n")
    tmp.replace(path)
    return cal


def apply(cal: dict, by_kind_ms: dict) -> dict:
    """Calibrated ms per kind (a kind the calibration lacks takes the pooled factor)."""
    fs = cal["factors"]
    return {kind: ms * (fs.get(kind) or fs[POOLED])["factor"] for kind, ms in by_kind_ms.items()}


def check(cal: dict, cfg, rows: list) -> dict:
    """The calibration on another model's kernels (``rows``): measured / calibrated, sums."""
    ghz = cal["clock_ghz"]
    by_kind = defaultdict(float)
    for r in rows:
        by_kind[r["kind"]] += r["cycles"] * r["calls"] / ghz / 1e6
    calibrated = sum(apply(cal, by_kind).values())
    measured = 1e3 * sum(r["seconds"] * r["calls"] for r in rows)
    return {
        "model": f"{cfg.alpha:g}-{cfg.resolution}",
        "fitted_on": cal["model"],
        "measured_ms": measured,
        "raw_ms": sum(by_kind.values()),
        "calibrated_ms": calibrated,
        "measured_over_calibrated": measured / calibrated,
    }
