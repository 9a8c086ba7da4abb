"""The routes the official ``wmill`` Python client calls for states, resources and flow states.

With ``WM_BASE_URL`` pointing at a flowstate server, ``WM_TOKEN`` a flowstate bearer token and
``WM_WORKSPACE`` a project id, an unmodified Windmill script's ``wmill.get_state()``,
``set_state()``, ``get_resource()``, ``set_resource()``, ``get_flow_user_state()`` and
``set_flow_user_state()`` read and write the same versioned records as
:mod:`flowstate.scripts`. Paths and payloads follow ``wmill/client.py``:

- ``GET  /api/w/{ws}/resources/get_value_interpolated/{path}`` and ``…/get_value/{path}``
- ``GET  /api/w/{ws}/resources/get/{path}`` (404 when missing) and ``…/exists/{path}``
- ``POST /api/w/{ws}/resources/create`` ``{"path", "value", "resource_type"}``
- ``POST /api/w/{ws}/resources/update_value/{path}`` ``{"value"}``
- ``GET  /api/w/{ws}/jobs_u/get_root_job_id/{job_id}``
- ``GET|POST /api/w/{ws}/jobs/flow/user_states/{flow_run_id}/{key}`` (POST body: the value)

Who may call what (:mod:`flowstate.access`): a workspace is reachable only by its members
(anyone else gets the 404 ``project_not_found`` of a workspace that does not exist); a path
``u/<name>/…`` only by user ``<name>`` (anyone else gets the 404 of a missing resource).

Values are returned verbatim (flowstate has no Windmill variables to interpolate). Every
response about a state or resource carries its version in ``X-Flowstate-Version``;
``update_value`` takes an optional ``?if_version=N`` compare-and-swap (409 on conflict).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from ..access import Identity, require_path, require_project
from ..errors import AuthError, FlowStateError, ResourceNotFoundError
from ..scripts import storage
from ..scripts.paths import check_id, check_path
from ..stores.base import Store
from ._errors import HTTPError, error_response, parse_json, read_body

__all__ = ["DEFAULT_MAX_BODY", "wmill_router"]

DEFAULT_MAX_BODY = 1 << 20
VERSION_HEADER = "X-Flowstate-Version"

Authenticate = Callable[[Request], Awaitable[Identity | None]]


class _Route(APIRoute):
    """Answers a :class:`FlowStateError` with the shared JSON error shape and status."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except FlowStateError as exc:
                return error_response(exc)

        return guarded


def _if_version(request: Request) -> int | None:
    raw = request.query_params.get("if_version")
    if raw is None:
        return None
    # isdigit() alone accepts "²" and other non-ASCII digits, which int() refuses.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise _invalid(f"if_version must be a version number >= 0, got {raw[:40]!r}")
    return int(raw)


def _invalid(message: str) -> HTTPError:
    return HTTPError(422, "validation_error", message)


def _json(value: Any, version: int | None = None, status: int = 200) -> JSONResponse:
    headers = {VERSION_HEADER: str(version)} if version is not None else None
    return JSONResponse(value, status_code=status, headers=headers)


def wmill_router(
    store: Store | Callable[[], Store],
    authenticate: Authenticate,
    *,
    max_body: int = DEFAULT_MAX_BODY,
) -> APIRouter:
    """An ``APIRouter`` (prefix ``/api``) answering the ``wmill`` client's state routes.

    ``store`` is the server's store (or a function returning it); ``authenticate`` maps a
    request to an :class:`~flowstate.access.Identity` or None (401). A workspace is reachable
    by its members only, a ``u/<name>/…`` path by user ``<name>`` only.
    """
    router = APIRouter(prefix="/api", tags=["wmill"], route_class=_Route)

    def get_store() -> Store:
        return store if isinstance(store, Store) else store()

    async def caller(request: Request) -> Identity:
        identity = await authenticate(request)
        if identity is None:
            raise AuthError("a valid bearer token is required (WM_TOKEN)")
        return identity

    async def begin(request: Request, workspace: str) -> Identity:
        """Authenticate (401), then check the workspace id and membership (404)."""
        identity = await caller(request)
        require_project(identity, check_id(workspace, "workspace"))
        return identity

    async def begin_path(request: Request, workspace: str, path: object, what: str = "path") -> str:
        """:func:`begin`, then the path's own rule: ``u/<name>/…`` is user ``<name>``'s."""
        identity = await begin(request, workspace)
        return require_path(identity, workspace, check_path(path, what))

    async def body(request: Request) -> Any:
        # httpx sends no body for json=None: an empty body is a JSON null.
        return parse_json(await read_body(request, max_body), empty=None)

    async def read_existing(workspace: str, path: str) -> storage.StateInfo:
        info = await storage.read_item(get_store(), workspace, path)
        if not info.exists:
            raise ResourceNotFoundError(
                f'resource "{path}" does not exist in workspace "{workspace}"'
            )
        return info

    @router.get("/w/{workspace}/resources/get_value_interpolated/{path:path}")
    async def get_value_interpolated(request: Request, workspace: str, path: str) -> Response:
        """The resource's value (404 when missing); used by ``wmill.get_state``."""
        path = await begin_path(request, workspace, path)
        info = await read_existing(workspace, path)
        return _json(info.value, info.version)

    @router.get("/w/{workspace}/resources/get_value/{path:path}")
    async def get_value(request: Request, workspace: str, path: str) -> Response:
        """The resource's value (404 when missing)."""
        path = await begin_path(request, workspace, path)
        info = await read_existing(workspace, path)
        return _json(info.value, info.version)

    @router.get("/w/{workspace}/resources/get/{path:path}")
    async def get_resource(request: Request, workspace: str, path: str) -> Response:
        """The resource object ``{path, value, resource_type, …}`` (404 when missing)."""
        path = await begin_path(request, workspace, path)
        info = await read_existing(workspace, path)
        return _json(
            {
                "workspace_id": workspace,
                "path": path,
                "value": info.value,
                "resource_type": info.resource_type or "any",
                "description": None,
                "is_oauth": False,
                "version": info.version,
            },
            info.version,
        )

    @router.get("/w/{workspace}/resources/exists/{path:path}")
    async def exists(request: Request, workspace: str, path: str) -> Response:
        """Whether a resource exists at ``path`` (JSON ``true``/``false``)."""
        path = await begin_path(request, workspace, path)
        info = await storage.read_item(get_store(), workspace, path)
        return _json(info.exists)

    @router.post("/w/{workspace}/resources/create")
    async def create(request: Request, workspace: str) -> Response:
        """Create a resource from ``{"path", "value", "resource_type"}`` (409 if it exists)."""
        identity = await begin(request, workspace)
        payload = await body(request)
        if not isinstance(payload, dict):
            raise _invalid('the body must be a JSON object {"path", "value", "resource_type"}')
        path = require_path(identity, workspace, check_path(payload.get("path"), '"path"'))
        resource_type = payload.get("resource_type", "any")
        if not isinstance(resource_type, str) or not resource_type:
            raise _invalid(f'"resource_type" must be a non-empty string, got {resource_type!r}')
        version = await storage.write_item(
            get_store(), workspace, path, payload.get("value"), resource_type, create_only=True
        )
        return Response(path, status_code=201, headers={VERSION_HEADER: str(version)})

    @router.post("/w/{workspace}/resources/update_value/{path:path}")
    async def update_value(request: Request, workspace: str, path: str) -> Response:
        """Replace the value of an existing resource with ``{"value"}`` (404 if missing)."""
        path = await begin_path(request, workspace, path)
        payload = await body(request)
        if not isinstance(payload, dict) or "value" not in payload:
            raise _invalid('the body must be a JSON object {"value": ...}')
        version = await storage.write_item(
            get_store(),
            workspace,
            path,
            payload["value"],
            if_version=_if_version(request),
            must_exist=True,
        )
        return Response(f"value of resource {path} updated", headers={VERSION_HEADER: str(version)})

    @router.get("/w/{workspace}/jobs_u/get_root_job_id/{job_id}")
    async def get_root_job_id(request: Request, workspace: str, job_id: str) -> Response:
        """The flow run a step job belongs to; any other job id is its own root."""
        await begin(request, workspace)
        root = await storage.root_job_of(get_store(), workspace, check_id(job_id, "job id"))
        return _json(root)

    @router.get("/w/{workspace}/jobs/flow/user_states/{flow_run_id}/{key:path}")
    async def get_flow_user_state(
        request: Request, workspace: str, flow_run_id: str, key: str
    ) -> Response:
        """One flow user state value (JSON ``null`` when unset)."""
        await begin(request, workspace)
        value = await storage.get_flow_value(get_store(), workspace, flow_run_id, key)
        return _json(value)

    @router.post("/w/{workspace}/jobs/flow/user_states/{flow_run_id}/{key:path}")
    async def set_flow_user_state(
        request: Request, workspace: str, flow_run_id: str, key: str
    ) -> Response:
        """Set one flow user state value; the body is the JSON value (empty = null)."""
        await begin(request, workspace)
        value = await body(request)
        version = await storage.set_flow_value(get_store(), workspace, flow_run_id, key, value)
        return Response("flow user state updated", headers={VERSION_HEADER: str(version)})

    return router
