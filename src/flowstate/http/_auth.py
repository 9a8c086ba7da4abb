"""Who is calling: bearer tokens (a mapping or ``$FLOWSTATE_TOKENS``) or a custom function.

``FlowServer(auth=...)`` takes a mapping of bearer token → user id, or a callable that receives
the Starlette ``Request`` and returns a user id (``None`` means 401), sync or async. With
``auth=None`` the tokens come from ``$FLOWSTATE_TOKENS`` (``token1:alice,token2:bob``).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..errors import AuthError

__all__ = [
    "TOKENS_ENV",
    "Authenticator",
    "bearer_token",
    "generate_token",
    "make_authenticator",
    "parse_tokens",
    "tokens_from_env",
]

TOKENS_ENV = "FLOWSTATE_TOKENS"

Authenticator = Callable[[Any], Awaitable[str | None]]


def parse_tokens(spec: str) -> dict[str, str]:
    """Parse ``"token1:alice,token2:bob"`` into ``{"token1": "alice", "token2": "bob"}``."""
    tokens: dict[str, str] = {}
    for number, entry in enumerate(spec.split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        token, sep, user = entry.partition(":")
        token, user = token.strip(), user.strip()
        if not sep or not token or not user:
            # The entry itself is a secret: name its position, never echo it.
            raise ValueError(
                f"{TOKENS_ENV} entry {number} must look like token:user_id "
                "(entries are separated by commas)"
            )
        tokens[token] = user
    return tokens


def tokens_from_env() -> dict[str, str]:
    """The tokens configured in ``$FLOWSTATE_TOKENS`` (empty when unset)."""
    return parse_tokens(os.environ.get(TOKENS_ENV, ""))


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


def _token_authenticator(tokens: Mapping[str, str]) -> Authenticator:
    by_digest: dict[bytes, str] = {}
    for token, user in tokens.items():
        if not isinstance(token, str) or not token or not isinstance(user, str) or not user:
            raise TypeError("auth tokens must map non-empty token strings to non-empty user ids")
        by_digest[_digest(token)] = user

    async def authenticate(request: Any) -> str | None:
        token = bearer_token(request)
        return None if token is None else by_digest.get(_digest(token))

    return authenticate


def _callable_authenticator(fn: Callable[[Any], Any]) -> Authenticator:
    async def authenticate(request: Any) -> str | None:
        try:
            user = fn(request)
            if inspect.isawaitable(user):
                user = await user
        except AuthError:
            return None
        if user is None:
            return None
        if not isinstance(user, str) or not user:
            raise TypeError(
                f"the auth callable must return a non-empty user id string or None, got {user!r}"
            )
        return user

    return authenticate


def make_authenticator(auth: Mapping[str, str] | Callable[[Any], Any] | None) -> Authenticator:
    """Turn ``FlowServer.auth`` into one async function: request → user id or None.

    A callable may raise :class:`~flowstate.errors.AuthError` instead of returning None.
    """
    if auth is None:
        return _token_authenticator(tokens_from_env())
    if isinstance(auth, Mapping):
        return _token_authenticator(auth)
    if callable(auth):
        return _callable_authenticator(auth)
    raise TypeError(
        f"auth must be a mapping of token → user id, a callable(request), or None; got {auth!r}"
    )
