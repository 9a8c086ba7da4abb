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
import logging
import os
import socket
import sys
import threading
import time
import webbrowser
from collections.abc import Callable, Coroutine
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import click

from ..access import Identity
from ..errors import FlowStateError
from ..flow import Flow, normalize_scope
from ..http._auth import TOKENS_ENV, generate_token, tokens_from_env, tokens_from_file
from ..http._requestlog import DEFAULT_REQUEST_LOG_BYTES
from ..layout import collection_root, resource_key, scope_root, session_key, state_key
from ..schema import Schema
from ..scopes import ScopeBinding
from ..server import FlowServer
from ..stores import Store, default_store_url, open_store
from ._serving import Limits, bind, serve_app

__all__ = ["demo", "load_server", "serve", "state"]

T = TypeVar("T")

DEMO_STORE = "sqlite:///.flowstate/demo.db"
STORE_ENV = "FLOWSTATE_STORE"


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
        list(obj.flows.values()),
        store=store,
        auth=obj.auth,
        snapshot_limit=obj.snapshot_limit,
        max_record_bytes=obj.store.max_record_bytes,
    )
    _run(obj.aclose())
    return rebuilt


async def _awaited(value: Any) -> Any:
    return await value


# ----------------------------------------------------------------------------------- serving

DEFAULT_PROJECT_ENV = "FLOWSTATE_PROJECT"


def _default_project() -> str:
    """The project a generated token belongs to (the one ``flowstate run`` uses too)."""
    return os.environ.get(DEFAULT_PROJECT_ENV) or "default"


def _resolve_auth(
    server: FlowServer, token: str | None, tokens_file: str | None, user: str, project: str
) -> tuple[dict[str, Identity] | None, str, str | None]:
    """The auth to use, a line telling the operator how to authenticate, and the token to
    show in the page link (only one the operator did not choose from a file or env)."""
    member = Identity(user, frozenset({project}))
    if token is not None:
        return {token: member}, f"token: from --token (user {user}, project {project})", token
    if tokens_file is not None:
        try:
            tokens = tokens_from_file(tokens_file)
        except (OSError, ValueError) as exc:
            raise _fail(f"cannot read --tokens-file: {exc}") from None
        if not tokens:
            raise _fail(f"--tokens-file {tokens_file} holds no token")
        return tokens, f"auth: {len(tokens)} token(s) from {tokens_file}", None
    if server.auth is not None:
        return None, "auth: configured by the app", None
    try:
        configured = tokens_from_env()
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if configured:
        return None, f"auth: {len(configured)} token(s) from ${TOKENS_ENV}", None
    token = generate_token()
    return (
        {token: member},
        f"token: {token} (user {user}, member of project {project}; generated: set "
        f"${TOKENS_ENV} or --tokens-file to choose)",
        token,
    )


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)


def _redact_url(url: str) -> str:
    """A store URL without its password (fit for a banner or an error line)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, plus the direct cause's (a driver's reason)."""

    def line(e: BaseException) -> str:
        text = str(e).strip().splitlines()
        return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__

    cause = exc.__cause__ or exc.__context__
    return line(exc) if cause is None else f"{line(exc)} ({line(cause)})"


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


class _StoreUnavailable(Exception):
    pass


def _serve(
    load: Callable[[], FlowServer],
    *,
    host: str,
    port: int,
    token: str | None,
    tokens_file: str | None,
    user: str,
    project: str,
    open_browser: bool,
    log_level: str,
    limits: Limits,
    gc_every: float | None = None,
    request_log_bytes: int = DEFAULT_REQUEST_LOG_BYTES,
    max_record_bytes: int | None = None,
) -> None:
    from ..http import create_app

    try:
        server = load()
    except (ValueError, FlowStateError) as exc:  # a malformed store URL, a bad app
        raise _fail(_one_line(exc)) from None
    if max_record_bytes is not None:
        # Read by the store at every write, so setting it before serving covers every request.
        server.store.max_record_bytes = max_record_bytes
    try:
        auth, auth_line, link_token = _resolve_auth(server, token, tokens_file, user, project)
        sock = bind(host, port)
    except (OSError, click.ClickException) as exc:
        _run(server.aclose())
        if isinstance(exc, click.ClickException):
            raise
        raise _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    app = create_app(
        server,
        auth=auth,
        close_server=True,
        gc_every=gc_every,
        request_log_bytes=request_log_bytes,
    )
    store_url = _redact_url(server.store.url or type(server.store).__name__)
    url = f"http://{_display_host(host)}:{port}/"
    # The page reads ?token= once and drops it from the address bar; the access log redacts it.
    page = url if link_token is None else f"{url}?token={quote(link_token, safe='')}"

    async def probe() -> None:
        # The store would log its own warning too; the one line below says it all.
        quiet = logging.getLogger("flowstate")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            await server.store.read("_sessions/probe")
        except Exception as exc:
            await server.aclose()
            raise _StoreUnavailable(f"cannot use the store {store_url}: {_one_line(exc)}") from None
        finally:
            quiet.setLevel(level)

    def banner() -> None:
        click.echo(f"flowstate serving {url}  (API {url}api/flows, docs {url}docs)")
        click.echo(f"store: {store_url}")
        click.echo(auth_line)
        if link_token is not None:
            click.echo(f"open: {page}")
        if open_browser:
            _open_when_up(host, port, page)

    try:
        serve_app(app, sock, limits=limits, log_level=log_level, before=probe, on_ready=banner)
    except _StoreUnavailable as exc:
        raise _fail(str(exc)) from None


_store_option = click.option(
    "--store",
    "store_url",
    default=None,
    help="Store URL (default: $FLOWSTATE_STORE or sqlite:///.flowstate/state.db).",
)


def _limit_option(flag: str, kind: type, help: str) -> Callable[[Any], Any]:
    """An option tuning one of the server's :class:`Limits`, defaulting to the field's value."""
    field = flag.removeprefix("--").replace("-", "_")
    default = getattr(Limits(), field)
    shown = default is not None
    return click.option(flag, default=default, show_default=shown, type=kind, help=help)


def _serving_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--host", default="127.0.0.1", show_default=True),
            click.option("--port", default=8000, show_default=True, type=int),
            click.option(
                "--tokens-file",
                default=None,
                type=click.Path(dir_okay=False),
                help="Read bearer tokens from this file: token:user or "
                "token:user:project1+project2, one per line (default: $FLOWSTATE_TOKENS).",
            ),
            click.option(
                "--token",
                default=None,
                hidden=True,
                help="Deprecated: visible in the process list; use $FLOWSTATE_TOKENS.",
            ),
            click.option(
                "--project",
                default=None,
                help="Project of a generated token (default: $FLOWSTATE_PROJECT or default).",
            ),
            _limit_option(
                "--header-timeout", float, "Seconds a connection has to send its request head."
            ),
            _limit_option("--body-timeout", float, "Seconds a request has to send its body."),
            _limit_option(
                "--timeout-keep-alive", float, "Seconds an idle keep-alive connection stays open."
            ),
            _limit_option(
                "--max-connections",
                int,
                "Open connections at most; beyond it the oldest slow or idle one is dropped.",
            ),
            _limit_option(
                "--limit-concurrency",
                int,
                "Requests in progress at most; beyond it uvicorn answers 503.",
            ),
            _limit_option(
                "--max-header-bytes", int, "Largest request head (h11's max incomplete event size)."
            ),
            click.option(
                "--request-log-bytes",
                default=str(DEFAULT_REQUEST_LOG_BYTES),
                show_default=True,
                metavar="SIZE",
                help="Memory budget of the buffered run events that streams resume from, in "
                "bytes (or with a unit: 500KB, 64MiB, 1GB); past it the oldest finished runs "
                "are dropped first.",
            ),
            click.option(
                "--max-record-bytes",
                default=None,
                metavar="SIZE",
                help="The most one stored record (a scope's state, a resource, a collection "
                "instance) may take, in bytes or with a unit (default: the app's store, 16MiB "
                "unless it says otherwise); a larger write fails with 422 record_size.",
            ),
            click.option("--log-level", default="info", show_default=True),
        ]
    ):
        fn = option(fn)
    return fn


def _limits(options: dict[str, Any]) -> Limits:
    try:
        return Limits(
            header_timeout=options.pop("header_timeout"),
            body_timeout=options.pop("body_timeout"),
            timeout_keep_alive=options.pop("timeout_keep_alive"),
            max_connections=options.pop("max_connections"),
            limit_concurrency=options.pop("limit_concurrency"),
            max_header_bytes=options.pop("max_header_bytes"),
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _warn_token_flag(token: str | None) -> None:
    if token is not None:
        click.echo(
            f"warning: --token is visible to every user of this machine (ps); set "
            f"${TOKENS_ENV} or use --tokens-file instead",
            err=True,
        )


@click.command()
@click.argument("target")
@_store_option
@_serving_options
@click.option("--user", default="local", show_default=True, help="User id of a generated token.")
@click.option(
    "--gc-every",
    default=None,
    metavar="DURATION",
    help="Remove expired sessions and instances in the background this often (e.g. 5m, 1h).",
)
def serve(
    target: str, store_url: str | None, user: str, gc_every: str | None, **options: Any
) -> None:
    """Serve the FlowServer TARGET (module:attribute) over HTTP.

    Tokens come from $FLOWSTATE_TOKENS (token:user or token:user:project1+project2, comma
    separated), --tokens-file, or the app's own auth; with none, a token is generated and
    printed, for user --user, member of project --project.
    """
    every = None if gc_every is None else parse_duration(gc_every, "--gc-every")
    log_bytes = parse_size(options["request_log_bytes"], "--request-log-bytes")
    record_bytes = _record_bytes(options)
    limits = _limits(options)
    _warn_token_flag(options["token"])
    _serve(
        lambda: load_server(target, store_url),
        host=options["host"],
        port=options["port"],
        token=options["token"],
        tokens_file=options["tokens_file"],
        user=user,
        project=options["project"] or _default_project(),
        open_browser=False,
        log_level=options["log_level"],
        limits=limits,
        gc_every=every,
        request_log_bytes=log_bytes,
        max_record_bytes=record_bytes,
    )


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_MAX_SIZE = 2**63 - 1
_SIZES = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_size(text: str, what: str) -> int:
    """Bytes in ``65536``, ``500KB``, ``64MiB``, ``1GB`` (KB/MB/GB are powers of 1000,
    KiB/MiB/GiB of 1024); a whole number of bytes, at least 1."""
    value = text.strip().lower().replace(" ", "")
    unit = next((u for u in sorted(_SIZES, key=len, reverse=True) if value.endswith(u)), "")
    number = value[: len(value) - len(unit)] if unit else value
    try:
        amount = Decimal(number) * _SIZES.get(unit, 1) if number.isascii() else None
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite():
        problem = "is not a size"
    elif amount < 1:
        problem = "must be at least 1 byte"
    elif amount > _MAX_SIZE:
        problem = "must be at most 2**63 - 1 bytes"
    elif amount != amount.to_integral_value():
        problem = "is not a whole number of bytes"
    else:
        return int(amount)
    raise click.BadParameter(f"{text!r} {problem} (like 65536, 500KB, 64MiB, 1GB)", param_hint=what)


def _record_bytes(options: dict[str, Any]) -> int | None:
    text = options.pop("max_record_bytes")
    return None if text is None else parse_size(text, "--max-record-bytes")


def parse_duration(text: str, what: str) -> float:
    """Seconds in ``30s``, ``5m``, ``1h``, ``2d``, ``500ms`` or a bare number of seconds."""
    value = text.strip().lower()
    unit = next((u for u in ("ms", "s", "m", "h", "d") if value.endswith(u)), "")
    number = value[: len(value) - len(unit)] if unit else value
    try:
        seconds = float(number) * _UNITS.get(unit, 1.0)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise click.BadParameter(
            f"{text!r} is not a positive duration (like 30s, 5m, 1h, 2d)", param_hint=what
        )
    return seconds


@click.command()
@click.option("--store", "store_url", default=DEMO_STORE, show_default=True)
@_serving_options
@click.option("--no-open", is_flag=True, help="Do not open a browser.")
def demo(store_url: str, no_open: bool, **options: Any) -> None:
    """Run the demo app (counter, mode, artifacts, capped files) and print its URL + token."""
    from .demo import create_server

    log_bytes = parse_size(options["request_log_bytes"], "--request-log-bytes")
    record_bytes = _record_bytes(options)
    limits = _limits(options)
    _warn_token_flag(options["token"])
    _serve(
        lambda: create_server(store_url),
        host=options["host"],
        port=options["port"],
        token=options["token"],
        tokens_file=options["tokens_file"],
        user="demo",
        project=options["project"] or _default_project(),
        open_browser=not no_open,
        log_level=options["log_level"],
        limits=limits,
        request_log_bytes=log_bytes,
        max_record_bytes=record_bytes,
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


def _open_existing(store_url: str | None) -> Store:
    """Open a store that must already exist: read-only commands never create one.

    A SQLite file that is not there is an error naming the path (a typo or a wrong working
    directory would otherwise read as an empty store and leave a new file behind).
    """
    url = store_url or default_store_url()
    if url.lower().startswith("sqlite:///"):
        path = url[len("sqlite:///") :].split("?", 1)[0]
        if path and path != ":memory:" and not Path(path).is_file():
            where = "--store" if store_url else f"${STORE_ENV} or the default"
            raise _fail(
                f"no store at {path} (from {where}): pass --store URL of an existing store; "
                "read-only commands never create one"
            )
    try:
        return open_store(url)
    except ValueError as exc:
        raise _fail(str(exc)) from None


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


def _record_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The scope options, and which of its records: a resource, a collection instance."""
    fn = click.option("--key", default=None, help="A collection instance's storage key.")(fn)
    fn = click.option("--resource", default=None, help="A resource (or collection) name.")(fn)
    return _scope_options(fn)


@click.group()
def state() -> None:
    """Read and write stored state (for operators; raw state, never sent to clients)."""


@state.command("get")
@_record_options
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

    store = _open_existing(store_url)

    async def read() -> dict[str, Any]:
        try:
            record = await store.read(record_key)
        finally:
            await store.aclose()
        if record is None:
            raise _fail(
                f"no record {record_key} in {_redact_url(store.url or store_url or '')}: "
                "never written, or a wrong --scope, --id, --kind or --store"
            )
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

    store = _open_existing(store_url)

    async def inspect_scope() -> dict[str, Any]:
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
            if not records and out.get("session") is None:
                raise _fail(
                    f"nothing stored under {root} in {_redact_url(store.url or '')}: a wrong "
                    "--scope, --id, --kind or --store?"
                )
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
@_record_options
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
