"""``tune_model``: MetaSchedule (XGBoost cost model, evolutionary search) over the fused TIR
kernels of the folded, GEMM-lowered graph, into this machine class's database (``logs``).

- **Warm start**: kernels this class has no record for first get the best schedules of the
  nearest class's log, re-measured here (never copied with their times); the measurements
  go into this class's database, train the cost model, and seed the evolutionary search,
  which draws part of its initial population from the database.
- **Safe points**: a Python task scheduler (TVM's gradient rule) joins each batch as soon as
  it is measured, so records land in the database and the progress bar moves batch by
  batch; SIGINT/SIGTERM only set a flag, and the scheduler ends the run at its next
  decision. Nothing is raised inside MetaSchedule's C++ loop.
- Resumable: the same command again counts the records (and pruned trials) against the budget.

MetaSchedule's text logs go to ``~/.cache/tvmnet/tune/<class>/logs``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

from .config import ModelConfig
from .errors import DeviceError, TuningLogError, UsageError, err_line
from .logs import (RECORD_FILE, best_record, database_dir, kernel_pool, known_traces, nearest_tied_classes, transfer_class,
                   nearest_kernel_records, open_database, pruned_counts, replace_kernel_records, write_class_file, wl_key)
from .paths import CACHE_DIR, TUNING_LOGS_DIR
from .rpc import Endpoint
from .schedules import gemm_shape
from .targets import TargetSpec, cpu_model

log = logging.getLogger(__name__)


def extract_tasks(mod, spec: TargetSpec):
    from tvm.s_tir import meta_schedule as ms

    tasks = ms.relax_integration.extract_tasks(mod, spec.tvm_target())
    return [t for t in tasks if not t.mod.attrs or not t.mod.attrs.get("tirx.is_scheduled", False)]


def tune_contexts(tasks, work_dir, **kw):
    """``extracted_tasks_to_tune_contexts``, with only the tasks' target's tensor intrinsics
    loaded: every TuneContext imports ``tvm.s_tir.tensor_intrin``, i.e. every backend's
    intrinsics (75-90 s on 2 cores, CUDA's alone ~50 s), before its first use."""
    from tvm.s_tir import meta_schedule as ms

    from .builder_fix import _install_light_tensor_intrin, target_intrin_families

    if tasks:
        _install_light_tensor_intrin(target_intrin_families(tasks[0].target))
    return ms.relax_integration.extracted_tasks_to_tune_contexts(tasks, str(work_dir), space="post-order-apply", **kw)


def default_per_task(trials: int, n_tasks: int) -> int:
    """Cap per kernel: three times the even share, so that the gradient rule can give the
    kernels that hold the time (MobileNet's 14x14x512 GEMMs) more trials than the rest."""
    return min(trials, max(8, 3 * math.ceil(trials / max(1, n_tasks))))


def _records_per_task(db, tasks, pruned: dict) -> list:
    """Trials already measured per task: records in the database plus pruned ones."""
    counts = []
    for task in tasks:
        mod = task.dispatched[0]
        if db.has_workload(mod):
            wl = db.commit_workload(mod)
            counts.append(len(db.get_top_k(wl, 1 << 30)) + pruned.get(wl_key(wl), 0))
        else:
            counts.append(0)
    return counts


@dataclass(frozen=True)
class TuneOptions:
    model: ModelConfig
    target: TargetSpec
    trials: int = 2000
    per_task: Optional[int] = None
    log_dir: Optional[Path] = None
    repeats: int = 3
    number: int = 10
    timeout: float = 30.0
    seed: int = 0
    trials_per_iter: int = 64
    rpc: Optional[Endpoint] = None       # measure on remote boards (a tracker and key)
    gemm: bool = True
    layout: Optional[str] = None         # NCHW or NHWC; None: the target's default
    progress: bool = True
    kernels: Optional[str] = None        # only tune kernels whose name contains this
    population: int = 512                # evolutionary search population (smaller: faster, worse)
    warm_start: bool = True              # seed kernels without records from the nearest class's log
    warm_top_k: int = 4                  # records per kernel taken from that log
    minutes: Optional[float] = None      # stop (at a safe point) after this long
    only_untuned: bool = False           # tune only kernels without a record in this class's log
    seeds: bool = True                   # measure our register-blocked GEMM micro-kernels first
    estimate: bool = False               # score candidates with the cost proxy, nothing run (proxy_tune.py)
    retime: bool = True                  # a resumed tune re-measures each kernel's best records first

    def __post_init__(self):
        if self.trials < 1:
            raise UsageError(f"--trials {self.trials} must be at least 1")
        if self.per_task is not None and self.per_task < 1:
            raise UsageError(f"--per-task {self.per_task} must be at least 1")
        if self.repeats < 1 or self.number < 1:
            raise UsageError("--repeats and --number must be at least 1")
        if self.timeout <= 0:
            raise UsageError(f"--timeout {self.timeout} must be positive (seconds)")
        if self.minutes is not None and self.minutes <= 0:
            raise UsageError(f"--minutes {self.minutes} must be positive")
        if self.warm_top_k < 1:
            raise UsageError(f"--warm-top-k {self.warm_top_k} must be at least 1")
        if self.estimate and self.rpc is not None:
            raise UsageError("--estimate scores candidates with the cost proxy and runs nothing; drop --rpc/--tracker "
                             "(or drop --estimate to measure on the board)")
        if self.estimate and not self.target.is_cpu:
            raise UsageError(f"--estimate covers CPU targets (the proxy is llvm-mca); {self.target.name} is "
                             f"{self.target.device}: tune it on the device")

    @property
    def database(self) -> Path:
        return database_dir(self.target, self.log_dir, estimated=self.estimate)

    def display(self) -> str:
        where = ("scored by the cost proxy, nothing run" if self.estimate else
                 "measured locally" if self.rpc is None else f"measured on {self.rpc}")
        return (f"{self.model.display()}\ntarget: {self.target.name}, machine class "
                f"{self.target.machine_class()['key']}; trials {self.trials} (per task {self.per_task or 'auto'}), "
                f"{where}, seed {self.seed}\ndatabase: {self.database}")


@dataclass
class TuneResult:
    database: Path
    tasks: int
    trials_run: int
    trials_before: int
    failed: int
    seconds: float
    interrupted: bool
    estimate_ms: Optional[float]
    per_task: list = field(default_factory=list)
    warm_from: Optional[str] = None      # classes (comma-separated) whose schedules seeded this run
    warm_measured: int = 0               # of trials_run: its schedules re-measured here
    warm_nearest: int = 0                # of warm_measured: other models' schedules from this class's log
    seeds_measured: int = 0              # of trials_run: our GEMM micro-kernels (schedules.py)
    retimed: int = 0                     # earlier records re-measured before this run (not in trials_run)
    out_of_time: bool = False            # stopped by --minutes
    journal: Optional[Path] = None       # when each batch landed (seconds, trials): tuning curves

    @property
    def trials_per_minute(self) -> float:
        return self.trials_run / (self.seconds / 60) if self.seconds > 0 else 0.0


def _ignore_sigint():
    """Worker initializer: Ctrl-C reaches the whole process group; only the tuner handles it,
    at a safe point, so a measurement in flight is not killed half-way."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _make_runner(opts: TuneOptions):
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=opts.number, repeat=opts.repeats, min_repeat_ms=0,
                                          enable_cpu_cache_flush=opts.target.is_cpu and opts.rpc is None)
    if opts.rpc is None:
        return ms.runner.LocalRunner(timeout_sec=opts.timeout, evaluator_config=evaluator, initializer=_ignore_sigint)
    from .rpc import make_rpc_runner

    return make_rpc_runner(opts.rpc, evaluator, opts.timeout)


class _Progress:
    """Progress bar, failures and end-to-end estimate, fed batch by batch."""

    def __init__(self, tasks, weights, target, db, budget, enabled, journal: Optional[Path] = None,
                 record_file: Optional[Path] = None):
        from tqdm import tqdm

        self.tasks, self.weights, self.target = tasks, weights, target
        self.best = [None] * len(tasks)
        for i, t in enumerate(tasks):
            rec = best_record(db, t, target)
            if rec is not None and rec.run_secs:
                secs = [float(s) for s in rec.run_secs]
                self.best[i] = sum(secs) / len(secs)
        self.done = 0
        self.failed = 0
        self.failed_batches = 0      # consecutive batches in which every candidate failed
        self.first_error = None
        self.journal, self.record_file, self.t0 = journal, record_file, time.perf_counter()
        self.bar = tqdm(total=budget, unit="trial", file=sys.stderr, disable=not enabled, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}] {postfix}")
        self._post()

    def estimate_ms(self) -> Optional[float]:
        if any(b is None for b in self.best):
            return None
        return 1e3 * sum(w * b for w, b in zip(self.weights, self.best))

    def _post(self):
        est = self.estimate_ms()
        self.bar.set_postfix_str(f"est. {est:.2f} ms" if est is not None else "est. n/a (untuned tasks)")

    def update(self, task_id, runner_results, builder_results):
        n = len(runner_results)
        batch_failed = 0
        for b, r in zip(builder_results, runner_results):
            if b.error_msg or r.error_msg or not r.run_secs:
                self.failed += 1
                batch_failed += 1
                if self.first_error is None:
                    self.first_error = (b.error_msg or r.error_msg or "no run time").strip()
                continue
            secs = [float(s) for s in r.run_secs]
            mean = sum(secs) / len(secs)
            if self.best[task_id] is None or mean < self.best[task_id]:
                self.best[task_id] = mean
        self.done += n
        if self.bar.total is not None and self.done > self.bar.total:
            self.bar.total = self.done    # the last batch may overshoot the budget
        self.bar.update(n)
        self._post()
        self.failed_batches = self.failed_batches + 1 if n and batch_failed == n else 0
        if self.journal is not None:   # when each batch landed: tuning curves against time
            with open(self.journal, "a") as f:
                lines = sum(1 for _ in open(self.record_file)) if self.record_file else None
                f.write(json.dumps({"seconds": round(time.perf_counter() - self.t0, 1), "trials": self.done,
                                    "record_lines": lines, "task": self.tasks[task_id].task_name,
                                    "estimate_ms": self.estimate_ms()}) + "\n")

    def close(self):
        self.bar.close()


def _callback(progress: _Progress, todo: List[int]):
    """MetaSchedule measure callback; maps the ids of the tuned subset back to all tasks."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class ProgressCallback(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            progress.update(todo[task_id], runner_results, builder_results)

    return ProgressCallback()


def uncovered_task(cost: dict, alive, searched, min_share: float) -> Optional[int]:
    """The kernel to give its first batch of the search: of the ``alive`` kernels not yet
    ``searched`` whose weighted time (``cost``: kernel -> best time x occurrences) holds at
    least ``min_share`` of the total, the one with the largest; None when there is none (the
    gradient rule decides). Kernels without a time are the first pass's business."""
    total = sum(cost.values())
    left = [i for i in alive if i in cost and i not in searched and cost[i] >= min_share * total]
    return max(left, key=cost.get) if left else None


def _scheduler(should_stop: Callable[[], bool], best_seconds: Callable[[int], Optional[float]], seed: int,
               alpha: float = 0.2, window: int = 3, min_share: float = 0.0):
    """A task scheduler that picks tasks by TVM's gradient rule (``GradientBased``: expected
    gain of the task's weighted latency, so trials go where the time is) and

    - joins every batch right after it is sent, so its records are in the database and the
      progress bar moves before the next batch is built (TVM's scheduler joins the first
      round only after every task had its turn: ~17 min without a single record);
    - never overlaps a measurement with the next batch's search and build, which share the
      same cores on a small machine and would disturb the timing;
    - returns -1 (stop) at its next decision once ``should_stop()``: the run ends through
      MetaSchedule's normal exit, never by an exception inside its C++ loop;
    - skips the first round-robin pass for kernels that already have a time measured here
      (a warm start, or an earlier run): their best time seeds the gradient rule, so trials go
      by each kernel's share of the time from the first batch on, instead of one full batch
      per kernel first (on a 2-core machine that first pass alone takes ~30 min for MobileNet 1.0);
    - still gives one batch of the search, largest first, to every kernel that holds at least
      ``min_share`` of the estimated latency before the gradient rule takes over: the rule
      favours the big GEMMs so strongly (their time over their number of batches) that kernels
      timed only by the warm start or random draws, e.g. the depthwise convs, got no search at
      all in a 2000-trial tune, and one batch made two of them 1.5x and 2.7x faster (Zen 5, Nov 28).
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class SafePointGradient(ms.task_scheduler.PyTaskScheduler):
        def __init__(self):
            super().__init__()
            self.rng = random.Random(seed)
            self.history = None       # best latency after each join, per task
            self.first_round = 0
            self.searched = set()     # kernels this search has given a batch

        def next_task_id(self) -> int:
            outer = self._outer()
            tasks = outer.tasks_
            n = len(tasks)
            if self.history is None:   # kernels already measured here start with their best time
                self.history = [[best_seconds(i)] if best_seconds(i) is not None else [] for i in range(n)]
            for i in range(n):
                if tasks[i].runner_futures is not None:
                    outer.join_running_task(i)
                    best = best_seconds(i)
                    self.history[i].append(best if best is not None else 1e9)
            if should_stop():
                return -1
            alive = [i for i in range(n) if not tasks[i].is_terminated]
            if not alive:
                return -1
            while self.first_round < n:          # every kernel without a time here once, in order
                i = self.first_round
                self.first_round += 1
                if i in alive and not self.history[i]:
                    self.searched.add(i)
                    return i
            cover = self._uncovered(tasks, alive) if min_share > 0 else None
            if cover is not None:
                self.searched.add(cover)
                return cover
            grads = []
            for i in alive:
                h = self.history[i]
                if not h or h[-1] >= 1e9:
                    grads.append(-1e9)
                    continue
                g1 = (h[-1 - window] - h[-1]) / window if len(h) >= 1 + window else 0.0
                g2 = h[-1] / len(h)
                grads.append((alpha * g1 + (1 - alpha) * g2) * float(tasks[i].task_weight))
            pick = self.rng.choice(alive) if max(grads) == min(grads) else alive[grads.index(max(grads))]
            self.searched.add(pick)
            return pick

        def _uncovered(self, tasks, alive) -> Optional[int]:
            cost = {i: self.history[i][-1] * float(tasks[i].task_weight) for i in range(len(tasks))
                    if self.history[i] and self.history[i][-1] < 1e9}
            return uncovered_task(cost, alive, self.searched, min_share)

    return SafePointGradient()


def prepare_tasks(opts: TuneOptions):
    """Import, pass, lower; returns (lowered module, extracted tasks)."""
    from .frontend import import_model
    from .passes import pipeline

    mod, *_ = import_model(opts.model)
    mod = pipeline.lower_to_tir(mod, opts.target, gemm=opts.gemm, layout=opts.layout)
    return mod, extract_tasks(mod, opts.target)


def _measure_and_commit(mod, candidates, traces, db, builder, runner, target, ctx=None, cost_model=None):
    """Build and run ``candidates`` (MeasureCandidates of ``mod``) with MetaSchedule's builder
    and runner, commit each one that ran to ``db`` with the time measured here, and train
    ``cost_model`` on all of them. Returns (runner results, builder results)."""
    from tvm.s_tir import meta_schedule as ms

    device_type = {"llvm": "cpu"}.get(target.kind.name, target.kind.name)
    built = builder.build([ms.builder.BuilderInput(c.sch.mod, target) for c in candidates])
    ok = [i for i, b in enumerate(built) if not b.error_msg]
    futures = runner.run([ms.runner.RunnerInput(built[i].artifact_path, device_type, candidates[i].args_info)
                          for i in ok])
    results = [ms.runner.RunnerResult(None, built[i].error_msg) for i in range(len(built))]
    for i, fut in zip(ok, futures):
        results[i] = fut.result()
    for i in ok:   # what tune_tasks' RemoveBuildArtifact callback does for its own batches
        shutil.rmtree(os.path.dirname(built[i].artifact_path), ignore_errors=True)
    workload = db.commit_workload(mod)
    for trace, cand, res in zip(traces, candidates, results):
        if res.run_secs and not res.error_msg:
            db.commit_tuning_record(ms.database.TuningRecord(trace, workload, res.run_secs, target, cand.args_info))
    if cost_model is not None and ctx is not None:
        cost_model.update(ctx, candidates, results)
    return results, built


# the seed phase runs when the budget leaves at least this many trials per kernel to tune
# (real tunes; the tests' tiny tunes skip it)
SEED_MIN_TRIALS_PER_TASK = 16
# every kernel with at least this share of the estimated latency gets one batch of the search
COVER_SHARE = 0.01
FIRST_PASS = 16       # candidates per kernel in the first pass (the main search's batches are --batch)


def first_pass_size(batch: int, budget: int, n_tasks: int) -> int:
    """Size of the first pass's batch per kernel without a time: FIRST_PASS when the main
    batch is bigger and the budget covers the pass; else 0 (no first pass: the main search's
    own round-robin does it)."""
    if batch <= FIRST_PASS or budget < FIRST_PASS * n_tasks:
        return 0
    return FIRST_PASS


def _tune_subset(ms, contexts, weights, work_dir, trials, per_task, per_iter, builder, runner, db, cost_model,
                 progress_callback, scheduler) -> None:
    """One MetaSchedule run (``tune_tasks``) over some tune contexts; records go to ``db``."""
    _quiet_metaschedule()   # creating tune contexts sets MetaSchedule's loggers back to INFO
    ms.tune.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(work_dir), max_trials_global=trials,
                       max_trials_per_task=per_task, num_trials_per_iter=per_iter, builder=builder, runner=runner,
                       database=db, cost_model=cost_model,
                       measure_callbacks=ms.measure_callback.MeasureCallback.create("default") + [progress_callback],
                       task_scheduler=scheduler)


def _measure_per_task(tasks, contexts, candidates_for, db, builder, runner, target, cost_model=None, on_batch=None,
                      should_stop=lambda: False, limit: Optional[int] = None) -> int:
    """For each task, measure the (schedule, trace) pairs ``candidates_for(task, ctx)`` gives,
    as one batch, and commit them (``_measure_and_commit``). Stops when ``should_stop()`` or
    after ``limit`` candidates. Returns the number measured."""
    from tvm.s_tir import meta_schedule as ms

    measured = 0
    for task_id, (task, ctx) in enumerate(zip(tasks, contexts)):
        if should_stop() or (limit is not None and measured >= limit):
            break
        pairs = candidates_for(task, ctx)
        if limit is not None:
            pairs = pairs[:limit - measured]
        if not pairs:
            continue
        candidates = [ms.MeasureCandidate(sch, ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True))
                      for sch, _ in pairs]
        results = _measure_and_commit(task.dispatched[0], candidates, [t for _, t in pairs], db, builder, runner,
                                      target, ctx, cost_model)
        measured += len(candidates)
        if on_batch is not None:
            on_batch(task_id, results[0], results[1])
    return measured


def postprocessed(sch, ctx, name: str = ""):
    """A copy of schedule ``sch`` through the design space's postprocessors of tune context
    ``ctx`` (on x86 they pack the weights: layout rewrite), or None where one refuses it."""
    packed = sch.copy()
    packed.enter_postproc()
    try:
        if all(p.apply(packed) for p in ctx.space_generator.postprocs):
            return packed
    except Exception as err:  # noqa: BLE001 - the caller keeps the plain schedule
        log.debug("postprocessing failed for %s: %s", name, err_line(err))
    return None


def packed_seeds(task, work_dir: Path, isa: str) -> list:
    """Our register-blocked GEMM micro-kernels (``schedules.seed_schedules_for``) for ``task``,
    each through the design space's postprocessors (weights packed, as compile lays them out);
    [] for a kernel the template does not cover."""
    from tvm.s_tir import meta_schedule as ms

    from .schedules import seed_schedules_for

    grid = seed_schedules_for(task.dispatched[0], isa)
    if not grid:
        return []
    ctx = tune_contexts([task], work_dir)[0][0]
    return [p for p in (postprocessed(sch, ctx, task.task_name) for sch in grid) if p is not None]


def seed_schedules(tasks, contexts, db, builder, runner, target, isa: str, cost_model=None, on_batch=None,
                   should_stop=lambda: False, limit: Optional[int] = None, per_kernel: Optional[int] = None) -> int:
    """Measure our register-blocked micro-kernels (``schedules.seed_schedules_for``) for every
    GEMM task, each as written and through the design space's postprocessors (which pack the
    weights: layout rewrite), and commit them to ``db`` with the times measured here.
    Seeds the database already holds (same trace) are not measured again, so a resumed or
    repeated run costs nothing. ``per_kernel`` caps the grid of each kernel (evenly spaced
    tiles of it, so that a small budget still covers every kernel). Returns the number of
    candidates measured."""
    from .schedules import seed_schedules_for

    def candidates_for(task, ctx):
        mod = task.dispatched[0]
        known = known_traces(db, db.commit_workload(mod)) if db.has_workload(mod) else set()
        pairs = []
        grid = seed_schedules_for(mod, isa)
        n = None if per_kernel is None else max(1, per_kernel // 2)   # each tile gives up to 2 variants
        if n is not None and len(grid) > n:
            grid = [grid[round(i * (len(grid) - 1) / max(1, n - 1))] for i in range(n)]
        for sch in grid:
            packed = postprocessed(sch, ctx, task.task_name)
            for v in [sch] + ([packed] if packed is not None else []):
                if str(v.trace) not in known:
                    known.add(str(v.trace))
                    pairs.append((v, v.trace))
        return pairs

    return _measure_per_task(tasks, contexts, candidates_for, db, builder, runner, target, cost_model, on_batch,
                             should_stop, limit)


def warm_start(tasks, contexts, source_db, db, builder, runner, target, top_k: int, cost_model=None,
               on_batch=None, should_stop=lambda: False) -> int:
    """Measure here the best ``top_k`` schedules another class's log holds for each task and
    commit them, with the times measured here, to ``db``; train ``cost_model`` on them.
    Returns the number of candidates measured. ``source_db`` is only read. A schedule ``db``
    already holds for the kernel (one that an earlier source class shared) is not measured again."""
    def records_for(mod):
        if not source_db.has_workload(mod):
            return []
        recs = source_db.get_top_k(source_db.commit_workload(mod), top_k)
        known = known_traces(db, db.commit_workload(mod)) if db.has_workload(mod) else set()
        return [r for r in recs if str(r.trace) not in known]

    return _replay_records(tasks, contexts, records_for, db, builder, runner, target, cost_model, on_batch,
                           should_stop)


def warm_start_nearest(tasks, contexts, db, builder, runner, target, top_k: int, cost_model=None, on_batch=None,
                       should_stop=lambda: False, limit: Optional[int] = None) -> int:
    """Measure here, for each task, the best schedule of the ``top_k`` kernels of the same kind
    and nearest shapes that this class's ``db`` holds (``logs.nearest_kernel_records``: the
    same layer of another model tuned here), replayed on the task's own shapes, and commit them.
    Returns the number of candidates measured."""
    pool = kernel_pool(db)   # once: what this class had before this run

    def records_for(mod):
        return nearest_kernel_records(db, mod, top_k, pool)

    return _replay_records(tasks, contexts, records_for, db, builder, runner, target, cost_model, on_batch,
                           should_stop, limit)


def replay_on(mod, records, name: str = "") -> list:
    """[(schedule, record)]: each distinct trace of ``records`` applied to the kernel ``mod``;
    a trace that does not fit it (another shape's tile sizes) is skipped."""
    import tvm

    pairs, seen = [], set()
    for rec in records:
        if str(rec.trace) in seen:
            continue
        seen.add(str(rec.trace))
        try:
            sch = tvm.s_tir.Schedule(mod)
            rec.trace.apply_to_schedule(sch, remove_postproc=False)
        except Exception as err:  # noqa: BLE001 - a schedule that does not replay here is skipped
            log.debug("a record does not replay on %s: %s", name, err_line(err))
            continue
        pairs.append((sch, rec))
    return pairs


def _replay_records(tasks, contexts, records_for, db, builder, runner, target, cost_model, on_batch,
                    should_stop, limit: Optional[int] = None) -> int:
    def candidates_for(task, ctx):
        mod = task.dispatched[0]
        return [(sch, rec.trace) for sch, rec in replay_on(mod, records_for(mod), task.task_name)]

    return _measure_per_task(tasks, contexts, candidates_for, db, builder, runner, target, cost_model, on_batch,
                             should_stop, limit)


def tune_model(opts: TuneOptions, say=print) -> TuneResult:
    """Tune (or resume tuning) the model's kernels into this machine class's database."""
    from tvm.s_tir import meta_schedule as ms

    from .builder_fix import make_builder

    started = time.perf_counter()   # --minutes counts from here: import, lowering and set-up included
    spec = opts.target
    db_path = opts.database
    spec.check_toolchain()
    if opts.rpc is None and spec.is_cpu and not opts.estimate:
        spec.use_threads()   # the runner's worker processes inherit it
    if opts.rpc is None and not opts.estimate:
        why = spec.host_mismatch()
        if why:
            raise UsageError(f"target {spec.name} cannot be measured on this machine ({why}); tune on the board with "
                             "--tracker HOST:PORT --key KEY, or without it with --estimate (the cost proxy scores the "
                             "GEMM and stem kernels)")
        if spec.device == "cuda":
            import tvm

            if not tvm.cuda(0).exist:
                raise DeviceError(f"tuning {spec.name} measures on a local NVIDIA GPU and this machine has none; "
                                  "run `tvmnet tune` on a machine with one")
    if opts.estimate:   # nothing runs: the builder's workers score each candidate, the runner reads the score
        from .proxy import llvm_mca_path
        from .proxy_tune import clock_ghz, make_proxy_builder, make_proxy_runner

        llvm_mca_path()      # a one-line error with the install command when llvm-mca is missing
        ghz = clock_ghz(spec)
        builder, runner = make_proxy_builder(spec, ghz), make_proxy_runner()
        measured_on = (f"nothing: estimated by the cost proxy (llvm-mca -mcpu={spec.target.get('mcpu')}, cycles at "
                       f"{ghz:g} GHz) on {cpu_model()}")
    else:
        runner = _make_runner(opts)   # an unreachable tracker fails here, before any file is created
        builder = make_builder(spec, shared_library=opts.rpc is not None)   # its worker pool starts on first use
        measured_on = cpu_model() if opts.rpc is None else f"RPC boards: {opts.rpc}"
    db = open_database(db_path, create=True)
    write_class_file(db_path, spec, measured_on=measured_on, estimated=opts.estimate)
    target = spec.tvm_target()

    say("extracting tuning tasks")
    _, tasks = prepare_tasks(opts)
    if opts.kernels:
        exact = [t for t in tasks if t.task_name == opts.kernels]   # an exact name: that kernel only
        tasks = exact or [t for t in tasks if opts.kernels in t.task_name]
        if not tasks:
            raise UsageError(f"no kernel name contains {opts.kernels!r}; kernels are named like "
                             "fused_matmul_add1_relu11 or fused_conv2d1_add_relu1")
    if opts.estimate:
        from .passes.pipeline import kernel_kind
        from .proxy_tune import PROXY_RHO, RHO_BAR, TRUSTED_KINDS

        kinds = [kernel_kind(t.task_name, t.dispatched[0]) for t in tasks]
        trusted = [t for t, kind in zip(tasks, kinds) if kind in TRUSTED_KINDS]
        left = sorted(set(kinds) - set(TRUSTED_KINDS))
        if left:
            say(f"--estimate tunes only kernel kinds the cost proxy ranks as measurements do (Spearman's rho >= "
                f"{RHO_BAR}: {', '.join(f'{k} {PROXY_RHO[k]}' for k in TRUSTED_KINDS)}); "
                f"{len(tasks) - len(trusted)} kernel(s) of kind {', '.join(left)} keep the nearest class's schedules")
        tasks = trusted
        if not tasks:
            raise UsageError("no kernel of a kind the cost proxy is trusted for (" + ", ".join(TRUSTED_KINDS) +
                             ") matches; drop --kernels or choose a pointwise (matmul) kernel or the stem conv")
    weights = [float(t.weight) for t in tasks]
    per_task = opts.per_task or default_per_task(opts.trials, len(tasks))
    existing = _records_per_task(db, tasks, pruned_counts(db_path))
    before = sum(min(c, per_task) for c in existing)
    todo = [i for i, c in enumerate(existing) if c < per_task and not (opts.only_untuned and c)]
    budget = max(0, opts.trials - before)
    say(f"{len(tasks)} tasks, per-task cap {per_task}; {before} trials already in {db_path}; "
        f"{budget} to run over {len(todo)} unfinished tasks")
    result = TuneResult(db_path, len(tasks), 0, before, 0, 0.0, False, None)
    resumed = [tasks[i] for i in todo if existing[i]] if opts.retime and not opts.estimate and budget else []
    if resumed:
        db = _retime(resumed, db_path, db, builder, runner, target, result, started, opts, say)
        if result.interrupted:
            return result
        existing = _records_per_task(db, tasks, pruned_counts(db_path))
        before = sum(min(c, per_task) for c in existing)
        todo = [i for i, c in enumerate(existing) if c < per_task and not (opts.only_untuned and c)]
        budget = max(0, opts.trials - before)
        result.trials_before = before
    class_key = spec.machine_class()["key"]
    work_dir = CACHE_DIR / "tune" / class_key
    work_dir.mkdir(parents=True, exist_ok=True)
    journal = work_dir / "journals" / f"{time.strftime('%Y%m%d-%H%M%S')}-a{opts.model.alpha:g}-r{opts.model.resolution}.jsonl"
    journal.parent.mkdir(exist_ok=True)
    result.journal = journal
    progress = _Progress(tasks, weights, target, db, budget, opts.progress, journal=journal,
                         record_file=db_path / RECORD_FILE)
    if budget == 0 or not todo:
        progress.close()
        result.estimate_ms = progress.estimate_ms()
        say("nothing to do: the budget is already spent (raise --trials to tune further)")
        return result

    sub_tasks = [tasks[i] for i in todo]
    t0 = time.perf_counter()
    _quiet_metaschedule()
    contexts, ctx_weights = tune_contexts(
        sub_tasks, work_dir,
        strategy=ms.search_strategy.EvolutionarySearch(population_size=opts.population), seed=opts.seed)
    cost_model = ms.cost_model.XGBModel(extractor=ms.feature_extractor.PerStoreFeature(), adaptive_training=True,
                                        num_tuning_cores=None)

    stop = {"signal": None}

    def on_signal(signum, frame):
        if stop["signal"] is None:
            progress.bar.write(f"[tvmnet] {signal.Signals(signum).name}: stopping after the batch in flight "
                               "(its records are kept)", file=sys.stderr)
        stop["signal"] = signum

    deadline = None if opts.minutes is None else started + 60 * opts.minutes

    decisions = []   # when should_stop was asked: once per batch, so their spacing is a batch's duration

    def should_stop() -> bool:
        now = time.perf_counter()
        decisions.append(now)
        # a batch that would end past the deadline is not started (its expected length: the mean so far)
        batch = (decisions[-1] - decisions[0]) / (len(decisions) - 1) if len(decisions) > 1 else 0.0
        if deadline is not None and now + batch > deadline and not result.out_of_time:
            result.out_of_time = True
            say(f"time is up (--minutes {opts.minutes:g}; the next batch would end past it): stopping")
        return stop["signal"] is not None or progress.failed_batches >= 2 or result.out_of_time

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        fresh = [j for j, i in enumerate(todo) if existing[i] == 0]
        sources = _warm_sources(opts) if opts.warm_start and fresh else []
        warmed = []
        for info, src_path in sources:
            if should_stop():
                break
            src_db = open_database(src_path)
            mine = [j for j in fresh if src_db.has_workload(sub_tasks[j].dispatched[0])]
            if not mine:
                continue
            warmed.append(info["key"])
            again = "scoring with the cost proxy" if opts.estimate else "re-measuring here"
            say(f"warm start: {again} the best {opts.warm_top_k} schedule(s) per kernel of class "
                f"{info['key']} ({src_path}) for {len(mine)} kernel(s) without records")
            result.warm_measured += warm_start(
                [sub_tasks[j] for j in mine], [contexts[j] for j in mine], src_db, db, builder, runner, target,
                opts.warm_top_k, cost_model, should_stop=should_stop,
                on_batch=lambda k, res, built, mine=mine: progress.update(todo[mine[k]], res, built))
        result.warm_from = ", ".join(warmed) or None
        near = [j for j, i in enumerate(todo) if progress.best[i] is None]
        if opts.warm_start and near and len(db) and not should_stop():
            n = warm_start_nearest(
                [sub_tasks[j] for j in near], [contexts[j] for j in near], db, builder, runner, target,
                opts.warm_top_k, cost_model, should_stop=should_stop, limit=budget - progress.done,
                on_batch=lambda k, res, built: progress.update(todo[near[k]], res, built))
            if n:
                say(f"warm start from this class's own log: {n} schedule(s) of the same layers of other models "
                    f"(the {opts.warm_top_k} nearest shapes per kernel) re-measured for {len(near)} kernel(s)")
            result.warm_measured += n
            result.warm_nearest = n
        if opts.seeds and budget >= SEED_MIN_TRIALS_PER_TASK * len(todo) and not should_stop():
            isa = spec.vector_isa()
            gemms = sum(1 for t in sub_tasks if gemm_shape(t.dispatched[0]) is not None)
            if gemms:
                say(f"seeding: {'scoring' if opts.estimate else 'measuring'} our register-blocked micro-kernels "
                    f"({isa}) for {gemms} GEMM kernel(s) before the search")
                result.seeds_measured = seed_schedules(
                    sub_tasks, contexts, db, builder, runner, target, isa, cost_model, should_stop=should_stop,
                    limit=budget - progress.done,
                    # at most half of a kernel's share of the budget, so every kernel gets its seeds
                    per_kernel=max(SEED_MIN_TRIALS_PER_TASK, budget // (2 * len(todo))),
                    on_batch=lambda k, res, built: progress.update(todo[k], res, built))
        timeless = [j for j, i in enumerate(todo) if progress.best[i] is None]
        first = first_pass_size(opts.trials_per_iter, budget - progress.done, len(timeless))
        if first and timeless and not should_stop():
            # one small batch of random draws from its design space for every kernel without a
            # time here (ReplayTrace: no evolutionary search, whose population of 512 costs ~45 s
            # a batch whatever the batch size), so that the main search gives its big batches by
            # each kernel's share of the time from the start (a full first batch per kernel took
            # ~40% of a 2000-trial budget, trivial kernels included)
            say(f"first pass: {first} random schedules for each of {len(timeless)} kernel(s) without a time here")
            sub = [todo[j] for j in timeless]
            _quiet_metaschedule()
            replay, _ = tune_contexts(
                [sub_tasks[j] for j in timeless], work_dir,
                strategy=ms.search_strategy.ReplayTrace(), seed=opts.seed)
            _tune_subset(ms, replay, [ctx_weights[j] for j in timeless], work_dir,
                         min(budget - progress.done, first * len(timeless)), first, first, builder, runner, db,
                         cost_model, _callback(progress, sub),
                         _scheduler(should_stop, lambda k: progress.best[sub[k]], opts.seed))
        remaining = budget - progress.done
        if remaining > 0 and not should_stop():
            _tune_subset(ms, contexts, ctx_weights, work_dir, remaining, per_task,
                         min(opts.trials_per_iter, per_task), builder, runner, db, cost_model,
                         _callback(progress, todo),
                         _scheduler(should_stop, lambda j: progress.best[todo[j]], opts.seed, min_share=COVER_SHARE))
    except Exception as err:  # noqa: BLE001 - becomes a one-line error; records so far stay in the database
        _raise_stopped(err, progress, db_path)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        progress.close()
    if progress.failed_batches >= 2:
        _raise_stopped(None, progress, db_path)
    result.interrupted = stop["signal"] is not None
    result.seconds = time.perf_counter() - t0
    result.trials_run = progress.done
    result.failed = progress.failed
    result.estimate_ms = progress.estimate_ms()
    result.per_task = [(t.task_name, w, b) for t, w, b in zip(tasks, weights, progress.best)]
    return result


RETIME_TOP_K = 2      # a resumed tune re-measures this many of each kernel's best records


def retime_records(tasks, db, builder, runner, target, top_k: int = RETIME_TOP_K, should_stop=lambda: False):
    """The best ``top_k`` schedules ``db`` holds for each task, measured again now, as a
    MemoryDatabase (nothing is written to ``db``); None if ``should_stop()`` said so."""
    from tvm.s_tir import meta_schedule as ms

    def records_for(mod):
        return db.get_top_k(db.commit_workload(mod), top_k) if db.has_workload(mod) else []

    fresh = ms.database.MemoryDatabase()
    _replay_records(tasks, [None] * len(tasks), records_for, fresh, builder, runner, target, None, None, should_stop)
    return None if should_stop() else fresh


def _retime(tasks, db_path, db, builder, runner, target, result, started, opts, say):
    """Before a resumed tune: each kernel's best records, measured in an earlier run (another
    day, another load on this VM: its speed drifts by 20-40% between sessions), are measured
    again now and replace that kernel's earlier records, so that this run's candidates compete
    with times taken under the same conditions. Returns the database to go on with."""
    say(f"re-timing: {len(tasks)} kernel(s) have records from earlier runs; re-measuring their best "
        f"{RETIME_TOP_K} schedule(s) here first (their old times are not compared with new ones; --no-retime keeps them)")
    flag = {}
    deadline = None if opts.minutes is None else started + 60 * opts.minutes
    old = {sig: signal.signal(sig, lambda signum, frame: flag.setdefault("signal", signum))
           for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        fresh = retime_records(tasks, db, builder, runner, target, RETIME_TOP_K,
                               lambda: "signal" in flag or (deadline is not None and time.perf_counter() > deadline))
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if fresh is None:
        result.interrupted = "signal" in flag
        result.out_of_time = not result.interrupted
        say("stopped while re-timing: the database is unchanged")
        return db
    n = len(fresh.get_all_tuning_records())
    if n:
        dropped, backup = replace_kernel_records(db_path, fresh)
        result.retimed = n
        say(f"re-timed {n} schedule(s); the {dropped} earlier record(s) of those kernels left the database "
            f"(still counted as trials; the database before is in {backup})")
    return open_database(db_path)


def _warm_sources(opts: TuneOptions):
    """The nearest other classes' logs (all those tied at the nearest distance), under
    --log-dir first, then the shipped logs."""
    roots = [Path(opts.log_dir)] if opts.log_dir else []
    near = nearest_tied_classes(opts.target, *roots, TUNING_LOGS_DIR)
    if not near and opts.estimate:   # a board: the CPU class whose schedules transfer best, re-estimated
        near = [c for c in [transfer_class(opts.target, *roots, TUNING_LOGS_DIR)] if c is not None]
    return near


def _quiet_metaschedule():
    """MetaSchedule configures its loggers to print INFO (``TaskScheduler picks Task ...``) on
    the console; it would drown the progress bar. Its per-task logs still go to files."""
    ms_log = logging.getLogger("tvm.s_tir.meta_schedule")
    ms_log.setLevel(logging.INFO if log.isEnabledFor(logging.DEBUG) else logging.WARNING)


def _raise_stopped(err, progress, db_path):
    if progress.failed_batches >= 2:   # the device or the toolchain is broken
        first = (progress.first_error or "").splitlines()
        why = next((l for l in reversed(first) if l.strip()), "unknown error")
        raise DeviceError(f"tuning stopped: every candidate of the last two batches failed ({why[:200]}); "
                          f"{progress.done - progress.failed} measured records are kept in {db_path}; fix the "
                          "device (is it alive?) and rerun the same command to resume") from err
    msg = err_line(err)
    raise TuningLogError(f"tuning stopped: {msg}; records measured so far are in {db_path}; "
                         "rerun the same command to resume") from err
