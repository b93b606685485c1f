"""What a tune is asked to do (``TuneOptions``) and what it did (``TuneResult``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tvmnet.core.config import ModelConfig
from tvmnet.core.endpoint import Endpoint
from tvmnet.core.errors import UsageError
from tvmnet.core.targets import TargetSpec
from tvmnet.tune.logs import database_dir


def default_per_task(trials: int, n_tasks: int) -> int:
    """Cap per kernel: three times the even share, so that the gradient rule can give the
    kernels that hold the time (MobileNet's 14x14x512 GEMMs) more trials than the rest."""
    return min(trials, max(8, 3 * math.ceil(trials / max(1, n_tasks))))


@dataclass(frozen=True)
class TuneOptions:
    model: ModelConfig
    target: TargetSpec
    trials: int = 2000
    per_task: Optional[int] = None
    log_dir: Optional[Path] = None
    repeats: int = 3
    number: int = 10
    timeout: float = 30.0
    seed: int = 0
    trials_per_iter: int = 64
    rpc: Optional[Endpoint] = None  # measure on remote boards (a tracker and key)
    gemm: bool = True
    layout: Optional[str] = None  # NCHW or NHWC; None: the target's default
    progress: bool = True
    kernels: Optional[str] = None  # only tune kernels whose name contains this
    population: int = 512  # evolutionary search population (smaller: faster, worse)
    warm_start: bool = True  # seed kernels without records from the nearest class's log
    warm_top_k: int = 4  # records per kernel taken from that log
    minutes: Optional[float] = None  # stop (at a safe point) after this long
    only_untuned: bool = False  # tune only kernels without a record in this class's log
    seeds: bool = True  # measure our register-blocked GEMM micro-kernels first
    estimate: bool = False  # score candidates with the cost proxy, nothing run (tvmnet/proxy/tuning.py)
    retime: bool = True  # a resumed tune re-measures each kernel's best records first
    precision: str = "fp32"  # int8: the integer kernels of the quantized model (seeded calibration)
    onnx: Optional[Path] = None  # the quantizer's input when not the zoo model (unused by tune today)
    calibration: Optional[Path] = None  # int8: the scales only; the kernels do not depend on them
    calibration_samples: Optional[int] = None

    def __post_init__(self):
        if self.trials < 1:
            raise UsageError(f"--trials {self.trials} must be at least 1")
        if self.per_task is not None and self.per_task < 1:
            raise UsageError(f"--per-task {self.per_task} must be at least 1")
        if self.repeats < 1 or self.number < 1:
            raise UsageError("--repeats and --number must be at least 1")
        if self.timeout <= 0:
            raise UsageError(f"--timeout {self.timeout} must be positive (seconds)")
        if self.minutes is not None and self.minutes <= 0:
            raise UsageError(f"--minutes {self.minutes} must be positive")
        if self.warm_top_k < 1:
            raise UsageError(f"--warm-top-k {self.warm_top_k} must be at least 1")
        if self.estimate and self.rpc is not None:
            raise UsageError(
                "--estimate scores candidates with the cost proxy and runs nothing; drop --rpc/--tracker "
                "(or drop --estimate to measure on the board)"
            )
        if self.estimate and not self.target.is_cpu:
            raise UsageError(
                f"--estimate covers CPU targets (the proxy is llvm-mca); {self.target.name} is "
                f"{self.target.device}: tune it on the device"
            )

    @property
    def database(self) -> Path:
        return database_dir(self.target, self.log_dir, estimated=self.estimate)

    def display(self) -> str:
        where = (
            "scored by the cost proxy, nothing run"
            if self.estimate
            else "measured locally"
            if self.rpc is None
            else f"measured on {self.rpc}"
        )
        return (
            f"{self.model.display()}\ntarget: {self.target.name}, machine class "
            f"{self.target.machine_class()['key']}; trials {self.trials} (per task {self.per_task or 'auto'}), "
            f"{where}, seed {self.seed}\ndatabase: {self.database}"
        )


@dataclass
class TuneResult:
    database: Path
    tasks: int
    trials_run: int
    trials_before: int
    failed: int
    seconds: float
    interrupted: bool
    estimate_ms: Optional[float]
    per_task: list = field(default_factory=list)
    warm_from: Optional[str] = None  # classes (comma-separated) whose schedules seeded this run
    warm_measured: int = 0  # of trials_run: its schedules re-measured here
    warm_nearest: int = 0  # of warm_measured: other models' schedules from this class's log
    seeds_measured: int = 0  # of trials_run: our GEMM micro-kernels (tune/seeds.py)
    retimed: int = 0  # earlier records re-measured before this run (not in trials_run)
    out_of_time: bool = False  # stopped by --minutes
    journal: Optional[Path] = None  # when each batch landed (seconds, trials): tuning curves

    @property
    def trials_per_minute(self) -> float:
        return self.trials_run / (self.seconds / 60) if self.seconds > 0 else 0.0
