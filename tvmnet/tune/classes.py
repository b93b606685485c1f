"""Which log applies to a machine: the distance between machine classes (vendor, ISA,
vector width, cores), the nearest and the transfer classes, and ``choose_logs``: per kernel,
the exact class's record (its ``in_situ/`` picks first), else the estimated log, else the
nearest class's, and the one line ``compile`` prints about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from tvmnet.core.paths import TUNING_LOGS_DIR
from tvmnet.core.targets import TargetSpec
from tvmnet.tune.logs import (
    RECORD_FILE,
    best_record,
    copy_record,
    database_dir,
    list_classes,
    open_database,
    read_class,
)

_AMD_MCPU_PREFIXES = ("znver", "bdver", "btver", "barcelona", "amdfam", "athlon", "opteron", "k8")


def cpu_vendor(info: dict) -> str:
    """The vendor an LLVM ``mcpu`` names: ``amd`` or ``intel`` on x86-64 (``generic``: unknown);
    on other architectures the architecture itself (cores of one vendor's designs)."""
    mcpu = str(info.get("mcpu") or "")
    if info.get("arch") != "x86_64":
        return str(info.get("arch"))
    if mcpu in ("", "generic", "x86-64") or mcpu.startswith("x86-64-"):
        return "generic"
    return "amd" if mcpu.startswith(_AMD_MCPU_PREFIXES) else "intel"


def class_distance(a: dict, b: dict) -> Optional[int]:
    """How far apart two classes are (0: the same); None across architectures, whose
    schedules do not apply at all. Vector ISA weighs most, then the mcpu, then the core count;
    among other mcpus, one of the same vendor (same cache and port design lineage) is nearer."""
    if a["arch"] != b["arch"]:
        return None
    mcpu = a["mcpu"] != b["mcpu"]
    return (
        8 * (a["isa"] != b["isa"])
        + 4 * mcpu
        + 2 * (a["cores"] != b["cores"])
        + (mcpu and cpu_vendor(a) != cpu_vendor(b))
    )


_VECTOR_BITS = {"sse": 128, "neon": 128, "neon-dotprod": 128, "generic": 128, "avx2": 256, "avx512": 512}


CPU_ARCHES = ("x86_64", "aarch64")


def transfer_classes(spec: TargetSpec, *roots: Path) -> List[Tuple[dict, Path]]:
    """For a CPU with no class of its own architecture in the logs: the CPU classes of another
    architecture, those whose schedules transfer best first (closest vector width, then core count).

    A MetaSchedule record is a schedule of a target-independent kernel (the same TIR on every
    CPU), so it replays on another architecture: its tiles, vector lengths and parallel
    loops are split for the other machine (a 16-lane AVX-512 vector becomes four 4-lane NEON
    ones), which is far from tuned there but far from the naive loop nest too. Measured on
    the emulated Pi (where only numerics are real) and estimated with the cost proxy."""
    mine = spec.machine_class()
    if mine["arch"] not in CPU_ARCHES:
        return []
    bits = _VECTOR_BITS.get(mine["isa"], 128)
    ranked = [
        (
            abs(_VECTOR_BITS.get(info["isa"], 128) - bits),
            abs(int(info["cores"] or 0) - int(mine["cores"] or 0)),
            info["key"],
            info,
            d,
        )
        for info, d in list_classes(*roots)
        if info.get("arch") in CPU_ARCHES and info["arch"] != mine["arch"]
    ]
    return [(info, d) for *_, info, d in sorted(ranked, key=lambda r: r[:3])]


def transfer_class(spec: TargetSpec, *roots: Path) -> Optional[Tuple[dict, Path]]:
    """The class of ``transfer_classes`` whose schedules transfer best, or None."""
    ranked = transfer_classes(spec, *roots)
    return ranked[0] if ranked else None


def nearest_classes(spec: TargetSpec, *roots: Path) -> List[Tuple[dict, Path]]:
    """The *other* classes of this architecture with a log under the roots, nearest first."""
    mine = spec.machine_class()
    ranked = [
        (class_distance(mine, info), info["key"], info, d)
        for info, d in list_classes(*roots)
        if info["key"] != mine["key"]
    ]
    return [(info, d) for _, _, info, d in sorted((r for r in ranked if r[0] is not None), key=lambda r: r[:2])]


def nearest_tied_classes(spec: TargetSpec, *roots: Path) -> List[Tuple[dict, Path]]:
    """Every other class at the nearest distance (several when, say, two Intel AVX-512 classes
    of other mcpus tie for a third): a warm start measures the schedules of each here, since
    which transfers best is only known by measuring."""
    mine = spec.machine_class()
    ranked = nearest_classes(spec, *roots)
    if not ranked:
        return []
    best = class_distance(mine, ranked[0][0])
    return [(info, d) for info, d in ranked if class_distance(mine, info) == best]


def nearest_class(spec: TargetSpec, *roots: Path) -> Optional[Tuple[dict, Path]]:
    """The closest *other* class with a log under the roots, or None."""
    ranked = nearest_classes(spec, *roots)
    return ranked[0] if ranked else None


@dataclass
class LogChoice:
    """What ``compile`` applies: a database assembled kernel by kernel from the logs."""

    database: object  # MetaSchedule MemoryDatabase, or None
    this_class: str
    match: Optional[str]  # "exact", "exact+nearest", "nearest", "transfer", "given" or None (none applied)
    path: Optional[Path] = None  # the main log applied
    log_class: Optional[str] = None  # its class
    available: List[str] = field(default_factory=list)
    by_source: Dict[str, int] = field(default_factory=dict)  # kernels taken from each class / path
    kernels_total: int = 0
    in_situ: int = 0  # kernels whose record is a `tvmnet refine` pick (in_situ/)
    layout_choice: Optional[dict] = None  # how compile weighed the layouts (build/choose.py), if it did
    built: Optional[tuple] = field(default=None, repr=False)  # (module, executable) built while weighing

    @property
    def kernels_tuned(self) -> int:
        return sum(self.by_source.values())

    def metadata(self) -> dict:
        return {
            "log": str(self.path) if self.path else None,
            "class": self.log_class,
            "match": self.match,
            "this_class": self.this_class,
            "kernels_total": self.kernels_total,
            "kernels_tuned": self.kernels_tuned,
            "kernels_by_source": dict(self.by_source),
            "kernels_in_situ": self.in_situ,
            **({"layout_choice": self.layout_choice} if self.layout_choice else {}),
        }


IN_SITU_DIR = "in_situ"  # in a class's database directory: the records `tvmnet refine` picked


def _in_situ_database(path: Path):
    """The `tvmnet refine` picks kept beside a log (``<log>/in_situ/``), or None."""
    picks = Path(path) / IN_SITU_DIR
    return open_database(picks) if (picks / RECORD_FILE).is_file() else None


def choose_logs(spec: TargetSpec, tuning_log: Union[Path, str, None], tasks) -> LogChoice:
    """Pick the records ``compile`` applies to the module's kernels (its tuning ``tasks``).

    ``tuning_log`` None: nothing. A path: that database only. "auto": this machine class's
    log in tuning_logs/, then its estimated log (tuning_logs/estimated/, ``tune --estimate``),
    then each kernel they lack from the nearest class's log that has it (same architecture), or,
    with none of this architecture, from the CPU classes of another architecture whose schedules
    transfer best.
    """
    from tvm.s_tir import meta_schedule as ms

    mine = spec.machine_class()["key"]
    choice = LogChoice(None, mine, None, kernels_total=len(tasks))
    if tuning_log is None:
        return choice
    sources: List[Tuple[str, Path, str]] = []  # (name, database, how it relates to this machine)
    if tuning_log == "auto":
        choice.available = [info["key"] for info, _ in list_classes(TUNING_LOGS_DIR)]
        exact = database_dir(spec)
        if (exact / RECORD_FILE).is_file():
            sources.append((mine, exact, "exact"))
        guess = database_dir(spec, estimated=True)  # after any measured log of the class: measured wins
        if (guess / RECORD_FILE).is_file():
            sources.append((f"{mine} (estimated)", guess, "estimated"))
        # a kernel this class lacks comes from the nearest class that has it (a new class's log
        # holds a few models; the others' kernels stay with the classes tuned for them)
        others = [(info, d, "nearest") for info, d in nearest_classes(spec, TUNING_LOGS_DIR)]
        others = others or [(info, d, "transfer") for info, d in transfer_classes(spec, TUNING_LOGS_DIR)]
        sources.extend((info["key"], d, how) for info, d, how in others)
    else:
        path = Path(tuning_log)
        info = read_class(path)
        sources.append((info["key"] if info else str(path), path, "given"))
    if not sources:
        return choice
    target = spec.tvm_target()
    mem = ms.database.MemoryDatabase()
    remaining = list(tasks)
    for name, path, how in sources:  # each kernel from the first source that has it; a log is
        if not remaining:  # opened only while kernels are left
            break
        db = open_database(path)
        # refine's picks were timed in place on this machine: they serve its own class (or a given log) only
        picks = _in_situ_database(path) if how in ("exact", "given") else None
        left = []
        for task in remaining:
            rec = best_record(picks, task, target) if picks is not None else None
            if rec is not None:
                choice.in_situ += 1
            else:
                rec = best_record(db, task, target)
            if rec is None:
                left.append(task)
                continue
            copy_record(mem, rec, task.dispatched[0])
            choice.by_source[name] = choice.by_source.get(name, 0) + 1
        remaining = left
    used = [(name, path, how) for name, path, how in sources if choice.by_source.get(name)]
    _, path, _ = used[0] if used else sources[0]
    choice.database, choice.path, choice.log_class = mem, path, (read_class(path) or {}).get("key")
    # "exact", "estimated", "nearest", "transfer" (another architecture's), "given", or e.g.
    # "exact+nearest": this class's log, the nearest class's for the kernels it lacks
    choice.match = "+".join(dict.fromkeys(how for _, _, how in used)) or None
    return choice
