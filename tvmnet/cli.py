"""Command line: parses and validates arguments, calls the library, maps errors to exit codes.

No work happens here: each ``cmd_*`` builds a typed options object and calls a library
function that never sees an argparse Namespace.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from . import __version__
from .errors import TvmnetError, UsageError, err_line

log = logging.getLogger("tvmnet")


def _err(msg: str) -> None:
    print(f"tvmnet: error: {msg}", file=sys.stderr)


def _say(msg: str) -> None:
    print(f"[tvmnet] {msg}", file=sys.stderr, flush=True)


def _model_config(args, batch: int = 1):
    from .config import ModelConfig

    return ModelConfig(alpha=args.alpha, resolution=args.resolution, num_classes=args.num_classes, batch=batch,
                       weights=args.weights, seed=args.seed)


def _add_model_args(p, defaults=True):
    p.add_argument("--alpha", type=float, default=1.0, help="width multiplier in (0, 1] (default 1.0)")
    p.add_argument("--resolution", type=int, default=224, help="input size, a multiple of 32 (default 224)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default 1000)")
    p.add_argument("--weights", type=Path, help="PyTorch state_dict checkpoint (default: seeded initialisation)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation without --weights (default 0)")


# --------------------------------------------------------------------------------------------- commands

def cmd_info(args) -> int:
    from .info import format_table, model_info

    info = model_info(_model_config(args))
    print(json.dumps(info, indent=2) if args.json else format_table(info))
    return 0


def cmd_targets(args) -> int:
    from .targets import load_target, preset_names

    for name in preset_names():
        spec = load_target(name)
        needs = f"; needs {spec.cross_compiler}" if spec.cross_compiler else ("; needs nvcc" if spec.device == "cuda" else "")
        print(f"{name:<12} {spec.arch:<8} {spec.device:<5} {spec.description}{needs}")
        if args.verbose_targets:
            print(f"{'':<12} {json.dumps(spec.target)}")
    return 0


def cmd_compile(args) -> int:
    from .compiler import CompileOptions, compile_model
    from .targets import load_target

    if args.tuning_log and args.no_tuning_log:
        raise UsageError("--tuning-log and --no-tuning-log exclude each other; pass one")
    spec = load_target(args.target)
    model = _model_config(args, batch=args.batch)
    tuning_log = None if args.no_tuning_log else (args.tuning_log or "auto")
    opts = CompileOptions(model=model, target=spec, output=args.output, onnx=args.onnx, tuning_log=tuning_log,
                          gemm=not args.no_gemm, layout=args.layout)
    for line in opts.display().splitlines():
        _say(line)
    t0 = time.perf_counter()
    art = compile_model(opts, progress=_say)
    print(f"compiled {art.summary()} in {time.perf_counter() - t0:.1f} s")
    return 0


def _report(report, as_json: bool) -> int:
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(report.lines()))
    if not report.ok:
        _err("validation failed: " + "; ".join(report.failures))
        return 7
    return 0


def cmd_validate(args) -> int:
    from .artifact import load_artifact
    from .reference import Reference
    from .validate import compare

    art = load_artifact(args.artifact)
    if args.rpc or args.tracker:
        from . import rpc

        with rpc.open_remote(art, rpc.endpoint_from_args(args), say=_say) as session:
            report = compare(session.run, Reference(art), art, args.samples, args.rtol, args.atol, args.seed,
                             where=session.where)
        return _report(report, args.json)
    from .runner import open_local

    session = open_local(art)
    report = compare(session.run, Reference(art), art, args.samples, args.rtol, args.atol, args.seed,
                     where=str(session.device))
    return _report(report, args.json)


def cmd_tune(args) -> int:
    from .targets import load_target
    from .rpc import endpoint_from_args
    from .tuning import TuneOptions, tune_model

    spec = load_target(args.target)
    rpc_cfg = endpoint_from_args(args) if (args.tracker or args.rpc) else None
    opts = TuneOptions(model=_model_config(args), target=spec, trials=args.trials, per_task=args.per_task,
                       log_dir=args.log_dir, repeats=args.repeats, number=args.number, timeout=args.timeout,
                       seed=args.seed, rpc=rpc_cfg, progress=not args.no_progress, kernels=args.kernels,
                       population=args.population, warm_start=not args.no_warm_start,
                       warm_top_k=args.warm_top_k, minutes=args.minutes, only_untuned=args.only_untuned,
                       seeds=not args.no_seeds, estimate=args.estimate, retime=not args.no_retime,
                       trials_per_iter=args.batch, layout=args.layout)
    for line in opts.display().splitlines():
        _say(line)
    res = tune_model(opts, say=_say)
    est = f"{res.estimate_ms:.3f} ms" if res.estimate_ms is not None else "n/a (some tasks untuned)"
    status = ("interrupted; records kept, rerun the same command to resume" if res.interrupted else
              f"stopped after --minutes {opts.minutes:g}; rerun to go on" if res.out_of_time else "done")
    other = res.warm_measured - res.warm_nearest
    again = "re-scored by the cost proxy" if opts.estimate else "re-measured here"
    classes = "classes" if "," in (res.warm_from or "") else "class"
    warm = f" ({other} of them schedules of {classes} {res.warm_from} {again})" if res.warm_from else ""
    if res.warm_nearest:
        warm += f" ({res.warm_nearest} of them other models' schedules from this class's log, replayed)"
    if res.seeds_measured:
        warm += f" ({res.seeds_measured} of them our micro-kernels, tvmnet/schedules.py)"
    if res.retimed:
        warm += f" after {res.retimed} earlier schedules re-timed"
    print(f"tuning {status}: {res.trials_run} new trials{warm} in {res.seconds:.0f} s ({res.trials_per_minute:.1f}/min), "
          f"{res.failed} failed; {res.trials_before} measured before; estimated latency {est}; database {res.database}"
          + (f"; journal {res.journal}" if res.journal and res.journal.exists() else ""))
    return 130 if res.interrupted else 0


def cmd_refine(args) -> int:
    from .insitu import refine_model
    from .targets import load_target

    spec = load_target(args.target)
    model = _model_config(args)
    res = refine_model(model, spec, trials=args.trials, top=args.top, kernels=args.kernels,
                       log_dir=args.log_dir, scratch=args.scratch, say=_say)
    print(f"{'kernel':<40}{'calls':>6}{'alone us':>10}{'in place':>10}{'after':>9}{'tried':>7}")
    for k in res.kernels:
        print(f"{k.name[:39]:<40}{k.calls:>6}{k.alone_us:>10.1f}{k.before_us:>10.1f}{k.after_us:>9.1f}{k.candidates:>7}"
              + ("  picked" if k.picked else ""))
    picked = sum(k.picked for k in res.kernels)
    e2e = (f"end to end {res.e2e_before_ms:.3f} -> {res.e2e_after_ms:.3f} ms (timed in turn, this process)"
           if res.e2e_after_ms is not None else f"end to end {res.e2e_before_ms:.3f} ms, unchanged")
    print(f"refine done in {res.seconds:.0f} s: {picked} of {len(res.kernels)} kernels got a schedule picked in place "
          f"({res.database}); {e2e}; machine class {spec.machine_class()['key']}")
    return 0


def cmd_prune_log(args) -> int:
    from .logs import prune_database

    before, after, backup = prune_database(args.log, say=_say)
    print(f"{args.log}: kept the best of each kernel, {after} of {before} records (full copy: {backup})")
    return 0


def cmd_merge_log(args) -> int:
    from .logs import merge_databases

    added = merge_databases(args.src, args.dest, say=_say)
    print(f"{args.dest}: {added} records added from {args.src}; `tvmnet prune-log {args.dest}` keeps the best per kernel")
    return 0


def _estimate_instead(art_path, args, why: str) -> bool:
    """An aarch64 artifact on a machine that cannot run it: print the proxy's estimate on the
    board (labelled as such) instead; True if it did."""
    import platform

    from .artifact import load_artifact
    from .estimate import estimate_artifact, format_estimate

    art = load_artifact(art_path)
    if art.target["arch"] != "aarch64" or platform.machine() == "aarch64":
        return False
    _say(f"{art_path} is built for aarch64 and this machine is {platform.machine()}: {why}")
    est = estimate_artifact(art, say=_say)
    print(format_estimate(est, art_path))
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps(est, indent=2) + "\n")
        _say(f"estimate written to {args.json}")
    return True


def cmd_bench(args) -> int:
    from .bench import BenchOptions, run_bench

    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip()) if args.engines else None
    opts = BenchOptions(artifact=args.artifact, threads=args.threads, rounds=args.rounds, runs=args.runs,
                        warmup=args.warmup, engines=engines)
    if _estimate_instead(args.artifact, args, "printing the cost proxy's estimate instead of timing it"):
        return 0
    res = run_bench(opts, say=_say)
    print(res.table())
    if args.json:
        Path(args.json).write_text(json.dumps(res.to_json(), indent=2) + "\n")
        _say(f"figures written to {args.json}")
    return 0


def cmd_export_onnx(args) -> int:
    from .frontend import export_onnx
    from .models import build_model

    cfg = _model_config(args, batch=args.batch)
    path = export_onnx(build_model(cfg), cfg.input_shape, args.output)
    print(f"wrote {path} ({cfg.display()})")
    return 0


def cmd_deploy(args) -> int:
    from . import rpc
    from .artifact import load_artifact

    art = load_artifact(args.artifact)
    if not (args.rpc or args.tracker):
        if _estimate_instead(args.artifact, args, "no board given (--rpc or --tracker): the cost proxy's estimate"):
            _err("nothing deployed: give the board with --rpc HOST:PORT or --tracker HOST:PORT --key KEY "
                 "(`tvmnet emulator start` for an emulated one)")
            return 2
    report, timing, where, seconds = rpc.deploy(art, rpc.endpoint_from_args(args), samples=args.samples, rtol=args.rtol,
                                                atol=args.atol, seed=args.seed, runs=args.runs, say=_say)
    print("\n".join(report.lines()))
    print(f"device timing on {where}: {timing}")
    print(f"deploy round trip (upload, load, validate, time): {seconds:.1f} s")
    if not report.ok:
        _err("validation failed: " + "; ".join(report.failures))
        return 7
    return 0


def cmd_emulator(args) -> int:
    from . import emulator

    if args.action == "prepare":
        print(f"emulator userland ready in {emulator.prepare(board=args.board, say=_say)}")
    elif args.action == "start":
        info = emulator.start(board=args.board, host=args.host, port=args.port, tracker=args.tracker, key=args.key,
                              say=_say)
        print(info)
    elif args.action == "stop":
        print(emulator.stop(board=args.board, port=args.port))
    else:
        print(emulator.status())
    return 0


def _list_arg(value: str) -> tuple:
    return tuple(v.strip() for v in str(value).split(",") if v.strip())


def cmd_sweep(args) -> int:
    from .rpc import endpoint_from_args
    from .sweep import SweepOptions, run_sweep
    from .targets import load_target

    spec = load_target(args.target)
    opts = SweepOptions(target=spec, alphas=_list_arg(args.alphas), resolutions=_list_arg(args.resolutions),
                        out=args.out, force=args.force, tune_minutes=args.tune_minutes,
                        rpc=endpoint_from_args(args) if (args.rpc or args.tracker) else None, samples=args.samples,
                        repeat=args.repeat, min_repeat_ms=args.min_repeat_ms, seed=args.seed, target_arg=args.target,
                        progress=not args.no_progress)
    for line in opts.display().splitlines():
        _say(line)
    res = run_sweep(opts, say=_say)
    print(res.table())
    print(f"wrote {res.path}, {res.csv.name} and {res.plot.name} beside it")
    print(f"sweep {'interrupted' if res.interrupted else 'done'}: {res.measured} pair(s) measured, {res.skipped} "
          f"measured before and skipped, in {res.seconds:.1f} s")
    if res.failed:
        _err(f"numerics failed for {', '.join(res.failed)} (kept off the front and out of `tvmnet pick`); "
             "see the table and `tvmnet validate`")
        return 7
    return 130 if res.interrupted else 0


def cmd_pick(args) -> int:
    from .sweep import load_rows, pick
    from .targets import load_target

    spec = load_target(args.target)
    path, rows = load_rows(spec, args.out, target_arg=args.target)
    choice = pick(rows, args.budget_ms, target=args.target)
    print(f"sweep {path} (target {args.target}, machine class {spec.machine_class()['key']})")
    print("\n".join(choice.lines()))
    if args.output:
        from .compiler import CompileOptions, compile_model
        from .config import ModelConfig

        opts = CompileOptions(model=ModelConfig(alpha=choice.best["alpha"], resolution=choice.best["resolution"],
                                                seed=int(choice.best.get("seed") or 0)),
                              target=spec, output=args.output, tuning_log="auto")
        t0 = time.perf_counter()
        art = compile_model(opts, progress=_say)
        print(f"compiled {art.summary()} in {time.perf_counter() - t0:.1f} s")
    return 0


# --------------------------------------------------------------------------------------------- parser

def _positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer")
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be at least 1")
    return v


def _add_tolerances(p):
    from .validate import DEFAULT_ATOL, DEFAULT_RTOL

    p.add_argument("--samples", type=_positive_int, default=4, help="seeded inputs to compare (default 4)")
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL, help=f"relative tolerance (default {DEFAULT_RTOL:g})")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL, help=f"absolute tolerance (default {DEFAULT_ATOL:g})")
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")


def _add_layout(s) -> None:
    s.add_argument("--layout", choices=("NCHW", "NHWC"),
                   help="activation layout (default: NHWC on CPUs, NCHW on GPUs); tuning records are per layout")


def _add_remote(p, required=False):
    g = p.add_argument_group("remote device (TVM RPC)")
    g.add_argument("--rpc", metavar="HOST:PORT", help="an RPC server (a board, or `tvmnet emulator`)")
    g.add_argument("--tracker", metavar="HOST:PORT", help="an RPC tracker; needs --key")
    g.add_argument("--key", help="device key at the tracker")
    g.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to wait for the device (default 30)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tvmnet", description="MobileNet v1 from PyTorch to tuned machine code via Apache TVM")
    p.add_argument("--version", action="version", version=f"tvmnet {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    common = argparse.ArgumentParser(add_help=False)   # --verbose after the command works too
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and debug logs")

    def add(name, **kw):
        return sub.add_parser(name, parents=[common], **kw)

    s = add("info", help="per-layer shapes, mult-adds and parameters")
    _add_model_args(s)
    s.add_argument("--json", action="store_true", help="print JSON (top-level integer keys macs and params)")
    s.set_defaults(func=cmd_info)

    s = add("targets", help="list the target presets")
    s.add_argument("--json-dicts", dest="verbose_targets", action="store_true", help="also print each TVM target dict")
    s.set_defaults(func=cmd_targets)

    s = add("compile", help="build a deployable artifact directory")
    _add_model_args(s)
    s.add_argument("--target", default="x86", help="preset name, JSON file or inline JSON dict (default x86: this host)")
    s.add_argument("-o", "--output", type=Path, default=Path("build"), help="artifact directory (default build/)")
    s.add_argument("--onnx", type=Path, help="compile this ONNX model instead of the zoo model")
    s.add_argument("--batch", type=_positive_int, default=1, help="batch size (default 1)")
    s.add_argument("--tuning-log", type=Path, help="MetaSchedule database directory (default: this machine class's in tuning_logs/, else the nearest class's)")
    s.add_argument("--no-tuning-log", action="store_true", help="ignore tuning logs (untuned build)")
    s.add_argument("--no-gemm", action="store_true", help="keep 1x1 convolutions as conv2d (no GEMM lowering)")
    _add_layout(s)
    s.set_defaults(func=cmd_compile)

    s = add("validate", help="run an artifact and compare it with PyTorch")
    s.add_argument("artifact", type=Path)
    _add_tolerances(s)
    _add_remote(s)
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=cmd_validate)

    s = add("tune", help="tune the kernels with MetaSchedule (resumable)")
    _add_model_args(s)
    s.add_argument("--target", default="x86", help="preset name, JSON file or inline JSON dict (default x86)")
    s.add_argument("--trials", type=_positive_int, default=2000, help="total measured trials for this model (default 2000)")
    s.add_argument("--per-task", type=_positive_int, help="cap per kernel (default 3x trials / kernels, at least 8)")
    s.add_argument("--log-dir", type=Path, help="root of the databases (default tuning_logs/); uses <log-dir>/<machine class>/")
    s.add_argument("--repeats", type=_positive_int, default=3, help="measurement repeats per candidate (default 3)")
    s.add_argument("--number", type=_positive_int, default=10, help="runs per repeat (default 10)")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds per candidate run (default 30)")
    s.add_argument("--kernels", metavar="SUBSTRING", help="only tune kernels whose name contains this (e.g. matmul)")
    s.add_argument("--population", type=_positive_int, default=512,
                   help="evolutionary search population (default 512; smaller is faster and worse)")
    s.add_argument("--minutes", type=float, help="stop after this many minutes (records kept; rerun to resume)")
    s.add_argument("--batch", type=_positive_int, default=64,
                   help="candidates searched, built and measured per batch (default 64)")
    s.add_argument("--only-untuned", action="store_true",
                   help="tune only the kernels without a record in this machine class's log")
    s.add_argument("--no-seeds", action="store_true",
                   help="skip the seed phase: by default a real tune first measures a grid of register-blocked "
                        "GEMM micro-kernels per pointwise kernel (tvmnet/schedules.py) for the search to start from")
    s.add_argument("--no-warm-start", action="store_true",
                   help="do not seed kernels without records from the nearest machine class's log")
    s.add_argument("--no-retime", action="store_true",
                   help="resume without re-measuring first: by default the best records of each kernel that earlier runs "
                        "measured are measured again now and replace that kernel's earlier records, so new candidates "
                        "compete with times taken under the same conditions")
    s.add_argument("--warm-top-k", type=_positive_int, default=4,
                   help="schedules per kernel re-measured from that log (default 4)")
    s.add_argument("--estimate", action="store_true",
                   help="no board: score candidates with the cost proxy (llvm-mca, the target's -mcpu) instead of "
                        "running them, for the kernel kinds it ranks as measurements do (pointwise GEMMs, the stem conv); writes "
                        "<log-dir>/estimated/<class>/, which compile applies after any measured log of the class")
    _add_layout(s)
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_remote(s)
    s.set_defaults(func=cmd_tune)

    s = add("refine", help="time kernels inside the model and pick their schedules by that time (after tune)")
    _add_model_args(s)
    s.add_argument("--target", default="x86", help="preset name, JSON file or inline JSON dict (default x86)")
    s.add_argument("--kernels", metavar="SUBSTRING",
                   help="refine kernels whose name contains this (default: those 1.25x slower in place than alone)")
    s.add_argument("--trials", type=int, default=32,
                   help="schedules searched per kernel (MetaSchedule, scratch database; default 32; 0: only the "
                        "current schedule and the same layer's schedules from the other models in the log)")
    s.add_argument("--top", type=_positive_int, default=16,
                   help="of those, the fastest alone that are timed in place (default 16)")
    s.add_argument("--log-dir", type=Path, help="root of the databases (default tuning_logs/); picks go to "
                                                "<log-dir>/<machine class>/in_situ/")
    s.add_argument("--scratch", type=Path, help="where the searches keep their records (default: a temporary "
                                                "directory; give one to resume)")
    s.set_defaults(func=cmd_refine)

    s = add("prune-log", help="keep only the best record per kernel in a tuning database (for shipping)")
    s.add_argument("log", type=Path, help="database directory, e.g. tuning_logs/x86")
    s.set_defaults(func=cmd_prune_log)

    s = add("merge-log", help="add a tuning database's records to another of the same machine class (grow shipped logs)")
    s.add_argument("src", type=Path, help="database directory to read, e.g. /tmp/run2/x86_64-...-2c")
    s.add_argument("dest", type=Path, help="database directory to add to, e.g. tuning_logs/x86_64-...-2c")
    s.set_defaults(func=cmd_merge_log)

    s = add("bench", help="latency of the artifact vs PyTorch eager, ONNX Runtime and ExecuTorch, each in its own process")
    s.add_argument("artifact", type=Path)
    s.add_argument("--threads", type=_positive_int, help="threads for every engine (default: the target's cores)")
    s.add_argument("--rounds", type=_positive_int, default=15, help="rounds, engine order rotating (default 15)")
    s.add_argument("--runs", type=_positive_int, default=10, help="timed runs per engine per round (default 10)")
    s.add_argument("--warmup", type=_positive_int, default=10, help="warm-up runs per engine (default 10)")
    s.add_argument("--engines", help="comma-separated, from tvmnet,pytorch,onnxruntime,executorch "
                                     "(default: all of them installed here)")
    s.add_argument("--json", metavar="FILE", help="write the figures to FILE")
    s.set_defaults(func=cmd_bench)

    s = add("export-onnx", help="export the zoo model to ONNX")
    _add_model_args(s)
    s.add_argument("--batch", type=_positive_int, default=1)
    s.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")
    s.set_defaults(func=cmd_export_onnx)

    s = add("deploy", help="upload an artifact to a board over RPC, validate and time it there")
    s.add_argument("artifact", type=Path)
    _add_tolerances(s)
    _add_remote(s)
    s.add_argument("--runs", type=_positive_int, default=10, help="timed repeats on the device (default 10)")
    s.set_defaults(func=cmd_deploy)

    s = add("sweep", help="the accuracy/latency trade-off on this hardware: build, validate and time alpha x resolution")
    s.add_argument("--target", default="x86", help="preset name, JSON file or inline JSON dict (default x86: this host)")
    s.add_argument("--alphas", default="1.0,0.75,0.5,0.25", help="width multipliers, comma-separated (default 1.0,0.75,0.5,0.25)")
    s.add_argument("--resolutions", default="224,192,160,128",
                   help="input sizes, multiples of 32, comma-separated (default 224,192,160,128)")
    s.add_argument("--out", type=Path, default=Path("sweeps"),
                   help="results root (default sweeps/); writes <out>/<machine class>/sweep.json, .csv, .png")
    s.add_argument("--force", action="store_true", help="measure pairs measured before again")
    s.add_argument("--tune-minutes", type=float, default=0.0,
                   help="tune each model first, at most M minutes, where this class's log lacks kernels of it "
                        "(default 0: no tuning, the logs as they are)")
    s.add_argument("--samples", type=_positive_int, default=2, help="seeded inputs for the numerics check (default 2)")
    s.add_argument("--repeat", type=_positive_int, default=20, help="timed repeats per pair (default 20)")
    s.add_argument("--min-repeat-ms", type=int, default=50,
                   help="each repeat runs the model at least this long (default 50)")
    s.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the inputs (default 0)")
    s.add_argument("--no-progress", action="store_true", help="no tuning progress bar")
    _add_remote(s)
    s.set_defaults(func=cmd_sweep)

    s = add("pick", help="the most accurate swept pair within a latency budget, and the command that builds it")
    s.add_argument("--target", default="x86", help="the target the sweep measured (default x86)")
    s.add_argument("--budget-ms", type=float, required=True, help="latency budget: median milliseconds per image")
    s.add_argument("--out", type=Path, default=Path("sweeps"), help="results root the sweep wrote (default sweeps/)")
    s.add_argument("-o", "--output", type=Path, help="also build the pick into this artifact directory")
    s.set_defaults(func=cmd_pick)

    s = add("emulator", help="an emulated board (qemu-user) running TVM's RPC server")
    s.add_argument("action", choices=["prepare", "start", "stop", "status"])
    s.add_argument("--board", default="rpi4", help="board to emulate (default rpi4)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    s.add_argument("--port", type=int, default=9090, help="RPC port (default 9090)")
    s.add_argument("--tracker", metavar="HOST:PORT", help="register at this tracker instead of serving directly")
    s.add_argument("--key", help="key to register under at the tracker (default: the board name)")
    s.set_defaults(func=cmd_emulator)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except TvmnetError as err:
        if args.verbose:
            import traceback

            traceback.print_exc()
        _err(str(err))
        return err.exit_code
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except Exception as err:  # an internal error: still one line unless --verbose
        if args.verbose:
            raise
        _err(f"internal error ({type(err).__name__}: {err_line(err)}); rerun with --verbose and report it")
        return 1
