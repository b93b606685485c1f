"""Probe (not in the pipeline): one kernel for a depthwise conv and the pointwise GEMM after it.

The early MobileNet layers write and re-read big activations between the two kernels
(0.5-224, layer 1: 112x112x16 floats, 800 KB). This script builds the fused kernel as a
TE compute (pad -> depthwise 3x3 -> bias+ReLU -> 1x1 GEMM -> bias+ReLU, NHWC), gives it a
MetaSchedule design space through a custom schedule rule (``schedule_rule`` block annotation:
the GEMM is tiled like MultiLevelTiling's SSRSRS, and the depthwise conv is computed per
output tile of the GEMM), tunes it, and times it beside the two separate kernels as the
class's tuning log schedules them, in one process, with the target's threads (TVM_NUM_THREADS=1 for one).

    python3 scripts/dwpw_fusion_probe.py --alpha 0.5 --layer 1 --trials 64 [--work-dir D]

``--layer`` counts depthwise convs from 1 (the one after the stem). A work dir keeps the
fused kernel's records between runs: each run adds --trials more; --trials 0 only times the
best of them.
"""
import argparse
import os
import tempfile

import numpy as np

RULE = "tvmnet_dwpw"


def fused_func(h_in: int, c: int, stride: int, n: int):
    import tvm
    from tvm import te

    h = (h_in - 1) // stride + 1
    zero = tvm.tirx.const(0.0, "float32")
    skip = {"schedule_rule": "None"}   # only the custom rule schedules these blocks
    x = te.placeholder((1, h_in, h_in, c), name="x")
    wd = te.placeholder((c, 3, 3, 1), name="wd")
    bd = te.placeholder((1, 1, 1, c), name="bd")
    wp = te.placeholder((c, n), name="wp")
    bp = te.placeholder((1, 1, n), name="bp")
    pad = te.compute((1, h_in + 2, h_in + 2, c), lambda b, i, j, k: tvm.tirx.if_then_else(
        tvm.tirx.all(i >= 1, i <= h_in, j >= 1, j <= h_in), x[b, i - 1, j - 1, k], zero), name="pad", attrs=skip)
    ry, rx = te.reduce_axis((0, 3), "ry"), te.reduce_axis((0, 3), "rx")
    dw = te.compute((1, h, h, c), lambda b, i, j, k: te.sum(
        pad[b, i * stride + ry, j * stride + rx, k] * wd[k, ry, rx, 0], axis=[ry, rx]), name="dw", attrs=skip)
    dwr = te.compute((1, h, h, c), lambda b, i, j, k: te.max(dw[b, i, j, k] + bd[0, 0, 0, k], zero),
                     name="dw_relu", attrs=skip)
    rk = te.reduce_axis((0, c), "rk")
    pw = te.compute((1, h, h, n), lambda b, i, j, o: te.sum(dwr[b, i, j, rk] * wp[rk, o], axis=rk),
                    name="pw", attrs={"schedule_rule": RULE})
    out = te.compute((1, h, h, n), lambda b, i, j, o: te.max(pw[b, i, j, o] + bp[0, 0, o], zero),
                     name="pw_relu", attrs=skip)
    f = te.create_prim_func([x, wd, bd, wp, bp, out])
    return f.with_attr({"layout_free_buffers": [1, 2, 3, 4], "tirx.noalias": True, "global_symbol": "main"})


def register_rule():
    import tvm

    @tvm.register_global_func(f"s_tir.meta_schedule.cpu.{RULE}", override=True)
    def rule(sch, block):
        dwr, dw, pad, epi = (sch.get_sblock(name) for name in ("dw_relu", "dw", "pad", "pw_relu"))
        _, i, j, o, k = sch.get_loops(block)
        ti, tj, to, tk = (sch.split(loop, sch.sample_perfect_tile(loop, n=parts, max_innermost_factor=64))
                          for loop, parts in ((i, 4), (j, 4), (o, 4), (k, 2)))
        sch.reorder(ti[0], tj[0], to[0], ti[1], tj[1], to[1], tk[0], ti[2], tj[2], to[2], tk[1], ti[3], tj[3], to[3])
        spaces = []
        for level in (to[1], to[2]):   # the epilogue after the first or second tile level, as MultiLevelTiling
            s = sch.copy()
            s.reverse_compute_at(epi, level, preserve_unit_loops=True)
            for blk in (dwr, dw, pad):   # the depthwise conv per output tile: no full-size intermediate
                s.compute_at(blk, tj[0], preserve_unit_loops=True)
            _, _, _, ch, yy, xx = s.get_loops(dw)[-6:]
            width = int(s.get(ch).extent)
            co, ci = s.split(ch, [None, 16 if width % 16 == 0 else width])
            s.reorder(co, yy, xx, ci)     # channels innermost: vectorized, accumulated over the 3x3 window
            spaces.append(s)
        return spaces


def depthwise_pairs(alpha: float, resolution: int):
    """(depthwise kernel, pointwise kernel, h_in, channels, stride, n_out) per layer, from the model."""
    import tvm

    from tvmnet.core.config import ModelConfig
    from tvmnet.core.targets import load_target
    from tvmnet.frontend import import_model
    from tvmnet.passes import pipeline

    spec = load_target("x86")
    mod, *_ = import_model(ModelConfig(alpha=alpha, resolution=resolution))
    low = pipeline.lower_to_tir(mod, spec)
    calls = [b for b in low["main"].body.blocks[0].bindings
             if isinstance(b.value, tvm.relax.Call) and b.value.op.name == "relax.call_tir"]
    pairs = []
    for a, b in zip(calls, calls[1:]):
        dname, pname = a.value.args[0].name_hint, b.value.args[0].name_hint
        if pipeline.kernel_kind(dname, low[dname]) == "depthwise conv" and "matmul" in pname:
            xin = [int(d) for d in a.value.args[1][0].ty.shape]
            dout = [int(d) for d in a.var.ty.shape]
            nout = int(b.var.ty.shape[-1])
            pairs.append((dname, pname, xin[1], xin[3], 1 if dout[1] == xin[1] else 2, nout, low))
    return spec, pairs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--layer", type=int, default=1)
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--work-dir", default=None)
    args = ap.parse_args()
    if args.trials == 0 and not args.work_dir:
        ap.error("--trials 0 times the records of an earlier run: give its --work-dir")

    import tvm
    from tvm.s_tir import meta_schedule as ms

    from tvmnet.passes.pipeline import extract_tasks
    from tvmnet.tune.builder import make_builder
    from tvmnet.tune.classes import choose_logs

    spec, pairs = depthwise_pairs(args.alpha, args.resolution)
    spec.use_threads()   # TVM_NUM_THREADS wins: TVM_NUM_THREADS=1 for the single-threaded figures
    if not 1 <= args.layer <= len(pairs):
        ap.error(f"--layer {args.layer}: this model has depthwise layers 1 to {len(pairs)}")
    dname, pname, h_in, c, stride, n, low = pairs[args.layer - 1]
    print(f"layer {args.layer}: {dname} ({h_in}x{h_in}x{c}, stride {stride}) -> {pname} ({n} out)")
    register_rule()
    target = spec.tvm_target()
    fused = tvm.IRModule({"main": fused_func(h_in, c, stride, n)})
    work = args.work_dir or tempfile.mkdtemp(prefix="dwpw-")
    if args.trials:
        db = ms.tir_integration.tune_tir(fused, target, work, max_trials_global=args.trials, num_trials_per_iter=16,
                                         builder=make_builder(spec))
    else:   # the records of an earlier run in --work-dir
        db = ms.database.JSONDatabase(work_dir=work)
    fused_lib = tvm.tirx.build(ms.tir_integration.compile_tir(db, fused, target).mod, target=target)

    log_db = choose_logs(spec, "auto", extract_tasks(low, spec)).database
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    h = (h_in - 1) // stride + 1
    data = [rng.standard_normal(s).astype("float32") for s in
            [(1, h_in, h_in, c), (c, 3, 3, 1), (1, 1, 1, c), (c, n), (1, 1, n)]]
    fargs = [tvm.runtime.tensor(a, dev) for a in data] + [tvm.runtime.empty((1, h, h, n), "float32", dev)]
    mid = tvm.runtime.empty((1, h, h, c), "float32", dev)
    out2 = tvm.runtime.empty((1, h * h, n), "float32", dev)
    seps = []
    for name in (dname, pname):
        m = tvm.IRModule({"main": low[name].with_attr("global_symbol", "main")})
        seps.append(tvm.tirx.build(ms.tir_integration.compile_tir(log_db, m, target).mod, target=target))
    dw_args = fargs[:3] + [mid]
    pw_args = [mid._create_view((1, h * h, c)), fargs[3], fargs[4], out2]
    fused_lib(*fargs)
    seps[0](*dw_args)
    seps[1](*pw_args)
    err = np.abs(fargs[-1].numpy().reshape(-1) - out2.numpy().reshape(-1)).max()
    print(f"max |fused - separate| = {err:.2e} (max |output| {np.abs(out2.numpy()).max():.2f})")
    tf = fused_lib.time_evaluator(fused_lib.entry_name, dev, number=100, repeat=5)(*fargs).median * 1e6
    td = seps[0].time_evaluator(seps[0].entry_name, dev, number=100, repeat=5)(*dw_args).median * 1e6
    tp = seps[1].time_evaluator(seps[1].entry_name, dev, number=100, repeat=5)(*pw_args).median * 1e6
    print(f"{os.environ['TVM_NUM_THREADS']} thread(s): fused {tf:.1f} us; separate {td + tp:.1f} us "
          f"(depthwise {td:.1f} + GEMM {tp:.1f})")


if __name__ == "__main__":
    main()
