"""The one table that maps exceptions to the one-line messages and exit codes the CLI prints."""

from __future__ import annotations

from collections.abc import Callable

from ue8m0 import errors

_Formatter = Callable[[BaseException], str]

#: exception type -> (formatter, exit code); the first matching entry wins, so subclasses go first
ERROR_TABLE: list[tuple[type[BaseException], _Formatter, int]] = [
    (errors.CheckpointError, str, 2),
    (errors.NonFiniteError, str, 3),
    (errors.FormatNameError, str, 2),
    (errors.BlockError, str, 2),
    (errors.PlanError, str, 2),
    (errors.InputError, str, 2),
    (errors.InputTypeError, str, 2),
    (errors.Ue8m0Error, str, 1),
    (
        FileNotFoundError,
        lambda e: f"{getattr(e, 'filename', '') or e}: no such file or directory",
        2,
    ),
    (IsADirectoryError, lambda e: f"{getattr(e, 'filename', '') or e}: is a directory", 2),
    (PermissionError, lambda e: f"{getattr(e, 'filename', '') or e}: permission denied", 2),
    (KeyboardInterrupt, lambda e: "interrupted", 130),
]


def _lookup(exc: BaseException) -> tuple[_Formatter, int] | None:
    for kind, formatter, code in ERROR_TABLE:
        if isinstance(exc, kind):
            return formatter, code
    return None


def format_error(exc: BaseException) -> str | None:
    """The one-line message for ``exc``, or None when it is not an error the table knows."""
    found = _lookup(exc)
    if found is None:
        return None
    return " ".join(found[0](exc).split("\n"))


def exit_code_for(exc: BaseException) -> int:
    """The process exit code for ``exc`` (1 when the table does not know it)."""
    found = _lookup(exc)
    return 1 if found is None else found[1]
