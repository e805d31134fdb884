"""Entry point of the ``ue8m0`` command: wiring only.

Each subcommand lives in its own module of this package and is imported only when it is run
(``COMMANDS`` below), so ``ue8m0 --help`` and short commands start fast. Errors are turned into a
one-line message and an exit code by :mod:`ue8m0.cli.errors`.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from ue8m0.cli.errors import exit_code_for, format_error

#: subcommand name -> "module:attribute" of a click command, imported lazily
COMMANDS: dict[str, str] = {
    "demo": "ue8m0.cli.demo:demo",
    "eval": "ue8m0.cli.eval:eval_command",
    "quantize": "ue8m0.cli.quantize:quantize",
    "dequantize": "ue8m0.cli.dequantize:dequantize",
    "requantize": "ue8m0.cli.requantize:requantize",
    "relayout": "ue8m0.cli.relayout:relayout",
    "verify": "ue8m0.cli.verify:verify",
    "inspect": "ue8m0.cli.inspect:inspect_cmd",
    "report": "ue8m0.cli.report:report",
    "plan": "ue8m0.cli.plan:plan",
}


class LazyGroup(click.Group):
    """A click group whose commands are imported only when they are needed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ue8m0")
def cli() -> None:
    """FP8 with power-of-two (UE8M0) block scales, on any CPU.

    \b
    Examples:
      ue8m0 demo                       # the whole pipeline on the bundled MiniLM
      ue8m0 quantize SRC DST           # BF16 checkpoint -> FP8 e4m3 + UE8M0 128x128 scales
      ue8m0 verify DST --against SRC   # check a converted checkpoint end to end
      ue8m0 requantize SRC DST         # FP32-scale FP8 checkpoint -> UE8M0 scales, with a report
      ue8m0 relayout SRC DST --to mxfp8  # UE8M0 128x128 -> MXFP8 1x32, lossless
      ue8m0 report SRC --out /tmp/rep  # what each recipe costs, per tensor, with plots
      ue8m0 plan --model deepseek-v3.1 --chip h20 --chip b200
      ue8m0 COMMAND --help             # options and examples of one command

    Set UE8M0_DEBUG=1 to see full tracebacks.
    """


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; known errors become one line on stderr and a non-zero exit."""
    args = sys.argv[1:] if argv is None else argv
    if not args:  # a bare `ue8m0` asks for help: give it, and succeed
        click.echo(cli.get_help(click.Context(cli, info_name="ue8m0")))
        return
    try:
        # without standalone mode click returns (not raises) a command's ctx.exit(code)
        rc = cli.main(args=argv, prog_name="ue8m0", standalone_mode=False)
    except click.exceptions.Abort:  # click's name for an interrupt (Ctrl-C) or a closed stdin
        click.echo(f"ue8m0: error: {format_error(KeyboardInterrupt())}", err=True)
        sys.exit(exit_code_for(KeyboardInterrupt()))
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        if os.environ.get("UE8M0_DEBUG"):
            raise
        message = format_error(exc)
        if message is None:
            raise
        click.echo(f"ue8m0: error: {message}", err=True)
        sys.exit(exit_code_for(exc))
    if isinstance(rc, int) and rc:
        sys.exit(rc)


if __name__ == "__main__":  # pragma: no cover
    main()
