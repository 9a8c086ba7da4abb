"""Where a script's context comes from: the runner's context variable, else the environment.

The runner sets a :class:`ScriptContext` in a context variable for the duration of a run and
also exports it as Windmill's ``WM_*`` environment variables, so threads and subprocesses the
script starts (and the official ``wmill`` client) see the same run. Outside a run, the
context is read from those variables, falling back to ``$USER`` and ``$FLOWSTATE_PROJECT``.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Iterator, Mapping

from .paths import ScriptContext

__all__ = [
    "context_env",
    "context_from_env",
    "current_context",
    "default_project",
    "default_user",
    "use_context",
]

_CURRENT: contextvars.ContextVar[ScriptContext | None] = contextvars.ContextVar(
    "flowstate_script_context", default=None
)

# The environment is one per process, but runs may overlap (threads): every active export is
# kept on a stack; the newest one is what the environment shows, and when the last one ends
# the values from before the first one come back, whatever order the runs finish in.
_ENV_LOCK = threading.Lock()
_ENV_STACK: list[tuple[object, dict[str, str | None]]] = []
_ENV_BEFORE: dict[str, str | None] = {}


def default_user(environ: Mapping[str, str] | None = None) -> str:
    """``$USER``, or the literal ``user``."""
    env = os.environ if environ is None else environ
    return env.get("USER") or "user"


def default_project(environ: Mapping[str, str] | None = None) -> str:
    """``$FLOWSTATE_PROJECT``, or ``default``."""
    env = os.environ if environ is None else environ
    return env.get("FLOWSTATE_PROJECT") or "default"


def context_from_env(environ: Mapping[str, str] | None = None) -> ScriptContext:
    """The context described by ``WM_*`` variables (as the runner or a Windmill worker sets)."""
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        return env.get(name) or None

    return ScriptContext(
        username=get("WM_USERNAME") or default_user(env),
        project=get("WM_WORKSPACE") or default_project(env),
        store_url=get("FLOWSTATE_STORE"),
        script_path=get("WM_JOB_PATH"),
        flow_path=get("WM_FLOW_PATH"),
        step_id=get("WM_FLOW_STEP_ID"),
        schedule=get("WM_SCHEDULE_PATH"),
        job_id=get("WM_JOB_ID"),
        flow_run_id=get("WM_ROOT_FLOW_JOB_ID") or get("WM_JOB_ID"),
        state_path_override=get("WM_STATE_PATH_NEW") or get("WM_STATE_PATH"),
    )


def current_context() -> ScriptContext:
    """The running script's context (the runner's, else one read from the environment)."""
    ctx = _CURRENT.get()
    return ctx if ctx is not None else context_from_env()


def context_env(ctx: ScriptContext) -> dict[str, str | None]:
    """The ``WM_*`` variables describing ``ctx`` (None = unset), as Windmill workers set them,
    plus ``FLOWSTATE_STORE`` when the context names a store."""
    env: dict[str, str | None] = {
        "WM_USERNAME": ctx.username,
        "WM_PERMISSIONED_AS": f"u/{ctx.username}",
        "WM_WORKSPACE": ctx.project,
        "WM_JOB_ID": ctx.job_id,
        "WM_JOB_PATH": ctx.script_path,
        "WM_FLOW_PATH": ctx.flow_path,
        "WM_FLOW_STEP_ID": ctx.step_id,
        "WM_FLOW_JOB_ID": ctx.flow_run_id if ctx.flow_path is not None else None,
        "WM_ROOT_FLOW_JOB_ID": ctx.flow_run_id,
        "WM_SCHEDULE_PATH": ctx.schedule,
        "WM_STATE_PATH": ctx.state_path,
        "WM_STATE_PATH_NEW": ctx.state_path,
    }
    if ctx.store_url is not None:
        env["FLOWSTATE_STORE"] = ctx.store_url
    return env


def _set_env(values: Mapping[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _export_env(owner: object, env: dict[str, str | None]) -> None:
    with _ENV_LOCK:
        for name in env:
            _ENV_BEFORE.setdefault(name, os.environ.get(name))
        _ENV_STACK.append((owner, env))
        _set_env(env)


def _unexport_env(owner: object) -> None:
    with _ENV_LOCK:
        _ENV_STACK[:] = [entry for entry in _ENV_STACK if entry[0] is not owner]
        if _ENV_STACK:
            _set_env({**_ENV_BEFORE, **_ENV_STACK[-1][1]})
        else:
            _set_env(_ENV_BEFORE)
            _ENV_BEFORE.clear()


@contextlib.contextmanager
def use_context(ctx: ScriptContext, *, export_env: bool = True) -> Iterator[ScriptContext]:
    """Run the block as ``ctx``: set the context variable and (by default) the ``WM_*``
    environment; both are restored afterwards.

    Overlapping runs in one process (threads) share one environment: it shows the newest
    active run, and the previous values return once every run has ended. In-process code
    reads its own run from the context variable, which is exact per thread and task.
    """
    token = _CURRENT.set(ctx)
    owner = object()
    if export_env:
        _export_env(owner, context_env(ctx))
    try:
        yield ctx
    finally:
        if export_env:
            _unexport_env(owner)
        _CURRENT.reset(token)
