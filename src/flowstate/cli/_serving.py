"""Running the HTTP app under uvicorn with the defences a public port needs.

- **Slow clients.** Every connection must send its request head within ``header_timeout``
  seconds and its body within ``body_timeout`` seconds, or it is closed. A request whose body
  is late is answered 408 ``request_timeout`` first (when no response has started) and logged
  as one line on ``uvicorn.error``; the app sees a disconnected client, which it handles
  quietly. An idle keep-alive connection waits for its next request head under the same
  deadline.
- **Connection limit.** Beyond ``max_connections`` open connections, a new connection first
  evicts the oldest one that is still sending a request (or idling between requests); only
  when every connection is busy with a request being answered is the newcomer refused (503).
  So a flood of slow, unauthenticated connections cannot starve real requests.
- **Secrets stay out of logs.** The access log never shows a ``token=`` query value.

:func:`serve_app` binds the port first (so "address in use" comes before anything is printed),
then probes the store in the event loop the server will use, then calls ``on_ready`` (the
banner) and serves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["Limits", "RedactTokens", "bind", "guarded_protocol", "serve_app"]

log = logging.getLogger("uvicorn.error")

_SERVICE_UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: 91\r\nconnection: close\r\n\r\n"
    b'{"error":{"code":"service_unavailable","message":"too many connections, retry shortly"}}\n'
)


def _request_timeout(seconds: float) -> bytes:
    body = json.dumps(
        {
            "error": {
                "code": "request_timeout",
                "message": f"the request body did not arrive within {seconds:g} s",
            }
        },
        separators=(",", ":"),
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


@dataclass(frozen=True)
class Limits:
    """Connection hygiene of ``flowstate serve`` (each one is a command-line flag)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    timeout_keep_alive: float = 5.0
    max_connections: int = 1000
    limit_concurrency: int | None = None
    max_header_bytes: int = 16 * 1024

    def __post_init__(self) -> None:
        for name in ("header_timeout", "body_timeout", "timeout_keep_alive"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")
        if self.limit_concurrency is not None and self.limit_concurrency < 1:
            raise ValueError(f"limit_concurrency must be >= 1, got {self.limit_concurrency}")
        if self.max_header_bytes < 1024:
            raise ValueError(f"max_header_bytes must be >= 1024, got {self.max_header_bytes}")


def guarded_protocol(limits: Limits) -> type[H11Protocol]:
    """An h11 protocol class enforcing ``limits`` (one class, and one registry, per server)."""
    # Connections that are still sending a request (head or body) or idle between requests,
    # oldest first: the ones a full server may drop.
    incomplete: dict[GuardedH11Protocol, None] = {}

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _reading: str = ""  # "head", "body" or "" (the request is complete)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                victim = next(iter(incomplete), None)
                if victim is None:
                    # Everyone is being answered: refuse the newcomer, not a real request.
                    transport.write(_SERVICE_UNAVAILABLE)
                    transport.close()
                    return
                victim._drop()
            self._expect("head")

        def connection_lost(self, exc: Exception | None) -> None:
            self._settle()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            state = self.conn.their_state
            if self._reading == "head" and state is not h11.IDLE:
                if state is h11.SEND_BODY:
                    self._expect("body")
                else:
                    self._settle()
            elif self._reading == "body" and state is not h11.SEND_BODY:
                self._settle()

        def on_response_complete(self) -> None:
            if not self.transport.is_closing():
                # Waiting for the next request head (a pipelined one clears this at once).
                self._expect("head")
            super().on_response_complete()

        def _expect(self, what: str) -> None:
            self._settle()
            self._reading = what
            incomplete[self] = None
            if what == "head":
                self._deadline = self.loop.call_later(limits.header_timeout, self._drop)
            else:
                self._deadline = self.loop.call_later(limits.body_timeout, self._body_late)

        def _settle(self) -> None:
            self._reading = ""
            incomplete.pop(self, None)
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _drop(self) -> None:
            self._settle()
            if not self.transport.is_closing():
                self.transport.close()

        def _body_late(self) -> None:
            """The body deadline passed: answer 408 while no response has started, log one
            line, close. (The app then reads a disconnect, which it handles quietly.)"""
            cycle = self.cycle
            answered = False
            if cycle is not None and not cycle.response_started and not self.transport.is_closing():
                self.transport.write(_request_timeout(limits.body_timeout))
                cycle.response_started = True  # nothing else may be written on this request
                answered = True
            scope = cycle.scope if cycle is not None else {}
            client = self.client
            log.warning(
                "request timeout: the body of %s %s from %s did not arrive within %g s; %s",
                scope.get("method", "?"),
                scope.get("path", "?"),
                f"{client[0]}:{client[1]}" if client else "?",
                limits.body_timeout,
                "answered 408 and closed the connection" if answered else "closed the connection",
            )
            self._drop()

    return GuardedH11Protocol


class RedactTokens(logging.Filter):
    """Replaces ``token=…`` query values in log records (uvicorn's access log) by ``…``."""

    _TOKEN = re.compile(r"((?:^|[?&;])(?:token|access_token)=)[^&#\s\"]*", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self._TOKEN.sub(r"\1[redacted]", a) if isinstance(a, str) else a
                for a in record.args
            )
        if isinstance(record.msg, str):
            record.msg = self._TOKEN.sub(r"\1[redacted]", record.msg)
        return True


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (OSError when the address is in use)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve_app(
    app: Any,
    sock: socket.socket,
    *,
    limits: Limits,
    log_level: str,
    before: Callable[[], Awaitable[None]] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve ``app`` on ``sock``: run ``before`` (e.g. a store probe; it may raise), then
    ``on_ready``, then uvicorn, all in one event loop."""
    import uvicorn

    config = uvicorn.Config(
        app,
        http=guarded_protocol(limits),
        log_level=log_level,
        timeout_keep_alive=int(max(1, limits.timeout_keep_alive)),
        limit_concurrency=limits.limit_concurrency,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        server_header=False,
    )
    server = uvicorn.Server(config)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())

    async def main() -> None:
        if before is not None:
            await before()
        if on_ready is not None:
            on_ready()
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if server.started:
            # uvicorn says this itself only when it binds the port; here we bound it first.
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            logging.getLogger("uvicorn.error").info(
                "Uvicorn running on http://%s:%d (Press CTRL+C to quit)", shown, port
            )
        await serving

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the Ctrl+C it handled: a clean shutdown, as uvicorn.run has it
    finally:
        sock.close()
