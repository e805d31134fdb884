"""Estimates beside measured data points (``plan/data/calibration.toml``), as a ratio.

``ratio = measured / estimate``. The estimates are upper bounds, so a ratio below 1 is the
fraction of the bound a real system reached; a ratio above 1 means a database number (or the
model) is too pessimistic.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from ue8m0.plan.chips import ChipDB, tomllib
from ue8m0.plan.estimate import Workload, estimate
from ue8m0.plan.precision import compute_path, get_format
from ue8m0.plan.presets import load_model

PHASE_UNITS = {"prefill": "tok/s/chip", "decode": "tok/s/chip", "gemm": "TFLOPS"}


@dataclass(frozen=True)
class Point:
    """One measured data point and what the planner estimates for it."""

    id: str
    src: str
    system: str
    chip: str
    model: str | None
    format: str
    phase: str
    measured: float
    estimate: float | None
    assumed: str

    @property
    def ratio(self) -> float | None:
        """``measured / estimate`` (None when there is no estimate)."""
        return None if not self.estimate else self.measured / self.estimate

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {**self.__dict__, "unit": PHASE_UNITS[self.phase], "ratio": self.ratio}


def _estimate(raw: dict[str, Any], db: ChipDB) -> float | None:
    chip = db.get(str(raw["chip"]))
    fmt = get_format(str(raw["format"]))
    if raw["phase"] == "gemm":
        return compute_path(chip, fmt).peak_tflops
    if "batch" not in raw and raw["phase"] == "decode":
        return None
    model = load_model(str(raw["model"]))
    wl = Workload(int(raw.get("batch", 1)), int(raw["context"]), raw.get("num_chips"))
    est = estimate(model, chip, fmt, wl)
    if raw["phase"] == "prefill":
        return est.prefill_tok_s_per_chip
    return est.decode_tok_s_per_chip


def calibration_points(db: ChipDB) -> list[Point]:
    """Every shipped data point with its estimate."""
    text = (resources.files("ue8m0.plan") / "data" / "calibration.toml").read_text("utf-8")
    points = []
    for raw in tomllib.loads(text)["point"]:
        points.append(
            Point(
                id=str(raw["id"]),
                src=str(raw["src"]),
                system=str(raw["system"]),
                chip=str(raw["chip"]),
                model=raw.get("model"),
                format=str(raw["format"]),
                phase=str(raw["phase"]),
                measured=float(raw["measured"]),
                estimate=_estimate(raw, db),
                assumed=str(raw.get("assumed", "")),
            )
        )
    return points
