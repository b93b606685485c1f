"""``sweep`` and ``pick``: the paper's accuracy/latency trade-off, measured on this hardware.

``run_sweep`` builds MobileNet v1 for every (alpha, resolution) pair at each precision asked
(``fp32``, and ``int8``: post-training quantization, CPU targets only), validates its numerics
(fp32 against PyTorch; int8 against ONNX Runtime's integer kernels on the same quantized model,
as ``tvmnet validate`` does) and times it on the target (locally, or on a board over TVM RPC).
The results go to one JSON file per machine class, ``<out>/<class key>/sweep.json``, written
after every point: the same command again skips the (alpha, resolution, precision) points
measured before (``force`` rebuilds them; a row without a precision is fp32). A CSV beside it
and a plot of latency against published top-1 (``sweep.png``, one Pareto front across both
precisions as a step line) are rewritten at the end.

Accuracy is never measured here: it is the published ImageNet figure of the trained model
(``tvmnet.study.accuracy``; the TensorFlow model garden table, which covers all 16 pairs, with the
paper's Tables 6/7 beside it; for int8, the same table's quantization-aware ``_quant`` rows). A
point without a published figure stays in the table but off the front, and ``pick`` never
chooses it.

``pareto_front`` and ``pick`` are pure functions on the table.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from tvmnet.core.config import check_alpha, check_resolution
from tvmnet.core.endpoint import Endpoint
from tvmnet.core.errors import DeviceError, TargetError, UsageError
from tvmnet.core.targets import TargetSpec
from tvmnet.study import accuracy
from tvmnet.study.frontier import (
    CSV_FILE,
    DEFAULT_OUT,
    FORMAT,
    PLOT_FILE,
    SWEEP_FILE,
    annotate,
    fmt_alpha,
    format_table,
    front_of,
    label,
    load_sweep,
    plot_sweep,
    precision_of,
    rows_for,
    same_pair,
    sweep_dir,
    to_csv,
    tuned,
    write_atomic,
)

log = logging.getLogger(__name__)

DEFAULT_ALPHAS = (1.0, 0.75, 0.5, 0.25)
DEFAULT_RESOLUTIONS = (224, 192, 160, 128)


def _unique(values) -> tuple:
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return tuple(out)


def check_precisions(values) -> tuple:
    """The precisions asked, in order, each once; a UsageError naming the valid ones otherwise."""
    got = _unique(str(v).strip().lower() for v in values)
    bad = [v for v in got if v not in accuracy.PRECISIONS]
    if bad or not got:
        raise UsageError(
            f"--precisions {','.join(bad) or '(none)'}: choose from {', '.join(accuracy.PRECISIONS)} "
            "(comma-separated, e.g. --precisions fp32,int8)"
        )
    return got


@dataclass(frozen=True)
class SweepOptions:
    """Which pairs to sweep, where to measure them, where the results go."""

    target: TargetSpec
    alphas: tuple = DEFAULT_ALPHAS
    resolutions: tuple = DEFAULT_RESOLUTIONS
    precisions: tuple = (accuracy.FP32,)  # fp32 and/or int8 (compile's --precision)
    out: Path = DEFAULT_OUT
    force: bool = False  # rebuild pairs measured before
    tune_minutes: float = 0.0  # > 0: tune each model first (at most this long) where this class's log lacks kernels
    rpc: Optional[Endpoint] = None  # time on a board (a server, or a tracker and key)
    samples: int = 2  # seeded inputs for the numerics check
    repeat: int = 20  # timed repeats (median and p90 over them)
    min_repeat_ms: int = 50  # each repeat runs the model at least this long (many runs for small models)
    seed: int = 0  # seed of the models' initialisation and of the inputs
    target_arg: Optional[str] = None  # how the user named the target, for printed commands
    progress: bool = True  # tuning progress bar

    def __post_init__(self):
        alphas = _unique(check_alpha(a) for a in self.alphas)
        resolutions = _unique(check_resolution(r) for r in self.resolutions)
        if not alphas or not resolutions:
            raise UsageError("give at least one alpha and one resolution, e.g. --alphas 1.0,0.5 --resolutions 224,128")
        object.__setattr__(self, "alphas", alphas)
        object.__setattr__(self, "resolutions", resolutions)
        object.__setattr__(self, "precisions", check_precisions(self.precisions))
        object.__setattr__(self, "out", Path(self.out))
        if "int8" in self.precisions and not self.target.is_cpu:  # compile's refusal (quantize/model.py)
            raise TargetError(
                f"--precision int8 builds for CPU targets (x86, rpi3b, rpi4, rpi5); target {self.target.name} is "
                f"{self.target.device}: sweep it with --precisions fp32"
            )
        if not (self.tune_minutes >= 0 and math.isfinite(self.tune_minutes)):
            raise UsageError(
                f"--tune-minutes {self.tune_minutes} must be 0 (no tuning) or a positive number of minutes"
            )
        if self.samples < 2:
            raise UsageError(f"--samples {self.samples}: need at least 2 (to check the output depends on the input)")
        if self.repeat < 1 or self.min_repeat_ms < 0:
            raise UsageError("--repeat must be at least 1 and --min-repeat-ms non-negative")
        name = self.target_arg or self.target.name
        if self.rpc is None:
            why = self.target.host_mismatch()
            if why:
                raise UsageError(
                    f"target {name} cannot be timed on this machine ({why}) and tvmnet has no estimate "
                    f"for a board without one; pass --rpc HOST:PORT or --tracker HOST:PORT --key KEY "
                    f"to measure on the board (`tvmnet emulator start` for an emulated one)"
                )
        else:
            if self.target.device != "cpu":
                raise UsageError(
                    f"target {name} is a {self.target.device} target; sweeping over RPC is for CPU boards "
                    "(run the sweep on the GPU machine without --rpc)"
                )
            if self.tune_minutes > 0 and not self.rpc.tracker:
                raise UsageError(
                    "--tune-minutes on a board needs --tracker HOST:PORT --key KEY (MetaSchedule measures "
                    "through a tracker); or sweep with --tune-minutes 0"
                )

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

    def points(self) -> List[Tuple[float, int, str]]:
        """(alpha, resolution, precision) to measure: each pair's precisions one after the other."""
        return list(product(self.alphas, self.resolutions, self.precisions))

    def display(self) -> str:
        where = "locally" if self.rpc is None else f"on {self.rpc}"
        tune = (
            f"tune up to {self.tune_minutes:g} min per model where this class's log lacks kernels"
            if self.tune_minutes > 0
            else "no tuning (the logs as they are)"
        )
        precisions = (
            f" x {', '.join(self.precisions)} ({len(self.points())} points)"
            if len(self.precisions) > 1
            else f", {self.precisions[0]}"
        )
        return (
            f"sweep: alpha {', '.join(fmt_alpha(a) for a in self.alphas)} x resolution "
            f"{', '.join(str(r) for r in self.resolutions)} ({len(self.pairs())} pairs){precisions}, "
            f"seed {self.seed}\n"
            f"target: {self.target_name} ({self.target.description}), machine class {self.class_key}, "
            f"measured {where}; {tune}\n"
            f"results: {self.path}" + ("; --force: rebuilding measured pairs" if self.force else "")
        )


# --------------------------------------------------------------------------------------- the sweep


@dataclass
class SweepResult:
    path: Path
    csv: Path
    plot: Path
    target: str
    machine_class: str
    where: str
    rows: List[dict] = field(default_factory=list)  # every row of this target in the file
    front: List[int] = field(default_factory=list)  # indices into rows
    measured: int = 0
    skipped: int = 0
    failed: List[str] = field(default_factory=list)  # points whose numerics failed
    interrupted: bool = False
    seconds: float = 0.0
    plotted: dict = field(default_factory=dict)

    def title(self) -> str:
        return f"MobileNet v1 on {self.target}: latency vs published ImageNet top-1\nmachine class {self.machine_class}; {self.where}"

    def table(self) -> str:
        return format_table(self.rows, self.front, self.title().replace("\n", ", "))


def exact_coverage(spec: TargetSpec, model, precision: str = accuracy.FP32) -> Tuple[int, int]:
    """(kernels this machine class's own log has a record for, kernels of the model at the precision)."""
    from tvmnet.tune.logs import RECORD_FILE, best_record, database_dir, open_database
    from tvmnet.tune.options import TuneOptions
    from tvmnet.tune.search import prepare_tasks

    _, tasks = prepare_tasks(TuneOptions(model=model, target=spec, precision=precision))
    path = database_dir(spec)
    if not (path / RECORD_FILE).is_file():
        return 0, len(tasks)
    db, target = open_database(path), spec.tvm_target()
    return sum(best_record(db, t, target) is not None for t in tasks), len(tasks)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _measure(opts: SweepOptions, alpha: float, resolution: int, precision: str, tag: str, say) -> Optional[dict]:
    """Tune (if asked and needed), build at the precision, validate and time one point; None when
    tuning was interrupted. The validation's reference is the artifact's own (``Reference``): PyTorch
    for fp32, ONNX Runtime's integer kernels on the quantized model it carries for int8."""
    from tvmnet.build.compiler import CompileOptions, compile_model
    from tvmnet.core import __version__
    from tvmnet.core.config import ModelConfig
    from tvmnet.models.info import model_info
    from tvmnet.run import rpc
    from tvmnet.run.reference import Reference
    from tvmnet.run.validate import compare, seeded_inputs

    spec = opts.target
    t0 = time.perf_counter()
    model = ModelConfig(alpha=alpha, resolution=resolution, seed=opts.seed)
    info = model_info(model)
    tuned = None
    if opts.tune_minutes > 0:
        have, total = exact_coverage(spec, model, precision)
        if have < total:
            from tvmnet.tune.options import TuneOptions
            from tvmnet.tune.search import tune_model

            say(
                f"{tag}: this class's log has {have}/{total} kernels of the model; tuning for up to "
                f"{opts.tune_minutes:g} min"
            )
            res = tune_model(
                TuneOptions(
                    model=model,
                    target=spec,
                    trials=100000,
                    minutes=opts.tune_minutes,
                    rpc=opts.rpc,
                    progress=opts.progress,
                    only_untuned=True,
                    precision=precision,
                ),
                say=say,
            )
            tuned = {"trials": res.trials_run, "seconds": round(res.seconds, 1), "estimate_ms": res.estimate_ms}
            if res.interrupted:
                return None
    quiet = lambda msg: log.info("%s: %s", tag, msg)  # noqa: E731 - compile's steps: --verbose shows them
    with tempfile.TemporaryDirectory(prefix="tvmnet-sweep-") as tmp:
        art = compile_model(
            CompileOptions(model=model, target=spec, output=Path(tmp) / "mnet", tuning_log="auto", precision=precision),
            progress=quiet,
        )
        reference = Reference(art)
        x = seeded_inputs(art.input_shape, 1, opts.seed)[0]
        if opts.rpc is None:
            from tvmnet.core.targets import cpu_model
            from tvmnet.run.runner import open_local

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

        quant = art.metadata.get("quantization") or {}
        row = {
            "alpha": alpha,
            "resolution": resolution,
            "precision": precision,
            "target": spec.name,
            "target_dict": spec.target,
            "device": device,
            "seed": opts.seed,
            "mult_adds": info["macs"],
            "params": info["params"],
            "mult_adds_m": round(info["macs"] / 1e6, 1),
            "params_m": round(info["params"] / 1e6, 2),
            "median_ms": round(timing.median_ms, 4),
            "p90_ms": round(timing.p90_ms, 4),
            "repeats": timing.runs,
            "kernels_tuned": tun.get("kernels_tuned", 0),
            "kernels_total": tun.get("kernels_total"),
            "tuning_match": tun.get("match"),
            "tuning_class": tun.get("class"),
            "kernels_by_source": tun.get("kernels_by_source", {}),
            "tuned_in_sweep": tuned,
            "validated": report.ok,
            "validation": {
                "samples": report.samples,
                "max_abs": report.max_abs,
                "max_rel": report.max_rel,
                "top1_agree": report.top1_agree,
                "reference": report.reference,
                "atol": report.atol,
                "rtol": report.rtol,
                "failures": report.failures,
                "notes": report.notes,
            },
            "calibration": quant.get("calibration_note"),
            "compile_seconds": art.metadata.get("compile_seconds"),
            "seconds": round(time.perf_counter() - t0, 1),
            "measured_at": _now(),
            "tvm_version": tvm.__version__,
            "tvmnet_version": __version__,
        }
    return annotate(row)


def _pair_line(tag: str, row: dict) -> str:
    int8 = precision_of(row) == "int8"
    top1 = (
        f"top-1 {row['top1']:.1f}% (TF model garden{', _quant checkpoint' if int8 else ''})"
        if row.get("top1") is not None
        else f"top-1: {accuracy.NO_FIGURE}" + (" for int8" if int8 else "")
    )
    v = row["validation"]
    numerics = (
        f"numerics ok (max abs {v['max_abs']:.1e}{' vs ONNX Runtime int8' if int8 else ''})"
        if row["validated"]
        else "numerics FAILED: " + "; ".join(v["failures"])
    )
    return (
        f"{tag}: median {row['median_ms']:.3f} ms (p90 {row['p90_ms']:.3f}), {top1}, {tuned(row)}, "
        f"{numerics}; {row['seconds']:.1f} s"
    )


def run_sweep(opts: SweepOptions, say: Callable[[str], None] = print) -> SweepResult:
    """Measure every pair not measured before (all of them with ``force``); write the JSON,
    CSV and plot of every row of this target in this class's sweep file."""
    from tvmnet.core.targets import cpu_model

    spec = opts.target
    spec.check_toolchain()
    if opts.rpc is None and spec.device == "cuda":
        import tvm

        if not tvm.cuda(0).exist:
            raise DeviceError(
                f"target {spec.name} is timed on a local NVIDIA GPU and this machine has none; "
                "run `tvmnet sweep` on a machine with one"
            )
    t0 = time.perf_counter()
    directory = opts.directory
    doc = load_sweep(opts.path)  # a corrupt file stops here, before any work
    directory.mkdir(parents=True, exist_ok=True)
    where = f"{cpu_model()}" if opts.rpc is None else f"measured over RPC on {opts.rpc}"
    doc.update(
        {
            "format": FORMAT,
            "machine_class": spec.machine_class(),
            "host_cpu": cpu_model(),
            "accuracy_source": accuracy.PRIMARY,
            "accuracy_citation": accuracy.citation(accuracy.PRIMARY),
            "accuracy_sources": {  # by precision; rows without a precision are fp32
                p: {"source": accuracy.primary(p), "citation": accuracy.citation(accuracy.primary(p))}
                for p in accuracy.PRECISIONS
            },
        }
    )
    result = SweepResult(
        opts.path, directory / CSV_FILE, directory / PLOT_FILE, opts.target_name, opts.class_key, where
    )
    points = opts.points()
    for i, (alpha, res, precision) in enumerate(points, 1):
        tag = f"[{i}/{len(points)}] {label(alpha, res, precision)}"
        old = next((r for r in doc["rows"] if same_pair(r, alpha, res, spec.name, precision)), None)
        if old is not None and old.get("validated") and not opts.force:
            result.skipped += 1
            say(
                f"{tag}: measured before ({old['median_ms']:.3f} ms median, {old.get('measured_at')}); skipped "
                "(--force measures it again)"
            )
            continue
        row = _measure(opts, alpha, res, precision, tag, say)
        if row is None:
            result.interrupted = True
            say(f"{tag}: tuning interrupted; the sweep stops here (rerun the same command to resume)")
            break
        doc["rows"] = [r for r in doc["rows"] if not same_pair(r, alpha, res, spec.name, precision)] + [row]
        write_atomic(opts.path, json.dumps(doc, indent=1) + "\n")
        result.measured += 1
        if not row["validated"]:
            result.failed.append(label(alpha, res, precision))
        say(_pair_line(tag, row))
    result.rows = rows_for(doc, spec.name)
    result.front = front_of(result.rows)
    on = set(result.front)
    for i, r in enumerate(result.rows):
        r["pareto"] = i in on
    write_atomic(opts.path, json.dumps(doc, indent=1) + "\n")
    write_atomic(result.csv, to_csv(result.rows, result.front))
    result.plotted = plot_sweep(result.rows, result.front, result.plot, result.title())
    result.seconds = time.perf_counter() - t0
    return result
