"""Published ImageNet accuracy of MobileNet v1 per (alpha, resolution, precision), with its source.

tvmnet never measures accuracy (its models carry a seeded initialisation, not trained
weights); these are the figures of the trained models, read from
``tvmnet/data/mobilenet_v1_accuracy.json``:

- ``tf-slim``: the TensorFlow model garden table (``research/slim/nets/mobilenet_v1.md``,
  float checkpoints ``mobilenet_v1_2018_02_22``), top-1 and top-5 for all 16 pairs of
  alpha 1.0/0.75/0.5/0.25 x resolution 224/192/160/128. ``sweep`` and ``pick`` use this one
  for fp32 (``PRIMARY``), since it covers every pair;
- ``tf-slim-quant``: the same table's ``_quant`` rows (``PRIMARY_INT8``), the figures ``sweep`` and
  ``pick`` give int8 points. Those checkpoints were trained with quantization-aware training
  (TensorFlow's contrib/quantize) and converted by TFLite to uint8; tvmnet's int8 is post-training
  quantization of the same architecture, so the figure is the published accuracy of an int8
  MobileNet of that shape, not a measurement of tvmnet's build;
- ``paper``: Howard et al. 2017 (arXiv:1704.04861), Table 6 (width multiplier at 224) and
  Table 7 (resolution at alpha 1.0), top-1 only, fp32; shown beside it where present.

An entry of the data file without ``precision`` is fp32. A pair no source lists (alpha 0.6,
resolution 96...) at a precision has no published figure: ``None``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Dict, List, Optional

PRIMARY = "tf-slim"  # fp32
PRIMARY_INT8 = "tf-slim-quant"
PAPER = "paper"
PRECISIONS = ("fp32", "int8")
FP32 = "fp32"
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
    precision: str = FP32  # of the model the figure is of

    def cite(self) -> str:
        return f"{source_name(self.source)}, {self.where}"


def _key(alpha: float, resolution: int, precision: str = FP32) -> tuple:
    return round(float(alpha), 6), int(resolution), precision


def primary(precision: str = FP32) -> str:
    """The source ``sweep`` and ``pick`` use for a precision (the one that covers all 16 pairs)."""
    return {FP32: PRIMARY, "int8": PRIMARY_INT8}[precision]


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
            e.get("precision", FP32),
        )
        entries.setdefault(_key(pub.alpha, pub.resolution, pub.precision), {})[pub.source] = pub
    return {"sources": doc["sources"], "entries": entries}


def sources() -> Dict[str, dict]:
    """Source id -> name, citation, url, coverage."""
    return dict(_load()["sources"])


def source_name(source: str) -> str:
    return _load()["sources"][source]["name"]


def citation(source: str = PRIMARY) -> str:
    info = _load()["sources"][source]
    return f"{info['citation']} <{info['url']}>"


def url(source: str) -> str:
    return _load()["sources"][source]["url"]


def description(source: str) -> Optional[str]:
    """What the source's figures are of, where the data file says more than the citation (int8)."""
    return _load()["sources"][source].get("description")


def source_precision(source: str) -> str:
    return _load()["sources"][source].get("precision", FP32)


def published(alpha: float, resolution: int, precision: str = FP32) -> Dict[str, Published]:
    """Every published figure for the pair at the precision, by source (empty: no published figure)."""
    return dict(_load()["entries"].get(_key(alpha, resolution, precision), {}))


def lookup(alpha: float, resolution: int, source: str = PRIMARY) -> Optional[Published]:
    """The figure of one source for the pair (at the source's precision), or None."""
    return _load()["entries"].get(_key(alpha, resolution, source_precision(source)), {}).get(source)


def figure(alpha: float, resolution: int, precision: str = FP32) -> Optional[Published]:
    """The figure ``sweep`` and ``pick`` use for the pair at the precision (its ``primary`` source), or None."""
    return published(alpha, resolution, precision).get(primary(precision))


def table(source: Optional[str] = None) -> List[Published]:
    """Every figure (of one source), in the data file's order."""
    return [
        p for by_src in _load()["entries"].values() for p in by_src.values() if source is None or p.source == source
    ]
