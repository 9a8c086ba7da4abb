"""A private event loop in a helper thread, so synchronous script code can use async stores.

``flowstate.scripts`` functions are synchronous (Windmill scripts are), but stores are async.
Each call is submitted to one long-lived loop in a daemon thread and waited for, which works
whether or not the caller is itself inside a running event loop. Stores are opened once per
URL per process on that loop and closed at interpreter exit (or by :func:`shutdown`).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures.thread  # noqa: F401 - import before registering our exit hook below
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..stores import Store, default_store_url, open_store

__all__ = ["call", "shutdown"]

T = TypeVar("T")


class _Engine:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stores: dict[str, Store] = {}
        self._pid = os.getpid()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._pid != os.getpid():
                # Forked child: the parent's thread does not exist here; start afresh.
                self._loop, self._thread, self._stores = None, None, {}
                self._pid = os.getpid()
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=serve, name="flowstate-scripts", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def call(self, url: str | None, fn: Callable[[Store], Awaitable[T]]) -> T:
        loop = self._ensure_loop()
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                "flowstate.scripts functions are synchronous and cannot be called from inside "
                "one of their own callbacks"
            )
        resolved = url or default_store_url()

        async def job() -> T:
            store = self._stores.get(resolved)
            if store is None:
                store = open_store(resolved)
                self._stores[resolved] = store
            return await fn(store)

        return asyncio.run_coroutine_threadsafe(job(), loop).result()

    def shutdown(self) -> None:
        with self._lock:
            loop, thread, stores = self._loop, self._thread, self._stores
            self._loop, self._thread, self._stores = None, None, {}
            if loop is None or thread is None or self._pid != os.getpid():
                return

        async def close_all() -> None:
            for store in stores.values():
                await store.aclose()

        try:
            asyncio.run_coroutine_threadsafe(close_all(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()


_ENGINE = _Engine()


def _register_exit_hook() -> None:
    # Closing a store may need the loop's default executor (SQLite joins its writer thread
    # through it), and the executors refuse work once their own exit hook has run. Threading's
    # exit hooks run before it, last registered first, so register ours there; the plain
    # atexit hook is the fallback on interpreters without that (private) registry.
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(_ENGINE.shutdown)
    atexit.register(_ENGINE.shutdown)


_register_exit_hook()


def call(url: str | None, fn: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``await fn(store)`` on the helper loop with the store at ``url`` (default store if
    None) and return its result; exceptions propagate to the caller."""
    return _ENGINE.call(url, fn)


def shutdown() -> None:
    """Close every store this process opened for scripts and stop the helper thread.

    Safe to call more than once; the next call to a scripts function starts afresh.
    """
    _ENGINE.shutdown()
