"""The commands: each ``cmd_*`` builds a typed options object from the parsed arguments and
calls a library function that never sees an argparse Namespace."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tvmnet.core.endpoint import endpoint_from_args
from tvmnet.core.errors import UsageError


def err(msg: str) -> None:
    print(f"tvmnet: error: {msg}", file=sys.stderr)


def say(msg: str) -> None:
    print(f"[tvmnet] {msg}", file=sys.stderr, flush=True)


def _model_config(args, batch: int = 1):
    from tvmnet.core.config import ModelConfig

    return ModelConfig(
        alpha=args.alpha,
        resolution=args.resolution,
        num_classes=args.num_classes,
        batch=batch,
        weights=args.weights,
        seed=args.seed,
    )


def cmd_info(args) -> int:
    from tvmnet.models.info import format_table, model_info

    info = model_info(_model_config(args))
    print(json.dumps(info, indent=2) if args.json else format_table(info))
    return 0


def cmd_targets(args) -> int:
    from tvmnet.core.targets import load_target, preset_names

    for name in preset_names():
        spec = load_target(name)
        needs = (
            f"; needs {spec.cross_compiler}"
            if spec.cross_compiler
            else ("; needs nvcc" if spec.device == "cuda" else "")
        )
        print(f"{name:<12} {spec.arch:<8} {spec.device:<5} {spec.description}{needs}")
        if args.verbose_targets:
            print(f"{'':<12} {json.dumps(spec.target)}")
    return 0


def cmd_compile(args) -> int:
    from tvmnet.build.compiler import CompileOptions, compile_model
    from tvmnet.core.targets import load_target

    if args.tuning_log and args.no_tuning_log:
        raise UsageError("--tuning-log and --no-tuning-log exclude each other; pass one")
    spec = load_target(args.target)
    model = _model_config(args, batch=args.batch)
    tuning_log = None if args.no_tuning_log else (args.tuning_log or "auto")
    if args.precision != "int8" and (args.calibration or args.calibration_samples):
        raise UsageError("--calibration and --calibration-samples are for --precision int8; add it or drop them")
    opts = CompileOptions(
        model=model,
        target=spec,
        output=args.output,
        onnx=args.onnx,
        tuning_log=tuning_log,
        gemm=not args.no_gemm,
        layout=args.layout,
        precision=args.precision,
        calibration=args.calibration,
        calibration_samples=args.calibration_samples,
    )
    for line in opts.display().splitlines():
        say(line)
    t0 = time.perf_counter()
    art = compile_model(opts, progress=say)
    print(f"compiled {art.summary()} in {time.perf_counter() - t0:.1f} s")
    return 0


def _report(report, as_json: bool) -> int:
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(report.lines()))
    if not report.ok:
        err("validation failed: " + "; ".join(report.failures))
        return 7
    return 0


def cmd_validate(args) -> int:
    from tvmnet.build.artifact import load_artifact
    from tvmnet.run.reference import Reference
    from tvmnet.run.validate import compare

    art = load_artifact(args.artifact)
    if args.rpc or args.tracker:
        from tvmnet.run import rpc

        with rpc.open_remote(art, endpoint_from_args(args), say=say) as session:
            report = compare(
                session.run, Reference(art), art, args.samples, args.rtol, args.atol, args.seed, where=session.where
            )
        return _report(report, args.json)
    from tvmnet.run.runner import open_local

    session = open_local(art)
    report = compare(
        session.run, Reference(art), art, args.samples, args.rtol, args.atol, args.seed, where=str(session.device)
    )
    return _report(report, args.json)


def cmd_tune(args) -> int:
    from tvmnet.core.targets import load_target
    from tvmnet.insitu.recipe import recipe_applies, run_recipe
    from tvmnet.tune.options import TuneOptions
    from tvmnet.tune.search import tune_model

    spec = load_target(args.target)
    rpc_cfg = endpoint_from_args(args) if (args.tracker or args.rpc) else None
    opts = TuneOptions(
        model=_model_config(args),
        target=spec,
        trials=args.trials,
        per_task=args.per_task,
        log_dir=args.log_dir,
        repeats=args.repeats,
        number=args.number,
        timeout=args.timeout,
        seed=args.seed,
        rpc=rpc_cfg,
        progress=not args.no_progress,
        kernels=args.kernels,
        population=args.population,
        warm_start=not args.no_warm_start,
        warm_top_k=args.warm_top_k,
        minutes=args.minutes,
        only_untuned=args.only_untuned,
        precision=args.precision,
        seeds=not args.no_seeds,
        estimate=args.estimate,
        retime=not args.no_retime,
        trials_per_iter=args.batch,
        layout=args.layout,
    )
    for line in opts.display().splitlines():
        say(line)
    if opts.estimate:  # candidates scored by the cost proxy, nothing run
        from tvmnet.proxy.tuning import tune_by_proxy

        res = tune_by_proxy(opts, say=say)
    elif args.search_only or recipe_applies(opts):
        res = tune_model(opts, say=say)
    else:
        recipe = run_recipe(opts, say=say)
        _print_search(recipe.search, opts)
        _print_recipe(recipe)
        return 130 if recipe.stopped == "interrupted" else 0
    _print_search(res, opts)
    return 130 if res.interrupted else 0


def _print_recipe(recipe) -> None:
    for st in recipe.steps:
        timed = (
            f": {st.before_ms:.3f} -> {st.after_ms:.3f} ms, per-round ratio {st.ratio:.3f}, "
            + ("kept" if st.kept else "taken back")
            if st.ratio is not None
            else ""
        )
        trials = f", {st.trials} trials" if st.trials else ""
        note = f" ({st.note})" if st.note else ""
        print(f"recipe step {st.name}: {st.seconds:.0f} s{trials}{timed}{note}")
    if recipe.ratio is not None:
        print(
            f"tune recipe done in {recipe.seconds / 60:.1f} min{': ' + recipe.stopped if recipe.stopped else ''}; "
            f"end to end {recipe.before_ms:.3f} -> {recipe.after_ms:.3f} ms (median), per-round ratio "
            f"{recipe.ratio:.3f} (timed in turn, this process); database {recipe.database}"
        )
    else:
        print(f"tune recipe stopped ({recipe.stopped}) after {recipe.seconds / 60:.1f} min; database {recipe.database}")


def _print_search(res, opts) -> None:
    est = f"{res.estimate_ms:.3f} ms" if res.estimate_ms is not None else "n/a (some tasks untuned)"
    status = (
        "interrupted; records kept, rerun the same command to resume"
        if res.interrupted
        else f"stopped after --minutes {opts.minutes:g}; rerun to go on"
        if res.out_of_time
        else "done"
    )
    other = res.warm_measured - res.warm_nearest
    again = "re-scored by the cost proxy" if opts.estimate else "re-measured here"
    classes = "classes" if "," in (res.warm_from or "") else "class"
    warm = f" ({other} of them schedules of {classes} {res.warm_from} {again})" if res.warm_from else ""
    if res.warm_nearest:
        warm += f" ({res.warm_nearest} of them other models' schedules from this class's log, replayed)"
    if res.seeds_measured:
        warm += f" ({res.seeds_measured} of them our micro-kernels, tvmnet/tune/seeds.py)"
    if res.retimed:
        warm += f" after {res.retimed} earlier schedules re-timed"
    print(
        f"tuning {status}: {res.trials_run} new trials{warm} in {res.seconds:.0f} s ({res.trials_per_minute:.1f}/min), "
        f"{res.failed} failed; {res.trials_before} measured before; estimated latency {est}; database {res.database}"
        + (f"; journal {res.journal}" if res.journal and res.journal.exists() else "")
    )


def cmd_refine(args) -> int:
    from tvmnet.core.targets import load_target
    from tvmnet.insitu.refine import refine_model

    spec = load_target(args.target)
    model = _model_config(args)
    res = refine_model(
        model,
        spec,
        trials=args.trials,
        top=args.top,
        kernels=args.kernels,
        log_dir=args.log_dir,
        scratch=args.scratch,
        say=say,
    )
    print(f"{'kernel':<40}{'calls':>6}{'alone us':>10}{'in place':>10}{'after':>9}{'tried':>7}")
    for k in res.kernels:
        print(
            f"{k.name[:39]:<40}{k.calls:>6}{k.alone_us:>10.1f}{k.before_us:>10.1f}{k.after_us:>9.1f}{k.candidates:>7}"
            + ("  picked" if k.picked else "")
        )
    tried = sum(k.picked for k in res.kernels)
    if res.e2e_after_ms is None:
        e2e = f"end to end {res.e2e_before_ms:.3f} ms, unchanged"
    else:
        e2e = (
            f"end to end {res.e2e_before_ms:.3f} -> {res.e2e_after_ms:.3f} ms, per-round ratio {res.e2e_ratio:.3f} "
            "(timed in turn, this process)"
        )
    lost = "" if res.kept else f", {tried} picks taken back: with them the model was not faster"
    outcome = f"{res.picked} of {len(res.kernels)} kernels got a schedule picked in place ({res.database}){lost}; {e2e}"
    print(f"refine done in {res.seconds:.0f} s: {outcome}; machine class {spec.machine_class()['key']}")
    return 0


def cmd_prune_log(args) -> int:
    from tvmnet.tune.logs import prune_database

    before, after, backup = prune_database(args.log, say=say)
    print(f"{args.log}: kept the best of each kernel, {after} of {before} records (full copy: {backup})")
    return 0


def cmd_merge_log(args) -> int:
    from tvmnet.tune.logs import merge_databases

    added = merge_databases(args.src, args.dest, say=say)
    print(
        f"{args.dest}: {added} records added from {args.src}; `tvmnet prune-log {args.dest}` keeps the best per kernel"
    )
    return 0


def _estimate_instead(art_path, args, why: str) -> bool:
    """An aarch64 artifact on a machine that cannot run it: print the proxy's estimate on the
    board (labelled as such) instead; True if it did."""
    import platform

    from tvmnet.build.artifact import load_artifact
    from tvmnet.proxy.estimate import add_calibration, estimate_artifact, format_estimate

    art = load_artifact(art_path)
    if art.target["arch"] != "aarch64" or platform.machine() == "aarch64":
        return False
    say(f"{art_path} is built for aarch64 and this machine is {platform.machine()}: {why}")
    est = estimate_artifact(art, say=say)
    if platform.machine() == "x86_64" and not getattr(args, "no_calibration", False):
        est = add_calibration(est, say=say)
    print(format_estimate(est, art_path))
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps(est, indent=2) + "\n")
        say(f"estimate written to {args.json}")
    return True


def cmd_bench(args) -> int:
    from tvmnet.run.bench import BenchOptions, run_bench

    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip()) if args.engines else None
    opts = BenchOptions(
        artifact=args.artifact,
        threads=args.threads,
        rounds=args.rounds,
        runs=args.runs,
        warmup=args.warmup,
        engines=engines,
        busy=args.busy,
        fp32=args.fp32,
    )
    if _estimate_instead(args.artifact, args, "printing the cost proxy's estimate instead of timing it"):
        return 0
    res = run_bench(opts, say=say)
    print(res.table())
    if args.json:
        Path(args.json).write_text(json.dumps(res.to_json(), indent=2) + "\n")
        say(f"figures written to {args.json}")
    return 0


def cmd_calibrate(args) -> int:
    import dataclasses

    from tvmnet.proxy import calibrate

    calibrate.threads_first()
    from tvmnet.core.targets import load_target

    spec = load_target("x86")
    model = _model_config(args)
    other = dataclasses.replace(model, alpha=args.check_alpha) if args.check_alpha is not None else None
    cal = calibrate.calibrate(spec, model, say=say, check_cfg=other, precision=args.precision)
    print(
        f"cost proxy calibrated on {cal['model']} {args.precision} here (class {cal['class']}, clock {cal['clock_ghz']:.2f} GHz measured): "
        f"kernels {cal['measured_ms']:.3f} ms measured, {cal['estimated_ms']:.3f} ms estimated"
    )
    for kind, f in cal["factors"].items():
        print(f"  {kind:<16} x{f['factor']:.3f}  (per kernel {f['min']:.2f}-{f['max']:.2f}, {f['kernels']} kernels)")
    print(
        f"cached in {calibrate.cache_path(spec, args.precision)}; `tvmnet bench` applies it to {args.precision} board estimates"
    )
    chk = cal.get("check")
    if chk:
        print(
            f"check on {chk['model']} (fitted on {chk['fitted_on']}, kernels measured in turn with it): kernels "
            f"{chk['measured_ms']:.3f} ms measured, {chk['raw_ms']:.3f} ms raw estimate, {chk['calibrated_ms']:.3f} ms "
            f"calibrated: measured / calibrated {chk['measured_over_calibrated']:.2f}"
        )
    return 0


def cmd_export_onnx(args) -> int:
    from tvmnet.frontend import export_onnx
    from tvmnet.models import build_model

    cfg = _model_config(args, batch=args.batch)
    path = export_onnx(build_model(cfg), cfg.input_shape, args.output)
    print(f"wrote {path} ({cfg.display()})")
    return 0


def cmd_deploy(args) -> int:
    from tvmnet.build.artifact import load_artifact
    from tvmnet.run import rpc

    art = load_artifact(args.artifact)
    if not (args.rpc or args.tracker):
        if _estimate_instead(args.artifact, args, "no board given (--rpc or --tracker): the cost proxy's estimate"):
            err(
                "nothing deployed: give the board with --rpc HOST:PORT or --tracker HOST:PORT --key KEY "
                "(`tvmnet emulator start` for an emulated one)"
            )
            return 2
    report, timing, where, seconds = rpc.deploy(
        art,
        endpoint_from_args(args),
        samples=args.samples,
        rtol=args.rtol,
        atol=args.atol,
        seed=args.seed,
        runs=args.runs,
        say=say,
    )
    print("\n".join(report.lines()))
    print(f"device timing on {where}: {timing}")
    print(f"deploy round trip (upload, load, validate, time): {seconds:.1f} s")
    if not report.ok:
        err("validation failed: " + "; ".join(report.failures))
        return 7
    return 0


def cmd_emulator(args) -> int:
    from tvmnet.run import emulator

    if args.action == "prepare":
        print(f"emulator userland ready in {emulator.prepare(board=args.board, say=say)}")
    elif args.action == "start":
        info = emulator.start(
            board=args.board, host=args.host, port=args.port, tracker=args.tracker, key=args.key, say=say
        )
        print(info)
    elif args.action == "stop":
        print(emulator.stop(board=args.board, port=args.port))
    else:
        print(emulator.status())
    return 0


def _list_arg(value: str) -> tuple:
    return tuple(v.strip() for v in str(value).split(",") if v.strip())


def cmd_sweep(args) -> int:
    from tvmnet.core.targets import load_target
    from tvmnet.study.sweep import SweepOptions, run_sweep

    spec = load_target(args.target)
    opts = SweepOptions(
        target=spec,
        alphas=_list_arg(args.alphas),
        resolutions=_list_arg(args.resolutions),
        precisions=_list_arg(args.precisions),
        out=args.out,
        force=args.force,
        tune_minutes=args.tune_minutes,
        rpc=endpoint_from_args(args) if (args.rpc or args.tracker) else None,
        samples=args.samples,
        repeat=args.repeat,
        min_repeat_ms=args.min_repeat_ms,
        seed=args.seed,
        target_arg=args.target,
        progress=not args.no_progress,
    )
    for line in opts.display().splitlines():
        say(line)
    res = run_sweep(opts, say=say)
    print(res.table())
    print(f"wrote {res.path}, {res.csv.name} and {res.plot.name} beside it")
    what = "pair(s)" if len(opts.precisions) == 1 else "point(s) (alpha, resolution, precision)"
    print(
        f"sweep {'interrupted' if res.interrupted else 'done'}: {res.measured} {what} measured, {res.skipped} "
        f"measured before and skipped, in {res.seconds:.1f} s"
    )
    if res.failed:
        err(
            f"numerics failed for {', '.join(res.failed)} (kept off the front and out of `tvmnet pick`); "
            "see the table and `tvmnet validate`"
        )
        return 7
    return 130 if res.interrupted else 0


def cmd_pick(args) -> int:
    from tvmnet.core.targets import load_target
    from tvmnet.study.frontier import load_rows, pick

    spec = load_target(args.target)
    path, rows = load_rows(spec, args.out, target_arg=args.target)
    choice = pick(rows, args.budget_ms, target=args.target)
    print(f"sweep {path} (target {args.target}, machine class {spec.machine_class()['key']})")
    print("\n".join(choice.lines()))
    if args.output:
        from tvmnet.build.compiler import CompileOptions, compile_model
        from tvmnet.core.config import ModelConfig

        opts = CompileOptions(
            model=ModelConfig(
                alpha=choice.best["alpha"], resolution=choice.best["resolution"], seed=int(choice.best.get("seed") or 0)
            ),
            target=spec,
            output=args.output,
            tuning_log="auto",
            precision=choice.precision,
        )
        t0 = time.perf_counter()
        art = compile_model(opts, progress=say)
        print(f"compiled {art.summary()} in {time.perf_counter() - t0:.1f} s")
    return 0
