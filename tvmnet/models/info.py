"""``info``: the per-layer table of MobileNet v1 for a width and resolution."""

from __future__ import annotations

from tvmnet.core.config import ModelConfig
from tvmnet.models import layer_table


def model_info(config: ModelConfig) -> dict:
    rows = layer_table(config)
    return {
        "model": config.name,
        "alpha": config.alpha,
        "resolution": config.resolution,
        "num_classes": config.num_classes,
        "macs": sum(r.macs for r in rows),
        "params": sum(r.params for r in rows),
        "layers": [
            {
                "name": r.name,
                "type": r.kind,
                "stride": r.stride,
                "input": list(r.in_shape),
                "output": list(r.out_shape),
                "macs": r.macs,
                "params": r.params,
            }
            for r in rows
        ],
    }


def format_table(info: dict) -> str:
    def shape(s):
        return "x".join(str(d) for d in s)

    lines = [
        f"MobileNet v1  alpha={info['alpha']:g}  resolution={info['resolution']}  classes={info['num_classes']}",
        f"{'layer':<11}{'type':<17}{'stride':>6}  {'input -> output':<24}{'mult-adds':>14}{'params':>11}",
    ]
    for r in info["layers"]:
        lines.append(
            f"{r['name']:<11}{r['type']:<17}{r['stride']:>6}  {shape(r['input']) + ' -> ' + shape(r['output']):<24}"
            f"{r['macs']:>14,}{r['params']:>11,}"
        )
    lines.append(f"{'total':<58}{info['macs']:>14,}{info['params']:>11,}")
    lines.append(f"= {info['macs'] / 1e6:.1f} million mult-adds, {info['params'] / 1e6:.2f} million parameters")
    return "\n".join(lines)
