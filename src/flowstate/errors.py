"""The flowstate error hierarchy: every error a user can catch, in one place.

Each error carries its stable machine-readable ``code`` and the HTTP ``status`` it answers
with (like Starlette's ``HTTPException``), so every router maps errors the same way; its
message names the scope, field or key involved and the rule that was broken.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import Any, cast, get_args

from pydantic_core.core_schema import ErrorType

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
    "MigrationError",
    "ProjectNotFoundError",
    "PublicError",
    "ResourceAlreadyExistsError",
    "ResourceNotFoundError",
    "ResourceReadOnlyError",
    "SchemaConflictError",
    "SchemaVersionError",
    "SessionNotFoundError",
    "StateValidationError",
    "StoreUnavailableError",
    "client_error",
    "describe_errors",
    "status_for",
]

log = logging.getLogger("flowstate.errors")


class FlowStateWarning(UserWarning):
    """Warned when something works but deserves a look (e.g. two flows' schemas differ)."""


class FlowStateError(Exception):
    """Base of every flowstate error; ``code`` is the stable wire name.

    ``public_message``, when set, is what a client is told instead of ``message`` (which may
    name a key of a collection the client cannot see); see :func:`client_error`.
    """

    code: str = "flowstate_error"
    status: int = 500
    """The HTTP status of this error (500: a server-side problem, not the caller's)."""
    public_message: str | None = None

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
        where: str | None = None,
    ) -> None:
        super().__init__(message)
        self.scope = scope
        self.errors = [dict(e) for e in errors]
        self.where = where
        """What was being written or validated, as clients may read it (no hidden keys)."""

    def with_scope(
        self, scope: str, where: str, public_where: str | None = None
    ) -> StateValidationError:
        """A copy naming the scope (``session`` …) and, in the message, what was written.

        Errors are raised below the scope layer, which knows neither. ``public_where`` is the
        client-safe spelling of ``where`` (default: ``where``).
        """
        if self.scope is not None:
            return self
        return StateValidationError(
            f"{where}: {self.message}",
            scope=scope,
            errors=self.errors,
            where=where if public_where is None else public_where,
        )


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


class MigrationError(FlowStateError):
    """A stored record could not be upgraded to the code's schema version.

    Its migration chain raised, or its result does not validate against the current model
    (``errors`` in Pydantic's shape names the field). The record is left as it was stored.
    """

    code = "migration_error"

    def __init__(
        self,
        message: str,
        *,
        key: str,
        from_version: int,
        to_version: int,
        errors: Sequence[dict[str, Any]] = (),
    ) -> None:
        super().__init__(message)
        self.key = key
        self.from_version = from_version
        self.to_version = to_version
        self.errors = [dict(e) for e in errors]


class SchemaVersionError(FlowStateError):
    """A stored record was written by newer code (a rollback): refused, never overwritten."""

    code = "schema_version_error"

    def __init__(self, message: str, *, key: str, stored_version: int, code_version: int) -> None:
        super().__init__(message)
        self.key = key
        self.stored_version = stored_version
        self.code_version = code_version


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


class PublicError(FlowStateError):
    """Raise from a block when the client should read the message (and the code).

    Any other exception a block raises reaches clients only as ``internal_error`` with an
    error id (see :func:`client_error`); this one is sent as is, with HTTP status ``status``
    (default 400). ``details`` (JSON) travels too.
    """

    code = "request_failed"
    status = 400

    def __init__(
        self, message: str, *, code: str = "request_failed", status: int = 400, details: Any = None
    ) -> None:
        super().__init__(message)
        if not (400 <= status <= 499):
            raise ValueError(f"PublicError status must be a 4xx code, got {status}")
        self.code = code
        self.status = status
        self.details = details


# ------------------------------------------------------------------------- what clients see

# Pydantic's built-in messages are templates filled from the schema (bounds, expected types,
# literal values). These also interpolate the validator's own text or part of the input (an
# error text, a tag, a length), so clients get a generic message instead: "value_error" is
# ``raise ValueError(f"... {secret}")``.
_OPEN_TYPES = frozenset(
    {
        "value_error",
        "assertion_error",
        "union_tag_invalid",
        "json_invalid",
        "json_type",
        "no_such_attribute",
        "get_attribute_error",
        "iteration_error",
        "mapping_type",
        "too_short",
        "too_long",
        "bytes_invalid_encoding",
        "date_parsing",
        "date_from_datetime_parsing",
        "time_parsing",
        "datetime_parsing",
        "datetime_object_invalid",
        "datetime_from_date_parsing",
        "timezone_offset",
        "time_delta_parsing",
        "url_parsing",
        "url_syntax_violation",
        "uuid_parsing",
    }
)
_SAFE_TYPES = (frozenset(get_args(ErrorType)) - _OPEN_TYPES) | {
    # flowstate's own error types (ops.py, schema.py, limits.py), whose messages name types
    # and rules, never values.
    "extra_forbidden",
    "finite_number",
    "inc_amount",
    "inc_target",
    "push_target",
    "record_key",
    "record_target",
    "int_range",
    "json_depth",
    "string_nul",
    "string_unicode",
    "record_size",  # names the limit only (the message with the key stays on the server)
}
_HIDDEN_MSG = "the value is invalid (the validator's message is kept in the server log)"


def new_error_id() -> str:
    """A short random id that ties a client's error to the server log line with the detail."""
    return secrets.token_hex(3)


def _client_errors(exc: StateValidationError) -> tuple[list[dict[str, Any]], bool]:
    errors = []
    hidden = False
    for e in exc.errors:
        type_ = str(e.get("type", ""))
        safe = type_ in _SAFE_TYPES or exc.scope == "input"
        hidden = hidden or not safe
        errors.append(
            {
                "loc": list(e.get("loc", ())),
                "msg": str(e.get("msg", "")) if safe else _HIDDEN_MSG,
                "type": type_,
            }
        )
    return errors, hidden


def describe_errors(errors: list[dict[str, Any]]) -> str:
    """One line per error: ``field "a.b": Input should be a valid integer (int_parsing)``."""
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e["loc"]) or "(state)"
        parts.append(f'field "{loc}": {e["msg"]} ({e["type"]})')
    return "; ".join(parts)


def client_error(exc: BaseException) -> tuple[str, str, Any]:
    """``(code, message, details)`` of ``exc`` as a client may read it.

    A :class:`FlowStateError` keeps its code; its message is ``public_message`` when set.
    A validation error of state (not of the client's own input) keeps ``loc``/``type`` and
    pydantic's templated messages, but a custom validator's text is replaced and logged under
    an error id. Anything else (a block's own exception, a driver error) is ``internal_error``
    with ``internal error (id …)``; the full traceback is logged under that id, once per
    exception, so the run's ``request.failed`` event and the HTTP answer name the same id.
    """
    cached = getattr(exc, "_flowstate_client_error", None)
    if cached is not None:
        return cast(tuple[str, str, Any], cached)
    result: tuple[str, str, Any]
    if isinstance(exc, StateValidationError):
        errors, hidden = _client_errors(exc)
        if not errors:
            message = exc.public_message or exc.message
        else:
            text = describe_errors(errors)
            if hidden:
                error_id = new_error_id()
                log.warning("validation error id %s: %s", error_id, exc.message)
                text += f" (id {error_id})"
            message = f"{exc.where}: {text}" if exc.where else text
        result = (exc.code, message, errors or None)
    elif isinstance(exc, PublicError):
        result = (exc.code, exc.message, exc.details)
    elif isinstance(exc, FlowStateError):
        result = (exc.code, exc.public_message or exc.message, None)
    else:
        error_id = new_error_id()
        log.error("internal error id %s", error_id, exc_info=exc)
        result = ("internal_error", f"internal error (id {error_id})", None)
    try:
        exc._flowstate_client_error = result  # type: ignore[attr-defined]
    except AttributeError:  # an exception type with __slots__: it just gets a new id
        pass
    return result
