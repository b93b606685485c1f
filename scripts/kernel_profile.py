"""Where the time goes, kernel by kernel: tvmnet's kernels (the schedules a tuning log gives
them, measured here) beside ONNX Runtime's operators (its own profiler), grouped by kind.

    python3 scripts/kernel_profile.py --alpha 1.0 [--tuning-log DB] [--threads 2] [--json F]
    python3 scripts/kernel_profile.py --alpha 0.5 --precision int8     # against ORT int8 (same QDQ model)

tvmnet side: each kernel of the model's lowered module gets the best record of the log (the
log `compile` would apply when --tuning-log is not given), is built, and timed with
MetaSchedule's runner (warm cache unless --flush, like inside the end-to-end run); kernels
without a record are timed as TVM's naive loop nest. ORT side: its per-node profile of the
same model (same weights, exported through ONNX), mean over the profiled runs.
Kinds: stem (the first conv), depthwise conv, pointwise GEMM (1x1 conv), fc (classifier).
int8: the kernels `compile --precision int8` builds (the VNNI GEMMs, scheduled by tvmnet, timed as
they are) against ONNX Runtime's profile of the same quantized model (its QLinearConv etc.), with
each kernel's share of the VNNI peak (2 cores x 64 int8 multiply-adds per cycle at the clock
given by --ghz).
"""

import argparse
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np


def int8_module(cfg, spec, workdir):
    """(the int8 build's lowered module, the quantized ONNX model) as `compile --precision int8` makes them."""
    from tvmnet.passes.int8 import lowered_int8

    lowered, quant = lowered_int8(cfg, spec, Path(workdir))
    return lowered, Path(quant["onnx_path"])


def _own_kernel_ops(name: str, args) -> float:
    """Multiply-adds x 2 of a kernel scheduled by tvmnet: the VNNI GEMM (A (M, K), out (M, N)), the
    stem (out (OH, OW, N), 27 taps of 3 channels; the padded kw = 3 column not counted), the prep
    (one quantize per input element, counted as one op)."""
    if name.startswith("stem_prep"):
        return float(np.prod([int(v) for v in args[0].shape]))
    if name.startswith("vnni_stem"):
        oh, ow, n = (int(v) for v in args[-1].shape)
        return 2.0 * oh * ow * n * 9 * int(args[0].shape[0])
    (m, k), n = [int(v) for v in args[0].shape], int(args[-1].shape[1])
    return 2.0 * m * k * n


def tvm_profile(cfg, spec, tuning_log, flush: bool, lowered=None):
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from tvmnet.frontend import import_model
    from tvmnet.passes import pipeline
    from tvmnet.passes.pipeline import extract_tasks
    from tvmnet.tune.builder import make_builder
    from tvmnet.tune.classes import choose_logs
    from tvmnet.tune.logs import best_record

    if lowered is None:
        mod, *_ = import_model(cfg)
        lowered = pipeline.lower_to_tir(mod, spec)
    tasks = extract_tasks(lowered, spec)
    choice = choose_logs(spec, tuning_log, tasks)
    spec.use_threads()  # the runner's workers inherit TVM_NUM_THREADS (TVM's default is one thread here)
    target = spec.tvm_target()
    builder = make_builder(spec)
    runner = ms.runner.LocalRunner(
        timeout_sec=60,
        evaluator_config=ms.runner.EvaluatorConfig(number=20, repeat=5, min_repeat_ms=0, enable_cpu_cache_flush=flush),
    )
    rows = []
    own = [
        (name, tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), calls)
        for name, func, calls in pipeline.own_kernel_calls(lowered)
    ]
    items = [(t.task_name, t.dispatched[0], int(t.weight), t) for t in tasks] + [(n, f, c, None) for n, f, c in own]
    for name, func, w, task in items:
        sch = tvm.s_tir.Schedule(func)
        rec = best_record(choice.database, task, target) if task is not None and choice.database is not None else None
        if rec is not None:
            rec.trace.apply_to_schedule(sch, remove_postproc=False)
        args = ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
        (built,) = builder.build([ms.builder.BuilderInput(sch.mod, target)])
        if built.error_msg:
            raise SystemExit(f"{name}: build failed: {built.error_msg[-500:]}")
        (res,) = [f.result() for f in runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu", args)])]
        if res.error_msg:
            raise SystemExit(f"{name}: run failed: {res.error_msg[-500:]}")
        secs = sorted(float(s) for s in res.run_secs)
        us = 1e6 * secs[len(secs) // 2]
        if task is None:  # tvmnet's own kernels: TVM's estimate cannot read a tensorized one
            flop = _own_kernel_ops(name, args)
        else:
            flop = float(tvm.s_tir.analysis.estimate_tir_flops(func))
        rows.append(
            {
                "kernel": name,
                "kind": pipeline.own_kernel_kind(name) if task is None else pipeline.kernel_kind(name, func),
                "calls": w,
                "us_each": us,
                "us_total": us * w,
                "gflops": flop / us / 1e3,
                "tuned": rec is not None or task is None,
            }
        )
    return rows, choice


def ort_profile(cfg, threads: int, runs: int = 50, model_path=None):
    import onnx
    import onnxruntime as ort

    from tvmnet.frontend import export_onnx
    from tvmnet.models import build_model

    with tempfile.TemporaryDirectory() as tmp:
        path = model_path or export_onnx(build_model(cfg), cfg.input_shape, Path(tmp) / "m.onnx")
        graph = onnx.load(str(path)).graph
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        opt_graph = onnx.load(opts.optimized_model_filepath).graph
        x = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal(cfg.input_shape).astype(np.float32)}
        for _ in range(10):
            sess.run(None, x)
        popts = ort.SessionOptions()
        popts.intra_op_num_threads, popts.inter_op_num_threads = threads, 1
        popts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        popts.enable_profiling = True
        popts.profile_file_prefix = str(Path(tmp) / "prof")
        psess = ort.InferenceSession(str(path), popts, providers=["CPUExecutionProvider"])
        for _ in range(10):
            psess.run(None, x)
        for _ in range(runs):
            psess.run(None, x)
        events = json.loads(Path(psess.end_profiling()).read_text())
    del graph
    nodes = {n.name: n for n in opt_graph.node}
    init = {i.name: tuple(i.dims) for i in opt_graph.initializer}
    per_node = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[e["name"][: -len("_kernel_time")]].append(e["dur"])
    rows = []
    for name, durs in per_node.items():
        durs = durs[-runs:]
        node = nodes.get(name)
        kind = "other"
        if node is not None and "Conv" in node.op_type:
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            wshape = init.get(node.input[3 if node.op_type == "QLinearConv" else 1], ())
            kind = (
                "depthwise conv"
                if group > 1
                else "stem conv"
                if len(wshape) == 4 and wshape[1] == 3
                else "pointwise GEMM"
            )
        elif node is not None and node.op_type in (
            "Gemm",
            "MatMul",
            "FusedGemm",
            "QGemm",
            "QLinearMatMul",
            "MatMulInteger",
        ):
            kind = "fc"
        rows.append({"node": name, "op": node.op_type if node else "?", "kind": kind, "us_total": float(np.mean(durs))})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--target", default="x86")
    ap.add_argument("--tuning-log", type=Path, help="database directory (default: what compile applies)")
    ap.add_argument("--threads", type=int, help="threads (default: the target's cores)")
    ap.add_argument("--flush", action="store_true", help="flush the CPU cache before each kernel run")
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    ap.add_argument("--ghz", type=float, default=3.6, help="clock for the share of peak (Zen 4 VM: 3.6, measured)")
    args = ap.parse_args()

    from tvmnet import ModelConfig, load_target
    from tvmnet.core.targets import cpu_model

    spec = load_target(args.target)
    threads = args.threads or int(spec.target.get("num-cores") or 1)
    os.environ["TVM_NUM_THREADS"] = str(threads)
    cfg = ModelConfig(args.alpha, args.resolution)
    tmp = tempfile.TemporaryDirectory()
    lowered, qdq = int8_module(cfg, spec, tmp.name) if args.precision == "int8" else (None, None)
    rows, choice = tvm_profile(cfg, spec, args.tuning_log or "auto", args.flush, lowered)
    total = sum(r["us_total"] for r in rows)
    print(
        f"{cpu_model()} ({spec.machine_class()['key']}), {threads} threads; MobileNet v1 {args.alpha:g}-{args.resolution}; "
        f"log {choice.path} ({choice.match})"
    )
    peak = 2 * 64 * threads * args.ghz  # int8 GOP/s: one 512-bit vpdpbusd (64 multiply-adds) per cycle and core
    unit = "GOP/s" if args.precision == "int8" else "GFLOP/s"
    print(f"{'kernel':<34}{'kind':<16}{'calls':>6}{'us each':>10}{'us total':>10}{'share':>7}{unit:>9}")
    for r in sorted(rows, key=lambda r: -r["us_total"]):
        print(
            f"{r['kernel'][:33]:<34}{r['kind']:<16}{r['calls']:>6}{r['us_each']:>10.1f}{r['us_total']:>10.1f}"
            f"{100 * r['us_total'] / total:>6.1f}%{r['gflops']:>9.1f}"
            + (f" {100 * r['gflops'] / peak:4.0f}% of VNNI peak" if args.precision == "int8" else "")
            + ("" if r["tuned"] else "  (untuned)")
        )
    ort_rows = [] if args.no_ort else ort_profile(cfg, threads, model_path=qdq)
    kinds = ["stem conv", "depthwise conv", "pointwise GEMM", "fc", "other"]
    ours = defaultdict(float)
    theirs = defaultdict(float)
    for r in rows:
        ours[r["kind"]] += r["us_total"]
    for r in ort_rows:
        theirs[r["kind"]] += r["us_total"]
    print(f"\n{'kind':<16}{'tvmnet us':>11}{'ORT us':>9}{'ratio':>7}")
    for k in kinds:
        if ours[k] or theirs[k]:
            ratio = f"{ours[k] / theirs[k]:.2f}" if theirs[k] else "-"
            print(f"{k:<16}{ours[k]:>11.1f}{theirs[k]:>9.1f}{ratio:>7}")
    t_ort = sum(theirs.values())
    print(f"{'sum':<16}{total:>11.1f}{t_ort:>9.1f}{(total / t_ort if t_ort else 0):>7.2f}")
    if args.json:
        args.json.write_text(json.dumps({"tvmnet": rows, "onnxruntime": ort_rows, "log": str(choice.path)}, indent=1))


if __name__ == "__main__":
    main()
