"""The argument parser of ``tvmnet``: one sub-command per verb, validated by ``type=`` functions."""

from __future__ import annotations

import argparse
from pathlib import Path

from tvmnet.cli import commands as c
from tvmnet.core import __version__


def _add_model_args(p, defaults=True):
    p.add_argument("--alpha", type=float, default=1.0, help="width multiplier in (0, 1] (default 1.0)")
    p.add_argument("--resolution", type=int, default=224, help="input size, a multiple of 32 (default 224)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default 1000)")
    p.add_argument("--weights", type=Path, help="PyTorch state_dict checkpoint (default: seeded initialisation)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation without --weights (default 0)")


def _positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be at least 1")
    return v


def _add_tolerances(p):
    from tvmnet.run.validate import DEFAULT_ATOL, DEFAULT_RTOL

    p.add_argument("--samples", type=_positive_int, default=4, help="seeded inputs to compare (default 4)")
    p.add_argument("--rtol", type=float, help=f"relative tolerance (default {DEFAULT_RTOL:g}; int8: 0)")
    p.add_argument(
        "--atol", type=float, help=f"absolute tolerance (default {DEFAULT_ATOL:g}; int8: one output quantization step)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")


def _add_layout(s) -> None:
    s.add_argument(
        "--layout",
        choices=("NCHW", "NHWC"),
        help="activation layout (default: NHWC on CPUs, NCHW on GPUs); tuning records are per layout",
    )


def _add_remote(p, required=False):
    g = p.add_argument_group("remote device (TVM RPC)")
    g.add_argument("--rpc", metavar="HOST:PORT", help="an RPC server (a board, or `tvmnet emulator`)")
    g.add_argument("--tracker", metavar="HOST:PORT", help="an RPC tracker; needs --key")
    g.add_argument("--key", help="device key at the tracker")
    g.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to wait for the device (default 30)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tvmnet", description="MobileNet v1 from PyTorch to tuned machine code via Apache TVM"
    )
    p.add_argument("--version", action="version", version=f"tvmnet {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    common = argparse.ArgumentParser(add_help=False)  # --verbose after the command works too
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and debug logs"
    )

    def add(name, **kw):
        return sub.add_parser(name, parents=[common], **kw)

    s = add("info", help="per-layer shapes, mult-adds and parameters")
    _add_model_args(s)
    s.add_argument("--json", action="store_true", help="print JSON (top-level integer keys macs and params)")
    s.set_defaults(func=c.cmd_info)

    s = add("targets", help="list the target presets")
    s.add_argument("--json-dicts", dest="verbose_targets", action="store_true", help="also print each TVM target dict")
    s.set_defaults(func=c.cmd_targets)

    s = add("compile", help="build a deployable artifact directory")
    _add_model_args(s)
    s.add_argument(
        "--target", default="x86", help="preset name, JSON file or inline JSON dict (default x86: this host)"
    )
    s.add_argument("-o", "--output", type=Path, default=Path("build"), help="artifact directory (default build/)")
    s.add_argument("--onnx", type=Path, help="compile this ONNX model instead of the zoo model")
    s.add_argument("--batch", type=_positive_int, default=1, help="batch size (default 1)")
    s.add_argument(
        "--tuning-log",
        type=Path,
        help="MetaSchedule database directory (default: this machine class's in tuning_logs/, else the nearest class's)",
    )
    s.add_argument("--no-tuning-log", action="store_true", help="ignore tuning logs (untuned build)")
    s.add_argument("--no-gemm", action="store_true", help="keep 1x1 convolutions as conv2d (no GEMM lowering)")
    _add_layout(s)
    s.add_argument(
        "--precision",
        choices=("fp32", "int8"),
        default="fp32",
        help="fp32 (default), or int8: post-training static quantization (ONNX Runtime's quantize_static, QDQ)",
    )
    s.add_argument(
        "--calibration",
        type=Path,
        metavar="DIR",
        help="int8: calibrate the activation ranges on the JPEG/PNG images in DIR (resized, ImageNet-normalised)",
    )
    s.add_argument(
        "--calibration-samples",
        type=_positive_int,
        metavar="N",
        help="int8: calibrate on N seeded samples (default 32 when no --calibration DIR; with DIR: at most N images)",
    )
    s.set_defaults(func=c.cmd_compile)

    s = add("validate", help="run an artifact and compare it with PyTorch")
    s.add_argument("artifact", type=Path)
    _add_tolerances(s)
    _add_remote(s)
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=c.cmd_validate)

    s = add("tune", help="tune the kernels with MetaSchedule (resumable)")
    _add_model_args(s)
    s.add_argument("--target", default="x86", help="preset name, JSON file or inline JSON dict (default x86)")
    s.add_argument(
        "--trials", type=_positive_int, default=2000, help="total measured trials for this model (default 2000)"
    )
    s.add_argument("--per-task", type=_positive_int, help="cap per kernel (default 3x trials / kernels, at least 8)")
    s.add_argument(
        "--log-dir", type=Path, help="root of the databases (default tuning_logs/); uses <log-dir>/<machine class>/"
    )
    s.add_argument("--repeats", type=_positive_int, default=3, help="measurement repeats per candidate (default 3)")
    s.add_argument("--number", type=_positive_int, default=10, help="runs per repeat (default 10)")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds per candidate run (default 30)")
    s.add_argument("--kernels", metavar="SUBSTRING", help="only tune kernels whose name contains this (e.g. matmul)")
    s.add_argument(
        "--population",
        type=_positive_int,
        default=512,
        help="evolutionary search population (default 512; smaller is faster and worse)",
    )
    s.add_argument("--minutes", type=float, help="stop after this many minutes (records kept; rerun to resume)")
    s.add_argument(
        "--batch", type=_positive_int, default=64, help="candidates searched, built and measured per batch (default 64)"
    )
    s.add_argument(
        "--search-only",
        action="store_true",
        help="only MetaSchedule's search (warm start, seeds, search). By default a tune of the whole model on this "
        "CPU runs the recipe: search, picks in place, a GEMM round with its picks, prune; each step kept only if "
        "the model, timed in turn against the build before it, is faster",
    )
    s.add_argument(
        "--only-untuned", action="store_true", help="tune only the kernels without a record in this machine class's log"
    )
    s.add_argument(
        "--precision",
        choices=("fp32", "int8"),
        default="fp32",
        help="int8: tune the integer kernels `compile --precision int8` builds (the search alone; their records "
        "join the class's log beside the fp32 ones)",
    )
    s.add_argument(
        "--no-seeds",
        action="store_true",
        help="skip the seed phase: by default a real tune first measures a grid of register-blocked "
        "GEMM micro-kernels per pointwise kernel (tvmnet/tune/seeds.py) for the search to start from",
    )
    s.add_argument(
        "--no-warm-start",
        action="store_true",
        help="do not seed kernels without records from the nearest machine class's log",
    )
    s.add_argument(
        "--no-retime",
        action="store_true",
        help="resume without re-measuring first: by default the best records of each kernel that earlier runs "
        "measured are measured again now and replace that kernel's earlier records, so new candidates "
        "compete with times taken under the same conditions",
    )
    s.add_argument(
        "--warm-top-k", type=_positive_int, default=4, help="schedules per kernel re-measured from that log (default 4)"
    )
    s.add_argument(
        "--estimate",
        action="store_true",
        help="no board: score candidates with the cost proxy (llvm-mca, the target's -mcpu) instead of "
        "running them, for the kernel kinds it ranks as measurements do (pointwise GEMMs, the stem conv); writes "
        "<log-dir>/estimated/<class>/, which compile applies after any measured log of the class",
    )
    _add_layout(s)
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_remote(s)
    s.set_defaults(func=c.cmd_tune)

    s = add("refine", help="time kernels inside the model and pick their schedules by that time (after tune)")
    _add_model_args(s)
    s.add_argument("--target", default="x86", help="preset name, JSON file or inline JSON dict (default x86)")
    s.add_argument(
        "--kernels",
        metavar="SUBSTRING",
        help="refine kernels whose name contains this (default: those 1.25x slower in place than alone)",
    )
    s.add_argument(
        "--trials",
        type=int,
        default=32,
        help="schedules searched per kernel (MetaSchedule, scratch database; default 32; 0: only the "
        "current schedule and the same layer's schedules from the other models in the log)",
    )
    s.add_argument(
        "--top", type=_positive_int, default=16, help="of those, the fastest alone that are timed in place (default 16)"
    )
    s.add_argument(
        "--log-dir",
        type=Path,
        help="root of the databases (default tuning_logs/); picks go to <log-dir>/<machine class>/in_situ/",
    )
    s.add_argument(
        "--scratch",
        type=Path,
        help="where the searches keep their records (default: a temporary directory; give one to resume)",
    )
    s.set_defaults(func=c.cmd_refine)

    s = add("prune-log", help="keep only the best record per kernel in a tuning database (for shipping)")
    s.add_argument("log", type=Path, help="database directory, e.g. tuning_logs/x86")
    s.set_defaults(func=c.cmd_prune_log)

    s = add(
        "merge-log", help="add a tuning database's records to another of the same machine class (grow shipped logs)"
    )
    s.add_argument("src", type=Path, help="database directory to read, e.g. /tmp/run2/x86_64-...-2c")
    s.add_argument("dest", type=Path, help="database directory to add to, e.g. tuning_logs/x86_64-...-2c")
    s.set_defaults(func=c.cmd_merge_log)

    s = add(
        "bench", help="latency of the artifact vs PyTorch eager, ONNX Runtime and ExecuTorch, each in its own process"
    )
    s.add_argument("artifact", type=Path)
    s.add_argument("--threads", type=_positive_int, help="threads for every engine (default: the target's cores)")
    s.add_argument("--rounds", type=_positive_int, default=15, help="rounds, engine order rotating (default 15)")
    s.add_argument("--runs", type=_positive_int, default=10, help="timed runs per engine per round (default 10)")
    s.add_argument("--warmup", type=_positive_int, default=10, help="warm-up runs per engine (default 10)")
    s.add_argument(
        "--engines",
        help="comma-separated, from tvmnet,pytorch,onnxruntime,executorch (default: all of them installed here)",
    )
    s.add_argument(
        "--busy",
        type=int,
        default=0,
        metavar="N",
        help="time every engine with N busy-loop processes beside it (default 0: an idle machine); they end "
        "with the bench, whatever happens",
    )
    s.add_argument(
        "--fp32",
        type=Path,
        metavar="DIR",
        help="beside an int8 artifact: time tvmnet's fp32 build of the same model too (compiled without --precision int8)",
    )
    s.add_argument("--json", metavar="FILE", help="write the figures to FILE")
    s.set_defaults(func=c.cmd_bench)

    s = add(
        "calibrate",
        help="fit the cost proxy's per-kind factors on this machine's x86 build (bench applies them to board estimates)",
    )
    _add_model_args(s)
    s.add_argument(
        "--check-alpha",
        type=float,
        help="then check the fit on this width's x86 build (same resolution): measured / calibrated",
    )
    s.add_argument(
        "--precision",
        choices=["fp32", "int8"],
        default="fp32",
        help="fit on this precision's build (default fp32); bench applies int8 factors to int8 board estimates",
    )
    s.set_defaults(func=c.cmd_calibrate)

    s = add("export-onnx", help="export the zoo model to ONNX")
    _add_model_args(s)
    s.add_argument("--batch", type=_positive_int, default=1)
    s.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")
    s.set_defaults(func=c.cmd_export_onnx)

    s = add("deploy", help="upload an artifact to a board over RPC, validate and time it there")
    s.add_argument("artifact", type=Path)
    _add_tolerances(s)
    _add_remote(s)
    s.add_argument("--runs", type=_positive_int, default=10, help="timed repeats on the device (default 10)")
    s.set_defaults(func=c.cmd_deploy)

    s = add(
        "sweep", help="the accuracy/latency trade-off on this hardware: build, validate and time alpha x resolution"
    )
    s.add_argument(
        "--target", default="x86", help="preset name, JSON file or inline JSON dict (default x86: this host)"
    )
    s.add_argument(
        "--alphas", default="1.0,0.75,0.5,0.25", help="width multipliers, comma-separated (default 1.0,0.75,0.5,0.25)"
    )
    s.add_argument(
        "--resolutions",
        default="224,192,160,128",
        help="input sizes, multiples of 32, comma-separated (default 224,192,160,128)",
    )
    s.add_argument(
        "--precisions",
        default="fp32",
        help="fp32, int8 or both, comma-separated (default fp32); int8 is compile's --precision int8 (post-training "
        "quantization, CPU targets), validated against ONNX Runtime's integer kernels, its top-1 the published "
        "figure of TF's quantized (_quant) checkpoints",
    )
    s.add_argument(
        "--out",
        type=Path,
        default=Path("sweeps"),
        help="results root (default sweeps/); writes <out>/<machine class>/sweep.json, .csv, .png",
    )
    s.add_argument("--force", action="store_true", help="measure points measured before again")
    s.add_argument(
        "--tune-minutes",
        type=float,
        default=0.0,
        help="tune each model first, at most M minutes, where this class's log lacks kernels of it "
        "(default 0: no tuning, the logs as they are)",
    )
    s.add_argument("--samples", type=_positive_int, default=2, help="seeded inputs for the numerics check (default 2)")
    s.add_argument("--repeat", type=_positive_int, default=20, help="timed repeats per pair (default 20)")
    s.add_argument(
        "--min-repeat-ms", type=int, default=50, help="each repeat runs the model at least this long (default 50)"
    )
    s.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the inputs (default 0)")
    s.add_argument("--no-progress", action="store_true", help="no tuning progress bar")
    _add_remote(s)
    s.set_defaults(func=c.cmd_sweep)

    s = add(
        "pick",
        help="the most accurate swept point (alpha, resolution, precision) within a latency budget, and the "
        "command that builds it",
    )
    s.add_argument("--target", default="x86", help="the target the sweep measured (default x86)")
    s.add_argument("--budget-ms", type=float, required=True, help="latency budget: median milliseconds per image")
    s.add_argument("--out", type=Path, default=Path("sweeps"), help="results root the sweep wrote (default sweeps/)")
    s.add_argument(
        "-o", "--output", type=Path, help="also build the pick into this artifact directory (at its precision)"
    )
    s.set_defaults(func=c.cmd_pick)

    s = add("emulator", help="an emulated board (qemu-user) running TVM's RPC server")
    s.add_argument("action", choices=["prepare", "start", "stop", "status"])
    s.add_argument("--board", default="rpi4", help="board to emulate (default rpi4)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    s.add_argument("--port", type=int, default=9090, help="RPC port (default 9090)")
    s.add_argument("--tracker", metavar="HOST:PORT", help="register at this tracker instead of serving directly")
    s.add_argument("--key", help="key to register under at the tracker (default: the board name)")
    s.set_defaults(func=c.cmd_emulator)
    return p
