"""Bulk maintenance of a server's stored records: upgrade every record, collect garbage.

Both walk the store in key order, one batch at a time (memory stays bounded whatever the
store holds), and can be interrupted and run again: :func:`migrate_state` skips records that
are already current and takes ``after=`` (the last key a previous run reported) to skip
ahead; :func:`collect_garbage` finds only what is still there, so a second run simply
scans again from the start.

A record key says what it is (see docs/architecture.md): ``{scope}/{id}/state``,
``{scope}/{id}/r/{name}``, ``{scope}/{id}/c/{name}/{key}``, with ``{scope}@{kind}`` for
isolated user/project state. Session records belong to the flow kind their binding
(``_sessions/{id}``) names; shared user/project records to every flow that shares them (they
agree on schema versions: the startup check).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

from .errors import MigrationError, SchemaVersionError
from .flow import Flow
from .layout import SESSIONS, parse_key, scope_root, session_key, user_session_key
from .migrations import SCHEMA_FIELD, SchemaLineage, split_schema_version
from .ops import Change
from .resources import ResourceCollectionDefinition
from .schema import Schema
from .server import FlowServer
from .sessions import is_expired
from .stores.base import Record
from .transfer import Progress, iter_records

__all__ = [
    "GcReport",
    "MigrationReport",
    "RecordKind",
    "classify",
    "collect_garbage",
    "migrate_state",
]

BATCH = 500
CONCURRENCY = 64  # writes in flight per batch (the stores commit concurrent writes together)
STATE_PREFIXES = ("project", "session", "user")


@dataclass(frozen=True)
class RecordKind:
    """What a state record is: its scope, scope instance, and which record of the scope."""

    scope: str  # session, user, project
    isolated_kind: str | None
    scope_id: str
    what: str  # state, resource, instance
    name: str | None  # resource or collection name


def classify(key: str) -> RecordKind | None:
    """Parse a state, resource or collection-instance key; None for any other record."""
    try:
        parsed = parse_key(key)
    except ValueError:
        return None
    if parsed.scope not in STATE_PREFIXES or parsed.scope_id is None:
        return None
    what = {"state": "state", "resource": "resource", "collection": "instance"}.get(parsed.kind)
    if what is None or (parsed.scope == "session" and parsed.isolated_kind is not None):
        return None
    return RecordKind(parsed.scope, parsed.isolated_kind, parsed.scope_id, what, parsed.name)


class _Flows:
    """Which flow definition describes a record (session bindings looked up and cached)."""

    def __init__(self, server: FlowServer) -> None:
        self.server = server
        self._bindings: dict[str, tuple[str | None, int]] = {}

    async def session_binding(self, session_id: str) -> tuple[str | None, int]:
        """(flow kind or None if unbound, last activity in ns) of a session."""
        cached = self._bindings.get(session_id)
        if cached is not None:
            return cached
        if len(self._bindings) > 10_000:
            self._bindings.clear()  # bounded memory
        record = await self.server.store.read(session_key(session_id))
        found = (None, 0) if record is None else (record.fields.get("flowKind"), record.accessed_at)
        self._bindings[session_id] = found
        return found

    async def flows_for(self, kind: RecordKind) -> list[Flow]:
        server = self.server
        if kind.scope == "session":
            flow_kind, _ = await self.session_binding(kind.scope_id)
            flow = server.flows.get(flow_kind) if flow_kind else None
            return [] if flow is None else [flow]
        if kind.isolated_kind is not None:
            flow = server.flows.get(kind.isolated_kind)
            return [] if flow is None else [flow]
        attr = "isolate_user_state" if kind.scope == "user" else "isolate_project_state"
        return [f for f in server.flows.values() if not getattr(f, attr)]

    async def definition(
        self, kind: RecordKind
    ) -> tuple[Schema, SchemaLineage, ResourceCollectionDefinition | None] | None:
        """The schema, lineage and (for an instance) collection definition of a record."""
        for flow in await self.flows_for(kind):
            spec = flow.scopes[kind.scope]
            if kind.what == "state":
                if spec.schema.model is not None or spec.lineage.versioned:
                    return spec.schema, spec.lineage, None
                continue
            definition = spec.resources.get(kind.name or "")
            if definition is None:
                continue
            is_collection = isinstance(definition, ResourceCollectionDefinition)
            if is_collection != (kind.what == "instance"):
                continue
            collection = (
                definition if isinstance(definition, ResourceCollectionDefinition) else None
            )
            return definition.schema, definition.lineage, collection
        return None


# ----------------------------------------------------------------------------------- migrate


MAX_FAILURES_KEPT = 1000


@dataclass
class MigrationReport:
    """What :func:`migrate_state` found: counts, and the keys that failed with why.

    ``failed`` keeps the first 1000 failures (memory stays bounded); ``failed_count`` counts
    them all.
    """

    upgraded: int = 0
    current: int = 0
    other: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    failed_count: int = 0
    last_key: str | None = None

    def fail(self, key: str, why: str) -> None:
        self.failed_count += 1
        if len(self.failed) < MAX_FAILURES_KEPT:
            self.failed.append((key, why))

    @property
    def scanned(self) -> int:
        return self.upgraded + self.current + self.other + self.failed_count


async def migrate_state(
    server: FlowServer,
    *,
    dry_run: bool = False,
    after: str | None = None,
    batch: int = BATCH,
    progress: Progress | None = None,
) -> MigrationReport:
    """Upgrade every state, resource and collection-instance record to its code's version.

    A record is upgraded with a compare-and-swap on the version read, so a concurrent write
    is never lost (the record is read and upgraded again). ``dry_run`` runs every migration
    and validation in memory and writes nothing. Failures (a migration that raises, a result
    that does not validate, a record newer than the code) are collected, not raised.
    """
    report = MigrationReport()
    flows = _Flows(server)
    store = server.store
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def upgrade(record: Record, schema: Schema, lineage: SchemaLineage, shared: bool) -> None:
        async with semaphore:
            current = record
            for _ in range(20):
                fields, stored_version = split_schema_version(current.fields)
                try:
                    lineage.upgrade(current.key, fields, stored_version, schema, shared)
                    if dry_run:
                        report.upgraded += 1
                        return
                    change = Change(
                        schema,
                        expected_version=current.version,
                        lineage=lineage,
                        upgrade=True,
                        key=current.key,
                        shared=shared,
                        operation="migrate",
                    )
                    applied = await store.apply(current.key, change)
                except (MigrationError, SchemaVersionError) as exc:
                    report.fail(current.key, str(exc))
                    return
                if applied.status == "committed":
                    report.upgraded += 1
                    return
                if applied.status == "noop":
                    report.current += 1
                    return
                fresh = await store.read(current.key)  # written meanwhile: again
                if fresh is None:
                    report.other += 1
                    return
                if split_schema_version(fresh.fields)[1] == lineage.version:
                    report.current += 1
                    return
                current = fresh
            report.fail(record.key, "kept changing while being upgraded; run again")

    for prefix in STATE_PREFIXES:
        start = after if after is not None and after >= prefix else None
        if after is not None and after > prefix + "\U0010ffff":
            continue
        async for records in iter_records(store, prefix, after=start, batch=batch):
            swaps: list[tuple[Record, Record, Schema, SchemaLineage, bool]] = []
            for record in records:
                kind = classify(record.key)
                described = None if kind is None else await flows.definition(kind)
                if kind is None or described is None:
                    report.other += 1
                    continue
                schema, lineage, _ = described
                fields, stored_version = split_schema_version(record.fields)
                if stored_version == lineage.version:
                    report.current += 1
                    continue
                shared = kind.scope != "session" and kind.isolated_kind is None
                try:
                    upgraded = lineage.upgrade(record.key, fields, stored_version, schema, shared)
                except (MigrationError, SchemaVersionError) as exc:
                    report.fail(record.key, str(exc))
                    continue
                new = Record(
                    record.key,
                    record.version + 1,
                    {**upgraded, SCHEMA_FIELD: lineage.version},
                    record.content,
                    record.created_at,
                    record.accessed_at,  # an upgrade is not activity (LRU, max_age, ttl)
                )
                swaps.append((record, new, schema, lineage, shared))
            if swaps and dry_run:
                report.upgraded += len(swaps)
            elif swaps:
                written = set(
                    await store.swap_records([s[1] for s in swaps], [s[0].version for s in swaps])
                )
                report.upgraded += len(written)
                # Written meanwhile by someone else: one by one, read-upgrade-compare-and-swap.
                await asyncio.gather(
                    *(
                        upgrade(old, schema, lineage, shared)
                        for old, _, schema, lineage, shared in swaps
                        if old.key not in written
                    )
                )
            report.last_key = records[-1].key
            if progress is not None:
                progress.advance(len(records), records[-1].key)
    return report


# ----------------------------------------------------------------------------------- gc


@dataclass
class GcReport:
    """What :func:`collect_garbage` removed."""

    sessions: int = 0
    instances: int = 0
    records: int = 0
    last_key: str | None = None


def _max_ages(server: FlowServer) -> bool:
    return any(
        isinstance(d, ResourceCollectionDefinition) and d.max_age is not None
        for flow in server.flows.values()
        for spec in flow.scopes.values()
        for d in spec.resources.values()
    )


async def collect_garbage(
    server: FlowServer,
    *,
    now_ns: int | None = None,
    batch: int = BATCH,
    progress: Progress | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> GcReport:
    """Remove what has expired: idle sessions (with all their records) and old instances.

    A session expires when idle (no run) longer than its flow's session ``ttl``; an instance
    of a collection with ``max_age`` when not written (or, for LRU collections, accessed)
    for that long. Expired data already reads as absent; this frees the space.
    """
    now = time.time_ns() if now_ns is None else now_ns
    report = GcReport()
    store = server.store

    async def purge(bindings: list[Record]) -> None:
        """Remove a batch of expired sessions the way ``FlowServer.delete_session`` removes
        one, a batch per transaction (see docs/lifecycle.md):

        1. Tombstone the bindings (``deleted``, a new ``createdAt``) with one compare-and-swap
           each on the version read: a binding written meanwhile (metadata, a new session of
           the id) is left alone. From then on every write of a run on these sessions fails
           in the store, atomically (their guard names the old ``createdAt``).
        2. Delete their state, resources and collections, and their index entries.
        3. Delete the tombstones, each only if still at the version written in step 1 (never
           a new session of the id that replaced a tombstone meanwhile).

        A run cut short leaves tombstones, which read as no session; the next gc, or a new
        session of the id, finishes the deletion.
        """
        stamp = -time.time()  # never a creation time
        live = [r for r in bindings if not r.fields.get("deleted")]
        tombstones = [
            Record(
                r.key,
                r.version + 1,
                {**r.fields, "deleted": True, "createdAt": stamp},
                r.content,
                r.created_at,
                r.accessed_at,
            )
            for r in live
        ]
        written = set(await store.swap_records(tombstones, [r.version for r in live]))
        # Tombstones already there (a deletion cut short) are finished as they are.
        marked = [t for t in tombstones if t.key in written]
        marked += [r for r in bindings if r.fields.get("deleted")]
        if not marked:
            return
        session_ids = [unquote(t.key[len(SESSIONS) :]) for t in marked]
        removed = await store.delete_prefixes([scope_root("session", s) for s in session_ids])
        removed += await store.delete_keys(
            [
                user_session_key(t.fields["userId"], s)
                for t, s in zip(marked, session_ids, strict=True)
                if isinstance(t.fields.get("userId"), str)
            ]
        )
        removed += len(await store.delete_records(marked))
        report.records += removed
        report.sessions += len(marked)

    if any(flow.scopes["session"].ttl is not None for flow in server.flows.values()):
        if on_phase is not None:
            on_phase("sessions")
        async for records in iter_records(store, SESSIONS, batch=batch):
            expired = []
            for record in records:
                if record.fields.get("deleted"):  # a deletion cut short: finish it
                    expired.append(record)
                    continue
                flow = server.flows.get(record.fields.get("flowKind", ""))
                ttl = None if flow is None else flow.scopes["session"].ttl
                if is_expired(record.accessed_at, ttl, now):
                    expired.append(record)
            if expired:
                await purge(expired)
            report.last_key = records[-1].key
            if progress is not None:
                progress.advance(len(records), records[-1].key)

    if _max_ages(server):
        if on_phase is not None:
            on_phase("instances")
        flows = _Flows(server)
        for prefix in STATE_PREFIXES:
            async for records in iter_records(store, prefix, batch=batch):
                victims = []
                for record in records:
                    kind = classify(record.key)
                    if kind is None or kind.what != "instance":
                        continue
                    described = await flows.definition(kind)
                    collection = None if described is None else described[2]
                    if collection is None or collection.max_age is None:
                        continue
                    if is_expired(record.accessed_at, collection.max_age, now):
                        victims.append(record.key)
                if victims:
                    removed = await store.delete_keys(victims)
                    report.instances += removed
                    report.records += removed
                report.last_key = records[-1].key
                if progress is not None:
                    progress.advance(len(records), records[-1].key)
    return report
