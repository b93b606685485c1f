"""Published ImageNet accuracy of MobileNet v1 per (alpha, resolution), with its source.

tvmnet never measures accuracy (its models carry a seeded initialisation, not trained
weights); these are the figures of the trained models, read from
``tvmnet/data/mobilenet_v1_accuracy.json``:

- ``tf-slim``: the TensorFlow model garden table (``research/slim/nets/mobilenet_v1.md``,
  float checkpoints ``mobilenet_v1_2018_02_22``), top-1 and top-5 for all 16 pairs of
  alpha 1.0/0.75/0.5/0.25 x resolution 224/192/160/128. ``sweep`` and ``pick`` use this one
  (``PRIMARY``), since it covers every pair;
- ``paper``: Howard et al. 2017 (arXiv:1704.04861), Table 6 (width multiplier at 224) and
  Table 7 (resolution at alpha 1.0), top-1 only; shown beside it where present.

A pair neither source lists (alpha 0.6, resolution 96...) has no published figure: ``None``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Dict, List, Optional

PRIMARY = "tf-slim"
PAPER = "paper"
DATA_FILE = "mobilenet_v1_accuracy.json"
NO_FIGURE = "no published figure"


@dataclass(frozen=True)
class Published:
    """One published figure: ImageNet accuracy in percent of one trained model."""

    alpha: float
    resolution: int
    source: str  # "tf-slim" or "paper"
    top1: float
    top5: Optional[float]
    mult_adds_m: Optional[float]  # as the source gives them (million)
    params_m: Optional[float]
    where: str  # checkpoint name or table in the source

    def cite(self) -> str:
        return f"{source_name(self.source)}, {self.where}"


def _key(alpha: float, resolution: int) -> tuple:
    return round(float(alpha), 6), int(resolution)


@functools.lru_cache(maxsize=1)
def _load() -> dict:
    text = resources.files("tvmnet").joinpath("data", DATA_FILE).read_text()
    doc = json.loads(text)
    entries: Dict[tuple, Dict[str, Published]] = {}
    for e in doc["entries"]:
        pub = Published(
            float(e["alpha"]),
            int(e["resolution"]),
            e["source"],
            float(e["top1"]),
            None if e.get("top5") is None else float(e["top5"]),
            e.get("mult_adds_m"),
            e.get("params_m"),
            e["where"],
        )
        entries.setdefault(_key(pub.alpha, pub.resolution), {})[pub.source] = pub
    return {"sources": doc["sources"], "entries": entries}


def sources() -> Dict[str, dict]:
    """Source id -> name, citation, url, coverage."""
    return dict(_load()["sources"])


def source_name(source: str) -> str:
    return _load()["sources"][source]["name"]


def citation(source: str = PRIMARY) -> str:
    info = _load()["sources"][source]
    return f"{info['citation']} <{info['url']}>"


def published(alpha: float, resolution: int) -> Dict[str, Published]:
    """Every published figure for the pair, by source (empty: no published figure)."""
    return dict(_load()["entries"].get(_key(alpha, resolution), {}))


def lookup(alpha: float, resolution: int, source: str = PRIMARY) -> Optional[Published]:
    """The figure of one source for the pair, or None."""
    return _load()["entries"].get(_key(alpha, resolution), {}).get(source)


def table(source: Optional[str] = None) -> List[Published]:
    """Every figure (of one source), in the data file's order."""
    return [
        p for by_src in _load()["entries"].values() for p in by_src.values() if source is None or p.source == source
    ]
