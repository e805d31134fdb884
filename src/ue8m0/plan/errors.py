"""The error the planner raises on purpose: unknown chip or model, bad chip file, bad option."""

from __future__ import annotations

from ue8m0.errors import PlanError

__all__ = ["PlanError"]
