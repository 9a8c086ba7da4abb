"""Python clients for a flowstate HTTP server, over a socket or in-process (an ASGI app).

Importing this package loads no server, runtime or store code: a client process stays small.
"""

from __future__ import annotations

from ._client import (
    AsyncClient,
    AsyncLiveSession,
    Client,
    LiveSession,
    RemoteError,
    SSEDecoder,
    error_from_wire,
)
from ._transport import StreamingASGITransport

__all__ = [
    "AsyncClient",
    "AsyncLiveSession",
    "Client",
    "LiveSession",
    "RemoteError",
    "SSEDecoder",
    "StreamingASGITransport",
    "error_from_wire",
]
