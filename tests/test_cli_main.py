"""The CLI entry point: lazy commands, one-line errors from the table, exit codes."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from ue8m0.cli import main as cli_main
from ue8m0.cli.errors import ERROR_TABLE, exit_code_for, format_error
from ue8m0.errors import CheckpointError, NonFiniteError, PlanError


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ue8m0.cli.main", *args], capture_output=True, text=True, timeout=120
    )


def test_every_listed_command_imports() -> None:
    for name, target in cli_main.COMMANDS.items():
        command = cli_main.cli.get_command(click.Context(cli_main.cli), name)
        assert isinstance(command, click.Command), target
        assert command.help, f"{name} has no help text"


def test_help_lists_commands_with_examples() -> None:
    result = _run("--help")
    assert result.returncode == 0
    assert "Examples:" in result.stdout
    for name in cli_main.COMMANDS:
        assert name in result.stdout


def test_known_error_is_one_line_with_exit_code() -> None:
    result = _run("plan", "--model", "no-such-model", "--chip", "h20")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ue8m0: error: unknown model 'no-such-model'")


def test_command_exit_code_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    @click.command()
    def failing() -> None:
        click.get_current_context().exit(4)

    monkeypatch.setitem(cli_main.COMMANDS, "failing", "tests_failing:failing")
    monkeypatch.setattr(cli_main.LazyGroup, "get_command", lambda self, ctx, name: failing)
    with pytest.raises(SystemExit) as info:
        cli_main.main(["failing"])
    assert info.value.code == 4


def test_error_table() -> None:
    assert format_error(CheckpointError("a/b.safetensors", "truncated", "w")) == (
        "a/b.safetensors: tensor 'w': truncated"
    )
    assert exit_code_for(NonFiniteError("nan in block (0, 1)", (0, 1), float("nan"))) == 3
    assert exit_code_for(PlanError("x")) == 2
    assert format_error(RuntimeError("boom")) is None
    kinds = [k for k, _, _ in ERROR_TABLE]
    for i, kind in enumerate(kinds):  # a subclass never hides behind its base
        assert not any(issubclass(kind, earlier) for earlier in kinds[:i]), kind


def test_bare_ue8m0_prints_help_and_succeeds() -> None:
    result = _run()
    assert result.returncode == 0 and "Commands:" in result.stdout and not result.stderr
