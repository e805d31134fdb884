"""Plan plots draw on their own Figure: matplotlib's global backend is left alone, and a missing
matplotlib is the one-line MissingExtraError every extra gives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ue8m0.extras import MissingExtraError
from ue8m0.plan.chips import builtin_db
from ue8m0.plan.estimate import plan
from ue8m0.plan.precision import FORMATS
from ue8m0.plan.presets import load_model

SCRIPT = """
import sys
import matplotlib
matplotlib.use("svg")
from ue8m0.plan.chips import builtin_db
from ue8m0.plan.estimate import plan
from ue8m0.plan.plots import write_plots
from ue8m0.plan.precision import FORMATS
from ue8m0.plan.presets import load_model
db = builtin_db()
est = plan(load_model("llama-3.1-8b"), [db.get("h20")], [FORMATS["bf16"]], [1, 8], 1024)
paths = write_plots(est, __import__("pathlib").Path(sys.argv[1]))
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules, len(paths))
"""


def test_plots_leave_the_global_backend_unchanged(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["svg", "False", "2"]
    assert (tmp_path / "plan_decode.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_matplotlib_is_reported_by_extras_require(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ue8m0.plan.plots import write_plots

    db = builtin_db()
    est = plan(load_model("llama-3.1-8b"), [db.get("h20")], [FORMATS["bf16"]], [1], 1024)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"ue8m0\[plot\]"):
        write_plots(est, tmp_path)
