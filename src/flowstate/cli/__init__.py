"""The ``flowstate`` command. Each command group lives beside the code it drives."""

from __future__ import annotations

import click

__all__ = ["main"]


@click.group()
@click.version_option(package_name="flowstate")
def main() -> None:
    """flowstate: typed, scoped, concurrency-safe state for AI and automation flows."""


# Command registrations (one line per module that contributes commands) go below.
from ._scripts import register as _register_scripts  # noqa: E402

_register_scripts(main)
from ._serve import demo as _demo  # noqa: E402
from ._serve import serve as _serve  # noqa: E402
from ._serve import state as _state  # noqa: E402

main.add_command(_serve)
main.add_command(_state)
main.add_command(_demo)
from ._db import db as _db  # noqa: E402

main.add_command(_db)
from ._codegen import codegen as _codegen  # noqa: E402

main.add_command(_codegen)
from ._lifecycle import register as _register_lifecycle  # noqa: E402

_register_lifecycle(main, _db)
