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

import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from tvmnet.core.errors import DeviceError, TuningLogError, UsageError, err_line
from tvmnet.core.paths import CACHE_DIR
from tvmnet.core.targets import cpu_model
from tvmnet.passes.pipeline import extract_tasks, generation
from tvmnet.tune.logs import RECORD_FILE, open_database, pruned_counts, replace_kernel_records, wl_key, write_class_file
from tvmnet.tune.measure import RETIME_TOP_K, make_runner, retime_records, tune_contexts
from tvmnet.tune.mslogging import keeps_metaschedule_logging
from tvmnet.tune.options import TuneOptions, TuneResult, default_per_task
from tvmnet.tune.progress import Progress, progress_callback
from tvmnet.tune.scheduler import COVER_SHARE, first_pass_size, quiet_metaschedule, safe_point_scheduler, tune_subset
from tvmnet.tune.seeds import SEED_MIN_TRIALS_PER_TASK, gemm_shape, seed_schedules
from tvmnet.tune.warm import warm_sources, warm_start, warm_start_nearest

log = logging.getLogger(__name__)


def records_per_task(db, tasks, pruned: dict) -> list:
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


def prepare_tasks(opts: TuneOptions):
    """Import, pass, lower; returns (lowered module, extracted tasks)."""
    from tvmnet.frontend import import_model
    from tvmnet.passes import pipeline

    if opts.precision == "int8":  # the kernels `compile --precision int8` builds (passes/int8.py)
        import tempfile

        from tvmnet.passes.int8 import graph_options, import_int8

        opts = graph_options(opts)
        with tempfile.TemporaryDirectory(prefix="tvmnet-int8-") as tmp:
            mod, *_ = import_int8(opts, Path(tmp), lambda msg: None)
    else:
        mod, *_ = import_model(opts.model)
    mod = pipeline.lower_to_tir(mod, opts.target, gemm=opts.gemm, layout=opts.layout)
    return mod, extract_tasks(mod, opts.target)


@dataclass(frozen=True)
class Measurer:
    """How a tune's candidates get their times, when not measured here or on boards over RPC:
    a MetaSchedule builder and runner, what ``class.json`` says the log was measured on, and
    which kernels the tune may take (``select(tasks, say)`` returns those it keeps). The cost
    proxy is one (``tvmnet.proxy.tuning.proxy_measurer``: ``tvmnet tune --estimate``)."""

    builder: Any
    runner: Any
    measured_on: str
    select: Optional[Callable[[list, Callable[[str], None]], list]] = None


@keeps_metaschedule_logging
def tune_model(opts: TuneOptions, say=print, measurer: Optional[Measurer] = None) -> TuneResult:
    """Tune (or resume tuning) the model's kernels into this machine class's database."""
    from tvm.s_tir import meta_schedule as ms

    from tvmnet.tune.builder import make_builder

    started = time.perf_counter()  # --minutes counts from here: import, lowering and set-up included
    spec = opts.target
    db_path = opts.database
    spec.check_toolchain()
    if opts.rpc is None and spec.is_cpu and not opts.estimate:
        spec.use_threads()  # the runner's worker processes inherit it
    if opts.rpc is None and not opts.estimate:
        why = spec.host_mismatch()
        if why:
            raise UsageError(
                f"target {spec.name} cannot be measured on this machine ({why}); tune on the board with "
                "--tracker HOST:PORT --key KEY, or without it with --estimate (the cost proxy scores the "
                "GEMM and stem kernels)"
            )
        if spec.device == "cuda":
            import tvm

            if not tvm.cuda(0).exist:
                raise DeviceError(
                    f"tuning {spec.name} measures on a local NVIDIA GPU and this machine has none; "
                    "run `tvmnet tune` on a machine with one"
                )
    if opts.estimate and measurer is None:
        raise UsageError(
            "TuneOptions(estimate=True) scores candidates with the cost proxy: pass "
            "measurer=tvmnet.proxy.tuning.proxy_measurer(target), or run `tvmnet tune --estimate`"
        )
    if measurer is not None:  # e.g. the cost proxy: nothing runs, the builder's workers score each candidate
        builder, runner, measured_on = measurer.builder, measurer.runner, measurer.measured_on
    else:
        runner = make_runner(opts)  # an unreachable tracker fails here, before any file is created
        builder = make_builder(spec, shared_library=opts.rpc is not None)  # its worker pool starts on first use
        measured_on = cpu_model() if opts.rpc is None else f"RPC boards: {opts.rpc}"
    db = open_database(db_path, create=True)
    write_class_file(
        db_path,
        spec,
        measured_on=measured_on,
        estimated=opts.estimate,
        generation=generation(opts.layout or spec.default_layout, opts.gemm, opts.precision),
    )
    target = spec.tvm_target()

    say("extracting tuning tasks")
    _, tasks = prepare_tasks(opts)
    if opts.kernels:
        exact = [t for t in tasks if t.task_name == opts.kernels]  # an exact name: that kernel only
        tasks = exact or [t for t in tasks if opts.kernels in t.task_name]
        if not tasks:
            raise UsageError(
                f"no kernel name contains {opts.kernels!r}; kernels are named like "
                "fused_matmul_add1_relu11 or fused_conv2d1_add_relu1"
            )
    if measurer is not None and measurer.select is not None:
        tasks = measurer.select(tasks, say)
    weights = [float(t.weight) for t in tasks]
    per_task = opts.per_task or default_per_task(opts.trials, len(tasks))
    existing = records_per_task(db, tasks, pruned_counts(db_path))
    before = sum(min(c, per_task) for c in existing)
    todo = [i for i, c in enumerate(existing) if c < per_task and not (opts.only_untuned and c)]
    budget = max(0, opts.trials - before)
    say(
        f"{len(tasks)} tasks, per-task cap {per_task}; {before} trials already in {db_path}; "
        f"{budget} to run over {len(todo)} unfinished tasks"
    )
    result = TuneResult(db_path, len(tasks), 0, before, 0, 0.0, False, None)
    resumed = [tasks[i] for i in todo if existing[i]] if opts.retime and not opts.estimate and budget else []
    if resumed:
        db = _retime(resumed, db_path, db, builder, runner, target, result, started, opts, say)
        if result.interrupted:
            return result
        existing = records_per_task(db, tasks, pruned_counts(db_path))
        before = sum(min(c, per_task) for c in existing)
        todo = [i for i, c in enumerate(existing) if c < per_task and not (opts.only_untuned and c)]
        budget = max(0, opts.trials - before)
        result.trials_before = before
    class_key = spec.machine_class()["key"]
    work_dir = CACHE_DIR / "tune" / class_key
    work_dir.mkdir(parents=True, exist_ok=True)
    journal = (
        work_dir / "journals" / f"{time.strftime('%Y%m%d-%H%M%S')}-a{opts.model.alpha:g}-r{opts.model.resolution}.jsonl"
    )
    journal.parent.mkdir(exist_ok=True)
    result.journal = journal
    progress = Progress(
        tasks, weights, target, db, budget, opts.progress, journal=journal, record_file=db_path / RECORD_FILE
    )
    if budget == 0 or not todo:
        progress.close()
        result.estimate_ms = progress.estimate_ms()
        say("nothing to do: the budget is already spent (raise --trials to tune further)")
        return result

    sub_tasks = [tasks[i] for i in todo]
    t0 = time.perf_counter()
    quiet_metaschedule()
    contexts, ctx_weights = tune_contexts(
        sub_tasks,
        work_dir,
        strategy=ms.search_strategy.EvolutionarySearch(population_size=opts.population),
        seed=opts.seed,
    )
    cost_model = ms.cost_model.XGBModel(
        extractor=ms.feature_extractor.PerStoreFeature(), adaptive_training=True, num_tuning_cores=None
    )

    stop = {"signal": None}

    def on_signal(signum, frame):
        if stop["signal"] is None:
            progress.bar.write(
                f"[tvmnet] {signal.Signals(signum).name}: stopping after the batch in flight (its records are kept)",
                file=sys.stderr,
            )
        stop["signal"] = signum

    deadline = None if opts.minutes is None else started + 60 * opts.minutes

    decisions = []  # when should_stop was asked: once per batch, so their spacing is a batch's duration

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
        sources = warm_sources(opts) if opts.warm_start and fresh else []
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
            say(
                f"warm start: {again} the best {opts.warm_top_k} schedule(s) per kernel of class "
                f"{info['key']} ({src_path}) for {len(mine)} kernel(s) without records"
            )
            result.warm_measured += warm_start(
                [sub_tasks[j] for j in mine],
                [contexts[j] for j in mine],
                src_db,
                db,
                builder,
                runner,
                target,
                opts.warm_top_k,
                cost_model,
                should_stop=should_stop,
                on_batch=lambda k, res, built, mine=mine: progress.update(todo[mine[k]], res, built),
            )
        result.warm_from = ", ".join(warmed) or None
        near = [j for j, i in enumerate(todo) if progress.best[i] is None]
        if opts.warm_start and near and len(db) and not should_stop():
            n = warm_start_nearest(
                [sub_tasks[j] for j in near],
                [contexts[j] for j in near],
                db,
                builder,
                runner,
                target,
                opts.warm_top_k,
                cost_model,
                should_stop=should_stop,
                limit=budget - progress.done,
                on_batch=lambda k, res, built: progress.update(todo[near[k]], res, built),
            )
            if n:
                say(
                    f"warm start from this class's own log: {n} schedule(s) of the same layers of other models "
                    f"(the {opts.warm_top_k} nearest shapes per kernel) re-measured for {len(near)} kernel(s)"
                )
            result.warm_measured += n
            result.warm_nearest = n
        if opts.seeds and budget >= SEED_MIN_TRIALS_PER_TASK * len(todo) and not should_stop():
            isa = spec.vector_isa()
            gemms = sum(1 for t in sub_tasks if gemm_shape(t.dispatched[0]) is not None)
            if gemms:
                say(
                    f"seeding: {'scoring' if opts.estimate else 'measuring'} our register-blocked micro-kernels "
                    f"({isa}) for {gemms} GEMM kernel(s) before the search"
                )
                result.seeds_measured = seed_schedules(
                    sub_tasks,
                    contexts,
                    db,
                    builder,
                    runner,
                    target,
                    isa,
                    cost_model,
                    should_stop=should_stop,
                    limit=budget - progress.done,
                    # at most half of a kernel's share of the budget, so every kernel gets its seeds
                    per_kernel=max(SEED_MIN_TRIALS_PER_TASK, budget // (2 * len(todo))),
                    on_batch=lambda k, res, built: progress.update(todo[k], res, built),
                )
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
            quiet_metaschedule()
            replay, _ = tune_contexts(
                [sub_tasks[j] for j in timeless], work_dir, strategy=ms.search_strategy.ReplayTrace(), seed=opts.seed
            )
            tune_subset(
                ms,
                replay,
                [ctx_weights[j] for j in timeless],
                work_dir,
                min(budget - progress.done, first * len(timeless)),
                first,
                first,
                builder,
                runner,
                db,
                cost_model,
                progress_callback(progress, sub),
                safe_point_scheduler(should_stop, lambda k: progress.best[sub[k]], opts.seed),
            )
        remaining = budget - progress.done
        if remaining > 0 and not should_stop():
            tune_subset(
                ms,
                contexts,
                ctx_weights,
                work_dir,
                remaining,
                per_task,
                min(opts.trials_per_iter, per_task),
                builder,
                runner,
                db,
                cost_model,
                progress_callback(progress, todo),
                safe_point_scheduler(should_stop, lambda j: progress.best[todo[j]], opts.seed, min_share=COVER_SHARE),
            )
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


def _retime(tasks, db_path, db, builder, runner, target, result, started, opts, say):
    """Before a resumed tune: each kernel's best records, measured in an earlier run (another
    day, another load on this VM: its speed drifts by 20-40% between sessions), are measured
    again now and replace that kernel's earlier records, so that this run's candidates compete
    with times taken under the same conditions. Returns the database to go on with."""
    say(
        f"re-timing: {len(tasks)} kernel(s) have records from earlier runs; re-measuring their best "
        f"{RETIME_TOP_K} schedule(s) here first (their old times are not compared with new ones; --no-retime keeps them)"
    )
    flag = {}
    deadline = None if opts.minutes is None else started + 60 * opts.minutes
    old = {
        sig: signal.signal(sig, lambda signum, frame: flag.setdefault("signal", signum))
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        fresh = retime_records(
            tasks,
            db,
            builder,
            runner,
            target,
            RETIME_TOP_K,
            lambda: "signal" in flag or (deadline is not None and time.perf_counter() > deadline),
        )
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
        say(
            f"re-timed {n} schedule(s); the {dropped} earlier record(s) of those kernels left the database "
            f"(still counted as trials; the database before is in {backup})"
        )
    return open_database(db_path)


def _raise_stopped(err, progress, db_path):
    if progress.failed_batches >= 2:  # the device or the toolchain is broken
        first = (progress.first_error or "").splitlines()
        why = next((l for l in reversed(first) if l.strip()), "unknown error")
        raise DeviceError(
            f"tuning stopped: every candidate of the last two batches failed ({why[:200]}); "
            f"{progress.done - progress.failed} measured records are kept in {db_path}; fix the "
            "device (is it alive?) and rerun the same command to resume"
        ) from err
    msg = err_line(err)
    raise TuningLogError(
        f"tuning stopped: {msg}; records measured so far are in {db_path}; rerun the same command to resume"
    ) from err
