"""Flows: actions plus per-scope configuration, with block declarations bubbled up.

``define_flow`` walks every block reachable from the actions, merges their partial state
models and resource declarations into one combined schema and resource map per scope, and
fails with :class:`SchemaConflictError` when two declarations disagree. Pure, no I/O.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from .blocks import STATE_SCOPES, Block
from .errors import ActionNotFoundError, DefinitionError, SchemaConflictError
from .migrations import Migration, SchemaLineage
from .resources import AnyResourceDefinition, ResourceCollectionDefinition, ResourceDefinition
from .schema import Declaration, Schema, merge_declarations
from .state import RetryPolicy

__all__ = ["ClientConfig", "Flow", "ScopeConfig", "define_flow", "normalize_scope"]

SCOPE_ALIASES = {"org": "project"}


def normalize_scope(scope: str) -> str:
    """``org`` is accepted everywhere as flow-state.dev's name for ``project``."""
    scope = SCOPE_ALIASES.get(scope, scope)
    if scope not in STATE_SCOPES:
        raise DefinitionError(
            f"unknown scope {scope!r}: use one of request, session, user, project (or org)"
        )
    return scope


@dataclass(frozen=True)
class ClientConfig:
    """What clients see of a scope: ``expose`` (verbatim fields) and ``derived`` functions.

    ``client_data`` is flow-state.dev's older spelling of ``derived``; both are merged (``derived``
    wins on a shared name).
    """

    expose: Sequence[str] = ()
    derived: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    client_data: Mapping[str, Callable[[Any], Any]] | None = None

    @classmethod
    def coerce(cls, value: Any, where: str) -> ClientConfig:
        if value is None:
            return cls()
        if isinstance(value, ClientConfig):
            config = value
        elif isinstance(value, Mapping):
            unknown = set(value) - {"expose", "derived", "client_data"}
            if unknown:
                key = sorted(unknown)[0]
                hint = " (client_data is spelled client_data)" if key == "clientData" else ""
                raise DefinitionError(
                    f"{where}: unknown client key {key!r}{hint}; a client config takes "
                    "expose, derived (or its older spelling client_data)"
                )
            config = cls(
                value.get("expose") or (), value.get("derived") or {}, value.get("client_data")
            )
        else:
            raise DefinitionError(
                f"{where}: client must be a ClientConfig or a dict, got {type(value).__name__}"
            )
        expose = config.expose
        if isinstance(expose, str) or not all(isinstance(n, str) for n in expose):
            raise DefinitionError(
                f'{where}: client.expose must be a list of field names, e.g. ["mode"], '
                f"got {expose!r}"
            )
        for name, functions in (("derived", config.derived), ("client_data", config.client_data)):
            if functions is not None and not isinstance(functions, Mapping):
                raise DefinitionError(
                    f"{where}: client.{name} must be a dict of name → function, got {functions!r}"
                )
        return ClientConfig(tuple(expose), {**(config.client_data or {}), **(config.derived or {})})


@dataclass(frozen=True)
class ScopeConfig:
    """Flow-level configuration of one scope."""

    state: type[BaseModel] | None = None
    resources: Mapping[str, AnyResourceDefinition] = field(default_factory=dict)
    client: ClientConfig | Mapping[str, Any] | None = None
    client_data: Mapping[str, Callable[[Any], Any]] | None = None
    retry: RetryPolicy | None = None
    schema_version: int = 1
    """The version of the state schema; records written at older versions are upgraded."""
    migrations: Mapping[int, Migration] = field(default_factory=dict)
    """``migrations[k]`` upgrades stored fields from version ``k-1`` to ``k`` (pure)."""
    ttl: timedelta | None = None
    """Session scope only: sessions idle longer than this expire (see docs/lifecycle.md)."""

    @classmethod
    def coerce(cls, value: Any, where: str) -> ScopeConfig:
        if value is None:
            return cls()
        if isinstance(value, ScopeConfig):
            return value
        if isinstance(value, Mapping):
            allowed = (
                "state",
                "resources",
                "client",
                "client_data",
                "retry",
                "schema_version",
                "migrations",
                "ttl",
            )
            for key in value:
                if key in allowed:
                    continue
                hint = _SEED_KEYS.get(key)
                if hint is None:
                    close = difflib.get_close_matches(str(key), allowed, n=1)
                    hint = close[0] if close else None
                suggestion = f"; did you mean {hint!r}?" if hint else ""
                raise DefinitionError(
                    f"{where}: unknown scope config key {key!r}{suggestion} (a scope config "
                    f"takes {', '.join(allowed)})"
                )
            return cls(**value)
        raise DefinitionError(f"{where} must be a ScopeConfig or a dict, got {value!r}")

    def client_config(self, where: str) -> ClientConfig:
        client = ClientConfig.coerce(self.client, where)
        if self.client_data:
            if not isinstance(self.client_data, Mapping):
                raise DefinitionError(f"{where}: client_data must be a dict of name → function")
            client = ClientConfig(client.expose, {**self.client_data, **client.derived})
        return client


# flow-state.dev's (TypeScript) spellings of scope config keys.
_SEED_KEYS = {
    "stateSchema": "state",
    "schema": "state",
    "clientData": "client_data",
    "derived": "client",
    "expose": "client",
}


@dataclass(frozen=True)
class ScopeSpec:
    """One scope of a built flow: combined schema, resources, client config, retry policy."""

    schema: Schema
    resources: Mapping[str, AnyResourceDefinition]
    client: ClientConfig
    retry: RetryPolicy
    lineage: SchemaLineage = field(default_factory=SchemaLineage)
    ttl: timedelta | None = None


@dataclass(frozen=True)
class Flow:
    """A built flow: its actions and the combined spec of each scope.

    ``own_states`` maps each block (by ``id``) that has own state, or is the target of
    another block's ``target_state``, to the merged schema of that state.
    """

    kind: str
    actions: Mapping[str, Block]
    scopes: Mapping[str, ScopeSpec]
    isolate_user_state: bool = False
    isolate_project_state: bool = False
    own_states: Mapping[int, Schema] = field(default_factory=dict)

    def scope(self, name: str) -> ScopeSpec:
        return self.scopes[normalize_scope(name)]

    def action(self, name: str) -> Block:
        block = self.actions.get(name)
        if block is None:
            raise ActionNotFoundError(
                f'flow "{self.kind}" has no action "{name}" (actions: '
                f"{', '.join(self.actions) or 'none'})"
            )
        return block

    def own_state_schema(self, block: Block) -> Schema:
        """The schema of ``block``'s own state (its ``state`` merged with targets' views)."""
        return self.own_states.get(id(block)) or Schema.of(block.state)


def describe_definition(definition: AnyResourceDefinition) -> str:
    """A short description of a resource definition, for conflict messages."""
    state = definition.state.__name__ if definition.state is not None else "free-form state"
    if isinstance(definition, ResourceCollectionDefinition):
        return f'collection "{definition.pattern.pattern}" of {state}'
    return f"resource of {state}"


def same_definition(a: AnyResourceDefinition, b: AnyResourceDefinition) -> bool:
    """Whether two definitions describe the same resource (the same object, or field-equal)."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    names = [f for f in a.__dataclass_fields__ if f != "schema"]
    for name in names:
        x, y = getattr(a, name), getattr(b, name)
        if name == "pattern":
            x, y = x.pattern, y.pattern
        if x is not y and x != y:
            return False
    return True


def _merge_resources(
    kind: str,
    scope: str,
    flow_level: Mapping[str, AnyResourceDefinition],
    blocks: list[Block],
) -> dict[str, AnyResourceDefinition]:
    merged: dict[str, AnyResourceDefinition] = {}
    owners: dict[str, str] = {}
    if not isinstance(flow_level, Mapping):
        raise DefinitionError(
            f'flow "{kind}" {scope}.resources must be a dict of name → definition'
        )
    for name, definition in flow_level.items():
        if not isinstance(definition, ResourceDefinition | ResourceCollectionDefinition):
            raise DefinitionError(
                f'flow "{kind}" {scope}.resources["{name}"] must come from define_resource() or '
                f"define_resource_collection(), got {definition!r}"
            )
        merged[name] = definition
        owners[name] = f'flow "{kind}"'
    for block in blocks:
        for name, definition in block.declarations[scope].resources.items():
            if name not in merged:
                merged[name] = definition
                owners[name] = f'block "{block.name}"'
            elif owners[name].startswith("flow "):
                continue  # flow-level declarations win over block ones
            elif not same_definition(merged[name], definition):
                raise SchemaConflictError(
                    f'Flow "{kind}": {scope} resource "{name}" has two different definitions: '
                    f"{describe_definition(merged[name])} by {owners[name]} and "
                    f'{describe_definition(definition)} by block "{block.name}". Share one '
                    "definition object, rename one, or declare it at flow level (which wins)."
                )
    return merged


def _own_states(kind: str, blocks: list[Block]) -> dict[int, Schema]:
    """Merge each block's own ``state`` with what other blocks' ``target_state`` expect of it."""
    targeted: dict[str, list[Declaration]] = {}
    for b in blocks:
        for name, model in b.target_state.items():
            targeted.setdefault(name, []).append(
                Declaration(model, f'block "{b.name}" (target_state["{name}"])')
            )
    out: dict[int, Schema] = {}
    for b in blocks:
        if b.name not in targeted:
            continue  # only its own model: used as it is
        decls = [Declaration(b.state, f'block "{b.name}"')] if b.state is not None else []
        decls.extend(targeted[b.name])
        out[id(b)] = merge_declarations(
            decls,
            flow=kind,
            scope=f'block "{b.name}" own',
            model_name=f"{_camel(b.name)}OwnState",
        )
    return out


def _flag(value: bool, alias: bool | None, name: str, alias_name: str, kind: str) -> bool:
    if alias is not None and bool(alias) != bool(value) and value:
        raise DefinitionError(f'flow "{kind}": give {name}= or its alias {alias_name}=, not both')
    return bool(value) or bool(alias)


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
    isolate_org_state: bool | None = None,
) -> Flow:
    """Build a flow: merge every reachable block's declarations into per-scope specs.

    Raises :class:`SchemaConflictError` when two declarations of one field (or resource name)
    disagree, and :class:`DefinitionError` for malformed configuration.
    """
    if not isinstance(kind, str) or not kind.strip():
        raise DefinitionError(f"define_flow needs a non-empty kind, got {kind!r}")
    if "/" in kind or any(ord(c) < 32 for c in kind):
        raise DefinitionError(f'flow kind "{kind}" must not contain "/" or control characters')
    if actions is not None and not isinstance(actions, Mapping):
        raise DefinitionError(
            f'flow "{kind}": actions must be a dict of action name → block, got {actions!r}'
        )
    actions = dict(actions or {})
    for name, block in actions.items():
        if not isinstance(block, Block):
            raise DefinitionError(
                f'flow "{kind}" action "{name}" must be a block (handler, sequencer, router), '
                f"got {block!r}"
            )
    if org is not None and project is not None:
        raise DefinitionError(f'flow "{kind}": give project= or its alias org=, not both')
    isolate_project = _flag(
        isolate_project_state, isolate_org_state, "isolate_project_state", "isolate_org_state", kind
    )
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
        where = f'flow "{kind}" {scope}'
        decls: list[Declaration] = []
        if config.state is not None:
            if not (isinstance(config.state, type) and issubclass(config.state, BaseModel)):
                raise DefinitionError(
                    f"{where}: state must be a pydantic BaseModel subclass, got {config.state!r}"
                )
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
        resources = _merge_resources(kind, scope, config.resources or {}, blocks)
        client = config.client_config(where)
        missing = [f for f in client.expose if f not in schema.field_names]
        if missing and not schema.free_form:
            raise DefinitionError(
                f'{where} client.expose names "{missing[0]}", which is not a field of the {scope} '
                f"state (fields: {', '.join(sorted(schema.field_names)) or 'none'}); declare it "
                "in a state model or remove it from expose"
            )
        for name, fn in client.derived.items():
            if not callable(fn):
                raise DefinitionError(f'{where} client.derived["{name}"] must be a function')
            if name in client.expose:
                raise DefinitionError(
                    f'{where} client data key "{name}" is both exposed and derived; rename the '
                    "derived entry"
                )
        if config.retry is not None and not isinstance(config.retry, RetryPolicy):
            raise DefinitionError(f"{where}: retry must be a RetryPolicy, got {config.retry!r}")
        lineage = SchemaLineage.of(config.schema_version, config.migrations, where)
        if lineage.versioned and scope == "request":
            raise DefinitionError(
                f"{where}: schema_version applies to stored state; request state lives for "
                "one run and has nothing to migrate"
            )
        ttl = config.ttl
        if ttl is not None:
            if scope != "session":
                raise DefinitionError(
                    f"{where}: ttl applies to the session scope only (sessions idle longer "
                    f"than ttl expire); {scope} state does not expire"
                )
            if not isinstance(ttl, timedelta) or ttl <= timedelta(0):
                raise DefinitionError(f"{where}: ttl must be a positive timedelta, got {ttl!r}")
        scopes[scope] = ScopeSpec(
            schema,
            resources,
            client,
            config.retry or RetryPolicy(),
            lineage,
            ttl,
        )
    return Flow(
        kind,
        actions,
        scopes,
        bool(isolate_user_state),
        isolate_project,
        _own_states(kind, blocks),
    )


def _camel(kind: str) -> str:
    return "".join(p.capitalize() for p in kind.replace("_", "-").split("-") if p) or "Flow"
