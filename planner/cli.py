"""The ``plan-probe`` command line.

Only click and the standard library are imported here; every command imports torch, JAX,
LightGBM, ... inside its own body, so ``plan-probe --help`` is instant. The product's commands live
in per-area modules (``planner/_cmd_*.py``, ``probes/_cmd.py``) and are attached below. Commands of
higher layers (``plan_probe.experiments``) or of other distributions plug in through the entry-point
groups ``plan_probe.commands`` and ``plan_probe.experiment_commands`` (see ``pyproject.toml``), so
this module never imports upward.

Error contract (docs/reference/errors.md): bad input of any kind, whether found by click (unknown
option, missing argument, bad choice, out-of-range number), by a command's validation stage or by a
reader of a damaged file, ends the command with one line ``error: <rule>, but got <value>; <fix>.``
on stderr and exit status 2. Before a command body runs, every attached command gets the same
checks: numbers passed to float options are finite, integers fit 64 bits, seeds are in [0, 2**32 - 1], and no output path
is (or resolves to) an input path or lies under a file. What a command writes to stderr (logs,
warnings, progress bars) is held back until it succeeds (or has run a while), so a rejection prints
only its one line.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import struct
import sys
import threading
import time
import zlib

import click

from plan_probe.probes import _version

__all__ = ["main"]

_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
#: What a command writes to stderr is held back until it succeeds, or it has used this much CPU time
#: or wall time (a rejection comes within a few CPU seconds, so it prints only its error line, also
#: on a loaded machine where wall time stretches).
HOLD_LOGS_CPU_S = 10.0
HOLD_LOGS_WALL_S = 120.0
#: Parameter names that are outputs: files unless their click.Path type or name says folder.
_OUTPUT_PARAMS = {"output", "out_path", "out", "out_dir", "figures", "curves_dir", "cache", "predictions_path"}
_INPUT_PARAMS = {"model_spec", "dataset", "risk_model", "predictor_dir", "portfolio", "meta", "pred", "obs", "tasks",
                 "plan_path", "spec_path"}
class _BoundedInt(click.types.IntParamType):
    """An integer in [low, high], shown as a plain INTEGER in --help (the bound is a safety rule)."""

    def __init__(self, low: int, high: int, rule: str):
        self.low, self.high, self.rule = low, high, rule

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not self.low <= number <= self.high:
            self.fail(f"{number} is not {self.rule}.", param, ctx)
        return number


_SEED_RANGE = _BoundedInt(0, 2**32 - 1, "a non-negative integer below 2**32")
# numpy, torch and JAX sizes: anything larger overflows in them
_INT64 = _BoundedInt(-(2**63), 2**63 - 1, "an integer that fits in 64 bits (|x| < 2**63)")


class InputError(click.ClickException):
    """Bad input found while a command ran: printed as ``error: <message>`` with exit status 2."""

    exit_code = 2


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _contract(message: str, fallback_fix: str = "check the input") -> str:
    """``message`` in the contract form; messages that are not (third-party wording) are wrapped."""
    message = _one_line(message)
    if ", but " in message and "; " in message:
        return message if message.endswith(".") else message + "."
    return f"the input must be valid, but got {message.rstrip('.')}; {fallback_fix}."


def _error_message(exc: BaseException) -> str | None:
    """The contract line for an input-type exception, or None for anything else (a bug: traceback)."""
    if isinstance(exc, BrokenPipeError):
        return None
    if isinstance(exc, ValueError):
        return _contract(str(exc) or type(exc).__name__)
    if isinstance(exc, OSError):
        where = f" for {exc.filename!r}" if getattr(exc, "filename", None) else ""
        reason = exc.strerror or _one_line(str(exc)) or type(exc).__name__
        return f"files must be readable and writable, but got {reason}{where} ({type(exc).__name__}); check the path, its folder and permissions."
    if isinstance(exc, (EOFError, zlib.error, struct.error)):
        return (f"input files must be complete and undamaged, but got {type(exc).__name__}: {_one_line(str(exc))[:200]}; "
                "check or regenerate the file.")
    if isinstance(exc, RecursionError):
        return "input must be nested at most a few hundred levels, but got deeper nesting; flatten the input."
    if isinstance(exc, OverflowError):
        return f"numbers must fit the sizes the tools use (64-bit), but got {_one_line(str(exc))[:200]}; pass smaller values."
    if isinstance(exc, MemoryError):
        return "the work must fit in memory, but got a request larger than this machine has; pass smaller sizes or fewer rows."
    return None


def _param_name(param, ctx) -> str:
    if param is None:
        return "a parameter"
    if isinstance(param, click.Argument):
        return param.human_readable_name
    longest = max(param.opts, key=len) if param.opts else param.name
    return longest


_NOT = re.compile(r"^(?P<value>.+?) is not (?P<rule>.+?)\.?(?: Recognized values: .*)?$", re.S)
_PATH = re.compile(r"^(?P<kind>\w+) (?P<value>'.*') (?P<what>does not exist|is a file|is a directory|is not readable|"
                   r"is not writable|is not executable)\.$", re.S)
_PATH_RULE = {"does not exist": "must exist", "is a file": "must be a directory", "is a directory": "must be a file",
              "is not readable": "must be readable", "is not writable": "must be writable",
              "is not executable": "must be executable"}


def _usage_line(exc: click.ClickException) -> str:
    """A click usage error in the contract form."""
    ctx = getattr(exc, "ctx", None)
    cmd = " ".join(["plan-probe", *ctx.command_path.split()[1:]]) if ctx is not None else "plan-probe"
    see = f"see '{cmd} --help'"
    if isinstance(exc, InputError):
        return _contract(exc.message)
    if isinstance(exc, click.NoSuchOption):
        maybe = f" (did you mean {', '.join(sorted(exc.possibilities))}?)" if exc.possibilities else ""
        return f"options must be ones {cmd} accepts, but got {exc.option_name}{maybe}; {see}."
    if isinstance(exc, click.MissingParameter):
        name = _param_name(exc.param, ctx) if exc.param is not None else (exc.param_hint or "a parameter")
        if isinstance(name, (list, tuple)):
            name = " / ".join(name)
        return f"{name} is required, but got none; pass {name} ({see})."
    if isinstance(exc, click.BadParameter):
        name = exc.param_hint if isinstance(exc.param_hint, str) else _param_name(exc.param, ctx)
        message = _one_line(exc.message)
        m = _PATH.match(message)
        if m:
            return f"{name} {_PATH_RULE[m['what']]}, but got {m['value']}; check the path ({see})."
        m = _NOT.match(message)
        if m:
            rule = m["rule"].replace("valid integer range", "valid integer").replace("valid float range", "valid number")
            rule = rule if rule.startswith(("a ", "an ", "one of", "in ")) else f"in {rule}" if rule.startswith("the range") else rule
            return f"{name} must be {rule}, but got {m['value']}; pass a valid {name} ({see})."
        return f"{name} must be valid ({message.rstrip('.')}), but got an invalid value; {see}."
    if isinstance(exc, click.BadOptionUsage):
        if "requires an argument" in exc.message:
            return f"{exc.option_name} needs a value, but got none; pass {exc.option_name} VALUE ({see})."
        return f"{exc.option_name} must be used as documented, but got: {_one_line(exc.message).rstrip('.')}; {see}."
    if isinstance(exc, click.UsageError):
        message = _one_line(exc.message)
        m = re.match(r"No such command '(?P<name>.*)'\.$", message)
        if m:
            return f"the command must be one of {cmd}'s commands, but got {m['name']!r}; {see}."
        m = re.match(r"Got unexpected extra arguments? \((?P<args>.*)\)$", message)
        if m:
            return f"{cmd} takes no further arguments, but got {m['args']!r}; quote values with spaces or {see}."
        return f"the command line must be valid, but got: {message.rstrip('.')}; {see}."
    return _contract(exc.format_message(), "check the input")


class _HeldStderr:
    """A stand-in for ``sys.stderr`` that holds what a command writes until it is released.

    Everything written through ``sys.stderr`` while the command runs (log records of any handler,
    Python warnings, progress bars, third-party loggers) is held; on success, after ``-v``, or once
    the command has used ``cpu_s`` of CPU time or ``wall_s`` of wall time it is written out and later
    writes pass straight through. On a rejection the held text is dropped, so the error is the only
    line. Writes at the file-descriptor level (C libraries) are not seen.
    """

    def __init__(self, real, cpu_s: float = HOLD_LOGS_CPU_S, wall_s: float = HOLD_LOGS_WALL_S):
        self._real = real
        self._held: list[str] | None = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._limits = (time.process_time() + cpu_s, time.monotonic() + wall_s)
        threading.Thread(target=self._watch_time, daemon=True).start()

    def _watch_time(self) -> None:
        while not self._stop.wait(0.5):
            if time.process_time() >= self._limits[0] or time.monotonic() >= self._limits[1]:
                self.release()
                return

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # a text stream refuses bytes (click probes streams this way)
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            if self._held is not None:
                self._held.append(text)
                return len(text)
        return self._real.write(text)

    def flush(self) -> None:
        if self._held is None:
            self._real.flush()

    def release(self) -> None:
        with self._lock:
            held, self._held = self._held, None
        if held:
            self._real.write("".join(held))
            self._real.flush()

    def drop(self) -> None:
        with self._lock:
            if self._held is not None:
                self._held = []

    def close(self) -> None:
        self._stop.set()
        self.release()

    def __getattr__(self, name):  # fileno, isatty, encoding, ... of the real stream
        return getattr(self._real, name)


class _OneLineErrors(click.Group):
    """A click group whose every input error, click's own included, is one line and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:
            message = _error_message(exc)
            if message is None:
                raise
            raise InputError(message) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        prog_name = prog_name or "plan-probe"
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        real_stderr = sys.stderr
        held = _HeldStderr(real_stderr)
        sys.stderr = held
        try:
            try:
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            except click.exceptions.NoArgsIsHelpError as exc:
                held.release()
                exc.show()
                sys.exit(2)
            except click.ClickException as exc:
                held.drop()
                click.echo(f"error: {_usage_line(exc)}", err=True)
                sys.exit(2)
            except click.exceptions.Abort:
                held.release()
                click.echo("Aborted!", err=True)
                sys.exit(1)
            held.release()
            sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)
        finally:
            held.close()  # handlers created meanwhile keep writing through it, straight to the real stream
            if sys.stderr is held:
                sys.stderr = real_stderr


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version.__version__, "--version", prog_name="plan-probe")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Plan probe budgets, predict fine-tuning outcomes with honest uncertainty, explain failures."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, stream=sys.stderr, format=_LOG_FORMAT)
    if verbose and isinstance(sys.stderr, _HeldStderr):
        sys.stderr.release()  # asked for logs: stream them as they come


@main.group(cls=_OneLineErrors)
def experiment() -> None:
    """Experiments that check the theory (synthetic) and reproduce it on real runs (real)."""


PLUGIN_GROUPS = {"plan_probe.commands": main, "plan_probe.experiment_commands": experiment}


# --------------------------------------------------------------------------------- common checks
def _is_dir_param(param) -> bool:
    if isinstance(param.type, click.Path):
        if not param.type.file_okay:
            return True
        if not param.type.dir_okay:
            return False
    return param.name in ("out", "out_dir", "figures", "curves_dir", "cache")


def _flag(param) -> str:
    return _param_name(param, None)


def _values(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_params(ctx: click.Context) -> None:
    """The checks every command gets before its body: finite floats, and outputs that never hit an input."""
    from plan_probe.probes._validate import check_io_paths

    inputs, outputs, dirs = [], [], []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None:
            continue
        if isinstance(param.type, click.types.FloatParamType):
            for v in _values(value):
                if isinstance(v, float) and not math.isfinite(v):
                    raise click.BadParameter(f"{v!r} is not a finite number.", ctx=ctx, param=param)
        if not isinstance(param.type, (click.Path, click.types.StringParamType)):
            continue
        for v in _values(value):
            if param.name in _OUTPUT_PARAMS:
                (dirs if _is_dir_param(param) else outputs).append((_flag(param), v))
            elif isinstance(param.type, click.Path) or isinstance(param, click.Argument) or param.name in _INPUT_PARAMS:
                inputs.append((_flag(param), v))
    try:
        check_io_paths(inputs=inputs, outputs=outputs, output_dirs=dirs)
    except ValueError as exc:
        raise InputError(_contract(str(exc))) from None


def _guard(command: click.Command) -> click.Command:
    """Give ``command`` (and a group's subcommands) the common checks; seeds get their range."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _guard(sub)
        return command
    if getattr(command, "_plan_probe_guarded", False) or command.callback is None:
        return command
    for param in command.params:
        if type(param.type) is click.types.IntParamType:
            param.type = _SEED_RANGE if param.name == "seed" else _INT64
    callback = command.callback

    @functools.wraps(callback)
    def guarded(*args, **kwargs):
        check_params(click.get_current_context())
        return callback(*args, **kwargs)

    command.callback = guarded
    command._plan_probe_guarded = True
    return command


def _attach() -> None:
    from importlib.metadata import entry_points

    from plan_probe import _cmd_predictor, _cmd_refit, _cmd_risk, _cmd_run
    from plan_probe.probes import _cmd as probe_cmds

    for module in (_cmd_risk, _cmd_predictor, _cmd_run, _cmd_refit, probe_cmds):
        for command in getattr(module, "COMMANDS", []):
            main.add_command(_guard(command))
    for group_name, group in PLUGIN_GROUPS.items():
        for entry in sorted(entry_points(group=group_name), key=lambda e: e.name):
            group.add_command(_guard(entry.load()), entry.name)


_attach()
