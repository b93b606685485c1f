"""A model quantized for ``--precision int8``: the zoo model exported to ONNX (BatchNorm folded
into the convolutions) or the given ``--onnx`` model, quantized by ``qdq.quantize`` on the
calibration inputs; an ``--onnx`` model that is already quantized is taken as it is. Shared by
``compile`` and ``tune`` (the kernels a tune measures are the ones compile builds)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Tuple

from tvmnet.core.errors import TargetError, UsageError
from tvmnet.core.paths import sha256

REFERENCE = "reference_int8.onnx"  # the quantized model's name in an artifact


def quantized_onnx(opts, workdir: Path, say: Callable[[str], None]) -> Tuple[Path, dict]:
    """(the QDQ model to import, the ``quantization`` metadata; ``model_info`` and ``onnx_path`` in it
    are taken out by the caller)."""
    from tvmnet.frontend import export_onnx, load_onnx, onnx_info, onnx_input, zoo_info
    from tvmnet.quantize import calibration as cal
    from tvmnet.quantize.qdq import is_quantized, quantize

    spec = opts.target
    if not spec.is_cpu:
        raise TargetError(
            f"--precision int8 builds for CPU targets (x86, rpi3b, rpi4, rpi5); target {spec.name} is "
            f"{spec.device}: compile it with --precision fp32"
        )
    if opts.onnx is not None:
        model = load_onnx(opts.onnx)
        name, shape, _ = onnx_input(model)
        model_info = onnx_info(opts.onnx, shape)
        if is_quantized(model):
            if opts.calibration is not None or opts.calibration_samples:
                raise UsageError(f"{opts.onnx} is already quantized; drop --calibration/--calibration-samples")
            say(f"{opts.onnx} is already quantized: compiled as it is (no calibration here)")
            meta = {"name": "given (the --onnx model was already quantized)", "format": "as given"}
            return Path(opts.onnx), _meta(meta, Path(opts.onnx), model_info)
        f32 = Path(opts.onnx)
    else:
        from tvmnet.models import build_model

        name, shape = "input", opts.model.input_shape
        say("exporting the model to ONNX (BatchNorm folded into the convolutions)")
        f32 = export_onnx(build_model(opts.model), shape, workdir / "fp32.onnx")
        model_info = zoo_info(opts.model)
    if opts.calibration is not None:
        calib = cal.from_dir(opts.calibration, shape, limit=opts.calibration_samples)
    else:
        calib = cal.seeded(shape, opts.calibration_samples or cal.DEFAULT_SAMPLES)
    say(
        f"quantizing to int8 with ONNX Runtime (QDQ; weights per channel, activations per tensor) on {calib.describe()}"
    )
    out = workdir / REFERENCE
    return out, _meta(quantize(f32, out, calib, name), out, model_info)


def _meta(meta: dict, path: Path, model_info: dict) -> dict:
    return dict(meta, reference=REFERENCE, reference_sha256=sha256(path), onnx_path=str(path), model_info=model_info)
