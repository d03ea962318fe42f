"""Numbers that say whether a backend computes what the torch reference computes.

Per stage: the largest absolute difference and the cosine similarity of the flattened outputs.
The gate follows the precision: fp32 must agree to 1e-4 max abs; fp16 / bf16 engines must reach
cosine 0.999 (the bar GR00T's TensorRT verification uses).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FP32_MAX_ABS = 1e-4
LOW_PRECISION_MIN_COSINE = 0.999


@dataclass(frozen=True)
class StageParity:
    stage: str
    max_abs: float
    cosine: float
    shape: tuple[int, ...]
    criterion: str
    passed: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    a64 = np.asarray(a, dtype=np.float64).ravel()
    b64 = np.asarray(b, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a64, b64) / (na * nb))


def compare_stage(stage: str, reference: np.ndarray, candidate: np.ndarray, precision: str) -> StageParity:
    """Compare one stage's output; a shape mismatch or a non-finite value fails outright."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        return StageParity(
            stage, float("inf"), 0.0, tuple(cand.shape), f"shape {ref.shape} expected", passed=False
        )
    if not np.isfinite(cand).all():
        return StageParity(stage, float("inf"), 0.0, tuple(cand.shape), "finite values", passed=False)
    max_abs = float(np.max(np.abs(ref - cand))) if ref.size else 0.0
    cos = cosine_similarity(ref, cand)
    if precision == "fp32":
        criterion = f"max_abs <= {FP32_MAX_ABS:g}"
        passed = max_abs <= FP32_MAX_ABS
    elif precision in ("fp16", "bf16"):
        criterion = f"cosine >= {LOW_PRECISION_MIN_COSINE}"
        passed = cos >= LOW_PRECISION_MIN_COSINE
    else:
        raise ValueError(f"unknown precision {precision!r}")
    return StageParity(stage, max_abs, cos, tuple(ref.shape), criterion, passed)


@dataclass
class ParityReport:
    backend: str
    precision: str
    checkpoint: str
    steps: int
    stages: list[StageParity]

    @property
    def passed(self) -> bool:
        return bool(self.stages) and all(s.passed for s in self.stages)

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "precision": self.precision,
            "checkpoint": self.checkpoint,
            "steps": self.steps,
            "passed": self.passed,
            "stages": [s.to_dict() for s in self.stages],
        }

    def table(self):
        from rich.table import Table

        t = Table(title=f"{self.backend} ({self.precision}, {self.steps} steps) vs torch fp32 reference")
        for col in ("stage", "shape", "max abs", "cosine", "criterion", "result"):
            t.add_column(col)
        for s in self.stages:
            t.add_row(
                s.stage,
                "×".join(map(str, s.shape)),
                f"{s.max_abs:.3e}",
                f"{s.cosine:.7f}",
                s.criterion,
                "[green]pass" if s.passed else "[red]FAIL",
            )
        return t
