"""``tvmnet tune``'s recipe: the whole way the best shipped logs were made, in one command.

1. **search**: MetaSchedule over every kernel (warm start from the nearest class, our GEMM
   micro-kernel seeds, the first pass, the evolutionary search), half of ``--minutes``;
2. **picks in place**: ``refine --trials 0``: each slow-in-place kernel's candidates from the
   log, timed inside the model;
3. **GEMM round**: the search again over the pointwise GEMMs only (a quarter of ``--minutes``),
   then their picks in place: the round's isolated winners often lose in place, its picks win;
4. **prune**: the best record per kernel (the trials stay counted, so a rerun resumes).

Every step is kept only if the model it builds is faster than the one before it, timed in turn
here (the median over rounds of the per-round ratio below ``KEEP_BELOW``); a step that loses is
taken back (its records and picks). The run ends with "end to end before -> after". A step
interrupted (Ctrl-C, SIGTERM) or out of time ends the run with what is kept so far.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from tvmnet.core.errors import UsageError

log = logging.getLogger(__name__)

KEEP_BELOW = 0.99  # a step stays when after/before, per round in turn, has a median below this
AB_ROUNDS = 15  # rounds of the A/B, each build once per round ...
AB_RUNS = 10  # ... of this many runs
SEARCH_SHARE, GEMM_SHARE = 0.5, 0.25  # of --minutes; the rest: picks in place, builds, A/Bs


@dataclass
class Step:
    name: str
    seconds: float = 0.0
    trials: int = 0
    before_ms: Optional[float] = None
    after_ms: Optional[float] = None
    ratio: Optional[float] = None  # after / before, median over rounds in turn
    kept: bool = True
    note: str = ""


@dataclass
class RecipeResult:
    database: Path
    steps: List[Step] = field(default_factory=list)
    search: object = None  # the search step's TuneResult
    before_ms: Optional[float] = None  # end to end, the first build against the last, in turn
    after_ms: Optional[float] = None
    ratio: Optional[float] = None
    seconds: float = 0.0
    stopped: str = ""  # why the run ended early, if it did


def recipe_applies(opts) -> Optional[str]:
    """Why ``opts`` asks for the bare search rather than the recipe, or None."""
    if opts.kernels:
        return "--kernels tunes chosen kernels only"
    if getattr(opts, "precision", "fp32") == "int8":
        return "int8 kernels are tuned by the search alone for now"
    if opts.estimate or opts.rpc is not None:
        return "the recipe times builds of the whole model on this machine"
    why = opts.target.host_mismatch()
    if why or not opts.target.is_cpu:
        return f"target {opts.target.name} cannot run here"
    return None


def run_recipe(opts, say=print) -> RecipeResult:
    """Tune ``opts.model`` for ``opts.target`` by the recipe above, into ``opts.database``."""
    from tvmnet.tune.logs import RECORD_FILE, open_database, prune_database
    from tvmnet.tune.search import tune_model

    why = recipe_applies(opts)
    if why:
        raise UsageError(f"the tune recipe does not apply ({why}); pass --search-only for the bare search")
    started = time.perf_counter()
    db = opts.database
    if (db / RECORD_FILE).is_file():
        open_database(db)  # a corrupt log fails now, untouched, as the bare search would
    res = RecipeResult(database=db)
    work = Path(tempfile.mkdtemp(prefix="tvmnet-recipe-"))
    deadline = None if opts.minutes is None else started + 60 * opts.minutes

    def left_minutes(share: float) -> Optional[float]:
        if deadline is None:
            return None
        return max(0.5, min(share * opts.minutes, (deadline - time.perf_counter()) / 60))

    def out_of_time() -> bool:
        return deadline is not None and time.perf_counter() > deadline - 60

    try:
        say("[recipe] building the model with the logs as they are, to time every step against it")
        first = current = _build(opts, work / "start")

        # 1. search
        say(f"[recipe 1/4] search: every kernel{_budget(left_minutes(SEARCH_SHARE))}")
        step, snap = Step("search"), _snapshot(db, work / "snap1")
        t0 = time.perf_counter()
        search = tune_model(dataclasses.replace(opts, minutes=left_minutes(SEARCH_SHARE)), say=say)
        res.search = search
        step.seconds, step.trials = time.perf_counter() - t0, search.trials_run
        current = _judge(step, snap, db, current, opts, work, say, fresh=snap is None)
        res.steps.append(step)
        if search.interrupted:
            res.stopped = "interrupted"
            return res

        # 2. picks in place
        if not out_of_time():
            say("[recipe 2/4] picks in place: candidates from the log, timed inside the model")
            step = Step("picks in place")
            t0 = time.perf_counter()
            ref = _refine(opts, say)
            step.seconds = time.perf_counter() - t0
            if ref is None:
                step.note = "no kernel runs much slower in place than alone: nothing to pick"
            else:
                step.kept, step.ratio = ref.kept, ref.e2e_ratio
                step.before_ms, step.after_ms = ref.e2e_before_ms, ref.e2e_after_ms
                step.note = f"{ref.picked} kernel(s) picked" if ref.kept else "its picks were not faster"
            res.steps.append(step)
            if ref is not None and ref.picked:
                current = _build(opts, work / "picks")

        # 3. GEMM round, with its picks in place
        if not out_of_time():
            say(f"[recipe 3/4] GEMM round: the pointwise GEMMs again{_budget(left_minutes(GEMM_SHARE))}")
            step, snap = Step("GEMM round"), _snapshot(db, work / "snap3")
            t0 = time.perf_counter()
            gemm = tune_model(
                dataclasses.replace(
                    opts,
                    kernels="matmul",
                    trials=_gemm_records(opts) + (opts.trials if opts.minutes else max(1, opts.trials // 2)),
                    per_task=10**6,
                    minutes=left_minutes(GEMM_SHARE),
                ),
                say=say,
            )
            step.trials = gemm.trials_run
            if not gemm.interrupted:
                _refine(opts, say, kernels="matmul")
            step.seconds = time.perf_counter() - t0
            current = _judge(step, snap, db, current, opts, work, say)
            res.steps.append(step)
            if gemm.interrupted:
                res.stopped = "interrupted"
                return res

        # 4. prune
        if (db / RECORD_FILE).is_file():
            say("[recipe 4/4] prune: the best record per kernel (the trials stay counted)")
            before, after, _ = prune_database(db, say=say)
            res.steps.append(Step("prune", note=f"{before} -> {after} records"))
        if out_of_time():
            res.stopped = f"out of time (--minutes {opts.minutes:g})"

        say("[recipe] end to end: the first build against the last, timed in turn")
        last = _build(opts, work / "end")
        ab = _in_turn(first, last)
        res.before_ms, res.after_ms, res.ratio = ab.median_ms[0], ab.median_ms[1], ab.ratio[1]
        return res
    finally:
        res.seconds = time.perf_counter() - started
        shutil.rmtree(work, ignore_errors=True)


def _refine(opts, say, kernels: Optional[str] = None):
    """``refine --trials 0``; None when no kernel is worth it (refine says so with a UsageError)."""
    from tvmnet.insitu.refine import refine_model

    try:
        return refine_model(opts.model, opts.target, trials=0, kernels=kernels, log_dir=opts.log_dir, say=say)
    except UsageError as err:
        if "nothing to refine" not in str(err):
            raise
        say(f"[recipe] {err}")
        return None


def _gemm_records(opts) -> int:
    """Trials the class's log already holds for the model's GEMM kernels (the GEMM round's budget
    counts them, as a resumed tune does): its own trials come on top."""
    from tvmnet.tune.logs import RECORD_FILE, open_database, pruned_counts
    from tvmnet.tune.search import prepare_tasks, records_per_task

    if not (opts.database / RECORD_FILE).is_file():
        return 0
    _, tasks = prepare_tasks(opts)
    gemms = [t for t in tasks if "matmul" in t.task_name]
    return sum(records_per_task(open_database(opts.database), gemms, pruned_counts(opts.database)))


def _budget(minutes: Optional[float]) -> str:
    return f", {minutes:.1f} min" if minutes is not None else ""


def _build(opts, out: Path):
    """The model as compile would build it from the class's log now (the current layout)."""
    from tvmnet.build.compiler import CompileOptions, compile_model
    from tvmnet.tune.logs import RECORD_FILE

    db = opts.database
    # the default log dir: what the main job applies (this class's log, then the nearest's); a
    # --log-dir of its own: that log once it has records, the shipped logs before
    logs = db if opts.log_dir is not None and (db / RECORD_FILE).is_file() else "auto"
    return compile_model(
        CompileOptions(
            model=opts.model, target=opts.target, output=out, tuning_log=logs, layout=opts.target.default_layout
        ),
        progress=lambda m: log.info(m),
    )


def _in_turn(*arts):
    import tvm

    from tvmnet.build.inturn import time_in_turn

    mods = [tvm.runtime.load_module(str(a.library)) for a in arts]
    return time_in_turn(mods, arts[0].metadata["input"]["shape"], rounds=AB_ROUNDS, runs=AB_RUNS)


def _snapshot(db: Path, dest: Path) -> Optional[Path]:
    if not db.is_dir():
        return None
    shutil.copytree(db, dest)
    return dest


def _judge(step: Step, snap: Optional[Path], db: Path, current, opts, work: Path, say, fresh: bool = False):
    """Time the model with the step's records against ``current`` in turn; keep or take back."""
    after = _build(opts, work / f"after-{step.name.replace(' ', '-')}")
    ab = _in_turn(current, after)
    step.before_ms, step.after_ms, step.ratio = ab.median_ms[0], ab.median_ms[1], ab.ratio[1]
    step.kept = fresh or step.ratio < KEEP_BELOW
    verdict = "kept" if step.kept else "taken back"
    if fresh and step.ratio >= KEEP_BELOW:
        verdict = "kept (this class had no log before it)"
    say(
        f"[recipe] {step.name}: {step.before_ms:.3f} -> {step.after_ms:.3f} ms, per-round ratio {step.ratio:.3f}: "
        f"{verdict}"
    )
    if step.kept:
        return after
    shutil.rmtree(db, ignore_errors=True)
    if snap is not None:
        shutil.copytree(snap, db)
    step.note = "the model was not faster with it"
    return current
