"""Tuning without the board: MetaSchedule scores candidates with the cost proxy (issue 9).

``tvmnet tune --target rpi4 --estimate`` runs the usual search (warm start, our GEMM
micro-kernel seeds, first pass, evolutionary search with the XGBoost cost model), but
nothing is run: a candidate's "time" is the board-free cost proxy's estimate
(``tvmnet/proxy/kernel.py``: llvm-mca with the board's ``-mcpu``, weighted by exact block counts)
converted to seconds at the board's clock. The builder below computes it, in parallel worker
processes, and hands the runner a small file with the figure.

The score is the sum over executed blocks of llvm-mca's Block RThroughput (the throughput
bound), which ranked measured schedules better than its Total Cycles (``PROXY_RHO``). Only
kernel kinds on which it ranks schedules as measurements do are tuned this way
(``TRUSTED_KINDS``: Spearman's rho >= 0.8 on this project's measured x86 schedules, the bar
of issue 9: pointwise GEMMs and the stem conv); the other kernels keep what ``compile`` gives
them without a log of their own (the nearest class's schedules, transferred).

Estimated logs are kept apart from measured ones: ``tuning_logs/estimated/<class>/``, with
``"estimated": true`` in ``class.json``. ``compile`` applies, per kernel, a measured log of
the class first, then the estimated one, then the nearest or transferred class's schedules, so
a log made on a real board always wins.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from functools import partial
from pathlib import Path
from typing import Optional

from tvmnet.core.errors import UsageError
from tvmnet.core.targets import cpu_model

# How well the proxy's score ranks measured schedules, per kernel kind, on this project's x86
# schedules (NHWC; 25 records per kernel sampled from a 2021-trial measured tune of MobileNet
# 0.5-224 on the Cascade Lake class, `scripts/proxy_rank.py`; see docs/proxy.md):
# Spearman's rho of all the kind's records pooled, with llvm-mca's Block RThroughput as the
# score (the throughput bound: it ranked better than Total Cycles, whose pick for the GEMMs was
# no better than a random record: 1.42x the best measured vs 1.09x).
PROXY_RHO = {"pointwise GEMM": 0.86, "stem conv": 0.89, "depthwise conv": 0.70, "fc": 0.53}
# The same for the int8 build's searched kernels (its GEMMs are tvmnet's own, nothing to search):
# the Zen 4 int8 records of 1.0-224 (Dec 6; 20 per kernel, the stem's 181 from before it moved to
# VNNI), Block RThroughput, pooled. Picking each kernel's first by it: depthwise 1.02x the best
# measured, stem 1.19x, fc 1.08x (a random record: 1.93x, 1.73x, 1.82x).
PROXY_RHO_INT8 = {"stem conv": 0.84, "depthwise conv": 0.85, "fc": 0.76}
RHO_BAR = 0.8
TRUSTED_KINDS = tuple(k for k, rho in PROXY_RHO.items() if rho >= RHO_BAR)


def trusted_kinds(precision: str = "fp32") -> dict:
    """{kind: rho} of the kinds the proxy may tune in this precision's build."""
    table = PROXY_RHO_INT8 if precision == "int8" else PROXY_RHO
    return {k: rho for k, rho in table.items() if rho >= RHO_BAR}


def clock_ghz(spec) -> float:
    """The clock the proxy's cycles are converted at: the board's rated clock (rpi3b/4/5), else
    this machine's nominal clock (``... @ 2.50GHz``), else 1 GHz. Only the ranking matters for
    tuning; the figure is for the progress line."""
    from tvmnet.proxy.estimate import BOARD_OF_MCPU, CLOCK_GHZ

    board = BOARD_OF_MCPU.get(str(spec.target.get("mcpu") or ""))
    if board is not None:
        return CLOCK_GHZ[board]
    if spec.host_mismatch() is None:
        m = re.search(r"@\s*([0-9.]+)\s*GHz", cpu_model() or "")
        if m:
            return float(m.group(1))
    return 1.0


def _estimate_worker(mod, spec, ghz: float) -> str:
    """In a builder worker: the proxy's seconds for one scheduled kernel, in a small file."""
    from tvmnet.proxy.kernel import estimate

    est = estimate(mod, spec)
    cycles = est.rthroughput_cycles  # the score that ranks schedules best (PROXY_RHO above)
    # a directory per candidate, as MetaSchedule's builders make: its RemoveBuildArtifact
    # callback removes the artifact's directory once the candidate is recorded
    path = os.path.join(tempfile.mkdtemp(prefix="tvmnet-proxy-"), "estimate.json")
    with open(path, "w") as f:
        json.dump({"seconds": cycles / (ghz * 1e9), "cycles": cycles, "mca_cycles": est.cycles}, f)
    return path


def make_proxy_builder(spec, ghz: float, max_workers: Optional[int] = None, timeout_sec: float = 300.0):
    """A MetaSchedule builder whose "artifact" is the proxy's estimate of the candidate."""
    from tvmnet.tune.builder import pool_builder

    return pool_builder(
        spec, partial(_estimate_worker, spec=spec, ghz=ghz), lambda b: b.mod, "proxy estimate", max_workers, timeout_sec
    )


def make_proxy_runner():
    """A MetaSchedule runner that "runs" a candidate by reading the builder's estimate."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class Done(ms.runner.PyRunnerFuture):
        def __init__(self, result):
            super().__init__()
            self.res = result

        def done(self):
            return True

        def result(self):
            return self.res

    @derived_object
    class ProxyRunner(ms.runner.PyRunner):
        def run(self, runner_inputs):
            futures = []
            for inp in runner_inputs:
                try:
                    path = Path(inp.artifact_path)
                    secs = float(json.loads(path.read_text())["seconds"])
                    res = ms.runner.RunnerResult([secs], None)
                except (OSError, ValueError, KeyError) as err:
                    res = ms.runner.RunnerResult(None, f"no proxy estimate: {err}")
                futures.append(Done(res))
            return futures

    return ProxyRunner()


def select_trusted(tasks, say, precision: str = "fp32") -> list:
    """The kernels the cost proxy may tune: those of the kinds it ranks as measurements do
    (``trusted_kinds``: per precision); the others keep the nearest class's schedules."""
    from tvmnet.passes.pipeline import kernel_kind

    kinds_ok = trusted_kinds(precision)
    kinds = [kernel_kind(t.task_name, t.dispatched[0]) for t in tasks]
    trusted = [t for t, kind in zip(tasks, kinds) if kind in kinds_ok]
    left = sorted(set(kinds) - set(kinds_ok))
    if left:
        say(
            f"--estimate tunes only kernel kinds the cost proxy ranks as measurements do ({precision} kernels, "
            f"Spearman's rho >= {RHO_BAR}: {', '.join(f'{k} {rho}' for k, rho in kinds_ok.items())}); "
            f"{len(tasks) - len(trusted)} kernel(s) of kind {', '.join(left)} keep the nearest class's schedules"
        )
    if not trusted:
        raise UsageError(
            "no kernel of a kind the cost proxy is trusted for ("
            + ", ".join(kinds_ok)
            + ") matches; drop --kernels or choose a pointwise (matmul) kernel or the stem conv"
        )
    return trusted


def proxy_measurer(spec, precision: str = "fp32"):
    """``tune_model``'s measurer for ``tvmnet tune --estimate``: nothing runs; the builder's
    workers score each candidate with the cost proxy, the runner reads the score."""
    from tvmnet.proxy.mca import llvm_mca_path
    from tvmnet.tune.search import Measurer

    llvm_mca_path()  # a one-line error with the install command when llvm-mca is missing
    ghz = clock_ghz(spec)
    return Measurer(
        make_proxy_builder(spec, ghz),
        make_proxy_runner(),
        measured_on=(
            f"nothing: estimated by the cost proxy (llvm-mca -mcpu={spec.target.get('mcpu')}, "
            f"cycles at {ghz:g} GHz) on {cpu_model()}"
        ),
        select=lambda tasks, say: select_trusted(tasks, say, precision),
    )


def tune_by_proxy(opts, say=print):
    """``tune_model`` with candidates scored by the cost proxy (``opts.estimate``)."""
    from tvmnet.tune.search import tune_model

    return tune_model(opts, say=say, measurer=proxy_measurer(opts.target, opts.precision))
