"""Scopes: where a run's state lives (request, session, user, project) and their handles.

A :class:`ScopeBinding` ties one scope of one run to its records in the store: the state
record, the static resources and the collections, all under one key root. Handles for
different blocks share its cells, so every block sees every committed write at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel
from typing_extensions import TypeVar as TypeVarDefault

from .layout import collection_root, resource_key, state_key
from .migrations import SchemaLineage
from .resources import (
    AnyResourceDefinition,
    ResourceDefinition,
    ResourceRef,
    ResourceRegistry,
)
from .schema import Schema, copy_json
from .state import Commit, RetryPolicy, StateCell, StateHandle
from .stores.base import Guard, Record, Store

__all__ = ["ScopeBinding", "ScopeHandle", "load_bindings"]

S = TypeVarDefault("S", default=Any)

Emit = Callable[[str, dict[str, Any], dict[str, Any] | None], Awaitable[None]]


class ScopeBinding:
    """One scope of one run: store, key root, combined schema, resources, event emitter."""

    def __init__(
        self,
        store: Store,
        scope: str,
        scope_id: str,
        root: str,
        schema: Schema,
        resources: Mapping[str, AnyResourceDefinition],
        *,
        retry: RetryPolicy | None = None,
        expose: frozenset[str] = frozenset(),
        emit: Emit | None = None,
        guard: Guard | None = None,
        fields: frozenset[str] | None = None,
        lineage: SchemaLineage | None = None,
        shared: bool = False,
    ) -> None:
        self.store = store
        self.guard = guard
        """Every write of this scope commits only while this holds (a session's binding)."""
        self.scope = scope
        self.scope_id = scope_id
        self.root = root
        self.schema = schema
        self.resources = dict(resources)
        self.retry = retry or RetryPolicy()
        self.expose = expose
        self._emit = emit
        self.shared = shared
        self.cell = StateCell(
            store,
            state_key(root),
            schema,
            label=f"{scope} state",
            scope=scope,
            retry=self.retry,
            listener=self._on_state_commit,
            guard=guard,
            fields=fields,
            lineage=lineage,
            shared=shared,
            has_content=False,
        )
        self.registry = ResourceRegistry(self)
        self._static: dict[str, ResourceRef] = {}

    async def emit(
        self, type_: str, data: dict[str, Any], client_data: dict[str, Any] | None = None
    ) -> None:
        """Emit a run event; clients get ``client_data`` when given (see ``Event``)."""
        if self._emit is not None:
            await self._emit(type_, data, client_data)

    async def _on_state_commit(self, commit: Commit) -> None:
        data: dict[str, Any] = {
            "scope": self.scope,
            "operation": commit.operation,
            "fields": commit.fields,
            "version": commit.version,
        }
        values = commit.cell.values
        exposed = {
            f: copy_json(values[f]) for f in commit.fields if f in self.expose and f in values
        }
        if exposed:
            data["values"] = exposed
        await self.emit("state_change", data)

    async def emit_resource_change(
        self, key: str, change_type: str, *, visible: bool = True
    ) -> None:
        """``resource_change``; the key of a resource clients cannot see stays in-process."""
        data = {"scope": self.scope, "key": key, "changeType": change_type}
        await self.emit(
            "resource_change",
            data,
            None if visible else {"scope": self.scope, "changeType": change_type},
        )

    def collection_root(self, name: str) -> str:
        return collection_root(self.root, name)

    def static_ref(self, name: str, definition: ResourceDefinition) -> ResourceRef:
        ref = self._static.get(name)
        if ref is None:

            async def on_commit(commit: Commit) -> None:
                await self.emit_resource_change(
                    name, "updated", visible=definition.client is not None
                )

            cell = StateCell(
                self.store,
                resource_key(self.root, name),
                definition.schema,
                label=f'{self.scope} resource "{name}"',
                scope=self.scope,
                retry=self.retry,
                writable=definition.writable,
                initial_content=definition.content,
                listener=on_commit,
                guard=self.guard,
                lineage=definition.lineage,
                shared=self.shared,
            )
            ref = ResourceRef(cell, name=name, key=name, render=definition.render)
            self._static[name] = ref
        return ref

    def set_guard(self, guard: Guard | None) -> None:
        """Guard every later write of this scope (known once the session binding is read)."""
        self.guard = guard
        self.cell.guard = guard
        for ref in self._static.values():
            ref._cell.guard = guard

    def _cells(self) -> list[StateCell]:
        cells = [self.cell]
        for name, definition in self.resources.items():
            if isinstance(definition, ResourceDefinition):
                cells.append(self.static_ref(name, definition)._cell)
        return cells

    def wanted(self) -> dict[str, frozenset[str] | None]:
        """What :meth:`load` would read and has not yet: record key → fields (None: all)."""
        return {cell.key: cell.read_fields for cell in self._cells() if not cell.loaded}

    def accept(self, records: Mapping[str, Record | None]) -> None:
        """Take the records of :meth:`wanted` read elsewhere (one ``read_many`` for a run)."""
        for cell in self._cells():
            if not cell.loaded and cell.key in records:
                cell.absorb(records[cell.key])

    async def load(self) -> None:
        """Load the state record and the static resources (collections load on demand)."""
        wanted = self.wanted()
        if wanted:
            self.accept(await self.store.read_many(wanted))
        await self.registry.preload()

    def handle(self, model: type[BaseModel] | None = None) -> ScopeHandle[Any]:
        return ScopeHandle(self, model)


async def load_bindings(
    store: Store,
    bindings: Iterable[ScopeBinding],
    extra: Mapping[str, frozenset[str] | None] | None = None,
) -> dict[str, Record | None]:
    """Load bindings with one ``read_many`` per store; ``extra`` records are read from
    ``store`` in the same call (a run's session binding) and returned."""
    groups: dict[int, tuple[Store, list[ScopeBinding]]] = {id(store): (store, [])}
    for binding in bindings:
        groups.setdefault(id(binding.store), (binding.store, []))[1].append(binding)
    out: dict[str, Record | None] = {}
    for owner, members in groups.values():
        wanted: dict[str, frozenset[str] | None] = {}
        if owner is store and extra:
            wanted.update(extra)
        for binding in members:
            wanted.update(binding.wanted())
        got = await owner.read_many(wanted) if wanted else {}
        if owner is store and extra:
            out = {key: got.get(key) for key in extra}
        for binding in members:
            binding.accept(got)
            await binding.registry.preload()
    return out


class ScopeHandle(StateHandle[S]):
    """``ctx.session`` and friends: the scope's typed state, operations and resources."""

    def __init__(self, binding: ScopeBinding, model: type[BaseModel] | None = None) -> None:
        super().__init__(binding.cell, model)
        self._binding = binding

    @property
    def id(self) -> str:
        """The scope instance id (session id, user id, project id or request id)."""
        return self._binding.scope_id

    @property
    def scope(self) -> str:
        return self._binding.scope

    @property
    def resources(self) -> ResourceRegistry:
        return self._binding.registry

    def __repr__(self) -> str:
        return f"<ScopeHandle {self.scope}:{self.id} v{self.version}>"
