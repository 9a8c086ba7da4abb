"""Errors and request bodies at the HTTP edge, the same for every router.

Every error answers ``{"error": {"code", "message", "details"?}}`` with the status its class
carries (:attr:`FlowStateError.status`); :class:`HTTPError` is an error of the request itself
(malformed body, size limit, bad header). Bodies are read by one reader that enforces the size
limit and decodes strict JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from ..errors import FlowStateError, PublicError, client_error, describe_errors, status_for
from ..limits import MAX_DEPTH, json_problem

__all__ = [
    "HTTPError",
    "check_input",
    "clean_errors",
    "error_payload",
    "error_response",
    "parse_body",
    "parse_json",
    "read_body",
    "status_for",
]

M = TypeVar("M", bound=BaseModel)


class HTTPError(FlowStateError):
    """An error of the request itself (bad body, size limit, bad header …), with its status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details
        self.headers = dict(headers or {})


def clean_errors(errors: Any) -> list[dict[str, Any]]:
    """Pydantic-style error dicts reduced to ``loc``, ``msg`` and ``type`` (JSON-safe)."""
    return [
        {
            "loc": list(e.get("loc", ())),
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in errors
    ]


def error_payload(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """``(status, {"code", "message", "details"?})`` for any exception, as clients may read it.

    What a client reads comes from :func:`flowstate.errors.client_error`: an internal error
    (a block's own exception, a driver error) is ``internal_error`` naming an error id, and
    the server log holds the detail under that id; a validator's own text is not forwarded.
    """
    if isinstance(exc, HTTPError):
        body: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if exc.details is not None:
            body["details"] = exc.details
        return exc.status, body
    code, message, details = client_error(exc)
    body = {"code": code, "message": message}
    if details is not None:
        body["details"] = details if isinstance(exc, PublicError) else clean_errors(details)
    if isinstance(exc, FlowStateError):
        return exc.status, body
    return status_for(code), body


def error_response(exc: BaseException, **extra: Any) -> JSONResponse:
    """The JSON error response for ``exc`` (``extra`` keys sit beside ``"error"``)."""
    status, body = error_payload(exc)
    headers = dict(exc.headers) if isinstance(exc, HTTPError) else {}
    if status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    if status == 503:  # store_unavailable: the store reconnects by itself; try again soon
        headers.setdefault("Retry-After", "1")
    return JSONResponse({"error": body, **extra}, status_code=status, headers=headers or None)


def _too_large(limit: int) -> HTTPError:
    return HTTPError(
        413, "payload_too_large", f"the request body is larger than the limit of {limit} bytes"
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) anything over ``limit`` bytes, declared or streamed.

    A client that goes away (or is cut off by the server's body timeout) before its body
    arrived is a 408 ``request_timeout``, never an internal error: nothing is logged here
    (``flowstate serve`` logs its timeouts as one line and has answered 408 already).
    """
    try:
        return await _read_body(request, limit)
    except ClientDisconnect:
        raise HTTPError(
            408,
            "request_timeout",
            "the client disconnected (or was cut off) before its request body arrived",
            headers={"Connection": "close"},
        ) from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit():
        # (A length of more digits than any limit is too large without parsing it.)
        if len(declared) > 18 or int(declared) > limit:
            raise _too_large(limit)
        # HTTP framing holds a body to its declared length, so it can be read whole (the
        # check below guards against a server that would not).
        raw = await request.body()
        if len(raw) > limit:
            raise _too_large(limit)
        return raw
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes, *, empty: Any = None) -> Any:
    """Decode a JSON body (400 ``invalid_json`` if it is not JSON); an empty body → ``empty``."""
    if not raw.strip():
        return empty
    try:
        return json.loads(raw)
    except RecursionError:
        message = f"the request body nests deeper than the limit of {MAX_DEPTH} levels"
        raise HTTPError(400, "invalid_json", message) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, over 4,300 digits
        raise HTTPError(
            400, "invalid_json", f"the request body is not valid JSON: {str(exc)[:200]}"
        ) from None


def check_input(data: Any, loc: tuple[str | int, ...] = ("body",)) -> None:
    """422 unless ``data`` (a decoded body) keeps to the input limits: at most 64 levels of
    nesting below the body object, strings without lone surrogates."""
    problem = json_problem(data, loc, max_depth=MAX_DEPTH + 1, state=False)
    if isinstance(data, dict) and "input" in data:
        problem = json_problem(data["input"], (*loc, "input"), state=False) or problem
    if problem is not None:
        where, message, type_ = problem
        errors = [{"loc": list(where), "msg": message, "type": type_}]
        raise HTTPError(
            422, "validation_error", f"request body: {describe_errors(errors)}", details=errors
        )


def parse_body(raw: bytes, model: type[M]) -> M:
    """Decode a JSON object body into ``model``: 400 if not JSON, 422 if it does not fit."""
    data = parse_json(raw, empty={})
    check_input(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{**e, "loc": ["body", *e["loc"]]} for e in clean_errors(exc.errors())]
        raise HTTPError(
            422, "validation_error", f"request body: {describe_errors(errors)}", details=errors
        ) from None
