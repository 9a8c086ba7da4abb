"""Script states, resources, flow user states and job records on a :class:`Store` (async).

Written once and used by both the synchronous :mod:`flowstate.scripts` functions and the
``wmill``-compatible HTTP routes. Every state or resource is one versioned record in the
project scope (``project/{pid}/c/_scripts/{path}``, fields ``value`` and ``resourceType``);
a write is atomic and bumps the version, and ``if_version`` turns it into a compare-and-swap.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ..errors import (
    ConcurrentModificationError,
    ResourceAlreadyExistsError,
    ResourceNotFoundError,
    StateValidationError,
)
from ..ops import Change, FieldOp
from ..schema import Schema
from ..stores.base import Store
from .paths import check_flow_key, check_path, flow_state_key, item_key, job_key

__all__ = [
    "StateInfo",
    "get_flow_value",
    "read_item",
    "record_job",
    "remove_job",
    "root_job_of",
    "set_flow_value",
    "to_json",
    "write_item",
]

_FREE = Schema(None)
_CREATE_RACE_ROUNDS = 5


@dataclass(frozen=True)
class StateInfo:
    """A state or resource as stored: its path, value, version and Windmill resource type.

    ``version`` is 0 (and ``value`` None) while nothing was ever written at ``path``.
    """

    path: str
    value: Any
    version: int
    resource_type: str | None = None

    @property
    def exists(self) -> bool:
        return self.version > 0


def _check_finite(value: Any) -> None:
    # Pydantic's JSON mode would silently turn NaN and infinities into null.
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} is not a JSON number")
    if isinstance(value, dict):
        for item in value.values():
            _check_finite(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_finite(item)


def to_json(value: Any, what: str) -> Any:
    """``value`` in JSON form (tuples → lists …), or :class:`StateValidationError`."""
    try:
        _check_finite(value)
        converted = _FREE.validate_fields({"value": value})["value"]
        json.dumps(converted, allow_nan=False)
    except (StateValidationError, ValueError) as exc:
        detail = exc.message if isinstance(exc, StateValidationError) else str(exc)
        raise StateValidationError(
            f"{what}: value is not JSON ({detail})",
            scope="project",
            errors=[{"loc": ["value"], "msg": "value is not JSON", "type": "json_type"}],
        ) from None
    return converted


async def read_item(store: Store, project: str, path: str) -> StateInfo:
    """The state or resource at ``path`` (version 0 when it was never written)."""
    record = await store.read(item_key(project, path))
    if record is None or record.version == 0:
        return StateInfo(path, None, 0)
    fields = record.fields
    return StateInfo(path, fields.get("value"), record.version, fields.get("resourceType"))


def _conflict(path: str, expected: int, actual: int) -> ConcurrentModificationError:
    return ConcurrentModificationError(
        f'"{path}" is at version {actual}, not the expected version {expected}: another run '
        "wrote it since it was read; read it again and retry (update_state does this for you)",
        attempts=1,
    )


async def write_item(
    store: Store,
    project: str,
    path: str,
    value: Any,
    resource_type: str = "any",
    *,
    if_version: int | None = None,
    create_only: bool = False,
    must_exist: bool = False,
) -> int:
    """Write ``value`` at ``path`` atomically; return the record's version afterwards.

    A new record gets ``resource_type``; an existing one keeps its type (Windmill's
    ``update_value``). Writing the value already stored is a no-op (the version stays).
    ``if_version``: write only if the record is at that version (0 = never written), else
    :class:`ConcurrentModificationError`. ``create_only``: an existing record →
    :class:`ResourceAlreadyExistsError`. ``must_exist``: a missing record →
    :class:`~flowstate.errors.ResourceNotFoundError`.
    """
    check_path(path)
    if if_version is not None and (isinstance(if_version, bool) or if_version < 0):
        raise ValueError(f"if_version must be a version number >= 0, got {if_version!r}")
    key = item_key(project, path)
    value = to_json(value, f'"{path}"')
    fields = {"value": value, "resourceType": resource_type}
    if create_only or if_version == 0:
        created = await store.create(key, fields)
        if created.status == "created":
            return created.version
        if create_only:
            raise ResourceAlreadyExistsError(f'resource "{path}" already exists')
        raise _conflict(path, 0, created.version)
    change = Change(
        _FREE,
        ops=(FieldOp("set", "value", value),),
        expected_version=if_version,
        must_exist=True,
        operation="set",
    )
    for _ in range(_CREATE_RACE_ROUNDS):
        applied = await store.apply(key, change)
        if applied.status in ("committed", "noop"):
            return applied.version
        if applied.status == "conflict":
            assert if_version is not None
            raise _conflict(path, if_version, applied.version)
        # missing
        if must_exist:
            raise ResourceNotFoundError(f'resource "{path}" does not exist')
        if if_version is not None:
            raise _conflict(path, if_version, 0)
        created = await store.create(key, fields)
        if created.status == "created":
            return created.version
        # Another writer created it in between: update the record it created.
    raise ConcurrentModificationError(
        f'"{path}" kept being created and deleted underneath this write', attempts=5
    )


async def get_flow_value(store: Store, project: str, flow_run_id: str, key: str) -> Any:
    """One flow user state value (None when unset)."""
    check_flow_key(key)
    record = await store.read(flow_state_key(project, flow_run_id), frozenset({key}))
    if record is None:
        return None
    return record.fields.get(key)


async def set_flow_value(store: Store, project: str, flow_run_id: str, key: str, value: Any) -> int:
    """Set one flow user state value atomically; return the record's version."""
    check_flow_key(key)
    converted = to_json(value, f'flow user state "{key}"')
    change = Change(_FREE, ops=(FieldOp("set", key, converted),), operation="set_flow_user_state")
    applied = await store.apply(flow_state_key(project, flow_run_id), change)
    return applied.version


async def record_job(
    store: Store, project: str, job_id: str, root_job_id: str, **info: str | None
) -> None:
    """Remember that job ``job_id`` runs inside flow run ``root_job_id`` (for HTTP clients)."""
    fields: dict[str, Any] = {"rootJobId": root_job_id}
    fields.update({k: v for k, v in info.items() if v is not None})
    await store.create(job_key(project, job_id), fields, replace=True)


async def remove_job(store: Store, project: str, job_id: str) -> None:
    await store.delete(job_key(project, job_id))


async def root_job_of(store: Store, project: str, job_id: str) -> str:
    """The flow run id of a recorded step job; any other job is its own root."""
    record = await store.read(job_key(project, job_id), frozenset({"rootJobId"}))
    if record is None:
        return job_id
    root = record.fields.get("rootJobId")
    return root if isinstance(root, str) else job_id
