"""The llvm-mca driver of the cost proxy: the ``llvm-mca`` binary, its ``-mtriple``/``-mcpu``/
``-mattr`` for a target (with a stand-in model for a CPU this llvm-mca does not know), and one
run over many code regions (``run_mca``).

What a block costs: each executed block's instructions are one ``llvm-mca`` code region
(``-mtriple``/``-mcpu``/``-mattr`` of the target: cascadelake, cortex-a72...): cycles per
iteration of the block run back to back (``Total Cycles / Iterations``). For an innermost loop
body that is the loop's steady state, loop-carried dependencies (FMA accumulators) included;
every load is an L1 hit and loads never wait for stores (llvm-mca's defaults). Calls are not
simulated: they are left out of the regions and costed by ``tvmnet.proxy.kernel``.

Needs ``llvm-mca`` (Debian/Ubuntu: ``apt-get install llvm``; LLVM 14's scheduling models
suffice).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Tuple

from tvmnet.core.errors import ToolchainError

log = logging.getLogger(__name__)


def llvm_mca_path() -> str:
    """The ``llvm-mca`` binary (any version suffix), or a one-line ToolchainError."""
    for name in ("llvm-mca", *(f"llvm-mca-{v}" for v in range(22, 10, -1))):
        path = shutil.which(name)
        if path:
            return path
    raise ToolchainError(
        "the cost proxy needs llvm-mca, which is not on PATH; install it with `apt-get install llvm` (Debian/Ubuntu)"
    )


# An -mcpu this llvm-mca does not know (LLVM 14 predates znver4/znver5, sapphirerapids' newer
# siblings, ...) makes it fall back to a generic model, whose assembler rejects AVX-512 code.
# Such a CPU is analysed with a known model of the same vector ISA.
MCA_STANDIN = {"avx512": "icelake-server", "avx2": "skylake", "neon-dotprod": "cortex-a76", "neon": "cortex-a72"}


@functools.lru_cache(maxsize=None)
def mca_known_cpus(triple: str) -> frozenset:
    """The -mcpu names this llvm-mca has a model for (``-mcpu=help``)."""
    proc = subprocess.run(
        [llvm_mca_path(), f"-mtriple={triple}", "-mcpu=help"], input="", capture_output=True, text=True, timeout=60
    )
    names = re.findall(r"^\s+([\w.-]+)\s+- Select the", proc.stdout + proc.stderr, flags=re.M)
    return frozenset(names)


@functools.lru_cache(maxsize=None)  # said once per CPU, not once per llvm-mca run
def mca_standin(mcpu: str, isa: str) -> str:
    """The known CPU llvm-mca analyses an unknown ``mcpu`` of vector ISA ``isa`` as."""
    standin = MCA_STANDIN.get(isa, "generic")
    log.info("llvm-mca has no model for %s: analysing as %s (same vector ISA, %s)", mcpu, standin, isa)
    return standin


def mca_args(spec) -> List[str]:
    """llvm-mca's -mtriple/-mcpu/-mattr for a target."""
    tgt = spec.target
    triple = tgt.get("mtriple") or ("aarch64-linux-gnu" if spec.arch == "aarch64" else "x86_64-unknown-linux-gnu")
    mcpu = tgt.get("mcpu")
    if not mcpu or mcpu == "@host":
        from tvmnet.core.targets import host_cpu

        mcpu = host_cpu() if spec.arch == os.uname().machine else "generic"
    known = mca_known_cpus(triple)
    if known and mcpu not in known:
        mcpu = mca_standin(mcpu, spec.vector_isa())
    args = [f"-mtriple={triple}", f"-mcpu={mcpu}"]
    mattr = tgt.get("mattr")
    if mattr:
        args.append("-mattr=" + ",".join(mattr if isinstance(mattr, (list, tuple)) else [mattr]))
    return args


@dataclass
class McaResult:
    cycles_per_iter: float
    rthroughput: float
    instructions: int


def run_mca(
    regions: Dict[int, List[str]], spec, iterations: int = 100, timeout: float = 300, extra: Tuple[str, ...] = ()
) -> Dict[int, McaResult]:
    """One llvm-mca run over many code regions; region id -> cycles per iteration. ``extra``:
    more llvm-mca options (``-noalias=false``: every load waits for the older stores)."""
    if not regions:
        return {}
    mca = llvm_mca_path()
    comment = "#"  # llvm-mca 14 finds region markers after '#' on x86 and AArch64 alike (not after '//')
    body = []
    for k, lines in regions.items():
        body.append(f"{comment} LLVM-MCA-BEGIN r{k}")
        body.extend(lines)
        body.append(f"{comment} LLVM-MCA-END r{k}")
    text = "\n".join(body) + "\n"
    cmd = [mca, *mca_args(spec), f"-iterations={iterations}", "-resource-pressure=0", "-instruction-info=0", *extra]
    dropped = 0
    for _ in range(50):
        proc = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=timeout)
        if proc.returncode == 0:
            break
        # an instruction llvm-mca's assembler does not know: drop that line and retry
        m = re.search(r"<stdin>:(\d+):\d+: error", proc.stderr)
        if not m:
            raise ToolchainError(
                f"llvm-mca failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
            )
        lines_ = text.split("\n")
        lines_[int(m.group(1)) - 1] = ""
        text = "\n".join(lines_)
        dropped += 1
    else:
        raise ToolchainError("llvm-mca rejects too many instructions of this kernel")
    out = {}
    parts = re.split(r"\n\[\d+\] Code Region - ", "\n" + proc.stdout)[1:]
    if not parts and len(regions) == 1:  # llvm-mca prints no region header for a single region
        parts = [f"r{next(iter(regions))}\n" + proc.stdout]
    for part in parts:
        name = part.split("\n", 1)[0].strip()
        it = re.search(r"Iterations:\s+(\d+)", part)
        tc = re.search(r"Total Cycles:\s+(\d+)", part)
        ins = re.search(r"Instructions:\s+(\d+)", part)
        rt = re.search(r"Block RThroughput:\s+([\d.]+)", part)
        if name.startswith("r") and it and tc:
            n_it = int(it.group(1))
            out[int(name[1:])] = McaResult(
                int(tc.group(1)) / n_it, float(rt.group(1)) if rt else 0.0, int(ins.group(1)) // n_it if ins else 0
            )
    return out
