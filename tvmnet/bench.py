"""``bench``: the artifact vs PyTorch eager vs ONNX Runtime, same input, same threads.

Each engine is warmed up, then timed in interleaved rounds (the order rotates each round)
so that frequency drift and background load hit every engine alike. Each timed run is one
inference call with the input already in place (no conversion), wall-clock.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .artifact import load_artifact
from .errors import UsageError

ENGINES = ("tvmnet", "pytorch", "onnxruntime")
LABELS = {"tvmnet": "tvmnet (TVM)", "pytorch": "PyTorch eager", "onnxruntime": "ONNX Runtime"}


@dataclass(frozen=True)
class BenchOptions:
    artifact: Path
    threads: Optional[int] = None
    rounds: int = 5
    runs: int = 20
    warmup: int = 10
    engines: Tuple[str, ...] = ENGINES

    def __post_init__(self):
        bad = [e for e in self.engines if e not in ENGINES]
        if bad or "tvmnet" not in self.engines:
            raise UsageError(f"--engines {','.join(self.engines)}: choose from {', '.join(ENGINES)} (tvmnet included)")


@dataclass
class BenchResult:
    artifact: str
    threads: int
    input_shape: tuple
    samples: Dict[str, List[float]] = field(default_factory=dict)
    max_abs_diff: Dict[str, float] = field(default_factory=dict)
    versions: Dict[str, str] = field(default_factory=dict)

    def median(self, e) -> float:
        return statistics.median(self.samples[e])

    def p90(self, e) -> float:
        return float(np.percentile(self.samples[e], 90))

    def table(self) -> str:
        ours = self.median("tvmnet")
        lines = [f"{self.artifact}: input {self.input_shape}, {self.threads} thread(s), "
                 f"{len(self.samples['tvmnet'])} timed runs per engine",
                 f"{'engine':<16}{'median ms':>10}{'p90 ms':>10}{'tvmnet/engine':>15}{'max|diff|':>12}"]
        for e, s in self.samples.items():
            diff = "" if e == "tvmnet" else f"{self.max_abs_diff.get(e, float('nan')):.1e}"
            lines.append(f"{LABELS[e]:<16}{self.median(e):>10.3f}{self.p90(e):>10.3f}{ours / self.median(e):>14.2f}x{diff:>12}")
        lines.append("tvmnet/engine < 1 means tvmnet is faster; max|diff| is the output difference to tvmnet")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"artifact": self.artifact, "threads": self.threads, "input_shape": list(self.input_shape),
                "versions": self.versions,
                "engines": {e: {"median_ms": self.median(e), "p90_ms": self.p90(e), "runs": len(s),
                                "ratio_tvmnet_to_engine": self.median("tvmnet") / self.median(e),
                                "max_abs_diff": self.max_abs_diff.get(e)} for e, s in self.samples.items()}}


def _tvm_runner(art, x, threads):
    import tvm

    from .runner import open_local

    sess = open_local(art)
    sess.vm.set_input("main", tvm.runtime.tensor(x, sess.device))
    invoke = sess.vm.invoke_stateful
    sync = sess.device.sync

    def run():
        invoke("main")
        sync()

    return run, lambda: sess.run(x)


def _torch_runner(art, x, threads):
    import torch

    from .reference import reference_model_config
    from .models import build_model

    torch.set_num_threads(threads)
    model = build_model(reference_model_config(art))
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

        return run, lambda: run().cpu().numpy()

    def run():
        with torch.inference_mode():
            return model(tx)

    return run, lambda: run().numpy()


def _ort_runner(art, x, threads, tmpdir):
    import onnxruntime as ort

    if art.model["source"] == "onnx":
        path = art.model["onnx"]
    else:
        from .frontend import export_onnx
        from .models import build_model
        from .reference import reference_model_config

        path = str(export_onnx(build_model(reference_model_config(art)), art.input_shape, Path(tmpdir) / "model.onnx"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    feed = {name: x}

    def run():
        return sess.run(None, feed)

    return run, lambda: run()[0]


def run_bench(opts: BenchOptions, say=print) -> BenchResult:
    art = load_artifact(opts.artifact)
    threads = opts.threads or int(art.target["target"].get("num-cores") or 1)
    os.environ["TVM_NUM_THREADS"] = str(threads)   # read when TVM's thread pool starts (0.27 defaults to 1 here)
    x = np.random.default_rng(0).standard_normal(art.input_shape).astype(np.float32)
    res = BenchResult(str(art.path), threads, art.input_shape)
    with tempfile.TemporaryDirectory() as tmp:
        makers = {"tvmnet": lambda: _tvm_runner(art, x, threads), "pytorch": lambda: _torch_runner(art, x, threads),
                  "onnxruntime": lambda: _ort_runner(art, x, threads, tmp)}
        engines = [e for e in ENGINES if e in opts.engines]
        if art.target["device"] == "cuda" and "onnxruntime" in engines:
            say("CUDA artifact: comparing with PyTorch CUDA eager only (ONNX Runtime here is CPU-only)")
            engines.remove("onnxruntime")
        if art.model["source"] == "onnx" and "pytorch" in engines:
            say("artifact was built from ONNX: no PyTorch model to compare with; skipping PyTorch")
            engines.remove("pytorch")
        runners, outputs = {}, {}
        for e in engines:
            say(f"loading {LABELS[e]}")
            runners[e], out_fn = makers[e]()
            outputs[e] = np.asarray(out_fn(), dtype=np.float64)
        for e in engines:
            if e != "tvmnet":
                res.max_abs_diff[e] = float(np.max(np.abs(outputs[e] - outputs["tvmnet"])))
        for e in engines:
            for _ in range(opts.warmup):
                runners[e]()
        res.samples = {e: [] for e in engines}
        for r in range(opts.rounds):
            order = engines[r % len(engines):] + engines[:r % len(engines)]
            for e in order:
                run = runners[e]
                for _ in range(opts.runs):
                    t0 = time.perf_counter()
                    run()
                    res.samples[e].append((time.perf_counter() - t0) * 1e3)
            say(f"round {r + 1}/{opts.rounds}: " + ", ".join(f"{e} {statistics.median(res.samples[e]):.2f} ms"
                                                            for e in engines))
    import importlib.metadata as md

    res.versions = {}
    for pkg in ("apache-tvm", "torch", "onnxruntime"):
        try:
            res.versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            res.versions[pkg] = "n/a"
    return res
