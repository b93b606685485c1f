"""An int8 build's graph, shared by ``compile --precision int8`` and ``tune --precision int8`` (the
kernels a tune measures are the ones compile builds): the model quantized (``tvmnet/quantize/``),
imported as QDQ, its layers rewritten into integer arithmetic in NHWC (``QdqToInteger("NHWC")``),
and, on a CPU with AVX-512 VNNI, its 1x1 convolutions turned into the VNNI GEMM kernel
(``PointwiseToVnni``). The fp32 layout pass and GEMM lowering are not used: on a QDQ graph they
move the quantization axis and the bias wrongly (outputs off by 14 output steps on 0.25-96).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Callable

from tvmnet.core.errors import UsageError


def graph_options(opts):
    """``opts`` (compile's or tune's) with the layout and GEMM lowering an int8 build takes."""
    if opts.layout == "NCHW":
        raise UsageError("--precision int8 builds in NHWC; drop --layout NCHW")
    return dataclasses.replace(opts, layout="NHWC", gemm=False)


def import_int8(opts, workdir: Path, say: Callable[[str], None]):
    """(Relax module in integers, input name, input shape, the ``quantization`` metadata). The
    quantized model is written in ``workdir``; ``quant["onnx_path"]`` names it, ``quant["passes"]``
    the graph passes that ran (for ``metadata.json``'s list)."""
    from tvmnet.frontend import import_model
    from tvmnet.passes import arm_kernel, vnni_kernel
    from tvmnet.passes.pointwise_to_arm import PointwiseToArm
    from tvmnet.passes.pointwise_to_vnni import PointwiseToVnni
    from tvmnet.passes.qdq_to_integer import QdqToInteger
    from tvmnet.passes.stem_to_vnni import StemToVnni
    from tvmnet.quantize.model import quantized_onnx

    onnx_path, quant = quantized_onnx(opts, workdir, say)
    target = opts.target.tvm_target()
    vnni = vnni_kernel.has_vnni(target)
    say(
        "importing the quantized model (QDQ) and rewriting its layers into integer arithmetic"
        + (" (the stem and the 1x1 convolutions: VNNI kernels)" if vnni else "")
        + (" (the 1x1 convolutions: tvmnet's ARM GEMM)" if arm_kernel.kind_for(target) else "")
    )
    mod, input_name, input_shape, _ = import_model(opts.model, onnx_path)
    mod = QdqToInteger("NHWC")(mod)
    arm = arm_kernel.kind_for(target)
    quant["passes"] = ["QdqToInteger(NHWC)"]
    if vnni:
        with target:
            mod = StemToVnni()(PointwiseToVnni()(mod))
        quant["passes"] += ["PointwiseToVnni", "StemToVnni"]
        quant["kernels"] = "stem and pointwise: tvmnet's VNNI kernels (passes/vnni_stem.py, passes/vnni_kernel.py)"
    elif arm:
        with target:
            mod = PointwiseToArm(arm)(mod)
        used = Counter(
            kind.split("_")[1]
            for g in mod.get_global_vars()
            for kind in arm_kernel.KIND_OF
            if g.name_hint.startswith(kind + "_")
        )
        how = " + ".join(sorted(used)) or "none"
        quant["passes"] += [f"PointwiseToArm({how})"]
        quant["kernels"] = "pointwise: tvmnet's ARM GEMM (passes/arm_kernel.py), " + ", ".join(
            f"{n} on {k}" for k, n in sorted(used.items())
        )
    else:
        quant["kernels"] = "generic"
    return mod, input_name, input_shape, quant


def lowered_int8(cfg, spec, workdir: Path, onnx=None):
    """(the int8 build's lowered module, the ``quantization`` metadata) as ``compile --precision
    int8`` makes them, quiet: the zoo model quantized on seeded samples, or ``onnx`` (an already
    quantized model, such as an artifact's reference) as it is. Shared by the estimate, the
    calibration and ``scripts/kernel_profile.py``."""
    from types import SimpleNamespace

    from tvmnet.passes import pipeline

    opts = SimpleNamespace(model=cfg, target=spec, onnx=onnx, calibration=None, calibration_samples=None)
    mod, _, _, quant = import_int8(opts, Path(workdir), lambda msg: None)
    return pipeline.lower_to_tir(mod, spec, gemm=False, layout="NHWC"), quant
