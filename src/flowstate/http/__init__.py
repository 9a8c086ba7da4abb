"""The HTTP edge: the ASGI app over a FlowServer, its authentication and request logs.

``create_app(server)`` is the public entry point; the modules inside are internal.
"""

from __future__ import annotations

from ._app import create_app
from ._auth import Authenticator, make_authenticator, parse_tokens
from ._errors import HTTPError, error_payload, status_for

__all__ = [
    "Authenticator",
    "HTTPError",
    "create_app",
    "error_payload",
    "make_authenticator",
    "parse_tokens",
    "status_for",
]
