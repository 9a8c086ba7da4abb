"""Who is calling: bearer tokens (a mapping or ``$FLOWSTATE_TOKENS``) or a custom function.

``FlowServer(auth=...)`` takes a mapping of bearer token → user id or
:class:`~flowstate.access.Identity`, or a callable that receives the Starlette ``Request`` and
returns a user id (a member of no project), an ``Identity`` or ``None`` (401), sync or async.
With ``auth=None`` the tokens come from ``$FLOWSTATE_TOKENS``: comma-separated token specs
``token:alice`` (no project) or ``token:alice:proj1+proj2`` (a member of both projects).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from ..access import Identity
from ..errors import AuthError

__all__ = [
    "TOKENS_ENV",
    "Authenticator",
    "bearer_token",
    "generate_token",
    "make_authenticator",
    "parse_tokens",
    "tokens_from_env",
    "tokens_from_file",
]

TOKENS_ENV = "FLOWSTATE_TOKENS"

Authenticator = Callable[[Any], Awaitable[Identity | None]]


def parse_tokens(spec: str, *, source: str = TOKENS_ENV) -> dict[str, Identity]:
    """Parse token specs separated by commas or new lines into token → :class:`Identity`.

    ``"t1:alice,t2:bob:p1+p2"`` → ``{"t1": Identity("alice"), "t2": Identity("bob",
    frozenset({"p1", "p2"}))}``. Blank entries and lines starting with ``#`` are skipped.
    """
    tokens: dict[str, Identity] = {}
    entries = [
        entry.strip()
        for line in spec.splitlines()
        if not line.strip().startswith("#")
        for entry in line.split(",")
    ]
    for number, entry in enumerate((e for e in entries if e), start=1):
        token, sep, rest = entry.partition(":")
        user, _, projects = rest.partition(":")
        token, user = token.strip(), user.strip()
        members = frozenset(p.strip() for p in projects.split("+") if p.strip())
        if not sep or not token or not user:
            # The entry itself is a secret: name its position, never echo it.
            raise ValueError(
                f"{source} entry {number} must look like token:user_id or "
                "token:user_id:project1+project2 (entries are separated by commas)"
            )
        tokens[token] = Identity(user, members)
    return tokens


def tokens_from_env() -> dict[str, Identity]:
    """The tokens configured in ``$FLOWSTATE_TOKENS`` (empty when unset)."""
    return parse_tokens(os.environ.get(TOKENS_ENV, ""))


def tokens_from_file(path: str | Path) -> dict[str, Identity]:
    """The token specs of a file (one or more per line, ``#`` comments allowed)."""
    return parse_tokens(Path(path).read_text(encoding="utf-8"), source=f"tokens file {path}")


def generate_token() -> str:
    """A fresh random bearer token (what ``flowstate serve`` prints when none is configured)."""
    return secrets.token_urlsafe(24)


def bearer_token(request: Any) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    header: str = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _digest(token: str) -> bytes:
    # Looking tokens up by their hash keeps the lookup time independent of how much of a
    # guessed token matches a real one.
    return hashlib.sha256(token.encode()).digest()


def _token_authenticator(tokens: Mapping[str, str | Identity]) -> Authenticator:
    by_digest: dict[bytes, Identity] = {}
    for token, user in tokens.items():
        if not isinstance(token, str) or not token:
            raise TypeError("auth tokens must be non-empty strings")
        if isinstance(user, str) and user:
            user = Identity(user)
        if not isinstance(user, Identity):
            raise TypeError(
                "auth tokens must map to a non-empty user id or a flowstate.Identity, "
                f"got {type(user).__name__}"
            )
        by_digest[_digest(token)] = user

    async def authenticate(request: Any) -> Identity | None:
        token = bearer_token(request)
        return None if token is None else by_digest.get(_digest(token))

    return authenticate


def _callable_authenticator(fn: Callable[[Any], Any]) -> Authenticator:
    async def authenticate(request: Any) -> Identity | None:
        try:
            user = fn(request)
            if inspect.isawaitable(user):
                user = await user
        except AuthError:
            return None
        if user is None or isinstance(user, Identity):
            return user
        if not isinstance(user, str) or not user:
            raise TypeError(
                "the auth callable must return a non-empty user id string, a "
                f"flowstate.Identity or None, got {type(user).__name__}"
            )
        return Identity(user)

    return authenticate


def make_authenticator(
    auth: Mapping[str, str | Identity] | Callable[[Any], Any] | None,
) -> Authenticator:
    """Turn ``FlowServer.auth`` into one async function: request → :class:`Identity` or None.

    A callable may raise :class:`~flowstate.errors.AuthError` instead of returning None.
    """
    if auth is None:
        return _token_authenticator(tokens_from_env())
    if isinstance(auth, Mapping):
        return _token_authenticator(auth)
    if callable(auth):
        return _callable_authenticator(auth)
    raise TypeError(
        "auth must be a mapping of token → user id or Identity, a callable(request), or None; "
        f"got {type(auth).__name__}"
    )
