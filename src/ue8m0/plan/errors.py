"""The error the planner raises on purpose: unknown chip or model, bad chip file, bad option."""

from __future__ import annotations

from ue8m0.errors import Ue8m0Error


class PlanError(Ue8m0Error, ValueError):
    """A planning input that cannot be used; the message names it and what to use instead."""
