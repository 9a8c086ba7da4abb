"""State operations as pure values, and how a change resolves against a stored record.

No I/O here. A :class:`Change` is built by a handle (``patch_state`` …) and handed to the
store, which calls :meth:`Change.resolve` with the record's current fields and writes the
:class:`Mutation` it returns (or nothing, for None: a no-op) only if the record is still at the
version it resolved against — inside its write transaction (memory, SQLite) or with a
version-conditional write (PostgreSQL, which may therefore resolve more than once). Resolution
applies the field operations and validates the result against the schema; it is pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import replace as _replace
from enum import Enum
from functools import cached_property
from typing import Any, Final, Literal

from .errors import StateValidationError
from .limits import text_problem
from .migrations import SCHEMA_FIELD, SchemaLineage, split_schema_version
from .schema import Schema

__all__ = [
    "MISSING",
    "UNCHANGED",
    "Change",
    "FieldOp",
    "Mutation",
    "NeedsUpgrade",
    "apply_field_op",
    "compose",
    "same_json",
]

JSON = Any


class _Sentinel(Enum):
    MISSING = "missing"
    UNCHANGED = "unchanged"


MISSING: Final = _Sentinel.MISSING
"""A field or record that does not exist."""
UNCHANGED: Final = _Sentinel.UNCHANGED
"""Content left as it is by a change."""

OpKind = Literal["set", "inc", "push", "record_set", "record_delete"]


@dataclass(frozen=True, slots=True)
class FieldOp:
    """One operation on one top-level field."""

    kind: OpKind
    field: str
    value: Any = None
    key: str | None = None


def _is_number(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)


def _op_error(
    op: FieldOp, message: str, type_: str, msg: str | None = None
) -> StateValidationError:
    """The error of one field op; ``msg`` (default ``message``) is the value-free rule."""
    loc: list[str] = [op.field] if op.key is None else [op.field, op.key]
    return StateValidationError(
        f'field "{op.field}": {message}',
        errors=[{"loc": loc, "msg": msg or message, "type": type_}],
    )


def apply_field_op(op: FieldOp, current: Any) -> Any:
    """The new value of ``op.field`` given its ``current`` value (``MISSING`` if absent)."""
    if op.kind == "set":
        return op.value
    if op.kind == "inc":
        if not _is_number(op.value):
            raise _op_error(
                op,
                f"inc_state needs a number amount, got {op.value!r}",
                "inc_amount",
                f"inc_state needs a number amount, got {type(op.value).__name__}",
            )
        if current is MISSING or current is None:
            return op.value
        if not _is_number(current):
            found = type(current).__name__
            raise _op_error(op, f"inc_state needs a number field, found {found}", "inc_target")
        return current + op.value
    if op.kind == "push":
        if current is MISSING or current is None:
            return [op.value]
        if not isinstance(current, list):
            found = type(current).__name__
            raise _op_error(op, f"push_state needs a list field, found {found}", "push_target")
        return [*current, op.value]
    if op.kind in ("record_set", "record_delete"):
        name = "set_state_record" if op.kind == "record_set" else "delete_state_record"
        if not isinstance(op.key, str):
            raise _op_error(
                op,
                f"{name} needs a string key, got {op.key!r}",
                "record_key",
                f"{name} needs a string key, got {type(op.key).__name__}",
            )
        if current is MISSING or current is None:
            current = {}
        if not isinstance(current, dict):
            found = type(current).__name__
            raise _op_error(op, f"{name} needs a dict field, found {found}", "record_target")
        if op.kind == "record_set":
            return {**current, op.key: op.value}
        if op.key not in current:
            return current
        return {k: v for k, v in current.items() if k != op.key}
    raise ValueError(f"unknown operation {op.kind!r}")  # pragma: no cover


def same_json(a: Any, b: Any) -> bool:
    """Equality that also tells ``1``, ``1.0`` and ``True`` apart (a change of type is a change)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def push_target_error(name: str, found: str) -> StateValidationError:
    """The error for appending to a stored field that is not a list (raised by stores)."""
    message = f"push_state needs a list field, found {found}"
    return _op_error(FieldOp("push", name), message, "push_target")


def _check_content(text: str) -> None:
    problem = text_problem(text)
    if problem is not None:
        message, type_ = problem
        raise StateValidationError(
            f"content: {message}", errors=[{"loc": ["content"], "msg": message, "type": type_}]
        )


@dataclass(frozen=True, slots=True)
class Mutation:
    """What a store writes: fields to set, fields to delete, content (or ``UNCHANGED``).

    ``push`` maps a list field to ``(base, items)``: the store appends ``items`` to the stored
    list without it being loaded, or stores ``base + items`` when the field is absent (or
    null); a stored non-list raises :func:`push_target_error`.
    """

    set: Mapping[str, JSON]
    delete: frozenset[str] = frozenset()
    content: str | _Sentinel | None = UNCHANGED
    before: Mapping[str, JSON] = field(default_factory=dict)
    push: Mapping[str, tuple[list[JSON], list[JSON]]] = field(default_factory=dict)
    quiet: frozenset[str] = frozenset()
    """Fields written only to bring the record to the current schema version (not changes
    the operation made to the state as its readers saw it)."""

    @property
    def changed_fields(self) -> list[str]:
        return sorted({*self.set, *self.delete, *self.push} - self.quiet - {SCHEMA_FIELD})


class NeedsUpgrade(Exception):
    """Raised by :meth:`Change.resolve`: the record is at an older schema version.

    Nothing is written; the caller re-reads the record and writes with ``upgrade=True``.
    """

    def __init__(self, stored_version: int) -> None:
        super().__init__(f"record at schema version {stored_version} needs an upgrade")
        self.stored_version = stored_version


@dataclass(frozen=True)
class Change:
    """A requested write to one record, resolved by the store under its write lock.

    ``ops`` apply in order; ``replace`` (a whole new state) excludes ``ops``.
    ``expected_version`` turns the write into a compare-and-swap. ``must_exist`` refuses to
    create the record (collection instances are created explicitly). ``initial_content`` (only
    with ``expected_version=0``, so the record is known to be new) is the content the record is
    created with when the change itself leaves content unchanged: a resource's declared
    ``content=`` survives its first state write.
    """

    schema: Schema
    ops: tuple[FieldOp, ...] = ()
    replace: Mapping[str, Any] | None = None
    content: str | _Sentinel | None = UNCHANGED
    expected_version: int | None = None
    must_exist: bool = False
    operation: str = "patch"
    initial_content: str | None = None
    lineage: SchemaLineage | None = None
    """The schema version the result is written at (and migrations, for ``upgrade``)."""
    upgrade: bool = False
    """Migrate the stored fields to ``lineage.version`` first and write them back with the
    result; needs ``expected_version`` (0 = the record must not exist yet)."""
    key: str = ""
    """The record key, for error messages."""
    shared: bool = False
    """The record may hold other flows' fields (shared user/project state)."""

    @cached_property
    def needed_fields(self) -> frozenset[str] | None:
        """Fields the store must load for :meth:`resolve`; None means all of them."""
        if self.replace is not None or self.schema.full_validation or self.upgrade:
            return None
        return frozenset(op.field for op in self.ops) | {SCHEMA_FIELD}

    @cached_property
    def lazy_pushes(self) -> frozenset[str]:
        """Fields only appended to, whose items validate alone: no need to load the list.

        :meth:`resolve` returns their items in :attr:`Mutation.push`, for the store to
        append in place, so a push costs the same on a list of any length.
        """
        if self.replace is not None or self.schema.full_validation or self.upgrade:
            return frozenset()
        appended = {op.field for op in self.ops if op.kind == "push"}
        other = {op.field for op in self.ops if op.kind != "push"}
        return frozenset(f for f in appended - other if self.schema.appendable(f))

    @cached_property
    def load_fields(self) -> frozenset[str] | None:
        """Fields a store must load before :meth:`resolve`: :attr:`needed_fields` but the
        lists only appended to (:attr:`lazy_pushes`); None means all of them."""
        needed = self.needed_fields
        return None if needed is None else needed - self.lazy_pushes

    def resolve(
        self, stored: Mapping[str, JSON], content: str | _Sentinel | None = UNCHANGED
    ) -> Mutation | None:
        """Compute the mutation from the stored fields (only :attr:`load_fields` need be
        given; lists only appended to come back as :attr:`Mutation.push`).

        Raises :class:`NeedsUpgrade` when the record is at an older schema version (unless
        ``upgrade``), :class:`~flowstate.SchemaVersionError` when it is newer.
        """
        mutation = self._resolve(stored, content)
        if (
            mutation is not None
            and self.initial_content is not None
            and mutation.content is UNCHANGED
            and self.expected_version == 0
        ):
            mutation = _replace(mutation, content=self.initial_content)
        return mutation

    def _resolve(
        self, stored: Mapping[str, JSON], content: str | _Sentinel | None
    ) -> Mutation | None:
        stored, stored_version = split_schema_version(stored)
        lineage = self.lineage or _UNVERSIONED
        if self.upgrade:
            return self._resolve_upgrade(stored, stored_version, lineage, content)
        lineage.check_not_newer(self.key, stored_version)
        if stored_version < lineage.version:
            raise NeedsUpgrade(stored_version)
        return self._resolve_current(stored, content, lazy=True)

    def _resolve_upgrade(
        self,
        stored: Mapping[str, JSON],
        stored_version: int,
        lineage: SchemaLineage,
        content: str | _Sentinel | None,
    ) -> Mutation | None:
        if self.expected_version is None:
            raise ValueError("an upgrading change needs expected_version")  # pragma: no cover
        if self.expected_version == 0:  # a new record: nothing to migrate
            base: dict[str, JSON] = {}
        else:
            base = lineage.upgrade(self.key, stored, stored_version, self.schema, self.shared)
        inner = Change(
            self.schema,
            ops=self.ops,
            replace=self.replace,
            content=self.content,
            operation=self.operation,
        )
        mutation = inner._resolve_current(base, content)
        if mutation is None:
            # A no-op writes nothing, not even the upgrade; a bare upgrade (no operation:
            # ``flowstate db migrate-state``) writes the upgrade alone.
            bare = not self.ops and self.replace is None and self.content is UNCHANGED
            if not bare or self.expected_version == 0 or stored_version == lineage.version:
                return None
            mutation = Mutation(set={})
        final = dict(base)
        final.update(mutation.set)
        for name in mutation.delete:
            final.pop(name, None)
        sets = {k: v for k, v in final.items() if k not in stored or not same_json(stored[k], v)}
        deletes = frozenset(k for k in stored if k not in final)
        if lineage.versioned and (self.expected_version == 0 or stored_version != lineage.version):
            sets[SCHEMA_FIELD] = lineage.version
        quiet = frozenset((set(sets) | deletes) - set(mutation.set) - mutation.delete)
        return Mutation(
            set=sets,
            delete=deletes,
            content=mutation.content,
            before=mutation.before,
            quiet=quiet,
        )

    def _resolve_current(
        self,
        stored: Mapping[str, JSON],
        content: str | _Sentinel | None = UNCHANGED,
        *,
        lazy: bool = False,
    ) -> Mutation | None:
        """The mutation against current-version ``stored``; ``lazy``: appends to
        :attr:`lazy_pushes` come back as :attr:`Mutation.push` (else resolved on the list)."""
        schema = self.schema
        if isinstance(self.content, str):
            _check_content(self.content)
        if any(op.field == SCHEMA_FIELD for op in self.ops) or (
            self.replace is not None and SCHEMA_FIELD in self.replace
        ):
            raise _reserved_error()
        if lazy and self.lazy_pushes:
            return self._resolve_lazy(stored, content)
        if self.replace is not None:
            new = schema.validate_state(self.replace)
            visible = schema.with_defaults(stored)
            sets = {k: v for k, v in new.items() if k not in stored or not same_json(stored[k], v)}
            # Fields outside this schema belong to another flow sharing the record: keep them.
            deletes = frozenset(
                k for k in stored if k not in new and (schema.free_form or k in schema.field_names)
            )
            changed = {k for k in sets if not same_json(visible.get(k, MISSING), sets[k])}
            changed |= {k for k in deletes if k not in new}
            before = {k: visible.get(k) for k in changed}
        else:
            schema.check_known(op.field for op in self.ops)
            work: dict[str, Any] = {}
            for op in self.ops:
                if op.field in work:
                    current = work[op.field]
                elif op.field in stored:
                    current = stored[op.field]
                else:
                    has, current = schema.default(op.field)
                    if not has:
                        current = MISSING
                if op.kind == "push" and schema.appendable(op.field):
                    # Same error, at the same location, as stores that append without loading.
                    schema.validate_item(op.field, op.value)
                work[op.field] = apply_field_op(op, current)
            if schema.full_validation:
                known = schema.field_names
                merged = {k: v for k, v in schema.with_defaults(stored).items() if k in known}
                merged.update(work)
                validated = schema.validate_state(merged)
                new = {k: validated[k] for k in work}
            else:
                new = schema.validate_fields(work)
            sets = {}
            before = {}
            for k, v in new.items():
                has_default, default = schema.default(k)
                old = stored[k] if k in stored else (default if has_default else MISSING)
                if old is MISSING or not same_json(old, v):
                    sets[k] = v
                    before[k] = None if old is MISSING else old
            deletes = frozenset()
            changed = set(sets)
        content_changed = self.content is not UNCHANGED and self.content != content
        if not changed and not content_changed:
            return None
        return Mutation(
            set=sets,
            delete=deletes,
            content=self.content if content_changed else UNCHANGED,
            before=before,
        )

    def _resolve_lazy(
        self, stored: Mapping[str, JSON], content: str | _Sentinel | None
    ) -> Mutation:
        lazy = self.lazy_pushes
        schema = self.schema
        schema.check_known(op.field for op in self.ops)
        pushed: dict[str, tuple[list[JSON], list[JSON]]] = {}
        for op in self.ops:
            if op.field in lazy:
                if op.field not in pushed:
                    has, default = schema.default(op.field)
                    pushed[op.field] = (list(default) if has and default else [], [])
                pushed[op.field][1].append(schema.validate_item(op.field, op.value))
        rest = Change(
            schema,
            ops=tuple(op for op in self.ops if op.field not in lazy),
            content=self.content,
            operation=self.operation,
        )
        base = None
        if rest.ops or rest.content is not UNCHANGED:
            base = rest._resolve_current(stored, content)
        if base is None:
            return Mutation(set={}, push=pushed)
        return Mutation(
            set=base.set,
            delete=base.delete,
            content=base.content,
            before=base.before,
            push=pushed,
        )


def compose(mutations: Sequence[Mutation]) -> Mutation:
    """One mutation with the effect of ``mutations`` written in order (for a store that
    commits several callers' writes to one record at once).

    An append after a set of the same field extends the set value (the caller checked it is
    a list or null); a set or delete after an append replaces it.
    """
    sets: dict[str, JSON] = {}
    deletes: set[str] = set()
    pushed: dict[str, tuple[list[JSON], list[JSON]]] = {}
    content: str | _Sentinel | None = UNCHANGED
    for mutation in mutations:
        for name in mutation.delete:
            sets.pop(name, None)
            pushed.pop(name, None)
            deletes.add(name)
        for name, value in mutation.set.items():
            sets[name] = value
            deletes.discard(name)
            pushed.pop(name, None)
        for name, (base, items) in mutation.push.items():
            if name in sets:
                current = sets[name]
                sets[name] = [*(base if current is None else current), *items]
            elif name in deletes:
                deletes.discard(name)
                sets[name] = [*base, *items]
            elif name in pushed:
                first, earlier = pushed[name]
                pushed[name] = (first, [*earlier, *items])
            else:
                pushed[name] = (list(base), list(items))
        if mutation.content is not UNCHANGED:
            content = mutation.content
    return Mutation(set=sets, delete=frozenset(deletes), content=content, push=pushed)


_UNVERSIONED = SchemaLineage()


def _reserved_error() -> StateValidationError:
    message = f'field "{SCHEMA_FIELD}" is reserved (the schema version a record was written at)'
    return StateValidationError(
        message, errors=[{"loc": [SCHEMA_FIELD], "msg": message, "type": "reserved_field"}]
    )
