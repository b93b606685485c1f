"""Model zoo and `info`: the paper's Table 1 structure and its published counts."""

import json

import pytest
import torch
from conftest import run_cli

from tvmnet.core.config import ModelConfig
from tvmnet.models import MobileNetV1, build_model, layer_table
from tvmnet.models.info import model_info

pytestmark = pytest.mark.unit

# MobileNets paper, Tables 6 and 7 (1.0-224 in Table 8 too): (alpha, resolution) -> (million
# mult-adds, million parameters), as published (rounded there to these digits).
PAPER = {
    (1.0, 224): (569, 4.2),
    (0.75, 224): (325, 2.6),
    (0.5, 224): (149, 1.3),
    (0.25, 224): (41, 0.5),
    (1.0, 192): (418, 4.2),
    (1.0, 160): (290, 4.2),
    (1.0, 128): (186, 4.2),
}


@pytest.mark.parametrize("alpha,res", sorted(PAPER))
def test_totals_match_paper(alpha, res):
    info = model_info(ModelConfig(alpha, res))
    macs, params = PAPER[(alpha, res)]
    # The paper rounds inconsistently (568.7 -> 569 but 290.7 -> 290): within 1 M of its figure.
    assert abs(info["macs"] / 1e6 - macs) <= 1.0, info["macs"]
    assert round(info["params"] / 1e6, 1) == params


def test_table_matches_pytorch_model():
    cfg = ModelConfig(0.5, 160)
    rows = layer_table(cfg)
    model = build_model(cfg)
    assert sum(r.params for r in rows) == sum(p.numel() for p in model.parameters())
    # 1 full conv + 13 x (dw + pw) + pool + fc, shapes as in Table 1
    assert [r.kind for r in rows[:3]] == ["conv 3x3", "conv dw 3x3", "conv 1x1"]
    assert len([r for r in rows if r.kind == "conv dw 3x3"]) == 13
    assert rows[-3].out_shape == (512, 5, 5)  # 1024 * 0.5 channels, 160 / 32
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 27 and sum(1 for c in convs if c.groups > 1) == 13
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 160, 160)).shape == (2, 1000)


def test_seeded_init_is_live_and_deterministic():
    cfg = ModelConfig(0.25, 64)
    a, b = build_model(cfg), build_model(cfg)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert torch.equal(ya, yb)
    # the output depends on the input, far beyond fp32 noise (not just the FC bias)
    assert (ya[0] - ya[1]).abs().max() > 0.05
    bns = [m for m in a.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(bn.running_var.sub(1).abs().max() > 1e-3 for bn in bns)
    assert all(bn.running_mean.abs().max() > 1e-3 for bn in bns)


def test_weights_roundtrip_and_mismatch(tmp_path):
    m = MobileNetV1(0.25)
    path = tmp_path / "w.pt"
    torch.save(m.state_dict(), path)
    loaded = build_model(ModelConfig(0.25, 64, weights=path))
    assert torch.equal(loaded.fc.weight, m.fc.weight)
    from tvmnet.core.errors import WeightsError

    with pytest.raises(WeightsError, match="--alpha"):
        build_model(ModelConfig(0.5, 64, weights=path))


def test_info_cli_json():
    res = run_cli("info", "--alpha", "0.5", "--resolution", "160", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert isinstance(data["macs"], int) and isinstance(data["params"], int)
    assert data["macs"] == sum(l["macs"] for l in data["layers"])
    res = run_cli("info", "--alpha", "0.5", "--resolution", "160")
    assert "block13.pw" in res.stdout and "total" in res.stdout
