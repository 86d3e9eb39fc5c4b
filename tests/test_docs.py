"""The documentation cannot drift from the code: generated CLI reference, links, references, paths.

* ``docs/reference/cli.md`` equals a fresh rendering of the click definitions (rerun
  ``python -m plan_probe.experiments.gen_cli_docs > docs/reference/cli.md`` after changing a command);
* every relative link (and ``#anchor``) in README.md, CHANGELOG.md and docs/ resolves;
* the format, portfolio and feature references name every format, key and column the code defines;
* no file points to the old external design brief or to pre-``plan_probe`` module paths.
"""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

import click
import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _markdown_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted(DOCS.rglob("*.md"))]
    return [f for f in files if f.is_file()]


def _prose_lines(text: str):
    """Lines outside fenced code blocks, with inline code spans blanked."""
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield re.sub(r"`[^`]*`", lambda m: " " * len(m.group(0)), line)


def _slug(title: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation but '-'/'_' dropped, spaces to '-'."""
    title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link in a heading keeps its text
    title = title.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", title).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else _HEADING.match(line)
        if m:
            base = _slug(m.group(2))
            n = seen.get(base, 0)
            out.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    return out


def _links(path: Path):
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        for m in _LINK.finditer(line):
            yield m.group(1)


def test_slug_matches_github_rules():
    assert _slug("Intervals, P(score ≥ τ), go/no-go") == "intervals-pscore--τ-gono-go"
    assert _slug("`plan-probe build-meta SPEC.toml --out DIR`") == "plan-probe-build-meta-spectoml---out-dir"
    assert _slug("6. Offline assets") == "6-offline-assets"


def test_every_relative_link_resolves():
    files = _markdown_files()
    assert REPO / "README.md" in files and len(files) > 5
    broken = []
    for md in files:
        for target in _links(md):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            dest = (md.parent / path_part).resolve() if path_part else md
            where = f"{md.relative_to(REPO)} -> {target}"
            if not dest.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{where} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_is_a_front_page():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"
    text = "\n".join(lines)
    for needed in ("make demo", "make test", "plan-probe static", "plan-probe probe", "plan-probe fit-predictor",
                   "plan-probe predict", "plan-probe run", "Live decisions"):
        assert needed in text, needed


# -- the generated CLI reference ---------------------------------------------------------------
def test_cli_reference_is_current():
    from plan_probe.experiments.gen_cli_docs import render

    committed = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    assert committed == render(), (
        "docs/reference/cli.md is stale; regenerate it with "
        "python -m plan_probe.experiments.gen_cli_docs > docs/reference/cli.md"
    )


def test_cli_reference_covers_every_command_and_option():
    from plan_probe.cli import main
    from plan_probe.experiments.gen_cli_docs import render

    text = render()
    paths = []

    def walk(cmd, path, parent):
        ctx = click.Context(cmd, info_name=path[-1], parent=parent)
        paths.append((" ".join(path), cmd, ctx))
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), (*path, name), ctx)

    walk(main, ("plan-probe",), None)
    names = {p for p, _, _ in paths}
    # entry-point plugins of the experiments layer are there, at both levels
    assert {"plan-probe build-meta", "plan-probe experiment synthetic", "plan-probe experiment real"} <= names
    for title, cmd, ctx in paths:
        section = text.split(f"## `{title}`\n", 1)[1].split("\n## `", 1)[0]
        for param in cmd.get_params(ctx):
            if param is cmd.get_help_option(ctx) or getattr(param, "hidden", False):
                continue
            label = param.human_readable_name if isinstance(param, click.Argument) else param.opts[-1]
            assert f"`{label}`" in section, f"{title}: {label} missing"


def test_cli_reference_walks_nested_plugins():
    from plan_probe.experiments.gen_cli_docs import render

    @click.group()
    def root():
        """Root."""

    @root.group()
    def outer():
        """Outer group."""

    @outer.command("inner")
    @click.argument("path")
    @click.option("--depth", type=int, default=7, show_default=True, help="How deep | a pipe.")
    @click.option("--mode", type=click.Choice(["a", "b"]), default="a")
    @click.option("--flag/--no-flag", default=True)
    def inner(path, depth, mode, flag):
        """Inner command."""

    text = render(root, prog="tool")
    assert "## `tool outer inner`" in text and "[`tool outer inner`](#tool-outer-inner)" in text
    assert "Usage: tool outer inner [OPTIONS] PATH" in text
    assert "| `--depth` | integer | `7` | How deep \\| a pipe. |" in text
    assert "choice: `a`, `b`" in text and "`--flag` / `--no-flag` | flag | `--flag`" in text
    assert "| `PATH` (argument) | text | required |" in text


# -- the hand-written references name everything the code defines -----------------------------------
def _file_formats():
    from plan_probe.probes._formats import FileFormat

    folders = {"planner": "plan_probe", "probes": "plan_probe.probes", "theory": "plan_probe.theory",
               "experiments": "plan_probe.experiments"}
    found = {}
    for folder, package in folders.items():
        for src in sorted((REPO / folder).rglob("*.py")):
            if "FileFormat(" not in src.read_text(encoding="utf-8"):
                continue
            rel = src.relative_to(REPO / folder).with_suffix("")
            module = importlib.import_module(".".join((package, *rel.parts)))
            for value in vars(module).values():
                if isinstance(value, FileFormat):
                    found[value.name] = value.schema_version
    return found


def test_formats_reference_lists_every_format():
    text = (DOCS / "reference" / "formats.md").read_text(encoding="utf-8")
    formats = _file_formats()
    assert {"plan-probe/risk-model", "plan-probe/predictor", "plan-probe/run-summary"} <= set(formats)
    for name, version in formats.items():
        assert f"| `{name}` | {version} |" in text, f"docs/reference/formats.md lacks {name} schema {version}"


def test_portfolio_reference_lists_every_key():
    from dataclasses import fields

    from plan_probe._portfolio import _BUILTIN_KEYS, _HP_KEYS, Portfolio

    text = (DOCS / "reference" / "portfolio.md").read_text(encoding="utf-8")
    keys = {f.name for f in fields(Portfolio)} - {"candidates", "base_dir"}
    keys |= set(_HP_KEYS) | set(_BUILTIN_KEYS) | {"full_steps", "dataset", "builtin"}
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert not missing, f"docs/reference/portfolio.md lacks {missing}"


def test_feature_reference_defines_every_column():
    from plan_probe.probes import DYN_COLUMNS, HP_COLUMNS, STATIC_COLUMNS

    text = (DOCS / "reference" / "features.md").read_text(encoding="utf-8")
    assert len(STATIC_COLUMNS) == 17 and len(DYN_COLUMNS) == 10
    for column in (*STATIC_COLUMNS, *DYN_COLUMNS, *HP_COLUMNS):
        stem, _, suffix = column.rpartition("_")
        paired = suffix in ("std", "var") and re.search(rf"`{re.escape(stem)}_\w+`, `_{suffix}`", text)
        assert f"`{column}`" in text or column in text or paired, f"docs/reference/features.md lacks {column}"


# -- no stale pointers anywhere in the repository ---------------------------------------------
def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = []
    for name in filter(None, out):
        path = REPO / name
        if path.suffix in {".py", ".md", ".toml", ".txt", ".cfg", ".ini", ".yml", ".yaml", ""} and path.is_file():
            files.append(path)
    return files


def test_no_pointer_to_the_old_design_brief_or_module_paths():
    brief = re.compile("shared/" + "DESIGN|" + "DESIGN" + r"\.md")
    old_module = re.compile(r"python -m (experiments|probes|planner|theory)\.")
    offenders = []
    for path in _tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for pattern in (brief, old_module):
            m = pattern.search(text)
            if m:
                offenders.append(f"{path.relative_to(REPO)}: {m.group(0)!r}")
    assert not offenders, "stale pointers:\n" + "\n".join(offenders)
