"""Frontends: PyTorch (torch.export) and ONNX -> Relax IRModule with weights as constants."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from tvmnet.core.config import ModelConfig
from tvmnet.core.errors import WeightsError, err_line
from tvmnet.core.paths import sha256

if TYPE_CHECKING:
    import tvm

log = logging.getLogger(__name__)

INPUT_NAME = "input"


def from_torch(model, input_shape) -> "tvm.IRModule":
    """Import an eval-mode PyTorch module through ``torch.export``.

    Weights become Relax constants (``keep_params_as_input=False``) so that BatchNorm can be
    folded into them at compile time and MetaSchedule can pre-pack them.
    """
    import torch
    from tvm.relax.frontend.torch import from_exported_program

    example = torch.zeros(input_shape, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        exported = torch.export.export(model.eval(), (example,))
        return from_exported_program(exported, keep_params_as_input=False)


def load_onnx(path: Path):
    import onnx

    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"ONNX model {path} does not exist; export one with `tvmnet export-onnx` or torch.onnx.export"
        )
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:
        raise WeightsError(
            f"cannot read ONNX model {path}: {err_line(err, last=False)}; pass a valid .onnx file"
        ) from err
    return model


def onnx_input(model) -> tuple:
    """(name, shape, dtype) of the single graph input of an ONNX model."""
    import onnx

    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise WeightsError(f"ONNX model has {len(inputs)} inputs; tvmnet compiles image classifiers with exactly one")
    inp = inputs[0]
    dims = []
    for d in inp.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    return inp.name, tuple(dims), str(np.dtype(dtype))


def from_onnx(path: Path) -> tuple:
    """Import an ONNX model; returns (IRModule, input shape, input name)."""
    from tvm.relax.frontend.onnx import from_onnx as _from_onnx

    model = load_onnx(path)
    name, shape, dtype = onnx_input(model)
    if dtype != "float32":
        raise WeightsError(f"ONNX model input {name} is {dtype}; tvmnet compiles float32 models")
    if len(shape) != 4 or shape[1] != 3:
        raise WeightsError(
            f"ONNX model input {name} has shape {shape}; tvmnet expects an NCHW image batch (N, 3, H, W)"
        )
    try:
        mod = _from_onnx(model, shape_dict={name: shape}, dtype_dict={name: dtype}, keep_params_in_input=False)
    except Exception as err:
        raise WeightsError(f"TVM cannot import ONNX model {path}: {err_line(err, last=False)}") from err
    return mod, shape, name


def export_onnx(model, input_shape, path: Path) -> Path:
    """Export a PyTorch model to ONNX (opset 17, static shape) with input name ``input``."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(input_shape, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=["logits"],
            opset_version=17,
            dynamo=False,
        )
    return path


def onnx_info(onnx: Path, shape) -> dict:
    """The metadata of a model compiled from an ONNX file."""
    return {
        "source": "onnx",
        "onnx": str(Path(onnx).resolve()),
        "onnx_sha256": sha256(Path(onnx)),
        "alpha": None,
        "resolution": shape[2],
        "num_classes": None,
        "seed": None,
    }


def zoo_info(model: ModelConfig) -> dict:
    """The metadata of a zoo model (what the reference rebuilds it from)."""
    return {
        "source": "zoo",
        "alpha": model.alpha,
        "resolution": model.resolution,
        "num_classes": model.num_classes,
        "seed": model.seed,
        "weights": str(model.weights.resolve()) if model.weights else None,
        "weights_sha256": sha256(model.weights) if model.weights else None,
    }


def import_model(model: ModelConfig, onnx: Optional[Path] = None):
    """Returns (Relax IRModule, input name, input shape, model metadata dict)."""
    if onnx is not None:
        mod, shape, name = from_onnx(onnx)
        return mod, name, shape, onnx_info(onnx, shape)
    from tvmnet.models import build_model

    torch_model = build_model(model)
    mod = from_torch(torch_model, model.input_shape)
    return mod, str(mod["main"].params[0].name), model.input_shape, zoo_info(model)
