"""``compile --precision int8``: the model quantized (``tvmnet/quantize/``) before the passes.

The quantized QDQ model is what TVM imports (``QdqToInteger`` then rewrites its layers into
integer arithmetic), and it also travels with the artifact as the validation's reference
(``reference_int8.onnx``).
"""

from __future__ import annotations

from tvmnet.core.errors import UsageError
from tvmnet.quantize.model import REFERENCE, quantized_onnx

__all__ = ["REFERENCE", "quantized_onnx", "graph_options"]


def graph_options(opts):
    """The graph passes an int8 build takes today: NCHW and 1x1 convolutions kept as conv2d. The
    layout pass and the GEMM lowering move the quantization axis and the bias of the QDQ graph
    wrongly (outputs off by 14 output steps on 0.25-96); the integer passes replace them."""
    import dataclasses

    if opts.layout == "NHWC":
        raise UsageError("--precision int8 builds in NCHW for now; drop --layout NHWC")
    return dataclasses.replace(opts, layout="NCHW", gemm=False)
