"""Value types shared by the server and its clients: events, run results, session bindings.

Kept apart (and free of imports from the rest of the package) so a client process can use them
without loading the server, the runtime or any store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "RunResult", "SessionInfo"]


@dataclass(frozen=True)
class Event:
    """One event of a run: ``seq`` counts from 1 per request; ``data`` uses wire names.

    ``client_data``, when set, is what clients get instead of ``data``: in-process code is
    trusted and reads ``data`` (an internal error's text, the key of a resource clients
    cannot see); :meth:`to_wire` (SSE frames, HTTP answers, live streams) carries only
    ``client_data``.
    """

    type: str
    seq: int
    request_id: str
    data: dict[str, Any] = field(default_factory=dict)
    client_data: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def to_wire(self) -> dict[str, Any]:
        """The JSON an SSE frame or a client sees."""
        data = self.data if self.client_data is None else self.client_data
        return {"type": self.type, "seq": self.seq, "requestId": self.request_id, **data}


@dataclass(frozen=True)
class RunResult:
    """The outcome of :meth:`FlowServer.run`."""

    output: Any
    session_id: str
    request_id: str
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class SessionInfo:
    """A session's binding: its user, flow kind and project, fixed at its first run."""

    session_id: str
    user_id: str
    flow_kind: str
    project_id: str | None
    created_at: float
    metadata: dict[str, Any] = field(default_factory=dict)
    """A small JSON object the application sets (title, tags …), for finding sessions."""

    def to_wire(self) -> dict[str, Any]:
        return {
            "sessionId": self.session_id,
            "userId": self.user_id,
            "flowKind": self.flow_kind,
            "projectId": self.project_id,
            "createdAt": self.created_at,
            "metadata": dict(self.metadata),
        }
