"""Live events across processes: NOTIFY out (batched, in order), one LISTEN connection in."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from ..base import Broker

__all__ = ["Events"]

log = logging.getLogger("flowstate.stores.postgres")

Connection = Any  # asyncpg ships no type information
Pool = Any

_NOTIFY_LIMIT = 7900  # bytes; PostgreSQL refuses payloads of 8000 or more
_EVENT_RETENTION = "5 minutes"


class Events:
    """Live events across processes: one LISTEN connection, one background NOTIFY sender."""

    def __init__(
        self,
        *,
        url: str,
        connect: Callable[[], Awaitable[Connection]],
        schema: str | None,
        get_pool: Callable[[], Awaitable[Pool]],
        broker: Broker,
    ) -> None:
        self.url = url
        self.connect = connect
        self.schema = schema
        self.get_pool = get_pool
        self.broker = broker
        self.loop = asyncio.get_running_loop()
        self.origin = uuid.uuid4().hex
        self.conn: Connection | None = None
        self.channels: dict[str, int] = {}
        self.lock = asyncio.Lock()
        self.inbox: asyncio.Queue[str] = asyncio.Queue()
        self.outbox: asyncio.Queue[tuple[str, str, str, Any]] = asyncio.Queue()
        self.sender: asyncio.Task[None] | None = None
        self.dispatcher: asyncio.Task[None] | None = None
        self.reconnecting: asyncio.Future[None] | None = None
        self.last_prune = 0.0
        self.closed = False

    def channel(self, topic: str) -> str:
        digest = hashlib.sha1(f"{self.schema}\0{topic}".encode()).hexdigest()
        return f"fs_{digest[:40]}"

    # outgoing

    def send(self, topic: str, message: Any) -> None:
        if self.sender is None:
            self.sender = asyncio.create_task(self._send_loop(), name="flowstate-pg-notify")
        self.outbox.put_nowait((self.channel(topic), topic, self.origin, message))

    async def _send_loop(self) -> None:
        while True:
            item = await self.outbox.get()
            batch = [item]
            while not self.outbox.empty() and len(batch) < 256:
                batch.append(self.outbox.get_nowait())
            try:
                await self._notify(batch)
            except Exception:  # live events are best effort; never kill the sender
                log.exception("flowstate: could not publish %d event(s)", len(batch))
            finally:
                for _ in batch:
                    self.outbox.task_done()

    async def _notify(self, batch: list[tuple[str, str, str, Any]]) -> None:
        pool = await self.get_pool()
        channels: list[str] = []
        payloads: list[str] = []
        large: list[tuple[str, str, str]] = []
        for channel, topic, origin, message in batch:
            payload = json.dumps({"o": origin, "t": topic, "m": message}, ensure_ascii=False)
            if len(payload.encode()) <= _NOTIFY_LIMIT:
                channels.append(channel)
                payloads.append(payload)
            else:
                large.append((channel, topic, json.dumps(message, ensure_ascii=False)))
        async with pool.acquire() as conn:
            if large:  # keep publication order: store the large ones first, then notify all
                async with conn.transaction():
                    ids = await conn.fetch(
                        "INSERT INTO fs_events (topic, payload) "
                        "SELECT * FROM unnest($1::text[], $2::json[]) RETURNING id",
                        [t for _, t, _ in large],
                        [p for _, _, p in large],
                    )
                by_payload = iter(r["id"] for r in ids)
                channels, payloads = [], []
                for channel, topic, origin, message in batch:
                    payload = json.dumps(
                        {"o": origin, "t": topic, "m": message}, ensure_ascii=False
                    )
                    if len(payload.encode()) > _NOTIFY_LIMIT:
                        payload = json.dumps({"o": origin, "t": topic, "id": next(by_payload)})
                    channels.append(channel)
                    payloads.append(payload)
            await conn.execute(
                "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) WITH ORDINALITY "
                "AS u(c, p, i) ORDER BY i",
                channels,
                payloads,
            )
            if large and time.monotonic() - self.last_prune > 30:
                self.last_prune = time.monotonic()
                await conn.execute(
                    "DELETE FROM fs_events "
                    f"WHERE created_at < now() - interval '{_EVENT_RETENTION}'"
                )

    async def flush(self) -> None:
        if self.sender is not None and not self.sender.done():
            await self.outbox.join()

    # incoming

    def _on_notify(self, conn: Connection, pid: int, channel: str, payload: str) -> None:
        self.inbox.put_nowait(payload)

    def _on_lost(self, conn: Connection) -> None:
        """The LISTEN connection died (terminated, server restart, network): listen again.

        Notifications sent while no connection listens are lost (live events are best
        effort); subscribers resynchronise from a snapshot.
        """
        if conn is self.conn and not self.closed:
            self.conn = None
            log.warning("flowstate: event listener connection lost; reconnecting")
            self.reconnecting = asyncio.ensure_future(self._reconnect())

    async def _connect(self) -> None:
        conn = await self.connect()
        try:
            for channel in self.channels:
                await conn.add_listener(channel, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._on_lost)
        self.conn = conn
        if self.dispatcher is None:
            self.dispatcher = asyncio.create_task(self._dispatch(), name="flowstate-pg-listen")

    async def _reconnect(self) -> None:
        delay = 0.1
        while not self.closed and self.conn is None:
            try:
                async with self.lock:
                    if self.conn is None and not self.closed:
                        await self._connect()
            except Exception as exc:  # down for now (refused, timed out, shutting down …)
                log.warning("flowstate: event listener reconnect failed: %r", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def add(self, topic: str) -> None:
        channel = self.channel(topic)
        async with self.lock:
            if self.closed:
                raise RuntimeError(f"store {self.url} is closed")
            if self.conn is None:
                await self._connect()
            count = self.channels.get(channel, 0)
            if count == 0 and self.conn is not None:
                await self.conn.add_listener(channel, self._on_notify)
            self.channels[channel] = count + 1

    async def remove(self, topic: str) -> None:
        channel = self.channel(topic)
        async with self.lock:
            count = self.channels.get(channel, 0) - 1
            if count > 0:
                self.channels[channel] = count
                return
            self.channels.pop(channel, None)
            if self.conn is not None and not self.conn.is_closed():
                with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    await self.conn.remove_listener(channel, self._on_notify)

    async def _dispatch(self) -> None:
        while True:
            raw = await self.inbox.get()
            try:
                data = json.loads(raw)
                if data.get("o") == self.origin:
                    continue  # published here: already delivered locally
                topic = data["t"]
                if not self.broker.has_listeners(topic):
                    continue
                if "id" in data:
                    pool = await self.get_pool()
                    payload = await pool.fetchval(
                        "SELECT payload FROM fs_events WHERE id = $1", data["id"]
                    )
                    if payload is None:
                        log.warning("flowstate: event %s expired before delivery", data["id"])
                        continue
                    message = json.loads(payload)
                else:
                    message = data["m"]
                self.broker.publish_local(topic, message)
            except Exception:
                log.exception("flowstate: could not deliver an event")

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), 10)
        self.closed = True
        if self.sender is not None:
            self.sender.cancel()
        if self.dispatcher is not None:
            self.dispatcher.cancel()
        for task in (self.sender, self.dispatcher):
            if task is not None:
                with contextlib.suppress(BaseException):
                    await task
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
