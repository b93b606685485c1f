"""Tuning logs keyed by machine class: one MetaSchedule JSON database per class.

A class is what decides the schedules a log holds (``TargetSpec.machine_class``):
architecture, LLVM ``mcpu``, vector ISA, core count, e.g. ``x86_64-cascadelake-avx512-2c``
or ``aarch64-cortex-a72-neon-4c``. Layout::

    tuning_logs/<class>/class.json                    the class, and where it was measured
    tuning_logs/<class>/database_workload.json        MetaSchedule's JSON database
    tuning_logs/<class>/database_tuning_record.json
    tuning_logs/<class>/pruned_trials.json            trials measured but pruned (resume accounting)

MetaSchedule's lookups ignore the target (apache/tvm #15549), so one database never holds two
classes. ``compile`` applies the exact class; kernels it lacks (or all of them, when this
class has no log) take the nearest class's schedules, and it says so.
"""

from __future__ import annotations

import datetime
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import List, Optional, Tuple

from tvmnet.core.errors import TuningLogError, err_line
from tvmnet.core.paths import CACHE_DIR, TUNING_LOGS_DIR
from tvmnet.core.targets import TargetSpec

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
PRUNED_FILE = "pruned_trials.json"
CLASS_FILE = "class.json"


ESTIMATED_DIR = "estimated"  # <root>/estimated/<class>/: logs scored by the cost proxy, never measured


def database_dir(spec: TargetSpec, log_dir: Optional[Path] = None, estimated: bool = False) -> Path:
    """This target's class database under ``log_dir`` (default tuning_logs/); with
    ``estimated``, its estimated log (``tvmnet tune --estimate``), kept apart under estimated/."""
    root = Path(log_dir or TUNING_LOGS_DIR)
    return (root / ESTIMATED_DIR if estimated else root) / spec.machine_class()["key"]


def write_class_file(
    path: Path, spec: TargetSpec, measured_on: str, estimated: bool = False, generation: Optional[str] = None
) -> None:
    """Describe the class of a database directory (kept if it exists), and add ``generation``
    (``passes.pipeline.generation``: the layout and passes of the kernels tuned) to the
    generations its records come from, with the date it was last tuned."""
    f = Path(path) / CLASS_FILE
    if f.exists():
        if generation is not None:
            info = read_class(path)
            if info is not None:
                gens = dict(info.get("generations") or {})
                gens[generation] = datetime.date.today().isoformat()
                info["generations"] = gens
                f.write_text(json.dumps(info, indent=2) + "\n")
        return
    import tvm

    info = dict(
        spec.machine_class(),
        target=spec.target,
        measured_on=measured_on,
        tvm=tvm.__version__,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    if estimated:
        info["estimated"] = True
    if generation is not None:
        info["generations"] = {generation: datetime.date.today().isoformat()}
    f.write_text(json.dumps(info, indent=2) + "\n")


def read_class(path: Path) -> Optional[dict]:
    try:
        info = json.loads((Path(path) / CLASS_FILE).read_text())
        return info if isinstance(info, dict) and "key" in info else None
    except (OSError, ValueError):
        return None


def list_classes(*roots: Path) -> List[Tuple[dict, Path]]:
    """(class, directory) of every class database under the roots; the first root wins a tie."""
    found, seen = [], set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for d in sorted(root.iterdir()):
            info = read_class(d) if d.is_dir() else None
            if info and info["key"] not in seen and (d / RECORD_FILE).is_file():
                seen.add(info["key"])
                found.append((info, d))
    return found


def _no_blank_line(path: Path, line: str, lineno: int) -> None:
    if not line.strip():  # MetaSchedule's JSON loader segfaults on an empty line (TVM 0.27, measured)
        raise TuningLogError(
            f"tuning log {path} has an empty line (line {lineno}), which crashes MetaSchedule's "
            "loader; it was left untouched: delete the empty line"
        )


def check_database_files(path: Path) -> int:
    """Validate a database directory without modifying it; returns the number of records."""
    path = Path(path)
    wl, rec = path / WORKLOAD_FILE, path / RECORD_FILE
    if not path.is_dir():
        raise TuningLogError(
            f"tuning log {path} is not a directory; pass the directory that holds "
            f"{WORKLOAD_FILE} and {RECORD_FILE}, or run `tvmnet tune` to create it"
        )
    if not wl.is_file() or not rec.is_file():
        missing = [p.name for p in (wl, rec) if not p.is_file()]
        raise TuningLogError(
            f"tuning log {path} lacks {', '.join(missing)}; pass a MetaSchedule JSON database "
            "directory, or run `tvmnet tune` to create one"
        )
    n_workloads = 0
    for lineno, line in enumerate(wl.read_text(errors="replace").splitlines(), 1):
        _no_blank_line(wl, line, lineno)
        try:
            item = json.loads(line)
            ok = isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
        except ValueError:
            ok = False
        if not ok:
            raise TuningLogError(
                f"tuning log {wl} is corrupt or not a MetaSchedule workload file (line {lineno}); "
                "it was left untouched: move it away or pass another --log-dir"
            )
        n_workloads += 1
    records = 0
    for lineno, line in enumerate(rec.read_text(errors="replace").splitlines(), 1):
        _no_blank_line(rec, line, lineno)
        try:
            item = json.loads(line)
            ok = (
                isinstance(item, list)
                and len(item) == 2
                and isinstance(item[0], int)
                and 0 <= item[0] < n_workloads
                and isinstance(item[1], list)
            )
        except ValueError:
            ok = False
        if not ok:
            raise TuningLogError(
                f"tuning log {rec} is corrupt or not a MetaSchedule record file (line {lineno}); "
                "it was left untouched: move it away or pass another --log-dir"
            )
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
        return ms.database.JSONDatabase(
            path_workload=str(path / WORKLOAD_FILE), path_tuning_record=str(path / RECORD_FILE), allow_missing=False
        )
    except Exception as err:
        raise TuningLogError(
            f"tuning log {path} cannot be loaded by MetaSchedule ({err_line(err)}); "
            "it was left untouched: move it away or pass another log"
        ) from err


def best_record(db, task, target):
    """The database's best record for a task's kernel, or None; never writes to ``db``."""
    mod = task.dispatched[0]
    if not db.has_workload(mod):
        return None
    return db.query_tuning_record(mod, target, task.task_name)


def copy_record(db, rec, mod=None) -> None:
    """Commit ``rec`` (read from another database) into ``db`` with its measured times, for
    the kernel ``mod`` (default: the record's own)."""
    from tvm.s_tir import meta_schedule as ms

    wl = db.commit_workload(rec.workload.mod if mod is None else mod)
    db.commit_tuning_record(ms.database.TuningRecord(rec.trace, wl, rec.run_secs, rec.target, rec.args_info))


# --------------------------------------------------------------------------------------- pruning


def wl_key(workload) -> str:
    import tvm_ffi

    return str(tvm_ffi.structural_hash(workload.mod))


def pruned_counts(path: Path) -> dict:
    """Trials measured earlier whose records ``prune_database`` dropped, by workload hash."""
    try:
        data = json.loads((Path(path) / PRUNED_FILE).read_text())
        return {str(k): int(v) for k, v in data.items()}
    except (OSError, ValueError, AttributeError):
        return {}


def kernel_signature(mod) -> tuple:
    """What makes two kernels (a workload's IRModule) the same kind whatever their shapes: the names of their blocks
    and the ranks of their parameters (a depthwise conv's schedule replays on another
    depthwise conv, not on a GEMM)."""
    import tvm

    sch = tvm.s_tir.Schedule(mod)
    blocks = tuple(sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root")))
    return blocks, tuple(len(s) for s in _shapes(mod))


def _shapes(mod) -> list:
    from tvm.s_tir import meta_schedule as ms

    return [[int(d) for d in a.shape] for a in ms.arg_info.ArgInfo.from_entry_func(mod, remove_preproc=True)]


def _dims(mod) -> list:
    return [d for s in _shapes(mod) for d in s]


def kernel_pool(db) -> list:
    """(workload hash, kernel_signature, dimensions, workload) of every kernel ``db`` holds a
    measured record for."""
    pool, seen = [], set()
    for rec in db.get_all_tuning_records():
        key = wl_key(rec.workload)
        if key in seen or not rec.run_secs:
            continue
        seen.add(key)
        pool.append((key, kernel_signature(rec.workload.mod), _dims(rec.workload.mod), rec.workload))
    return pool


def nearest_kernel_records(db, mod, top_k: int, pool: Optional[list] = None) -> list:
    """The best record of each of the ``top_k`` kernels in ``db`` of the same kind as ``mod``
    (``kernel_signature``) with the nearest shapes (sum of |log| ratios of the dimensions),
    ``mod``'s own workload excluded: the same layer of another model (another alpha or
    resolution) tuned on this machine class. ``pool``: ``kernel_pool(db)``, computed once."""
    import math

    import tvm_ffi

    sig, dims, own = kernel_signature(mod), _dims(mod), str(tvm_ffi.structural_hash(mod))
    scored = sorted(
        (
            (sum(abs(math.log(max(a, 1) / max(b, 1))) for a, b in zip(dims, d)), wl)
            for key, s, d, wl in (kernel_pool(db) if pool is None else pool)
            if s == sig and key != own
        ),
        key=lambda v: v[0],
    )
    return [r for _, wl in scored[:top_k] for r in db.get_top_k(wl, 1)]


def known_traces(db, workload) -> set:
    """The traces (as text) of every record ``db`` holds for ``workload``: what not to measure
    or add again."""
    return {str(r.trace) for r in db.get_top_k(workload, 1 << 30)}


def merge_databases(src: Path, dest: Path, say=print) -> int:
    """Add every record of database ``src`` (e.g. a tune run into another ``--log-dir``) to
    ``dest``, with its measured times, and its pruned-trial counts: how shipped logs grow run
    by run. Both must be the same machine class; ``src`` is only read. Returns the records added."""
    src, dest = Path(src), Path(dest)
    check_database_files(src)
    a, b = read_class(src), read_class(dest) if dest.exists() else None
    if a is None:
        raise TuningLogError(
            f"tuning log {src} has no {CLASS_FILE}, so its machine class is unknown; only merge "
            "databases written by `tvmnet tune`"
        )
    if b is not None and a["key"] != b["key"]:
        raise TuningLogError(
            f"cannot merge {src} (class {a['key']}) into {dest} (class {b['key']}): a log is "
            "valid only on the machine class it was measured on; pick the matching directory"
        )
    sdb, ddb = open_database(src), open_database(dest, create=True)  # both checked by open_database
    if b is None:
        shutil.copy2(src / CLASS_FILE, dest / CLASS_FILE)
    added, known = 0, {}
    for rec in sdb.get_all_tuning_records():
        wl = ddb.commit_workload(rec.workload.mod)
        key = wl_key(wl)
        if key not in known:  # records dest already holds are not added twice (merging is idempotent)
            known[key] = known_traces(ddb, wl)
        if str(rec.trace) in known[key]:
            continue
        known[key].add(str(rec.trace))
        copy_record(ddb, rec)
        added += 1
    pruned = pruned_counts(dest)
    for shash, n in pruned_counts(src).items():
        pruned[shash] = pruned.get(shash, 0) + n
    if pruned and added:
        (dest / PRUNED_FILE).write_text(json.dumps(pruned, indent=0, sort_keys=True) + "\n")
    say(f"merged {added} records of {src} into {dest}")
    return added


def drop_kernel_records(path: Path, mod) -> int:
    """Remove every record of the kernel ``mod`` from the database at ``path`` (rewritten
    through a staging copy); returns how many were removed. ``tvmnet refine`` does this before
    it commits a new pick: a pick's time was measured in place under that run's conditions, so
    an older pick's time does not compare with it, and the newest pick must be the one applied."""
    from tvm.s_tir import meta_schedule as ms

    path = Path(path)
    if not (path / RECORD_FILE).is_file():
        return 0
    key = wl_key(ms.database.Workload(mod))
    records = open_database(path).get_all_tuning_records()
    keep = [r for r in records if wl_key(r.workload) != key]
    if len(keep) == len(records):
        return 0
    staging, old = path.parent / f".{path.name}.new", path.parent / f".{path.name}.old"
    for p in (staging, old):
        shutil.rmtree(p, ignore_errors=True)
    dest = open_database(staging, create=True)
    for r in keep:
        copy_record(dest, r)
    path.rename(old)
    staging.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return len(records) - len(keep)


def replace_kernel_records(path: Path, fresh) -> Tuple[int, Path]:
    """Rewrite the database at ``path`` with every record of the kernels ``fresh`` holds (a
    database: the schedules re-measured by a resumed tune) replaced by ``fresh``'s records.
    The dropped records count in ``pruned_trials.json`` (they were measured), the database
    before is moved to the cache, not deleted (as ``prune_database`` does); ``class.json`` is
    kept. Returns (records dropped, backup path)."""
    path = Path(path)
    check_database_files(path)
    new = fresh.get_all_tuning_records()
    keys = {wl_key(r.workload) for r in new}
    old = open_database(path).get_all_tuning_records()
    staging = path.parent / f".{path.name}.retimed"
    shutil.rmtree(staging, ignore_errors=True)
    dest = open_database(staging, create=True)
    pruned = pruned_counts(path)
    dropped = 0
    for r in old:
        key = wl_key(r.workload)
        if key in keys:
            pruned[key] = pruned.get(key, 0) + 1
            dropped += 1
        else:
            copy_record(dest, r)
    for r in new:
        copy_record(dest, r)
    (staging / PRUNED_FILE).write_text(json.dumps(pruned, indent=0, sort_keys=True) + "\n")
    return dropped, _swap_in(path, staging, "-retimed")


def _swap_in(path: Path, staging: Path, tag: str) -> Path:
    """Make the rewritten database ``staging`` the one at ``path``: everything else the
    directory holds (``class.json``, the ``in_situ/`` picks) is copied over, and the old
    directory is moved whole to the cache (returned), not deleted."""
    for entry in path.iterdir():
        if entry.name in (WORKLOAD_FILE, RECORD_FILE, PRUNED_FILE):
            continue
        if entry.is_dir():
            shutil.copytree(entry, staging / entry.name)
        else:
            shutil.copy2(entry, staging / entry.name)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    backup = CACHE_DIR / "pruned-backups" / f"{path.name}{tag}-{stamp}"
    backup.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(backup))
    staging.rename(path)
    return backup


def prune_database(path: Path, say=print) -> tuple:
    """Keep only the best record per kernel (MetaSchedule's ``dump_pruned``), in place.

    The dropped trials are counted in ``pruned_trials.json`` so that a later ``tune`` still
    knows they were measured; ``class.json`` is kept. The full database is moved to the
    cache, not deleted. Returns (records before, records after, backup path).
    """
    path = Path(path)
    before = check_database_files(path)
    db = open_database(path)
    per_wl = Counter(wl_key(r.workload) for r in db.get_all_tuning_records())
    staging = path.parent / f".{path.name}.pruned"
    shutil.rmtree(staging, ignore_errors=True)
    dest = open_database(staging, create=True)
    db.dump_pruned(dest)
    kept = Counter(wl_key(r.workload) for r in dest.get_all_tuning_records())
    pruned = pruned_counts(path)
    for shash, n in per_wl.items():
        pruned[shash] = pruned.get(shash, 0) + n - kept.get(shash, 0)
    (staging / PRUNED_FILE).write_text(json.dumps(pruned, indent=0, sort_keys=True) + "\n")
    backup = _swap_in(path, staging, "")
    after = sum(kept.values())
    say(f"pruned {path}: {before} records -> {after} (best per kernel); full database moved to {backup}")
    return before, after, backup
