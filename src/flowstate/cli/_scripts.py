"""``flowstate run``, ``flowstate run-flow`` and ``flowstate schedule``.

Each prints the script's return value as one line of JSON on stdout (after whatever the script
printed itself); a failing script prints its traceback on stderr and exits with status 1.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from pydantic_core import to_jsonable_python

from ..errors import FlowStateError
from ..scripts import engine
from ..scripts.context import default_user
from ..scripts.paths import check_id, check_path
from ..scripts.runner import ScriptError, run_flow, run_script
from ..scripts.scheduler import ScheduledRun, parse_interval, run_schedule

__all__ = ["register"]


def _parse_args(json_text: str | None, pairs: Sequence[str]) -> dict[str, Any]:
    """Arguments for ``main``: a JSON object, then ``--arg key=value`` pairs over it.

    A pair's value is parsed as JSON when it is valid JSON (``n=3`` → 3, ``on=true`` → True),
    else taken as a string (``name=alice``).
    """
    args: dict[str, Any] = {}
    if json_text is not None:
        try:
            parsed = json.loads(json_text)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="ARGS") from None
        if not isinstance(parsed, dict):
            raise click.BadParameter("must be a JSON object of arguments", param_hint="ARGS")
        args.update(parsed)
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--arg")
        try:
            args[name] = json.loads(raw)
        except json.JSONDecodeError:
            args[name] = raw
    return args


def _echo_result(result: Any) -> None:
    try:
        text = json.dumps(to_jsonable_python(result), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise click.ClickException(
            f"main() returned a value that is not JSON-serialisable: {exc}"
        ) from None
    click.echo(text)


def _guard(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a usage problem becomes a clean error, a script failure a traceback."""
    try:
        return fn()
    except click.ClickException:
        raise
    except ScriptError as exc:
        raise click.ClickException(exc.message) from None
    except Exception:
        traceback.print_exc()
        sys.exit(1)
    finally:
        engine.shutdown()


def _split_steps(items: Sequence[str]) -> tuple[list[str], str | None]:
    """Step files, and a trailing JSON-object argument if the last item is one."""
    steps = list(items)
    json_text = None
    if steps and steps[-1].lstrip().startswith("{"):
        json_text = steps.pop()
    for step in steps:
        if not Path(step).is_file():
            raise click.BadParameter(f"{step!r} is not a file", param_hint="STEP")
    if not steps:
        raise click.UsageError("give at least one step script")
    return steps, json_text


def _valid_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        check_id(value, param.name or "id", segment=param.name == "user")
    except FlowStateError as exc:
        raise click.BadParameter(exc.message) from None
    return value


_common = [
    click.option("--user", callback=_valid_id, help="Run as this user (default: $USER or 'user')."),
    click.option(
        "--project",
        callback=_valid_id,
        help="Project id = Windmill workspace (default: $FLOWSTATE_PROJECT or 'default').",
    ),
    click.option("--store", help="Store URL (default: $FLOWSTATE_STORE or the SQLite default)."),
    click.option(
        "--arg",
        "pairs",
        multiple=True,
        metavar="KEY=VALUE",
        help="An argument for main (value parsed as JSON when valid). Repeatable.",
    ),
]


@dataclass(frozen=True)
class _Common:
    """The options every command here takes: who runs, in which project and store, and the
    ``--arg`` pairs."""

    user: str | None
    project: str | None
    store: str | None
    pairs: tuple[str, ...]

    def args(self, json_text: str | None) -> dict[str, Any]:
        """The arguments for main: the JSON object ``json_text`` with the pairs over it."""
        return _parse_args(json_text, self.pairs)


def _with_common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the common options; the command gets them as one ``common`` argument."""

    @functools.wraps(fn)
    def command(
        *,
        user: str | None,
        project: str | None,
        store: str | None,
        pairs: tuple[str, ...],
        **options: Any,
    ) -> Any:
        return fn(common=_Common(user, project, store, pairs), **options)

    for option in reversed(_common):
        command = option(command)
    return command


def _valid_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        if value.endswith("/") and param.name == "path":
            check_path(value[:-1], param.name)
        else:
            check_path(value, param.name or "path")
    except FlowStateError as exc:
        raise click.BadParameter(exc.message) from None
    return value


@click.command("run")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("args_json", metavar="[ARGS]", required=False)
@click.option("--path", callback=_valid_path, help="Script path (default: u/{user}/{file stem}).")
@click.option(
    "--schedule",
    callback=_valid_path,
    help="Run as the schedule NAME (the state path's trigger becomes the user).",
)
@_with_common
def run_command(
    file: Path,
    args_json: str | None,
    path: str | None,
    schedule: str | None,
    common: _Common,
) -> None:
    """Run FILE's main(**ARGS) as a Windmill-style script and print its result as JSON.

    ARGS is an optional JSON object; --arg key=value pairs are added over it.
    """
    args = common.args(args_json)
    user, project, store = common.user, common.project, common.store
    result = _guard(
        lambda: run_script(
            file, args, path=path, user=user, schedule=schedule, project=project, store=store
        )
    )
    _echo_result(result)


@click.command("run-flow")
@click.argument("items", nargs=-1, required=True, metavar="STEP.py... [ARGS]")
@click.option("--path", required=True, callback=_valid_path, help="Flow path, e.g. f/team/etl.")
@click.option("--schedule", callback=_valid_path, help="Run as the schedule NAME.")
@_with_common
def run_flow_command(
    items: tuple[str, ...],
    path: str,
    schedule: str | None,
    common: _Common,
) -> None:
    """Run the STEP scripts as steps a, b, c, … of one flow run; print the last result.

    Each step gets the flow ARGS its main() declares; later steps also get previous_result
    and results (step id → result) when they declare them. Steps share the flow user state.
    """
    steps, json_text = _split_steps(items)
    args = common.args(json_text)
    user, project, store = common.user, common.project, common.store
    outcome = _guard(
        lambda: run_flow(
            steps, args, path=path, user=user, schedule=schedule, project=project, store=store
        )
    )
    _echo_result(outcome.result)


@click.command("schedule")
@click.argument("items", nargs=-1, required=True, metavar="SCRIPT.py... [ARGS]")
@click.option("--every", required=True, help="Interval: 30s, 5m, 1h, 1d, 500ms.")
@click.option(
    "--name", callback=_valid_path, help="Schedule path (default: the script or flow path)."
)
@click.option("--times", type=click.IntRange(min=1), help="Stop after N runs (default: forever).")
@click.option("--path", callback=_valid_path, help="Script path (default: u/{user}/{stem}).")
@click.option(
    "--flow",
    "flow_path",
    callback=_valid_path,
    help="Run the scripts as the steps of this flow path instead.",
)
@_with_common
def schedule_command(
    items: tuple[str, ...],
    every: str,
    name: str | None,
    times: int | None,
    path: str | None,
    flow_path: str | None,
    common: _Common,
) -> None:
    """Re-run SCRIPT every interval as a scheduled run; print each result as a JSON line.

    Several scripts need --flow PATH (they run as the steps of that flow). Failed runs print
    their traceback and the schedule goes on; the exit status is 1 if any run failed.
    """
    try:
        interval = parse_interval(every)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--every") from None
    steps, json_text = _split_steps(items)
    if len(steps) > 1 and flow_path is None:
        raise click.UsageError("several scripts form a flow: give its path with --flow")
    if flow_path is not None and path is not None:
        raise click.UsageError("--path names a script, --flow a flow: give only one")
    args = common.args(json_text)
    username = common.user or default_user()
    project, store = common.project, common.store
    if flow_path is not None:
        schedule = name or flow_path

        def job() -> Any:
            return run_flow(
                steps,
                args,
                path=flow_path,
                user=username,
                schedule=schedule,
                project=project,
                store=store,
            ).result
    else:
        script_path = path or f"u/{username}/{Path(steps[0]).stem}"
        schedule = name or script_path

        def job() -> Any:
            return run_script(
                steps[0],
                args,
                path=script_path,
                user=username,
                schedule=schedule,
                project=project,
                store=store,
            )

    def report(run: ScheduledRun) -> None:
        if run.error is None:
            _echo_result(run.result)
            sys.stdout.flush()
        else:
            click.echo(f"run {run.index} failed:", err=True)
            traceback.print_exception(run.error)

    try:
        failures = _guard(lambda: run_schedule(job, every=interval, times=times, on_run=report))
    except KeyboardInterrupt:
        sys.exit(130)
    if failures:
        sys.exit(1)


def register(group: click.Group) -> None:
    """Add ``run``, ``run-flow`` and ``schedule`` to the ``flowstate`` command group."""
    group.add_command(run_command)
    group.add_command(run_flow_command)
    group.add_command(schedule_command)
