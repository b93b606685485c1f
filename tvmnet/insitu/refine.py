"""Kernels timed where they run, and ``tvmnet refine``: pick each kernel's schedule by that time.

MetaSchedule times a candidate alone, back to back, its weights flushed from the cache but its
input left in it. Inside the model a kernel runs right after the others, on data they just
wrote, with their working sets in the caches; what wins alone is not what wins there.
Measured on MobileNet 0.5-224, 2-core Cascade Lake: the 29 kernel calls take 1.44 ms timed
alone and 1.76 ms in place (the end-to-end run: 1.80); the depthwise convs 1.4-2.5x their
isolated time. Among 40 schedules of one depthwise kernel (28x28x128) the one MetaSchedule
ranked first ran 20 us alone and 46 us in place; another ran 29 us alone and 34 us in place.

:class:`Replay` records the VM's kernel calls once (functions and the very tensors they get),
then calls them again in order from Python: the same kernels on the same buffers, so each
kernel is timed in place (the replay takes as long as the VM run, within 3%). A candidate for
one kernel replaces it in the sequence and only its calls are timed.

``refine_model`` (``tvmnet refine``): for each kernel that runs much slower in place than alone,
the candidates are the current schedule, the kernel's 4 best records in this class's log (alone
they were within the tuner's noise of each other: on a 2-vCPU VM one measurement swings by
10-30%), the schedules of the same layer in the other models this class's log holds (nearest
shapes first), for GEMM kernels our micro-kernel grid with packed weights (``tune.seeds.packed_seeds``),
and the best of a short search (``tvmnet tune``
into a scratch database); they are built and timed in place in interleaved rounds (the median of
each), and the fastest there, if it beats the
current schedule by more than the noise, goes into the class's ``in_situ/`` database, which
``compile`` consults before the main log. Its records' times are in-place times.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from tvmnet.core.errors import UsageError
from tvmnet.insitu.replay import Replay, candidate_args, vm_name
from tvmnet.tune.mslogging import keeps_metaschedule_logging

log = logging.getLogger(__name__)

GAIN = 0.03  # a candidate must beat the current kernel in place by this much
CONFIRM = 5  # rounds of the current vs the best, in turn, before a pick
ROUNDS = 3  # candidates timed in this many interleaved rounds ...
RUNS_PER_ROUND = 20  # ... of this many model replays each
NEAREST = 8  # candidates from this class's log: the same layer of the 8 nearest models
OWN_TOP = 4  # ... and the kernel's own 4 best records there
AB_ROUNDS = 12  # the end-to-end A/B of the picks: rounds, in turn ...
KEEP_BELOW = 0.99  # ... and the picks stay only when after/before, per round, has a median below this


@dataclass
class Seed:
    """A candidate that is no record yet (one of our GEMM micro-kernels): its trace is all a
    pick commits."""

    trace: object


@dataclass
class KernelResult:
    name: str
    calls: int
    alone_us: float
    before_us: float
    after_us: float
    candidates: int
    picked: bool


@dataclass
class RefineResult:
    kernels: List[KernelResult] = field(default_factory=list)
    e2e_before_ms: Optional[float] = None
    e2e_after_ms: Optional[float] = None
    e2e_ratio: Optional[float] = None  # median over rounds of after / before, timed in turn
    kept: bool = True  # False: the picks lost the end-to-end A/B and were taken back
    database: Optional[Path] = None
    seconds: float = 0.0

    @property
    def picked(self) -> int:
        return sum(k.picked for k in self.kernels) if self.kept else 0


@keeps_metaschedule_logging
def refine_model(
    model,
    spec,
    trials: int = 32,
    top: int = 16,
    kernels: Optional[str] = None,
    min_ratio: float = 1.25,
    log_dir: Optional[Path] = None,
    scratch: Optional[Path] = None,
    say=print,
) -> RefineResult:
    """See the module docstring. ``kernels``: only kernels whose name contains it (default:
    those ``min_ratio`` x slower in place than alone)."""
    from tvmnet.tune.classes import IN_SITU_DIR
    from tvmnet.tune.logs import RECORD_FILE, database_dir

    if trials < 0 or top < 1:
        raise UsageError("--trials must be at least 0 and --top at least 1")
    why = spec.host_mismatch()
    if why or not spec.is_cpu:
        raise UsageError(
            f"refine times kernels inside the model on this machine's CPU; target {spec.name} "
            f"{'cannot run here (' + why + ')' if why else 'is not a CPU target'}"
        )
    started = time.perf_counter()
    db_path = database_dir(spec, log_dir)
    if not (db_path / RECORD_FILE).is_file():
        raise UsageError(
            f"no tuning log for this machine class in {db_path}; run `tvmnet tune --target {spec.name}` first"
        )
    res = RefineResult(database=db_path / IN_SITU_DIR)
    work = Path(tempfile.mkdtemp(prefix="tvmnet-refine-"))
    kept = work / "in_situ-before"  # the picks as they were: put back when the new ones lose the A/B
    if res.database.is_dir():
        shutil.copytree(res.database, kept)
    try:
        _refine(model, spec, trials, top, kernels, min_ratio, log_dir, scratch, say, res, work, db_path, started)
        if res.e2e_ratio is not None and res.e2e_ratio >= KEEP_BELOW:
            shutil.rmtree(res.database, ignore_errors=True)
            if kept.is_dir():
                shutil.copytree(kept, res.database)
            res.kept = False
            say(
                f"the picks lost the end-to-end A/B (per-round ratio {res.e2e_ratio:.3f}, kept only below "
                f"{KEEP_BELOW}): {res.database} is back as it was"
            )
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _refine(model, spec, trials, top, kernels, min_ratio, log_dir, scratch, say, res, work, db_path, started):
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from tvmnet.build.artifact import load_artifact
    from tvmnet.build.choose import lower_and_choose_logs
    from tvmnet.build.compiler import CompileOptions, compile_model
    from tvmnet.frontend import import_model
    from tvmnet.passes.pipeline import extract_tasks
    from tvmnet.passes.weight_prefetch import as_compiled, prefetched_kernel
    from tvmnet.tune.builder import make_builder
    from tvmnet.tune.logs import (
        best_record,
        database_dir,
        drop_kernel_records,
        kernel_pool,
        nearest_kernel_records,
        open_database,
    )
    from tvmnet.tune.measure import replay_on
    from tvmnet.tune.options import TuneOptions
    from tvmnet.tune.search import tune_model
    from tvmnet.tune.seeds import packed_seeds

    scratch = Path(scratch) if scratch else work / "scratch"
    logs = db_path if log_dir else "auto"
    say(f"compiling {model.display()} with the current logs")
    art = compile_model(
        CompileOptions(model=model, target=spec, output=work / "before", tuning_log=logs),
        progress=lambda m: log.info(m),
    )
    rp = Replay(art)
    names = rp.names()
    alone = rp.alone_us()
    before = rp.in_place_us()
    res.e2e_before_ms = rp.vm_ms()
    say(
        f"end to end {res.e2e_before_ms:.3f} ms; kernels {sum(alone.values()) / 1e3:.3f} ms alone, "
        f"{sum(before.values()) / 1e3:.3f} ms in place"
    )

    mod, *_ = import_model(model)
    layout, lowered, choice = lower_and_choose_logs(
        mod, CompileOptions(model=model, target=spec, output=work / "x", tuning_log=logs, layout=art.metadata["layout"])
    )
    tasks = {t.task_name: t for t in extract_tasks(lowered, spec)}
    todo = []
    for tname in tasks:
        vname = vm_name(tname, names)
        if vname is None:
            continue
        if kernels is not None:
            if kernels in tname:
                todo.append((tname, vname))
        elif before[vname] >= min_ratio * alone[vname] and before[vname] - alone[vname] >= 2.0:
            todo.append((tname, vname))
    if not todo:
        raise UsageError(
            f"no kernel {'named like ' + repr(kernels) if kernels else f'runs {min_ratio:g}x slower in place than alone'}"
            "; nothing to refine"
        )
    todo.sort(key=lambda p: -(before[p[1]] - alone[p[1]]))
    say(
        f"{len(todo)} kernel(s) to refine: "
        + ", ".join(f"{v} ({before[v]:.0f} us in place, {alone[v]:.0f} alone)" for _, v in todo)
    )
    target = spec.tvm_target()
    isa = spec.vector_isa()
    builder = make_builder(spec)
    main_db = open_database(db_path)
    pool = kernel_pool(main_db)  # other models' kernels of this class: their schedules are candidates too
    out_db = open_database(res.database, create=True)
    for k, (tname, vname) in enumerate(todo, 1):
        task = tasks[tname]
        fmod = task.dispatched[0]
        recs = nearest_kernel_records(main_db, fmod, NEAREST, pool)
        say(
            f"[{k}/{len(todo)}] {vname}"
            + (f": searching {trials} schedules (MetaSchedule, scratch database)" if trials else "")
        )
        if trials:
            tune_model(
                TuneOptions(
                    model=model,
                    target=spec,
                    trials=trials,
                    log_dir=scratch,
                    kernels=tname,
                    layout=layout,
                    progress=False,
                    warm_start=False,
                ),
                say=lambda m: log.info(m),
            )
            sdb = open_database(database_dir(spec, scratch))
            if sdb.has_workload(fmod):
                recs += list(sdb.get_top_k(sdb.commit_workload(fmod), top))
        cur = best_record(choice.database, task, target) if choice.database is not None else None
        recs += [r for r in (best_record(main_db, task, target), cur) if r is not None]  # the log's best, the pick
        if main_db.has_workload(fmod):  # and its runners-up: alone, they were within the tuner's noise of it
            recs += list(main_db.get_top_k(main_db.commit_workload(fmod), OWN_TOP))
        pairs = replay_on(fmod, recs, tname)
        known = {str(r.trace) for _, r in pairs}
        pairs += [
            (sch, Seed(sch.trace))
            for sch in packed_seeds(task, work / "seed-contexts", isa)
            if str(sch.trace) not in known
        ]  # GEMMs: our micro-kernel grid, weights packed
        mods, recs = [sch.mod for sch, _ in pairs], [r for _, r in pairs]
        if prefetched_kernel(
            spec.arch, tname
        ):  # built as compile builds it (packed weights, PrefetchWeights), else it loses to it
            mods = [as_compiled(m) for m in mods]
        built = builder.build([ms.builder.BuilderInput(m, target) for m in mods])
        runnable = []
        for r, m, b in zip(recs, mods, built):
            if b.error_msg:
                continue
            rt = tvm.runtime.load_module(b.artifact_path)
            func = rt[rt.entry_name] if rt.entry_name else rt["main"]
            args_for = candidate_args(m, rp.device)
            try:
                rp.candidate_us(vname, func, args_for, runs=2)
            except Exception as err:  # noqa: BLE001 - a candidate that cannot run in place is skipped
                log.info("candidate skipped: %s", err)
                continue
            runnable.append((r, func, args_for, m))
        cur_func = next(c.func for c in rp.calls if c.name == vname)  # as compiled
        # every candidate and the current kernel timed in ROUNDS interleaved rounds, the median
        # of each: the VM's speed drifts by 10-30% within minutes, one block per candidate
        # compared candidates timed at different speeds
        samples = [[] for _ in range(len(runnable) + 1)]
        for _ in range(ROUNDS):
            samples[0].append(rp.candidate_us(vname, cur_func, lambda a: a, runs=RUNS_PER_ROUND))
            for k, (_, func, args_for, _) in enumerate(runnable, 1):
                samples[k].append(rp.candidate_us(vname, func, args_for, runs=RUNS_PER_ROUND))
        now = statistics.median(samples[0])
        times, baseline = [], None
        for (r, func, args_for, m), v in zip(runnable, samples[1:]):
            times.append((statistics.median(v), r, func, args_for, m))
            if cur is not None and str(r.trace) == str(cur.trace):
                baseline = times[-1][0]
        # the bar: the current schedule built the same way as the candidates (else as compiled)
        bar = min(now, baseline) if baseline is not None else now
        best = min(times, key=lambda t: t[0]) if times else None
        picked = (
            best is not None and (cur is None or str(best[1].trace) != str(cur.trace)) and best[0] < bar * (1 - GAIN)
        )
        if picked:  # confirm against drift: the current and the best timed in turn, 5 times each
            a, b = [], []
            for _ in range(CONFIRM):
                a.append(rp.candidate_us(vname, cur_func, lambda x: x, runs=30))
                b.append(rp.candidate_us(vname, best[2], best[3], runs=30))
            now, confirmed = statistics.median(a), statistics.median(b)
            best = (confirmed,) + best[1:]
            picked = confirmed < now * (1 - GAIN)
        if picked:
            us, rec, func, args_for, smod = best
            n_calls = sum(c.name == vname for c in rp.calls)
            if drop_kernel_records(res.database, fmod):  # the newest pick replaces an older one
                out_db = open_database(res.database, create=True)
            out_db.commit_tuning_record(
                ms.database.TuningRecord(
                    rec.trace,
                    out_db.commit_workload(fmod),
                    [us / n_calls * 1e-6],
                    target,
                    ms.arg_info.ArgInfo.from_entry_func(smod, remove_preproc=True),
                )
            )
            rp.replace(vname, func, args_for)
        after = best[0] if picked else now
        res.kernels.append(
            KernelResult(vname, sum(c.name == vname for c in rp.calls), alone[vname], now, after, len(times), picked)
        )
        rebuilt = (
            f" (its schedule rebuilt as a candidate: {baseline:.1f} us)" if baseline is not None and not picked else ""
        )
        say(
            f"    in place: {now:.1f} us now{rebuilt}, best of {len(times)} candidates {best[0]:.1f} us"
            f" -> {'picked' if picked else 'kept the current schedule'}"
            if best
            else "    no candidate ran"
        )
    if any(k.picked for k in res.kernels):
        say("compiling again with the picks, timing before and after in turn")
        art2 = compile_model(
            CompileOptions(
                model=model, target=spec, output=work / "after", tuning_log=logs, layout=art.metadata["layout"]
            ),
            progress=lambda m: log.info(m),
        )
        rp2 = Replay(load_artifact(art2.path))
        b, a = [], []
        for r in range(AB_ROUNDS):  # in turn, the order swapped every other round
            pair = (rp, rp2) if r % 2 == 0 else (rp2, rp)
            t = {id(x): x.vm_ms(number=20, repeat=3) for x in pair}
            b.append(t[id(rp)])
            a.append(t[id(rp2)])
        res.e2e_before_ms, res.e2e_after_ms = statistics.median(b), statistics.median(a)
        res.e2e_ratio = statistics.median(y / x for x, y in zip(b, a))
    res.seconds = time.perf_counter() - started
    return res
