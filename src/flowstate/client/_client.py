"""Python clients of the flowstate HTTP API: :class:`AsyncClient` and :class:`Client` (sync).

Both speak to a server by base URL, or to an ASGI app in-process (``AsyncClient(app=app)``),
with responses streamed either way (see :mod:`flowstate.client._transport`). Errors come back as the
flowstate exception of their code (``SessionNotFoundError``, ``StateValidationError`` …)
carrying ``status_code``, ``request_id`` and ``session_id``; unknown codes as
:class:`RemoteError`. :class:`LiveSession` keeps a session's snapshot fresh the way
flow-state.dev describes: change events mark it stale, and it is refetched on
``request.completed``.

The sync :class:`Client` runs an :class:`AsyncClient` on a private event loop thread, so both
have the same behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import threading
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload
from urllib.parse import quote

import httpx

from .. import errors as _errors
from ..errors import FlowStateError
from ..values import Event, RunResult, SessionInfo
from ._transport import StreamingASGITransport

__all__ = [
    "AsyncClient",
    "AsyncLiveSession",
    "Client",
    "LiveSession",
    "RemoteError",
    "SSEDecoder",
    "error_from_wire",
]

T = TypeVar("T")
P = ParamSpec("P")

API = "/api/flows"
SSE = "text/event-stream"
TERMINAL = ("request.completed", "request.failed")
DEFAULT_URL = "http://127.0.0.1:8000"

# ----------------------------------------------------------------------------------- errors


class RemoteError(FlowStateError):
    """An error answer whose code has no flowstate exception class (HTTP-level errors)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


def _simple_errors() -> dict[str, type[FlowStateError]]:
    """Code → class for every public error built from its message alone (its own ``__init__``
    is the base one), so a new error class is mapped without being listed here."""
    found: dict[str, type[FlowStateError]] = {}
    pending: list[type[FlowStateError]] = [FlowStateError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__ == _errors.__name__ and cls.__init__ is FlowStateError.__init__:
            found.setdefault(cls.code, cls)
    return found


_SIMPLE_ERRORS = _simple_errors()


def error_from_wire(
    error: Mapping[str, Any],
    *,
    status_code: int | None = None,
    request_id: str | None = None,
    session_id: str | None = None,
) -> FlowStateError:
    """The exception for an ``{"code", "message", "details"?}`` error object.

    The result also carries ``status_code``, ``request_id``, ``session_id`` and ``details``.
    """
    code = str(error.get("code", "http_error"))
    message = str(error.get("message", ""))
    details = error.get("details")
    exc: FlowStateError
    if code == _errors.StateValidationError.code:
        exc = _errors.StateValidationError(
            message, errors=details if isinstance(details, list) else ()
        )
    elif code == _errors.ConcurrentModificationError.code:
        exc = _errors.ConcurrentModificationError(message, attempts=0)
    elif code in _SIMPLE_ERRORS:
        exc = _SIMPLE_ERRORS[code](message)
    else:
        exc = RemoteError(message, code=code)
    for name, value in (
        ("status_code", status_code),
        ("request_id", request_id),
        ("session_id", session_id),
        ("details", details),
    ):
        setattr(exc, name, value)
    return exc


def _error_from_response(status: int, text: str) -> FlowStateError:
    try:
        body = json.loads(text)
        error = body["error"]
        if not isinstance(error, Mapping):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return error_from_wire(
            {"code": "http_error", "message": f"HTTP {status}: {text[:200]}"}, status_code=status
        )
    return error_from_wire(
        error,
        status_code=status,
        request_id=body.get("requestId"),
        session_id=body.get("sessionId"),
    )


def _json(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    raise _error_from_response(response.status_code, response.text)


async def _check_stream(response: httpx.Response) -> None:
    if not response.is_success:
        await response.aread()
        raise _error_from_response(response.status_code, response.text)


# ----------------------------------------------------------------------------------- SSE


class SSEDecoder:
    """Server-sent events from lines (``id:``, ``event:``, ``data:``; comments ignored)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> dict[str, Any] | None:
        """One line (without its end); a blank line completes an event, returned as a dict."""
        if not line:
            if not self._data:
                self._event = ""
                return None
            out = {"event": self._event or "message", "data": "\n".join(self._data), "id": self._id}
            self._event, self._data = "", []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None


def event_from_wire(wire: Mapping[str, Any]) -> Event:
    """An :class:`~flowstate.Event` from its JSON form (``type``, ``seq``, ``requestId``, …)."""
    data = dict(wire)
    return Event(str(data.pop("type")), int(data.pop("seq")), str(data.pop("requestId")), data)


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[Event]:
    decoder = SSEDecoder()
    async for line in lines:
        frame = decoder.feed(line)
        if frame is not None:
            yield event_from_wire(json.loads(frame["data"]))


def _session(wire: Mapping[str, Any]) -> SessionInfo:
    return SessionInfo(
        wire["sessionId"],
        wire["userId"],
        wire["flowKind"],
        wire.get("projectId"),
        wire["createdAt"],
        dict(wire.get("metadata") or {}),
    )


def _seg(value: str) -> str:
    return quote(value, safe="")


def _action_body(input: Any, session_id: str | None, project_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"input": input}
    if session_id is not None:
        body["sessionId"] = session_id
    if project_id is not None:
        body["projectId"] = project_id
    return body


# ----------------------------------------------------------------------------------- async


# `flowstate serve` closes a connection idle for 5 s (its --timeout-keep-alive default). A
# client that keeps idle connections as long (httpx's default) races it: a request sent on a
# connection the server is closing fails with a reset. Dropping idle ones sooner avoids that.
_LIMITS = httpx.Limits(keepalive_expiry=2.0)


class AsyncClient:
    """The flowstate HTTP API from asyncio code.

    ``AsyncClient("http://127.0.0.1:8000", token=...)`` for a server, or
    ``AsyncClient(app=create_app(server), token=...)`` to call an app in-process.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        app: Any = None,
        timeout: float | None = 30.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if app is not None and transport is None:
            transport = StreamingASGITransport(app)
        base = base_url or ("http://flowstate.local" if app is not None else DEFAULT_URL)
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(
            base_url=base.rstrip("/"),
            headers=all_headers,
            timeout=timeout,
            transport=transport,
            limits=_LIMITS,
        )
        # Streams may be quiet for long stretches (the server pings every 15 s by default).
        self._stream_timeout = httpx.Timeout(timeout, read=None)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Any = None,
    ) -> Any:
        response = await self._http.request(method, API + path, json=body, params=params)
        return _json(response)

    # ---------------------------------------------------------------- actions

    async def run(
        self,
        kind: str,
        action: str,
        input: Any = None,
        *,
        session_id: str | None = None,
        project_id: str | None = None,
    ) -> RunResult:
        """Run an action and wait for its output (events are not collected: see stream)."""
        data = await self._call(
            "POST",
            f"/{_seg(kind)}/actions/{_seg(action)}",
            body=_action_body(input, session_id, project_id),
        )
        return RunResult(data["output"], data["sessionId"], data["requestId"], [])

    async def stream(
        self,
        kind: str,
        action: str,
        input: Any = None,
        *,
        session_id: str | None = None,
        project_id: str | None = None,
    ) -> AsyncIterator[Event]:
        """Run an action, yielding its events live; ends after request.completed/failed.

        A connection lost mid-run is resumed from the last event received (Last-Event-ID).
        """
        last: Event | None = None
        try:
            async with self._http.stream(
                "POST",
                f"{API}/{_seg(kind)}/actions/{_seg(action)}",
                json=_action_body(input, session_id, project_id),
                headers={"Accept": SSE},
                timeout=self._stream_timeout,
            ) as response:
                await _check_stream(response)
                async for event in _events(response.aiter_lines()):
                    last = event
                    yield event
                    if event.type in TERMINAL:
                        return
        except httpx.TransportError:
            if last is None:
                raise
        if last is not None:
            async for event in self.follow(
                kind, last.request_id, last_event_id=f"{last.request_id}:{last.seq}"
            ):
                yield event

    async def follow(
        self,
        kind: str,
        request_id: str,
        *,
        last_event_id: str | None = None,
        retries: int = 3,
    ) -> AsyncIterator[Event]:
        """A run's events after ``last_event_id`` (all when None), then live ones to its end.

        Reconnects up to ``retries`` times in a row when the connection drops.
        """
        after = last_event_id
        failures = 0
        while True:
            headers = {"Accept": SSE}
            if after is not None:
                headers["Last-Event-ID"] = after
            try:
                async with self._http.stream(
                    "GET",
                    f"{API}/{_seg(kind)}/requests/{_seg(request_id)}/stream",
                    headers=headers,
                    timeout=self._stream_timeout,
                ) as response:
                    await _check_stream(response)
                    async for event in _events(response.aiter_lines()):
                        after = f"{event.request_id}:{event.seq}"
                        failures = 0
                        yield event
                        if event.type in TERMINAL:
                            return
                    return
            except httpx.TransportError:
                failures += 1
                if failures > retries:
                    raise
                await asyncio.sleep(min(0.1 * 2**failures, 2.0))

    @contextlib.asynccontextmanager
    async def user_events(
        self, project_ids: Sequence[str] = ()
    ) -> AsyncIterator[AsyncIterator[Event]]:
        """``async with client.user_events() as events``: live changes of your user scope.

        Also of the projects in ``project_ids`` (you must have a session in each). The
        subscription is live when the block is entered.
        """
        async with self._http.stream(
            "GET",
            f"{API}/users/me/stream",
            params=[("projectId", p) for p in project_ids],
            headers={"Accept": SSE},
            timeout=self._stream_timeout,
        ) as response:
            await _check_stream(response)
            lines = response.aiter_lines()
            async for line in lines:  # the server's first frame says it has subscribed
                if line.startswith(":") and "subscribed" in line:
                    break
            yield _events(lines)

    # ---------------------------------------------------------------- sessions and state

    async def snapshot(
        self, session_id: str, *, client_data: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """The session's client snapshot (``sessionId``, ``flowKind``, ``clientData``, …).

        ``client_data=["count", "user.theme"]`` asks for only those names (a bare name means
        the session scope); the answer then has no ``resources``.
        """
        params = None if client_data is None else {"clientData": ",".join(client_data)}
        data: dict[str, Any] = await self._call(
            "GET", f"/sessions/{_seg(session_id)}/state", params=params
        )
        return data

    async def create_session(
        self, kind: str, *, session_id: str | None = None, project_id: str | None = None
    ) -> SessionInfo:
        body = {"sessionId": session_id, "projectId": project_id}
        data = await self._call(
            "POST",
            f"/{_seg(kind)}/sessions",
            body={k: v for k, v in body.items() if v is not None},
        )
        return _session(data)

    async def get_session(self, session_id: str) -> SessionInfo:
        return _session(await self._call("GET", f"/sessions/{_seg(session_id)}"))

    async def list_sessions(self, kind: str | None = None) -> list[SessionInfo]:
        """Every session of yours (optionally of one flow kind), following the pages."""
        out: list[SessionInfo] = []
        after: str | None = None
        while True:
            page, after = await self.list_sessions_page(kind, limit=1000, after=after)
            out.extend(page)
            if after is None:
                return out

    async def list_sessions_page(
        self, kind: str | None = None, *, limit: int = 100, after: str | None = None
    ) -> tuple[list[SessionInfo], str | None]:
        """One page of your sessions and the ``after`` of the next page (None: the last)."""
        params: dict[str, Any] = {"limit": limit}
        if kind is not None:
            params["kind"] = kind
        if after is not None:
            params["after"] = after
        data = await self._call("GET", "/sessions", params=params)
        return [_session(s) for s in data["sessions"]], data.get("next")

    async def set_session_metadata(self, session_id: str, patch: Mapping[str, Any]) -> SessionInfo:
        """Shallow-merge ``patch`` into a session's metadata (None deletes a key)."""
        return _session(
            await self._call("PATCH", f"/sessions/{_seg(session_id)}/metadata", body=dict(patch))
        )

    async def delete_session(self, session_id: str) -> bool:
        data = await self._call("DELETE", f"/sessions/{_seg(session_id)}")
        return bool(data["deleted"])

    async def resource_content(
        self,
        session_id: str,
        name: str,
        *,
        key: str | None = None,
        scope: str | None = None,
    ) -> str | None:
        """A resource's text (resources declared with ``ResourceClient(content=True)``)."""
        params = {k: v for k, v in {"key": key, "scope": scope}.items() if v is not None}
        data = await self._call(
            "GET", f"/sessions/{_seg(session_id)}/resources/{_seg(name)}/content", params=params
        )
        content: str | None = data["content"]
        return content

    async def resource_items(
        self,
        session_id: str,
        name: str,
        *,
        prefix: str = "",
        after: str | None = None,
        limit: int = 100,
        scope: str | None = None,
    ) -> dict[str, Any]:
        """One page of a collection (``count``, ``items``, ``next``), or a resource's data."""
        params: dict[str, Any] = {"prefix": prefix, "limit": limit}
        if after is not None:
            params["after"] = after
        if scope is not None:
            params["scope"] = scope
        data: dict[str, Any] = await self._call(
            "GET", f"/sessions/{_seg(session_id)}/resources/{_seg(name)}", params=params
        )
        return data

    async def flows(self) -> list[dict[str, Any]]:
        """The server's flows with their actions and input schemas."""
        data = await self._call("GET", "")
        flows: list[dict[str, Any]] = data["flows"]
        return flows

    def live(
        self, kind: str, session_id: str | None = None, *, project_id: str | None = None
    ) -> AsyncLiveSession:
        """A :class:`AsyncLiveSession` on this client."""
        return AsyncLiveSession(self, kind, session_id, project_id=project_id)


class AsyncLiveSession:
    """A session whose client snapshot stays fresh across the runs made through it.

    ``state_change`` / ``resource_change`` events mark the snapshot stale; it is refetched on
    ``request.completed`` (and after a failed run that changed something), as flow-state.dev
    describes. Without ``session_id`` the first run creates the session.
    """

    def __init__(
        self,
        client: AsyncClient,
        kind: str,
        session_id: str | None = None,
        *,
        project_id: str | None = None,
    ) -> None:
        self.client = client
        self.kind = kind
        self.session_id = session_id
        self.project_id = project_id
        self.snapshot: dict[str, Any] | None = None
        self.stale = True
        self.events: list[Event] = []

    @property
    def client_data(self) -> dict[str, Any]:
        """``snapshot["clientData"]`` (empty before the first fetch)."""
        data: dict[str, Any] = (self.snapshot or {}).get("clientData", {})
        return data

    async def refresh(self) -> dict[str, Any]:
        """Refetch the snapshot."""
        if self.session_id is None:
            raise ValueError("this live session has no session yet: run an action first")
        self.snapshot = await self.client.snapshot(self.session_id)
        self.stale = False
        return self.snapshot

    async def run(
        self,
        action: str,
        input: Any = None,
        *,
        on_event: Callable[[Event], Any] | None = None,
    ) -> Any:
        """Run ``action`` in this session, stream its events, return its output.

        ``on_event`` (sync or async) sees each event; a failed run raises its error.
        """
        self.events = []
        failure: Event | None = None
        output: Any = None
        async for event in self.client.stream(
            self.kind, action, input, session_id=self.session_id, project_id=self.project_id
        ):
            self.events.append(event)
            if event.type == "request.created":
                self.session_id = event.data["sessionId"]
            elif event.type in ("state_change", "resource_change"):
                self.stale = True
            if on_event is not None:
                result = on_event(event)
                if inspect.isawaitable(result):
                    await result
            if event.type == "request.completed":
                output = event.data.get("output")
                await self.refresh()
            elif event.type == "request.failed":
                failure = event
        if failure is not None:
            if self.stale:
                await self.refresh()
            raise error_from_wire(
                failure.data.get("error", {}),
                request_id=failure.request_id,
                session_id=self.session_id,
            )
        return output


# ----------------------------------------------------------------------------------- sync


class _LoopThread:
    """A private event loop on a daemon thread, where the sync client's async one runs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="flowstate-client", daemon=True
        )
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def iterate(self, agen: AsyncIterator[T]) -> Generator[T, None, None]:
        async def step() -> tuple[bool, T | None]:
            try:
                return True, await agen.__anext__()
            except StopAsyncIteration:
                return False, None

        try:
            while True:
                more, item = self.call(step())
                if not more:
                    return
                yield item  # type: ignore[misc]
        finally:
            close = getattr(agen, "aclose", None)
            if close is not None and not self.loop.is_closed():
                self.call(close())

    def close(self) -> None:
        """Cancel what still runs on the loop (open streams), then stop it."""
        if self.loop.is_closed():
            return

        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        self.call(drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def _sync_signature(wrapper: Callable[..., Any], method: Callable[..., Any]) -> None:
    """Give ``wrapper`` the name, docs and signature of ``method``, less ``self`` and with the
    sync return type (an ``AsyncIterator[X]`` becomes an ``Iterator[X]``)."""
    functools.update_wrapper(wrapper, method, updated=())
    del wrapper.__wrapped__  # type: ignore[attr-defined]
    signature = inspect.signature(method)
    returns = signature.return_annotation
    if isinstance(returns, str) and returns.startswith("AsyncIterator["):
        returns = returns.removeprefix("Async")
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=list(signature.parameters.values())[1:], return_annotation=returns
    )


class _Blocking(Generic[P, T]):
    """A :class:`Client` method: the :class:`AsyncClient` coroutine method, awaited on the
    client's loop thread."""

    def __init__(self, method: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]):
        self.method = method
        self.__doc__ = method.__doc__

    @overload
    def __get__(self, client: None, owner: type[Client]) -> _Blocking[P, T]: ...
    @overload
    def __get__(self, client: Client, owner: type[Client]) -> Callable[P, T]: ...
    def __get__(
        self, client: Client | None, owner: type[Client]
    ) -> _Blocking[P, T] | Callable[P, T]:
        if client is None:
            return self
        method, loop, target = self.method, client._loop, client._async

        def blocking(*args: P.args, **kwargs: P.kwargs) -> T:
            return loop.call(method(target, *args, **kwargs))

        _sync_signature(blocking, method)
        return blocking


class _Iterating(Generic[P, T]):
    """A :class:`Client` method: the :class:`AsyncClient` async iterator method, iterated on
    the client's loop thread."""

    def __init__(self, method: Callable[Concatenate[AsyncClient, P], AsyncIterator[T]]):
        self.method = method
        self.__doc__ = method.__doc__

    @overload
    def __get__(self, client: None, owner: type[Client]) -> _Iterating[P, T]: ...
    @overload
    def __get__(self, client: Client, owner: type[Client]) -> Callable[P, Iterator[T]]: ...
    def __get__(
        self, client: Client | None, owner: type[Client]
    ) -> _Iterating[P, T] | Callable[P, Iterator[T]]:
        if client is None:
            return self
        method, loop, target = self.method, client._loop, client._async

        def iterating(*args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
            return loop.iterate(method(target, *args, **kwargs))

        _sync_signature(iterating, method)
        return iterating


class Client:
    """The flowstate HTTP API from synchronous code (same methods as :class:`AsyncClient`).

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        app: Any = None,
        timeout: float | None = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._loop = _LoopThread()

        async def build() -> AsyncClient:  # httpx binds its pool to the loop it runs in
            return AsyncClient(base_url, token=token, app=app, timeout=timeout, headers=headers)

        self._async = self._loop.call(build())

    def close(self) -> None:
        if not self._loop.loop.is_closed():
            self._loop.call(self._async.aclose())
            self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The same methods as AsyncClient's, run on the loop thread (signatures and docs are theirs).
    run = _Blocking(AsyncClient.run)
    stream = _Iterating(AsyncClient.stream)
    follow = _Iterating(AsyncClient.follow)
    snapshot = _Blocking(AsyncClient.snapshot)
    create_session = _Blocking(AsyncClient.create_session)
    get_session = _Blocking(AsyncClient.get_session)
    list_sessions = _Blocking(AsyncClient.list_sessions)
    list_sessions_page = _Blocking(AsyncClient.list_sessions_page)
    set_session_metadata = _Blocking(AsyncClient.set_session_metadata)
    delete_session = _Blocking(AsyncClient.delete_session)
    resource_content = _Blocking(AsyncClient.resource_content)
    resource_items = _Blocking(AsyncClient.resource_items)
    flows = _Blocking(AsyncClient.flows)

    @contextlib.contextmanager
    def user_events(self, project_ids: Sequence[str] = ()) -> Iterator[Iterator[Event]]:
        """``with client.user_events() as events``: live changes of your user scope."""
        manager = self._async.user_events(project_ids)
        events = self._loop.iterate(self._loop.call(manager.__aenter__()))
        try:
            yield events
        except BaseException as exc:
            events.close()
            if not self._loop.call(manager.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            events.close()
            self._loop.call(manager.__aexit__(None, None, None))

    def live(
        self, kind: str, session_id: str | None = None, *, project_id: str | None = None
    ) -> LiveSession:
        """A :class:`LiveSession` on this client."""
        return LiveSession(self, self._async.live(kind, session_id, project_id=project_id))


class LiveSession:
    """The sync face of :class:`AsyncLiveSession` (snapshot refetched on request.completed)."""

    def __init__(self, client: Client, live: AsyncLiveSession) -> None:
        self._client = client
        self._live = live

    @property
    def session_id(self) -> str | None:
        return self._live.session_id

    @property
    def snapshot(self) -> dict[str, Any] | None:
        return self._live.snapshot

    @property
    def client_data(self) -> dict[str, Any]:
        return self._live.client_data

    @property
    def events(self) -> list[Event]:
        return self._live.events

    def refresh(self) -> dict[str, Any]:
        return self._client._loop.call(self._live.refresh())

    def run(
        self, action: str, input: Any = None, *, on_event: Callable[[Event], Any] | None = None
    ) -> Any:
        """Run ``action`` in this session; ``on_event`` runs on the client's loop thread."""
        return self._client._loop.call(self._live.run(action, input, on_event=on_event))
