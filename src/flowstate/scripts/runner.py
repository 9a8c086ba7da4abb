"""Run Windmill-style scripts: load ``main`` from a file and call it inside a script context.

:func:`run_script` runs one script (``flowstate run``); :func:`run_flow` runs several scripts
as the steps ``a``, ``b``, ``c`` … of one flow run (``flowstate run-flow``), which share the
flow user state. Step inputs: every step gets the flow arguments its ``main`` declares; steps
after the first also get ``previous_result`` (the previous step's return value) and
``results`` (step id → return value so far) if ``main`` declares them (or ``**kwargs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib.util
import inspect
import itertools
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FlowStateError
from ..stores import Store, default_store_url
from . import engine, storage
from .context import default_project, default_user, use_context
from .paths import ScriptContext, check_path, step_ids

__all__ = ["FlowRunResult", "ScriptError", "load_main", "run_flow", "run_script"]

_COUNTER = itertools.count()


class ScriptError(FlowStateError):
    """A script file cannot be loaded, has no ``main``, or its arguments do not fit ``main``."""

    code = "script_error"


@dataclass(frozen=True)
class FlowRunResult:
    """The outcome of :func:`run_flow`: the run id, each step's result, and the last one."""

    flow_run_id: str
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def result(self) -> Any:
        return list(self.results.values())[-1] if self.results else None


@contextlib.contextmanager
def _script_dir_on_path(file: Path) -> Iterator[None]:
    # As `python script.py` does: modules beside the script are importable.
    directory = str(file.parent)
    added = directory not in sys.path
    if added:
        sys.path.insert(0, directory)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(directory)


def load_main(file: str | Path) -> Callable[..., Any]:
    """Import ``file`` as a fresh module and return its ``main`` function."""
    path = Path(file)
    if not path.is_file():
        raise ScriptError(f"script {str(path)!r} does not exist or is not a file")
    name = f"_flowstate_script_{next(_COUNTER)}_{path.stem.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ScriptError(f"script {str(path)!r} cannot be imported (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    with _script_dir_on_path(path):
        spec.loader.exec_module(module)
    main = getattr(module, "main", None)
    if not callable(main):
        raise ScriptError(f"script {str(path)!r} defines no main() function")
    return main  # type: ignore[no-any-return]


def _accepts(main: Callable[..., Any]) -> tuple[set[str], bool]:
    params = inspect.signature(main).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def _bind(main: Callable[..., Any], kwargs: Mapping[str, Any], file: Path) -> None:
    try:
        inspect.signature(main).bind(**kwargs)
    except TypeError as exc:
        raise ScriptError(f"{file.name}: main() arguments do not fit: {exc}") from None


def _call(main: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
    result = main(**kwargs)
    if not inspect.isawaitable(result):
        return result
    awaitable = result

    async def wait() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    # Called from inside a running loop (e.g. a test): run main's coroutine in its own thread.
    box: dict[str, Any] = {}
    ctx = contextvars.copy_context()

    def target() -> None:
        try:
            box["value"] = ctx.run(asyncio.run, wait())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="flowstate-script-main")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _reset_wmill_client() -> None:
    # The official wmill client caches its workspace and token in a global on first use;
    # forget it so each run reads the WM_* variables of its own context.
    module = sys.modules.get("wmill.client")
    if module is not None and hasattr(module, "_client"):
        setattr(module, "_client", None)  # noqa: B010


def _context(
    *,
    user: str | None,
    project: str | None,
    store: str | None,
    schedule: str | None,
    job_id: str | None,
    **fields: str | None,
) -> ScriptContext:
    return ScriptContext(
        username=user or default_user(),
        project=project or default_project(),
        store_url=store or default_store_url(),
        schedule=schedule,
        job_id=job_id or uuid.uuid4().hex,
        **fields,
    )


def run_script(
    file: str | Path,
    args: Mapping[str, Any] | None = None,
    *,
    path: str | None = None,
    user: str | None = None,
    schedule: str | None = None,
    project: str | None = None,
    store: str | None = None,
    job_id: str | None = None,
) -> Any:
    """Run ``main(**args)`` of ``file`` as script ``path`` and return its result.

    Defaults: user ``$USER`` or ``user``; path ``u/{user}/{file stem}``; project
    ``$FLOWSTATE_PROJECT`` or ``default``; store ``$FLOWSTATE_STORE`` or the SQLite default.
    ``schedule`` makes it a scheduled run (the state path's trigger becomes the user name).
    The run is its own one-step flow for flow user state (keyed by its job id).
    """
    file = Path(file)
    username = user or default_user()
    script_path = path if path is not None else f"u/{username}/{file.stem}"
    job = job_id or uuid.uuid4().hex
    ctx = _context(
        user=username,
        project=project,
        store=store,
        schedule=schedule,
        job_id=job,
        script_path=script_path,
        flow_run_id=job,
    )
    main = load_main(file)
    kwargs = dict(args or {})
    _bind(main, kwargs, file)
    _open_store(ctx)
    _reset_wmill_client()
    with use_context(ctx), _script_dir_on_path(file):
        try:
            return _call(main, kwargs)
        finally:
            _reset_wmill_client()


def _step_kwargs(
    main: Callable[..., Any], args: Mapping[str, Any], results: Mapping[str, Any]
) -> dict[str, Any]:
    names, var_kw = _accepts(main)
    kwargs = {k: v for k, v in args.items() if var_kw or k in names}
    if results:
        if var_kw or "previous_result" in names:
            kwargs["previous_result"] = list(results.values())[-1]
        if var_kw or "results" in names:
            kwargs["results"] = dict(results)
    return kwargs


def run_flow(
    files: Sequence[str | Path],
    args: Mapping[str, Any] | None = None,
    *,
    path: str,
    user: str | None = None,
    schedule: str | None = None,
    project: str | None = None,
    store: str | None = None,
    flow_run_id: str | None = None,
) -> FlowRunResult:
    """Run ``files`` in order as the steps ``a``, ``b``, … of one run of flow ``path``.

    Each step's state path is ``{path}/{step id}_{trigger}``; all steps share the flow user
    state of this run (keyed by ``flow_run_id``, generated when not given). A failing step
    stops the run and its exception propagates.
    """
    if not files:
        raise ScriptError("a flow needs at least one step script")
    check_path(path, "flow path")
    mains = [(Path(f), load_main(f)) for f in files]
    run_id = flow_run_id or uuid.uuid4().hex
    base = _context(
        user=user,
        project=project,
        store=store,
        schedule=schedule,
        job_id=run_id,
        flow_path=path,
        flow_run_id=run_id,
    )
    _open_store(base)
    results: dict[str, Any] = {}
    flow_args = dict(args or {})
    for step_id, (file, main) in zip(step_ids(len(mains)), mains, strict=True):
        kwargs = _step_kwargs(main, flow_args, results)
        _bind(main, kwargs, file)
        job_id = uuid.uuid4().hex
        ctx = base.evolve(step_id=step_id, job_id=job_id, script_path=f"{path}/{step_id}")
        _record_job(ctx, job_id, run_id)
        _reset_wmill_client()
        try:
            with use_context(ctx), _script_dir_on_path(file):
                results[step_id] = _call(main, kwargs)
        finally:
            _reset_wmill_client()
            _forget_job(ctx, job_id)
    return FlowRunResult(run_id, results)


def _open_store(ctx: ScriptContext) -> None:
    """Open the run's store now, so a bad store URL is reported before the script runs."""

    async def noop(store: Store) -> None:
        return None

    try:
        engine.call(ctx.store_url, noop)
    except Exception as exc:  # whatever the backend raises: a bad URL, no server, no access
        raise ScriptError(f"cannot open the store {ctx.store_url!r}: {exc}") from None


def _record_job(ctx: ScriptContext, job_id: str, run_id: str) -> None:
    async def record(store: Store) -> None:
        await storage.record_job(
            store, ctx.project, job_id, run_id, flowPath=ctx.flow_path, stepId=ctx.step_id
        )

    engine.call(ctx.store_url, record)


def _forget_job(ctx: ScriptContext, job_id: str) -> None:
    async def forget(store: Store) -> None:
        await storage.remove_job(store, ctx.project, job_id)

    engine.call(ctx.store_url, forget)
