"""FlowServer: several flows on one store, run without HTTP (the HTTP app wraps this)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from . import access
from .access import Identity
from .blocks import Block
from .clientdata import (
    CLIENT_SCOPES,
    parse_client_data_selection,
    resource_client_data,
    scope_client_data,
    to_json,
)
from .errors import (
    DefinitionError,
    FlowNotFoundError,
    FlowStateWarning,
    KeyPatternError,
    ResourceNotFoundError,
    SessionNotFoundError,
    StateValidationError,
    client_error,
)
from .flow import Flow, normalize_scope
from .layout import (
    check_id,
    parse_key,
    scope_root,
    session_key,
    user_session_key,
    user_sessions_prefix,
)
from .limits import MAX_OUTPUT_DEPTH, MAX_RECORD_BYTES, json_problem
from .ops import Change, FieldOp
from .resources import AnyResourceDefinition, CollectionRef, ResourceCollectionDefinition
from .runtime import Run, execute_block
from .schema import Schema
from .scopes import ScopeBinding, load_bindings
from .sessions import is_expired, merge_metadata
from .sharing import check_shared_scopes
from .state import StateCell, StateHandle
from .stores import Record, Store, open_store
from .stores.base import Guard
from .values import Event, RunResult, SessionInfo

__all__ = ["FlowServer", "RunResult", "SessionInfo"]

log = logging.getLogger("flowstate.server")

Auth = Mapping[str, str | Identity] | Callable[[Any], Any] | None

_FREE = Schema(None)


def _new_id() -> str:
    """A fresh request or session id: 128 random bits as 32 hex digits (what ``uuid4().hex``
    gave, at a fifth of its cost)."""
    return os.urandom(16).hex()


def _incarnation(info: SessionInfo) -> Guard:
    """Writes of a run commit only while its session binding is the one the run started on.

    The binding's ``createdAt`` identifies its incarnation: deleting a session first replaces
    it (a tombstone), and a new session of the same id is created with a new one. Checked by
    the store in the write's own transaction, so a run that outlives its session's deletion
    writes nothing, and a new owner of the id never inherits anything.
    """
    session_id = info.session_id

    def gone() -> SessionNotFoundError:
        return SessionNotFoundError(
            f'session "{session_id}" not found: it was deleted while this run was in flight '
            "(nothing was written)"
        )

    return Guard(session_key(session_id), "createdAt", info.created_at, gone)


def _persisted_commits(run: Run) -> bool:
    """Whether a run committed anything outside its request scope."""
    return any(
        e.type in ("state_change", "resource_change") and e.data.get("scope") != "request"
        for e in run.events
    )


def _output_json(output: Any) -> Any:
    """The run's output in JSON form, refused (422) past the limits clients can parse."""
    problem = json_problem(output, max_depth=MAX_OUTPUT_DEPTH, state=False)
    wire = None
    if problem is None:
        try:
            wire = to_json(output)
        except (RecursionError, ValueError) as exc:  # pydantic: "serialization depth exceeded"
            if "depth" not in str(exc) and not isinstance(exc, RecursionError):
                raise
            rule = f"values must not nest deeper than {MAX_OUTPUT_DEPTH} levels"
            problem = ((), rule, "json_depth")
        else:
            problem = json_problem(wire, max_depth=MAX_OUTPUT_DEPTH, state=False)
    if problem is not None:
        where, message, type_ = problem
        path = ".".join(str(p) for p in ("output", *where))
        raise StateValidationError(
            f'field "{path}": {message} ({type_})',
            scope="output",
            errors=[{"loc": ["output", *where], "msg": message, "type": type_}],
            where="run output",
        )
    return wire


def _session_info(session_id: str, record: Record | None) -> SessionInfo | None:
    """The session a binding record describes; None when absent or a tombstone."""
    if record is None or record.fields.get("deleted"):  # a tombstone: being (or half) deleted
        return None
    return _binding_info(session_id, record)


def _binding_info(session_id: str, record: Record) -> SessionInfo:
    """The session a binding record (a tombstone too) describes."""
    f = record.fields
    metadata = f.get("metadata")
    return SessionInfo(
        session_id,
        f["userId"],
        f["flowKind"],
        f.get("projectId"),
        f["createdAt"],
        dict(metadata) if isinstance(metadata, dict) else {},
    )


class FlowServer:
    """Hosts flows on one store: runs actions, streams events, serves client snapshots.

    Registration checks that flows sharing user/project state agree before the
    store is opened, so a conflict stores nothing. ``max_record_bytes`` (default 16 MiB)
    limits each stored record of the store it opens from ``store`` (a URL); a write over it
    fails with ``StateValidationError`` (HTTP 422) and writes nothing.
    """

    def __init__(
        self,
        flows: Flow | Sequence[Flow] | Mapping[str, Flow],
        store: str | Store | None = None,
        auth: Auth = None,
        *,
        snapshot_limit: int = 100,
        max_record_bytes: int | None = None,
    ) -> None:
        if isinstance(flows, Flow):
            flow_list = [flows]
        elif isinstance(flows, Mapping):
            flow_list = list(flows.values())
        else:
            flow_list = list(flows)
        self.flows: dict[str, Flow] = {}
        for flow in flow_list:
            if not isinstance(flow, Flow):
                raise DefinitionError(
                    f"FlowServer takes flows built by define_flow(), got {flow!r}"
                )
            if flow.kind in self.flows:
                raise DefinitionError(f'two flows have the kind "{flow.kind}"')
            self.flows[flow.kind] = flow
        report = check_shared_scopes(flow_list)
        for message in report.warnings:
            warnings.warn(message, FlowStateWarning, stacklevel=2)
        self._owns_store = not isinstance(store, Store)
        if isinstance(store, Store):
            if max_record_bytes is not None:
                raise DefinitionError(
                    "max_record_bytes applies to a store that FlowServer opens from a URL; "
                    "give it to the store you pass instead (e.g. "
                    "open_store(url, max_record_bytes=...))"
                )
            self.store: Store = store
        else:
            limit = MAX_RECORD_BYTES if max_record_bytes is None else max_record_bytes
            self.store = open_store(store, max_record_bytes=limit)
        self.auth = auth
        self.snapshot_limit = snapshot_limit
        self._plans: dict[tuple[str, str], dict[str, frozenset[str] | None]] = {}

    # ------------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        """Release the store if this server opened it (a store passed in stays open)."""
        if self._owns_store:
            await self.store.aclose()

    async def __aenter__(self) -> FlowServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def flow(self, kind: str) -> Flow:
        flow = self.flows.get(kind)
        if flow is None:
            raise FlowNotFoundError(f'no flow of kind "{kind}" is registered')
        return flow

    # ------------------------------------------------------------------ sessions

    def _ttl(self, kind: str) -> timedelta | None:
        flow = self.flows.get(kind)
        return None if flow is None else flow.scopes["session"].ttl

    async def _read_session(
        self, session_id: str, *, include_expired: bool = False
    ) -> SessionInfo | None:
        """The session's binding; an expired session reads as absent (as if deleted)."""
        try:
            check_id(session_id, "session_id")
        except KeyPatternError:
            return None  # an id that cannot be stored cannot exist
        record = await self.store.read(session_key(session_id))
        info = _session_info(session_id, record)
        if info is None or record is None:
            return None
        if not include_expired and self._expired(info, record.accessed_at):
            return None
        return info

    def _expired(self, info: SessionInfo, last_active_ns: int) -> bool:
        return is_expired(last_active_ns, self._ttl(info.flow_kind), time.time_ns())

    def _not_found(self, session_id: str) -> SessionNotFoundError:
        return SessionNotFoundError(f'session "{session_id}" not found')

    async def get_session(
        self, session_id: str, *, user_id: str, kind: str | None = None
    ) -> SessionInfo:
        """The session's binding; another user's (or another kind's) session is not found."""
        info = await self._read_session(session_id)
        if info is None or info.user_id != user_id or (kind is not None and info.flow_kind != kind):
            raise self._not_found(session_id)
        return info

    async def create_session(
        self,
        kind: str,
        *,
        user_id: str,
        project_id: str | None = None,
        session_id: str | None = None,
    ) -> SessionInfo:
        """Create (bind) a session for ``user_id`` on flow ``kind``; an existing id must match."""
        self.flow(kind)
        check_id(user_id, "user_id")
        if project_id is not None:
            check_id(project_id, "project_id")
        session_id = check_id(session_id or _new_id(), "session_id")
        info = SessionInfo(session_id, user_id, kind, project_id, time.time())
        fields = {k: v for k, v in info.to_wire().items() if k not in ("sessionId", "metadata")}
        key = session_key(session_id)
        for _ in range(10):
            created = await self.store.create(key, fields)
            if created.status != "exists":
                break
            record = await self.store.read(key)
            if record is None:
                continue  # deleted meanwhile: create it
            if record.fields.get("deleted"):
                # A deletion was interrupted: nothing can write there (every write of the old
                # incarnation fails), so finish it and take the id over, once (CAS).
                await self.store.delete_prefix(scope_root("session", session_id))
                change = Change(_FREE, replace=fields, expected_version=record.version)
                if (await self.store.apply(key, change)).status == "committed":
                    break
                continue
            existing = _session_info(session_id, record)
            assert existing is not None  # neither absent nor a tombstone
            if self._expired(existing, record.accessed_at):
                # An expired session is a deleted one: delete what is left, take the id.
                await self._purge_session(existing)
                continue
            if (existing.user_id, existing.flow_kind) != (user_id, kind):
                raise self._not_found(session_id)
            if project_id is not None and existing.project_id != project_id:
                raise self._not_found(session_id)
            return existing
        else:
            raise self._not_found(session_id)
        await self.store.create(
            user_session_key(user_id, session_id),
            {"flowKind": kind, "createdAt": info.created_at},
        )
        return info

    async def list_sessions(
        self,
        *,
        user_id: str,
        kind: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[SessionInfo]:
        """The user's sessions (optionally of one flow kind), by session id.

        ``after`` continues after that session id, ``limit`` caps how many are returned (see
        :meth:`list_sessions_page` for pages with a continuation id).
        """
        sessions, _ = await self.list_sessions_page(
            user_id=user_id, kind=kind, limit=limit, after=after
        )
        return sessions

    async def list_sessions_page(
        self,
        *,
        user_id: str,
        kind: str | None = None,
        limit: int | None = 100,
        after: str | None = None,
    ) -> tuple[list[SessionInfo], str | None]:
        """One page of the user's sessions and the ``after`` of the next page (None: last).

        Expired sessions and other kinds are skipped; the cost grows with the sessions
        scanned (the user's own index), never with other users' sessions.
        """
        if limit is not None and limit < 1:
            raise DefinitionError(f"limit must be at least 1, got {limit}")
        index = user_sessions_prefix(user_id)
        cursor = None if after is None else user_session_key(user_id, after)
        out: list[SessionInfo] = []
        batch = 100 if limit is None else max(limit + 1, 16)
        while True:
            keys = await self.store.scan(index, after=cursor, limit=batch)
            for key in keys:
                cursor = key
                session_id = parse_key(key).item
                info = None if session_id is None else await self._read_session(session_id)
                if info is None or info.user_id != user_id:
                    continue
                if kind is not None and info.flow_kind != kind:
                    continue
                if limit is not None and len(out) == limit:
                    return out, out[-1].session_id
                out.append(info)
            if len(keys) < batch:
                return out, None

    async def set_session_metadata(
        self, session_id: str, patch: Mapping[str, Any], *, user_id: str
    ) -> SessionInfo:
        """Shallow-merge ``patch`` into the session's metadata (a None value deletes a key).

        Metadata is a small JSON object (at most 4096 bytes, keys up to 64 characters) for
        finding sessions: a title, tags. A bad patch raises :class:`StateValidationError`
        and nothing is written; another user's session is not found.
        """
        info = await self.get_session(session_id, user_id=user_id)
        merge_metadata(info.metadata, patch)  # fail early, before any write
        cell = StateCell(
            self.store,
            session_key(info.session_id),
            Schema.of(None),
            label=f'session "{session_id}"',
            scope="session",
            must_exist=True,
        )

        def change(values: dict[str, Any]) -> dict[str, Any]:
            return {"metadata": merge_metadata(values.get("metadata") or {}, patch)}

        try:
            await StateHandle(cell).update_state(change)
        except ResourceNotFoundError:
            raise self._not_found(session_id) from None
        metadata = cell.values.get("metadata") or {}
        return dataclasses.replace(info, metadata=dict(metadata))

    async def delete_session(self, session_id: str, *, user_id: str) -> bool:
        """Delete a session of this user with all its state and resources."""
        info = await self.get_session(session_id, user_id=user_id)
        await self._purge_session(info)
        return True

    async def _purge_session(self, info: SessionInfo) -> None:
        """Delete a session so that it stays deleted.

        1. Tombstone the binding (a new ``createdAt``), guarded by the current incarnation:
           from then on every write of a run on this session fails in the store, atomically.
        2. Delete its state, resources and collections (nothing can add to them any more).
        3. Delete the index entry and the tombstone. A crash in between leaves a tombstone,
           which reads as no session; creating the id again finishes the deletion first.
        """
        key = session_key(info.session_id)
        stamp = -time.time()  # never a creation time
        ops = (FieldOp("set", "deleted", True), FieldOp("set", "createdAt", stamp))
        try:
            await self.store.apply(key, Change(_FREE, ops=ops), guard=_incarnation(info))
        except SessionNotFoundError:
            return  # deleted (or replaced) concurrently
        await self.store.delete_prefix(scope_root("session", info.session_id))
        await self.store.delete(user_session_key(info.user_id, info.session_id))
        tombstone = dataclasses.replace(info, created_at=stamp)
        with contextlib.suppress(SessionNotFoundError):  # taken over meanwhile: keep it
            await self.store.delete(key, guard=_incarnation(tombstone))

    async def _purge_if_empty(self, info: SessionInfo) -> None:
        """Delete a session that holds nothing (another writer may have written to it)."""
        if not await self.store.scan(scope_root("session", info.session_id), limit=1):
            await self._purge_session(info)

    # ------------------------------------------------------------------ bindings

    def _load_plan(self, flow: Flow, action: str) -> dict[str, frozenset[str] | None]:
        """Per scope, the fields a run of ``action`` reads (None: all of them).

        A block sees the fields of its own declared model; a block declaring none sees the
        combined schema; client-exposed fields ride along with every state event. Fields no
        block of the action declares (a long log another action reads) are never loaded.
        """
        key = (flow.kind, action)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        blocks = flow.action(action).walk()
        plan = {}
        for scope, spec in flow.scopes.items():
            schema = spec.schema
            if schema.model is None:
                plan[scope] = None
                continue
            names = set(spec.client.expose)
            for block in blocks:
                model = block.declarations[scope].state if scope in block.declarations else None
                names |= set(schema.field_names if model is None else model.model_fields)
            plan[scope] = frozenset(names & schema.field_names)
        self._plans[key] = plan
        return plan

    def _bindings(
        self,
        flow: Flow,
        run: Run,
        session_guard: Guard | None = None,
        plan: Mapping[str, frozenset[str] | None] | None = None,
    ) -> dict[str, ScopeBinding]:
        async def emit(
            type_: str, data: dict[str, Any], client_data: dict[str, Any] | None
        ) -> None:
            await run.emit(type_, data, client_data)

        def bind(
            scope: str, store: Store, scope_id: str, root: str, guard: Guard | None = None
        ) -> ScopeBinding:
            spec = flow.scopes[scope]
            shared = (scope == "user" and not flow.isolate_user_state) or (
                scope == "project" and not flow.isolate_project_state
            )
            return ScopeBinding(
                store,
                scope,
                scope_id,
                root,
                spec.schema,
                spec.resources,
                retry=spec.retry,
                expose=frozenset(spec.client.expose),
                emit=emit,
                guard=guard,
                fields=None if plan is None else plan.get(scope),
                lineage=spec.lineage,
                shared=shared,
            )

        iso_user = flow.kind if flow.isolate_user_state else None
        iso_project = flow.kind if flow.isolate_project_state else None
        bindings = {
            "request": bind(
                "request", run.local_store, run.request_id, scope_root("request", run.request_id)
            ),
            "session": bind(
                "session",
                self.store,
                run.session_id,
                scope_root("session", run.session_id),
                session_guard,
            ),
            "user": bind(
                "user",
                self.store,
                run.user_id,
                scope_root("user", run.user_id, isolated_kind=iso_user),
            ),
        }
        # The request scope lives in the run's own fresh store: nothing to read.
        bindings["request"].cell.absorb(None)
        if run.project_id is not None:
            bindings["project"] = bind(
                "project",
                self.store,
                run.project_id,
                scope_root("project", run.project_id, isolated_kind=iso_project),
            )
        return bindings

    # ------------------------------------------------------------------ running

    async def _publish(self, run: Run, event: Event) -> None:
        """A change event to its scope's topic (``session:``, ``user:``, ``project:``), with
        ``sessionId`` and ``flowKind``; nothing is built when no subscriber can receive it."""
        if event.type not in ("state_change", "resource_change"):
            return
        scope = event.data.get("scope")
        if scope == "session":
            topic = f"session:{run.session_id}"
        elif scope == "user":
            topic = f"user:{run.user_id}"
        elif scope == "project" and run.project_id is not None:
            topic = f"project:{run.project_id}"
        else:
            return
        if not self.store.may_deliver(topic):
            return
        wire = event.to_wire()
        wire["sessionId"] = run.session_id
        wire["flowKind"] = run.flow_kind
        await self.store.publish(topic, wire)

    async def _prepare(
        self,
        kind: str,
        action: str,
        *,
        user_id: str,
        session_id: str | None,
        project_id: str | None,
        sink: Callable[[Event], Any] | None,
        caller: Identity | None = None,
    ) -> tuple[Block, Run, SessionInfo | None]:
        """The action's block, the run, and the session if this run created it.

        With ``caller``, a session it may not reach (see :mod:`flowstate.access`) is refused
        as not found before anything runs or is written, and so is a project it is not a
        member of.
        """
        flow = self.flow(kind)
        block = flow.action(action)
        check_id(user_id, "user_id")
        if caller is not None:
            access.require_project(caller, project_id)
        plan = self._load_plan(flow, action)
        request_id = _new_id()

        def new_run(session: str, project: str | None, guard: Guard | None) -> Run:
            async def deliver(event: Event) -> None:
                await self._publish(run, event)
                if sink is not None:
                    await sink(event)

            run = Run(
                flow_kind=kind,
                action=action,
                request_id=request_id,
                session_id=session,
                user_id=user_id,
                project_id=project,
                sink=deliver,
                flow=flow,
            )
            run.bindings = self._bindings(flow, run, guard, plan)
            return run

        fresh: SessionInfo | None = None
        if session_id is None:
            info = fresh = await self.create_session(kind, user_id=user_id, project_id=project_id)
            run = new_run(info.session_id, info.project_id, _incarnation(info))
            await load_bindings(self.store, run.bindings.values())
            return block, run, fresh
        # One round trip reads the session binding and every record the run starts with,
        # guessing the project from the caller (a session's project is fixed at creation).
        session_id = check_id(session_id, "session_id")
        run = new_run(session_id, project_id, None)
        key = session_key(session_id)
        read = await load_bindings(self.store, run.bindings.values(), {key: None})
        record = read[key]
        existing = _session_info(session_id, record)
        if existing is not None and record is not None:
            if self._expired(existing, record.accessed_at):
                existing = None  # an expired session is a deleted one: create_session takes the id
        if existing is None:  # created now (clearing what a dead session left): read again
            info = fresh = await self.create_session(
                kind, user_id=user_id, project_id=project_id, session_id=session_id
            )
            run = new_run(session_id, info.project_id, _incarnation(info))
            await load_bindings(self.store, run.bindings.values())
            return block, run, fresh
        else:
            if existing.user_id != user_id or existing.flow_kind != kind:
                raise self._not_found(session_id)
            if project_id is not None and existing.project_id != project_id:
                raise self._not_found(session_id)
            if caller is not None and not access.can_reach_session(caller, existing):
                raise self._not_found(session_id)  # e.g. no longer a member of its project
            info = existing
            if flow.scopes["session"].ttl is not None:
                await self.store.touch(key)  # activity
        if info.project_id != run.project_id:  # the session's project: read its records too
            run = new_run(session_id, info.project_id, _incarnation(info))
            await load_bindings(self.store, run.bindings.values())
        else:  # writes commit only while the binding read (or created) is the session's
            run.bindings["session"].set_guard(_incarnation(info))
        return block, run, fresh

    async def _execute(
        self, block: Block, run: Run, input: Any, fresh: SessionInfo | None = None
    ) -> Any:
        await run.emit(
            "request.created",
            {
                "sessionId": run.session_id,
                "flowKind": run.flow_kind,
                "action": run.action,
                "projectId": run.project_id,
            },
        )
        try:
            for binding in run.bindings.values():
                await binding.load()
            output = await execute_block(run, block, input, None)
            wire_output = _output_json(output)
        except Exception as exc:
            # In-process code reads the detail; clients read what client_error allows (an
            # internal error becomes an error id, logged with the detail).
            code, public, _ = client_error(exc)
            detail = str(exc) or type(exc).__name__
            message = f"{public}: {detail}" if code == "internal_error" else detail
            await run.emit(
                "request.failed",
                {"error": {"code": code, "message": message}},
                {"error": {"code": code, "message": public}},
            )
            if fresh is not None and not _persisted_commits(run):
                # The run created its session and failed having written nothing: leave no
                # empty session behind (best effort; the run's own error is what matters).
                try:
                    await self._purge_if_empty(fresh)
                except Exception:
                    log.exception("could not remove the empty session %r", fresh.session_id)
            raise
        await run.emit("request.completed", {"output": wire_output})
        return output

    async def run(
        self,
        kind: str,
        action: str,
        input: Any = None,
        *,
        user_id: str,
        session_id: str | None = None,
        project_id: str | None = None,
        on_event: Callable[[Event], Awaitable[None]] | None = None,
        caller: Identity | None = None,
    ) -> RunResult:
        """Run one action; a block's exception is re-raised after the run is recorded failed.

        ``on_event`` receives each event as it is emitted (the HTTP layer streams from it).
        ``caller`` (the HTTP layer passes the authenticated identity) refuses, as not found,
        a session or project the caller may not reach (see :mod:`flowstate.access`), checked
        on the session binding the run reads anyway; in-process callers are trusted and
        usually pass none.
        """
        block, run, fresh = await self._prepare(
            kind,
            action,
            user_id=user_id,
            session_id=session_id,
            project_id=project_id,
            sink=on_event,
            caller=caller,
        )
        output = await self._execute(block, run, input, fresh)
        return RunResult(output, run.session_id, run.request_id, list(run.events))

    async def stream(
        self,
        kind: str,
        action: str,
        input: Any = None,
        *,
        user_id: str,
        session_id: str | None = None,
        project_id: str | None = None,
    ) -> AsyncIterator[Event]:
        """Run one action, yielding its events live; a failure ends with ``request.failed``."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()

        async def sink(event: Event) -> None:
            queue.put_nowait(event)

        block, run, fresh = await self._prepare(
            kind, action, user_id=user_id, session_id=session_id, project_id=project_id, sink=sink
        )

        async def work() -> None:
            try:
                await self._execute(block, run, input, fresh)
            except Exception:  # already reported as request.failed
                pass
            finally:
                queue.put_nowait(None)

        task = asyncio.create_task(work())
        try:
            while True:
                event = await queue.get()
                if event is None:
                    break
                yield event
        finally:
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # ------------------------------------------------------------------ client view

    async def snapshot(
        self,
        kind: str,
        session_id: str,
        *,
        user_id: str,
        client_data: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """The client snapshot of a session: client data only, never raw state.

        ``client_data`` (e.g. ``["session.count", "user.theme"]``; a bare name means session)
        selects client-data names: only those are computed and returned, and resources are
        left out. A name the flow does not define raises ``StateValidationError``.
        """
        flow = self.flow(kind)
        selection: dict[str, set[str]] | None = None
        if client_data is not None:
            try:
                selection = parse_client_data_selection(client_data, flow.scopes)
            except ValueError as exc:
                raise StateValidationError(
                    f"clientData: {exc}",
                    errors=[{"loc": ["clientData"], "msg": str(exc), "type": "value_error"}],
                ) from None
        info = await self.get_session(session_id, user_id=user_id, kind=kind)
        bindings = self._view_bindings(info)
        wanted = [
            bindings[scope]
            for scope in CLIENT_SCOPES
            if scope in bindings and (selection is None or scope in selection)
        ]
        await load_bindings(self.store, wanted)  # one round trip for every scope
        data_out: dict[str, Any] = {}
        resources: dict[str, Any] = {}
        for scope in CLIENT_SCOPES:
            binding = bindings.get(scope)
            if binding is None or (selection is not None and scope not in selection):
                continue
            spec = flow.scopes[scope]
            names = None if selection is None else selection[scope]
            data = await scope_client_data(binding, spec, self.snapshot_limit, names)
            if data:
                data_out[scope] = data
            if selection is None:
                res = await resource_client_data(binding, self.snapshot_limit)
                if res:
                    resources[scope] = res
        client_data_out = data_out
        out: dict[str, Any] = {
            "sessionId": info.session_id,
            "flowKind": kind,
            "clientData": client_data_out,
        }
        if resources:
            out["resources"] = resources
        return out

    def _view_bindings(self, info: SessionInfo) -> dict[str, ScopeBinding]:
        """Bindings that read a session's scopes outside any run (they emit no events)."""
        run = Run(
            flow_kind=info.flow_kind,
            action="",
            request_id="snapshot",
            session_id=info.session_id,
            user_id=info.user_id,
            project_id=info.project_id,
        )
        return self._bindings(self.flow(info.flow_kind), run)

    async def _client_resource(
        self, session_id: str, name: str, *, user_id: str, scope: str | None
    ) -> tuple[str, ScopeBinding, AnyResourceDefinition]:
        info = await self.get_session(session_id, user_id=user_id)
        bindings = self._view_bindings(info)
        scopes = [normalize_scope(scope)] if scope else ["session", "user", "project"]
        for scope_name in scopes:
            binding = bindings.get(scope_name)
            definition = None if binding is None else binding.resources.get(name)
            if binding is not None and definition is not None and definition.client is not None:
                return scope_name, binding, definition
        # A resource without a client projection is invisible: same answer as an unknown name.
        raise ResourceNotFoundError(
            f'resource "{name}" not found: no resource of that name is visible to clients in '
            f'session "{session_id}"'
        )

    async def resource_content(
        self,
        session_id: str,
        name: str,
        *,
        user_id: str,
        key: str | None = None,
        scope: str | None = None,
    ) -> dict[str, Any]:
        """A resource's text for clients: ``{"name", "key"?, "content"}``.

        Only resources declared with ``ResourceClient(content=True)`` serve content; a
        collection needs the instance ``key``. ``scope`` picks the scope when a name is
        declared on several (default: the first of session, user, project that has it).
        """
        _, binding, definition = await self._client_resource(
            session_id, name, user_id=user_id, scope=scope
        )
        assert definition.client is not None
        if not definition.client.content:
            raise ResourceNotFoundError(
                f'resource "{name}" does not serve content to clients (declare it with '
                "client=ResourceClient(content=True))"
            )
        ref = binding.registry.get(name)
        if isinstance(ref, CollectionRef):
            if key is None:
                raise KeyPatternError(
                    f'collection "{name}" needs the instance key to read its content'
                )
            item = await ref.get(key)
            return {"name": name, "key": item.key, "content": await item.read_content()}
        return {"name": name, "content": await ref.read_content()}

    async def resource_items(
        self,
        session_id: str,
        name: str,
        *,
        user_id: str,
        prefix: str = "",
        after: str | None = None,
        limit: int = 100,
        scope: str | None = None,
    ) -> dict[str, Any]:
        """Client projections of a resource: a collection's instances one page at a time.

        A collection answers ``{"name", "scope", "count", "items": [{"key", "clientData"}],
        "next"}`` where ``next`` (the last key, or None on the last page) is the ``after`` of
        the next page; a static resource answers ``{"name", "scope", "clientData"}``.
        """
        scope_name, binding, definition = await self._client_resource(
            session_id, name, user_id=user_id, scope=scope
        )
        client = definition.client
        assert client is not None
        ref = binding.registry.get(name)
        if not isinstance(definition, ResourceCollectionDefinition):
            await binding.load()
            return {
                "name": name,
                "scope": scope_name,
                "clientData": to_json(client.project(ref.state, ref._cell.values)),
            }
        keys = await ref.list(prefix, after=after, limit=limit + 1)
        items = []
        for key in keys[:limit]:
            item = await ref.peek(key)
            if item is not None:
                items.append(
                    {
                        "key": key,
                        "clientData": to_json(client.project(item.state, item._cell.values)),
                    }
                )
        return {
            "name": name,
            "scope": scope_name,
            "count": await ref.count(),
            "items": items,
            "next": keys[limit - 1] if len(keys) > limit else None,
        }
