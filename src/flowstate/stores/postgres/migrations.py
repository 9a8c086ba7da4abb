"""Connection settings from the URL, and the versioned table layout (created or upgraded on
first use, serialised across processes by an advisory lock)."""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Config",
    "check_version",
    "migrate",
    "migrate_conn",
    "parse_url",
    "quote_ident",
]

Connection = Any  # asyncpg ships no type information

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            "CREATE SEQUENCE IF NOT EXISTS fs_record_gen CACHE 64",
            """CREATE TABLE IF NOT EXISTS fs_records (
                key TEXT COLLATE "C" PRIMARY KEY,
                version BIGINT NOT NULL,
                content TEXT,
                created_at BIGINT NOT NULL,
                accessed_at BIGINT NOT NULL,
                gen BIGINT NOT NULL DEFAULT nextval('fs_record_gen')
            ) WITH (fillfactor = 85)""",
            """CREATE TABLE IF NOT EXISTS fs_fields (
                key TEXT COLLATE "C" NOT NULL,
                name TEXT COLLATE "C" NOT NULL,
                value JSON NOT NULL,
                PRIMARY KEY (key, name)
            ) WITH (fillfactor = 85)""",
            """CREATE TABLE IF NOT EXISTS fs_events (
                id BIGSERIAL PRIMARY KEY,
                topic TEXT NOT NULL,
                payload JSON NOT NULL,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )""",
            "CREATE INDEX IF NOT EXISTS fs_events_created_at ON fs_events (created_at)",
            # delete(key) in one round trip: lock and delete the record first, then (a new
            # statement, so a fresh snapshot) its fields, which no writer can touch any more.
            """CREATE OR REPLACE FUNCTION fs_delete(p_key TEXT)
            RETURNS TABLE (o_version BIGINT, o_content TEXT, o_created_at BIGINT,
                           o_accessed_at BIGINT, o_names TEXT[], o_values JSON[])
            LANGUAGE plpgsql AS $$
            BEGIN
                DELETE FROM fs_records r WHERE r.key = p_key
                RETURNING r.version, r.content, r.created_at, r.accessed_at
                INTO o_version, o_content, o_created_at, o_accessed_at;
                IF NOT FOUND THEN
                    RETURN;
                END IF;
                WITH d AS (DELETE FROM fs_fields f WHERE f.key = p_key RETURNING f.name, f.value)
                SELECT array_agg(d.name), array_agg(d.value) INTO o_names, o_values FROM d;
                RETURN NEXT;
            END $$""",
            # push_state without loading the list: append the items' JSON text to the stored
            # array's text (kept verbatim by the json type); absent or null → ``p_full``.
            """CREATE OR REPLACE FUNCTION fs_append(p_name TEXT, p_old JSON, p_full TEXT,
                                                  p_items TEXT)
            RETURNS JSON LANGUAGE plpgsql IMMUTABLE AS $$
            DECLARE
                kind TEXT := json_typeof(p_old);
                t TEXT;
            BEGIN
                IF kind IS NULL OR kind = 'null' THEN
                    RETURN p_full::json;
                END IF;
                IF kind <> 'array' THEN
                    kind := CASE kind
                        WHEN 'number' THEN
                            CASE WHEN p_old::text ~ '[.eE]' THEN 'float' ELSE 'int' END
                        WHEN 'string' THEN 'str'
                        WHEN 'object' THEN 'dict'
                        WHEN 'boolean' THEN 'bool'
                        ELSE kind END;
                    RAISE EXCEPTION USING ERRCODE = 'FS001', MESSAGE = p_name, DETAIL = kind;
                END IF;
                t := rtrim(left(rtrim(p_old::text, E' \t\r\n'), -1), E' \t\r\n');
                IF right(t, 1) = '[' THEN
                    RETURN (t || p_items || ']')::json;
                END IF;
                RETURN (t || ',' || p_items || ']')::json;
            END $$""",
            # The current version of records (for a compare-and-swap that lost): a volatile
            # plpgsql function, so its query sees a fresh snapshot, not its caller's.
            """CREATE OR REPLACE FUNCTION fs_current(p_keys TEXT[])
            RETURNS TABLE (o_key TEXT, o_version BIGINT, o_gen BIGINT)
            LANGUAGE plpgsql VOLATILE AS $$
            BEGIN
                RETURN QUERY SELECT f.key, f.version, f.gen FROM fs_records f
                    WHERE f.key = ANY(p_keys);
            END $$""",
            # delete_prefix: records first (waiting for their writers), then every field row
            # in the range whose record is gone.
            """CREATE OR REPLACE FUNCTION fs_delete_prefix(p_lo TEXT, p_hi TEXT)
            RETURNS BIGINT LANGUAGE plpgsql AS $$
            DECLARE n BIGINT;
            BEGIN
                DELETE FROM fs_records r
                WHERE r.key >= p_lo COLLATE "C" AND r.key < p_hi COLLATE "C";
                GET DIAGNOSTICS n = ROW_COUNT;
                DELETE FROM fs_fields f
                WHERE f.key >= p_lo COLLATE "C" AND f.key < p_hi COLLATE "C"
                  AND NOT EXISTS (SELECT 1 FROM fs_records r WHERE r.key = f.key);
                RETURN n;
            END $$""",
        ),
    ),
    (
        2,
        (
            # Items pushed onto a stored list, one row per push (their JSON texts joined by
            # commas): a push inserts a small row instead of rewriting the array, so it costs
            # the same whatever the list's length. Reads append the rows, in seq order, to the
            # field's stored text; every FOLD_AFTER pushes they are folded into it (a row at
            # seq 0 with no items stays: the field is an array), and any other write of the
            # field (set, delete, record delete or replace) removes them.
            """CREATE TABLE IF NOT EXISTS fs_items (
                key TEXT COLLATE "C" NOT NULL,
                name TEXT COLLATE "C" NOT NULL,
                seq BIGINT NOT NULL,
                items TEXT NOT NULL,
                PRIMARY KEY (key, name, seq)
            )""",
            # A stored array's text with pushed items' texts (comma-joined) appended; kept
            # identical to cache.append_text.
            """CREATE OR REPLACE FUNCTION fs_joined(p_value TEXT, p_items TEXT)
            RETURNS TEXT LANGUAGE plpgsql IMMUTABLE AS $$
            DECLARE
                t TEXT;
            BEGIN
                IF p_items IS NULL THEN
                    RETURN p_value;
                END IF;
                t := rtrim(left(rtrim(p_value, E' \t\r\n'), -1), E' \t\r\n');
                IF right(t, 1) = '[' THEN
                    RETURN t || p_items || ']';
                END IF;
                RETURN t || ',' || p_items || ']';
            END $$""",
            # push onto a stored non-list: the error the other stores raise (never returns).
            """CREATE OR REPLACE FUNCTION fs_not_a_list(p_name TEXT, p_old JSON)
            RETURNS BOOLEAN LANGUAGE plpgsql VOLATILE AS $$
            DECLARE
                kind TEXT := json_typeof(p_old);
            BEGIN
                kind := CASE kind
                    WHEN 'number' THEN
                        CASE WHEN p_old::text ~ '[.eE]' THEN 'float' ELSE 'int' END
                    WHEN 'string' THEN 'str'
                    WHEN 'object' THEN 'dict'
                    WHEN 'boolean' THEN 'bool'
                    ELSE kind END;
                RAISE EXCEPTION USING ERRCODE = 'FS001', MESSAGE = p_name, DETAIL = kind;
            END $$""",
            "DROP FUNCTION IF EXISTS fs_append(TEXT, JSON, TEXT, TEXT)",
            # delete(key) returns the fields with their pushed items, and removes the items.
            """CREATE OR REPLACE FUNCTION fs_delete(p_key TEXT)
            RETURNS TABLE (o_version BIGINT, o_content TEXT, o_created_at BIGINT,
                           o_accessed_at BIGINT, o_names TEXT[], o_values JSON[])
            LANGUAGE plpgsql AS $$
            BEGIN
                DELETE FROM fs_records r WHERE r.key = p_key
                RETURNING r.version, r.content, r.created_at, r.accessed_at
                INTO o_version, o_content, o_created_at, o_accessed_at;
                IF NOT FOUND THEN
                    RETURN;
                END IF;
                WITH d AS (DELETE FROM fs_fields f WHERE f.key = p_key RETURNING f.name, f.value),
                i AS (DELETE FROM fs_items x WHERE x.key = p_key RETURNING x.name, x.seq, x.items),
                j AS (SELECT i.name, string_agg(i.items, ',' ORDER BY i.seq) AS items
                      FROM i WHERE i.seq > 0 GROUP BY i.name)
                SELECT array_agg(d.name),
                       array_agg(CASE WHEN j.items IS NULL THEN d.value
                                 ELSE fs_joined(d.value::text, j.items)::json END)
                INTO o_names, o_values FROM d LEFT JOIN j ON j.name = d.name;
                RETURN NEXT;
            END $$""",
            """CREATE OR REPLACE FUNCTION fs_delete_prefix(p_lo TEXT, p_hi TEXT)
            RETURNS BIGINT LANGUAGE plpgsql AS $$
            DECLARE n BIGINT;
            BEGIN
                DELETE FROM fs_records r
                WHERE r.key >= p_lo COLLATE "C" AND r.key < p_hi COLLATE "C";
                GET DIAGNOSTICS n = ROW_COUNT;
                DELETE FROM fs_fields f
                WHERE f.key >= p_lo COLLATE "C" AND f.key < p_hi COLLATE "C"
                  AND NOT EXISTS (SELECT 1 FROM fs_records r WHERE r.key = f.key);
                DELETE FROM fs_items f
                WHERE f.key >= p_lo COLLATE "C" AND f.key < p_hi COLLATE "C"
                  AND NOT EXISTS (SELECT 1 FROM fs_records r WHERE r.key = f.key);
                RETURN n;
            END $$""",
        ),
    ),
    (
        3,
        (
            # Each record's size as ``max_record_bytes`` counts it (its fields' names and JSON
            # texts with their pushed items, its content, in UTF-8 bytes), kept by every write,
            # so that a push is held to the limit without the list being read.
            "ALTER TABLE fs_records ADD COLUMN IF NOT EXISTS size BIGINT NOT NULL DEFAULT 0",
            """UPDATE fs_records r SET size = coalesce(octet_length(r.content), 0) + coalesce((
                SELECT sum(octet_length(f.name) + octet_length(f.value::text) + coalesce((
                    SELECT sum(octet_length(i.items) + 1)
                        - CASE WHEN f.value::text = '[]' THEN 1 ELSE 0 END
                    FROM fs_items i WHERE i.key = f.key AND i.name = f.name AND i.seq > 0), 0))
                FROM fs_fields f WHERE f.key = r.key), 0)""",
            # A record's new size, or FS002 (its key as the message) past the limit.
            """CREATE OR REPLACE FUNCTION fs_sized(p_key TEXT, p_size BIGINT, p_limit BIGINT)
            RETURNS BIGINT LANGUAGE plpgsql IMMUTABLE AS $$
            BEGIN
                IF p_size > p_limit THEN
                    RAISE EXCEPTION USING ERRCODE = 'FS002', MESSAGE = p_key;
                END IF;
                RETURN p_size;
            END $$""",
        ),
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1][0]
"""The schema version this code writes and expects."""

_MIGRATE_LOCK = "flowstate:migrate"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    dsn: str
    schema: str | None
    migrate: bool
    min_size: int
    max_size: int
    cache_size: int
    application_name: str = "flowstate"
    connect_timeout: float = 5.0
    command_timeout: float = 60.0

    @property
    def server_settings(self) -> dict[str, str]:
        settings = {"application_name": self.application_name}
        if self.schema is not None:
            settings["search_path"] = quote_ident(self.schema)
        return settings


_OPTIONS = frozenset(
    {
        "schema",
        "migrate",
        "min_size",
        "max_size",
        "cache_size",
        "application_name",
        "connect_timeout",
        "command_timeout",
    }
)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_url(url: str) -> Config:
    """Split flowstate's own query options off a PostgreSQL URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ValueError(f"a PostgreSQL URL starts with postgresql://, got {url!r}")
    ours: dict[str, str] = {}
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in _OPTIONS:
            ours[name] = value
        else:
            rest.append((name, value))
    schema = ours.get("schema") or None
    if schema is not None and (len(schema.encode()) > 63 or "\x00" in schema):
        raise ValueError(f"schema name {schema!r} is not a valid PostgreSQL identifier")
    flag = ours.get("migrate", "true").lower()
    if flag not in _TRUE | _FALSE:
        raise ValueError(f"migrate must be true or false, got {flag!r}")
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(rest), parts.fragment))
    min_size = int(ours.get("min_size", "1"))
    max_size = max(int(ours.get("max_size", "10")), min_size, 1)
    timeouts = {}
    for name, default in (("connect_timeout", 5.0), ("command_timeout", 60.0)):
        try:
            timeouts[name] = float(ours.get(name, default))
        except ValueError:
            raise ValueError(f"{name} must be a number of seconds, got {ours[name]!r}") from None
        if not timeouts[name] > 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {ours[name]!r}")
    return Config(
        dsn,
        schema,
        flag in _TRUE,
        min_size,
        max_size,
        int(ours.get("cache_size", "4096")),
        ours.get("application_name") or "flowstate",
        timeouts["connect_timeout"],
        timeouts["command_timeout"],
    )


async def migrate_conn(conn: Connection, schema: str | None) -> int:
    """Bring the schema up to :data:`SCHEMA_VERSION` (serialised by an advisory lock)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _MIGRATE_LOCK)
        if schema is not None:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
            await conn.execute("SELECT set_config('search_path', $1, true)", quote_ident(schema))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS fs_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        raw = await conn.fetchval("SELECT value FROM fs_meta WHERE name = 'schema_version'")
        current = int(raw) if raw is not None else 0
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"the flowstate tables are at schema version {current}, newer than this "
                f"flowstate ({SCHEMA_VERSION}); upgrade flowstate"
            )
        for version, statements in MIGRATIONS:
            if version <= current:
                continue
            for statement in statements:
                await conn.execute(statement)
            current = version
        await conn.execute(
            "INSERT INTO fs_meta (name, value) VALUES ('schema_version', $1) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            str(current),
        )
        return current


async def check_version(conn: Connection) -> None:
    """With ``migrate=false``: refuse to run against missing or outdated tables."""
    exists = await conn.fetchval("SELECT to_regclass('fs_meta') IS NOT NULL")
    raw = None
    if exists:
        raw = await conn.fetchval("SELECT value FROM fs_meta WHERE name = 'schema_version'")
    if raw is None or int(raw) != SCHEMA_VERSION:
        found = "no flowstate tables" if raw is None else f"schema version {raw}"
        raise RuntimeError(
            f"found {found}, expected version {SCHEMA_VERSION}: run `flowstate db migrate "
            "--store URL` (or open the store without migrate=false)"
        )


async def migrate(url: str) -> int:
    """Create or upgrade the flowstate tables at ``url`` (and its ``?schema=``).

    Idempotent and safe to run from several processes at once. Returns the schema version.
    """
    config = parse_url(url)
    conn = await asyncpg.connect(
        config.dsn,
        timeout=config.connect_timeout,
        server_settings={"application_name": config.application_name},
    )
    try:
        return await migrate_conn(conn, config.schema)
    finally:
        await conn.close()
