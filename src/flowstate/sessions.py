"""Session bookkeeping that is pure logic: metadata merging and limits, idle expiry.

No I/O. A session's metadata is a small JSON object the application sets (a title, tags) so
users can find their sessions; it lives on the session's binding record, never in its state.
A session expires when it has been idle (no run) for longer than its flow's session ``ttl``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from .errors import StateValidationError
from .schema import check_finite

__all__ = [
    "MAX_METADATA_BYTES",
    "MAX_METADATA_KEY",
    "is_expired",
    "merge_metadata",
]

MAX_METADATA_BYTES = 4096
"""The largest a session's metadata may be, as compact UTF-8 JSON."""
MAX_METADATA_KEY = 64
"""The longest metadata key, in characters."""


def _invalid(message: str, loc: list[Any], type_: str) -> StateValidationError:
    return StateValidationError(
        f"session metadata: {message}", errors=[{"loc": loc, "msg": message, "type": type_}]
    )


def merge_metadata(current: Mapping[str, Any], patch: Any) -> dict[str, Any]:
    """``current`` with ``patch`` shallow-merged in (a None value deletes the key), checked.

    Raises :class:`StateValidationError` naming the key and the rule broken: the patch must
    be a JSON object, keys non-empty strings of at most 64 characters, the result at most
    4096 bytes of JSON.
    """
    if not isinstance(patch, Mapping):
        raise _invalid(
            f"a metadata patch must be a JSON object, got {type(patch).__name__}",
            ["metadata"],
            "dict_type",
        )
    out = dict(current)
    for key, value in patch.items():
        if not isinstance(key, str) or not key or len(key) > MAX_METADATA_KEY:
            raise _invalid(
                f"metadata keys must be non-empty strings of at most {MAX_METADATA_KEY} "
                f"characters, got {key!r:.80}",
                ["metadata", str(key)[:80]],
                "metadata_key",
            )
        if any(ord(c) < 32 or c == "\x7f" for c in key):
            raise _invalid(
                f"metadata key {key!r} contains control characters",
                ["metadata", key],
                "metadata_key",
            )
        if value is None:
            out.pop(key, None)
            continue
        check_finite(value, ("metadata", key))
        out[key] = value
    try:
        size = len(json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise _invalid(f"metadata must be JSON: {exc}", ["metadata"], "json_type") from None
    if size > MAX_METADATA_BYTES:
        raise _invalid(
            f"metadata would be {size} bytes of JSON, over the limit of {MAX_METADATA_BYTES}; "
            "keep titles and tags here and larger data in session state",
            ["metadata"],
            "metadata_size",
        )
    return out


def is_expired(last_active_ns: int, ttl: timedelta | None, now_ns: int) -> bool:
    """Whether a session last active at ``last_active_ns`` has been idle longer than ``ttl``."""
    if ttl is None or last_active_ns <= 0:
        return False
    return now_ns - last_active_ns > ttl / timedelta(microseconds=1) * 1000
