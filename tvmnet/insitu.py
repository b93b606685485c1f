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
shapes first), for GEMM kernels our micro-kernel grid with packed weights (``tuning.packed_seeds``),
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
from typing import Callable, Dict, List, Optional

import numpy as np

from .errors import UsageError

log = logging.getLogger(__name__)

KERNEL_PREFIXES = ("fused_", "mean", "max", "sum", "transpose", "reshape")
GAIN = 0.03               # a candidate must beat the current kernel in place by this much
CONFIRM = 5               # rounds of the current vs the best, in turn, before a pick
ROUNDS = 3                # candidates timed in this many interleaved rounds ...
RUNS_PER_ROUND = 20       # ... of this many model replays each
NEAREST = 8               # candidates from this class's log: the same layer of the 8 nearest models
OWN_TOP = 4               # ... and the kernel's own 4 best records there


def _now() -> int:
    return time.perf_counter_ns()


@dataclass
class Call:
    name: str
    func: Callable
    args: list


class Replay:
    """An artifact loaded on this machine with its kernel calls recorded for replay."""

    def __init__(self, artifact):
        import tvm
        from tvm import relax

        from .targets import TargetSpec

        spec = TargetSpec.from_json(artifact.target)
        why = spec.host_mismatch()
        if why or spec.device != "cpu":
            raise UsageError(f"in-place timing runs the model on this machine's CPU, and {artifact.path} "
                             f"{'cannot run here: ' + why if why else 'is not a CPU build'}")
        spec.use_threads()
        self.device = tvm.cpu(0)
        self.artifact = artifact
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(artifact.library)), self.device)
        x = np.random.default_rng(0).standard_normal(artifact.input_shape).astype(np.float32)
        self.vm.set_input("main", tvm.runtime.tensor(x, self.device))
        calls: List[Call] = []

        def record(func, name, before, _ret, *args):
            if before and name.startswith(KERNEL_PREFIXES):
                calls.append(Call(name, func, list(args)))
            return 0

        self.vm.set_instrument(record)
        self.vm.invoke_stateful("main")
        self.vm.set_instrument(None)
        self.calls = calls
        for _ in range(10):
            self.run()

    def names(self) -> List[str]:
        return list(dict.fromkeys(c.name for c in self.calls))

    def run(self) -> None:
        for c in self.calls:
            c.func(*c.args)

    def vm_ms(self, number: int = 20, repeat: int = 10) -> float:
        res = self.vm.time_evaluator("invoke_stateful", self.device, number=number, repeat=repeat)("main")
        return 1e3 * statistics.median(res.results)

    def in_place_us(self, runs: int = 100) -> Dict[str, float]:
        """Per kernel: the median over ``runs`` replays of the time of all its calls, in us."""
        per = {n: [] for n in self.names()}
        for _ in range(runs):
            tot = dict.fromkeys(per, 0)
            for c in self.calls:
                t0 = _now()
                c.func(*c.args)
                tot[c.name] += _now() - t0
            for n, v in tot.items():
                per[n].append(v)
        return {n: statistics.median(v) / 1e3 for n, v in per.items()}

    def alone_us(self, runs: int = 50) -> Dict[str, float]:
        """Per kernel: all its calls, each timed back to back on its own (MetaSchedule's view)."""
        out = {}
        for name in self.names():
            total = 0.0
            for c in (c for c in self.calls if c.name == name):
                for _ in range(5):
                    c.func(*c.args)
                ts = []
                for _ in range(runs):
                    t0 = _now()
                    c.func(*c.args)
                    ts.append(_now() - t0)
                total += statistics.median(ts)
            out[name] = total / 1e3
        return out

    def candidate_us(self, name: str, func: Callable, args_for: Callable[[list], list], runs: int = 60) -> float:
        """In place: kernel ``name`` replaced by ``func`` (its arguments from ``args_for(old
        args)``), the median over ``runs`` replays of the time of its calls, in us."""
        subs = {i: args_for(c.args) for i, c in enumerate(self.calls) if c.name == name}
        if not subs:
            raise KeyError(name)
        ts = []
        for _ in range(runs):
            tot = 0
            for i, c in enumerate(self.calls):
                if i in subs:
                    a = subs[i]
                    t0 = _now()
                    func(*a)
                    tot += _now() - t0
                else:
                    c.func(*c.args)
            ts.append(tot)
        return statistics.median(ts) / 1e3

    def replace(self, name: str, func: Callable, args_for: Callable[[list], list]) -> None:
        """From now on the replay runs ``func`` for kernel ``name``."""
        for c in self.calls:
            if c.name == name:
                c.args, c.func = args_for(c.args), func


def vm_name(task_name: str, names: List[str]) -> Optional[str]:
    """The VM function of a tuning task: the task's name, or with ``_prepacked`` when compile
    pre-packed its weights."""
    for n in (task_name + "_prepacked", task_name):
        if n in names:
            return n
    return None


def candidate_args(mod, device):
    """``args_for`` for a scheduled kernel: the recorded tensors where the shapes agree (input,
    output, weights in the same layout); fresh random tensors for weights the candidate lays
    out otherwise (their values do not change its time)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    shapes = [tuple(int(s) for s in info.as_json()[2]) for info in
              ms.arg_info.ArgInfo.from_entry_func(mod, remove_preproc=True)]
    fresh: dict = {}

    def args_for(old):
        if len(old) != len(shapes):
            raise ValueError(f"candidate takes {len(shapes)} arguments, the kernel {len(old)}")
        out = []
        for k, (shape, arg) in enumerate(zip(shapes, old)):
            if tuple(arg.shape) == shape:
                out.append(arg)
            else:
                if k not in fresh:
                    fresh[k] = tvm.runtime.tensor(0.05 * np.random.default_rng(k).standard_normal(shape, dtype=np.float32),
                                                  device)
                out.append(fresh[k])
        return out

    return args_for


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
    database: Optional[Path] = None
    seconds: float = 0.0


def refine_model(model, spec, trials: int = 32, top: int = 16, kernels: Optional[str] = None,
                 min_ratio: float = 1.25, log_dir: Optional[Path] = None, scratch: Optional[Path] = None,
                 say=print) -> RefineResult:
    """See the module docstring. ``kernels``: only kernels whose name contains it (default:
    those ``min_ratio`` x slower in place than alone)."""
    from .logs import IN_SITU_DIR, RECORD_FILE, database_dir

    if trials < 0 or top < 1:
        raise UsageError("--trials must be at least 0 and --top at least 1")
    why = spec.host_mismatch()
    if why or not spec.is_cpu:
        raise UsageError(f"refine times kernels inside the model on this machine's CPU; target {spec.name} "
                         f"{'cannot run here (' + why + ')' if why else 'is not a CPU target'}")
    started = time.perf_counter()
    db_path = database_dir(spec, log_dir)
    if not (db_path / RECORD_FILE).is_file():
        raise UsageError(f"no tuning log for this machine class in {db_path}; run `tvmnet tune --target {spec.name}` first")
    res = RefineResult(database=db_path / IN_SITU_DIR)
    work = Path(tempfile.mkdtemp(prefix="tvmnet-refine-"))
    try:
        return _refine(model, spec, trials, top, kernels, min_ratio, log_dir, scratch, say, res, work, db_path, started)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _refine(model, spec, trials, top, kernels, min_ratio, log_dir, scratch, say, res, work, db_path, started):
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from .artifact import load_artifact
    from .builder_fix import make_builder
    from .compiler import CompileOptions, _lower_and_choose_logs, compile_model
    from .frontend import import_model
    from .logs import (best_record, database_dir, drop_kernel_records, kernel_pool, nearest_kernel_records,
                       open_database)
    from .passes.weight_prefetch import as_compiled, prefetched_kernel
    from .tuning import TuneOptions, extract_tasks, packed_seeds, replay_on, tune_model

    scratch = Path(scratch) if scratch else work / "scratch"
    logs = db_path if log_dir else "auto"
    say(f"compiling {model.display()} with the current logs")
    art = compile_model(CompileOptions(model=model, target=spec, output=work / "before", tuning_log=logs),
                        progress=lambda m: log.info(m))
    rp = Replay(art)
    names = rp.names()
    alone = rp.alone_us()
    before = rp.in_place_us()
    res.e2e_before_ms = rp.vm_ms()
    say(f"end to end {res.e2e_before_ms:.3f} ms; kernels {sum(alone.values()) / 1e3:.3f} ms alone, "
        f"{sum(before.values()) / 1e3:.3f} ms in place")

    mod, *_ = import_model(model)
    layout, lowered, choice = _lower_and_choose_logs(mod, CompileOptions(model=model, target=spec, output=work / "x",
                                                                         tuning_log=logs))
    tasks = {t.task_name: t for t in extract_tasks(lowered, spec)}
    todo = []
    for tname, task in tasks.items():
        vname = vm_name(tname, names)
        if vname is None:
            continue
        if kernels is not None:
            if kernels in tname:
                todo.append((tname, vname))
        elif before[vname] >= min_ratio * alone[vname] and before[vname] - alone[vname] >= 2.0:
            todo.append((tname, vname))
    if not todo:
        raise UsageError(f"no kernel {'named like ' + repr(kernels) if kernels else f'runs {min_ratio:g}x slower in place than alone'}"
                         "; nothing to refine")
    todo.sort(key=lambda p: -(before[p[1]] - alone[p[1]]))
    say(f"{len(todo)} kernel(s) to refine: " + ", ".join(f"{v} ({before[v]:.0f} us in place, {alone[v]:.0f} alone)"
                                                         for _, v in todo))
    target = spec.tvm_target()
    isa = spec.vector_isa()
    builder = make_builder(spec)
    main_db = open_database(db_path)
    pool = kernel_pool(main_db)   # other models' kernels of this class: their schedules are candidates too
    out_db = open_database(res.database, create=True)
    for k, (tname, vname) in enumerate(todo, 1):
        task = tasks[tname]
        fmod = task.dispatched[0]
        recs = nearest_kernel_records(main_db, fmod, NEAREST, pool)
        say(f"[{k}/{len(todo)}] {vname}" + (f": searching {trials} schedules (MetaSchedule, scratch database)"
                                             if trials else ""))
        if trials:
            tune_model(TuneOptions(model=model, target=spec, trials=trials, log_dir=scratch, kernels=tname,
                                   layout=layout, progress=False, warm_start=False), say=lambda m: log.info(m))
            sdb = open_database(database_dir(spec, scratch))
            if sdb.has_workload(fmod):
                recs += list(sdb.get_top_k(sdb.commit_workload(fmod), top))
        cur = best_record(choice.database, task, target) if choice.database is not None else None
        recs += [r for r in (best_record(main_db, task, target), cur) if r is not None]   # the log's best, the pick
        if main_db.has_workload(fmod):   # and its runners-up: alone, they were within the tuner's noise of it
            recs += list(main_db.get_top_k(main_db.commit_workload(fmod), OWN_TOP))
        pairs = replay_on(fmod, recs, tname)
        known = {str(r.trace) for _, r in pairs}
        pairs += [(sch, Seed(sch.trace)) for sch in packed_seeds(task, work / "seed-contexts", isa)
                  if str(sch.trace) not in known]   # GEMMs: our micro-kernel grid, weights packed
        mods, recs = [sch.mod for sch, _ in pairs], [r for _, r in pairs]
        if prefetched_kernel(spec.arch, tname):   # built as compile builds it (packed weights, PrefetchWeights), else it loses to it
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
            except Exception as err:   # noqa: BLE001 - a candidate that cannot run in place is skipped
                log.info("candidate skipped: %s", err)
                continue
            runnable.append((r, func, args_for, m))
        cur_func = next(c.func for c in rp.calls if c.name == vname)   # as compiled
        # every candidate and the current kernel timed in ROUNDS interleaved rounds, the median
        # of each: the VM's speed drifts by 10-30% within minutes, one block per candidate
        # compared candidates timed at different speeds
        samples = [[] for _ in range(len(runnable) + 1)]
        for _ in range(ROUNDS):
            samples[0].append(rp.candidate_us(vname, cur_func, lambda a: a, runs=RUNS_PER_ROUND))
            for k, (r, func, args_for, m) in enumerate(runnable, 1):
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
        picked = (best is not None and (cur is None or str(best[1].trace) != str(cur.trace))
                  and best[0] < bar * (1 - GAIN))
        if picked:   # confirm against drift: the current and the best timed in turn, 5 times each
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
            if drop_kernel_records(res.database, fmod):   # the newest pick replaces an older one
                out_db = open_database(res.database, create=True)
            out_db.commit_tuning_record(ms.database.TuningRecord(
                rec.trace, out_db.commit_workload(fmod), [us / n_calls * 1e-6], target,
                ms.arg_info.ArgInfo.from_entry_func(smod, remove_preproc=True)))
            rp.replace(vname, func, args_for)
        after = best[0] if picked else now
        res.kernels.append(KernelResult(vname, sum(c.name == vname for c in rp.calls), alone[vname], now, after,
                                        len(times), picked))
        rebuilt = (f" (its schedule rebuilt as a candidate: {baseline:.1f} us)"
                   if baseline is not None and not picked else "")
        say(f"    in place: {now:.1f} us now{rebuilt}, best of {len(times)} candidates {best[0]:.1f} us"
            f" -> {'picked' if picked else 'kept the current schedule'}" if best else "    no candidate ran")
    if any(k.picked for k in res.kernels):
        say("compiling again with the picks, timing before and after in turn")
        art2 = compile_model(CompileOptions(model=model, target=spec, output=work / "after",
                                            tuning_log=logs), progress=lambda m: log.info(m))
        rp2 = Replay(load_artifact(art2.path))
        b, a = [], []
        for _ in range(8):
            b.append(rp.vm_ms(number=20, repeat=3))
            a.append(rp2.vm_ms(number=20, repeat=3))
        res.e2e_before_ms, res.e2e_after_ms = statistics.median(b), statistics.median(a)
    res.seconds = time.perf_counter() - started
    return res
