"""Output helpers shared by the checkpoint commands: progress bars, tables, JSON, options."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from ue8m0.checkpoint.progress import Progress
from ue8m0.checkpoint.registry import SERVING_ENGINES
from ue8m0.policies import DEFAULT_EPS, ScaleSearch
from ue8m0.printable import printable

F = TypeVar("F", bound=Callable[..., Any])


def output_options(func: F) -> F:
    """``--quiet`` and ``--json``."""
    func = click.option(
        "--json", "as_json", is_flag=True, help="Print a JSON summary on stdout (and nothing else)."
    )(func)
    func = click.option(
        "-q", "--quiet", is_flag=True, help="No progress bars and no summary, only errors."
    )(func)
    return func


def workers_option(over: str) -> Callable[[F], F]:
    """``--workers N``: worker processes over ``over`` (shards, tensors)."""
    return click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help=f"Worker processes over {over}; the cores are shared out as kernel threads "
        "(1: one process using every core; UE8M0_NUM_THREADS overrides).",
    )


def run_options(func: F) -> F:
    """``--dry-run``, ``--workers N``, ``--ray ADDRESS``, ``--quiet`` and ``--json``: every
    converting command's. ``--ray`` reaches :func:`run_or_print_plan` through the click
    context, so the commands need not pass it along."""
    func = output_options(func)
    func = click.option(
        "--ray",
        "ray_address",
        metavar="ADDRESS",
        expose_value=False,
        callback=_keep_ray_address,
        help="Run the shards as tasks on this Ray cluster (auto: the one RAY_ADDRESS or "
        "'ray start' points at; needs pip install 'ue8m0[ray]'). SRC and DST must be on "
        "storage every node mounts at the same path; a DST another node cannot see is "
        "refused. Same bytes and manifest as a local run.",
    )(func)
    func = workers_option("shards")(func)
    func = click.option(
        "--dry-run", is_flag=True, help="Print the plan (tensors, bytes, shards) only."
    )(func)
    return func


def _keep_ray_address(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    ctx.meta[RAY_ADDRESS_KEY] = value


RAY_ADDRESS_KEY = "ue8m0.ray_address"


def scale_search_option(func: F) -> F:
    """``--scale-search none|mse``."""
    return click.option(
        "--scale-search",
        type=click.Choice([s.value for s in ScaleSearch]),
        default=ScaleSearch.NONE.value,
        show_default=True,
        help="mse: per block, the rule's exponent or the one below, whichever errs less.",
    )(func)


def eps_option(func: F) -> F:
    """``--eps``: the lower bound on each block's amax."""
    return click.option(
        "--eps",
        type=float,
        default=DEFAULT_EPS,
        show_default=True,
        help=f"Lower bound on each block's amax (DeepSeek, DeepGEMM: {DEFAULT_EPS:g}).",
    )(func)


def engine_option(func: F) -> F:
    """``--engine``: the serving engine the output is for, where engines read a layout in
    different forms (MXFP8: vLLM ``weight_scale``, SGLang and transformers ``weight_scale_inv``)."""
    return click.option(
        "--engine",
        type=click.Choice(list(SERVING_ENGINES)),
        default=None,
        help="The engine the output is for, where engines read the layout differently "
        "(mxfp8: vllm weight_scale, sglang/transformers weight_scale_inv) [vllm].",
    )(func)


def report_option(func: F) -> F:
    """``--report PATH``, ``--top N`` and ``--verbose``: the per-tensor report of requantize /
    relayout (a summary and the worst N tensors on screen; all of them with ``--verbose``, in
    ``--json`` and in the ``--report`` files)."""
    func = click.option(
        "-v", "--verbose", is_flag=True, help="Print every tensor's row, not just the worst."
    )(func)
    func = click.option(
        "--top",
        type=click.IntRange(min=0),
        default=10,
        show_default=True,
        help="How many of the worst tensors the summary lists.",
    )(func)
    return click.option(
        "--report",
        "report_path",
        type=click.Path(path_type=Path),
        help="Also write the per-tensor report to PATH.json and PATH.md.",
    )(func)


class BarProgress(Progress):
    """A bar for the whole run and one per shard in flight, bytes/s and ETA (tqdm)."""

    def __init__(self) -> None:
        from tqdm import tqdm

        # no monitor thread: our bars advance continuously, and a live thread would make the
        # next run spawn its workers instead of forking them (runner.start_method)
        tqdm.monitor_interval = 0
        self._tqdm = tqdm
        self._run: Any = None
        self._bars: dict[str, Any] = {}

    def start(self, total_bytes: int, shards: int) -> None:
        self._run = self._tqdm(
            total=total_bytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"{shards} shards",
            position=0,
            dynamic_ncols=True,
        )

    def shard_start(self, shard: str, nbytes: int) -> None:
        self._bars[shard] = self._tqdm(
            total=nbytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=shard,
            leave=False,
            position=len(self._bars) + 1,
            dynamic_ncols=True,
        )

    def advance(self, shard: str, nbytes: int) -> None:
        if self._run is not None:
            self._run.update(nbytes)
        bar = self._bars.get(shard)
        if bar is not None:
            bar.update(nbytes)

    def shard_done(self, shard: str) -> None:
        bar = self._bars.pop(shard, None)
        if bar is not None:
            bar.close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()
        if self._run is not None:
            self._run.close()


def make_progress(quiet: bool, as_json: bool) -> Progress:
    """Bars on an interactive terminal, nothing otherwise."""
    if quiet or as_json or not sys.stderr.isatty():
        return Progress()
    return BarProgress()


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A left-aligned text table with SCREAMING headers; every cell escaped (a tensor name's
    newline or ESC cannot forge a row or drive the terminal: :func:`ue8m0.printable.printable`)."""
    cells = [[str(h).upper() for h in headers], *[[printable(str(c)) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover


def plan_table(plan: Any) -> str:
    """What ``--dry-run`` prints: one row per tensor, then the totals."""
    rows = []
    for shard in plan.shards:
        for task in shard.tasks:
            outs = ", ".join(f"{o.dtype}{list(o.shape)}" for o in task.outputs) or "-"
            rows.append((task.name, task.action, outs, shard.name, task.reason))
    lines = [table(("tensor", "action", "output", "shard", "reason"), rows), ""]
    counts = plan.summary()["tensors"]
    lines.append(
        ", ".join(f"{n} {a}" for a, n in sorted(counts.items()))
        + f"; {len(plan.shards)} shards; {human_bytes(plan.in_bytes)} in -> "
        f"{human_bytes(plan.out_bytes)} out"
    )
    lines.extend(f"note: {printable(n)}" for n in plan.notes)
    return "\n".join(lines)


def run_summary_line(summary: dict[str, Any], dst: Any) -> str:
    counts = summary["tensors"]
    done = ", ".join(f"{n} {a}" for a, n in sorted(counts.items()))
    resumed = f", {summary['shards_resumed']} resumed" if summary["shards_resumed"] else ""
    seconds = summary["seconds"]
    converted = summary["bytes_converted"]
    rate = f"{human_bytes(converted / seconds)}/s" if seconds > 0 and converted else "nothing to do"
    return (
        f"{printable(str(dst))}: {done}; {summary['shards_written']} shards written{resumed}; "
        f"{human_bytes(summary['bytes_in'])} -> {human_bytes(summary['bytes_out'])} in "
        f"{seconds:.1f} s ({rate}), peak RSS {human_bytes(summary['peak_rss_mb'] * 2**20)}"
    )


def fork_safe_kernels() -> None:
    """This process will fork workers and calls the kernels from one thread: load numba's
    fork-safe threading layer (:func:`ue8m0.kernels.prefer_fork_safe_layer`)."""
    from ue8m0.kernels import prefer_fork_safe_layer

    prefer_fork_safe_layer()


def run_or_print_plan(
    ckpt: Any,
    plan: Any,
    dst: Any,
    dry_run: bool,
    workers: int,
    quiet: bool,
    as_json: bool,
    detail: bool = False,
) -> Any:
    """``--dry-run``: print the plan and return None; else run it, print the summary line (or
    nothing under ``--json``, which the caller prints) and return the run's result."""
    from ue8m0.checkpoint.runner import run_plan

    if workers > 1:
        fork_safe_kernels()
    if dry_run:
        if as_json:
            extra = (
                {
                    "tensors_detail": [
                        {"name": t.name, "action": t.action, "reason": t.reason} for t in plan.tasks
                    ]
                }
                if detail
                else {}
            )
            notes = {"notes": plan.notes} if plan.notes else {}
            echo_json({**plan.summary(), **extra, **notes})
        elif not quiet:
            click.echo(plan_table(plan))
        return None
    ray_address = click.get_current_context().meta.get(RAY_ADDRESS_KEY)
    if ray_address is not None:
        from ue8m0.extras import require

        require("ray", "ray")  # before DST is created
    result = run_plan(ckpt, plan, dst, workers, make_progress(quiet, as_json), ray_address)
    if not as_json and not quiet:
        click.echo(run_summary_line(result.summary(), dst))
    if plan.config is None and not quiet:
        click.echo(
            f"ue8m0: warning: {printable(str(dst))} has no config.json (the source is a single "
            ".safetensors file): transformers and vLLM cannot load it as a model until the "
            "model's config.json is added",
            err=True,
        )
    return result
