"""One engine of ``tvmnet bench`` in a process of its own (started by ``tvmnet.run.bench``)::

    python -m tvmnet.run.bench_worker ENGINE ARTIFACT INPUT.npy WORKDIR --threads T --warmup W --runs R

It loads ENGINE (exporting ONNX or ExecuTorch's .pte into WORKDIR where the engine needs one),
writes its output on INPUT.npy to WORKDIR/ENGINE.npy, runs W untimed warm-up inferences and
reports on stdout, one JSON line each: first ``{"ready": ..., "pid": ...}`` (or ``{"error": ...}``),
then, for each ``round`` line read on stdin, one untimed run (it wakes the thread pool after
the idle wait) and R timed runs ``{"samples_ms": [...]}``; ``quit`` or end of input ends it.
Whatever libraries print goes to stderr (the parent keeps it in WORKDIR/ENGINE.log).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np


def _tvmnet(art, x, threads, workdir):
    import tvm

    from tvmnet.run.runner import open_local

    sess = open_local(art)  # TVM_NUM_THREADS is set before tvm was imported
    out = sess.run(x)
    sess.vm.set_input("main", tvm.runtime.tensor(x, sess.device))
    invoke, sync = sess.vm.invoke_stateful, sess.device.sync

    def run():
        invoke("main")
        sync()

    cuda = art.target["device"] == "cuda"
    return run, out, {"threads": None if cuda else threads, "note": "CUDA" if cuda else "TVM thread pool"}


def _pytorch(art, x, threads, workdir):
    import torch

    from tvmnet.models import build_model
    from tvmnet.run.reference import reference_model_config

    torch.set_num_threads(threads)
    model = build_model(reference_model_config(art)).eval()
    tx = torch.from_numpy(x)
    if art.target["device"] == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        model, tx = model.cuda(), tx.cuda()

        def run():
            with torch.inference_mode():
                y = model(tx)
            torch.cuda.synchronize()
            return y

        return run, run().cpu().numpy(), {"threads": None, "note": f"CUDA {torch.cuda.get_device_name()}, TF32 off"}

    def run():
        with torch.inference_mode():
            return model(tx)

    return run, run().numpy(), {"threads": torch.get_num_threads(), "note": "intra-op threads"}


def _int8(art) -> bool:
    return art.metadata.get("precision") == "int8"


def _onnxruntime(art, x, threads, workdir):
    if _int8(art):  # the artifact's own quantized model (QDQ): ORT runs it with its integer kernels
        path = str(art.path / art.metadata["quantization"]["reference"])
    elif art.model["source"] == "onnx":
        path = art.model["onnx"]
    else:
        from tvmnet.frontend import export_onnx
        from tvmnet.models import build_model
        from tvmnet.run.reference import reference_model_config

        path = str(export_onnx(build_model(reference_model_config(art)), art.input_shape, workdir / "model.onnx"))
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}

    def run():
        return sess.run(None, feed)

    note = "intra-op threads, inter-op 1" + ("; the artifact's int8 QDQ model" if _int8(art) else "")
    return run, run()[0], {"threads": threads, "note": note}


def _xnnpack_int8(model, tx, art):
    """The model quantized by PyTorch's PT2E flow with XNNPACK's quantizer (int8, per-channel
    symmetric weights), calibrated on seeded samples like the artifact's."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    cal = art.metadata["quantization"].get("calibration", {})
    count = int(cal.get("count") or 32) if cal.get("source") == "seeded samples" else 32
    rng = np.random.default_rng(int(cal.get("seed") or 0))
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, (tx,)).module(), quantizer)
    for _ in range(count):
        prepared(torch.from_numpy(rng.standard_normal(tuple(tx.shape)).astype(np.float32)))
    return convert_pt2e(prepared), f"PT2E XNNPACKQuantizer int8 per-channel, {count} seeded calibration samples"


def _executorch(art, x, threads, workdir):
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    from tvmnet.models import build_model
    from tvmnet.run.reference import reference_model_config

    torch.set_num_threads(threads)  # the export only; the program runs on XNNPACK's pool
    model = build_model(reference_model_config(art)).eval()
    tx = torch.from_numpy(x)
    quant_note = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if _int8(art):
            model, quant_note = _xnnpack_int8(model, tx, art)
        lowered = to_edge_transform_and_lower(torch.export.export(model, (tx,)), partitioner=[XnnpackPartitioner()])
    graph = lowered.exported_program().graph
    outside = sorted(
        {
            str(n.target)
            for n in graph.nodes
            if n.op == "call_function" and "call_delegate" not in str(n.target) and "getitem" not in str(n.target)
        }
    )
    pte = workdir / "model.pte"
    pte.write_bytes(lowered.to_executorch().buffer)
    reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)  # XNNPACK's pthreadpool, process-wide
    if reset is not None:
        reset(threads)
    count = getattr(portable_lib, "_threadpool_get_thread_count", None)
    method = Runtime.get().load_program(str(pte)).load_method("forward")
    inputs = [tx]

    def run():
        return method.execute(inputs)

    note = "XNNPACK runs every op" if not outside else f"outside XNNPACK: {', '.join(outside)}"
    note += f"; {quant_note}" if quant_note else ""
    if reset is None:
        note += "; no thread control in this ExecuTorch (its default pool)"
    return run, run()[0].numpy(), {"threads": count() if count else None, "note": note}


# tvmnet-fp32: tvmnet's own fp32 build of the same model, beside an int8 artifact (bench --fp32 DIR)
LOADERS = {
    "tvmnet": _tvmnet,
    "tvmnet-fp32": _tvmnet,
    "pytorch": _pytorch,
    "onnxruntime": _onnxruntime,
    "executorch": _executorch,
}


def serve(
    engine: str, artifact: Path, input_path: Path, workdir: Path, threads: int, warmup: int, runs: int, reply
) -> None:
    """Load ``engine``, then time rounds on request; ``reply(dict)`` sends one message."""
    from tvmnet.build.artifact import load_artifact

    art = load_artifact(artifact)
    x = np.ascontiguousarray(np.load(input_path), dtype=np.float32)
    run, out, info = LOADERS[engine](art, x, threads, workdir)
    np.save(workdir / f"{engine}.npy", np.asarray(out, dtype=np.float32))
    for _ in range(warmup):
        run()
    reply({"ready": True, "engine": engine, "pid": os.getpid(), **info})
    for line in sys.stdin:
        if line.strip() != "round":
            break
        run()
        gc.collect()
        gc.disable()
        samples = []
        try:
            for _ in range(runs):
                t0 = time.perf_counter()
                run()
                samples.append((time.perf_counter() - t0) * 1e3)
        finally:
            gc.enable()
        reply({"samples_ms": samples})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tvmnet.run.bench_worker", description=__doc__.splitlines()[0])
    p.add_argument("engine", choices=sorted(LOADERS))
    p.add_argument("artifact", type=Path)
    p.add_argument("input", type=Path)
    p.add_argument("workdir", type=Path)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before anything imports tvm
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints cannot corrupt the channel

    def reply(msg: dict) -> None:
        channel.write(json.dumps(msg) + "\n")

    from tvmnet.core.errors import TvmnetError, err_line

    try:
        serve(args.engine, args.artifact, args.input, args.workdir, args.threads, args.warmup, args.runs, reply)
    except TvmnetError as err:
        reply({"error": str(err), "type": type(err).__name__})
        return 1
    except Exception as err:
        import traceback

        traceback.print_exc()
        reply({"error": f"{type(err).__name__}: {err_line(err)}", "type": None})
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
