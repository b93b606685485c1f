"""int8 by ONNX Runtime's post-training static quantizer (``quantize_static``, QDQ format).

Why this quantizer: it is maintained with the runtime that serves as the int8 reference and peer
(the same QDQ file runs in ONNX Runtime, so tvmnet's output is checked against the quantized
model run by its own runtime), TVM's Relax ONNX frontend reads its QuantizeLinear and
DequantizeLinear nodes, and it quantizes weights per output channel (symmetric int8) and
activations per tensor (uint8, with the zero point that ReLU needs), which is the scheme the
integer kernels are written for. PyTorch's PT2E (torchao) is the other candidate; its exported
program has quantized ops that TVM's torch frontend cannot import.

BatchNorm is folded before quantizing: ``torch.onnx.export`` of the eval-mode model folds it into
the convolutions (no BatchNormalization node reaches the quantizer; checked in the tests).
"""

from __future__ import annotations

import logging
from pathlib import Path

from tvmnet.core.errors import ToolchainError, UsageError, err_line
from tvmnet.quantize.calibration import Calibration

log = logging.getLogger(__name__)

QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}


def is_quantized(onnx_model) -> bool:
    """Whether an ONNX model already holds quantization nodes."""
    return any(n.op_type in QUANT_OPS for n in onnx_model.graph.node)


def quantizer_info() -> dict:
    import onnxruntime

    return {
        "name": "onnxruntime.quantization.quantize_static",
        "version": onnxruntime.__version__,
        "format": "QDQ",
        "weights": "int8, per output channel, symmetric",
        "activations": "uint8, per tensor (asymmetric, MinMax calibration)",
    }


def quantize(f32_onnx: Path, out: Path, calibration: Calibration, input_name: str) -> dict:
    """Quantize ``f32_onnx`` into the QDQ model ``out``; returns the metadata of the quantization."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(f32_onnx))
    if is_quantized(model):
        raise UsageError(f"{f32_onnx} is already quantized; compile it as it is (--onnx) without quantizing again")
    if any(n.op_type == "BatchNormalization" for n in model.graph.node):
        raise ToolchainError(f"{f32_onnx} still has BatchNormalization; export the model in eval mode")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter({input_name: x} for x in calibration.inputs)

        def get_next(self):
            return next(self.items, None)

    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = Path(out).with_name(Path(out).stem + ".pre.onnx")  # shapes inferred, the graph tidied (ORT's advice)
        quant_pre_process(str(f32_onnx), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    except Exception as err:
        raise ToolchainError(f"ONNX Runtime could not quantize the model: {err_line(err)}") from err
    return dict(quantizer_info(), calibration=calibration.to_json(), calibration_note=calibration.describe())


def output_step(qdq_onnx: Path) -> float:
    """The scale of the last QuantizeLinear before the graph output: one quantization step of the
    output (the validation's tolerance)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(qdq_onnx))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    name = model.graph.output[0].name
    for _ in range(len(model.graph.node)):
        node = producers.get(name)
        if node is None:
            break
        if node.op_type in ("DequantizeLinear", "QuantizeLinear"):
            scale = inits.get(node.input[1])
            if scale is not None:
                return float(scale.max())
        name = node.input[0]
    raise UsageError("the int8 model has no QuantizeLinear before its output; rebuild it with --precision int8")
