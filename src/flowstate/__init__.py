"""flowstate: typed, scoped, concurrency-safe state for AI and automation flows."""

from __future__ import annotations

from .blocks import Block, Handler, Router, Sequencer, handler, router, sequencer
from .errors import (
    AuthError,
    CollectionFullError,
    ConcurrentModificationError,
    CrossFlowSchemaConflictError,
    DefinitionError,
    FlowStateError,
    FlowStateWarning,
    KeyPatternError,
    ResourceAlreadyExistsError,
    ResourceNotFoundError,
    ResourceReadOnlyError,
    SchemaConflictError,
    SessionNotFoundError,
    StateValidationError,
)
from .flow import ClientConfig, Flow, ScopeConfig, define_flow
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
from .runtime import Context, Event
from .scopes import ScopeHandle
from .server import FlowServer, RunResult, SessionInfo
from .state import RetryPolicy, StateHandle
from .stores import Store, open_store

__version__ = "0.1.0"

__all__ = [
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
    "FlowServer",
    "FlowStateError",
    "FlowStateWarning",
    "Handler",
    "HookContext",
    "KeyPatternError",
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
    "ScopeConfig",
    "ScopeHandle",
    "Sequencer",
    "SessionInfo",
    "SessionNotFoundError",
    "StateHandle",
    "StateValidationError",
    "Store",
    "define_flow",
    "define_resource",
    "define_resource_collection",
    "handler",
    "open_store",
    "router",
    "sequencer",
]
