"""CLI commands of this area. Import only click at module level; heavy imports go inside commands."""

from __future__ import annotations

import click  # noqa: F401

COMMANDS: list = []
EXPERIMENT_COMMANDS: list = []
