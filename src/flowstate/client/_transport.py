"""An httpx transport that calls an ASGI app in-process and *streams* its responses.

``httpx.ASGITransport`` runs the app to completion and buffers the whole body, so an endless
SSE stream (``/users/me/stream``) never returns through it. This transport hands each body
chunk to the reader as the app sends it, and tells the app the client disconnected when the
response is closed, the way a real socket would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import httpx

__all__ = ["StreamingASGITransport"]

Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[Message]],
        Callable[[Message], Awaitable[None]],
    ],
    Awaitable[None],
]


class _Body(httpx.AsyncByteStream):
    def __init__(
        self,
        chunks: asyncio.Queue[bytes | None],
        task: asyncio.Task[None],
        disconnected: asyncio.Event,
    ) -> None:
        self._chunks = chunks
        self._task = task
        self._disconnected = disconnected

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self._chunks.get()
            if chunk is None:
                break
            yield chunk
        await self._task  # surfaces an app error raised after the response started

    async def aclose(self) -> None:
        self._disconnected.set()
        if self._task.done():
            if not self._task.cancelled():
                self._task.exception()  # mark retrieved: the reader chose not to see it
        else:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=1.0)
            except (TimeoutError, Exception):
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncClient(transport=StreamingASGITransport(app))``: in-process, streamed."""

    def __init__(self, app: ASGIApp, *, client: tuple[str, int] = ("127.0.0.1", 123)) -> None:
        self.app = app
        self.client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for (k, v) in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port),
            "client": self.client,
            "root_path": "",
        }
        body = request.stream.__aiter__()
        body_done = False
        disconnected = asyncio.Event()
        started: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] = (
            asyncio.get_running_loop().create_future()
        )
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def receive() -> Message:
            nonlocal body_done
            if body_done:
                await disconnected.wait()
                return {"type": "http.disconnect"}
            try:
                chunk = await body.__anext__()
            except StopAsyncIteration:
                body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.request", "body": chunk, "more_body": True}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.set_result((message["status"], list(message.get("headers", []))))
            elif message["type"] == "http.response.body":
                if message.get("body") and request.method != "HEAD":
                    chunks.put_nowait(message["body"])
                if not message.get("more_body", False):
                    chunks.put_nowait(None)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except BaseException as exc:
                if not started.done():
                    started.set_exception(exc)
                raise
            finally:
                chunks.put_nowait(None)
                disconnected.set()

        task = asyncio.create_task(run())
        try:
            status, headers = await started
        except BaseException:
            with contextlib.suppress(BaseException):
                await task
            raise
        return httpx.Response(status, headers=headers, stream=_Body(chunks, task, disconnected))
