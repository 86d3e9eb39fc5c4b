"""The ``plan-probe`` command line.

Only click and the standard library are imported here; every command imports torch, JAX,
LightGBM, ... inside its own body, so ``plan-probe --help`` is instant. The product's commands live
in per-area modules (``planner/_cmd_*.py``, ``probes/_cmd.py``) and are attached below. Commands of
higher layers (``plan_probe.experiments``) or of other distributions plug in through the entry-point
groups ``plan_probe.commands`` and ``plan_probe.experiment_commands`` (see ``pyproject.toml``), so
this module never imports upward. Any ``ValueError`` raised for bad input becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import sys

import click

from plan_probe.probes import _version

__all__ = ["main"]


class _OneLineErrors(click.Group):
    """A click group that turns input errors into one line and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            click.echo(f"error: {message}", err=True)
            ctx.exit(2)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version.__version__, "--version", prog_name="plan-probe")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Plan probe budgets, predict fine-tuning outcomes with honest uncertainty, explain failures."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


@main.group(cls=_OneLineErrors)
def experiment() -> None:
    """Experiments that check the theory (synthetic) and reproduce it on real runs (real)."""


PLUGIN_GROUPS = {"plan_probe.commands": main, "plan_probe.experiment_commands": experiment}


def _attach() -> None:
    from importlib.metadata import entry_points

    from plan_probe import _cmd_predictor, _cmd_risk, _cmd_run
    from plan_probe.probes import _cmd as probe_cmds

    for module in (_cmd_risk, _cmd_predictor, _cmd_run, probe_cmds):
        for command in getattr(module, "COMMANDS", []):
            main.add_command(command)
    for group_name, group in PLUGIN_GROUPS.items():
        for entry in sorted(entry_points(group=group_name), key=lambda e: e.name):
            group.add_command(entry.load(), entry.name)


_attach()
