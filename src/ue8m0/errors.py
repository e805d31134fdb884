"""Exceptions raised by ue8m0. Each names what is wrong and where; the CLI prints them as one line."""

from __future__ import annotations


class Ue8m0Error(Exception):
    """Base class of the errors this package raises on purpose."""


class FormatNameError(Ue8m0Error, ValueError):
    """An unknown element format, scale rule or policy name."""


class BlockError(Ue8m0Error, ValueError):
    """A block shape that is not usable (non-positive size, wrong arity)."""


class InputError(Ue8m0Error, ValueError):
    """An input array the quantizer cannot take (empty, 0-d/1-d, wrong shape)."""


class InputTypeError(Ue8m0Error, TypeError):
    """An input whose dtype or type the quantizer cannot take (integers, objects)."""


class NonFiniteError(Ue8m0Error, ValueError):
    """A NaN or Inf in the input under ``nonfinite="raise"``.

    ``block`` is the index of the first bad block in the scale grid and ``value`` the first
    non-finite value found in it.
    """

    def __init__(self, message: str, block: tuple[int, ...], value: float) -> None:
        super().__init__(message)
        self.block = block
        self.value = value

    @classmethod
    def in_block(
        cls, value: float, block: tuple[int, ...], grid: tuple[int, ...]
    ) -> NonFiniteError:
        """The error for the first non-finite ``value`` of scale-grid block ``block``."""
        return cls(
            f"non-finite value {value} in block {block} of the scale grid {grid} "
            "(pass nonfinite='propagate' to encode it as NaN)",
            block,
            value,
        )

    def __reduce__(self) -> tuple[type, tuple[str, tuple[int, ...], float]]:
        return (type(self), (str(self), self.block, self.value))


class OptionError(Ue8m0Error, ValueError):
    """Options that conflict or that the chosen layout cannot store.

    ``option`` is the library's name of the option (``scale_dtype``, ``layout``, ...); the CLI
    shows it as its flag.
    """

    def __init__(self, option: str, reason: str, override: str | None = None) -> None:
        tail = f" ({override} writes it anyway)" if override else ""
        super().__init__(f"{option}: {reason}{tail}")
        self.option = option
        self.reason = reason
        #: the option that would accept it anyway (the CLI names its flag)
        self.override = override

    def __reduce__(self) -> tuple[type, tuple[str, str, str | None]]:
        return (type(self), (self.option, self.reason, self.override))


class PlanError(Ue8m0Error, ValueError):
    """A planning input that cannot be used; the message names it and what to use instead."""


class CheckpointError(Ue8m0Error, ValueError):
    """A checkpoint problem: names the file, the tensor (when there is one) and the reason."""

    def __init__(self, path: object, reason: str, tensor: str | None = None) -> None:
        where = f"{path}" if tensor is None else f"{path}: tensor {tensor!r}"
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.tensor = tensor
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[object, str, str | None]]:
        # rebuilt from its fields, so it crosses process boundaries (worker pools) intact
        return (type(self), (self.path, self.reason, self.tensor))
