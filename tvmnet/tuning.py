"""``tune_model``: MetaSchedule (XGBoost cost model, evolutionary search) over the fused TIR
kernels of the folded, GEMM-lowered graph; one JSON database per target, resumable.

Layout: ``<log_dir>/<target name>/database_workload.json`` and
``database_tuning_record.json`` (MetaSchedule's own JSON database; its lookups ignore the
target, apache/tvm #15549, hence one database per target). MetaSchedule's text logs go to
``~/.cache/tvmnet/tune/<target>/logs``.
"""
from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from .config import ModelConfig
from .errors import TuningLogError, UsageError, err_line
from .paths import CACHE_DIR, TUNING_LOGS_DIR
from .rpc import Endpoint
from .targets import TargetSpec

log = logging.getLogger(__name__)

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"


def database_dir(spec: TargetSpec, log_dir: Optional[Path] = None) -> Path:
    return Path(log_dir or TUNING_LOGS_DIR) / spec.name


def check_database_files(path: Path) -> int:
    """Validate a database directory without modifying it; returns the number of records."""
    path = Path(path)
    wl, rec = path / WORKLOAD_FILE, path / RECORD_FILE
    if not path.is_dir():
        raise TuningLogError(f"tuning log {path} is not a directory; pass the directory that holds "
                             f"{WORKLOAD_FILE} and {RECORD_FILE}, or run `tvmnet tune` to create it")
    if not wl.is_file() or not rec.is_file():
        missing = [p.name for p in (wl, rec) if not p.is_file()]
        raise TuningLogError(f"tuning log {path} lacks {', '.join(missing)}; pass a MetaSchedule JSON database "
                             "directory, or run `tvmnet tune` to create one")
    n_workloads = 0
    for lineno, line in enumerate(wl.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            ok = isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
        except ValueError:
            ok = False
        if not ok:
            raise TuningLogError(f"tuning log {wl} is corrupt or not a MetaSchedule workload file (line {lineno}); "
                                 "it was left untouched: move it away or pass another --log-dir")
        n_workloads += 1
    records = 0
    for lineno, line in enumerate(rec.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            ok = (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int)
                  and 0 <= item[0] < n_workloads and isinstance(item[1], list))
        except ValueError:
            ok = False
        if not ok:
            raise TuningLogError(f"tuning log {rec} is corrupt or not a MetaSchedule record file (line {lineno}); "
                                 "it was left untouched: move it away or pass another --log-dir")
        records += 1
    return records


def open_database(path: Path, create: bool = False):
    from tvm.s_tir import meta_schedule as ms

    path = Path(path)
    if create and not path.exists():
        path.mkdir(parents=True)
        (path / WORKLOAD_FILE).touch()
        (path / RECORD_FILE).touch()
    check_database_files(path)
    try:
        return ms.database.JSONDatabase(path_workload=str(path / WORKLOAD_FILE),
                                        path_tuning_record=str(path / RECORD_FILE), allow_missing=False)
    except Exception as err:
        raise TuningLogError(f"tuning log {path} cannot be loaded by MetaSchedule ({err_line(err)}); "
                             "it was left untouched: move it away or pass another log") from err


def open_database_for_compile(spec: TargetSpec, tuning_log: Union[Path, str, None]):
    """(database or None, its path) for ``compile``: "auto" looks in tuning_logs/<target>/."""
    if tuning_log is None:
        return None, None
    if tuning_log == "auto":
        path = database_dir(spec)
        if not (path / RECORD_FILE).is_file():
            return None, None
        return open_database(path), path
    return open_database(Path(tuning_log)), Path(tuning_log)


def extract_tasks(mod, spec: TargetSpec):
    from tvm.s_tir import meta_schedule as ms

    tasks = ms.relax_integration.extract_tasks(mod, spec.tvm_target())
    return [t for t in tasks if not t.mod.attrs or not t.mod.attrs.get("tirx.is_scheduled", False)]


def _best_seconds(db, task, target) -> Optional[float]:
    rec = db.query_tuning_record(task.dispatched[0], target, task.task_name)
    if rec is None or not rec.run_secs:
        return None
    secs = [float(s) for s in rec.run_secs]
    return sum(secs) / len(secs)


def count_tuned(mod, spec: TargetSpec, db) -> int:
    """How many of the module's kernels (tuning tasks) have a record in ``db``."""
    target = spec.tvm_target()
    return sum(1 for t in extract_tasks(mod, spec) if db.query_tuning_record(t.dispatched[0], target, t.task_name) is not None)


PRUNED_FILE = "pruned_trials.json"


def _wl_key(workload) -> str:
    import tvm_ffi

    return str(tvm_ffi.structural_hash(workload.mod))


def _pruned_counts(path: Path) -> dict:
    """Trials measured earlier whose records ``prune_database`` dropped, by workload hash."""
    try:
        data = json.loads((Path(path) / PRUNED_FILE).read_text())
        return {str(k): int(v) for k, v in data.items()}
    except (OSError, ValueError, AttributeError):
        return {}


def _records_per_task(db, tasks, pruned: dict) -> list:
    """Trials already measured per task: records in the database plus pruned ones."""
    counts = []
    for task in tasks:
        mod = task.dispatched[0]
        if db.has_workload(mod):
            wl = db.commit_workload(mod)
            counts.append(len(db.get_top_k(wl, 1 << 30)) + pruned.get(_wl_key(wl), 0))
        else:
            counts.append(0)
    return counts


def prune_database(path: Path, say=print) -> tuple:
    """Keep only the best record per kernel (MetaSchedule's ``dump_pruned``), in place.

    The dropped trials are counted in ``pruned_trials.json`` so that a later ``tune`` still
    knows they were measured. The full database is moved to the cache, not deleted.
    Returns (records before, records after, backup path).
    """
    import datetime
    import shutil
    from collections import Counter

    path = Path(path)
    before = check_database_files(path)
    db = open_database(path)
    per_wl = Counter(_wl_key(r.workload) for r in db.get_all_tuning_records())
    staging = path.parent / f".{path.name}.pruned"
    shutil.rmtree(staging, ignore_errors=True)
    dest = open_database(staging, create=True)
    db.dump_pruned(dest)
    kept = Counter(_wl_key(r.workload) for r in dest.get_all_tuning_records())
    pruned = _pruned_counts(path)
    for shash, n in per_wl.items():
        pruned[shash] = pruned.get(shash, 0) + n - kept.get(shash, 0)
    (staging / PRUNED_FILE).write_text(json.dumps(pruned, indent=0, sort_keys=True) + "\n")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    backup = CACHE_DIR / "pruned-backups" / f"{path.name}-{stamp}"
    backup.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(backup))
    staging.rename(path)
    after = sum(kept.values())
    say(f"pruned {path}: {before} records -> {after} (best per kernel); full database moved to {backup}")
    return before, after, backup


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
    progress: bool = True
    kernels: Optional[str] = None        # only tune kernels whose name contains this
    population: int = 512                # evolutionary search population (smaller: faster, worse)

    def __post_init__(self):
        if self.trials < 1:
            raise UsageError(f"--trials {self.trials} must be at least 1")
        if self.per_task is not None and self.per_task < 1:
            raise UsageError(f"--per-task {self.per_task} must be at least 1")
        if self.repeats < 1 or self.number < 1:
            raise UsageError("--repeats and --number must be at least 1")
        if self.timeout <= 0:
            raise UsageError(f"--timeout {self.timeout} must be positive (seconds)")

    def display(self) -> str:
        where = "locally" if self.rpc is None else f"on {self.rpc}"
        return (f"{self.model.display()}\ntarget: {self.target.name}; trials {self.trials}"
                f" (per task {self.per_task or 'auto'}), measured {where}, seed {self.seed}\n"
                f"database: {database_dir(self.target, self.log_dir)}")


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

    @property
    def trials_per_minute(self) -> float:
        return self.trials_run / (self.seconds / 60) if self.seconds > 0 else 0.0


def _make_runner(opts: TuneOptions):
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=opts.number, repeat=opts.repeats, min_repeat_ms=0,
                                          enable_cpu_cache_flush=opts.target.is_cpu and opts.rpc is None)
    if opts.rpc is None:
        return ms.runner.LocalRunner(timeout_sec=opts.timeout, evaluator_config=evaluator)
    from .rpc import make_rpc_runner

    return make_rpc_runner(opts.rpc, evaluator, opts.timeout)


class _AllFailing(Exception):
    """Two whole batches failed in a row: the device or the toolchain is broken."""


class _Progress:
    """MetaSchedule measure callback: progress bar, failures, end-to-end estimate."""

    def __init__(self, tasks, weights, target, db, budget, before_ms, enabled):
        from tqdm import tqdm

        self.tasks, self.weights, self.target = tasks, weights, target
        self.best = [None] * len(tasks)
        for i, t in enumerate(tasks):
            self.best[i] = _best_seconds(db, t, target)
        self.done = 0
        self.failed = 0
        self.failed_batches = 0      # consecutive batches in which every candidate failed
        self.first_error = None
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
        self.bar.update(n)
        self._post()
        self.failed_batches = self.failed_batches + 1 if n and batch_failed == n else 0
        if self.failed_batches >= 2:
            raise _AllFailing(self.first_error)

    def close(self):
        self.bar.close()


def _callback(progress: _Progress):
    from tvm.s_tir import meta_schedule as ms
    from tvm.ir.utils import derived_object

    @derived_object
    class ProgressCallback(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            progress.update(task_id, runner_results, builder_results)

    return ProgressCallback()


def prepare_tasks(opts: TuneOptions):
    """Import, pass, lower; returns (lowered module, extracted tasks)."""
    from .frontend import import_model
    from .passes import pipeline

    mod, *_ = import_model(opts.model)
    mod = pipeline.lower_to_tir(mod, opts.target, gemm=opts.gemm)
    return mod, extract_tasks(mod, opts.target)


def tune_model(opts: TuneOptions, say=print) -> TuneResult:
    """Tune (or resume tuning) the model's kernels into the target's database."""
    from tvm.s_tir import meta_schedule as ms

    from .builder_fix import make_builder

    spec = opts.target
    db_path = database_dir(spec, opts.log_dir)
    spec.check_toolchain()
    if opts.rpc is None and spec.is_cpu:
        spec.use_threads()   # the runner's worker processes inherit it
    if opts.rpc is None:
        why = spec.host_mismatch()
        if why:
            raise UsageError(f"target {spec.name} cannot be measured on this machine ({why}); tune on the board with "
                             "--tracker HOST:PORT --key KEY")
        if spec.device == "cuda":
            import tvm

            if not tvm.cuda(0).exist:
                from .errors import DeviceError

                raise DeviceError(f"tuning {spec.name} measures on a local NVIDIA GPU and this machine has none; "
                                  "run `tvmnet tune` on a machine with one")
    runner = _make_runner(opts)   # an unreachable tracker fails here, before any file is created
    db = open_database(db_path, create=True)
    target = spec.tvm_target()

    say("extracting tuning tasks")
    _, tasks = prepare_tasks(opts)
    if opts.kernels:
        tasks = [t for t in tasks if opts.kernels in t.task_name]
        if not tasks:
            raise UsageError(f"no kernel name contains {opts.kernels!r}; kernels are named like "
                             "fused_matmul_add1_relu11 or fused_conv2d1_add_relu1")
    weights = [float(t.weight) for t in tasks]
    per_task = opts.per_task or max(8, math.ceil(opts.trials / max(1, len(tasks))))
    existing = _records_per_task(db, tasks, _pruned_counts(db_path))
    before = sum(min(c, per_task) for c in existing)
    todo = [i for i, c in enumerate(existing) if c < per_task]
    budget = max(0, opts.trials - before)
    say(f"{len(tasks)} tasks, per-task cap {per_task}; {before} trials already in {db_path}; "
        f"{budget} to run over {len(todo)} unfinished tasks")
    result = TuneResult(db_path, len(tasks), 0, before, 0, 0.0, False, None)
    progress = _Progress(tasks, weights, target, db, budget, before, opts.progress)
    if budget == 0 or not todo:
        progress.close()
        result.estimate_ms = progress.estimate_ms()
        say("nothing to do: the budget is already spent (raise --trials to tune further)")
        return result

    work_dir = CACHE_DIR / "tune" / spec.name
    work_dir.mkdir(parents=True, exist_ok=True)
    sub_tasks = [tasks[i] for i in todo]
    contexts, ctx_weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        sub_tasks, str(work_dir), space="post-order-apply",
        strategy=ms.search_strategy.EvolutionarySearch(population_size=opts.population), seed=opts.seed)
    cost_model = ms.cost_model.XGBModel(extractor=ms.feature_extractor.PerStoreFeature(), adaptive_training=True,
                                        num_tuning_cores=None)
    callbacks = ms.measure_callback.MeasureCallback.create("default") + [_callback(_SubProgress(progress, todo))]
    builder = make_builder(spec, shared_library=opts.rpc is not None)

    ms_log = logging.getLogger("tvm.s_tir.meta_schedule")   # its console output would drown the progress bar
    if ms_log.level == logging.NOTSET:
        ms_log.setLevel(logging.INFO if log.isEnabledFor(logging.DEBUG) else logging.WARNING)

    stop = {"signal": None}

    def on_signal(signum, frame):
        # Raised inside MetaSchedule's C++ loop, this may come back wrapped as another
        # exception type; the flag says what really happened.
        stop["signal"] = signum
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    t0 = time.perf_counter()
    try:
        ms.tune.tune_tasks(tasks=contexts, task_weights=ctx_weights, work_dir=str(work_dir),
                           max_trials_global=budget, max_trials_per_task=per_task,
                           num_trials_per_iter=min(opts.trials_per_iter, per_task), builder=builder, runner=runner,
                           database=db, cost_model=cost_model, measure_callbacks=callbacks, task_scheduler="gradient")
    except KeyboardInterrupt:
        result.interrupted = True
    except Exception as err:  # noqa: BLE001 - becomes a one-line error; records so far stay in the database
        if stop["signal"] is not None:
            result.interrupted = True
        else:
            _raise_stopped(err, progress, db_path)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        progress.close()
    result.seconds = time.perf_counter() - t0
    result.trials_run = progress.done
    result.failed = progress.failed
    result.estimate_ms = progress.estimate_ms()
    result.per_task = [(t.task_name, w, b) for t, w, b in zip(tasks, weights, progress.best)]
    return result


def _raise_stopped(err, progress, db_path):
    from .errors import DeviceError

    if isinstance(err, _AllFailing) or progress.failed_batches >= 2:
        first = (progress.first_error or "").splitlines()
        why = next((l for l in reversed(first) if l.strip()), "unknown error")
        raise DeviceError(f"tuning stopped: every candidate of the last two batches failed ({why[:200]}); "
                          f"{progress.done - progress.failed} measured records are kept in {db_path}; fix the "
                          "device (is it alive?) and rerun the same command to resume") from err
    msg = err_line(err)
    raise TuningLogError(f"tuning stopped: {msg}; records measured so far are in {db_path}; "
                         "rerun the same command to resume") from err


class _SubProgress:
    """Maps the task ids of the unfinished subset back to the full task list."""

    def __init__(self, progress, todo):
        self.progress, self.todo = progress, todo

    def update(self, task_id, runner_results, builder_results):
        self.progress.update(self.todo[task_id], runner_results, builder_results)
