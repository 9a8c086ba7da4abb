"""Client data: what a client may see, derived server-side. Raw state never leaves here."""

from __future__ import annotations

import inspect
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from .flow import ScopeSpec
from .resources import CollectionRef, ResourceCollectionDefinition, ResourceRef
from .scopes import ScopeBinding

__all__ = [
    "CLIENT_SCOPES",
    "DerivedView",
    "parse_client_data_selection",
    "resource_client_data",
    "scope_client_data",
]

CLIENT_SCOPES = ("session", "user", "project")

_JSON: TypeAdapter[Any] = TypeAdapter(Any)


def to_json(value: Any) -> Any:
    """A derived value in JSON form (models, dates … become plain JSON)."""
    return _JSON.dump_python(value, mode="json")


class ResourceStates(dict[str, Any]):
    """Resource states by name; ``view.resources.plan`` reads as ``view.resources["plan"]``,
    like ``ctx.session.resources`` does for refs."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f'no resource "{name}" on this scope') from None


@dataclass(frozen=True)
class DerivedView:
    """What a ``derived`` function receives: the scope's state and its resources' states."""

    state: Any
    resources: dict[str, Any]


async def _resource_states(binding: ScopeBinding, limit: int) -> ResourceStates:
    out = ResourceStates()
    for name in binding.registry.names():
        ref = binding.registry.get(name)
        if isinstance(ref, ResourceRef):
            out[name] = ref.detached_state()
        else:
            items: dict[str, Any] = {}
            for key in await ref.list(limit=limit):
                item = await ref.peek(key)
                if item is not None:
                    items[key] = item.detached_state()
            out[name] = items
    return out


def client_data_names(spec: ScopeSpec) -> list[str]:
    """The client-data names a scope defines: exposed fields, then derived names."""
    return list(dict.fromkeys([*spec.client.expose, *spec.client.derived]))


def parse_client_data_selection(
    names: Iterable[str], scopes: Mapping[str, ScopeSpec]
) -> dict[str, set[str]]:
    """``["session.a", "user.b", "c"]`` → ``{"session": {"a", "c"}, "user": {"b"}}``.

    A bare name means the session scope and ``org.`` means ``project.``; a name the flow does
    not define for that scope raises ``ValueError`` naming it (a typo must not silently
    return nothing).
    """
    selection: dict[str, set[str]] = {}
    for raw in names:
        item = raw.strip()
        if not item:
            continue
        scope, dot, name = item.partition(".")
        if not dot:
            scope, name = "session", item
        scope = "project" if scope == "org" else scope
        if scope not in CLIENT_SCOPES:
            raise ValueError(
                f'"{item}": unknown scope "{scope}" (use session., user. or project.; '
                "a bare name means session)"
            )
        spec = scopes.get(scope)
        known = client_data_names(spec) if spec is not None else []
        if name not in known:
            listed = ", ".join(known) or "none"
            raise ValueError(
                f'"{item}": the {scope} scope has no client data named "{name}" (it has: {listed})'
            )
        selection.setdefault(scope, set()).add(name)
    return selection


async def scope_client_data(
    binding: ScopeBinding,
    spec: ScopeSpec,
    limit: int = 100,
    names: Collection[str] | None = None,
) -> dict[str, Any]:
    """``expose``d fields verbatim plus every ``derived`` function's result.

    ``names`` limits the answer to those client-data names; unselected ``derived``
    functions are not even called.
    """
    values = binding.cell.values
    data: dict[str, Any] = {
        name: values.get(name) for name in spec.client.expose if names is None or name in names
    }
    derived = {
        name: fn for name, fn in spec.client.derived.items() if names is None or name in names
    }
    if derived:
        view = DerivedView(
            state=binding.schema.view(None, values, frozen=False),
            resources=await _resource_states(binding, limit),
        )
        for name, fn in derived.items():
            result = fn(view)
            if inspect.isawaitable(result):
                result = await result
            data[name] = to_json(result)
    return data


async def resource_client_data(binding: ScopeBinding, limit: int = 100) -> dict[str, Any]:
    """Per resource with a ``client``: its projection, or a collection's count and items."""
    out: dict[str, Any] = {}
    for name, definition in binding.resources.items():
        client = definition.client
        if client is None:
            continue
        ref = binding.registry.get(name)
        if isinstance(definition, ResourceCollectionDefinition):
            assert isinstance(ref, CollectionRef)
            items = []
            for key in await ref.list(limit=limit):
                item = await ref.peek(key)
                if item is not None:
                    items.append(
                        {
                            "key": key,
                            "clientData": to_json(
                                client.project(item.detached_state(), item._cell.values)
                            ),
                        }
                    )
            out[name] = {"count": await ref.count(), "items": items}
        else:
            assert isinstance(ref, ResourceRef)
            out[name] = {
                "clientData": to_json(client.project(ref.detached_state(), ref._cell.values))
            }
    return out
