"""The reference an artifact is checked against: the PyTorch model (zoo) or ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tvmnet.build.artifact import Artifact
from tvmnet.core.config import ModelConfig
from tvmnet.core.errors import ArtifactError, WeightsError
from tvmnet.core.paths import sha256


def reference_model_config(artifact: Artifact) -> ModelConfig:
    m = artifact.model
    weights = m.get("weights")
    if weights:
        if not Path(weights).is_file():
            raise WeightsError(
                f"the artifact was built from weights {weights}, which no longer exist; "
                "put them back or rebuild the artifact"
            )
        if sha256(Path(weights)) != m.get("weights_sha256"):
            raise WeightsError(
                f"weights {weights} changed since the artifact was built; rebuild it with `tvmnet compile`"
            )
    return ModelConfig(
        alpha=m["alpha"],
        resolution=m["resolution"],
        num_classes=m["num_classes"],
        batch=artifact.input_shape[0],
        weights=Path(weights) if weights else None,
        seed=m.get("seed") or 0,
    )


class Reference:
    """Callable ``x -> logits`` in float32: the model the artifact is checked against (PyTorch
    for a zoo model, on the GPU for a CUDA artifact where PyTorch has CUDA; ONNX Runtime for an
    ONNX model; for int8, ONNX Runtime's integer kernels on the artifact's quantized model).
    ``also`` lists (label, callable) reported beside the check with no pass condition."""

    def __init__(self, artifact: Artifact, threads: int = 0):
        m = artifact.model
        self.also = []
        quant = artifact.metadata.get("quantization")
        if artifact.metadata.get("precision") == "int8" and quant:
            path = artifact.path / quant["reference"]
            if not path.is_file() or sha256(path) != quant.get("reference_sha256"):
                raise ArtifactError(
                    f"the quantized reference {path} is missing or changed since the artifact was built; "
                    "rebuild it with `tvmnet compile --precision int8`"
                )
            # ONNX Runtime's own integer kernels on the quantized model (QLinearConv and kin, as it
            # deploys it); the QDQ graph as the ONNX operators define it (float between the quantize
            # steps) rounds some ties the other way, which 28 layers can grow: reported beside it
            self._run = _Onnx(path, threads)
            self.name = "ONNX Runtime's integer kernels on the same quantized model (int8 QDQ)"
            self.also.append(
                (
                    "the QDQ graph as the ONNX operators define it (ONNX Runtime, graph optimisations off)",
                    _Onnx(path, threads, optimize=False),
                )
            )
            if m["source"] == "zoo":
                self.also.append(("the fp32 PyTorch model", _Torch(artifact, threads, cuda=False)))
        elif m["source"] == "zoo":
            self._run = _Torch(artifact, threads, cuda=artifact.target.get("device") == "cuda")
            self.name = "PyTorch (CUDA, TF32 off)" if self._run.device == "cuda" else "PyTorch"
        elif m["source"] == "onnx":
            path = Path(m["onnx"])
            if not path.is_file():
                raise WeightsError(
                    f"the artifact was built from ONNX model {path}, which no longer exists; put it back"
                )
            self._run = _Onnx(path, threads)
            self.name = "ONNX Runtime"
        else:
            raise ArtifactError(f"artifact {artifact.path} has unknown model source {m['source']!r}; rebuild it")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._run(x)


class _Onnx:
    """An ONNX model in ONNX Runtime on the CPU (``optimize=False``: graph optimisations off)."""

    def __init__(self, path: Path, threads: int, optimize: bool = True):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if not optimize:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]


class _Torch:
    """The zoo model in PyTorch, fp32; with ``cuda``, on the GPU where PyTorch has CUDA."""

    def __init__(self, artifact: Artifact, threads: int, cuda: bool):
        import torch

        from tvmnet.models import build_model

        if threads:
            torch.set_num_threads(threads)
        self.model = build_model(reference_model_config(artifact))
        self.device = "cpu"
        if cuda and torch.cuda.is_available():
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            self.device = "cuda"
            self.model = self.model.to("cuda")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            tx = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device)
            return self.model(tx).cpu().numpy()
