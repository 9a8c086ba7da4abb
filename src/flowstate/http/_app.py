"""The HTTP API: a FastAPI app over a :class:`~flowstate.server.FlowServer`.

``create_app(server)`` mounts the API at ``/api/flows`` (OpenAPI at ``/openapi.json``, one
documented route per action so each action's input model is in the schema) and the web page
at ``/``. Runs execute in background tasks that feed a bounded per-request event log, so a
client that disconnects can resume the run's SSE stream with ``Last-Event-ID``. Every error is
JSON ``{"error": {"code", "message", "details"?}}``. See ``docs/http.md``.
"""

# No ``from __future__ import annotations``: FastAPI reads these signatures at run time.

import asyncio
import contextlib
import inspect
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, create_model
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__, access
from ..access import Identity
from ..blocks import Block
from ..clientdata import to_json
from ..codegen import action_input_model
from ..errors import (
    FlowStateError,
    SessionNotFoundError,
    StateValidationError,
    client_error,
    describe_errors,
)
from ..layout import MAX_ID_BYTES
from ..limits import MAX_BODY_BYTES
from ..server import FlowServer, RunResult, SessionInfo
from ..values import Event
from ._auth import TOKENS_ENV, Authenticator, make_authenticator, tokens_from_env
from ._errors import (
    HTTPError,
    clean_errors,
    error_payload,
    error_response,
    parse_body,
    parse_json,
    read_body,
    status_for,
)
from ._requestlog import (
    DEFAULT_REQUEST_LOG_BYTES,
    EventsExpired,
    LoggedEvent,
    RequestLog,
    RequestLogs,
)
from ._wmill import wmill_router

__all__ = ["HTTPError", "create_app", "error_payload", "status_for"]

log = logging.getLogger("flowstate.http")

STATIC_DIR = Path(__file__).parent.parent / "static"
API_PREFIX = "/api/flows"

M = TypeVar("M", bound=BaseModel)

# ----------------------------------------------------------------------------------- errors


def _unauthorized() -> HTTPError:
    return HTTPError(
        401,
        "auth_error",
        "missing or invalid bearer token (send Authorization: Bearer <token>)",
        headers={"WWW-Authenticate": "Bearer"},
    )


# ----------------------------------------------------------------------------------- bodies


# The id rule of flowstate.layout.check_id, as JSON Schema can say it (the server also checks
# the 512-byte UTF-8 limit).
def _one_segment(value: Any) -> Any:
    # Said in words before the pattern would say it in a regex: an id with "/" could never be
    # addressed as /sessions/{id}.
    if isinstance(value, str) and "/" in value:
        raise ValueError('an id must not contain "/" (it is one URL path segment)')
    return value


Ident = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_BYTES, pattern=r"^[^\x00-\x1f\x7f/]+$"),
    BeforeValidator(_one_segment),
]


class ActionBody(BaseModel):
    """``POST /{kind}/actions/{action}``: the action input, and optionally where it runs."""

    model_config = ConfigDict(extra="forbid")

    input: Any = None
    sessionId: Ident | None = Field(None, description="run in this session (created if new)")
    projectId: Ident | None = Field(None, description="the project scope of a new session")


class SessionBody(BaseModel):
    """``POST /{kind}/sessions``: an optional client-chosen id and project."""

    model_config = ConfigDict(extra="forbid")

    sessionId: Ident | None = None
    projectId: Ident | None = None


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    """Every error answer; a failed run also carries ``requestId`` and ``sessionId``."""

    error: ErrorInfo
    requestId: str | None = None
    sessionId: str | None = None


class SessionOut(BaseModel):
    sessionId: str
    userId: str
    flowKind: str
    projectId: str | None
    createdAt: float
    metadata: dict[str, Any] = {}


class SessionList(BaseModel):
    sessions: list[SessionOut]
    next: str | None = None


class Deleted(BaseModel):
    sessionId: str
    deleted: bool


class Content(BaseModel):
    name: str
    key: str | None = None
    content: str | None


def _parse_last_event_id(value: str | None, request_id: str) -> int:
    """The ``seq`` to resume after, from ``Last-Event-ID: {requestId}:{seq}`` (or a bare seq)."""
    if value is None or not value.strip():
        return 0
    rid, sep, seq = value.strip().rpartition(":")
    # isdigit() alone accepts "²" and other non-ASCII digits, which int() refuses.
    if (sep and rid != request_id) or not (seq.isascii() and seq.isdigit() and len(seq) <= 18):
        raise HTTPError(
            400,
            "invalid_last_event_id",
            f"Last-Event-ID must look like {request_id}:<seq> for this stream, got {value[:80]!r}",
        )
    return int(seq)


# ----------------------------------------------------------------------------------- SSE


def _frame(wire: Mapping[str, Any]) -> ServerSentEvent:
    """``id: {requestId}:{seq}``, ``event: {type}``, ``data: {json}``."""
    return ServerSentEvent(
        data=json.dumps(wire, separators=(",", ":")),
        event=wire["type"],
        id=f"{wire['requestId']}:{wire['seq']}",
    )


async def _frames(events: AsyncIterator[LoggedEvent]) -> AsyncIterator[ServerSentEvent]:
    """A run's buffered events as SSE frames (their JSON was encoded once, when logged). A
    follower that fell behind what the buffer keeps gets an ``error`` frame, then the end."""
    try:
        async for event in events:
            yield ServerSentEvent(
                data=event.data, event=event.type, id=f"{event.request_id}:{event.seq}"
            )
    except EventsExpired as exc:
        error = {"error": {"code": "events_expired", "message": str(exc)}}
        yield ServerSentEvent(data=json.dumps(error, separators=(",", ":")), event="error")


async def _watch_topics(api: "_Api", topics: list[str]) -> AsyncIterator[list[ServerSentEvent]]:
    """Live messages of several store topics, merged, in batches (what arrived together); a
    ``: subscribed`` comment comes first."""
    async with contextlib.AsyncExitStack() as stack:
        queues = [await stack.enter_async_context(api.server.store.subscribe(t)) for t in topics]
        merged: asyncio.Queue[Any] = asyncio.Queue()

        async def pump(queue: asyncio.Queue[Any]) -> None:
            while True:
                merged.put_nowait(await queue.get())

        pumps = [asyncio.create_task(pump(q)) for q in queues]
        try:
            # A comment (ignored by SSE parsers): the subscriptions are live from here on.
            yield [ServerSentEvent(comment="subscribed")]
            while True:
                batch = [_frame(await merged.get())]
                while not merged.empty():
                    batch.append(_frame(merged.get_nowait()))
                yield batch
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)


async def _flat(batches: AsyncIterator[list[ServerSentEvent]]) -> AsyncIterator[ServerSentEvent]:
    async for batch in batches:
        for frame in batch:
            yield frame


T = TypeVar("T")


async def _while_allowed(
    items: AsyncIterator[T], allowed: Callable[[], Awaitable[bool]], every: float
) -> AsyncIterator[T]:
    """``items`` for as long as ``allowed()`` holds: checked before each item is passed on
    and every ``every`` seconds while none comes; the first failed check ends the stream, so
    nothing that arrives after the caller lost access reaches them."""
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(items))
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                if not await allowed():
                    return
                continue
            finished, pending = pending, None
            try:
                item = finished.result()
            except StopAsyncIteration:
                return
            if not await allowed():
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        closing = getattr(items, "aclose", None)
        if closing is not None:
            await closing()


# ----------------------------------------------------------------------------------- state


class _Api:
    """What the routes share: the server, the authenticator, limits and live runs."""

    def __init__(
        self,
        server: FlowServer,
        authenticate: Authenticator,
        *,
        max_body_bytes: int,
        logs: RequestLogs,
        ping_seconds: float,
        recheck_seconds: float = 5.0,
    ) -> None:
        self.server = server
        self.authenticate = authenticate
        self.max_body_bytes = max_body_bytes
        self.logs = logs
        self.ping_seconds = ping_seconds
        self.recheck_seconds = recheck_seconds
        self.tasks: set[asyncio.Task[RunResult]] = set()
        self.flow_list = {
            "flows": [
                {
                    "kind": kind,
                    "actions": [
                        {
                            "name": name,
                            "input": _input_schema(b),
                        }
                        for name, b in flow.actions.items()
                    ],
                    # Names only (never values): lets a client merge the exposed values that
                    # state_change events carry and know when derived data needs a refetch.
                    "clientData": {
                        scope: {
                            "expose": list(flow.scopes[scope].client.expose),
                            "derived": list(flow.scopes[scope].client.derived),
                        }
                        for scope in ("session", "user", "project")
                        if scope in flow.scopes
                    },
                }
                for kind, flow in server.flows.items()
            ]
        }

    def sse(self, content: AsyncIterator[ServerSentEvent]) -> EventSourceResponse:
        return EventSourceResponse(content, sep="\n", ping=self.ping_seconds)

    def guarded_sse(
        self,
        request: Request,
        user_id: str,
        rule: Callable[[Identity], Awaitable[bool]],
        content: AsyncIterator[T],
    ) -> AsyncIterator[T]:
        """``content`` while the stream's caller may still read it: the request is
        authenticated again (a callable ``auth`` sees membership changes, a revoked token
        fails) and ``rule`` is asked, before each item and every ``recheck_seconds`` between
        items. A failed check (or an authenticator error) ends the stream."""

        async def allowed() -> bool:
            try:
                identity = await self.authenticate(request)
                return identity is not None and identity.user_id == user_id and await rule(identity)
            except Exception:
                log.exception("re-checking a stream's caller failed; the stream ends")
                return False

        return _while_allowed(content, allowed, self.recheck_seconds)

    def track(self, task: asyncio.Task[RunResult], request_log: RequestLog) -> None:
        """Keep a run alive whoever listens, and close its log when it ends."""
        self.tasks.add(task)

        def done(t: asyncio.Task[RunResult]) -> None:
            self.tasks.discard(t)
            request_log.finish()
            if t.cancelled():
                return
            exc = t.exception()  # retrieved here, so asyncio does not report it as unread
            if exc is not None:
                # Logged with its detail under the error id its client message names.
                client_error(exc)

        task.add_done_callback(done)

    async def shutdown(self, grace: float = 10.0) -> None:
        """Let running runs finish (up to ``grace`` seconds), then cancel the rest."""
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def _input_schema(block: Block) -> dict[str, Any] | None:
    """The JSON Schema an action's input is validated against (a pipeline's first step's when
    it declares none), so a web form can offer its fields."""
    model = action_input_model(block)
    return None if model is None else model.model_json_schema()


def _api(request: Request) -> _Api:
    return cast(_Api, request.app.state.flowstate)


async def _caller(request: Request) -> Identity:
    identity = await _api(request).authenticate(request)
    if identity is None:
        raise _unauthorized()
    return identity


Caller = Annotated[Identity, Depends(_caller)]
"""The authenticated caller: user id and project memberships (401 without one)."""


async def _current_user(caller: Caller) -> str:
    return caller.user_id


User = Annotated[str, Depends(_current_user)]
"""The caller's user id (the same authentication as :data:`Caller`, resolved once)."""


async def _reachable_session(session_id: str, request: Request, caller: Caller) -> SessionInfo:
    """The session of the ``{session_id}`` path segment, if the caller may reach it (else 404).

    Every route under ``/sessions/{session_id}`` depends on this, so the rule of
    :mod:`flowstate.access` holds on all of them.
    """
    try:
        info: SessionInfo | None = await _api(request).server.get_session(
            session_id, user_id=caller.user_id
        )
    except SessionNotFoundError:
        info = None
    access.require_session(caller, info, session_id)
    assert info is not None
    return info


ReachableSession = Annotated[SessionInfo, Depends(_reachable_session)]
ScopeName = Literal["session", "user", "project", "org"]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "Malformed request"),
        (401, "Missing or invalid bearer token"),
        (404, "Not found (or not yours)"),
        (422, "Validation error"),
    )
}

# ----------------------------------------------------------------------------------- routes

router = APIRouter(responses=ERROR_RESPONSES)


def _run_stream(api: _Api, request: Request, request_log: RequestLog, after: int) -> Response:
    """A run's events as SSE, for as long as the caller may read them: its owner, while a
    member of the run's project. (A run whose session is deleted can write nothing more: its
    next write fails the run, which ends the stream.)"""

    async def rule(identity: Identity) -> bool:
        return access.can_reach_project(identity, request_log.project_id)

    frames = _frames(request_log.follow(after))
    return api.sse(api.guarded_sse(request, request_log.user_id, rule, frames))


async def _run_action(request: Request, kind: str, action: str) -> Response:
    api = _api(request)
    caller = await _caller(request)
    body = parse_body(await read_body(request, api.max_body_bytes), ActionBody)
    # Checked here before a run starts; the run checks the session it reads (its owner, and
    # membership of its project) itself, so no separate read of the session is needed.
    access.require_project(caller, body.projectId)
    user = caller.user_id
    request_log = api.logs.new(user_id=user, flow_kind=kind)
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    completed: list[Any] = []  # the output as sent in request.completed (JSON form)

    def start(_: object = None) -> None:
        if not started.done():
            started.set_result(None)

    async def on_event(event: Event) -> None:
        first = not request_log.started
        if first:  # request.created names the run's project: its stream needs membership
            request_log.project_id = event.data.get("projectId")
        wire = event.to_wire()
        request_log.append(wire)
        if wire["type"] == "request.completed":
            completed.append(wire.get("output"))
        if first:
            api.logs.add(request_log)
            start()

    task = asyncio.create_task(
        api.server.run(
            kind,
            action,
            body.input,
            user_id=user,
            session_id=body.sessionId,
            project_id=body.projectId,
            on_event=on_event,
            caller=caller,
        )
    )
    api.track(task, request_log)
    task.add_done_callback(start)  # refused before its first event
    await started
    if not request_log.started:
        # Refused before the run began (unknown flow, action or session): no request id.
        exc = task.exception()
        assert exc is not None
        return error_response(exc)
    if "text/event-stream" in request.headers.get("accept", ""):
        return _run_stream(api, request, request_log, 0)
    try:
        # shield: a client that goes away does not cancel the run.
        result = await asyncio.shield(task)
    except Exception as exc:
        return error_response(
            exc, requestId=request_log.request_id, sessionId=request_log.session_id
        )
    output = completed[0] if completed else to_json(result.output)
    return JSONResponse(
        {
            "requestId": result.request_id,
            "sessionId": result.session_id,
            "status": "completed",
            "output": output,
        }
    )


@router.get("", summary="List the flows and their actions")
async def list_flows(user: User, request: Request) -> dict[str, Any]:
    return _api(request).flow_list


@router.get(
    "/{kind}/requests/{request_id}/stream",
    summary="Follow a run's events (SSE), resumable with Last-Event-ID",
    response_class=EventSourceResponse,
)
async def request_stream(
    kind: str,
    request_id: str,
    request: Request,
    caller: Caller,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    api = _api(request)
    request_log = api.logs.get(request_id)
    if (
        request_log is None
        or request_log.user_id != caller.user_id
        or not access.can_reach_project(caller, request_log.project_id)
        or request_log.flow_kind != kind
    ):
        raise HTTPError(
            404,
            "request_not_found",
            f'request "{request_id}" not found: a run\'s stream is kept by the server process '
            f"that ran it, for {api.logs.keep_seconds:g} s after it ends (less when the "
            "server's request-log memory budget needs the room)",
        )
    after = _parse_last_event_id(last_event_id, request_id)
    try:
        request_log.check_available(after)
    except EventsExpired as exc:
        raise HTTPError(410, "events_expired", str(exc)) from None
    return _run_stream(api, request, request_log, after)


@router.post(
    "/{kind}/sessions",
    summary="Create a session (or fetch yours with that id)",
    status_code=201,
    response_model=SessionOut,
)
async def create_session(kind: str, request: Request, caller: Caller) -> Response:
    api = _api(request)
    body = parse_body(await read_body(request, api.max_body_bytes), SessionBody)
    server = api.server
    server.flow(kind)
    access.require_project(caller, body.projectId)
    user = caller.user_id
    if body.sessionId is not None:
        try:
            existing = await server.get_session(body.sessionId, user_id=user, kind=kind)
        except FlowStateError:
            existing = None
        if existing is not None:
            access.require_session(caller, existing, body.sessionId)
            if body.projectId is not None and existing.project_id != body.projectId:
                raise SessionNotFoundError(f'session "{body.sessionId}" not found')
            return JSONResponse(existing.to_wire(), status_code=200)
    info = await server.create_session(
        kind, user_id=user, project_id=body.projectId, session_id=body.sessionId
    )
    return JSONResponse(info.to_wire(), status_code=201)


@router.get(
    "/sessions",
    summary="Your sessions, one page at a time (by session id; next is the after of the next)",
    response_model=SessionList,
)
async def list_sessions(
    request: Request,
    caller: Caller,
    kind: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Query()] = None,
) -> dict[str, Any]:
    sessions, next_id = await _api(request).server.list_sessions_page(
        user_id=caller.user_id, kind=kind, limit=limit, after=after
    )
    return {
        "sessions": [s.to_wire() for s in sessions if access.can_reach_session(caller, s)],
        "next": next_id,
    }


@router.patch(
    "/sessions/{session_id}/metadata",
    summary="Merge into the session's metadata (a JSON object; null deletes a key)",
    response_model=SessionOut,
)
async def patch_session_metadata(
    session_id: str, request: Request, info: ReachableSession
) -> dict[str, Any]:
    api = _api(request)
    patch = parse_json(await read_body(request, api.max_body_bytes))
    if not isinstance(patch, dict):
        raise HTTPError(
            422,
            "validation_error",
            "request body: session metadata must be a JSON object, e.g. "
            '{"title": "Trip", "tags": ["travel"]}; a null value deletes a key',
        )
    updated = await api.server.set_session_metadata(session_id, patch, user_id=info.user_id)
    return updated.to_wire()


@router.get("/sessions/{session_id}", summary="One of your sessions", response_model=SessionOut)
async def get_session(session_id: str, info: ReachableSession) -> dict[str, Any]:
    return info.to_wire()


@router.delete(
    "/sessions/{session_id}",
    summary="Delete a session with its state and resources",
    response_model=Deleted,
)
async def delete_session(
    session_id: str, request: Request, info: ReachableSession
) -> dict[str, Any]:
    await _api(request).server.delete_session(session_id, user_id=info.user_id)
    return {"sessionId": session_id, "deleted": True}


@router.get("/sessions/{session_id}/state", summary="The session's client snapshot")
async def session_state(
    session_id: str,
    request: Request,
    info: ReachableSession,
    client_data: Annotated[
        str | None,
        Query(
            alias="clientData",
            description="only these client-data names, comma-separated: session.a,user.b "
            "(a bare name means session); resources are then left out",
        ),
    ] = None,
) -> dict[str, Any]:
    server = _api(request).server
    names = None if client_data is None else client_data.split(",")
    try:
        return await server.snapshot(
            info.flow_kind, session_id, user_id=info.user_id, client_data=names
        )
    except StateValidationError as exc:
        if names is None or not exc.errors or exc.errors[0].get("loc") != ["clientData"]:
            raise
        errors = [{**exc.errors[0], "loc": ["query", "clientData"]}]
        raise HTTPError(422, "validation_error", str(exc), details=errors) from None


@router.get(
    "/sessions/{session_id}/resources/{name}/content",
    summary="A resource's text (resources declared with ResourceClient(content=True))",
    response_model=Content,
    response_model_exclude_none=True,
)
async def resource_content(
    session_id: str,
    name: str,
    request: Request,
    info: ReachableSession,
    key: Annotated[str | None, Query(description="collection instance key")] = None,
    scope: Annotated[ScopeName | None, Query()] = None,
) -> dict[str, Any]:
    return await _api(request).server.resource_content(
        session_id, name, user_id=info.user_id, key=key, scope=scope
    )


@router.get(
    "/sessions/{session_id}/resources/{name}",
    summary="A resource's client data; a collection's instances, one page at a time",
)
async def resource_items(
    session_id: str,
    name: str,
    request: Request,
    info: ReachableSession,
    prefix: Annotated[str, Query()] = "",
    after: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    scope: Annotated[ScopeName | None, Query()] = None,
) -> dict[str, Any]:
    return await _api(request).server.resource_items(
        session_id, name, user_id=info.user_id, prefix=prefix, after=after, limit=limit, scope=scope
    )


@router.get(
    "/sessions/{session_id}/stream",
    summary="Live state/resource changes of one of your sessions and its user/project (SSE)",
    response_class=EventSourceResponse,
)
async def session_stream(session_id: str, request: Request, info: ReachableSession) -> Response:
    api = _api(request)
    topics = [f"session:{info.session_id}", f"user:{info.user_id}"]
    if info.project_id is not None:
        topics.append(f"project:{info.project_id}")

    async def rule(identity: Identity) -> bool:
        # The session as it is now: deleted (or deleted and created again), or bound to a
        # project the caller left, ends the stream.
        try:
            now = await api.server.get_session(session_id, user_id=identity.user_id)
        except SessionNotFoundError:
            return False
        return now.created_at == info.created_at and access.can_reach_session(identity, now)

    batches = api.guarded_sse(request, info.user_id, rule, _watch_topics(api, topics))
    return api.sse(_flat(batches))


@router.get(
    "/users/me/stream",
    summary="Live state/resource changes of your user scope and your projects (SSE)",
    response_class=EventSourceResponse,
)
async def user_stream(
    request: Request,
    caller: Caller,
    project_id: Annotated[list[str], Query(alias="projectId")] = [],  # noqa: B006
) -> Response:
    api = _api(request)
    for pid in project_id:
        access.require_project(caller, pid)
    projects = list(dict.fromkeys(project_id))
    topics = [f"user:{caller.user_id}", *(f"project:{pid}" for pid in projects)]

    async def rule(identity: Identity) -> bool:
        return all(identity.is_member(pid) for pid in projects)

    batches = api.guarded_sse(request, caller.user_id, rule, _watch_topics(api, topics))
    return api.sse(_flat(batches))


# ----------------------------------------------------------------------------------- OpenAPI


def _component_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _model_schema(
    model: type[BaseModel],
    prefix: str,
    mode: Literal["validation", "serialization"],
    components: dict[str, Any],
) -> dict[str, Any]:
    """``model``'s JSON Schema, its nested models moved to ``components`` (as ``$ref``s)."""
    schema = model.model_json_schema(
        ref_template=f"#/components/schemas/{prefix}{{model}}", mode=mode
    )
    for name, definition in schema.pop("$defs", {}).items():
        components[prefix + name] = definition
    return schema


def _action_models(block: Block | None) -> tuple[type[BaseModel], type[BaseModel]]:
    """The request body and JSON result models of one action (``block=None``: any action)."""
    input_model = None if block is None else block.input
    output_model = None if block is None else block.output
    request = create_model(
        "Request",
        __base__=ActionBody,
        input=(input_model, ...) if input_model is not None else (Any, None),
    )
    result = create_model(
        "Result",
        requestId=(str, ...),
        sessionId=(str, ...),
        status=(cast(Any, Literal["completed"]), ...),
        output=(output_model if output_model is not None else Any, ...),
    )
    return request, result


def _action_openapi(kind: str, action: str, block: Block | None, components: dict[str, Any]) -> Any:
    """The OpenAPI body and responses of one action's route, from its generated models."""
    prefix = _component_name(f"{kind}.{action}.")
    request, result = _action_models(block)
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": _model_schema(request, prefix, "validation", components)
                }
            },
        },
        "responses": {
            "200": {
                "description": "The run completed (JSON), or its events (SSE, when the request "
                "sends Accept: text/event-stream)",
                "content": {
                    "application/json": {
                        "schema": _model_schema(result, prefix, "serialization", components)
                    },
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            },
            "403": {"description": "Write to a read-only resource"},
            "409": {"description": "Already exists, or concurrent modification"},
            "413": {"description": "Request body over the size limit"},
            "500": {"description": "The run failed"},
        },
    }


def _add_action_routes(app: FastAPI, server: FlowServer, components: dict[str, Any]) -> None:
    for kind, flow in server.flows.items():
        for action, block in flow.actions.items():

            def make(kind: str, action: str) -> Callable[..., Any]:
                # No FastAPI dependencies on the hot path: the caller is authenticated inside
                # _run_action (the same authenticator, the same 401).
                async def endpoint(request: Request) -> Response:
                    return await _run_action(request, kind, action)

                return endpoint

            app.add_api_route(
                f"{API_PREFIX}/{kind}/actions/{action}",
                make(kind, action),
                methods=["POST"],
                summary=f"Run {kind}.{action}",
                description=inspect.getdoc(getattr(block, "execute", None)) or "",
                operation_id=_component_name(f"run_{kind}_{action}"),
                tags=[kind],
                responses=ERROR_RESPONSES,
                openapi_extra=_action_openapi(kind, action, block, components),
            )

    async def run_any_action(kind: str, action: str, request: Request) -> Response:
        """The generic action route (a run's JSON result, or SSE on request)."""
        return await _run_action(request, kind, action)

    app.add_api_route(
        f"{API_PREFIX}/{{kind}}/actions/{{action}}",
        run_any_action,
        methods=["POST"],
        summary="Run an action of any flow",
        description="Each registered action also has its own route documenting its input and "
        "output models; unknown flows and actions answer 404.",
        responses=ERROR_RESPONSES,
        openapi_extra=_action_openapi("{kind}", "{action}", None, components),
    )


def _install_openapi(app: FastAPI, components: dict[str, Any]) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            parts = schema.setdefault("components", {})
            parts.setdefault("schemas", {}).update(components)
            parts["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearerAuth": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# ----------------------------------------------------------------------------------- the app


async def _collect(api: _Api, every: float) -> None:
    """Background retention: every ``every`` seconds, expired data goes (errors are logged)."""
    from ..lifecycle import collect_garbage

    while True:
        await asyncio.sleep(every)
        api.logs.prune()  # finished request logs past keep_seconds
        try:
            report = await collect_garbage(api.server)
        except Exception:
            log.exception("background gc failed; trying again in %g s", every)
            continue
        if report.records:
            log.info(
                "gc: removed %d expired sessions and %d expired instances (%d records)",
                report.sessions,
                report.instances,
                report.records,
            )


def create_app(
    server: FlowServer,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    auth: Mapping[str, str | Identity] | Callable[[Any], Any] | None = None,
    events_per_request: int = 1000,
    keep_finished: int = 1000,
    keep_seconds: float = 600.0,
    request_log_bytes: int = DEFAULT_REQUEST_LOG_BYTES,
    ping_seconds: float = 15.0,
    recheck_seconds: float = 5.0,
    close_server: bool = False,
    web: bool = True,
    gc_every: float | None = None,
) -> FastAPI:
    """The ASGI app serving ``server``.

    ``auth`` overrides ``server.auth`` (a token mapping or a callable; with neither, tokens
    come from ``$FLOWSTATE_TOKENS``). ``events_per_request`` bounds each run's replay buffer;
    finished runs stay resumable for ``keep_seconds`` (at most ``keep_finished`` of them), and
    all runs' buffers together hold at most ``request_log_bytes`` (64 MiB by default; the
    oldest finished runs are dropped first).
    An open event stream ends once its caller may no longer read it (token revoked, project
    left, session deleted): the caller is authenticated again before each event and every
    ``recheck_seconds`` between events.
    ``close_server`` closes the server when the app shuts down; ``web`` serves the page at /.
    ``gc_every`` (seconds) collects expired data in the background that often (see
    :func:`flowstate.lifecycle.collect_garbage`), between requests' store calls.
    """
    if gc_every is not None and gc_every <= 0:
        raise ValueError(f"gc_every must be > 0 seconds, got {gc_every}")
    if not recheck_seconds > 0:
        raise ValueError(f"recheck_seconds must be > 0, got {recheck_seconds}")
    for name, value in (
        ("max_body_bytes", max_body_bytes),
        ("events_per_request", events_per_request),
        ("request_log_bytes", request_log_bytes),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    configured = auth if auth is not None else server.auth
    if configured is None and not tokens_from_env():
        log.warning(
            "no auth configured and $%s is empty: every API request answers 401", TOKENS_ENV
        )
    authenticate = make_authenticator(configured)
    api = _Api(
        server,
        authenticate,
        max_body_bytes=max_body_bytes,
        logs=RequestLogs(
            max_events=events_per_request,
            keep_finished=keep_finished,
            keep_seconds=keep_seconds,
            max_bytes=request_log_bytes,
        ),
        ping_seconds=ping_seconds,
        recheck_seconds=recheck_seconds,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        collector = None if gc_every is None else asyncio.create_task(_collect(api, gc_every))
        yield
        if collector is not None:
            collector.cancel()
            await asyncio.gather(collector, return_exceptions=True)
        await api.shutdown()
        if close_server:
            await server.aclose()

    # FastAPIOffline: /docs and /redoc load their assets from the installed package (served
    # under /static-offline-docs), not from a CDN, so the API docs work offline.
    app = FastAPIOffline(
        title="flowstate",
        version=__version__,
        description="Typed, scoped state for AI and automation flows. See docs/http.md.",
        lifespan=lifespan,
    )
    app.state.flowstate = api
    components: dict[str, Any] = {}
    _add_action_routes(app, server, components)
    app.include_router(router, prefix=API_PREFIX)
    app.include_router(wmill_router(server.store, authenticate, max_body=max_body_bytes))
    _install_openapi(app, components)

    @app.exception_handler(FlowStateError)
    async def on_flowstate_error(request: Request, exc: FlowStateError) -> Response:
        return error_response(exc)

    @app.exception_handler(HTTPError)
    async def on_http_error(request: Request, exc: HTTPError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = clean_errors(exc.errors())
        return error_response(
            HTTPError(422, "validation_error", describe_errors(errors), details=errors)
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_starlette_error(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed"}
        code = codes.get(exc.status_code, "http_error")
        return error_response(
            HTTPError(exc.status_code, code, str(exc.detail), headers=exc.headers)
        )

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> Response:
        response = error_response(exc)  # logs the detail under the error id it names
        log.info("internal error on %s %s", request.method, request.url.path)
        return response

    if web:
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

        @app.get("/", include_in_schema=False)
        async def index() -> FileResponse:
            return FileResponse(STATIC_DIR / "index.html")

    return app
