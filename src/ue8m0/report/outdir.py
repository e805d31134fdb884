"""Where ``ue8m0 report --out DIR`` may write: checked before the report is computed.

Refused, each as one line: DIR inside the checkpoint directory being reported on (or the
checkpoint itself: the report must never write into its source; beside a single-file source
is fine, over it is not), DIR that is a symbolic link, a file, a
dangling link or under a file, and an existing ``index.html``, ``report.json`` or plot in DIR
that is a symbolic link (writing through it would overwrite whatever it points at). The page
and the JSON are then written under a temporary name and renamed (a link made meanwhile is
replaced, not followed).
"""

from __future__ import annotations

import os
from pathlib import Path

from ue8m0.checkpoint.source import check_output_dir
from ue8m0.checkpoint.writer import temp_path
from ue8m0.errors import CheckpointError

#: the files the report writes into DIR besides the plots
REPORT_FILES = ("index.html", "report.json")


def check_report_out(src: Path, out: Path, plot_names: tuple[str, ...] = ()) -> None:
    """Refuse ``out`` as the report's directory for source ``src`` (see the module)."""
    if out.is_symlink():
        raise CheckpointError(out, "--out is a symbolic link: refused (name the directory itself)")
    check_output_dir(out, "--out")
    real = out.resolve()
    if src.is_dir():
        src_dir = src.resolve()
        if real == src_dir or src_dir in real.parents:
            raise CheckpointError(
                out,
                f"--out is inside the checkpoint {src_dir}: refused (the report never writes "
                "there)",
            )
    elif any((real / name) == src.resolve() for name in (*REPORT_FILES, *plot_names)):
        raise CheckpointError(out, f"--out would overwrite the source {src}: refused")
    for name in (*REPORT_FILES, *plot_names):
        if (out / name).is_symlink():
            raise CheckpointError(
                out / name, "is a symbolic link: refused (it would be written through)"
            )


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename."""
    tmp = temp_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
