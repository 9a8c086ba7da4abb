"""State handles: the typed, atomic operations a block calls on a scope or a resource.

A :class:`StateCell` is one stored record as one run sees it (cached values and version); every
handle onto that record shares the cell, so a write through one handle is visible through all
of them at once. :class:`StateHandle` adds the block's typed view and the operations. Every
operation is a :class:`~flowstate.ops.Change` applied atomically by the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar, cast

from pydantic import BaseModel
from typing_extensions import TypeVar as TypeVarDefault

from .errors import (
    ConcurrentModificationError,
    FlowStateError,
    ResourceNotFoundError,
    ResourceReadOnlyError,
    SchemaVersionError,
    StateValidationError,
)
from .migrations import SCHEMA_FIELD, SchemaLineage, split_schema_version
from .ops import UNCHANGED, Change, FieldOp, Mutation, NeedsUpgrade, _Sentinel
from .schema import Schema, copy_json
from .stores.base import Applied, Guard, Record, Store

__all__ = ["Commit", "RetryPolicy", "StateCell", "StateHandle"]

S = TypeVarDefault("S", default=Any)
M = TypeVar("M", bound=BaseModel)
E = TypeVar("E", bound=FlowStateError)


@dataclass(frozen=True)
class RetryPolicy:
    """How ``update_state`` retries a lost compare-and-swap: bounded; the first retry at once
    (within a process the write it lost to is already done), later ones after a jittered
    exponential backoff (:meth:`delay`)."""

    max_attempts: int = 10
    base_delay: float = 0.001
    max_delay: float = 0.1

    def delay(self, attempt: int) -> float:
        """Full-jitter backoff before retry number ``attempt`` (1-based)."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class Commit:
    """A committed write, as reported to a cell's listener (events, hooks)."""

    cell: StateCell
    operation: str
    version: int
    mutation: Mutation

    @property
    def fields(self) -> list[str]:
        return self.mutation.changed_fields


Listener = Callable[[Commit], Awaitable[None] | None]

# The keys whose turn the current task holds, so a write nested in a write of the same record
# (an update_state function that writes, which it must not, but may) does not wait for itself.
_HELD: ContextVar[frozenset[tuple[int, str]]] = ContextVar("flowstate_turns", default=frozenset())


@contextlib.asynccontextmanager
async def _turn(store: Store, key: str, *, shared: bool = False) -> AsyncIterator[None]:
    """Writers of one record in this process take turns: a read-resolve-write cycle
    (``update_state``'s compare-and-swap) is never overtaken by another writer of this process,
    so its retries are only for writers in other processes."""
    mark = (id(store), key)
    held = _HELD.get()
    if mark in held:
        yield
        return
    async with store.turns.hold(key, shared=shared):
        token = _HELD.set(held | {mark})
        try:
            yield
        finally:
            _HELD.reset(token)


class StateCell:
    """One record's state as a run sees it: visible values (stored over defaults) + version."""

    def __init__(
        self,
        store: Store,
        key: str,
        schema: Schema,
        *,
        label: str,
        scope: str,
        retry: RetryPolicy | None = None,
        writable: bool = True,
        must_exist: bool = False,
        initial_content: str | None = None,
        listener: Listener | None = None,
        guard: Guard | None = None,
        public_label: str | None = None,
        fields: frozenset[str] | None = None,
        lineage: SchemaLineage | None = None,
        shared: bool = False,
        has_content: bool = True,
    ) -> None:
        self.store = store
        # Whether the record has content to keep up to date (a scope's state record has none).
        self.has_content = has_content
        self.guard = guard
        self.key = key
        self.schema = schema
        self.label = label
        # What clients may read in an error (an invisible collection's keys stay out of it).
        self.public_label = label if public_label is None else public_label
        self.scope = scope
        self.retry = retry or RetryPolicy()
        self.writable = writable
        self.must_exist = must_exist
        self.initial_content = initial_content
        self.listener = listener
        # The fields this cell reads (None: all). A run reads only those its blocks declare,
        # so a large field no block of the action uses is never loaded.
        self.lineage = lineage if lineage is not None and lineage.versioned else None
        # A record that may need migrating is read whole (a migration sees every field).
        self.fields = fields if self.lineage is None else None
        self.values: dict[str, Any] = self._visible({})
        self.version = 0
        self.content: str | None = initial_content
        self.generation = 0
        self.loaded = False
        self.shared = shared
        # The schema version of the record as last read (records read before an upgrade
        # are migrated in memory; the write-back happens with the next write).
        self.stored_schema_version = 1

    def _visible(self, stored: Mapping[str, Any]) -> dict[str, Any]:
        values = self.schema.with_defaults(stored)
        if self.fields is not None:
            values = {k: v for k, v in values.items() if k in self.fields}
        return values

    def _set(self, stored: Mapping[str, Any], version: int, content: str | None) -> None:
        self.values = self._visible(stored)
        self.version = version
        self.content = content
        self.generation += 1
        self.loaded = True

    def absorb(self, record: Record | None) -> None:
        """Take a record as read from the store: split off its schema version and upgrade it.

        Raises :class:`~flowstate.SchemaVersionError` for a record newer than the code and
        :class:`~flowstate.MigrationError` for one that cannot be upgraded.
        """
        if record is None:
            if self.must_exist:
                raise self._public(ResourceNotFoundError(f"{self.label} no longer exists"))
            self.stored_schema_version = 1
            self._set({}, 0, self.initial_content)
            return
        fields, stored_version = split_schema_version(record.fields)
        lineage = self.lineage or _UNVERSIONED
        if stored_version != lineage.version:
            fields = lineage.upgrade(self.key, fields, stored_version, self.schema, self.shared)
        self.stored_schema_version = stored_version
        content = record.content if record.version else self.initial_content
        self._set(fields, record.version, content)

    async def load(self) -> None:
        """Read the record (a never-written record reads as the schema defaults)."""
        self.absorb(await self.store.read(self.key, self.read_fields))

    @property
    def read_fields(self) -> frozenset[str] | None:
        """The fields to read from the store: :attr:`fields` plus the record's schema
        version (so a record newer than the code is refused on a partial read too)."""
        return None if self.fields is None else self.fields | {SCHEMA_FIELD}

    @property
    def outdated(self) -> bool:
        """Whether the next write must upgrade the record (or stamp a new one's version)."""
        if self.lineage is None:
            return False
        return self.version == 0 or self.stored_schema_version != self.lineage.version

    async def ensure_loaded(self) -> None:
        if not self.loaded:
            await self.load()

    def _fail_read_only(self) -> None:
        if not self.writable:
            raise self._public(
                ResourceReadOnlyError(f"{self.label} is read-only (declared writable=False)")
            )

    def _public(self, exc: E) -> E:
        """``exc`` with its client message spelled with :attr:`public_label`."""
        if self.public_label != self.label:
            exc.public_message = exc.message.replace(self.label, self.public_label)
        return exc

    def _versioned(self, change: Change, **kw: Any) -> Change:
        return dataclasses.replace(
            change, lineage=self.lineage, key=self.key, shared=self.shared, **kw
        )

    async def _store_apply(self, change: Change) -> Applied:
        try:
            return await self.store.apply(self.key, change, guard=self.guard)
        except StateValidationError as exc:
            raise exc.with_scope(self.scope, self.label, self.public_label) from None
        except SchemaVersionError as exc:
            if exc.key:
                raise
            raise (self.lineage or _UNVERSIONED).not_newer_error(
                self.key, exc.stored_version
            ) from None

    async def apply(self, change: Change) -> bool:
        """Apply a change through the store; update the cache; tell the listener."""
        self._fail_read_only()
        if self.lineage is None:  # version 1: never upgrades (a newer record is refused)
            # Atomic operations share the turn: the store resolves each against the record
            # as it is, and may commit concurrent ones together; update_state waits for them.
            async with _turn(self.store, self.key, shared=True):
                result, change = await self._write_unversioned(change)
            return await self._settle(result, change)
        # A versioned record's write may upgrade it by compare-and-swap: take the turn alone.
        async with _turn(self.store, self.key):
            return await self._apply_versioned(self._versioned(change))

    async def _write_unversioned(self, change: Change) -> tuple[Applied, Change]:
        if (
            self.initial_content is not None
            and self.version == 0
            and change.content is UNCHANGED
            and change.expected_version is None
        ):
            # Maybe the record's first write: create it with the declared content. The
            # compare-and-swap on version 0 makes sure the record really is new; if it is not,
            # the change applies as it is.
            first = replace(change, expected_version=0, initial_content=self.initial_content)
            result = await self._store_apply(first)
            if result.status != "conflict":
                return result, first
        return await self._store_apply(change), change

    async def _apply_versioned(self, change: Change) -> bool:
        """Apply ``change``, upgrading an older record in the same commit (compare-and-swap).

        The fast path is the plain atomic write, guarded by the stored schema version. When
        the record is older (or new), re-read it and write the upgrade together with the
        change, conditional on the version read: a concurrent write makes it go again.
        """
        policy = self.retry
        for attempt in range(1, policy.max_attempts + 1):
            if attempt > 1:
                await asyncio.sleep(policy.delay(attempt - 1))
            if not (self.loaded and self.outdated):
                try:
                    return await self._settle(await self._store_apply(change), change)
                except NeedsUpgrade:
                    pass
            await self.load()
            if not self.outdated:
                continue
            upgrade = self._versioned(
                change,
                expected_version=self.version,
                upgrade=True,
                initial_content=self.initial_content if self.version == 0 else None,
            )
            result = await self._store_apply(upgrade)
            if result.status != "conflict":
                return await self._settle(result, upgrade)
            self.loaded = False
        raise ConcurrentModificationError(
            f"{self.label}: the write upgrading the record to schema version "
            f"{self.lineage.version if self.lineage else 1} lost {policy.max_attempts} "
            "compare-and-swap races in a row; retry later",
            attempts=policy.max_attempts,
        )

    async def _settle(self, result: Applied, change: Change) -> bool:
        if result.status == "missing":
            raise self._public(ResourceNotFoundError(f"{self.label} no longer exists"))
        if result.status == "noop":
            if result.version != self.version:
                await self.load()
            return False
        if result.status == "conflict":
            return False
        mutation = result.mutation
        assert mutation is not None
        if SCHEMA_FIELD in mutation.set:
            self.stored_schema_version = int(mutation.set[SCHEMA_FIELD])
        # Someone else may have written in between (the version jumped). This commit is
        # still reported first, with this cell's values plus what it wrote, so that events of
        # one record go out in commit order; then the cell takes the record again.
        moved = result.version != self.version + 1 or not self.loaded
        values = dict(self.values)
        values.update(mutation.set)
        values.pop(SCHEMA_FIELD, None)
        for name, (base, items) in mutation.push.items():
            if self.fields is not None and name not in self.fields:
                continue  # not loaded (a push never loads the list): stays unloaded
            current = values.get(name)
            if isinstance(current, list):  # the cell owns its lists: extend, do not copy
                current.extend(copy_json(items))
            else:
                values[name] = [*base, *copy_json(items)]
        for name in mutation.delete:
            values.pop(name, None)
        self.values = self._visible(values) if mutation.delete else values
        if mutation.content is not UNCHANGED:
            self.content = cast(str | None, mutation.content)
        self.version = result.version
        self.generation += 1
        await self._notify(change, result.version, mutation)
        if moved:  # take the record as of this commit at least; a store may know it already
            recent = self.store.recent(self.key, self.read_fields, self.has_content)
            if recent is not None and recent.version >= result.version:
                self.absorb(recent)
            else:
                await self.load()
        return True

    async def _notify(self, change: Change, version: int, mutation: Mutation) -> None:
        if self.listener is not None:
            outcome = self.listener(Commit(self, change.operation, version, mutation))
            if inspect.isawaitable(outcome):
                await outcome

    async def update(self, fn: Callable[[dict[str, Any]], Any], operation: str) -> bool:
        """Optimistic read-modify-write: ``fn(values)`` → a Change, retried on conflict."""
        self._fail_read_only()
        async with _turn(self.store, self.key):
            return await self._update(fn, operation)

    async def _update(self, fn: Callable[[dict[str, Any]], Any], operation: str) -> bool:
        policy = self.retry
        for attempt in range(1, policy.max_attempts + 1):
            if attempt > 1:
                # The first retry goes at once: this task holds the record's turn in this
                # process, so the write it lost to is done (typically another run's, made
                # after this cell's read); backing off is for writers in other processes.
                if attempt > 2:
                    await asyncio.sleep(policy.delay(attempt - 2))
                await self.load()
            else:
                await self.ensure_loaded()
            expected = self.version
            change = fn(dict(self.values))
            if inspect.isawaitable(change):
                change = await change
            assert isinstance(change, Change)
            change = Change(
                change.schema,
                ops=change.ops,
                replace=change.replace,
                content=change.content,
                expected_version=expected,
                must_exist=self.must_exist,
                operation=operation,
                initial_content=self.initial_content if expected == 0 else None,
                lineage=self.lineage,
                upgrade=self.outdated,
                key=self.key,
                shared=self.shared,
            )
            try:
                result = await self._store_apply(change)
            except NeedsUpgrade:  # upgraded view, older record: re-read, go again
                self.loaded = False
                continue
            if result.status != "conflict":
                return await self._settle(result, change)
        gave_up = ConcurrentModificationError(
            f"{self.label}: update_state gave up after {policy.max_attempts} attempts because "
            "the record kept changing underneath it (compare-and-swap conflicts); retry later "
            "or raise the scope's retry.max_attempts",
            attempts=policy.max_attempts,
        )
        raise self._public(gave_up)


_UNVERSIONED = SchemaLineage()


def _fields(
    mapping: Mapping[str, Any] | None, fields: Mapping[str, Any], op: str
) -> dict[str, Any]:
    if mapping is not None and not isinstance(mapping, Mapping):
        if isinstance(mapping, BaseModel):
            return {**mapping.model_dump(exclude_unset=True), **fields}
        raise TypeError(f"{op} takes a mapping or keyword arguments, got {type(mapping).__name__}")
    return {**(mapping or {}), **fields}


class StateHandle(Generic[S]):
    """Typed state with atomic operations; ``S`` is the block's (partial) state model."""

    def __init__(self, cell: StateCell, model: type[BaseModel] | None = None) -> None:
        self._cell = cell
        self._model = model
        self._view: tuple[int, Any] | None = None

    @property
    def state(self) -> S:
        """A read-only snapshot of the state, as this block's model (or a dict)."""
        cell = self._cell
        if self._view is None or self._view[0] != cell.generation:
            self._view = (cell.generation, cell.schema.view(self._model, cell.values))
        return cast(S, self._view[1])

    def detached_state(self) -> S:
        """A plain, mutable copy of the state (for hooks and client-data functions)."""
        cell = self._cell
        return cast(S, cell.schema.view(self._model, cell.values, frozen=False))

    @property
    def version(self) -> int:
        """The record version: 0 while never written, +1 per committed write."""
        return self._cell.version

    async def refresh(self) -> None:
        """Re-read the record, picking up other writers' commits."""
        await self._cell.load()

    def _change(self, operation: str, ops: list[FieldOp], **kw: Any) -> Change:
        return Change(
            self._cell.schema,
            ops=tuple(ops),
            must_exist=self._cell.must_exist,
            operation=operation,
            **kw,
        )

    async def patch_state(self, mapping: Mapping[str, Any] | None = None, /, **fields: Any) -> bool:
        """Merge top-level fields into the state."""
        values = _fields(mapping, fields, "patch_state")
        ops = [FieldOp("set", k, v) for k, v in values.items()]
        return await self._cell.apply(self._change("patch", ops))

    async def set_state(self, value: Mapping[str, Any] | BaseModel) -> bool:
        """Replace the whole state; omitted fields take their defaults."""
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        if not isinstance(value, Mapping):
            raise TypeError(f"set_state takes a mapping or a model, got {type(value).__name__}")
        change = Change(
            self._cell.schema,
            replace=dict(value),
            must_exist=self._cell.must_exist,
            operation="set",
        )
        return await self._cell.apply(change)

    async def inc_state(self, mapping: Mapping[str, Any] | None = None, /, **fields: Any) -> bool:
        """Add numbers to fields (a missing field counts as its default, or 0)."""
        values = _fields(mapping, fields, "inc_state")
        ops = [FieldOp("inc", k, v) for k, v in values.items()]
        return await self._cell.apply(self._change("inc", ops))

    async def push_state(self, field: str | Mapping[str, Any], value: Any = None) -> bool:
        """Append one value to a list field: ``push_state("log", x)`` or ``({"log": x})``."""
        items = dict(field) if isinstance(field, Mapping) else {field: value}
        ops = [FieldOp("push", k, v) for k, v in items.items()]
        return await self._cell.apply(self._change("push", ops))

    async def set_state_record(self, field: str, key: str, value: Any) -> bool:
        """Set one key of a dict field (a missing field becomes ``{key: value}``)."""
        op = FieldOp("record_set", field, value, key)
        return await self._cell.apply(self._change("set_record", [op]))

    async def delete_state_record(self, field: str, key: str) -> bool:
        """Remove one key of a dict field; an absent key is a no-op."""
        op = FieldOp("record_delete", field, None, key)
        return await self._cell.apply(self._change("delete_record", [op]))

    async def update_state(self, fn: Callable[[S], Any]) -> bool:
        """Functional update with compare-and-swap: ``fn(current)`` may run more than once.

        ``fn`` (sync or async, pure) returns a mapping to shallow-merge, or a model: the
        scope's combined model replaces the whole state, a partial model replaces its fields.
        """
        cell = self._cell

        async def build(values: dict[str, Any]) -> Change:
            current = cell.schema.view(self._model, values)
            result = fn(current)
            if inspect.isawaitable(result):
                result = await result
            return self._result_change(result)

        return await cell.update(build, "update")

    atomic_state = update_state

    def _result_change(self, result: Any) -> Change:
        schema = self._cell.schema
        if isinstance(result, BaseModel):
            if schema.model is None or type(result) is schema.model:
                return Change(schema, replace=result.model_dump(mode="json"), operation="update")
            result = result.model_dump(mode="json")
        if result is None:
            result = {}
        if not isinstance(result, Mapping):
            raise TypeError(
                f"update_state's function must return a mapping or a model, got "
                f"{type(result).__name__}"
            )
        ops = tuple(FieldOp("set", k, v) for k, v in result.items())
        return Change(schema, ops=ops, operation="update")


def content_change(cell: StateCell, text: str | None, fields: Mapping[str, Any]) -> Change:
    """A change writing content (and optionally fields) in one commit."""
    if text is not None and not isinstance(text, str):
        raise TypeError(f"content must be a string, got {type(text).__name__}")
    content: str | _Sentinel | None = text
    return Change(
        cell.schema,
        ops=tuple(FieldOp("set", k, v) for k, v in fields.items()),
        content=content,
        must_exist=cell.must_exist,
        operation="write_content",
    )
