"""Warm start: schedules from the nearest class's log, or from this class's log for the same
layer of other models, re-measured here (never copied with their times)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from tvmnet.core.paths import TUNING_LOGS_DIR
from tvmnet.tune.classes import nearest_tied_classes, transfer_class
from tvmnet.tune.logs import kernel_pool, known_traces, nearest_kernel_records
from tvmnet.tune.measure import replay_records
from tvmnet.tune.options import TuneOptions


def warm_start(
    tasks,
    contexts,
    source_db,
    db,
    builder,
    runner,
    target,
    top_k: int,
    cost_model=None,
    on_batch=None,
    should_stop=lambda: False,
) -> int:
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

    return replay_records(tasks, contexts, records_for, db, builder, runner, target, cost_model, on_batch, should_stop)


def warm_start_nearest(
    tasks,
    contexts,
    db,
    builder,
    runner,
    target,
    top_k: int,
    cost_model=None,
    on_batch=None,
    should_stop=lambda: False,
    limit: Optional[int] = None,
) -> int:
    """Measure here, for each task, the best schedule of the ``top_k`` kernels of the same kind
    and nearest shapes that this class's ``db`` holds (``tune.logs.nearest_kernel_records``: the
    same layer of another model tuned here), replayed on the task's own shapes, and commit them.
    Returns the number of candidates measured."""
    pool = kernel_pool(db)  # once: what this class had before this run

    def records_for(mod):
        return nearest_kernel_records(db, mod, top_k, pool)

    return replay_records(
        tasks, contexts, records_for, db, builder, runner, target, cost_model, on_batch, should_stop, limit
    )


def warm_sources(opts: TuneOptions):
    """The nearest other classes' logs (all those tied at the nearest distance), under
    --log-dir first, then the shipped logs."""
    roots = [Path(opts.log_dir)] if opts.log_dir else []
    near = nearest_tied_classes(opts.target, *roots, TUNING_LOGS_DIR)
    if not near and opts.estimate:  # a board: the CPU class whose schedules transfer best, re-estimated
        near = [c for c in [transfer_class(opts.target, *roots, TUNING_LOGS_DIR)] if c is not None]
    return near
