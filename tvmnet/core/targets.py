"""Hardware targets: presets in ``targets/*.json``, a JSON file, or an inline JSON dict.

A preset file holds the TVM 0.27 target dict (``"target"``, optional ``"host"``) plus what
tvmnet needs to build and run for it: ``arch`` (ELF machine of the library), ``device``
(``cpu`` or ``cuda``), the ``cross_compiler`` for ARM, the x86 ``cpu_flags`` the code needs.
The value ``"@host"`` for ``mcpu`` or ``num-cores`` is replaced by this machine's.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

from tvmnet.core.errors import TargetError, ToolchainError, err_line
from tvmnet.core.paths import TARGETS_DIR


def preset_names() -> list:
    return sorted(p.stem for p in TARGETS_DIR.glob("*.json"))


def host_cpu() -> str:
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def host_cores() -> int:
    """Physical cores available to this process (MetaSchedule needs an explicit count)."""
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or 0
    except ImportError:
        physical = 0
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(physical or available, available))


def host_cpu_flags() -> set:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    """This machine's CPU model, e.g. 'AMD EPYC 9R14 96-Core Processor'."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:  # aarch64 /proc/cpuinfo has no model name; lscpu knows the core's name
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def _resolve_host_values(d: Optional[dict]) -> Optional[dict]:
    if d is None:
        return None
    d = copy.deepcopy(d)
    if d.get("mcpu") == "@host":
        d["mcpu"] = host_cpu()
    if d.get("num-cores") == "@host":
        d["num-cores"] = host_cores()
    return d


@dataclass(frozen=True)
class TargetSpec:
    """A resolved hardware target."""

    name: str
    description: str
    target: dict
    host: Optional[dict] = None
    arch: str = "x86_64"
    device: str = "cpu"
    cross_compiler: Optional[str] = None
    toolchain_package: Optional[str] = None
    cpu_flags: Tuple[str, ...] = ()
    qemu_cpu: Optional[str] = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    def tvm_target(self):
        import tvm

        try:
            if self.host is not None:
                return tvm.target.Target(self.target, host=self.host)
            return tvm.target.Target(self.target)
        except Exception as err:
            raise TargetError(
                f"TVM rejects target {self.name} ({json.dumps(self.target)}): "
                f"{err_line(err, last=False)}; fix the target dict"
            ) from err

    @property
    def is_cpu(self) -> bool:
        return self.device == "cpu"

    @property
    def default_layout(self) -> str:
        """Activation layout of the build: NHWC on CPUs (vectors run along channels, whose
        counts are multiples of 16 at every MobileNet width, not along 7x7 = 49 pixels),
        NCHW on GPUs (dlight's schedules)."""
        return "NHWC" if self.is_cpu else "NCHW"

    @property
    def is_cross(self) -> bool:
        return self.arch != platform.machine()

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "target": self.target,
            "host": self.host,
            "arch": self.arch,
            "device": self.device,
            "cross_compiler": self.cross_compiler,
            "cpu_flags": list(self.cpu_flags),
            "qemu_cpu": self.qemu_cpu,
        }

    @classmethod
    def from_json(cls, d: dict) -> "TargetSpec":
        """The spec recorded by ``to_json`` (e.g. in an artifact's metadata)."""
        return cls(
            name=d["name"],
            description=d.get("description", ""),
            target=d["target"],
            host=d.get("host"),
            arch=d["arch"],
            device=d["device"],
            cross_compiler=d.get("cross_compiler"),
            cpu_flags=tuple(d.get("cpu_flags", ())),
            qemu_cpu=d.get("qemu_cpu"),
        )

    def vector_isa(self) -> str:
        """The vector ISA the target's code may use: avx512 / avx2 / sse (x86), neon or
        neon-dotprod (aarch64), the CUDA arch for GPUs."""
        if self.device == "cuda":
            return str(self.target.get("arch", "cuda"))
        from tvm.target import codegen

        tgt = self.tvm_target()
        with tgt:
            if self.arch == "aarch64":
                return "neon-dotprod" if tgt.features.has_dotprod else "neon"
            for isa, feature in (("avx512", "avx512f"), ("avx2", "avx2")):
                if codegen.llvm_cpu_has_features([feature], tgt):
                    return isa
        return "sse" if self.arch == "x86_64" else "generic"

    def machine_class(self) -> dict:
        """What decides the schedules a tuning log holds: architecture, LLVM mcpu, vector ISA,
        core count. ``key`` names the database directory in tuning_logs/."""
        if self.device == "cuda":
            arch = str(self.target.get("arch", "cuda"))
            return {"key": f"cuda-{arch}", "arch": "cuda", "mcpu": arch, "isa": arch, "cores": None}
        mcpu = str(self.target.get("mcpu") or "generic")
        isa = self.vector_isa()
        cores = int(self.target.get("num-cores") or 1)
        return {
            "key": f"{self.arch}-{mcpu}-{isa}-{cores}c",
            "arch": self.arch,
            "mcpu": mcpu,
            "isa": isa,
            "cores": cores,
        }

    def use_threads(self) -> None:
        """Make TVM's CPU thread pool (here and in processes started from here) use the
        target's ``num-cores``: TVM 0.27 defaults to one thread on 2-vCPU machines, so code
        tuned and run without this uses half the CPU. An explicit TVM_NUM_THREADS wins."""
        os.environ.setdefault("TVM_NUM_THREADS", str(max(1, int(self.target.get("num-cores") or 1))))

    def check_toolchain(self) -> None:
        """Fail early, with the install command, if the target's compiler is missing."""
        if self.cross_compiler and shutil.which(self.cross_compiler) is None:
            pkg = self.toolchain_package or self.cross_compiler
            raise ToolchainError(
                f"target {self.name} needs the cross compiler {self.cross_compiler}, which is not on PATH; "
                f"install it with `apt-get install {pkg}` (the README's setup does)"
            )
        if self.device == "cuda" and shutil.which("nvcc") is None:
            raise ToolchainError(
                f"target {self.name} needs nvcc (CUDA toolkit) on PATH to build; install the CUDA toolkit"
            )

    def host_mismatch(self) -> Optional[str]:
        """Why this machine cannot run code built for the target, or None if it can."""
        machine = platform.machine()
        if self.arch != machine:
            return f"it is built for {self.arch} and this machine is {machine}"
        missing = [f for f in self.cpu_flags if f not in host_cpu_flags()]
        if missing:
            return f"it needs CPU features {', '.join(missing)} this CPU lacks"
        return None


def _from_dict(name: str, data: dict, seen=()) -> TargetSpec:
    if not isinstance(data, dict):
        raise TargetError(f"target {name} must be a JSON object; see targets/x86.json for the format")
    if "alias_of" in data:
        alias = data["alias_of"]
        if alias in seen:
            raise TargetError(f"target alias loop: {' -> '.join(seen + (alias,))}")
        spec = load_target(alias, _seen=seen + (name,))
        return TargetSpec(**{**spec.__dict__, "description": data.get("description", spec.description)})
    if "target" not in data and "kind" in data:  # a bare TVM target dict
        data = {"target": data}
    tgt = data.get("target")
    if not isinstance(tgt, dict) or "kind" not in tgt:
        raise TargetError(
            f'target {name} has no TVM target dict with a "kind"; write e.g. '
            '{"kind": "llvm", "mcpu": "znver4", "num-cores": 2}'
        )
    kind = tgt["kind"]
    device = data.get("device", "cuda" if kind == "cuda" else "cpu")
    if kind not in ("llvm", "cuda"):
        raise TargetError(f"target {name} has kind {kind!r}; tvmnet supports llvm (x86, ARM) and cuda")
    target = _resolve_host_values(tgt)
    host = _resolve_host_values(data.get("host"))
    if kind == "llvm" and "num-cores" not in target:
        target["num-cores"] = host_cores() if "mtriple" not in target else 4
    if kind == "cuda" and host is None:
        host = {"kind": "llvm", "mcpu": host_cpu(), "num-cores": host_cores()}
    triple = target.get("mtriple", "")
    arch = data.get("arch") or ("aarch64" if triple.startswith("aarch64") else platform.machine())
    return TargetSpec(
        name=name,
        description=data.get("description", "custom target"),
        target=target,
        host=host,
        arch=arch,
        device=device,
        cross_compiler=data.get("cross_compiler"),
        toolchain_package=data.get("toolchain_package"),
        cpu_flags=tuple(data.get("cpu_flags", ())),
        qemu_cpu=data.get("qemu_cpu"),
        raw=data,
    )


def load_target(spec: str, _seen=()) -> TargetSpec:
    """Resolve ``--target``: a preset name, a path to a JSON file, or an inline JSON dict."""
    spec = str(spec).strip()
    names = preset_names()
    if spec in names:
        try:
            data = json.loads((TARGETS_DIR / f"{spec}.json").read_text())
        except (OSError, ValueError) as err:
            raise TargetError(f"preset targets/{spec}.json is unreadable: {err}") from err
        return _from_dict(spec, data, _seen)
    if spec.startswith("{"):
        try:
            data = json.loads(spec)
        except ValueError as err:
            raise TargetError(
                f"inline target is not valid JSON ({err}); write e.g. "
                '\'{"kind": "llvm", "mcpu": "znver4", "num-cores": 2}\''
            ) from err
        digest = hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]
        return _from_dict(f"custom-{digest}", data, _seen)
    path = Path(spec)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise TargetError(
                f"target file {path} does not exist; give a preset ({', '.join(names)}), "
                "a JSON file or an inline JSON dict"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise TargetError(f"target file {path} is not valid JSON: {err}") from err
        return _from_dict(path.stem, data, _seen)
    raise TargetError(
        f"unknown target {spec!r}; choose a preset ({', '.join(names)}), a JSON file or an inline JSON dict"
    )
