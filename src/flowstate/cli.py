"""The ``flowstate`` command. Each command group lives beside the code it drives."""

from __future__ import annotations

import click

__all__ = ["main"]


@click.group()
@click.version_option(package_name="flowstate")
def main() -> None:
    """flowstate: typed, scoped, concurrency-safe state for AI and automation flows."""


# Command registrations (one line per module that contributes commands) go below.
from .scripts.cli import register as _register_scripts  # noqa: E402

_register_scripts(main)
