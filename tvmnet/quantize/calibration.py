"""Calibration inputs for int8: images from a folder, resized and normalised as MobileNet
expects, or seeded samples. Each comes with a one-line description for metadata.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from tvmnet.core.errors import UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # ImageNet, as torchvision's MobileNets are trained
STD = np.array([0.229, 0.224, 0.225], np.float32)
DEFAULT_SAMPLES = 32
SEED = 0


@dataclass
class Calibration:
    inputs: List[np.ndarray]  # each (1, 3, H, W) float32
    source: str  # "images" or "seeded samples"
    detail: dict

    def describe(self) -> str:
        if self.source == "images":
            return f"{len(self.inputs)} images from {self.detail['dir']}"
        return f"{len(self.inputs)} seeded samples (normal, seed {self.detail['seed']}; no images given)"

    def to_json(self) -> dict:
        return {"source": self.source, "count": len(self.inputs), **self.detail}


def preprocess(path: Path, resolution: int) -> np.ndarray:
    """An image as MobileNet expects it: shorter side to resolution/0.875, centre crop, RGB in
    [0, 1], ImageNet mean/std, NCHW."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            short = round(resolution / 0.875)
            w, h = im.size
            scale = short / min(w, h)
            im = im.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - resolution) // 2, (h - resolution) // 2
            im = im.crop((left, top, left + resolution, top + resolution))
            arr = np.asarray(im, np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as err:
        raise UsageError(
            f"calibration file {path} is not a readable JPEG or PNG image ({err.__class__.__name__}); "
            "remove it from the folder or pass --calibration-samples N instead"
        ) from err
    return ((arr - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)


def from_dir(folder: Path, input_shape, limit: Optional[int] = None) -> Calibration:
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"--calibration {folder}: no such folder; pass a folder of JPEG/PNG images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise UsageError(f"--calibration {folder}: the folder is empty; put JPEG/PNG images in it")
    strangers = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if strangers:
        raise UsageError(
            f"--calibration {folder}: {len(strangers)} file(s) are not .jpg/.jpeg/.png (first: {strangers[0]}); "
            "the folder must hold images only"
        )
    if limit:
        files = files[:limit]
    _, channels, height, width = input_shape
    if channels != 3 or height != width:
        raise UsageError(f"calibration images need a square RGB input; this model takes {tuple(input_shape)}")
    inputs = [preprocess(p, height) for p in files]
    return Calibration(inputs, "images", {"dir": str(folder.resolve()), "files": len(files)})


def seeded(input_shape, samples: int = DEFAULT_SAMPLES, seed: int = SEED) -> Calibration:
    if samples < 1:
        raise UsageError(f"--calibration-samples {samples}: need at least 1")
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(tuple(input_shape)).astype(np.float32) for _ in range(samples)]
    return Calibration(inputs, "seeded samples", {"seed": seed, "distribution": "standard normal"})
