"""``flowstate serve``, ``flowstate demo`` and ``flowstate state get|set|inspect``.

``serve`` imports a :class:`~flowstate.server.FlowServer` (or a factory returning one) and
runs its HTTP app with uvicorn; when no token is configured it generates one and prints it.
``state`` lets an operator read and write records through the same store the server uses.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import socket
import sys
import threading
import time
import webbrowser
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import quote

import click

from ..errors import FlowStateError
from ..flow import Flow, normalize_scope
from ..http._auth import TOKENS_ENV, generate_token, tokens_from_env
from ..layout import collection_root, resource_key, scope_root, session_key, state_key
from ..schema import Schema
from ..scopes import ScopeBinding
from ..server import FlowServer
from ..stores import Store, default_store_url, open_store

__all__ = ["demo", "load_server", "serve", "state"]

T = TypeVar("T")

DEMO_STORE = "sqlite:///.flowstate/demo.db"


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _fail(message: str) -> click.ClickException:
    return click.ClickException(message)


# ----------------------------------------------------------------------------------- loading


def _import_target(target: str) -> Any:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise _fail(f'expected "module:attribute" (e.g. myapp.server:server), got "{target}"')
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like uvicorn: modules of the working directory
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _fail(f'cannot import module "{module_name}": {exc}') from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise _fail(f'module "{module_name}" has no attribute "{attr}"') from None
    return obj


def load_server(target: str, store: str | None = None) -> FlowServer:
    """The FlowServer named by ``module:attribute`` (an instance, or a factory returning one).

    With ``store``, a factory that takes a ``store`` argument receives it; otherwise the
    server is rebuilt on that store with the same flows, auth and snapshot limit.
    """
    obj = _import_target(target)
    if not isinstance(obj, FlowServer) and callable(obj):
        takes_store = "store" in inspect.signature(obj).parameters
        obj = obj(store=store) if store is not None and takes_store else obj()
        if inspect.isawaitable(obj):
            obj = _run(_awaited(obj))
        if isinstance(obj, FlowServer) and store is not None and takes_store:
            return obj
    if not isinstance(obj, FlowServer):
        raise _fail(f'"{target}" is not a FlowServer (nor a function returning one): {obj!r}')
    if store is None:
        return obj
    rebuilt = FlowServer(
        list(obj.flows.values()), store=store, auth=obj.auth, snapshot_limit=obj.snapshot_limit
    )
    _run(obj.aclose())
    return rebuilt


async def _awaited(value: Any) -> Any:
    return await value


# ----------------------------------------------------------------------------------- serving


def _resolve_auth(
    server: FlowServer, token: str | None, user: str
) -> tuple[dict[str, str] | None, str]:
    """The auth to use, and a line telling the operator how to authenticate."""
    if token is not None:
        return {token: user}, f"token: {token} (user {user})"
    if server.auth is not None:
        return None, "auth: configured by the app"
    configured = tokens_from_env()
    if configured:
        return None, f"auth: {len(configured)} token(s) from ${TOKENS_ENV}"
    token = generate_token()
    return {token: user}, f"token: {token} (user {user}, generated: pass --token to choose)"


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)


def _open_when_up(host: str, port: int, url: str, timeout: float = 15.0) -> None:
    """Open the browser once the port accepts connections (in a background thread)."""

    def wait_and_open() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((_display_host(host).strip("[]"), port), 0.5):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            return
        webbrowser.open(url)

    threading.Thread(target=wait_and_open, daemon=True).start()


def _serve(
    server: FlowServer,
    *,
    host: str,
    port: int,
    token: str | None,
    user: str,
    open_browser: bool,
    log_level: str,
) -> None:
    import uvicorn

    from ..http import create_app

    auth, auth_line = _resolve_auth(server, token, user)
    app = create_app(server, auth=auth, close_server=True)
    url = f"http://{_display_host(host)}:{port}/"
    click.echo(f"flowstate serving {url}  (API {url}api/flows, docs {url}docs)")
    click.echo(f"store: {server.store.url or type(server.store).__name__}")
    click.echo(auth_line)
    page = url
    if auth is not None:
        (only_token,) = auth
        page = f"{url}?token={quote(only_token, safe='')}"
        click.echo(f"open: {page}")
    if open_browser:
        _open_when_up(host, port, page)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


_store_option = click.option(
    "--store",
    "store_url",
    default=None,
    help="Store URL (default: $FLOWSTATE_STORE or sqlite:///.flowstate/state.db).",
)


@click.command()
@click.argument("target")
@_store_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--token", default=None, help="Accept this bearer token (replaces other auth).")
@click.option("--user", default="local", show_default=True, help="User id of --token.")
@click.option("--log-level", default="info", show_default=True)
def serve(
    target: str,
    store_url: str | None,
    host: str,
    port: int,
    token: str | None,
    user: str,
    log_level: str,
) -> None:
    """Serve the FlowServer TARGET (module:attribute) over HTTP."""
    server = load_server(target, store_url)
    _serve(
        server,
        host=host,
        port=port,
        token=token,
        user=user,
        open_browser=False,
        log_level=log_level,
    )


@click.command()
@click.option("--store", "store_url", default=DEMO_STORE, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--token", default=None, help="Use this token (default: a generated one).")
@click.option("--no-open", is_flag=True, help="Do not open a browser.")
@click.option("--log-level", default="info", show_default=True)
def demo(
    store_url: str, host: str, port: int, token: str | None, no_open: bool, log_level: str
) -> None:
    """Run the demo app (counter, mode, artifacts, capped files) and print its URL + token."""
    from .demo import create_server

    _serve(
        create_server(store_url),
        host=host,
        port=port,
        token=token or generate_token(),
        user="demo",
        open_browser=not no_open,
        log_level=log_level,
    )


# ----------------------------------------------------------------------------------- state


def _root(scope: str, scope_id: str, kind: str | None) -> str:
    scope = normalize_scope(scope)
    if scope == "session" or kind is None:
        return scope_root(scope, scope_id)
    return scope_root(scope, scope_id, isolated_kind=kind)


def _record_key(root: str, resource: str | None, key: str | None) -> str:
    if resource is None:
        if key is not None:
            raise _fail("--key needs --resource (the collection's name)")
        return state_key(root)
    return resource_key(root, resource) if key is None else collection_root(root, resource) + key


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def _scope_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option(
                "--scope",
                type=click.Choice(["session", "user", "project", "org"]),
                required=True,
            ),
            click.option("--id", "scope_id", required=True, help="Session, user or project id."),
            click.option(
                "--kind", default=None, help="Flow kind, for isolated user/project state."
            ),
            _store_option,
        ]
    ):
        fn = option(fn)
    return fn


@click.group()
def state() -> None:
    """Read and write stored state (for operators; raw state, never sent to clients)."""


@state.command("get")
@_scope_options
@click.option("--resource", default=None, help="A resource (or collection) name.")
@click.option("--key", default=None, help="A collection instance's storage key.")
def state_get(
    scope: str,
    scope_id: str,
    kind: str | None,
    store_url: str | None,
    resource: str | None,
    key: str | None,
) -> None:
    """Print one record: the scope's state, or a resource's state and content."""
    record_key = _record_key(_root(scope, scope_id, kind), resource, key)

    async def read() -> dict[str, Any]:
        store = open_store(store_url or default_store_url())
        try:
            record = await store.read(record_key)
        finally:
            await store.aclose()
        out: dict[str, Any] = {
            "key": record_key,
            "exists": record is not None,
            "version": 0 if record is None else record.version,
            "state": {} if record is None else dict(record.fields),
        }
        if record is not None and record.content is not None:
            out["content"] = record.content
        return out

    _echo_json(_run(read()))


@state.command("inspect")
@_scope_options
@click.option("--limit", default=1000, show_default=True, type=int)
def state_inspect(
    scope: str, scope_id: str, kind: str | None, store_url: str | None, limit: int
) -> None:
    """List every record under a scope: its state, resources and collection instances."""
    root = _root(scope, scope_id, kind)

    async def inspect_scope() -> dict[str, Any]:
        store = open_store(store_url or default_store_url())
        try:
            keys = await store.scan(root, limit=limit)
            records = []
            for key in keys:
                record = await store.read(key)
                if record is None:
                    continue
                rel = key[len(root) :]
                kind_of = (
                    "state"
                    if rel == "state"
                    else {"r": "resource", "c": "collection"}.get(rel.split("/", 1)[0], "other")
                )
                records.append(
                    {
                        "key": rel,
                        "kind": kind_of,
                        "version": record.version,
                        "fields": sorted(record.fields),
                        "hasContent": record.content is not None,
                    }
                )
            out: dict[str, Any] = {
                "scope": normalize_scope(scope),
                "id": scope_id,
                "root": root,
                "count": await store.count(root),
                "records": records,
            }
            if normalize_scope(scope) == "session":
                binding = await store.read(session_key(scope_id))
                out["session"] = None if binding is None else dict(binding.fields)
            return out
        finally:
            await store.aclose()

    _echo_json(_run(inspect_scope()))


def _pick_flow(server: FlowServer, kind: str | None) -> Flow:
    if kind is None:
        if len(server.flows) != 1:
            raise _fail(f"the app has several flows ({', '.join(server.flows)}): pass --kind")
        kind = next(iter(server.flows))
    flow = server.flows.get(kind)
    if flow is None:
        raise _fail(f'the app has no flow "{kind}" (flows: {", ".join(server.flows)})')
    return flow


@state.command("set")
@_scope_options
@click.option("--resource", default=None, help="A resource (or collection) name.")
@click.option("--key", default=None, help="A collection instance's storage key.")
@click.option(
    "--app",
    "app_target",
    default=None,
    help="module:server whose schemas validate the write (the normal, validated path).",
)
@click.option("--raw", is_flag=True, help="Write without schema validation.")
@click.option("--replace", is_flag=True, help="Replace the whole state instead of patching.")
@click.argument("values")
def state_set(
    scope: str,
    scope_id: str,
    kind: str | None,
    store_url: str | None,
    resource: str | None,
    key: str | None,
    app_target: str | None,
    raw: bool,
    replace: bool,
    values: str,
) -> None:
    """Patch (or --replace) a record with the JSON object VALUES.

    With --app the write goes through the flow's validated operation (patch_state /
    set_state against the combined schema: a bad value is refused and nothing is written);
    --raw writes the fields as given. One of the two is required.
    """
    if (app_target is None) == (not raw):
        raise _fail("choose --app module:server (validated write) or --raw (no validation)")
    try:
        patch = json.loads(values)
    except json.JSONDecodeError as exc:
        raise _fail(f"VALUES is not valid JSON: {exc}") from None
    if not isinstance(patch, dict):
        raise _fail(f"VALUES must be a JSON object of fields, got {type(patch).__name__}")
    scope = normalize_scope(scope)
    server = load_server(app_target) if app_target is not None else None

    async def write() -> dict[str, Any]:
        store = open_store(store_url or default_store_url())
        try:
            if server is None:
                root = _root(scope, scope_id, kind)
                schema, resources = Schema.of(None), {}
            else:
                flow_kind = kind
                if scope == "session" and flow_kind is None:
                    binding = await store.read(session_key(scope_id))
                    flow_kind = None if binding is None else binding.fields.get("flowKind")
                flow = _pick_flow(server, flow_kind)
                isolated = (scope == "user" and flow.isolate_user_state) or (
                    scope == "project" and flow.isolate_project_state
                )
                root = scope_root(scope, scope_id, isolated_kind=flow.kind if isolated else None)
                spec = flow.scopes[scope]
                schema, resources = spec.schema, dict(spec.resources)
            scope_binding = ScopeBinding(store, scope, scope_id, root, schema, resources)
            await scope_binding.load()
            handle: Any
            if resource is None:
                if key is not None:
                    raise _fail("--key needs --resource (the collection's name)")
                handle = scope_binding.handle()
            elif server is None:
                handle = _raw_handle(store, _record_key(root, resource, key), scope)
            else:
                ref = scope_binding.registry.get(resource)
                handle = await ref.get(key) if key is not None else ref
            committed = await (handle.set_state(patch) if replace else handle.patch_state(patch))
            return {"key": handle._cell.key, "committed": committed, "version": handle.version}
        finally:
            await store.aclose()

    try:
        _echo_json(_run(write()))
    except FlowStateError as exc:
        raise _fail(f"{type(exc).__name__}: {exc}") from None
    finally:
        if server is not None:
            _run(server.aclose())


def _raw_handle(store: Store, key: str, scope: str) -> Any:
    from ..state import StateCell, StateHandle

    cell = StateCell(store, key, Schema.of(None), label=f"{scope} record {key}", scope=scope)
    return StateHandle(cell)
