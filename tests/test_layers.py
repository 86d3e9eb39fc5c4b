"""The package's layers point one way: theory <- probes <- planner <- experiments.

An arrow reads "may be imported by". Every module's imports (module level and inside functions,
plus module names given as strings to ``importlib``) are parsed with ``ast``; an import of a
higher layer, or of one of the old top-level names, fails the test.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"theory": 0, "probes": 1, "planner": 2, "experiments": 3}
OLD_TOP_LEVEL = {"planner", "probes", "theory", "experiments"}
_MODULE_STRING = re.compile(r"^plan_probe(\.\w+)*$")


def layer_of(module: str) -> int | None:
    """Layer of an absolute module name inside plan_probe (None for anything else)."""
    parts = module.split(".")
    if parts[0] != "plan_probe":
        return None
    if len(parts) > 1 and parts[1] in ("theory", "probes", "experiments"):
        return FOLDERS[parts[1]]
    return FOLDERS["planner"]


def imported_modules(tree: ast.AST):
    """(line, module) for every import statement and every 'plan_probe.x' string constant."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"line {node.lineno}: relative imports hide the layer; use plan_probe.* names")
            yield node.lineno, node.module or ""
            for alias in node.names:  # "from plan_probe import probes" imports plan_probe.probes
                yield node.lineno, f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_STRING.match(node.value):
            yield node.lineno, node.value


def _sources():
    for folder in FOLDERS:
        yield from sorted((REPO / folder).rglob("*.py"))


def test_layer_map_is_the_package_mapping():
    """The folders this test reasons about are the ones pyproject maps into plan_probe."""
    text = (REPO / "pyproject.toml").read_text()
    for folder, module in [("planner", "plan_probe"), ("theory", "plan_probe.theory"),
                           ("probes", "plan_probe.probes"), ("experiments", "plan_probe.experiments")]:
        assert re.search(rf'^"?{re.escape(module)}"? = "{folder}"$', text, re.M), (folder, module)


@pytest.mark.parametrize("path", list(_sources()), ids=lambda p: str(p.relative_to(REPO)))
def test_no_upward_or_old_name_import(path: Path):
    own = FOLDERS[path.relative_to(REPO).parts[0]]
    tree = ast.parse(path.read_text(), filename=str(path))
    problems = []
    for line, module in imported_modules(tree):
        top = module.split(".")[0]
        if top in OLD_TOP_LEVEL:
            problems.append(f"line {line}: imports old top-level name {module!r}; use plan_probe.*")
            continue
        layer = layer_of(module)
        if layer is not None and layer > own:
            problems.append(f"line {line}: {module!r} is a higher layer than {path.parts[-2]!r}")
    assert not problems, "\n".join(problems)


def test_checker_catches_an_upward_import():
    """The rule itself can fail: a probes module importing the planner is caught."""
    tree = ast.parse("def f():\n    from plan_probe._plan import compute_plan\n")
    layers = [layer_of(m) for _, m in imported_modules(tree)]
    assert max(layer for layer in layers if layer is not None) > FOLDERS["probes"]
