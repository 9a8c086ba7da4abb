"""``flowstate codegen ts TARGET``: TypeScript types of a server's flows (see docs/client-js.md)."""

from __future__ import annotations

from pathlib import Path

import click

from ..codegen import typescript_types
from ._serve import _run, load_server

__all__ = ["codegen"]


@click.group()
def codegen() -> None:
    """Generate client code from a server's flows."""


@codegen.command("ts")
@click.argument("target")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write to this file instead of printing",
)
def ts(target: str, output: Path | None) -> None:
    """Print TypeScript types of every flow's actions and client data.

    TARGET is module:attribute naming a FlowServer (or a function returning one), as for
    `flowstate serve`. Use the output with createClient<Flows>() from @flowstate/client.
    """
    server = load_server(target)
    try:
        text = typescript_types(server.flows, source=target)
    finally:
        _run(server.aclose())
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)
