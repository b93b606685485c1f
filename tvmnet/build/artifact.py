"""The deployable artifact: a directory with the compiled library and ``metadata.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tvmnet.core.errors import ArtifactError
from tvmnet.core.paths import sha256  # noqa: F401 - re-exported: the artifact's digests

FORMAT = "tvmnet-artifact/1"
LIBRARY = "model.so"
METADATA = "metadata.json"


@dataclass(frozen=True)
class Artifact:
    path: Path
    metadata: dict

    @property
    def library(self) -> Path:
        return self.path / self.metadata.get("library", LIBRARY)

    @property
    def target(self) -> dict:
        return self.metadata["target"]

    @property
    def input_shape(self) -> tuple:
        return tuple(self.metadata["input"]["shape"])

    @property
    def input_name(self) -> str:
        return self.metadata["input"]["name"]

    @property
    def model(self) -> dict:
        return self.metadata["model"]

    def summary(self) -> str:
        m, t, tun = self.model, self.target, self.metadata.get("tuning", {})
        what = (
            f"MobileNet v1 alpha={m['alpha']:g} resolution={m['resolution']}"
            if m["source"] == "zoo"
            else f"ONNX {m.get('onnx')}"
        )
        kernels = f"{tun.get('kernels_tuned', 0)}/{tun.get('kernels_total', '?')}"
        how = (
            "kernels scheduled with another architecture's records"
            if "transfer" in str(tun.get("match"))
            else "tuned kernels"
        )
        precision = ", int8 (QDQ)" if self.metadata.get("precision") == "int8" else ""
        own = str(self.metadata.get("quantization", {}).get("kernels", ""))
        if "VNNI" in own:
            precision += ", stem and 1x1 convs on tvmnet's VNNI kernels"
        elif "ARM GEMM" in own:
            precision += ", 1x1 convs on tvmnet's ARM int8 GEMM (" + own.split("), ", 1)[-1] + ")"
        return (
            f"{self.path}: {what}, target {t['name']} ({t['arch']}, {t['device']}){precision}, "
            f"input {self.input_shape}, {how} {kernels}"
        )


def is_artifact_dir(path: Path) -> bool:
    meta = Path(path) / METADATA
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def load_artifact(path) -> Artifact:
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"artifact directory {path} does not exist; build one with `tvmnet compile -o {path}`")
    meta_path = path / METADATA
    if not meta_path.is_file():
        raise ArtifactError(
            f"{path} has no {METADATA}, so it is not a tvmnet artifact; build one with `tvmnet compile -o DIR`"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{meta_path} is corrupt ({err}); rebuild the artifact with `tvmnet compile`") from err
    if meta.get("format") != FORMAT:
        raise ArtifactError(
            f"{meta_path} has format {meta.get('format')!r}, expected {FORMAT}; rebuild with `tvmnet compile`"
        )
    art = Artifact(path, meta)
    if not art.library.is_file():
        raise ArtifactError(f"artifact {path} lacks its library {art.library.name}; rebuild it with `tvmnet compile`")
    return art
