"""``sweep`` and ``pick``: the paper's accuracy/latency trade-off, measured on this hardware.

``run_sweep`` builds MobileNet v1 for every (alpha, resolution) pair, validates its numerics
against PyTorch and times it on the target (locally, or on a board over TVM RPC). The results
go to one JSON file per machine class, ``<out>/<class key>/sweep.json``, written after every
pair: the same command again skips the pairs measured before (``force`` rebuilds them). A
CSV beside it and a plot of latency against published top-1 (``sweep.png``, the Pareto front
as a step line) are rewritten at the end.

Accuracy is never measured here: it is the published ImageNet figure of the trained model
(``tvmnet.accuracy``; the TensorFlow model garden table, which covers all 16 pairs, with the
paper's Tables 6/7 beside it). A pair without a published figure stays in the table but off
the front, and ``pick`` never chooses it.

``pareto_front`` and ``pick`` are pure functions on the table.
"""
from __future__ import annotations

import csv
import datetime
import io
import json
import logging
import math
import os
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from . import accuracy
from .config import check_alpha, check_resolution
from .errors import BudgetError, DeviceError, UsageError
from .rpc import Endpoint
from .targets import TargetSpec

log = logging.getLogger(__name__)

FORMAT = "tvmnet-sweep/1"
DEFAULT_ALPHAS = (1.0, 0.75, 0.5, 0.25)
DEFAULT_RESOLUTIONS = (224, 192, 160, 128)
DEFAULT_OUT = Path("sweeps")
SWEEP_FILE = "sweep.json"
CSV_FILE = "sweep.csv"
PLOT_FILE = "sweep.png"


def _unique(values) -> tuple:
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return tuple(out)


def fmt_alpha(alpha: float) -> str:
    """``1.0``, ``0.75``, ``0.5``: as the paper and the TensorFlow table write them."""
    text = f"{float(alpha):g}"
    return text if "." in text or "e" in text else f"{text}.0"


def label(alpha: float, resolution: int) -> str:
    """A pair as the plot and the messages name it: ``0.5-160``, ``1.0-224``."""
    return f"{fmt_alpha(alpha)}-{int(resolution)}"


@dataclass(frozen=True)
class SweepOptions:
    """Which pairs to sweep, where to measure them, where the results go."""

    target: TargetSpec
    alphas: tuple = DEFAULT_ALPHAS
    resolutions: tuple = DEFAULT_RESOLUTIONS
    out: Path = DEFAULT_OUT
    force: bool = False                  # rebuild pairs measured before
    tune_minutes: float = 0.0            # > 0: tune each model first (at most this long) where this class's log lacks kernels
    rpc: Optional[Endpoint] = None       # time on a board (a server, or a tracker and key)
    samples: int = 2                     # seeded inputs for the numerics check
    repeat: int = 20                     # timed repeats (median and p90 over them)
    min_repeat_ms: int = 50              # each repeat runs the model at least this long (many runs for small models)
    seed: int = 0                        # seed of the models' initialisation and of the inputs
    target_arg: Optional[str] = None     # how the user named the target, for printed commands
    progress: bool = True                # tuning progress bar

    def __post_init__(self):
        alphas = _unique(check_alpha(a) for a in self.alphas)
        resolutions = _unique(check_resolution(r) for r in self.resolutions)
        if not alphas or not resolutions:
            raise UsageError("give at least one alpha and one resolution, e.g. --alphas 1.0,0.5 --resolutions 224,128")
        object.__setattr__(self, "alphas", alphas)
        object.__setattr__(self, "resolutions", resolutions)
        object.__setattr__(self, "out", Path(self.out))
        if not (self.tune_minutes >= 0 and math.isfinite(self.tune_minutes)):
            raise UsageError(f"--tune-minutes {self.tune_minutes} must be 0 (no tuning) or a positive number of minutes")
        if self.samples < 2:
            raise UsageError(f"--samples {self.samples}: need at least 2 (to check the output depends on the input)")
        if self.repeat < 1 or self.min_repeat_ms < 0:
            raise UsageError("--repeat must be at least 1 and --min-repeat-ms non-negative")
        name = self.target_arg or self.target.name
        if self.rpc is None:
            why = self.target.host_mismatch()
            if why:
                raise UsageError(f"target {name} cannot be timed on this machine ({why}) and tvmnet has no estimate "
                                 f"for a board without one; pass --rpc HOST:PORT or --tracker HOST:PORT --key KEY "
                                 f"to measure on the board (`tvmnet emulator start` for an emulated one)")
        else:
            if self.target.device != "cpu":
                raise UsageError(f"target {name} is a {self.target.device} target; sweeping over RPC is for CPU boards "
                                 "(run the sweep on the GPU machine without --rpc)")
            if self.tune_minutes > 0 and not self.rpc.tracker:
                raise UsageError("--tune-minutes on a board needs --tracker HOST:PORT --key KEY (MetaSchedule measures "
                                 "through a tracker); or sweep with --tune-minutes 0")

    @property
    def target_name(self) -> str:
        return self.target_arg or self.target.name

    @property
    def class_key(self) -> str:
        return self.target.machine_class()["key"]

    @property
    def directory(self) -> Path:
        return sweep_dir(self.target, self.out)

    @property
    def path(self) -> Path:
        return self.directory / SWEEP_FILE

    def pairs(self) -> List[Tuple[float, int]]:
        return list(product(self.alphas, self.resolutions))

    def display(self) -> str:
        where = "locally" if self.rpc is None else f"on {self.rpc}"
        tune = (f"tune up to {self.tune_minutes:g} min per model where this class's log lacks kernels"
                if self.tune_minutes > 0 else "no tuning (the logs as they are)")
        return (f"sweep: alpha {', '.join(fmt_alpha(a) for a in self.alphas)} x resolution "
                f"{', '.join(str(r) for r in self.resolutions)} ({len(self.pairs())} pairs), seed {self.seed}\n"
                f"target: {self.target_name} ({self.target.description}), machine class {self.class_key}, "
                f"measured {where}; {tune}\n"
                f"results: {self.path}" + ("; --force: rebuilding measured pairs" if self.force else ""))


# --------------------------------------------------------------------------------------- the table

def sweep_dir(spec: TargetSpec, out: Path = DEFAULT_OUT) -> Path:
    return Path(out) / spec.machine_class()["key"]


def _same_pair(row: dict, alpha: float, resolution: int, target: str) -> bool:
    return (round(float(row["alpha"]), 6) == round(float(alpha), 6) and int(row["resolution"]) == int(resolution)
            and row.get("target") == target)


def annotate(row: dict) -> dict:
    """Set the row's published accuracy from the data file (never from anything measured)."""
    pubs = accuracy.published(row["alpha"], row["resolution"])
    main, paper = pubs.get(accuracy.PRIMARY), pubs.get(accuracy.PAPER)
    row["top1"] = main.top1 if main else None
    row["top5"] = main.top5 if main else None
    row["top1_source"] = main.cite() if main else accuracy.NO_FIGURE
    row["top1_paper"] = paper.top1 if paper else None
    row["top1_paper_source"] = paper.cite() if paper else None
    return row


def eligible(row: dict) -> bool:
    """May the row be on the front and be picked: published top-1, numerics validated, a time."""
    return bool(row.get("validated")) and row.get("top1") is not None and (row.get("median_ms") or 0) > 0


def pareto_front(points: Sequence[Tuple[float, Optional[float]]]) -> List[int]:
    """Indices of the (latency, accuracy) points on the Pareto front, fastest first.

    A point is on the front when no other point has latency <= and accuracy >= with at least
    one of them strict; identical points are all on it. A point whose accuracy (or latency)
    is None is never on it.
    """
    ok = [i for i, (lat, acc) in enumerate(points) if lat is not None and acc is not None]
    front = []
    for i in ok:
        li, ai = points[i]
        dominated = any(points[j][0] <= li and points[j][1] >= ai and (points[j][0] < li or points[j][1] > ai)
                        for j in ok if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1], i))


def front_of(rows: Sequence[dict]) -> List[int]:
    """Pareto front of the table: eligible rows only (published top-1, validated)."""
    return pareto_front([(r["median_ms"], r["top1"]) if eligible(r) else (None, None) for r in rows])


def compile_command(target: str, alpha: float, resolution: int) -> str:
    return (f"tvmnet compile --target {shlex.quote(target)} --alpha {fmt_alpha(alpha)} --resolution {resolution} "
            f"-o build/mobilenet-{label(alpha, resolution)}")


def _describe(row: dict) -> str:
    paper = f", paper {row['top1_paper']:.1f}%" if row.get("top1_paper") is not None else ""
    return (f"alpha {fmt_alpha(row['alpha'])} resolution {row['resolution']}: top-1 {row['top1']:.1f}% "
            f"(top-5 {row['top5']:.1f}%{paper}), median {row['median_ms']:.3f} ms (p90 {row['p90_ms']:.3f}), "
            f"{row['mult_adds_m']:.0f} M mult-adds, {row['params_m']:.2f} M params, "
            f"{_tuned(row)}")


@dataclass(frozen=True)
class Pick:
    """The most accurate pair within the budget, the next best, and how to build it."""

    best: dict
    runner_up: Optional[dict]
    budget_ms: float
    within: int          # pairs within the budget
    considered: int      # pairs with a published top-1 and validated numerics
    target: str

    @property
    def command(self) -> str:
        return compile_command(self.target, self.best["alpha"], self.best["resolution"])

    def lines(self) -> List[str]:
        out = [f"budget {self.budget_ms:g} ms: {self.within} of {self.considered} measured pairs with a published "
               f"top-1 run within it (top-1: {accuracy.source_name(accuracy.PRIMARY)})",
               f"pick:      {_describe(self.best)}"]
        out.append(f"runner-up: {_describe(self.runner_up)}" if self.runner_up else "runner-up: none within the budget")
        out.append(f"build it:  {self.command}")
        return out


def pick(rows: Sequence[dict], budget_ms: float, target: str = "x86") -> Pick:
    """The most accurate row whose measured median latency is within ``budget_ms`` (ties on
    accuracy: the faster), and the runner-up. Only rows with a published top-1 and
    validated numerics count. Raises BudgetError (naming the fastest pair) when none fits."""
    if not (budget_ms > 0 and math.isfinite(budget_ms)):
        raise UsageError(f"--budget-ms {budget_ms} must be a positive number of milliseconds")
    rows = [annotate(dict(r)) for r in rows]
    considered = [r for r in rows if eligible(r)]
    if not considered:
        raise UsageError(f"none of the {len(rows)} measured pair(s) for target {target} has a published top-1 and "
                         f"validated numerics; sweep published pairs: `tvmnet sweep --target {shlex.quote(target)}` "
                         "(alphas 1.0,0.75,0.5,0.25 x resolutions 224,192,160,128)")
    within = [r for r in considered if r["median_ms"] <= budget_ms]
    if not within:
        f = min(considered, key=lambda r: (r["median_ms"], -r["top1"]))
        raise BudgetError(f"no measured pair runs within {budget_ms:g} ms on {target}: the fastest is "
                          f"{label(f['alpha'], f['resolution'])} (alpha {fmt_alpha(f['alpha'])}, resolution {f['resolution']}) "
                          f"at {f['median_ms']:.3f} ms median; raise --budget-ms to at least {f['median_ms']:.3f}")
    ranked = sorted(within, key=lambda r: (-r["top1"], r["median_ms"], -r["alpha"], -r["resolution"]))
    return Pick(ranked[0], ranked[1] if len(ranked) > 1 else None, budget_ms, len(within), len(considered), target)


# --------------------------------------------------------------------------------------- files

def load_sweep(path: Path) -> dict:
    """The sweep document at ``path`` ({"rows": []} when there is none yet)."""
    path = Path(path)
    if not path.exists():
        return {"format": FORMAT, "rows": []}
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("rows"), list):
            raise ValueError(f"format {doc.get('format') if isinstance(doc, dict) else None!r}, expected {FORMAT}")
    except (OSError, ValueError) as err:
        raise UsageError(f"sweep file {path} is corrupt or not a tvmnet sweep ({err}); move it away or pass "
                         "another --out (it was left untouched)") from err
    return doc


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rows_for(doc: dict, target: str) -> List[dict]:
    """The document's rows of one target, widest and largest first, annotated."""
    rows = [annotate(r) for r in doc["rows"] if r.get("target") == target]
    return sorted(rows, key=lambda r: (-float(r["alpha"]), -int(r["resolution"])))


def load_rows(spec: TargetSpec, out: Path = DEFAULT_OUT, target_arg: Optional[str] = None) -> Tuple[Path, List[dict]]:
    """This machine class's sweep rows for the target, or a UsageError naming the sweep command."""
    name = target_arg or spec.name
    path = sweep_dir(spec, out) / SWEEP_FILE
    out_opt = "" if Path(out) == DEFAULT_OUT else f" --out {shlex.quote(str(out))}"
    cmd = f"tvmnet sweep --target {shlex.quote(name)}{out_opt}"
    if not path.is_file():
        raise UsageError(f"no sweep for machine class {spec.machine_class()['key']} ({path} does not exist); "
                         f"measure one first: `{cmd}`")
    rows = rows_for(load_sweep(path), spec.name)
    if not rows:
        raise UsageError(f"{path} holds no pair measured for target {name}; measure them first: `{cmd}`")
    return path, rows


CSV_COLUMNS = ["alpha", "resolution", "mult_adds_m", "params_m", "top1", "top5", "top1_source", "top1_paper",
               "median_ms", "p90_ms", "kernels_tuned", "kernels_total", "tuning_match", "tuning_class", "pareto",
               "validated", "max_abs_error", "target", "device", "measured_at"]


def to_csv(rows: Sequence[dict], front: Sequence[int]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    on = set(front)
    for i, r in enumerate(rows):
        vals = dict(r, pareto=i in on, max_abs_error=(r.get("validation") or {}).get("max_abs"))
        w.writerow(["" if vals.get(c) is None else vals.get(c) for c in CSV_COLUMNS])
    return buf.getvalue()


def _tuned(row: dict) -> str:
    """``k/n kernels tuned (i from class A, j from class B)``: the rest run naive schedules."""
    k, n = row.get("kernels_tuned", 0), row.get("kernels_total", "?")
    sources = ", ".join(f"{c} from {src}" for src, c in (row.get("kernels_by_source") or {}).items())
    if not sources:
        return f"{k}/{n} kernels tuned" + (" (every kernel naive)" if not k else "")
    return f"{k}/{n} kernels tuned ({sources})"


def format_table(rows: Sequence[dict], front: Sequence[int], title: str) -> str:
    on = set(front)
    lines = [title,
             f"top-1: {accuracy.source_name(accuracy.PRIMARY)} table (float checkpoints mobilenet_v1_2018_02_22), "
             "the one source covering all 16 pairs; 'paper': Howard et al. 2017, Tables 6 and 7, where published",
             f"{'alpha':>5} {'res':>4} {'mult-adds M':>11} {'params M':>8}  {'top-1 %':<20} {'paper %':>7} "
             f"{'median ms':>9} {'p90 ms':>8} {'tuned':>7}  {'front':<5} numerics"]
    for i, r in enumerate(rows):
        top1 = f"{r['top1']:.1f}" if r.get("top1") is not None else accuracy.NO_FIGURE
        paper = f"{r['top1_paper']:.1f}" if r.get("top1_paper") is not None else "-"
        lines.append(f"{fmt_alpha(r['alpha']):>5} {r['resolution']:>4} {r['mult_adds_m']:>11.1f} {r['params_m']:>8.2f}  "
                     f"{top1:<20} {paper:>7} {r['median_ms']:>9.3f} {r['p90_ms']:>8.3f} "
                     f"{str(r.get('kernels_tuned', 0)) + '/' + str(r.get('kernels_total', '?')):>7}  "
                     f"{'yes' if i in on else '':<5} {'ok' if r.get('validated') else 'FAILED'}")
    return "\n".join(lines)


def plot_sweep(rows: Sequence[dict], front: Sequence[int], path: Path, title: str) -> dict:
    """Latency (x) against published top-1 (y), each point labelled alpha-res, the Pareto front
    as a step line; a PNG at ``path``. Returns what was drawn: ``points`` and ``front`` as
    (latency ms, top-1 %, label) and ``left_out`` (labels of pairs without a point)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    on = set(front)
    drawn = {"points": [], "front": [], "left_out": []}
    fig = Figure(figsize=(9, 6.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, r in enumerate(rows):
        name = label(r["alpha"], r["resolution"])
        if not eligible(r):
            why = accuracy.NO_FIGURE if r.get("top1") is None else "numerics failed"
            drawn["left_out"].append(f"{name} ({why})")
            continue
        x, y = float(r["median_ms"]), float(r["top1"])
        drawn["points"].append((x, y, name))
        ax.scatter([x], [y], s=36, zorder=3, color="tab:blue" if i in on else "tab:gray")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if front:
        fx = [float(rows[i]["median_ms"]) for i in front]
        fy = [float(rows[i]["top1"]) for i in front]
        drawn["front"] = [(x, y, label(rows[i]["alpha"], rows[i]["resolution"])) for x, y, i in zip(fx, fy, front)]
        ax.step(fx, fy, where="post", color="tab:blue", linewidth=1.5, zorder=2, label="Pareto front")
        ax.legend(loc="lower right")
    if not drawn["points"]:
        ax.text(0.5, 0.5, "no pair with a published top-1", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("median latency (ms), batch 1")
    ax.set_ylabel(f"ImageNet top-1 (%), published ({accuracy.source_name(accuracy.PRIMARY)})")
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    if drawn["left_out"]:
        fig.text(0.01, 0.01, "not plotted: " + ", ".join(drawn["left_out"]), fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return drawn


# --------------------------------------------------------------------------------------- the sweep

@dataclass
class SweepResult:
    path: Path
    csv: Path
    plot: Path
    target: str
    machine_class: str
    where: str
    rows: List[dict] = field(default_factory=list)     # every row of this target in the file
    front: List[int] = field(default_factory=list)     # indices into rows
    measured: int = 0
    skipped: int = 0
    failed: List[str] = field(default_factory=list)    # pairs whose numerics failed
    interrupted: bool = False
    seconds: float = 0.0
    plotted: dict = field(default_factory=dict)

    def title(self) -> str:
        return f"MobileNet v1 on {self.target}: latency vs published ImageNet top-1\nmachine class {self.machine_class}; {self.where}"

    def table(self) -> str:
        return format_table(self.rows, self.front, self.title().replace("\n", ", "))


def exact_coverage(spec: TargetSpec, model) -> Tuple[int, int]:
    """(kernels this machine class's own log has a record for, kernels of the model)."""
    from .logs import RECORD_FILE, best_record, database_dir, open_database
    from .tuning import TuneOptions, prepare_tasks

    _, tasks = prepare_tasks(TuneOptions(model=model, target=spec))
    path = database_dir(spec)
    if not (path / RECORD_FILE).is_file():
        return 0, len(tasks)
    db, target = open_database(path), spec.tvm_target()
    return sum(best_record(db, t, target) is not None for t in tasks), len(tasks)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _measure(opts: SweepOptions, alpha: float, resolution: int, tag: str, say) -> Optional[dict]:
    """Tune (if asked and needed), build, validate and time one pair; None when tuning was interrupted."""
    from . import __version__, rpc
    from .compiler import CompileOptions, compile_model
    from .config import ModelConfig
    from .info import model_info
    from .reference import Reference
    from .validate import compare, seeded_inputs

    spec = opts.target
    t0 = time.perf_counter()
    model = ModelConfig(alpha=alpha, resolution=resolution, seed=opts.seed)
    info = model_info(model)
    tuned = None
    if opts.tune_minutes > 0:
        have, total = exact_coverage(spec, model)
        if have < total:
            from .tuning import TuneOptions, tune_model

            say(f"{tag}: this class's log has {have}/{total} kernels of the model; tuning for up to "
                f"{opts.tune_minutes:g} min")
            res = tune_model(TuneOptions(model=model, target=spec, trials=100000, minutes=opts.tune_minutes,
                                         rpc=opts.rpc, progress=opts.progress, only_untuned=True), say=say)
            tuned = {"trials": res.trials_run, "seconds": round(res.seconds, 1), "estimate_ms": res.estimate_ms}
            if res.interrupted:
                return None
    quiet = lambda msg: log.info("%s: %s", tag, msg)  # noqa: E731 - compile's steps: --verbose shows them
    with tempfile.TemporaryDirectory(prefix="tvmnet-sweep-") as tmp:
        art = compile_model(CompileOptions(model=model, target=spec, output=Path(tmp) / "mnet", tuning_log="auto"),
                            progress=quiet)
        reference = Reference(art)
        x = seeded_inputs(art.input_shape, 1, opts.seed)[0]
        if opts.rpc is None:
            from .targets import cpu_model
            from .runner import open_local

            session = open_local(art)
            report = compare(session.run, reference, art, opts.samples, seed=opts.seed, where=str(session.device))
            timing = session.time(x, number=1, repeat=opts.repeat, min_repeat_ms=opts.min_repeat_ms)
            device = f"local: {cpu_model()}"
        else:
            with rpc.open_remote(art, opts.rpc, say=quiet) as session:
                report = compare(session.run, reference, art, opts.samples, seed=opts.seed, where=session.where)
                timing = session.time(x, number=1, repeat=opts.repeat, min_repeat_ms=opts.min_repeat_ms)
                device = f"rpc: {session.where}"
        tun = art.metadata.get("tuning", {})
        import tvm

        row = {
            "alpha": alpha, "resolution": resolution, "target": spec.name, "target_dict": spec.target,
            "device": device, "seed": opts.seed,
            "mult_adds": info["macs"], "params": info["params"],
            "mult_adds_m": round(info["macs"] / 1e6, 1), "params_m": round(info["params"] / 1e6, 2),
            "median_ms": round(timing.median_ms, 4), "p90_ms": round(timing.p90_ms, 4), "repeats": timing.runs,
            "kernels_tuned": tun.get("kernels_tuned", 0), "kernels_total": tun.get("kernels_total"),
            "tuning_match": tun.get("match"), "tuning_class": tun.get("class"),
            "kernels_by_source": tun.get("kernels_by_source", {}), "tuned_in_sweep": tuned,
            "validated": report.ok,
            "validation": {"samples": report.samples, "max_abs": report.max_abs, "max_rel": report.max_rel,
                           "top1_agree": report.top1_agree, "reference": report.reference, "failures": report.failures},
            "compile_seconds": art.metadata.get("compile_seconds"), "seconds": round(time.perf_counter() - t0, 1),
            "measured_at": _now(), "tvm_version": tvm.__version__, "tvmnet_version": __version__,
        }
    return annotate(row)


def _pair_line(tag: str, row: dict) -> str:
    top1 = (f"top-1 {row['top1']:.1f}% (TF model garden)" if row.get("top1") is not None
            else f"top-1: {accuracy.NO_FIGURE}")
    v = row["validation"]
    numerics = (f"numerics ok (max abs {v['max_abs']:.1e})" if row["validated"]
                else "numerics FAILED: " + "; ".join(v["failures"]))
    return (f"{tag}: median {row['median_ms']:.3f} ms (p90 {row['p90_ms']:.3f}), {top1}, {_tuned(row)}, "
            f"{numerics}; {row['seconds']:.1f} s")


def run_sweep(opts: SweepOptions, say: Callable[[str], None] = print) -> SweepResult:
    """Measure every pair not measured before (all of them with ``force``); write the JSON,
    CSV and plot of every row of this target in this class's sweep file."""
    from .targets import cpu_model

    spec = opts.target
    spec.check_toolchain()
    if opts.rpc is None and spec.device == "cuda":
        import tvm

        if not tvm.cuda(0).exist:
            raise DeviceError(f"target {spec.name} is timed on a local NVIDIA GPU and this machine has none; "
                              "run `tvmnet sweep` on a machine with one")
    t0 = time.perf_counter()
    directory = opts.directory
    doc = load_sweep(opts.path)     # a corrupt file stops here, before any work
    directory.mkdir(parents=True, exist_ok=True)
    where = f"{cpu_model()}" if opts.rpc is None else f"measured over RPC on {opts.rpc}"
    doc.update({"format": FORMAT, "machine_class": spec.machine_class(), "host_cpu": cpu_model(),
                "accuracy_source": accuracy.PRIMARY, "accuracy_citation": accuracy.citation(accuracy.PRIMARY)})
    result = SweepResult(opts.path, directory / CSV_FILE, directory / PLOT_FILE, opts.target_name, opts.class_key,
                         where)
    pairs = opts.pairs()
    for i, (alpha, res) in enumerate(pairs, 1):
        tag = f"[{i}/{len(pairs)}] {label(alpha, res)}"
        old = next((r for r in doc["rows"] if _same_pair(r, alpha, res, spec.name)), None)
        if old is not None and old.get("validated") and not opts.force:
            result.skipped += 1
            say(f"{tag}: measured before ({old['median_ms']:.3f} ms median, {old.get('measured_at')}); skipped "
                "(--force measures it again)")
            continue
        row = _measure(opts, alpha, res, tag, say)
        if row is None:
            result.interrupted = True
            say(f"{tag}: tuning interrupted; the sweep stops here (rerun the same command to resume)")
            break
        doc["rows"] = [r for r in doc["rows"] if not _same_pair(r, alpha, res, spec.name)] + [row]
        _write_atomic(opts.path, json.dumps(doc, indent=1) + "\n")
        result.measured += 1
        if not row["validated"]:
            result.failed.append(label(alpha, res))
        say(_pair_line(tag, row))
    result.rows = rows_for(doc, spec.name)
    result.front = front_of(result.rows)
    on = set(result.front)
    for i, r in enumerate(result.rows):
        r["pareto"] = i in on
    _write_atomic(opts.path, json.dumps(doc, indent=1) + "\n")
    _write_atomic(result.csv, to_csv(result.rows, result.front))
    result.plotted = plot_sweep(result.rows, result.front, result.plot, result.title())
    result.seconds = time.perf_counter() - t0
    return result
