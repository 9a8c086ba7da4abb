"""Read-only state snapshots: what ``ctx.<scope>.state`` and ``ref.state`` return.

Pure, no I/O. A snapshot is a copy of the state as an instance of the block's own model
(``type(state) is Model`` holds), deeply read-only: assigning or deleting a field raises
:class:`TypeError` naming the state operation to use, and nested containers are read-only copies
(:class:`FrozenList`, :class:`FrozenDict`, :class:`FrozenSet`: ``list``/``dict``/``set``
subclasses whose mutating methods raise). Without this, ``ctx.session.state.count += 5``
would change the run's copy and never reach the store: a silent lost write.

The read-only mark is per instance; the model class gets a guard in ``__setattr__`` and
``__delattr__`` (:func:`guard_model`) that checks the mark and otherwise defers to the class's
own method, so ordinary instances of the model behave exactly as before. Reading,
``model_dump()``, ``==``, iteration and JSON encoding work as on plain values;
``model_copy()`` and ``copy.deepcopy`` return ordinary, mutable models.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NoReturn

from pydantic import BaseModel

__all__ = ["FrozenDict", "FrozenList", "FrozenSet", "freeze", "guard_model", "is_snapshot"]

_HINT = (
    "state snapshots are read-only; write through the handle instead: "
    "patch_state(field=value), set_state({...}), inc_state(field=n), "
    "push_state(field, item), set_state_record(field, key, value), "
    "delete_state_record(field, key) or update_state(fn)"
)


def _refuse(what: str) -> NoReturn:
    raise TypeError(f"cannot {what}: {_HINT}")


class FrozenList(list[Any]):
    """A list that refuses to change (a ``list`` subclass, so it validates and dumps as one)."""

    __slots__ = ()

    def _ro(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse("modify a list in a state snapshot (use push_state or patch_state)")

    append = extend = insert = pop = remove = clear = sort = reverse = _ro
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _ro

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenList, (list(self),))

    def __copy__(self) -> FrozenList:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        import copy

        return [copy.deepcopy(v, memo) for v in self]


class FrozenDict(dict[Any, Any]):
    """A dict that refuses to change (a ``dict`` subclass)."""

    __slots__ = ()

    def _ro(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse("modify a dict in a state snapshot (use set_state_record or patch_state)")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _ro
    __ior__ = _ro

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))

    def __copy__(self) -> FrozenDict:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[Any, Any]:
        import copy

        return {k: copy.deepcopy(v, memo) for k, v in self.items()}


class FrozenSet(set[Any]):
    """A set that refuses to change (a ``set`` subclass)."""

    __slots__ = ()

    def _ro(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse("modify a set in a state snapshot (use patch_state)")

    add = discard = remove = pop = clear = update = _ro
    difference_update = intersection_update = symmetric_difference_update = _ro
    __ior__ = __iand__ = __isub__ = __ixor__ = _ro

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenSet, (set(self),))

    def __copy__(self) -> FrozenSet:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> set[Any]:
        import copy

        return {copy.deepcopy(v, memo) for v in self}


class _SnapshotFields(set[str]):
    """The ``__pydantic_fields_set__`` of a snapshot: marks the instance read-only.

    A snapshot stays an instance of exactly the user's model (``type(state) is Model``), so the
    mark lives on the instance; copies (``model_copy``, ``copy.deepcopy``) get a plain set and
    are ordinary, mutable models.
    """

    __slots__ = ()

    def __copy__(self) -> set[str]:
        return set(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> set[str]:
        return set(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (set, (list(self),))


_GUARDED: set[type[BaseModel]] = set()


def _is_snapshot(obj: object) -> bool:
    return type(getattr(obj, "__pydantic_fields_set__", None)) is _SnapshotFields


def guard_model(model: type[BaseModel]) -> None:
    """Make snapshots of ``model`` refuse assignment and deletion (ordinary instances of the
    model are unaffected: the check is one attribute read)."""
    if model in _GUARDED:
        return
    original_set = model.__setattr__
    original_del = model.__delattr__

    def __setattr__(self: BaseModel, name: str, value: Any) -> None:
        if _is_snapshot(self):
            _refuse(
                f'assign "{name}" on a state snapshot (use patch_state({name}=...) or inc_state)'
            )
        original_set(self, name, value)

    def __delattr__(self: BaseModel, name: str) -> None:
        if _is_snapshot(self):
            _refuse(f'delete "{name}" from a state snapshot (use set_state or patch_state)')
        original_del(self, name)

    # Set on the class itself: the model's own __setattr__ (pydantic's, or the user's) still
    # runs for every ordinary instance.
    type.__setattr__(model, "__setattr__", __setattr__)
    type.__setattr__(model, "__delattr__", __delattr__)
    _GUARDED.add(model)


def is_snapshot(value: Any) -> bool:
    """Whether ``value`` is a read-only state snapshot (model or container)."""
    return _is_snapshot(value) or isinstance(value, FrozenList | FrozenDict | FrozenSet)


def _freeze_model(original: BaseModel) -> BaseModel:
    """A read-only copy of ``original`` (which may be shared, e.g. by a default factory)."""
    guard_model(type(original))
    value = original.model_copy()
    fields = value.__dict__
    for k, v in fields.items():
        fields[k] = freeze(v)
    if value.__pydantic_extra__:
        object.__setattr__(
            value, "__pydantic_extra__", {k: freeze(v) for k, v in value.__pydantic_extra__.items()}
        )
    object.__setattr__(value, "__pydantic_fields_set__", _SnapshotFields(value.model_fields_set))
    return value


def _freeze_items(values: Iterable[Any]) -> list[Any]:
    return [freeze(v) for v in values]


def freeze(value: Any) -> Any:
    """A deeply read-only copy of ``value``: containers become frozen copies, models marked
    copies (still instances of their own class); scalars are returned as they are."""
    if isinstance(value, BaseModel):
        return _freeze_model(value)
    if isinstance(value, dict):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return FrozenList(_freeze_items(value))
    if type(value) is tuple:
        return tuple(_freeze_items(value))
    if isinstance(value, set | frozenset):
        return FrozenSet(value) if isinstance(value, set) else value
    return value
