"""Windmill-style script state: ``get_state``/``set_state``, resources and flow user state.

Synchronous functions for scripts. States and resources are versioned records in
the project scope of the store the server uses; the state path follows Windmill's rule and
the context (script path, flow, step, schedule, user, project, store) comes from the runner
(``flowstate run`` / ``run-flow`` / ``schedule``) or, outside a run, from the environment.

Writes are atomic and versioned (Windmill's are last-write-wins): ``set_state`` replaces the
value as one commit; ``set_state(value, if_version=n)`` and :func:`update_state` give a safe
read-modify-write by compare-and-swap. See ``docs/scripts.md``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from ..errors import ConcurrentModificationError, FlowStateError, ResourceNotFoundError
from ..state import RetryPolicy
from ..stores.base import Store
from . import engine, storage
from .context import context_from_env, current_context, use_context
from .paths import ScriptContext, check_path
from .storage import StateInfo

__all__ = [
    "SCRIPT_RETRY",
    "NoFlowRunError",
    "ScriptContext",
    "StateInfo",
    "context_from_env",
    "current_context",
    "get_flow_user_state",
    "get_resource",
    "get_resource_info",
    "get_state",
    "get_state_info",
    "get_state_path",
    "get_state_version",
    "set_flow_user_state",
    "set_resource",
    "set_state",
    "shutdown",
    "update_state",
    "use_context",
]

shutdown = engine.shutdown

SCRIPT_RETRY = RetryPolicy(max_attempts=50, base_delay=0.001, max_delay=0.05)
"""``update_state``'s default retries. More than a flow scope's 10: a retry costs one read, and
a script has nothing better to do than to get its update in. Under SQLite, a writer waiting
for the file lock sleeps in steps of up to 100 ms, so a process hammering one state can win
several rounds in a row; 50 jittered attempts (about 2.5 s at most) ride that out."""


class NoFlowRunError(FlowStateError):
    """Flow user state was used outside a run (no flow run id to key it by)."""

    code = "no_flow_run"


def _ctx() -> ScriptContext:
    return current_context()


def get_state_path() -> str:
    """This run's state path (Windmill's rule; see :attr:`ScriptContext.state_path`)."""
    return _ctx().state_path


def get_state_info() -> StateInfo:
    """This run's state with its version (0 while never written)."""
    ctx = _ctx()
    path = ctx.state_path

    async def read(store: Store) -> StateInfo:
        return await storage.read_item(store, ctx.project, path)

    return engine.call(ctx.store_url, read)


def get_state() -> Any:
    """This run's state: the last value ``set_state`` stored at its path, or None."""
    return get_state_info().value


def get_state_version() -> int:
    """The version of this run's state: 0 while never written, +1 per committed write."""
    return get_state_info().version


def set_state(value: Any, *, if_version: int | None = None) -> int:
    """Replace this run's state with ``value`` (any JSON) as one atomic, versioned write.

    Returns the version after the write (unchanged when ``value`` equals the stored one).
    With ``if_version``, the write happens only if the state is still at that version (0 =
    never written); otherwise :class:`~flowstate.ConcurrentModificationError`.
    """
    ctx = _ctx()
    path = ctx.state_path

    async def write(store: Store) -> int:
        return await storage.write_item(
            store, ctx.project, path, value, "state", if_version=if_version
        )

    return engine.call(ctx.store_url, write)


def update_state(fn: Callable[[Any], Any], *, retry: RetryPolicy | None = None) -> Any:
    """Read-modify-write this run's state safely: ``fn(current)`` returns the new value.

    ``current`` is None before the first write. The new value is written only if nobody wrote
    in between; otherwise the state is read again and ``fn`` re-run (so ``fn`` must be pure),
    with bounded, jittered retries (``retry``, default :data:`SCRIPT_RETRY`: 50 attempts).
    On exhaustion: :class:`~flowstate.ConcurrentModificationError` (``.attempts``). Returns
    the new value.
    """
    ctx = _ctx()
    path = ctx.state_path
    policy = retry or SCRIPT_RETRY
    for attempt in range(1, policy.max_attempts + 1):
        if attempt > 1:
            time.sleep(policy.delay(attempt - 1))
        info = get_state_info()
        new = fn(copy.deepcopy(info.value))
        try:
            set_state(new, if_version=info.version)
        except ConcurrentModificationError:
            continue
        return new
    raise ConcurrentModificationError(
        f'state "{path}": update_state gave up after {policy.max_attempts} attempts because '
        "other runs kept writing it in between (compare-and-swap conflicts)",
        attempts=policy.max_attempts,
    )


def get_resource_info(path: str) -> StateInfo:
    """The resource (or state) at Windmill ``path`` with its version (0 = does not exist)."""
    ctx = _ctx()
    check_path(path)

    async def read(store: Store) -> StateInfo:
        return await storage.read_item(store, ctx.project, path)

    return engine.call(ctx.store_url, read)


def get_resource(path: str, none_if_undefined: bool = False) -> Any:
    """The value of the resource at ``path`` in this run's project.

    A missing resource raises :class:`~flowstate.ResourceNotFoundError`, or returns None
    with ``none_if_undefined=True`` (as in ``wmill``).
    """
    info = get_resource_info(path)
    if not info.exists:
        if none_if_undefined:
            return None
        raise ResourceNotFoundError(
            f'resource "{path}" does not exist in project "{_ctx().project}"'
        )
    return info.value


def set_resource(
    value: Any, path: str, resource_type: str = "any", *, if_version: int | None = None
) -> int:
    """Create or update the resource at ``path`` (any JSON) atomically; return its version.

    A new resource gets ``resource_type``; an existing one keeps its type. ``if_version``
    works as for :func:`set_state`.
    """
    ctx = _ctx()
    check_path(path)
    if not isinstance(resource_type, str) or not resource_type:
        raise ValueError(f"resource_type must be a non-empty string, got {resource_type!r}")

    async def write(store: Store) -> int:
        return await storage.write_item(
            store, ctx.project, path, value, resource_type, if_version=if_version
        )

    return engine.call(ctx.store_url, write)


def _flow_run(action: str) -> tuple[ScriptContext, str]:
    ctx = _ctx()
    if ctx.flow_run_id is None:
        raise NoFlowRunError(
            f"{action} needs a flow run: run the script with `flowstate run-flow` (or "
            "`flowstate run`, where the run is its own one-step flow)"
        )
    return ctx, ctx.flow_run_id


def get_flow_user_state(key: str) -> Any:
    """The value this flow run stored under ``key`` (None when unset)."""
    ctx, run_id = _flow_run("get_flow_user_state")

    async def read(store: Store) -> Any:
        return await storage.get_flow_value(store, ctx.project, run_id, key)

    return engine.call(ctx.store_url, read)


def set_flow_user_state(key: str, value: Any) -> None:
    """Store ``value`` (any JSON) under ``key`` for the rest of this flow run's steps."""
    ctx, run_id = _flow_run("set_flow_user_state")

    async def write(store: Store) -> None:
        await storage.set_flow_value(store, ctx.project, run_id, key, value)

    engine.call(ctx.store_url, write)
