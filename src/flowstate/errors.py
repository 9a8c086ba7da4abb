"""The flowstate error hierarchy: every error a user can catch, in one place.

Each error carries its stable machine-readable ``code`` and the HTTP ``status`` it answers
with (like Starlette's ``HTTPException``), so every router maps errors the same way; its
message names the scope, field or key involved and the rule that was broken.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "ActionNotFoundError",
    "AuthError",
    "CollectionFullError",
    "ConcurrentModificationError",
    "CrossFlowSchemaConflictError",
    "DefinitionError",
    "FlowNotFoundError",
    "FlowStateError",
    "FlowStateWarning",
    "KeyPatternError",
    "ProjectNotFoundError",
    "ResourceAlreadyExistsError",
    "ResourceNotFoundError",
    "ResourceReadOnlyError",
    "SchemaConflictError",
    "SessionNotFoundError",
    "StateValidationError",
    "StoreUnavailableError",
    "status_for",
]


class FlowStateWarning(UserWarning):
    """Warned when something works but deserves a look (e.g. two flows' schemas differ)."""


class FlowStateError(Exception):
    """Base of every flowstate error; ``code`` is the stable wire name."""

    code: str = "flowstate_error"
    status: int = 500
    """The HTTP status of this error (500: a server-side problem, not the caller's)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StateValidationError(FlowStateError):
    """A state operation would produce a value the schema rejects; nothing was written.

    ``errors`` follows Pydantic's shape: a list of dicts with ``loc``, ``msg`` and ``type``.
    """

    code = "validation_error"
    status = 422

    def __init__(
        self,
        message: str,
        *,
        scope: str | None = None,
        errors: Sequence[dict[str, Any]] = (),
    ) -> None:
        super().__init__(message)
        self.scope = scope
        self.errors = [dict(e) for e in errors]

    def with_scope(self, scope: str, where: str) -> StateValidationError:
        """A copy naming the scope (``session`` …) and, in the message, what was written.

        Errors are raised below the scope layer, which knows neither.
        """
        if self.scope is not None:
            return self
        return StateValidationError(f"{where}: {self.message}", scope=scope, errors=self.errors)


class ConcurrentModificationError(FlowStateError):
    """``update_state`` lost the compare-and-swap race ``attempts`` times in a row."""

    code = "concurrent_modification"
    status = 409

    def __init__(self, message: str, *, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class SchemaConflictError(FlowStateError):
    """Two declarations of one field or resource disagree (raised at ``define_flow``)."""

    code = "schema_conflict"


class CrossFlowSchemaConflictError(SchemaConflictError):
    """Two flows on one server declare incompatible shared user or project state."""

    def __init__(
        self,
        message: str,
        *,
        scope: str,
        field: str,
        flow_a: str,
        flow_b: str,
        reason: str,
        detail: str,
    ) -> None:
        super().__init__(message)
        self.scope = scope
        self.field = field
        self.flow_a = flow_a
        self.flow_b = flow_b
        self.reason = reason
        self.detail = detail


class ResourceNotFoundError(FlowStateError):
    """A resource name is not registered, or a collection instance does not exist."""

    code = "resource_not_found"
    status = 404


class FlowNotFoundError(ResourceNotFoundError):
    """No flow of that kind is registered on the server.

    A subclass of :class:`ResourceNotFoundError` only so that code written before it existed
    keeps catching it; its code says what is missing.
    """

    code = "flow_not_found"


class ActionNotFoundError(ResourceNotFoundError):
    """The flow has no action of that name (a subclass of :class:`ResourceNotFoundError`, like
    :class:`FlowNotFoundError`)."""

    code = "action_not_found"


class ResourceAlreadyExistsError(FlowStateError):
    """``create`` of a collection key that already exists (without ``replace=True``)."""

    code = "resource_already_exists"
    status = 409


class ResourceReadOnlyError(FlowStateError):
    """A write to a resource declared with ``writable=False``."""

    code = "resource_read_only"
    status = 403


class KeyPatternError(FlowStateError):
    """A collection key is malformed or does not match the collection's pattern."""

    code = "invalid_key"
    status = 422


class CollectionFullError(FlowStateError):
    """A collection with ``eviction="none"`` is at ``max_instances``."""

    code = "collection_full"
    status = 409


class SessionNotFoundError(FlowStateError):
    """The session does not exist for this user, flow kind and project."""

    code = "session_not_found"
    status = 404


class ProjectNotFoundError(FlowStateError):
    """A request names a project that does not exist or that the caller is not a member of.

    Both answer the same, so a refusal never confirms that a project id is in use.
    """

    code = "project_not_found"
    status = 404


class DefinitionError(FlowStateError):
    """A flow, block, resource or collection definition is malformed."""

    code = "definition_error"


class AuthError(FlowStateError):
    """The caller could not be authenticated."""

    code = "auth_error"
    status = 401


class StoreUnavailableError(FlowStateError):
    """The store cannot be reached right now (connection lost, database down, timeout).

    Retryable: the store reconnects by itself and the same call succeeds once the database
    answers again. A write that failed this way may or may not have committed.
    """

    code = "store_unavailable"
    status = 503


def status_for(code: str) -> int:
    """The HTTP status of an error ``code``: its class's ``status``; for a code no class has,
    the naming convention (``*_not_found`` → 404, ``*_already_exists`` → 409), else 500."""
    pending: list[type[FlowStateError]] = [FlowStateError]
    while pending:
        cls = pending.pop()
        if cls.code == code:
            return cls.status
        pending.extend(cls.__subclasses__())
    if code.endswith("_not_found"):
        return 404
    if code.endswith("_already_exists"):
        return 409
    return 500
