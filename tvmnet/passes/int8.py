"""An int8 build's graph, shared by ``compile --precision int8`` and ``tune --precision int8`` (the
kernels a tune measures are the ones compile builds): the model quantized (``tvmnet/quantize/``),
imported as QDQ, its layers rewritten into integer arithmetic (``QdqToInteger``), lowered in NCHW
with the 1x1 convolutions kept as conv2d. The layout pass and the GEMM lowering move the
quantization axis and the bias of a QDQ graph wrongly (outputs off by 14 output steps on 0.25-96).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from tvmnet.core.errors import UsageError


def graph_options(opts):
    """``opts`` (compile's or tune's) with the layout and GEMM lowering an int8 build takes."""
    if opts.layout == "NHWC":
        raise UsageError("--precision int8 builds in NCHW for now; drop --layout NHWC")
    return dataclasses.replace(opts, layout="NCHW", gemm=False)


def import_int8(opts, workdir: Path, say: Callable[[str], None]):
    """(Relax module in integers, input name, input shape, the ``quantization`` metadata). The
    quantized model is written in ``workdir``; ``quant["onnx_path"]`` names it."""
    from tvmnet.frontend import import_model
    from tvmnet.passes.qdq_to_integer import QdqToInteger
    from tvmnet.quantize.model import quantized_onnx

    onnx_path, quant = quantized_onnx(opts, workdir, say)
    say("importing the quantized model (QDQ) and rewriting its layers into integer arithmetic")
    mod, input_name, input_shape, _ = import_model(opts.model, onnx_path)
    return QdqToInteger()(mod), input_name, input_shape, quant
