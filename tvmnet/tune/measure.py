"""Measuring candidates outside MetaSchedule's search loop: tune contexts with only the target's
tensor intrinsics, build-run-commit of a batch, replaying records of other kernels or classes,
and re-timing a class's best records."""

from __future__ import annotations

import logging
import os
import shutil
import signal
from typing import Optional

from tvmnet.core.errors import err_line
from tvmnet.tune.mslogging import without_unnamed_handlers
from tvmnet.tune.options import TuneOptions
from tvmnet.tune.scheduler import quiet_metaschedule

log = logging.getLogger(__name__)


def tune_contexts(tasks, work_dir, **kw):
    """``extracted_tasks_to_tune_contexts``, with only the tasks' target's tensor intrinsics
    loaded: every TuneContext imports ``tvm.s_tir.tensor_intrin``, i.e. every backend's
    intrinsics (75-90 s on 2 cores, CUDA's alone ~50 s), before its first use."""
    from tvm.s_tir import meta_schedule as ms

    from tvmnet.tune.builder import _install_light_tensor_intrin, target_intrin_families

    if tasks:
        _install_light_tensor_intrin(target_intrin_families(tasks[0].target))
    quiet_metaschedule()  # its console would print INFO lines; the entry points put the level back
    with without_unnamed_handlers():  # MetaSchedule's create_loggers fails on a handler without a name
        return ms.relax_integration.extracted_tasks_to_tune_contexts(
            tasks, str(work_dir), space="post-order-apply", **kw
        )


def _ignore_sigint():
    """Worker initializer: Ctrl-C reaches the whole process group; only the tuner handles it,
    at a safe point, so a measurement in flight is not killed half-way."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_runner(opts: TuneOptions):
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(
        number=opts.number,
        repeat=opts.repeats,
        min_repeat_ms=0,
        enable_cpu_cache_flush=opts.target.is_cpu and opts.rpc is None,
    )
    if opts.rpc is None:
        return ms.runner.LocalRunner(timeout_sec=opts.timeout, evaluator_config=evaluator, initializer=_ignore_sigint)
    from tvmnet.tune.remote import make_rpc_runner

    return make_rpc_runner(opts.rpc, evaluator, opts.timeout)


def measure_and_commit(mod, candidates, traces, db, builder, runner, target, ctx=None, cost_model=None):
    """Build and run ``candidates`` (MeasureCandidates of ``mod``) with MetaSchedule's builder
    and runner, commit each one that ran to ``db`` with the time measured here, and train
    ``cost_model`` on all of them. Returns (runner results, builder results)."""
    from tvm.s_tir import meta_schedule as ms

    device_type = {"llvm": "cpu"}.get(target.kind.name, target.kind.name)
    built = builder.build([ms.builder.BuilderInput(c.sch.mod, target) for c in candidates])
    ok = [i for i, b in enumerate(built) if not b.error_msg]
    futures = runner.run(
        [ms.runner.RunnerInput(built[i].artifact_path, device_type, candidates[i].args_info) for i in ok]
    )
    results = [ms.runner.RunnerResult(None, built[i].error_msg) for i in range(len(built))]
    for i, fut in zip(ok, futures):
        results[i] = fut.result()
    for i in ok:  # what tune_tasks' RemoveBuildArtifact callback does for its own batches
        shutil.rmtree(os.path.dirname(built[i].artifact_path), ignore_errors=True)
    workload = db.commit_workload(mod)
    for trace, cand, res in zip(traces, candidates, results):
        if res.run_secs and not res.error_msg:
            db.commit_tuning_record(ms.database.TuningRecord(trace, workload, res.run_secs, target, cand.args_info))
    if cost_model is not None and ctx is not None:
        cost_model.update(ctx, candidates, results)
    return results, built


def measure_per_task(
    tasks,
    contexts,
    candidates_for,
    db,
    builder,
    runner,
    target,
    cost_model=None,
    on_batch=None,
    should_stop=lambda: False,
    limit: Optional[int] = None,
) -> int:
    """For each task, measure the (schedule, trace) pairs ``candidates_for(task, ctx)`` gives,
    as one batch, and commit them (``measure_and_commit``). Stops when ``should_stop()`` or
    after ``limit`` candidates. Returns the number measured."""
    from tvm.s_tir import meta_schedule as ms

    measured = 0
    for task_id, (task, ctx) in enumerate(zip(tasks, contexts)):
        if should_stop() or (limit is not None and measured >= limit):
            break
        pairs = candidates_for(task, ctx)
        if limit is not None:
            pairs = pairs[: limit - measured]
        if not pairs:
            continue
        candidates = [
            ms.MeasureCandidate(sch, ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True))
            for sch, _ in pairs
        ]
        results = measure_and_commit(
            task.dispatched[0], candidates, [t for _, t in pairs], db, builder, runner, target, ctx, cost_model
        )
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


def replay_records(
    tasks,
    contexts,
    records_for,
    db,
    builder,
    runner,
    target,
    cost_model,
    on_batch,
    should_stop,
    limit: Optional[int] = None,
) -> int:
    def candidates_for(task, ctx):
        mod = task.dispatched[0]
        return [(sch, rec.trace) for sch, rec in replay_on(mod, records_for(mod), task.task_name)]

    return measure_per_task(
        tasks, contexts, candidates_for, db, builder, runner, target, cost_model, on_batch, should_stop, limit
    )


RETIME_TOP_K = 2  # a resumed tune re-measures this many of each kernel's best records


def retime_records(tasks, db, builder, runner, target, top_k: int = RETIME_TOP_K, should_stop=lambda: False):
    """The best ``top_k`` schedules ``db`` holds for each task, measured again now, as a
    MemoryDatabase (nothing is written to ``db``); None if ``should_stop()`` said so."""
    from tvm.s_tir import meta_schedule as ms

    def records_for(mod):
        return db.get_top_k(db.commit_workload(mod), top_k) if db.has_workload(mod) else []

    fresh = ms.database.MemoryDatabase()
    replay_records(tasks, [None] * len(tasks), records_for, fresh, builder, runner, target, None, None, should_stop)
    return None if should_stop() else fresh
