"""``bench``: the artifact vs PyTorch eager, ONNX Runtime and ExecuTorch (XNNPACK delegate),
same input, same thread count, each engine in a process of its own.

How it stays fair:

- **One process per engine** (``tvmnet.run.bench_worker``), so no engine's thread pool, allocator
  or OpenMP runtime shares a process with another's. Each gets the thread count ``T``:
  ``TVM_NUM_THREADS`` (set before TVM is imported), ``torch.set_num_threads``, ONNX Runtime
  intra-op ``T`` / inter-op 1, ExecuTorch's XNNPACK pool via ``_unsafe_reset_threadpool(T)``.
- **Never two at once**: the workers are started and loaded (exports included) one after
  another, each warmed up while the others wait; then, in each of ``--rounds`` rounds, every
  engine in turn times ``--runs`` inferences while the others block on their pipe (no CPU).
  The order rotates each round so frequency drift and background load hit every engine alike.
  Each worker stays alive across rounds (loads once); it does one untimed run at the start of
  each round to wake its thread pool after the wait, and times with the garbage collector off.
- Each timed run is one inference call with the input already in place, wall-clock
  (``time.perf_counter``). The parent draws the input (seed 0), hands it to every worker as
  a .npy and compares each engine's output with tvmnet's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from tvmnet.build.artifact import load_artifact
from tvmnet.core import errors
from tvmnet.core.errors import TvmnetError, UsageError
from tvmnet.core.threads import RUN_ENV
from tvmnet.run.load import busy_neighbours

ENGINES = ("tvmnet", "tvmnet-fp32", "pytorch", "onnxruntime", "executorch")
LABELS = {
    "tvmnet": "tvmnet (TVM)",
    "tvmnet-fp32": "tvmnet fp32 build",
    "pytorch": "PyTorch eager",
    "onnxruntime": "ONNX Runtime",
    "executorch": "ExecuTorch XNNPACK",
}
EXECUTORCH_INSTALL = 'pip install -e ".[executorch]" torch==2.13.0'
PACKAGES = {
    "tvmnet": "apache-tvm",
    "tvmnet-fp32": "apache-tvm",
    "pytorch": "torch",
    "onnxruntime": "onnxruntime",
    "executorch": "executorch",
}


def label(engine: str, precision: str = "fp32") -> str:
    """An engine's name in the table; beside an int8 artifact, with the precision each one runs."""
    if precision != "int8":
        return LABELS[engine]
    return LABELS[engine] + (" fp32" if engine == "pytorch" else "" if engine == "tvmnet-fp32" else " int8")


def executorch_installed() -> bool:
    return importlib.util.find_spec("executorch") is not None


@dataclass(frozen=True)
class BenchOptions:
    artifact: Path
    threads: Optional[int] = None
    rounds: int = 15
    runs: int = 10
    warmup: int = 10
    engines: Optional[Tuple[str, ...]] = None  # None: all of ENGINES installed here
    busy: int = 0  # busy-loop processes running beside every engine's timing (run/load.py)
    fp32: Optional[Path] = None  # tvmnet's fp32 build of the same model, timed beside an int8 artifact

    def __post_init__(self):
        if self.busy < 0:
            raise UsageError(f"--busy {self.busy}: give a number of busy processes, 0 or more")
        if self.engines is None:
            return
        bad = [e for e in self.engines if e not in ENGINES]
        if bad or "tvmnet" not in self.engines:
            raise UsageError(f"--engines {','.join(self.engines)}: choose from {', '.join(ENGINES)} (tvmnet included)")
        if "executorch" in self.engines and not executorch_installed():
            raise UsageError(
                f"--engines executorch: ExecuTorch is not installed; install it with `{EXECUTORCH_INSTALL}`"
            )


@dataclass
class BenchResult:
    artifact: str
    threads: int
    input_shape: tuple
    machine: Dict[str, str] = field(default_factory=dict)
    samples: Dict[str, List[float]] = field(default_factory=dict)
    round_ms: Dict[str, List[float]] = field(default_factory=dict)  # engine -> its median in each round
    max_abs_diff: Dict[str, float] = field(default_factory=dict)
    workers: Dict[str, dict] = field(default_factory=dict)  # engine -> pid, threads, note
    versions: Dict[str, str] = field(default_factory=dict)
    rounds: int = 0
    busy: int = 0
    precision: str = "fp32"

    def median(self, e) -> float:
        return statistics.median(self.samples[e])

    def p90(self, e) -> float:
        return float(np.percentile(self.samples[e], 90))

    def p99(self, e) -> float:
        return float(np.percentile(self.samples[e], 99))

    def per_round(self, e) -> float:
        """Median over rounds of tvmnet's median / the engine's median in the same round: the
        engines of a round run back to back, so load that comes and goes (a noisy neighbour on a
        VM) hits both sides of each ratio alike, where it can hit one engine's share of the
        whole run more than the other's."""
        return statistics.median(o / t for o, t in zip(self.round_ms["tvmnet"], self.round_ms[e]))

    def table(self) -> str:
        ours = self.median("tvmnet")
        lines = [
            f"machine: {self.machine.get('cpu')}; target class {self.machine.get('class')}",
            f"{self.artifact}: input {self.input_shape}, {self.threads} thread(s), {self.rounds} round(s), "
            f"{len(self.samples['tvmnet'])} timed runs per engine, each engine in its own process"
            + (f"; under load: {self.busy} busy process(es) beside every engine" if self.busy else ""),
            f"{'engine':<24}{'median ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'tvmnet/engine':>15}{'per round':>11}"
            f"{'max|diff|':>12}",
        ]
        for e in self.samples:
            diff = "" if e == "tvmnet" else f"{self.max_abs_diff.get(e, float('nan')):.1e}"
            lines.append(
                f"{label(e, self.precision):<24}{self.median(e):>10.3f}{self.p90(e):>10.3f}{self.p99(e):>10.3f}"
                f"{ours / self.median(e):>14.2f}x{self.per_round(e):>10.2f}x{diff:>12}"
            )
        lines.append(
            "tvmnet/engine < 1 means tvmnet is faster; per round: the median over rounds of that ratio within "
            "each round; max|diff| is the output difference to tvmnet"
        )
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "artifact": self.artifact,
            "machine": self.machine,
            "threads": self.threads,
            "input_shape": list(self.input_shape),
            "rounds": self.rounds,
            "busy": self.busy,
            "precision": self.precision,
            "pid": os.getpid(),
            "versions": self.versions,
            "engines": {
                e: {
                    "median_ms": self.median(e),
                    "p90_ms": self.p90(e),
                    "p99_ms": self.p99(e),
                    "runs": len(s),
                    "ratio_tvmnet_to_engine": self.median("tvmnet") / self.median(e),
                    "ratio_per_round": self.per_round(e),
                    "round_medians_ms": self.round_ms[e],
                    "max_abs_diff": self.max_abs_diff.get(e),
                    **self.workers.get(e, {}),
                }
                for e, s in self.samples.items()
            },
        }


def machine_info(art) -> Dict[str, str]:
    from tvmnet.core.targets import TargetSpec, cpu_model

    return {"cpu": cpu_model(), "class": TargetSpec.from_json(art.target).machine_class()["key"]}


def select_engines(opts: BenchOptions, art) -> Tuple[List[str], List[str]]:
    """The engines to run on this artifact, in ENGINES order, and a note for each one dropped."""
    wanted = list(ENGINES if opts.engines is None else opts.engines)
    notes = []
    cpu_only = [e for e in ("onnxruntime", "executorch") if e in wanted]
    if art.target["device"] == "cuda" and cpu_only:
        notes.append(
            f"CUDA artifact: comparing with PyTorch CUDA eager only "
            f"({' and '.join(LABELS[e] for e in cpu_only)} run on the CPU here)"
        )
        wanted = [e for e in wanted if e not in cpu_only]
    torch_based = [e for e in ("pytorch", "executorch") if e in wanted]
    if art.model["source"] == "onnx" and torch_based:
        notes.append(
            f"artifact was built from ONNX: no PyTorch model to compare with; skipping "
            f"{' and '.join(LABELS[e] for e in torch_based)}"
        )
        wanted = [e for e in wanted if e not in torch_based]
    if opts.fp32 is None:
        if opts.engines is not None and "tvmnet-fp32" in opts.engines:
            raise UsageError("--engines tvmnet-fp32 needs --fp32 DIR, tvmnet's fp32 build of the same model")
        wanted = [e for e in wanted if e != "tvmnet-fp32"]
    elif "tvmnet-fp32" not in wanted:
        wanted.append("tvmnet-fp32")
    if opts.engines is None and "executorch" in wanted and not executorch_installed():
        wanted.remove("executorch")
        notes.append(f"ExecuTorch is not installed: skipped (install it with `{EXECUTORCH_INSTALL}`)")
    return [e for e in ENGINES if e in wanted], notes


class _Worker:
    """One engine in its own process (``tvmnet.run.bench_worker``), driven line by line over pipes."""

    def __init__(
        self, engine: str, art_path: Path, input_path: Path, workdir: Path, threads: int, warmup: int, runs: int
    ):
        self.engine = engine
        self.log = workdir / f"{engine}.log"
        env = dict(os.environ, TVM_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        for key, value in RUN_ENV.items():  # tvmnet's thread policy (core/threads.py), unless set
            env.setdefault(key, value)
        root = str(Path(__file__).resolve().parents[2])  # the worker imports this same tvmnet
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        cmd = [
            sys.executable,
            "-m",
            "tvmnet.run.bench_worker",
            engine,
            str(art_path),
            str(input_path),
            str(workdir),
            "--threads",
            str(threads),
            "--warmup",
            str(warmup),
            "--runs",
            str(runs),
        ]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, text=True
            )

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            tail = [l for l in self.log.read_text(errors="replace").splitlines() if l.strip()]
            raise TvmnetError(
                f"the {LABELS[self.engine]} worker died (exit code {code})" + (f": {tail[-1].strip()}" if tail else "")
            )
        msg = json.loads(line)
        if "error" in msg:
            cls = getattr(errors, msg.get("type") or "", None)
            if not (isinstance(cls, type) and issubclass(cls, TvmnetError)):
                cls, msg["error"] = TvmnetError, f"{LABELS[self.engine]} failed in its worker: {msg['error']}"
            raise cls(msg["error"])
        return msg

    def ready(self) -> dict:
        msg = self._reply()
        return {"pid": msg["pid"], "threads": msg.get("threads"), "note": msg.get("note", "")}

    def round(self) -> List[float]:
        try:
            self.proc.stdin.write("round\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # it died: _reply says how
        return self._reply()["samples_ms"]

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _check_fp32_beside(art, fp32) -> None:
    """--fp32 DIR: an fp32 build of the model the int8 artifact quantized, for this same machine."""
    if art.metadata.get("precision") != "int8" or fp32.metadata.get("precision", "fp32") != "fp32":
        raise UsageError(
            "--fp32 DIR times tvmnet's fp32 build beside an int8 artifact; pass an int8 artifact and an fp32 one"
        )
    keys = ("source", "alpha", "resolution", "num_classes", "seed", "weights_sha256")
    if fp32.input_shape != art.input_shape or any(fp32.model.get(k) != art.model.get(k) for k in keys):
        raise UsageError(
            f"--fp32 {fp32.path} is another model than {art.path}; compile the same model without --precision int8"
        )


def run_bench(opts: BenchOptions, say=print) -> BenchResult:
    art = load_artifact(opts.artifact)
    threads = opts.threads or int(art.target["target"].get("num-cores") or 1)
    engines, notes = select_engines(opts, art)
    for note in notes:
        say(note)
    if opts.fp32 is not None:
        _check_fp32_beside(art, load_artifact(opts.fp32))
    res = BenchResult(
        str(art.path), threads, art.input_shape, machine=machine_info(art), rounds=opts.rounds, busy=opts.busy,
        precision=art.metadata.get("precision", "fp32"),
    )  # fmt: skip
    say(f"machine: {res.machine['cpu']}; target class {res.machine['class']}")
    x = np.random.default_rng(0).standard_normal(art.input_shape).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="tvmnet-bench-") as tmp:
        workdir = Path(tmp)
        np.save(workdir / "input.npy", x)
        workers: Dict[str, _Worker] = {}
        try:
            for e in engines:  # one at a time: no load, export or warm-up overlaps another engine
                say(f"loading {LABELS[e]} in its own process")
                path = Path(opts.fp32) if e == "tvmnet-fp32" else art.path
                workers[e] = _Worker(e, path, workdir / "input.npy", workdir, threads, opts.warmup, opts.runs)
                res.workers[e] = workers[e].ready()
                w = res.workers[e]
                say(f"{LABELS[e]}: pid {w['pid']}, {w['threads'] or '-'} thread(s), {w['note']}")
            ours = np.load(workdir / "tvmnet.npy").astype(np.float64)
            for e in (e for e in engines if e != "tvmnet"):
                res.max_abs_diff[e] = float(np.max(np.abs(np.load(workdir / f"{e}.npy").astype(np.float64) - ours)))
            res.samples = {e: [] for e in engines}
            res.round_ms = {e: [] for e in engines}
            if opts.busy:
                say(f"starting {opts.busy} busy process(es) beside every engine's timing")
            with busy_neighbours(opts.busy) as procs:
                for r in range(opts.rounds):
                    if any(p.poll() is not None for p in procs):
                        raise TvmnetError("a busy process ended early; rerun the bench")
                    for e in engines[r % len(engines) :] + engines[: r % len(engines)]:
                        times = workers[e].round()
                        res.samples[e].extend(times)
                        res.round_ms[e].append(statistics.median(times))
                    say(
                        f"round {r + 1}/{opts.rounds}: "
                        + ", ".join(f"{e} {res.round_ms[e][-1]:.2f} ms" for e in engines)
                    )
        finally:
            for w in workers.values():
                w.close()
    import importlib.metadata as md

    for e in engines:
        try:
            res.versions[PACKAGES[e]] = md.version(PACKAGES[e])
        except md.PackageNotFoundError:
            res.versions[PACKAGES[e]] = "n/a"
    return res
