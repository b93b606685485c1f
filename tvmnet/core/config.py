"""Resolved, validated configuration objects (frozen dataclasses)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tvmnet.core.errors import UsageError

#: Five stride-2 stages: the input must be a multiple of 32 and at least 32.
MIN_RESOLUTION = 32


def check_alpha(alpha: float) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError) as err:
        raise UsageError(
            f"alpha {alpha!r} is not a number; use a width multiplier in (0, 1], e.g. --alpha 0.5"
        ) from err
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise UsageError(f"alpha {alpha} is outside (0, 1]; use a width multiplier such as 1.0, 0.75, 0.5 or 0.25")
    return value


def check_resolution(resolution: int) -> int:
    try:
        value = int(resolution)
        if value != float(resolution):
            raise ValueError
    except (TypeError, ValueError) as err:
        raise UsageError(
            f"resolution {resolution!r} is not an integer; use a multiple of 32 such as 224, 192, 160 or 128"
        ) from err
    if value < MIN_RESOLUTION or value % 32:
        raise UsageError(
            f"resolution {value} is not a positive multiple of 32 (at least {MIN_RESOLUTION}, "
            "for MobileNet's five stride-2 stages); use e.g. 224, 192, 160 or 128"
        )
    return value


@dataclass(frozen=True)
class ModelConfig:
    """Which MobileNet v1 to build: width multiplier, input size, classes, weights."""

    alpha: float = 1.0
    resolution: int = 224
    num_classes: int = 1000
    batch: int = 1
    weights: Optional[Path] = None
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "alpha", check_alpha(self.alpha))
        object.__setattr__(self, "resolution", check_resolution(self.resolution))
        if int(self.num_classes) < 1:
            raise UsageError(f"num_classes {self.num_classes} must be at least 1")
        if int(self.batch) < 1:
            raise UsageError(f"batch {self.batch} must be at least 1")
        if self.weights is not None:
            object.__setattr__(self, "weights", Path(self.weights))

    @property
    def name(self) -> str:
        return f"mobilenet_v1_{self.alpha:g}_{self.resolution}"

    @property
    def input_shape(self) -> tuple:
        return (self.batch, 3, self.resolution, self.resolution)

    def display(self) -> str:
        src = str(self.weights) if self.weights else f"seeded init (seed {self.seed})"
        return (
            f"model: MobileNet v1 alpha={self.alpha:g} resolution={self.resolution} "
            f"classes={self.num_classes} batch={self.batch} weights={src}"
        )
