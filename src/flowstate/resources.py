"""Resources and resource collections: named, schema-typed containers of state and text.

Each resource instance is its own versioned record, so writes to different resources never
contend. A collection stores its instances under its own key namespace; keys are resolved by
:class:`~flowstate.keys.KeyPattern` before they reach storage.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel

from .errors import (
    CollectionFullError,
    DefinitionError,
    FlowStateError,
    KeyPatternError,
    ResourceAlreadyExistsError,
    ResourceNotFoundError,
    StateValidationError,
)
from .keys import KeyPattern
from .limits import MAX_KEY_BYTES, key_problem, text_problem
from .migrations import SCHEMA_FIELD, Migration, SchemaLineage
from .schema import Schema
from .sessions import is_expired
from .state import Commit, StateCell, StateHandle, content_change
from .stores.base import Cap

E = TypeVar("E", bound=FlowStateError)

if TYPE_CHECKING:
    from .scopes import ScopeBinding

__all__ = [
    "CollectionRef",
    "HookContext",
    "ResourceClient",
    "ResourceCollectionDefinition",
    "ResourceDefinition",
    "ResourceRef",
    "ResourceRegistry",
    "define_resource",
    "define_resource_collection",
]

log = logging.getLogger("flowstate.resources")

Eviction = Literal["none", "lru", "oldest"]


@dataclass(frozen=True, eq=False)
class ResourceClient:
    """What clients may see of a resource: ``data(state)``, or fields by ``expose``/``exclude``.

    ``content=True`` also serves the resource's text through the content endpoint.
    """

    data: Callable[[Any], Any] | None = None
    expose: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    content: bool = False

    def __post_init__(self) -> None:
        given = [n for n in ("data", "expose", "exclude") if getattr(self, n) is not None]
        if len(given) > 1:
            raise DefinitionError(
                f"ResourceClient takes one of data=, expose=, exclude=; got {', '.join(given)}"
            )

    def project(self, state: Any, values: Mapping[str, Any]) -> Any:
        """The client data of one resource state (``values`` is its JSON form)."""
        if self.data is not None:
            return self.data(state)
        if self.expose is not None:
            return {k: values.get(k) for k in self.expose}
        if self.exclude is not None:
            return {k: v for k, v in values.items() if k not in set(self.exclude)}
        return {}


def _client(value: ResourceClient | Mapping[str, Any] | None) -> ResourceClient | None:
    if value is None or isinstance(value, ResourceClient):
        return value
    if isinstance(value, Mapping):
        return ResourceClient(**value)
    raise DefinitionError(f"client must be a ResourceClient or a dict, got {type(value).__name__}")


def _state_model(state: Any, what: str) -> type[BaseModel] | None:
    if state is None or (isinstance(state, type) and issubclass(state, BaseModel)):
        return state
    raise DefinitionError(f"{what} state must be a pydantic BaseModel subclass, got {state!r}")


class _StateModel:
    """What both kinds of resource definition derive from their state model and lineage."""

    state: type[BaseModel] | None
    lineage: SchemaLineage
    schema: Schema

    def __post_init__(self) -> None:
        object.__setattr__(self, "schema", Schema.of(self.state))

    @property
    def schema_version(self) -> int:
        return self.lineage.version


@dataclass(frozen=True, eq=False)
class ResourceDefinition(_StateModel):
    """A static resource: one named instance per scope."""

    state: type[BaseModel] | None = None
    content: str | None = None
    writable: bool = True
    render: Callable[[Any, str | None], str | Awaitable[str]] | None = None
    client: ResourceClient | None = None
    lineage: SchemaLineage = field(default_factory=SchemaLineage)
    schema: Schema = field(init=False, repr=False)


def _max_age(value: Any, where: str) -> timedelta | None:
    if value is None:
        return None
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise DefinitionError(f"{where}: max_age must be a positive timedelta, got {value!r}")
    return value


def define_resource(
    state: type[BaseModel] | None = None,
    *,
    content: str | None = None,
    writable: bool = True,
    render: Callable[[Any, str | None], str | Awaitable[str]] | None = None,
    client: ResourceClient | Mapping[str, Any] | None = None,
    schema_version: int = 1,
    migrations: Mapping[int, Migration] | None = None,
) -> ResourceDefinition:
    """Define a resource: a state model, initial text ``content``, and client visibility.

    ``schema_version``/``migrations`` version the stored state (see docs/lifecycle.md).
    """
    model = _state_model(state, "resource")
    if content is not None and not isinstance(content, str):
        raise DefinitionError(f"resource content must be a string, got {type(content).__name__}")
    if content is not None and (problem := text_problem(content)) is not None:
        raise DefinitionError(f"resource content: {problem[0]}")
    lineage = SchemaLineage.of(schema_version, migrations, "resource")
    return ResourceDefinition(model, content, writable, render, _client(client), lineage)


@dataclass(frozen=True, eq=False)
class ResourceCollectionDefinition(_StateModel):
    """A collection: instances created at run time under keys matching ``pattern``."""

    pattern: KeyPattern
    state: type[BaseModel] | None = None
    max_instances: int | None = None
    eviction: Eviction = "none"
    writable: bool = True
    on_instance_created: Callable[[str, Any, HookContext], None] | None = None
    on_instance_updated: Callable[[str, Any, Any, HookContext], None] | None = None
    on_instance_deleted: Callable[[str, HookContext], None] | None = None
    client: ResourceClient | None = None
    lineage: SchemaLineage = field(default_factory=SchemaLineage)
    max_age: timedelta | None = None
    schema: Schema = field(init=False, repr=False)


def _check_hook(pattern: str, name: str, hook: Any) -> None:
    """Hooks are synchronous: they run after the write commits and are not awaited, so an
    ``async def`` hook would silently never run."""
    if hook is None:
        return
    if not callable(hook):
        raise DefinitionError(f'collection "{pattern}": {name} must be callable, got {hook!r}')
    target = hook
    while isinstance(target, functools.partial):
        target = target.func
    is_async = inspect.iscoroutinefunction(target) or (
        not inspect.isfunction(target)
        and not inspect.ismethod(target)
        and inspect.iscoroutinefunction(getattr(target, "__call__", None))  # noqa: B004
    )
    if is_async:
        label = getattr(hook, "__name__", type(hook).__name__)
        raise DefinitionError(
            f'collection "{pattern}": {name} must be a plain (synchronous) function, got async '
            f"function {label!r}; hooks run after the write commits and are not awaited, so "
            "an async hook would never run (do async work in a block instead)"
        )


def define_resource_collection(
    pattern: str,
    state: type[BaseModel] | None = None,
    *,
    max_instances: int | None = None,
    eviction: Eviction = "none",
    writable: bool = True,
    on_instance_created: Callable[[str, Any, HookContext], None] | None = None,
    on_instance_updated: Callable[[str, Any, Any, HookContext], None] | None = None,
    on_instance_deleted: Callable[[str, HookContext], None] | None = None,
    client: ResourceClient | Mapping[str, Any] | None = None,
    schema_version: int = 1,
    migrations: Mapping[int, Migration] | None = None,
    max_age: timedelta | None = None,
) -> ResourceCollectionDefinition:
    """Define a resource collection (see docs/collections.md for patterns, caps and hooks).

    ``schema_version``/``migrations`` version the instances' stored state; instances not
    written for ``max_age`` expire (see docs/lifecycle.md).
    """
    parsed = KeyPattern.parse(pattern)
    where = f'collection "{pattern}"'
    lineage = SchemaLineage.of(schema_version, migrations, where)
    age = _max_age(max_age, where)
    if eviction not in ("none", "lru", "oldest"):
        raise DefinitionError(
            f'collection "{pattern}": eviction must be "none", "lru" or "oldest", got {eviction!r}'
        )
    if max_instances is not None and (
        not isinstance(max_instances, int) or isinstance(max_instances, bool) or max_instances < 1
    ):
        raise DefinitionError(
            f'collection "{pattern}": max_instances must be an integer >= 1, got {max_instances!r}'
        )
    if eviction != "none" and max_instances is None:
        raise DefinitionError(
            f'collection "{pattern}": eviction="{eviction}" needs max_instances (without a cap '
            "there is nothing to evict)"
        )
    for hook_name, hook in (
        ("on_instance_created", on_instance_created),
        ("on_instance_updated", on_instance_updated),
        ("on_instance_deleted", on_instance_deleted),
    ):
        _check_hook(pattern, hook_name, hook)
    return ResourceCollectionDefinition(
        parsed,
        _state_model(state, "collection"),
        max_instances,
        eviction,
        writable,
        on_instance_created,
        on_instance_updated,
        on_instance_deleted,
        _client(client),
        lineage,
        age,
    )


AnyResourceDefinition = ResourceDefinition | ResourceCollectionDefinition


@dataclass(frozen=True)
class HookContext:
    """What a collection hook receives: where it runs, and a logger."""

    scope_type: str
    scope_id: str
    collection: str

    def log(self, message: str) -> None:
        log.info("[%s %s %s] %s", self.scope_type, self.scope_id, self.collection, message)


class ResourceRef(StateHandle[Any]):
    """One resource instance: its state operations plus its text content."""

    def __init__(
        self,
        cell: StateCell,
        *,
        name: str,
        key: str,
        render: Callable[[Any, str | None], str | Awaitable[str]] | None = None,
    ) -> None:
        super().__init__(cell)
        self.name = name
        self.key = key
        self._render = render

    def __repr__(self) -> str:
        return f"<ResourceRef {self.key!r} v{self.version}>"

    async def read_content_raw(self) -> str | None:
        """The stored text (or the definition's initial content), None when there is none."""
        await self._cell.load()
        return self._cell.content

    async def read_content(self) -> str | None:
        """The content as rendered by the definition's ``render(state, raw)``, else raw."""
        raw = await self.read_content_raw()
        if self._render is None:
            return raw
        rendered = self._render(self.detached_state(), raw)
        if isinstance(rendered, Awaitable):
            rendered = await rendered
        return rendered

    async def write_content(self, text: str | None, /, **fields: Any) -> bool:
        """Replace the text content, and optionally patch state fields in the same commit."""
        return await self._cell.apply(content_change(self._cell, text, fields))


class CollectionRef:
    """A collection on one scope: create, get, list and delete its instances."""

    def __init__(self, binding: ScopeBinding, name: str, definition: ResourceCollectionDefinition):
        self._binding = binding
        self.name = name
        self.definition = definition
        self._root = binding.collection_root(name)

    def __repr__(self) -> str:
        return f"<CollectionRef {self.name!r} pattern={self.definition.pattern.pattern!r}>"

    def _hook_ctx(self) -> HookContext:
        return HookContext(self._binding.scope, self._binding.scope_id, self.name)

    def _call_hook(self, hook: Callable[..., None] | None, *args: Any) -> None:
        if hook is None:
            return
        try:
            hook(*args, self._hook_ctx())
        except Exception:  # the write is committed; a failing hook must not undo or hide it
            log.exception(
                "collection %s: hook %s failed", self.name, getattr(hook, "__name__", hook)
            )

    def _view(self, values: Mapping[str, Any]) -> Any:
        return self.definition.schema.view(None, values, frozen=False)

    def _label(self, storage_key: str) -> str:
        return f'{self._binding.scope} resource "{storage_key}" of collection "{self.name}"'

    def _public_label(self, storage_key: str) -> str:
        """:meth:`_label` as clients may read it: no key when clients cannot see the collection."""
        if self.definition.client is not None:
            return self._label(storage_key)
        return f'{self._binding.scope} resource of collection "{self.name}"'

    async def _emit_change(self, storage_key: str, change_type: str) -> None:
        await self._binding.emit_resource_change(
            storage_key, change_type, visible=self.definition.client is not None
        )

    def _public(self, exc: E, storage_key: str) -> E:
        if self.definition.client is None:
            exc.public_message = exc.message.replace(f'"{storage_key}"', "(hidden key)")
        return exc

    def _ref(self, storage_key: str) -> ResourceRef:
        definition = self.definition
        cell = StateCell(
            self._binding.store,
            self._root + storage_key,
            definition.schema,
            label=self._label(storage_key),
            scope=self._binding.scope,
            retry=self._binding.retry,
            writable=definition.writable,
            must_exist=True,
            listener=self._on_commit,
            guard=self._binding.guard,
            public_label=self._public_label(storage_key),
            lineage=definition.lineage,
            shared=self._binding.shared,
        )
        return ResourceRef(cell, name=self.name, key=storage_key)

    async def _on_commit(self, commit: Commit) -> None:
        key = commit.cell.key[len(self._root) :]
        await self._emit_change(key, "updated")
        if self.definition.on_instance_updated is not None:
            new = commit.cell.values
            prev = {**new, **commit.mutation.before}
            for name in commit.mutation.delete:
                prev.setdefault(name, None)
            for name, (_, items) in commit.mutation.push.items():
                prev[name] = list(new.get(name) or [])[: -len(items)]
            self._call_hook(
                self.definition.on_instance_updated, key, self._view(new), self._view(prev)
            )

    def _expired(self, last_written_ns: int) -> bool:
        """An instance untouched for ``max_age`` is gone, as if deleted (gc frees it)."""
        return is_expired(last_written_ns, self.definition.max_age, time.time_ns())

    def resolve_key(self, key: str | Mapping[str, object]) -> str:
        """The storage key for a user key (see :meth:`KeyPattern.resolve`)."""
        return self.definition.pattern.resolve(key)

    async def create(
        self,
        key: str | Mapping[str, object],
        initial: Mapping[str, Any] | BaseModel | None = None,
        *,
        replace: bool = False,
    ) -> ResourceRef:
        """Create an instance; an existing key raises unless ``replace=True``."""
        storage_key = self.resolve_key(key)
        label = f'collection "{self.name}"'
        if isinstance(initial, BaseModel):
            initial = initial.model_dump(mode="json")
        try:
            values = self.definition.schema.validate_state(dict(initial or {}))
        except StateValidationError as exc:
            raise exc.with_scope(
                self._binding.scope, self._label(storage_key), self._public_label(storage_key)
            ) from None
        d = self.definition
        cap = Cap(self._root, d.max_instances, d.eviction) if d.max_instances else None
        stored = {**values, SCHEMA_FIELD: d.lineage.version} if d.lineage.versioned else values
        created = await self._binding.store.create(
            self._root + storage_key, stored, replace=replace, cap=cap, guard=self._binding.guard
        )
        if created.status == "exists" and d.max_age is not None:
            existing = await self._binding.store.read(self._root + storage_key)
            if existing is None or self._expired(existing.accessed_at):  # gone: take its place
                created = await self._binding.store.create(
                    self._root + storage_key, stored, replace=True, cap=cap
                )
                if created.status == "replaced":
                    created = dataclasses.replace(created, status="created", previous=None)
        if created.status == "exists":
            exists = ResourceAlreadyExistsError(
                f'resource "{storage_key}" already exists in {label}; use get_or_create() or '
                "create(..., replace=True)"
            )
            raise self._public(exists, storage_key)
        if created.status == "full":
            raise CollectionFullError(
                f'{label} is full: max_instances={d.max_instances} with eviction="none"; '
                "delete an instance first"
            )
        for victim in created.evicted:
            victim_key = victim[len(self._root) :]
            await self._emit_change(victim_key, "deleted")
            self._call_hook(d.on_instance_deleted, victim_key)
        ref = self._ref(storage_key)
        ref._cell._set(values, created.version, None)
        ref._cell.stored_schema_version = d.lineage.version
        if created.status == "replaced":
            await self._emit_change(storage_key, "updated")
            prev = created.previous.fields if created.previous else {}
            prev = {k: v for k, v in prev.items() if k != SCHEMA_FIELD}
            self._call_hook(
                d.on_instance_updated,
                storage_key,
                self._view(d.schema.with_defaults(values)),
                self._view(d.schema.with_defaults(prev)),
            )
        else:
            await self._emit_change(storage_key, "created")
            self._call_hook(d.on_instance_created, storage_key, ref.detached_state())
        return ref

    async def get_optional(self, key: str | Mapping[str, object]) -> ResourceRef | None:
        """The instance, or None if it does not exist. Counts as an access for LRU."""
        ref = await self.peek(key)
        if ref is not None and self.definition.eviction == "lru":
            await self._binding.store.touch(self._root + ref.key)
        return ref

    async def peek(self, key: str | Mapping[str, object]) -> ResourceRef | None:
        """Like :meth:`get_optional`, but not an access for LRU (listings, client views)."""
        storage_key = self.resolve_key(key)
        record = await self._binding.store.read(self._root + storage_key)
        if record is None or self._expired(record.accessed_at):
            return None
        ref = self._ref(storage_key)
        ref._cell.absorb(record)
        return ref

    async def get(self, key: str | Mapping[str, object]) -> ResourceRef:
        """The instance, or :class:`ResourceNotFoundError`."""
        ref = await self.get_optional(key)
        if ref is None:
            storage_key = self.resolve_key(key)
            missing = ResourceNotFoundError(
                f'resource "{storage_key}" does not exist in collection "{self.name}"'
            )
            raise self._public(missing, storage_key)
        return ref

    async def get_or_create(
        self,
        key: str | Mapping[str, object],
        initial: Mapping[str, Any] | BaseModel | None = None,
    ) -> ResourceRef:
        """The existing instance, or a new one with ``initial`` (schema defaults otherwise)."""
        for _ in range(3):
            ref = await self.get_optional(key)
            if ref is not None:
                return ref
            try:
                return await self.create(key, initial)
            except ResourceAlreadyExistsError:
                # Created concurrently, and maybe deleted again since: look again. (Reading it
                # with ``get`` here answered "not found" when the session was being deleted;
                # the guarded create answers SessionNotFoundError instead.)
                continue
        raise self._racing("get_or_create", key)

    async def upsert(
        self,
        key: str | Mapping[str, object],
        update: Mapping[str, Any],
        create_only: Mapping[str, Any] | None = None,
    ) -> ResourceRef:
        """Patch ``update`` into the instance, creating it (with ``create_only`` too) if absent."""
        for _ in range(3):
            ref = await self.get_optional(key)
            if ref is not None:
                try:
                    await ref.patch_state(update)
                    return ref
                except ResourceNotFoundError:  # deleted meanwhile: create it
                    continue
            try:
                return await self.create(key, {**(create_only or {}), **update})
            except ResourceAlreadyExistsError:
                continue
        raise self._racing("upsert", key)

    def _racing(self, what: str, key: str | Mapping[str, object]) -> Exception:
        storage_key = self.resolve_key(key)
        racing = ResourceNotFoundError(
            f'{what} of "{storage_key}" in collection "{self.name}" kept racing '
            "with concurrent creates and deletes"
        )
        return self._public(racing, storage_key)

    def _list_prefix(self, prefix: str) -> str:
        if not isinstance(prefix, str):
            raise KeyPatternError(f"list prefix must be a string, got {prefix!r}")
        if not prefix:
            return self.definition.pattern.prefix
        problem = key_problem(prefix)
        if problem is None and ".." in prefix.split("/"):
            problem = '".." segments are not allowed'
        if problem is not None:
            exc = KeyPatternError(
                f'list prefix {prefix[:100]!r} is invalid for collection "{self.name}": {problem}'
            )
            exc.public_message = f'a list prefix is invalid for collection "{self.name}"'
            raise exc
        prefix = prefix.replace("\\", "/").lstrip("/")
        base = self.definition.pattern.prefix
        return prefix if prefix.startswith(base) else base + prefix

    async def list(
        self, prefix: str = "", *, limit: int | None = None, after: str | None = None
    ) -> list[str]:
        """Storage keys of the instances, sorted, optionally under ``prefix``, after ``after``."""
        full = self._root + self._list_prefix(prefix)
        if after is not None and (not isinstance(after, str) or key_problem(after) is not None):
            raise KeyPatternError(
                f'list after= must be a storage key of collection "{self.name}" (a string of at '
                f"most {MAX_KEY_BYTES} UTF-8 bytes without control characters)"
            )
        keys = await self._binding.store.scan(
            full, after=None if after is None else self._root + after, limit=limit
        )
        return [k[len(self._root) :] for k in keys]

    async def count(self) -> int:
        """How many instances exist."""
        return await self._binding.store.count(self._root)

    async def delete(self, key: str | Mapping[str, object]) -> bool:
        """Delete an instance; a missing one is a no-op (returns False)."""
        storage_key = self.resolve_key(key)
        record = await self._binding.store.delete(
            self._root + storage_key, guard=self._binding.guard
        )
        if record is None:
            return False
        await self._emit_change(storage_key, "deleted")
        self._call_hook(self.definition.on_instance_deleted, storage_key)
        return True


class ResourceRegistry:
    """A scope's resources by name: ``resources.plan``, ``resources["plan"]``, ``.get("plan")``."""

    def __init__(self, binding: ScopeBinding) -> None:
        self._binding = binding
        self._refs: dict[str, ResourceRef | CollectionRef] = {}

    def _lookup(self, name: str) -> ResourceRef | CollectionRef:
        ref = self._refs.get(name)
        if ref is not None:
            return ref
        definition = self._binding.resources.get(name)
        if definition is None:
            raise ResourceNotFoundError(f'Resource "{name}" is not registered')
        if isinstance(definition, ResourceCollectionDefinition):
            ref = CollectionRef(self._binding, name, definition)
        else:
            ref = self._binding.static_ref(name, definition)
        self._refs[name] = ref
        return ref

    def get(self, name: str) -> Any:
        return self._lookup(name)

    def __getitem__(self, name: str) -> Any:
        return self._lookup(name)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._lookup(name)

    def __contains__(self, name: object) -> bool:
        return name in self._binding.resources

    def __iter__(self) -> Iterator[str]:
        return iter(self._binding.resources)

    def __len__(self) -> int:
        return len(self._binding.resources)

    def names(self) -> list[str]:
        return list(self._binding.resources)

    async def preload(self) -> None:
        """Load every static resource's state, so ``ref.state`` is readable synchronously."""
        for name, definition in self._binding.resources.items():
            if isinstance(definition, ResourceDefinition):
                ref = self._lookup(name)
                assert isinstance(ref, ResourceRef)
                await ref._cell.ensure_loaded()
