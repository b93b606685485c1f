"""The tune's progress bar, failure count, end-to-end estimate and journal, fed batch by batch."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

from tvmnet.tune.logs import best_record


class Progress:
    """Progress bar, failures and end-to-end estimate, fed batch by batch."""

    def __init__(
        self,
        tasks,
        weights,
        target,
        db,
        budget,
        enabled,
        journal: Optional[Path] = None,
        record_file: Optional[Path] = None,
    ):
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
        self.failed_batches = 0  # consecutive batches in which every candidate failed
        self.first_error = None
        self.journal, self.record_file, self.t0 = journal, record_file, time.perf_counter()
        self.bar = tqdm(
            total=budget,
            unit="trial",
            file=sys.stderr,
            disable=not enabled,
            dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}] {postfix}",
        )
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
            self.bar.total = self.done  # the last batch may overshoot the budget
        self.bar.update(n)
        self._post()
        self.failed_batches = self.failed_batches + 1 if n and batch_failed == n else 0
        if self.journal is not None:  # when each batch landed: tuning curves against time
            with open(self.journal, "a") as f:
                lines = sum(1 for _ in open(self.record_file)) if self.record_file else None
                f.write(
                    json.dumps(
                        {
                            "seconds": round(time.perf_counter() - self.t0, 1),
                            "trials": self.done,
                            "record_lines": lines,
                            "task": self.tasks[task_id].task_name,
                            "estimate_ms": self.estimate_ms(),
                        }
                    )
                    + "\n"
                )

    def close(self):
        self.bar.close()


def progress_callback(progress: Progress, todo: List[int]):
    """MetaSchedule measure callback; maps the ids of the tuned subset back to all tasks."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class ProgressCallback(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            progress.update(todo[task_id], runner_results, builder_results)

    return ProgressCallback()
