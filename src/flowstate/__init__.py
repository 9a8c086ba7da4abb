"""flowstate: typed, scoped, concurrency-safe state for AI and automation flows.

Public names load on first use (PEP 562), so ``import flowstate.client`` does not pull in the
server, the runtime or a store.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .__version__ import __version__
from .access import Identity
from .errors import (
    ActionNotFoundError,
    AuthError,
    CollectionFullError,
    ConcurrentModificationError,
    CrossFlowSchemaConflictError,
    DefinitionError,
    FlowNotFoundError,
    FlowStateError,
    FlowStateWarning,
    KeyPatternError,
    MigrationError,
    ProjectNotFoundError,
    PublicError,
    ResourceAlreadyExistsError,
    ResourceNotFoundError,
    ResourceReadOnlyError,
    SchemaConflictError,
    SchemaVersionError,
    SessionNotFoundError,
    StateValidationError,
    StoreUnavailableError,
)
from .values import (
    Event,
    RunResult,
    SessionInfo,
)

if TYPE_CHECKING:
    from .blocks import (
        Block,
        Handler,
        Router,
        Sequencer,
        handler,
        router,
        sequencer,
    )
    from .flow import (
        ClientConfig,
        Flow,
        ScopeConfig,
        define_flow,
    )
    from .resources import (
        CollectionRef,
        HookContext,
        ResourceClient,
        ResourceCollectionDefinition,
        ResourceDefinition,
        ResourceRef,
        define_resource,
        define_resource_collection,
    )
    from .runtime import (
        Context,
    )
    from .scopes import (
        ScopeHandle,
    )
    from .server import (
        FlowServer,
    )
    from .state import (
        RetryPolicy,
        StateHandle,
    )
    from .stores import (
        Store,
        open_store,
    )

_LAZY: dict[str, str] = {
    "Block": "blocks",
    "ClientConfig": "flow",
    "CollectionRef": "resources",
    "Context": "runtime",
    "Flow": "flow",
    "FlowServer": "server",
    "Handler": "blocks",
    "HookContext": "resources",
    "ResourceClient": "resources",
    "ResourceCollectionDefinition": "resources",
    "ResourceDefinition": "resources",
    "ResourceRef": "resources",
    "RetryPolicy": "state",
    "Router": "blocks",
    "ScopeConfig": "flow",
    "ScopeHandle": "scopes",
    "Sequencer": "blocks",
    "StateHandle": "state",
    "Store": "stores",
    "define_flow": "flow",
    "define_resource": "resources",
    "define_resource_collection": "resources",
    "handler": "blocks",
    "open_store": "stores",
    "router": "blocks",
    "sequencer": "blocks",
}

__all__ = [
    "ActionNotFoundError",
    "AuthError",
    "Block",
    "ClientConfig",
    "CollectionFullError",
    "CollectionRef",
    "ConcurrentModificationError",
    "Context",
    "CrossFlowSchemaConflictError",
    "DefinitionError",
    "Event",
    "Flow",
    "FlowNotFoundError",
    "FlowServer",
    "FlowStateError",
    "FlowStateWarning",
    "Handler",
    "HookContext",
    "Identity",
    "KeyPatternError",
    "MigrationError",
    "ProjectNotFoundError",
    "PublicError",
    "ResourceAlreadyExistsError",
    "ResourceClient",
    "ResourceCollectionDefinition",
    "ResourceDefinition",
    "ResourceNotFoundError",
    "ResourceReadOnlyError",
    "ResourceRef",
    "RetryPolicy",
    "Router",
    "RunResult",
    "SchemaConflictError",
    "SchemaVersionError",
    "ScopeConfig",
    "ScopeHandle",
    "Sequencer",
    "SessionInfo",
    "SessionNotFoundError",
    "StateHandle",
    "StateValidationError",
    "Store",
    "StoreUnavailableError",
    "__version__",
    "define_flow",
    "define_resource",
    "define_resource_collection",
    "handler",
    "open_store",
    "router",
    "sequencer",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flowstate' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
