"""Estimated latency of an aarch64 build on its board, without the board, labelled as such.

``tvmnet bench`` (and ``tvmnet deploy`` given no board) on an artifact this machine cannot
run asks the board-free cost proxy (``tvmnet/proxy/``: llvm-mca with the board's -mcpu,
weighted by exact block counts) for each kernel of the build: the model is lowered again as
``compile`` lowered it (same layout and passes, the same choice of records from the logs),
each kernel is cross-compiled for the board and analysed, and the cycles become
milliseconds at the board's clock. The result is cached in the artifact (``estimate.json``,
keyed by the library's SHA-256), since it takes a minute or two.

It is an ESTIMATE, never a measurement: the proxy assumes L1 hits, and its rank agreement
with measured times on x86 (``scripts/proxy_rank.py``, pooled per kind) is 0.80 for GEMMs,
0.87 for the stem and 0.71 for depthwise convs with the Total Cycles used here. It is printed
beside published figures for the board, with their sources, so a reader can place it;
``tvmnet deploy --rpc`` on the board measures.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, List, Optional

from tvmnet.core.errors import ArtifactError

FORMAT = "tvmnet-estimate/1"
ESTIMATE_FILE = "estimate.json"
CLOCK_GHZ = {"rpi3b": 1.2, "rpi4": 1.5, "rpi5": 2.4}  # the boards' rated clocks
BOARD_OF_MCPU = {"cortex-a53": "rpi3b", "cortex-a72": "rpi4", "cortex-a76": "rpi5"}


@dataclass(frozen=True)
class PublishedLatency:
    """A published end-to-end latency of MobileNet v1 on a board, with its source."""

    board: str
    engine: str
    model: str
    ms: float
    setting: str
    source: str
    url: str

    def line(self) -> str:
        return f"{self.engine}, {self.model}: {self.ms:g} ms ({self.setting}) [{self.source}, {self.url}]"

    def same_model(self, model: str, precision: str = "fp32") -> bool:
        """Whether this figure is for ``model`` ("1.0-224" or "1-224") in ``precision``."""
        return self.model.endswith(f" {precision}") and _pair(self.model.split()[-2]) == _pair(model)


def _pair(model: str) -> tuple:
    alpha, res = model.split("-")
    return float(alpha), int(res)


_XNNPACK = (
    "XNNPACK README, 'Performance: Raspberry Pi' (end2end-bench, random weights, benchmarked 2020-02-12)",
    "https://github.com/google/XNNPACK#raspberry-pi",
)
_XNNPACK_INT8 = (
    "XNNPACK README, 'Performance: Raspberry Pi', the revision of Feb 2022 with int8 rows (multi-threaded; "
    "quoted in issue 33 and tvm-field-notes, not re-read here)",
    "https://github.com/google/XNNPACK#raspberry-pi",
)
PUBLISHED = (
    PublishedLatency(
        "rpi4",
        "XNNPACK",
        "MobileNet v1 1.0-224 int8",
        29.0,
        "Raspberry Pi 4, multi-threaded (24 ms as ARM64)",
        *_XNNPACK_INT8,
    ),
    PublishedLatency(
        "rpi4",
        "TFLite",
        "MobileNet v1 1.0-224 int8",
        35.6,
        "Raspberry Pi 4 (TVM's 47.0 ms in the same thread)",
        "TVM discuss forum, thread 6577",
        "https://discuss.tvm.apache.org/t/6577",
    ),
    PublishedLatency(
        "rpi4",
        "ncnn",
        "MobileNet v1 1.0-224 int8",
        40.0,
        "Raspberry Pi 4, 4 threads (about; fp32 72 ms)",
        "Tencent/ncnn issue 3485",
        "https://github.com/Tencent/ncnn/issues/3485",
    ),
    PublishedLatency(
        "rpi3b", "XNNPACK", "MobileNet v1 1.0-224 int8", 46.0, "Raspberry Pi 3+, multi-threaded", *_XNNPACK_INT8
    ),
    PublishedLatency(
        "rpi4", "XNNPACK", "MobileNet v1 1.0-224 fp32", 75.0, "Raspberry Pi 4 (BCM2711), multi-threaded", *_XNNPACK
    ),
    PublishedLatency(
        "rpi3b",
        "TVM (AutoTVM)",
        "MobileNet v1 1.0-224 fp32",
        122.2,
        "Raspberry Pi 3B, 4x Cortex-A53 1.2 GHz",
        "TVM blog 'Automatic Kernel Optimization for Deep Learning on All Hardware Platforms', 2018-10-03",
        "https://tvm.apache.org/2018/10/03/auto-opt-all",
    ),
    PublishedLatency(
        "rpi3b",
        "XNNPACK",
        "MobileNet v1 1.0-224 fp32",
        115.0,
        "Raspberry Pi 3+ (BCM2837B0, 1.4 GHz: a faster board than the 3B), multi-threaded",
        *_XNNPACK,
    ),
)


def published_for(board: Optional[str]) -> List[PublishedLatency]:
    return [p for p in PUBLISHED if p.board == board]


def board_of(target: dict) -> Optional[str]:
    """rpi3b/rpi4/rpi5 from an artifact's target (its preset name or its -mcpu)."""
    name = target.get("name")
    if name in CLOCK_GHZ:
        return name
    return BOARD_OF_MCPU.get(str(target.get("target", {}).get("mcpu", "")))


def _spec_of(art):
    from tvmnet.core.targets import load_target, preset_names

    t = art.target
    if t["name"] in preset_names():
        return load_target(t["name"])
    return load_target(
        json.dumps(
            {
                "target": t["target"],
                "arch": t["arch"],
                "device": t["device"],
                "cross_compiler": t.get("cross_compiler"),
                "description": t.get("description"),
            }
        )
    )


def estimate_artifact(art, say: Callable[[str], None] = print, refresh: bool = False) -> dict:
    """The proxy's estimate for an aarch64 artifact, per kernel and end to end (cached in it)."""
    from tvmnet.core.paths import sha256

    if art.target["arch"] != "aarch64" or art.target["device"] != "cpu":
        raise ArtifactError(
            f"{art.path} is built for {art.target['arch']} ({art.target['device']}); the board-free "
            "estimate is for aarch64 boards (rpi3b, rpi4, rpi5)"
        )
    board = board_of(art.target)
    if board is None:
        raise ArtifactError(
            f"{art.path}: no board clock known for -mcpu {art.target['target'].get('mcpu')}; the "
            f"estimate covers {', '.join(sorted(CLOCK_GHZ))}"
        )
    if art.model.get("source") == "onnx":
        raise ArtifactError(
            f"{art.path} was built from ONNX; the estimate re-lowers the model from its MobileNet "
            "settings, which an ONNX build does not record: measure it with `tvmnet deploy --rpc`"
        )
    cache = art.path / ESTIMATE_FILE
    lib_sha = sha256(art.library)
    if cache.is_file() and not refresh:
        try:
            old = json.loads(cache.read_text())
            if old.get("format") == FORMAT and old.get("library_sha256") == lib_sha:
                return old
        except (OSError, ValueError):
            pass
    est = _estimate(art, board, say)
    est["library_sha256"] = lib_sha
    tmp = cache.with_name(cache.name + ".tmp")
    tmp.write_text(json.dumps(est, indent=1) + "\n")
    tmp.replace(cache)
    return est


def _estimate(art, board: str, say) -> dict:
    import tvm

    from tvmnet.core.config import ModelConfig
    from tvmnet.passes import pipeline
    from tvmnet.passes.pipeline import extract_tasks
    from tvmnet.proxy.kernel import estimate
    from tvmnet.tune.builder import _install_light_tensor_intrin, intrin_families
    from tvmnet.tune.classes import choose_logs
    from tvmnet.tune.logs import best_record

    spec = _spec_of(art)
    ghz = CLOCK_GHZ[board]
    m = art.model
    _install_light_tensor_intrin(intrin_families(spec))
    cfg = ModelConfig(
        alpha=m["alpha"],
        resolution=m["resolution"],
        num_classes=m.get("num_classes") or 1000,
        batch=int(art.input_shape[0]),
        seed=m.get("seed") or 0,
    )
    say(
        f"estimating {art.path} on {board} with the cost proxy (llvm-mca -mcpu={spec.target.get('mcpu')}): "
        "lowering the model again as compile did"
    )
    lowered = _lowered(art, spec, cfg)
    tasks = extract_tasks(lowered, spec)
    tuned = art.metadata.get("tuning", {}).get("kernels_tuned", 0)
    choice = choose_logs(spec, "auto" if tuned else None, tasks)
    rows, t0 = [], time.perf_counter()
    for i, task in enumerate(tasks, 1):
        mod = task.dispatched[0]
        rec = best_record(choice.database, task, spec.tvm_target()) if choice.database is not None else None
        if rec is not None:
            sch = tvm.s_tir.Schedule(mod)
            rec.trace.apply_to_schedule(sch, remove_postproc=False)
            mod = sch.mod
        cycles = estimate(mod, spec).cycles
        rows.append(
            {
                "kernel": task.task_name,
                "kind": pipeline.kernel_kind(task.task_name, task.dispatched[0]),
                "calls": int(task.weight),
                "schedule": "record" if rec is not None else "naive",
                "ms_each": cycles / ghz / 1e6,
            }
        )
        say(
            f"  [{i}/{len(tasks)}] {task.task_name}: {rows[-1]['ms_each']:.3f} ms x{rows[-1]['calls']} "
            f"({rows[-1]['schedule']})"
        )
    for name, func, calls in pipeline.own_kernel_calls(lowered):  # scheduled by tvmnet (int8 GEMMs): as built
        cycles = estimate(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), spec).cycles
        rows.append(
            {
                "kernel": name,
                "kind": pipeline.own_kernel_kind(name),
                "calls": calls,
                "schedule": "tvmnet",
                "ms_each": cycles / ghz / 1e6,
            }
        )
        say(f"  {name}: {rows[-1]['ms_each']:.3f} ms x{calls} (scheduled by tvmnet)")
    by_kind = defaultdict(float)
    for r in rows:
        by_kind[r["kind"]] += r["ms_each"] * r["calls"]
    return {
        "format": FORMAT,
        "board": board,
        "mcpu": spec.target.get("mcpu"),
        "clock_ghz": ghz,
        "threads": int(spec.target.get("num-cores") or 1),
        "model": f"{m['alpha']:g}-{m['resolution']}",
        "records_applied": sum(r["schedule"] == "record" for r in rows),
        "own_kernels": sum(r["schedule"] == "tvmnet" for r in rows),
        "precision": art.metadata.get("precision", "fp32"),
        "kernels": len(rows),
        "match": choice.match,
        "total_ms": sum(by_kind.values()),
        "by_kind": dict(by_kind),
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
        "kind": "ESTIMATE (cost proxy), not a measurement",
    }


def _lowered(art, spec, cfg):
    """The artifact's model lowered as compile lowered it: fp32 from its MobileNet settings; int8
    from the quantized model the artifact carries, through the same integer passes."""
    from tvmnet.frontend import import_model
    from tvmnet.passes import pipeline

    if art.metadata.get("precision") == "int8":
        from pathlib import Path
        from tempfile import TemporaryDirectory

        from tvmnet.passes.int8 import lowered_int8

        ref = art.path / art.metadata["quantization"]["reference"]
        with TemporaryDirectory(prefix="tvmnet-est-") as tmp:
            return lowered_int8(cfg, spec, Path(tmp), onnx=str(ref))[0]
    mod, *_ = import_model(cfg)
    return pipeline.lower_to_tir(
        mod, spec, gemm="PointwiseToGemm" in art.metadata.get("passes", []), layout=art.metadata.get("layout")
    )


def add_calibration(est: dict, say: Callable[[str], None] = print) -> dict:
    """``est`` with the estimate calibrated by this machine's factors (``proxy.calibrate``: fitted
    here, on this machine's x86 build, once per machine class; on the estimate's own model the
    first time)."""
    from tvmnet.core.config import ModelConfig
    from tvmnet.core.targets import load_target
    from tvmnet.proxy import calibrate

    calibrate.threads_first()
    host = load_target("x86")
    precision = est.get("precision", "fp32")
    cal = calibrate.load_calibration(host, precision)
    if cal is None:
        alpha, res = est["model"].split("-")
        say(
            f"no {precision} calibration of the cost proxy for this machine class yet: fitting one on "
            f"{est['model']} {precision} here"
        )
        cfg = ModelConfig(alpha=float(alpha), resolution=int(res))
        cal = calibrate.calibrate(host, cfg, say=say, precision=precision)
    by_kind = calibrate.apply(cal, est["by_kind"])
    return dict(
        est,
        calibration={k: cal.get(k, "fp32") for k in ("class", "clock_ghz", "model", "precision", "factors", "created")},
        calibrated_by_kind=by_kind,
        calibrated_ms=sum(by_kind.values()),
    )


def format_estimate(est: dict, art_path) -> str:
    """The estimate, beside the published figures for the board, never called a measurement."""
    lines = [
        f"{art_path}: MobileNet v1 {est['model']} {est.get('precision', 'fp32')} for {est['board']} ({est['mcpu']}, {est['threads']} threads at "
        f"{est['clock_ghz']} GHz); this machine cannot run it and no board was given",
        f"ESTIMATED latency on {est['board']} by the board-free cost proxy (llvm-mca; it assumes every load "
        "hits L1, so it reads low; NOT a measurement): "
        f"{est['total_ms']:.1f} ms end to end ({est['records_applied']}/{est['kernels']} kernels with a record)",
    ]
    cal = est.get("calibrated_by_kind")
    for kind, ms in sorted(est["by_kind"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {kind:<16}{ms:>9.2f} ms raw" + (f"{cal[kind]:>9.2f} ms calibrated" if cal else ""))
    if cal:
        c = est["calibration"]
        spread = "; ".join(
            f"{kind} x{f['factor']:.2f} ({f['min']:.2f}-{f['max']:.2f}, {f['kernels']} kernels)"
            for kind, f in c["factors"].items()
        )
        lines.append(
            f"CALIBRATED estimate: {est['calibrated_ms']:.1f} ms end to end: the raw estimate times this machine's "
            f"measured/estimated cycles per kernel kind (fitted on its own x86 {c.get('precision', 'fp32')} build of "
            f"{c['model']}, class "
            f"{c['class']}, clock {c['clock_ghz']:.2f} GHz measured): {spread}; still an estimate"
        )
    precision = est.get("precision", "fp32")
    pub = [p for p in published_for(est["board"]) if p.same_model(est["model"], precision)]
    if pub:
        lines.append(
            f"published figures for {est['board']}, MobileNet v1 {est['model']} {precision} (measured by others):"
        )
        lines += [f"  {p.line()}" for p in pub]
    else:
        lines.append(
            f"no published figure for MobileNet v1 {est['model']} {precision} on {est['board']} to compare with"
        )
    lines.append(
        "measure it on the board: tvmnet deploy " + f"{art_path} --rpc HOST:PORT (or --tracker HOST:PORT --key KEY)"
    )
    return "\n".join(lines)
