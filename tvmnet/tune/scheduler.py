"""The task scheduler that decides which kernel gets the next batch, and one MetaSchedule run
(``tune_tasks``) under it."""

from __future__ import annotations

import logging
import random
from typing import Callable, Optional

log = logging.getLogger(__name__)


# every kernel with at least this share of the estimated latency gets one batch of the search
COVER_SHARE = 0.01

FIRST_PASS = 16  # candidates per kernel in the first pass (the main search's batches are --batch)


def first_pass_size(batch: int, budget: int, n_tasks: int) -> int:
    """Size of the first pass's batch per kernel without a time: FIRST_PASS when the main
    batch is bigger and the budget covers the pass; else 0 (no first pass: the main search's
    own round-robin does it)."""
    if batch <= FIRST_PASS or budget < FIRST_PASS * n_tasks:
        return 0
    return FIRST_PASS


def uncovered_task(cost: dict, alive, searched, min_share: float) -> Optional[int]:
    """The kernel to give its first batch of the search: of the ``alive`` kernels not yet
    ``searched`` whose weighted time (``cost``: kernel -> best time x occurrences) holds at
    least ``min_share`` of the total, the one with the largest; None when there is none (the
    gradient rule decides). Kernels without a time are the first pass's business."""
    total = sum(cost.values())
    left = [i for i in alive if i in cost and i not in searched and cost[i] >= min_share * total]
    return max(left, key=cost.get) if left else None


def safe_point_scheduler(
    should_stop: Callable[[], bool],
    best_seconds: Callable[[int], Optional[float]],
    seed: int,
    alpha: float = 0.2,
    window: int = 3,
    min_share: float = 0.0,
):
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
            self.history = None  # best latency after each join, per task
            self.first_round = 0
            self.searched = set()  # kernels this search has given a batch

        def next_task_id(self) -> int:
            outer = self._outer()
            tasks = outer.tasks_
            n = len(tasks)
            if self.history is None:  # kernels already measured here start with their best time
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
            while self.first_round < n:  # every kernel without a time here once, in order
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
            cost = {
                i: self.history[i][-1] * float(tasks[i].task_weight)
                for i in range(len(tasks))
                if self.history[i] and self.history[i][-1] < 1e9
            }
            return uncovered_task(cost, alive, self.searched, min_share)

    return SafePointGradient()


def tune_subset(
    ms,
    contexts,
    weights,
    work_dir,
    trials,
    per_task,
    per_iter,
    builder,
    runner,
    db,
    cost_model,
    progress_callback,
    scheduler,
) -> None:
    """One MetaSchedule run (``tune_tasks``) over some tune contexts; records go to ``db``."""
    quiet_metaschedule()  # creating tune contexts sets MetaSchedule's loggers back to INFO
    ms.tune.tune_tasks(
        tasks=contexts,
        task_weights=weights,
        work_dir=str(work_dir),
        max_trials_global=trials,
        max_trials_per_task=per_task,
        num_trials_per_iter=per_iter,
        builder=builder,
        runner=runner,
        database=db,
        cost_model=cost_model,
        measure_callbacks=ms.measure_callback.MeasureCallback.create("default") + [progress_callback],
        task_scheduler=scheduler,
    )


def quiet_metaschedule():
    """MetaSchedule configures its loggers to print INFO (``TaskScheduler picks Task ...``) on
    the console; it would drown the progress bar. Its per-task logs still go to files."""
    ms_log = logging.getLogger("tvm.s_tir.meta_schedule")
    ms_log.setLevel(logging.INFO if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
