"""Write the command-line reference (Markdown) from the click definitions themselves.

    python -m plan_probe.experiments.gen_cli_docs > docs/reference/cli.md

It walks ``plan-probe`` recursively: every command and sub-command, including those that plug in
through the entry-point groups ``plan_probe.commands`` and ``plan_probe.experiment_commands``. For
each it prints the usage line, the help text and a table of every argument and option with its
help, type and default, exactly as click holds them. ``tests/test_docs.py`` regenerates the file and
compares it with the committed one, so the reference cannot drift from the code: rerun the command
above whenever a command or option changes.
"""

from __future__ import annotations

import inspect
import re
import sys

import click

__all__ = ["render", "main"]

_HEADER = """# CLI reference

<!-- Generated from the click definitions by `python -m plan_probe.experiments.gen_cli_docs > docs/reference/cli.md`.
Do not edit by hand: tests/test_docs.py fails when this file differs from a fresh rendering. -->

Every command takes `-h/--help`. Bad input gives one line `error: <rule>, but got <value>; <fix>.` on
stderr and exit status 2; results go to stdout, logs to stderr (`plan-probe -v ...` for more).
"""


def _walk(command: click.Command, path: tuple[str, ...], parent: click.Context | None):
    """Yield ``(path, command, context)`` for ``command`` and every visible sub-command, depth first."""
    ctx = click.Context(command, info_name=path[-1], parent=parent)
    yield path, command, ctx
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _walk(sub, (*path, name), ctx)


def _slug(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation other than '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def _cell(text: str) -> str:
    """Text safe inside one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _help_text(command: click.Command) -> str:
    text = inspect.cleandoc(command.help or "").split("\f")[0]
    lines = [line for line in text.splitlines() if line.strip() != "\b"]
    return "\n".join(lines).strip()


def _type(param: click.Parameter) -> str:
    kind = param.type
    if isinstance(kind, click.Choice):
        name = "choice: " + ", ".join(f"`{c}`" for c in kind.choices)
    elif isinstance(param, click.Option) and param.is_flag:
        name = "flag"
    else:
        name = kind.name
    if param.multiple:
        name += " (repeatable)"
    if param.nargs not in (1,) and not (isinstance(param, click.Option) and param.is_flag):
        name += f" × {'any' if param.nargs == -1 else param.nargs}"
    return name


def _default(param: click.Parameter, ctx: click.Context) -> str:
    if param.required:
        return "required"
    value = param.get_default(ctx, call=False)
    if callable(value):
        return "(computed)"
    if value is None or value == () or value == []:
        return "–"
    if isinstance(param, click.Option) and param.is_flag and param.secondary_opts:
        return f"`{param.opts[0] if value else param.secondary_opts[0]}`"
    return f"`{value}`"


def _names(param: click.Parameter) -> str:
    if isinstance(param, click.Argument):
        return f"`{param.human_readable_name}` (argument)"
    return " / ".join(f"`{o}`" for o in (*param.opts, *param.secondary_opts))


def _params_table(command: click.Command, ctx: click.Context) -> list[str]:
    help_option = command.get_help_option(ctx)
    params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False) and p is not help_option]
    if not params:
        return []
    rows = ["| name | type | default | help |", "|---|---|---|---|"]
    for p in params:
        help_text = getattr(p, "help", None) or ""
        rows.append(f"| {_names(p)} | {_cell(_type(p))} | {_cell(_default(p, ctx))} | {_cell(help_text) or '–'} |")
    return rows


def render(root: click.Command | None = None, prog: str = "plan-probe") -> str:
    """The Markdown reference of ``root`` (default: the installed ``plan-probe`` group)."""
    if root is None:
        from plan_probe.cli import main as root
    entries = list(_walk(root, (prog,), None))
    out = [_HEADER, "## Commands", ""]
    for path, command, _ in entries:
        title = " ".join(path)
        indent = "  " * (len(path) - 1)
        summary = command.get_short_help_str(limit=120)
        out.append(f"{indent}- [`{title}`](#{_slug(title)}): {summary}")
    for path, command, ctx in entries:
        title = " ".join(path)
        pieces = command.collect_usage_pieces(ctx)
        out += ["", f"## `{title}`", "", "```", f"Usage: {ctx.command_path} {' '.join(pieces)}".rstrip(), "```", ""]
        help_text = _help_text(command)
        if help_text:
            out += [help_text, ""]
        table = _params_table(command, ctx)
        if table:
            out += table
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the reference on stdout."""
    if argv:
        print(f"error: gen_cli_docs takes no arguments, but got {argv!r}; run "
              "python -m plan_probe.experiments.gen_cli_docs > docs/reference/cli.md.", file=sys.stderr)
        return 2
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
