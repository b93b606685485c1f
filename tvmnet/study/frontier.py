"""The sweep's table: the Pareto front of latency against published top-1, ``pick`` (the most
accurate model within a latency budget), and the files (``sweep.json``, the CSV, the plot).
``pareto_front`` and ``pick`` are pure functions on the table's rows.

A row is one point: (alpha, resolution, precision). ``precision`` is ``fp32`` or ``int8``; a row
without it (a sweep.json from before int8 was swept) is fp32. The front and ``pick`` span both
precisions: an int8 point is dominated by any point, of either precision, at least as accurate
and at least as fast."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from tvmnet.core.errors import BudgetError, UsageError
from tvmnet.core.targets import TargetSpec
from tvmnet.study import accuracy

FORMAT = "tvmnet-sweep/1"
DEFAULT_OUT = Path("sweeps")
SWEEP_FILE = "sweep.json"
CSV_FILE = "sweep.csv"
PLOT_FILE = "sweep.png"


def fmt_alpha(alpha: float) -> str:
    """``1.0``, ``0.75``, ``0.5``: as the paper and the TensorFlow table write them."""
    text = f"{float(alpha):g}"
    return text if "." in text or "e" in text else f"{text}.0"


def label(alpha: float, resolution: int, precision: str = accuracy.FP32) -> str:
    """A point as the plot and the messages name it: ``0.5-160``, ``1.0-224``; int8 ``0.5-160-int8``."""
    return f"{fmt_alpha(alpha)}-{int(resolution)}" + ("" if precision == accuracy.FP32 else f"-{precision}")


def precision_of(row: dict) -> str:
    """The row's precision; a row from before int8 was swept has none: fp32."""
    return row.get("precision") or accuracy.FP32


def row_label(row: dict) -> str:
    return label(row["alpha"], row["resolution"], precision_of(row))


# --------------------------------------------------------------------------------------- the table


def sweep_dir(spec: TargetSpec, out: Path = DEFAULT_OUT) -> Path:
    return Path(out) / spec.machine_class()["key"]


def same_pair(row: dict, alpha: float, resolution: int, target: str, precision: str = accuracy.FP32) -> bool:
    """Is the row the point (alpha, resolution, precision) of the target (a row without a precision: fp32)."""
    return (
        round(float(row["alpha"]), 6) == round(float(alpha), 6)
        and int(row["resolution"]) == int(resolution)
        and row.get("target") == target
        and precision_of(row) == precision
    )


def annotate(row: dict) -> dict:
    """Set the row's precision (fp32 where it has none) and its published accuracy at that
    precision from the data file (never from anything measured)."""
    precision = row["precision"] = precision_of(row)
    pubs = accuracy.published(row["alpha"], row["resolution"], precision)
    main, paper = pubs.get(accuracy.primary(precision)), pubs.get(accuracy.PAPER)
    row["top1"] = main.top1 if main else None
    row["top5"] = main.top5 if main else None
    row["top1_source"] = main.cite() if main else accuracy.NO_FIGURE
    row["top1_source_id"] = main.source if main else None
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
        dominated = any(
            points[j][0] <= li and points[j][1] >= ai and (points[j][0] < li or points[j][1] > ai) for j in ok if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1], i))


def front_of(rows: Sequence[dict]) -> List[int]:
    """Pareto front of the table: eligible rows only (published top-1, validated)."""
    return pareto_front([(r["median_ms"], r["top1"]) if eligible(r) else (None, None) for r in rows])


def compile_command(target: str, alpha: float, resolution: int, precision: str = accuracy.FP32) -> str:
    prec = "" if precision == accuracy.FP32 else f" --precision {precision}"
    return (
        f"tvmnet compile --target {shlex.quote(target)} --alpha {fmt_alpha(alpha)} --resolution {resolution}"
        f"{prec} -o build/mobilenet-{label(alpha, resolution, precision)}"
    )


def _describe(row: dict) -> str:
    paper = f", paper {row['top1_paper']:.1f}%" if row.get("top1_paper") is not None else ""
    return (
        f"alpha {fmt_alpha(row['alpha'])} resolution {row['resolution']} {precision_of(row)}: "
        f"top-1 {row['top1']:.1f}% "
        f"(top-5 {row['top5']:.1f}%{paper}), median {row['median_ms']:.3f} ms (p90 {row['p90_ms']:.3f}), "
        f"{row['mult_adds_m']:.0f} M mult-adds, {row['params_m']:.2f} M params, "
        f"{tuned(row)}"
    )


@dataclass(frozen=True)
class Pick:
    """The most accurate pair within the budget, the next best, and how to build it."""

    best: dict
    runner_up: Optional[dict]
    budget_ms: float
    within: int  # pairs within the budget
    considered: int  # points with a published top-1 and validated numerics
    target: str
    precisions: Tuple[str, ...] = (accuracy.FP32,)  # of the points considered

    @property
    def precision(self) -> str:
        return precision_of(self.best)

    @property
    def command(self) -> str:
        return compile_command(self.target, self.best["alpha"], self.best["resolution"], self.precision)

    def lines(self) -> List[str]:
        out = [
            f"budget {self.budget_ms:g} ms: {self.within} of {self.considered} measured points with a published "
            f"top-1 run within it (top-1: {_sources_line(self.precisions)})",
            f"pick:      {_describe(self.best)}",
        ]
        if self.precision != accuracy.FP32:
            out.append(f"accuracy:  {accuracy_note(self.best)}")
        out.append(f"runner-up: {_describe(self.runner_up)}" if self.runner_up else "runner-up: none within the budget")
        out.append(f"build it:  {self.command}")
        return out


def _rank(precision: str) -> int:
    return accuracy.PRECISIONS.index(precision) if precision in accuracy.PRECISIONS else len(accuracy.PRECISIONS)


def _sources_line(precisions) -> str:
    """``TensorFlow model garden`` (fp32 only), or the source of each precision named."""
    precs = [p for p in accuracy.PRECISIONS if p in set(precisions)] or [accuracy.FP32]
    if precs == [accuracy.FP32]:
        return accuracy.source_name(accuracy.PRIMARY)
    return "; ".join(f"{p}: {accuracy.source_name(accuracy.primary(p))}" for p in precs)


def accuracy_note(row: dict) -> str:
    """Which figure a (picked) row's top-1 is and where it comes from, and, for int8, what it is of."""
    src = row.get("top1_source_id") or accuracy.primary(precision_of(row))
    what = accuracy.description(src)
    return f"top-1 {row['top1']:.1f}% is the published figure of {row['top1_source']} <{accuracy.url(src)}>" + (
        f". {what}" if what else ""
    )


def pick(rows: Sequence[dict], budget_ms: float, target: str = "x86") -> Pick:
    """The most accurate row whose measured median latency is within ``budget_ms`` (ties on
    accuracy: the faster), and the runner-up. Only rows with a published top-1 and
    validated numerics count. Raises BudgetError (naming the fastest pair) when none fits."""
    if not (budget_ms > 0 and math.isfinite(budget_ms)):
        raise UsageError(f"--budget-ms {budget_ms} must be a positive number of milliseconds")
    rows = [annotate(dict(r)) for r in rows]
    considered = [r for r in rows if eligible(r)]
    if not considered:
        raise UsageError(
            f"none of the {len(rows)} measured pair(s) for target {target} has a published top-1 and "
            f"validated numerics; sweep published pairs: `tvmnet sweep --target {shlex.quote(target)}` "
            "(alphas 1.0,0.75,0.5,0.25 x resolutions 224,192,160,128)"
        )
    within = [r for r in considered if r["median_ms"] <= budget_ms]
    if not within:
        f = min(considered, key=lambda r: (r["median_ms"], -r["top1"]))
        raise BudgetError(
            f"no measured pair runs within {budget_ms:g} ms on {target}: the fastest is "
            f"{row_label(f)} (alpha {fmt_alpha(f['alpha'])}, resolution {f['resolution']}, {precision_of(f)}) "
            f"at {f['median_ms']:.3f} ms median; raise --budget-ms to at least {f['median_ms']:.3f}"
        )
    ranked = sorted(  # equal in all else: fp32 first
        within, key=lambda r: (-r["top1"], r["median_ms"], -r["alpha"], -r["resolution"], _rank(precision_of(r)))
    )
    precisions = tuple(sorted({precision_of(r) for r in considered}, key=_rank))
    return Pick(
        ranked[0], ranked[1] if len(ranked) > 1 else None, budget_ms, len(within), len(considered), target, precisions
    )


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
        raise UsageError(
            f"sweep file {path} is corrupt or not a tvmnet sweep ({err}); move it away or pass "
            "another --out (it was left untouched)"
        ) from err
    return doc


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rows_for(doc: dict, target: str) -> List[dict]:
    """The document's rows of one target, widest and largest first (fp32 before int8), annotated."""
    rows = [annotate(r) for r in doc["rows"] if r.get("target") == target]
    return sorted(rows, key=lambda r: (-float(r["alpha"]), -int(r["resolution"]), _rank(r["precision"])))


def load_rows(spec: TargetSpec, out: Path = DEFAULT_OUT, target_arg: Optional[str] = None) -> Tuple[Path, List[dict]]:
    """This machine class's sweep rows for the target, or a UsageError naming the sweep command."""
    name = target_arg or spec.name
    path = sweep_dir(spec, out) / SWEEP_FILE
    out_opt = "" if Path(out) == DEFAULT_OUT else f" --out {shlex.quote(str(out))}"
    cmd = f"tvmnet sweep --target {shlex.quote(name)}{out_opt}"
    if not path.is_file():
        raise UsageError(
            f"no sweep for machine class {spec.machine_class()['key']} ({path} does not exist); "
            f"measure one first: `{cmd}`"
        )
    rows = rows_for(load_sweep(path), spec.name)
    if not rows:
        raise UsageError(f"{path} holds no pair measured for target {name}; measure them first: `{cmd}`")
    return path, rows


CSV_COLUMNS = [
    "alpha",
    "resolution",
    "mult_adds_m",
    "params_m",
    "top1",
    "top5",
    "precision",
    "top1_source",
    "top1_paper",
    "median_ms",
    "p90_ms",
    "kernels_tuned",
    "kernels_total",
    "tuning_match",
    "tuning_class",
    "pareto",
    "validated",
    "max_abs_error",
    "target",
    "device",
    "measured_at",
]


def to_csv(rows: Sequence[dict], front: Sequence[int]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    on = set(front)
    for i, r in enumerate(rows):
        vals = dict(r, pareto=i in on, max_abs_error=(r.get("validation") or {}).get("max_abs"))
        w.writerow(["" if vals.get(c) is None else vals.get(c) for c in CSV_COLUMNS])
    return buf.getvalue()


def tuned(row: dict) -> str:
    """``k/n kernels tuned (i from class A, j from class B)``: the rest run naive schedules."""
    k, n = row.get("kernels_tuned", 0), row.get("kernels_total", "?")
    sources = ", ".join(f"{c} from {src}" for src, c in (row.get("kernels_by_source") or {}).items())
    if not sources:
        return f"{k}/{n} kernels tuned" + (" (every kernel naive)" if not k else "")
    return f"{k}/{n} kernels tuned ({sources})"


def format_table(rows: Sequence[dict], front: Sequence[int], title: str) -> str:
    on = set(front)
    lines = [
        title,
        f"top-1: {accuracy.source_name(accuracy.PRIMARY)} table (float checkpoints mobilenet_v1_2018_02_22), "
        "the one source covering all 16 pairs; 'paper': Howard et al. 2017, Tables 6 and 7, where published",
    ]
    if any(precision_of(r) == "int8" for r in rows):
        lines.append(
            "int8 top-1: the same table's _quant rows (quantization-aware training, converted by TFLite to uint8): "
            "the published accuracy of an int8 MobileNet of that shape, not a measurement of tvmnet's "
            "post-training quantized build"
        )
    lines.append(
        f"{'alpha':>5} {'res':>4} {'prec':<4} {'mult-adds M':>11} {'params M':>8}  {'top-1 %':<20} {'paper %':>7} "
        f"{'median ms':>9} {'p90 ms':>8} {'tuned':>7}  {'front':<5} numerics"
    )
    for i, r in enumerate(rows):
        top1 = f"{r['top1']:.1f}" if r.get("top1") is not None else accuracy.NO_FIGURE
        paper = f"{r['top1_paper']:.1f}" if r.get("top1_paper") is not None else "-"
        lines.append(
            f"{fmt_alpha(r['alpha']):>5} {r['resolution']:>4} {precision_of(r):<4} {r['mult_adds_m']:>11.1f} "
            f"{r['params_m']:>8.2f}  {top1:<20} {paper:>7} {r['median_ms']:>9.3f} {r['p90_ms']:>8.3f} "
            f"{str(r.get('kernels_tuned', 0)) + '/' + str(r.get('kernels_total', '?')):>7}  "
            f"{'yes' if i in on else '':<5} {'ok' if r.get('validated') else 'FAILED'}"
        )
    return "\n".join(lines)


STYLE = {"fp32": ("o", "tab:blue"), "int8": ("^", "tab:orange")}  # marker, colour of each precision's points


def plot_sweep(rows: Sequence[dict], front: Sequence[int], path: Path, title: str) -> dict:
    """Latency (x) against published top-1 (y), each point labelled alpha-res (``-int8`` for int8),
    a marker and colour per precision (faded off the front), the single Pareto front across both
    precisions as a step line; a PNG at ``path``. Returns what was drawn: ``points`` and ``front`` as
    (latency ms, top-1 %, label), ``left_out`` (labels of points without one) and ``precisions``
    (precision -> labels of its points, in ``STYLE``'s marker and colour)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    on = set(front)
    drawn = {"points": [], "front": [], "left_out": [], "precisions": {}}
    fig = Figure(figsize=(9, 6.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, r in enumerate(rows):
        name, precision = row_label(r), precision_of(r)
        if not eligible(r):
            why = accuracy.NO_FIGURE if r.get("top1") is None else "numerics failed"
            drawn["left_out"].append(f"{name} ({why})")
            continue
        x, y = float(r["median_ms"]), float(r["top1"])
        drawn["points"].append((x, y, name))
        marker, colour = STYLE.get(precision, ("s", "tab:gray"))
        drawn["precisions"].setdefault(precision, []).append(name)
        ax.scatter([x], [y], s=40, zorder=3, marker=marker, color=colour, alpha=1.0 if i in on else 0.35)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    handles = [
        Line2D(
            [],
            [],
            linestyle="none",
            marker=STYLE.get(p, ("s", "tab:gray"))[0],
            color=STYLE.get(p, ("s", "tab:gray"))[1],
            label=p,
        )
        for p in drawn["precisions"]
    ]
    if front:
        fx = [float(rows[i]["median_ms"]) for i in front]
        fy = [float(rows[i]["top1"]) for i in front]
        drawn["front"] = [(x, y, row_label(rows[i])) for x, y, i in zip(fx, fy, front)]
        both = len(drawn["precisions"]) > 1
        colour = "black" if both else "tab:blue"
        ax.step(fx, fy, where="post", color=colour, linewidth=1.2, zorder=2)
        handles.append(Line2D([], [], color=colour, label="Pareto front" + (" (both precisions)" if both else "")))
    if drawn["points"]:
        ax.margins(x=0.15, y=0.12)  # room for the labels at the edges
        ax.legend(handles=handles, loc="best", title="faded: off the front", title_fontsize=7)
    else:
        ax.text(0.5, 0.5, "no pair with a published top-1", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("median latency (ms), batch 1")
    int8 = "; int8: its _quant rows" if "int8" in drawn["precisions"] else ""
    ax.set_ylabel(f"ImageNet top-1 (%), published ({accuracy.source_name(accuracy.PRIMARY)}{int8})")
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    notes = []
    if "int8" in drawn["precisions"]:
        notes.append("int8 top-1: TF's quantization-aware _quant checkpoints (tvmnet builds post-training int8)")
    if drawn["left_out"]:
        notes.append("not plotted: " + ", ".join(drawn["left_out"]))
    if notes:
        fig.text(0.01, 0.01, "; ".join(notes), fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return drawn
