"""The one table that maps exceptions to the one-line messages and exit codes the CLI prints.

Every message goes through :func:`ue8m0.printable.printable`: a newline, ESC or bidi control in
a tensor name or a path is shown escaped, so an error can never forge a line or drive the
terminal.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from ue8m0 import errors
from ue8m0.printable import printable

_Formatter = Callable[[BaseException], str]


def _os_error(reason: str) -> _Formatter:
    """``PATH: reason`` of an ``OSError`` (both paths of a rename; a ``write`` names none)."""

    def format_os_error(exc: BaseException) -> str:
        paths = [p for p in (getattr(exc, "filename", None), getattr(exc, "filename2", None)) if p]
        return f"{' -> '.join(str(p) for p in paths)}: {reason}" if paths else reason

    return format_os_error


#: library option name -> the CLI flag that sets it, where the two differ
FLAG_OF_OPTION = {"layout": "--format", "include/exclude": "--include/--exclude"}


def option_flag(option: str) -> str:
    """The CLI flag of a library option name (``scale_dtype`` -> ``--scale-dtype``): flag
    names live here, not in the library."""
    return FLAG_OF_OPTION.get(option, "--" + option.replace("_", "-"))


def _option_message(exc: BaseException) -> str:
    assert isinstance(exc, errors.OptionError)
    tail = f" ({option_flag(exc.override)} writes it anyway)" if exc.override else ""
    return f"{option_flag(exc.option)}: {exc.reason}{tail}"


#: exception type -> (formatter, exit code); the first matching entry wins, so subclasses go first
ERROR_TABLE: list[tuple[type[BaseException], _Formatter, int]] = [
    (errors.CheckpointError, str, 2),
    (errors.OptionError, _option_message, 2),
    (errors.NonFiniteError, str, 3),
    (errors.FormatNameError, str, 2),
    (errors.BlockError, str, 2),
    (errors.PlanError, str, 2),
    (errors.InputError, str, 2),
    (errors.InputTypeError, str, 2),
    (errors.Ue8m0Error, str, 1),
    (FileNotFoundError, _os_error("no such file or directory"), 2),
    (IsADirectoryError, _os_error("is a directory"), 2),
    (NotADirectoryError, _os_error("not a directory"), 2),
    (FileExistsError, _os_error("already exists"), 2),
    (PermissionError, _os_error("permission denied"), 2),
    (KeyboardInterrupt, lambda e: "interrupted", 130),
]

#: ``OSError.errno`` -> (formatter, exit code), for the errors no subclass of ``OSError`` names;
#: looked up before :data:`ERROR_TABLE`
ERRNO_TABLE: dict[int, tuple[_Formatter, int]] = {
    errno.ENOSPC: (_os_error("no space left on device"), 2),
    errno.EDQUOT: (_os_error("disk quota exceeded"), 2),
    errno.EFBIG: (_os_error("file too large for the file system"), 2),
    errno.EROFS: (_os_error("read-only file system"), 2),
    errno.ENAMETOOLONG: (_os_error("file name too long"), 2),
    errno.ELOOP: (_os_error("too many levels of symbolic links"), 2),
}


def _lookup(exc: BaseException) -> tuple[_Formatter, int] | None:
    if isinstance(exc, OSError) and exc.errno in ERRNO_TABLE:
        return ERRNO_TABLE[exc.errno]
    for kind, formatter, code in ERROR_TABLE:
        if isinstance(exc, kind):
            return formatter, code
    return None


def format_error(exc: BaseException) -> str | None:
    """The one-line, printable message for ``exc``, or None when the table does not know it."""
    found = _lookup(exc)
    if found is None:
        return None
    return printable(found[0](exc))


def exit_code_for(exc: BaseException) -> int:
    """The process exit code for ``exc`` (1 when the table does not know it)."""
    found = _lookup(exc)
    return 1 if found is None else found[1]
