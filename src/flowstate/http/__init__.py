"""The HTTP edge: the ASGI app over a FlowServer, its authentication and request logs.

``create_app(server)`` is the public entry point; the modules inside are internal.
"""

from __future__ import annotations

from ._app import HTTPError, create_app, error_payload, status_for
from ._auth import Authenticator, make_authenticator, parse_tokens

__all__ = [
    "Authenticator",
    "HTTPError",
    "create_app",
    "error_payload",
    "make_authenticator",
    "parse_tokens",
    "status_for",
]
