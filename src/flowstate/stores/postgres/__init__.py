"""The PostgreSQL store (``postgresql://user@host/db``): many server processes, one database.

Layout as in SQLite: ``fs_records`` (one row per record), ``fs_fields`` (one row per top-level
field, ``json`` text kept verbatim), ``fs_items`` (items pushed onto a stored list, one row
per push, folded into the field every ``fold_after`` pushes), ``fs_meta`` (schema version),
plus ``fs_events`` for live events too large for a NOTIFY payload. Keys use ``COLLATE "C"``,
so prefix scans are index range scans in code-point order.

Writes. Holding a record's row lock across read → resolve in Python → write → commit costs
four round trips, so :meth:`PostgresStore.apply` runs optimistically instead. It resolves the
change against a per-process cache of recently seen records (validated, never trusted: each
entry carries the record's ``version`` and ``gen``, an id that changes when a key is deleted
and created again) and writes with one statement that succeeds only if the record is still at
that version and generation: one round trip per write. An outcome that is not a commit
(no-op, conflict, missing, validation error) counts only if decided on what the database
showed during the call (a fresh read, or what a write sent during the call found), never on
an older cache entry. After a few failed attempts (contention from other processes) it falls
back to ``SELECT … FOR UPDATE`` in one transaction, which always makes progress. Lists that
are only appended to are neither loaded nor rewritten: a push inserts one ``fs_items`` row.

Within a process, writers of one key take turns, and writes of concurrent callers are
committed together: a caller that finds the writer idle writes at once on a connection kept
for that; meanwhile others queue and flusher tasks write them in batches, one statement per
batch, locking rows in key order so that batches of different processes cannot deadlock.

Caps: ``create`` with a cap takes a transaction-scoped advisory lock on the collection prefix,
so count, eviction and insert are serialised across processes.

Events: ``publish`` delivers locally at once and queues a NOTIFY (sent by one background task,
batched, in order); each process LISTENs on one dedicated connection, on one channel per
subscribed topic (a hash of schema and topic). Payloads over the NOTIFY limit go through
``fs_events`` and the notification carries the row id.

URL options (removed before connecting): ``schema`` (created if missing, set as the search
path of every connection), ``migrate`` (``false``: do not migrate on first use), ``min_size`` /
``max_size`` (pool), ``cache_size`` (records kept in the write cache, 0 disables it).

Modules: ``migrations`` (URL options, table layout), ``cache`` (the write cache and per-key
turns), ``sql`` (read and batch-write statements), ``events`` (NOTIFY/LISTEN), ``store``
(:class:`PostgresStore`).
"""

from .migrations import SCHEMA_VERSION, migrate
from .store import PostgresStore

__all__ = ["SCHEMA_VERSION", "PostgresStore", "migrate"]
