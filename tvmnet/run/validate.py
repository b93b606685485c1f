"""``validate``: run an artifact on seeded inputs and compare with the reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import numpy as np

from tvmnet.build.artifact import Artifact
from tvmnet.core.errors import UsageError

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-4


@dataclass
class Report:
    samples: int
    max_abs: float
    max_rel: float
    top1_agree: int
    input_sensitivity: float  # max |out(x0) - out(x1)|, must exceed the tolerance by far
    rtol: float
    atol: float
    reference: str
    where: str
    failures: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)  # reported, no pass condition (int8: agreement with fp32)

    @property
    def ok(self) -> bool:
        return not self.failures

    def lines(self) -> List[str]:
        return [
            f"validated on {self.where} against {self.reference}, {self.samples} seeded input(s)",
            f"  max abs error   {self.max_abs:.3e}   (atol {self.atol:g})",
            f"  max rel error   {self.max_rel:.3e}   (rtol {self.rtol:g}; |ours-ref| / max|ref|)",
            f"  top-1 agreement {self.top1_agree}/{self.samples}",
            f"  input sensitivity {self.input_sensitivity:.3e} (outputs of different inputs differ by this much)",
            *(f"  {n}" for n in self.notes),
            "  PASS" if self.ok else "  FAIL: " + "; ".join(self.failures),
        ]

    def to_json(self) -> dict:
        return {
            "samples": self.samples,
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "top1_agree": self.top1_agree,
            "input_sensitivity": self.input_sensitivity,
            "rtol": self.rtol,
            "atol": self.atol,
            "ok": self.ok,
            "reference": self.reference,
            "where": self.where,
            "failures": self.failures,
            "notes": self.notes,
        }


def seeded_inputs(shape, samples: int, seed: int = 0) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(samples)]


def default_tolerances(artifact: Artifact, rtol: Optional[float], atol: Optional[float]) -> Tuple[float, float]:
    """fp32: 1e-4 and 1e-4. int8: at most one quantization step of the output (its scale in the
    quantized model), no relative part: the same integer arithmetic may round a value the other way
    at a tie or by the float scale's last bit, never by more than a step."""
    if artifact.metadata.get("precision") == "int8":
        from tvmnet.quantize.qdq import output_step

        step = output_step(artifact.path / artifact.metadata["quantization"]["reference"])
        return (0.0 if rtol is None else rtol), (step * 1.001 if atol is None else atol)
    return (DEFAULT_RTOL if rtol is None else rtol), (DEFAULT_ATOL if atol is None else atol)


def compare(
    run: Callable,
    reference,
    artifact: Artifact,
    samples: int = 4,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    seed: int = 0,
    where: str = "cpu",
) -> Report:
    """Run ``run(x)`` and ``reference(x)`` on the same seeded inputs; the report says whether they agree.
    Tolerances left None take the artifact's precision's defaults (``default_tolerances``)."""
    rtol, atol = default_tolerances(artifact, rtol, atol)
    if samples < 2:
        raise UsageError(f"--samples {samples}: need at least 2 (to check the output depends on the input)")
    if rtol < 0 or atol < 0:
        raise UsageError("--rtol and --atol must be non-negative")
    inputs = seeded_inputs(artifact.input_shape, samples, seed)
    ours = [np.asarray(run(x), dtype=np.float64) for x in inputs]
    refs = [np.asarray(reference(x), dtype=np.float64) for x in inputs]
    max_abs = max(float(np.max(np.abs(o - r))) for o, r in zip(ours, refs))
    max_rel = max(float(np.max(np.abs(o - r)) / max(float(np.max(np.abs(r))), 1e-30)) for o, r in zip(ours, refs))
    within = all(np.allclose(o, r, rtol=rtol, atol=atol) for o, r in zip(ours, refs))
    top1 = sum(
        int(np.array_equal(o.reshape(o.shape[0], -1).argmax(1), r.reshape(r.shape[0], -1).argmax(1)))
        for o, r in zip(ours, refs)
    )
    sensitivity = float(np.max(np.abs(refs[0] - refs[1])))
    failures = []
    if not within:
        failures.append(f"outputs differ beyond rtol={rtol:g}/atol={atol:g}")
    if top1 != samples:
        failures.append(f"top-1 disagrees on {samples - top1} input(s)")
    tol = atol + rtol * float(np.max(np.abs(refs[0])))
    # fp32: 100 tolerances; int8, whose tolerance is a whole output step: 10 steps
    if sensitivity <= (10 if artifact.metadata.get("precision") == "int8" else 100) * tol:
        failures.append(
            f"the reference output barely depends on the input ({sensitivity:.2e}), so this check "
            "cannot tell a right model from a wrong one; use weights with live activations"
        )
    notes = []
    for label, other in getattr(reference, "also", []):  # int8: reported beside, no pass condition
        theirs = [np.asarray(other(x), dtype=np.float64) for x in inputs]
        agree = sum(int(o.argmax() == t.argmax()) for o, t in zip(ours, theirs))
        worst = max(float(np.max(np.abs(o - t))) for o, t in zip(ours, theirs))
        notes.append(f"against {label}: top-1 {agree}/{samples}, max abs {worst:.3e} (reported, no pass condition)")
    if notes:
        notes.append("with random weights the logits lie close together: these are no accuracy figures")
    return Report(samples, max_abs, max_rel, top1, sensitivity, rtol, atol, reference.name, where, failures, notes)
