"""MobileNet v1 exactly as in Table 1 of Howard et al., "MobileNets" (2017).

A full 3x3 convolution (stride 2), then 13 depthwise-separable blocks (depthwise 3x3 + BN +
ReLU, then pointwise 1x1 + BN + ReLU), global average pooling and a fully connected layer.
The model returns logits (the paper's final softmax is left to the user).

The width multiplier ``alpha`` scales every layer's channel count (the first conv included);
the resolution multiplier is given as the input size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch
from torch import nn

from tvmnet.core.config import ModelConfig
from tvmnet.core.errors import WeightsError, err_line

#: (stride, output channels) of the 13 depthwise-separable blocks, from Table 1.
#: The paper lists the 13th depthwise conv as "s2", a known typo: the 7x7 map stays 7x7.
BLOCKS = [
    (1, 64),
    (2, 128),
    (1, 128),
    (2, 256),
    (1, 256),
    (2, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (2, 1024),
    (1, 1024),
]
STEM_CHANNELS = 32


def scaled_channels(channels: int, alpha: float) -> int:
    """Channels of a layer under width multiplier alpha (at least 1)."""
    return max(1, int(round(channels * alpha)))


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=False)


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.dw = ConvBNReLU(cin, cin, 3, stride, groups=cin)
        self.pw = ConvBNReLU(cin, cout, 1, 1)

    def forward(self, x):
        return self.pw(self.dw(x))


class MobileNetV1(nn.Module):
    def __init__(self, alpha: float = 1.0, num_classes: int = 1000):
        super().__init__()
        self.alpha = alpha
        cin = scaled_channels(STEM_CHANNELS, alpha)
        self.stem = ConvBNReLU(3, cin, 3, 2)
        blocks = []
        for stride, cout in BLOCKS:
            cout = scaled_channels(cout, alpha)
            blocks.append(DepthwiseSeparable(cin, cout, stride))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _live_init(model: MobileNetV1, resolution: int, seed: int) -> None:
    """Seeded weights whose activations stay O(1) through all 28 layers.

    PyTorch's default init shrinks activations ~8x per block, so the output would be the FC
    bias whatever the input, and a numerics check would pass with every conv wrong. Instead:
    random BN affine parameters, then running statistics set from a forward pass on random
    inputs (batch statistics, momentum 1), so every BN is non-trivial (folding is really
    tested) and every layer's output is O(1).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.2)
                module.momentum = 1.0
            elif isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / module.in_features**0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
        model.train()
        model(torch.randn((16, 3, resolution, resolution), generator=gen))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = 0.1
    model.eval()


def load_weights(model: nn.Module, path: Path, config: Optional[ModelConfig] = None) -> None:
    """Load a PyTorch state_dict checkpoint (``weights_only=True``) into ``model``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist; pass a state_dict saved with torch.save(model.state_dict(), PATH)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt files
        raise WeightsError(
            f"cannot read weights {path}: {err_line(err, last=False)}; pass a state_dict saved with torch.save"
        ) from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(
            f"weights {path} is not a state_dict of tensors; save it with torch.save(model.state_dict(), PATH)"
        )
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise WeightsError(
            f"weights {path} do not fit tvmnet's MobileNet v1: {len(missing)} missing key(s) (e.g. {missing[:1]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:1]}); export them from tvmnet.models.MobileNetV1"
        )
    for key, tensor in own.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            hint = ""
            if config is not None:
                hint = f" (built for alpha={config.alpha:g}, classes={config.num_classes})"
            raise WeightsError(
                f"weights {path}: {key} has shape {tuple(state[key].shape)} but the model{hint} expects "
                f"{tuple(tensor.shape)}; pass the --alpha/--num-classes the checkpoint was trained with"
            )
    model.load_state_dict(state)


def build_model(config: ModelConfig) -> MobileNetV1:
    """The PyTorch reference model for ``config``, in eval mode."""
    model = MobileNetV1(config.alpha, config.num_classes)
    if config.weights is not None:
        load_weights(model, config.weights, config)
    else:
        _live_init(model, config.resolution, config.seed)
    return model.eval()


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str
    stride: int
    in_shape: tuple
    out_shape: tuple
    macs: int
    params: int


def layer_table(config: ModelConfig) -> List[Layer]:
    """Per-layer shapes, multiply-adds and parameters, computed analytically (batch 1).

    Multiply-adds count convolutions and the fully connected layer, as in the paper.
    Parameters count every learned tensor (conv and FC weights, FC bias, BN scale and shift).
    """
    alpha, res = config.alpha, config.resolution
    rows: List[Layer] = []
    c, h = 3, res

    def conv(name, kind, cin, cout, k, stride, groups):
        nonlocal h
        hout = (h + 2 * (k // 2) - k) // stride + 1
        macs = k * k * (cin // groups) * cout * hout * hout
        params = k * k * (cin // groups) * cout + 2 * cout  # weights + BN gamma/beta
        rows.append(Layer(name, kind, stride, (cin, h, h), (cout, hout, hout), macs, params))
        h = hout

    cout = scaled_channels(STEM_CHANNELS, alpha)
    conv("stem", "conv 3x3", c, cout, 3, 2, 1)
    c = cout
    for i, (stride, cout) in enumerate(BLOCKS, 1):
        cout = scaled_channels(cout, alpha)
        conv(f"block{i}.dw", "conv dw 3x3", c, c, 3, stride, c)
        conv(f"block{i}.pw", "conv 1x1", c, cout, 1, 1, 1)
        c = cout
    rows.append(Layer("pool", "avg pool", 1, (c, h, h), (c, 1, 1), 0, 0))
    rows.append(
        Layer(
            "fc",
            "fully connected",
            1,
            (c,),
            (config.num_classes,),
            c * config.num_classes,
            c * config.num_classes + config.num_classes,
        )
    )
    return rows
