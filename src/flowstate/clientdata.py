"""Client data: what a client may see, derived server-side. Raw state never leaves here."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from .flow import ScopeSpec
from .resources import CollectionRef, ResourceCollectionDefinition, ResourceRef
from .scopes import ScopeBinding

__all__ = ["DerivedView", "resource_client_data", "scope_client_data"]

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
            out[name] = ref.state
        else:
            items: dict[str, Any] = {}
            for key in await ref.list(limit=limit):
                item = await ref.peek(key)
                if item is not None:
                    items[key] = item.state
            out[name] = items
    return out


async def scope_client_data(
    binding: ScopeBinding, spec: ScopeSpec, limit: int = 100
) -> dict[str, Any]:
    """``expose``d fields verbatim plus every ``derived`` function's result."""
    values = binding.cell.values
    data: dict[str, Any] = {name: values.get(name) for name in spec.client.expose}
    if spec.client.derived:
        view = DerivedView(
            state=binding.schema.view(None, values),
            resources=await _resource_states(binding, limit),
        )
        for name, fn in spec.client.derived.items():
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
                            "clientData": to_json(client.project(item.state, item._cell.values)),
                        }
                    )
            out[name] = {"count": await ref.count(), "items": items}
        else:
            assert isinstance(ref, ResourceRef)
            out[name] = {"clientData": to_json(client.project(ref.state, ref._cell.values))}
    return out
