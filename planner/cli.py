"""The ``plan-probe`` command line.

Only click and the standard library are imported here; every command imports torch, JAX,
LightGBM, ... inside its own body, so ``plan-probe --help`` is instant. Commands live in
per-area modules (``planner/_cmd_*.py``, ``probes/_cmd.py``, ``experiments/*/_cmd.py``) and are
attached below. Any ``ValueError`` raised for bad input becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import sys

import click

from planner import _version

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


def _attach() -> None:
    from experiments.metadataset import _cmd as metadataset_cmds
    from experiments.synthetic import _cmd as synthetic_cmds
    from planner import _cmd_predictor, _cmd_risk, _cmd_run
    from probes import _cmd as probe_cmds

    for module in (_cmd_risk, _cmd_predictor, _cmd_run, probe_cmds, synthetic_cmds, metadataset_cmds):
        for command in getattr(module, "COMMANDS", []):
            main.add_command(command)
        for command in getattr(module, "EXPERIMENT_COMMANDS", []):
            experiment.add_command(command)


_attach()
