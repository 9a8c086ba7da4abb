"""Test helpers: run a piece of block code inside a real flow on a real store."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from flowstate import Context, FlowServer, define_flow, handler

Body = Callable[[Context[Any, Any, Any, Any, Any]], Awaitable[Any]]


class Probe:
    """A flow with one action whose body is swapped per call: ``await probe(body)``."""

    def __init__(self, **decls: Any) -> None:
        self.body: Body | None = None

        async def execute(input: Any, ctx: Context[Any, Any, Any, Any, Any]) -> Any:
            assert self.body is not None
            return await self.body(ctx)

        flow_kwargs = {k: decls.pop(k) for k in list(decls) if k in _FLOW_KEYS}
        self.block = handler(name="probe", execute=execute, **decls)
        self.flow = define_flow("probe", actions={"probe": self.block}, **flow_kwargs)


_FLOW_KEYS = {"session", "user", "project", "org", "request", "isolate_user_state"}


async def run_body(
    server: FlowServer,
    body: Body,
    *,
    user_id: str = "alice",
    session_id: str | None = "s1",
    project_id: str | None = None,
    kind: str = "probe",
) -> Any:
    """Run ``body(ctx)`` as the probe action and return its output."""
    probe = server._probe  # type: ignore[attr-defined]
    probe.body = body
    result = await server.run(
        kind, "probe", None, user_id=user_id, session_id=session_id, project_id=project_id
    )
    return result


def probe_server(store: Any, **decls: Any) -> FlowServer:
    """A FlowServer hosting a :class:`Probe` flow on ``store``."""
    probe = Probe(**decls)
    server = FlowServer([probe.flow], store=store)
    server._probe = probe  # type: ignore[attr-defined]
    return server
