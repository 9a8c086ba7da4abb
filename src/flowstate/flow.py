"""Flows: actions plus per-scope configuration, with block declarations bubbled up.

``define_flow`` walks every block reachable from the actions, merges their partial state
models and resource declarations into one combined schema and resource map per scope, and
fails with :class:`SchemaConflictError` when two declarations disagree. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from .blocks import STATE_SCOPES, Block
from .errors import DefinitionError, SchemaConflictError
from .resources import AnyResourceDefinition, ResourceCollectionDefinition, ResourceDefinition
from .schema import Declaration, Schema, merge_declarations
from .state import RetryPolicy

__all__ = ["ClientConfig", "Flow", "ScopeConfig", "define_flow", "normalize_scope"]

SCOPE_ALIASES = {"org": "project"}


def normalize_scope(scope: str) -> str:
    """``org`` is accepted everywhere as the seeds' name for ``project``."""
    scope = SCOPE_ALIASES.get(scope, scope)
    if scope not in STATE_SCOPES:
        raise DefinitionError(
            f"unknown scope {scope!r}: use one of request, session, user, project (or org)"
        )
    return scope


@dataclass(frozen=True)
class ClientConfig:
    """What clients see of a scope: ``expose`` (verbatim fields) and ``derived`` functions."""

    expose: Sequence[str] = ()
    derived: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)

    @classmethod
    def coerce(cls, value: Any, where: str) -> ClientConfig:
        if value is None:
            return cls()
        if isinstance(value, ClientConfig):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"expose", "derived", "client_data"}
            if unknown:
                raise DefinitionError(
                    f"{where}: unknown client key {sorted(unknown)[0]!r} (use expose, derived)"
                )
            derived = {**value.get("client_data", {}), **value.get("derived", {})}
            return cls(tuple(value.get("expose", ())), derived)
        raise DefinitionError(f"{where}: client must be a ClientConfig or a dict")


@dataclass(frozen=True)
class ScopeConfig:
    """Flow-level configuration of one scope."""

    state: type[BaseModel] | None = None
    resources: Mapping[str, AnyResourceDefinition] = field(default_factory=dict)
    client: ClientConfig | Mapping[str, Any] | None = None
    client_data: Mapping[str, Callable[[Any], Any]] | None = None
    retry: RetryPolicy | None = None

    @classmethod
    def coerce(cls, value: Any, where: str) -> ScopeConfig:
        if value is None:
            return cls()
        if isinstance(value, ScopeConfig):
            return value
        if isinstance(value, Mapping):
            allowed = {"state", "resources", "client", "client_data", "retry"}
            unknown = set(value) - allowed
            if unknown:
                raise DefinitionError(
                    f"{where}: unknown key {sorted(unknown)[0]!r}; a scope config takes "
                    f"{', '.join(sorted(allowed))}"
                )
            return cls(**value)
        raise DefinitionError(f"{where} must be a ScopeConfig or a dict, got {value!r}")

    def client_config(self, where: str) -> ClientConfig:
        client = ClientConfig.coerce(self.client, where)
        if self.client_data:
            client = ClientConfig(client.expose, {**self.client_data, **client.derived})
        return client


@dataclass(frozen=True)
class ScopeSpec:
    """One scope of a built flow: combined schema, resources, client config, retry policy."""

    schema: Schema
    resources: Mapping[str, AnyResourceDefinition]
    client: ClientConfig
    retry: RetryPolicy
    declarations: tuple[Declaration, ...]
    resource_owners: Mapping[str, str]


@dataclass(frozen=True)
class Flow:
    """A built flow: its actions and the combined spec of each scope."""

    kind: str
    actions: Mapping[str, Block]
    scopes: Mapping[str, ScopeSpec]
    isolate_user_state: bool = False
    isolate_project_state: bool = False

    def scope(self, name: str) -> ScopeSpec:
        return self.scopes[normalize_scope(name)]

    def action(self, name: str) -> Block:
        from .errors import ResourceNotFoundError

        block = self.actions.get(name)
        if block is None:
            raise ResourceNotFoundError(
                f'flow "{self.kind}" has no action "{name}" (actions: {", ".join(self.actions)})'
            )
        return block


def _merge_resources(
    kind: str,
    scope: str,
    flow_level: Mapping[str, AnyResourceDefinition],
    blocks: list[Block],
) -> tuple[dict[str, AnyResourceDefinition], dict[str, str]]:
    merged: dict[str, AnyResourceDefinition] = {}
    owners: dict[str, str] = {}
    for name, definition in flow_level.items():
        if not isinstance(definition, ResourceDefinition | ResourceCollectionDefinition):
            raise DefinitionError(
                f'flow "{kind}" {scope}.resources["{name}"] must come from define_resource() or '
                "define_resource_collection()"
            )
        merged[name] = definition
        owners[name] = f'flow "{kind}"'
    for block in blocks:
        for name, definition in block.declarations[scope].resources.items():
            if name not in merged:
                merged[name] = definition
                owners[name] = f'block "{block.name}"'
            elif merged[name] is not definition and not owners[name].startswith("flow "):
                raise SchemaConflictError(
                    f'Flow "{kind}": {scope} resource "{name}" is declared with two different '
                    f'definitions by {owners[name]} and block "{block.name}". Share one '
                    "definition object, rename one, or declare it at flow level."
                )
    return merged, owners


def define_flow(
    kind: str,
    actions: Mapping[str, Block] | None = None,
    *,
    session: ScopeConfig | Mapping[str, Any] | None = None,
    user: ScopeConfig | Mapping[str, Any] | None = None,
    project: ScopeConfig | Mapping[str, Any] | None = None,
    org: ScopeConfig | Mapping[str, Any] | None = None,
    request: ScopeConfig | Mapping[str, Any] | None = None,
    isolate_user_state: bool = False,
    isolate_project_state: bool = False,
) -> Flow:
    """Build a flow: merge every reachable block's declarations into per-scope specs."""
    if not isinstance(kind, str) or not kind.strip():
        raise DefinitionError(f"define_flow needs a non-empty kind, got {kind!r}")
    if "/" in kind:
        raise DefinitionError(f'flow kind "{kind}" must not contain "/"')
    actions = dict(actions or {})
    for name, block in actions.items():
        if not isinstance(block, Block):
            raise DefinitionError(
                f'flow "{kind}" action "{name}" must be a block (handler, sequencer, router), '
                f"got {block!r}"
            )
    if org is not None and project is not None:
        raise DefinitionError(f'flow "{kind}": give project= or its alias org=, not both')
    configs = {
        "request": ScopeConfig.coerce(request, f'flow "{kind}" request'),
        "session": ScopeConfig.coerce(session, f'flow "{kind}" session'),
        "user": ScopeConfig.coerce(user, f'flow "{kind}" user'),
        "project": ScopeConfig.coerce(project if org is None else org, f'flow "{kind}" project'),
    }
    blocks: list[Block] = []
    seen: set[int] = set()
    for block in actions.values():
        for b in block.walk():
            if id(b) not in seen:
                seen.add(id(b))
                blocks.append(b)
    scopes: dict[str, ScopeSpec] = {}
    for scope in STATE_SCOPES:
        config = configs[scope]
        decls: list[Declaration] = []
        if config.state is not None:
            decls.append(Declaration(config.state, f'flow "{kind}"'))
        for b in blocks:
            model = b.declarations[scope].state
            if model is not None:
                decls.append(Declaration(model, f'block "{b.name}"'))
        schema = merge_declarations(
            decls,
            flow=kind,
            scope=scope,
            model_name=f"{_camel(kind)}{scope.capitalize()}State",
        )
        resources, owners = _merge_resources(kind, scope, config.resources, blocks)
        client = config.client_config(f'flow "{kind}" {scope}')
        missing = [f for f in client.expose if f not in schema.field_names]
        if missing and not schema.free_form:
            raise DefinitionError(
                f'flow "{kind}" {scope} client.expose names "{missing[0]}", which is not a field '
                f"of the {scope} state (fields: {', '.join(sorted(schema.field_names)) or 'none'})"
            )
        for name, fn in client.derived.items():
            if not callable(fn):
                raise DefinitionError(
                    f'flow "{kind}" {scope} client.derived["{name}"] must be a function'
                )
        scopes[scope] = ScopeSpec(
            schema, resources, client, config.retry or RetryPolicy(), tuple(decls), owners
        )
    return Flow(kind, actions, scopes, bool(isolate_user_state), bool(isolate_project_state))


def _camel(kind: str) -> str:
    return "".join(p.capitalize() for p in kind.replace("_", "-").split("-") if p) or "Flow"
