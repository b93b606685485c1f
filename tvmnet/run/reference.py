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
    """Callable ``x -> logits`` in float32 on the CPU."""

    def __init__(self, artifact: Artifact, threads: int = 0):
        m = artifact.model
        self.kind = m["source"]
        self.device = "cpu"
        if self.kind == "zoo":
            import torch

            from tvmnet.models import build_model

            if threads:
                torch.set_num_threads(threads)
            self.model = build_model(reference_model_config(artifact))
            self.name = "PyTorch"
            if artifact.target.get("device") == "cuda" and torch.cuda.is_available():
                # a CUDA artifact is compared with PyTorch on the GPU where PyTorch has CUDA
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cuda.matmul.allow_tf32 = False
                self.device = "cuda"
                self.model = self.model.to("cuda")
                self.name = "PyTorch (CUDA, TF32 off)"
        elif self.kind == "onnx":
            import onnxruntime as ort

            path = Path(m["onnx"])
            if not path.is_file():
                raise WeightsError(
                    f"the artifact was built from ONNX model {path}, which no longer exists; put it back"
                )
            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name
            self.name = "ONNX Runtime"
        else:
            raise ArtifactError(f"artifact {artifact.path} has unknown model source {self.kind!r}; rebuild it")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "zoo":
            import torch

            with torch.no_grad():
                tx = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device)
                return self.model(tx).cpu().numpy()
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]
