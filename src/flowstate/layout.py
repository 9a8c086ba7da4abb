"""The store-key layout: every key flowstate writes is built (and parsed) here. Pure logic.

| what | key |
|---|---|
| scope state | ``{scope}/{id}/state`` |
| isolated user/project state | ``{scope}@{flow kind}/{id}/state`` |
| static resource | ``{scope root}r/{name}`` |
| collection instance | ``{scope root}c/{collection name}/{storage key}`` |
| session binding | ``_sessions/{session id}`` |
| a user's session index | ``_user_sessions/{user id}/{session id}`` |
| Windmill-style script records | ``project/{project id}/c/{_scripts,_flow_user_states,_jobs}/…`` |

Ids are percent-encoded, so an id can never add a level to a key; the id rule
(:func:`check_id`) and the text rule of ids and script paths (:func:`check_text`) are written
once, here, on top of the rule collection keys obey too (:func:`flowstate.limits.broken_key_rule`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from .errors import KeyPatternError
from .limits import MAX_KEY_BYTES, broken_key_rule

__all__ = [
    "MAX_ID_BYTES",
    "ParsedKey",
    "check_id",
    "check_text",
    "collection_root",
    "parse_key",
    "project_collection_root",
    "resource_key",
    "scope_root",
    "session_key",
    "state_key",
    "user_session_key",
    "user_sessions_prefix",
]

MAX_ID_BYTES = MAX_KEY_BYTES
"""Longest id (session, user, project, job, …) in UTF-8 bytes (:mod:`flowstate.limits`)."""

SESSIONS = "_sessions/"
USER_SESSIONS = "_user_sessions/"


def check_text(value: object, what: str, *, max_bytes: int) -> str:
    """A non-empty string of valid Unicode, at most ``max_bytes`` in UTF-8, no control chars.

    The rule is :func:`flowstate.limits.broken_key_rule`, the one that collection keys obey
    too; the error names ``what`` and the part of the rule broken.
    """
    if not isinstance(value, str) or not value:
        raise KeyPatternError(f"{what} must be a non-empty string, got {value!r}")
    broken = broken_key_rule(value, max_bytes=max_bytes)
    if broken == "unicode":
        raise KeyPatternError(f"{what} must be valid Unicode (it contains a lone surrogate)")
    if broken == "length":
        raise KeyPatternError(f"{what} {value[:40]!r}… is longer than {max_bytes} bytes (UTF-8)")
    if broken == "control":
        raise KeyPatternError(f"{what} {value!r} must not contain control characters or NUL")
    return value


def check_id(value: object, what: str, *, segment: bool = False) -> str:
    """An id: :func:`check_text` with :data:`MAX_ID_BYTES`, and no ``/`` (ids name one thing).

    ``segment=True`` (user names and step ids, which become Windmill path segments) also
    refuses ``\\``.
    """
    text = check_text(value, what, max_bytes=MAX_ID_BYTES)
    if "/" in text or (segment and "\\" in text):
        raise KeyPatternError(f'{what} {text!r} must be a single segment (no "/")')
    return text


# What ``quote(value, safe="")`` leaves as it is; most ids are made of these alone.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")


def _enc(value: str) -> str:
    if _UNRESERVED.fullmatch(value):  # the common case, without quote's byte-by-byte work
        return value
    return quote(value, safe="")


def scope_root(scope: str, scope_id: str, *, isolated_kind: str | None = None) -> str:
    """The key prefix of one scope instance (``isolated_kind``: an isolated flow's own)."""
    if isolated_kind is None:
        return f"{scope}/{_enc(scope_id)}/"
    return f"{scope}@{_enc(isolated_kind)}/{_enc(scope_id)}/"


def state_key(root: str) -> str:
    """The state record of the scope at ``root``."""
    return root + "state"


def resource_key(root: str, name: str) -> str:
    """The record of static resource ``name`` in the scope at ``root``."""
    return f"{root}r/{_enc(name)}"


def collection_root(root: str, name: str) -> str:
    """The prefix of collection ``name``'s instances in the scope at ``root``."""
    return f"{root}c/{_enc(name)}/"


def session_key(session_id: str) -> str:
    """A session's binding record (user, flow kind, project, creation time)."""
    return SESSIONS + _enc(session_id)


def user_sessions_prefix(user_id: str) -> str:
    """The prefix of a user's session index."""
    return f"{USER_SESSIONS}{_enc(user_id)}/"


def user_session_key(user_id: str, session_id: str) -> str:
    """One entry of a user's session index."""
    return user_sessions_prefix(user_id) + _enc(session_id)


def project_collection_root(project_id: str, collection: str) -> str:
    """The prefix of an internal collection in a project (script states, jobs, …)."""
    return collection_root(scope_root("project", check_id(project_id, "project id")), collection)


@dataclass(frozen=True)
class ParsedKey:
    """What a store key names: ``kind`` is ``state``, ``resource``, ``collection``,
    ``session`` or ``user_session``; ``name``/``item`` are the resource name and the
    collection's storage key (or the session id for the index)."""

    kind: str
    scope: str | None = None
    scope_id: str | None = None
    isolated_kind: str | None = None
    name: str | None = None
    item: str | None = None


def parse_key(key: str) -> ParsedKey:
    """The inverse of the builders above; a key this module did not build → ``ValueError``."""
    if key.startswith(SESSIONS) and "/" not in key[len(SESSIONS) :]:
        return ParsedKey("session", scope="session", scope_id=unquote(key[len(SESSIONS) :]))
    if key.startswith(USER_SESSIONS):
        user, _, session = key[len(USER_SESSIONS) :].partition("/")
        if user and session and "/" not in session:
            return ParsedKey(
                "user_session", scope="user", scope_id=unquote(user), item=unquote(session)
            )
    head, _, rest = key.partition("/")
    scope, _, kind = head.partition("@")
    scope_id, _, tail = rest.partition("/")
    if scope not in ("request", "session", "user", "project") or not scope_id or not tail:
        raise ValueError(f"{key!r} is not a flowstate store key")
    common = {
        "scope": scope,
        "scope_id": unquote(scope_id),
        "isolated_kind": unquote(kind) if kind else None,
    }
    if tail == "state":
        return ParsedKey("state", **common)
    part, _, name_rest = tail.partition("/")
    if part == "r" and name_rest and "/" not in name_rest:
        return ParsedKey("resource", name=unquote(name_rest), **common)
    name, _, item = name_rest.partition("/")
    if part == "c" and name and item:
        return ParsedKey("collection", name=unquote(name), item=item, **common)
    raise ValueError(f"{key!r} is not a flowstate store key")
