"""Resource collections: key patterns, runtime API, caps and eviction, hooks."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from pydantic import BaseModel, Field

from flowstate import (
    CollectionFullError,
    DefinitionError,
    FlowServer,
    KeyPatternError,
    ResourceAlreadyExistsError,
    ResourceNotFoundError,
    ResourceReadOnlyError,
    StateValidationError,
    define_resource_collection,
)
from flowstate.keys import KeyPattern, normalize_key
from flowstate.stores import Store

from .helpers import probe_server, run_body


class FileState(BaseModel):
    language: str = "text"
    lines: int = 0


class Notes(BaseModel):
    entries: list[str] = Field(default_factory=list)


# ----------------------------------------------------------------- pure pattern logic


@pytest.mark.parametrize(
    ("pattern", "key", "storage"),
    [
        ("files/*", "readme.md", "files/readme.md"),
        ("files/**", "src/deep/nested.ts", "files/src/deep/nested.ts"),
        ("files/**", "files/readme.md", "files/readme.md"),
        ("files/**", "\\src\\\\win.py/", "files/src/win.py"),
        ("files/**", "//a//b//", "files/a/b"),
        ("[topic]/notes", "react/notes", "react/notes"),
        ("*", "x", "x"),
    ],
)
def test_keys_resolve_to_storage_keys(pattern: str, key: str, storage: str) -> None:
    assert KeyPattern.parse(pattern).resolve(key) == storage


def test_parameterized_pattern_takes_a_dict() -> None:
    pattern = KeyPattern.parse("[topic]/notes/[lang]")
    assert pattern.resolve({"topic": "react", "lang": "en"}) == "react/notes/en"
    assert pattern.params == ("topic", "lang")
    assert pattern.prefix == ""


@pytest.mark.parametrize(
    ("pattern", "key", "rule"),
    [
        ("files/**", "../etc/passwd", '".." segments are not allowed'),
        ("files/**", "a/../../b", '".." segments are not allowed'),
        ("files/**", "./a", '"." segments are not allowed'),
        ("files/**", "a\x00b", "control characters and NUL are not allowed"),
        ("files/**", "a\nb", "control characters and NUL are not allowed"),
        ("files/**", "", "the key is empty"),
        ("files/**", "///", "the key is empty"),
        ("files/*", "src/utils.ts", '"files/src/utils.ts" does not match the pattern'),
        ("[topic]/notes", "react/other", '"react/other" does not match the pattern'),
        ("[topic]/notes", {"lang": "x"}, 'unknown parameter "lang"'),
        ("[topic]/notes/[lang]", {"topic": "x"}, 'missing parameter "lang"'),
        ("[topic]/notes", {"topic": "a/b"}, 'parameter "topic" must be one segment'),
        ("[topic]/notes", {"topic": ".."}, '".." segments are not allowed'),
        ("[topic]/notes", {"topic": ""}, 'parameter "topic" must be a non-empty string'),
        ("files/**", {"topic": "x"}, "this pattern has no [name] parameters"),
        ("files/**", 42, "a key is a string"),
    ],
)
def test_bad_keys_are_rejected_with_the_rule(pattern: str, key: Any, rule: str) -> None:
    with pytest.raises(KeyPatternError) as info:
        KeyPattern.parse(pattern).resolve(key)
    assert rule in str(info.value)
    assert f'for pattern "{pattern}"' in str(info.value)
    assert info.value.code == "invalid_key"


def test_normalize_key() -> None:
    assert normalize_key("\\a//b/") == "a/b"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pattern": ""}, "collection pattern must be a non-empty string"),
        ({"pattern": "files/**/x"}, '"**" must be the whole last segment'),
        ({"pattern": "files/a**"}, '"**" must be the whole last segment'),
        ({"pattern": "[bad-name]/x"}, 'parameter segment "[bad-name]" must look like [name]'),
        ({"pattern": "f/*", "max_instances": 0}, "max_instances must be an integer >= 1"),
        ({"pattern": "f/*", "eviction": "lru"}, 'eviction="lru" needs max_instances'),
        ({"pattern": "f/*", "eviction": "oldest"}, 'eviction="oldest" needs max_instances'),
        ({"pattern": "f/*", "max_instances": 2, "eviction": "fifo"}, "eviction must be"),
    ],
)
def test_definition_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError) as info:
        define_resource_collection(**kwargs)
    assert message in str(info.value)


# ----------------------------------------------------------------- runtime API

events_log: list[tuple[Any, ...]] = []


def _hooks() -> dict[str, Any]:
    return {
        "on_instance_created": lambda key, state, hc: events_log.append(
            ("created", key, state, hc.scope_type, hc.scope_id)
        ),
        "on_instance_updated": lambda key, state, prev, hc: events_log.append(
            ("updated", key, state, prev)
        ),
        "on_instance_deleted": lambda key, hc: events_log.append(("deleted", key)),
    }


@pytest.fixture
async def server(store: Store) -> Any:
    events_log.clear()
    resources = {
        "files": define_resource_collection("files/**", FileState, **_hooks()),
        "notes": define_resource_collection("[topic]/notes", Notes),
        "flat": define_resource_collection("flat/*", FileState),
        "lru": define_resource_collection("lru/*", FileState, max_instances=3, eviction="lru"),
        "old": define_resource_collection("old/*", FileState, max_instances=3, eviction="oldest"),
        "capped": define_resource_collection("capped/*", FileState, max_instances=2),
        "frozen": define_resource_collection("frozen/*", FileState, writable=False),
    }
    async with probe_server(store, session_resources=resources) as srv:
        yield srv


async def test_create_get_list_count_delete(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        files = ctx.session.resources.files
        ref = await files.create("readme.md", {"language": "markdown"})
        await files.create("src/utils.ts")
        await files.create("src/deep/a.ts", FileState(language="ts"))
        got = await files.get("readme.md")
        return (
            ref.key,
            ref.version,
            got.state,
            await files.list(),
            await files.list("src/"),
            await files.list("files/src/deep"),
            await files.count(),
            await files.delete("src/utils.ts"),
            await files.delete("src/utils.ts"),
            await files.count(),
            await files.get_optional("src/utils.ts"),
        )

    out = (await run_body(server, body)).output
    assert out[0:2] == ("files/readme.md", 1)
    assert out[2] == FileState(language="markdown")
    assert out[3] == ["files/readme.md", "files/src/deep/a.ts", "files/src/utils.ts"]
    assert out[4] == ["files/src/deep/a.ts", "files/src/utils.ts"]
    assert out[5] == ["files/src/deep/a.ts"]
    assert out[6:] == (3, True, False, 2, None)


async def test_list_pages_with_limit_and_after(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        flat = ctx.session.resources.flat
        for i in range(5):
            await flat.create(f"k{i}")
        first = await flat.list(limit=2)
        second = await flat.list(limit=2, after=first[-1])
        rest = await flat.list(after=second[-1])
        return first, second, rest

    first, second, rest = (await run_body(server, body)).output
    assert first == ["flat/k0", "flat/k1"]
    assert second == ["flat/k2", "flat/k3"]
    assert rest == ["flat/k4"]


async def test_parameterized_collection(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        notes = ctx.session.resources.notes
        ref = await notes.create({"topic": "react"}, {"entries": ["hooks"]})
        again = await notes.get({"topic": "react"})
        by_key = await notes.get("react/notes")
        return ref.key, again.state.entries, by_key.key, await notes.list()

    assert (await run_body(server, body)).output == (
        "react/notes",
        ["hooks"],
        "react/notes",
        ["react/notes"],
    )


async def test_create_existing_key_and_replace(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        files = ctx.session.resources.files
        await files.create("a.py", {"language": "python", "lines": 3})
        try:
            await files.create("a.py")
        except ResourceAlreadyExistsError as exc:
            message = str(exc)
        replaced = await files.create("a.py", {"lines": 1}, replace=True)
        return message, replaced.state, replaced.version

    message, state, version = (await run_body(server, body)).output
    assert message == (
        'resource "files/a.py" already exists in collection "files"; use get_or_create() or '
        "create(..., replace=True)"
    )
    assert state == FileState(lines=1)
    assert version == 2


async def test_get_missing_raises(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        await ctx.session.resources.files.get("nope.md")

    with pytest.raises(ResourceNotFoundError, match=re.escape('"files/nope.md" does not exist')):
        await run_body(server, body)


async def test_get_or_create_and_upsert(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        files = ctx.session.resources.files
        a = await files.get_or_create("c.json", {"language": "json"})
        b = await files.get_or_create("c.json", {"language": "other"})
        u1 = await files.upsert("d.txt", {"lines": 1}, create_only={"language": "plain"})
        u2 = await files.upsert("d.txt", {"lines": 2}, create_only={"language": "ignored"})
        return a.state, b.state, u1.state, u2.state, u2.version

    a, b, u1, u2, version = (await run_body(server, body)).output
    assert a == b == FileState(language="json")
    assert u1 == FileState(language="plain", lines=1)
    assert u2 == FileState(language="plain", lines=2)
    assert version == 2


async def test_instance_state_ops_are_validated_and_atomic(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        files = ctx.session.resources.files
        ref = await files.create("x.py")
        await asyncio.gather(*(ref.inc_state(lines=1) for _ in range(20)))
        try:
            await ref.patch_state(lines="many")
        except StateValidationError as exc:
            err = str(exc).split(":")[0], exc.scope
        await ref.refresh()
        return ref.state.lines, err

    lines, scope = (await run_body(server, body)).output
    assert lines == 20
    assert scope == ('session resource "files/x.py" of collection "files"', "session")


async def test_invalid_initial_state_creates_nothing(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        files = ctx.session.resources.files
        try:
            await files.create("bad.py", {"lines": "x"})
        except StateValidationError:
            pass
        return await files.count()

    assert (await run_body(server, body)).output == 0


async def test_writes_to_a_deleted_instance_fail_instead_of_resurrecting(
    server: FlowServer,
) -> None:
    async def body(ctx: Any) -> Any:
        files = ctx.session.resources.files
        ref = await files.create("gone.py")
        await files.delete("gone.py")
        await ref.patch_state(lines=1)

    with pytest.raises(ResourceNotFoundError, match="no longer exists"):
        await run_body(server, body)


async def test_cap_without_eviction_raises(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        capped = ctx.session.resources.capped
        await capped.create("a")
        await capped.create("b")
        try:
            await capped.create("c")
        except CollectionFullError as exc:
            return str(exc), await capped.list()
        return None

    message, keys = (await run_body(server, body)).output
    assert message == (
        'collection "capped" is full: max_instances=2 with eviction="none"; '
        "delete an instance first"
    )
    assert keys == ["capped/a", "capped/b"]


async def test_lru_evicts_least_recently_accessed_across_runs(server: FlowServer) -> None:
    async def fill(ctx: Any) -> Any:
        lru = ctx.session.resources.lru
        for k in ("a", "b", "c"):
            await lru.create(k)

    async def touch_a(ctx: Any) -> Any:
        await ctx.session.resources.lru.get("a")

    async def write_b(ctx: Any) -> Any:
        ref = await ctx.session.resources.lru.get_optional("b")
        await ref.inc_state(lines=1)

    async def add_d(ctx: Any) -> Any:
        lru = ctx.session.resources.lru
        await lru.create("d")
        return await lru.list()

    await run_body(server, fill)
    await run_body(server, touch_a)
    await run_body(server, write_b)
    result = await run_body(server, add_d)
    assert result.output == ["lru/a", "lru/b", "lru/d"]
    deleted = [e.data for e in result.events if e.data.get("changeType") == "deleted"]
    assert deleted == [{"scope": "session", "key": "lru/c", "changeType": "deleted"}]


async def test_oldest_evicts_first_created_even_if_accessed(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        old = ctx.session.resources.old
        for k in ("a", "b", "c"):
            await old.create(k)
        await old.get("a")
        await old.create("d")
        return await old.list()

    assert (await run_body(server, body)).output == ["old/b", "old/c", "old/d"]


@pytest.mark.parametrize("name", ["lru", "old", "capped"])
async def test_cap_holds_under_concurrent_creates(server: FlowServer, name: str) -> None:
    async def body(ctx: Any) -> Any:
        coll = ctx.session.resources[name]

        async def create(i: int) -> str:
            try:
                await coll.create(f"k{i:02d}")
                return "ok"
            except CollectionFullError:
                return "full"

        outcomes = await asyncio.gather(*(create(i) for i in range(20)))
        return outcomes, await coll.count()

    outcomes, count = (await run_body(server, body)).output
    cap = 2 if name == "capped" else 3
    assert count == cap
    if name == "capped":
        assert outcomes.count("ok") == 2 and outcomes.count("full") == 18
    else:
        assert outcomes == ["ok"] * 20


async def test_hooks_fire_after_commit_with_keys_and_states(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        files = ctx.session.resources.files
        ref = await files.create("h.md", {"language": "md"})
        await ref.inc_state(lines=2)
        await files.delete("h.md")
        await files.delete("h.md")

    await run_body(server, body)
    assert events_log == [
        ("created", "files/h.md", FileState(language="md"), "session", "s1"),
        ("updated", "files/h.md", FileState(language="md", lines=2), FileState(language="md")),
        ("deleted", "files/h.md"),
    ]


async def test_a_failing_hook_does_not_undo_the_write(store: Store) -> None:
    def boom(key: str, state: Any, hc: Any) -> None:
        raise RuntimeError("hook failed")

    coll = define_resource_collection("f/*", FileState, on_instance_created=boom)
    async with probe_server(store, session_resources={"f": coll}) as server:

        async def body(ctx: Any) -> Any:
            await ctx.session.resources.f.create("a")
            return await ctx.session.resources.f.count()

        assert (await run_body(server, body)).output == 1


async def test_read_only_collection_allows_create_and_delete_only(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        frozen = ctx.session.resources.frozen
        ref = await frozen.create("a", {"lines": 1})
        try:
            await ref.inc_state(lines=1)
        except ResourceReadOnlyError as exc:
            message = str(exc)
        deleted = await frozen.delete("a")
        return message, deleted

    message, deleted = (await run_body(server, body)).output
    assert message == (
        'session resource "frozen/a" of collection "frozen" is read-only (declared writable=False)'
    )
    assert deleted is True


async def test_keys_never_escape_their_collection(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        files = ctx.session.resources.files
        flat = ctx.session.resources.flat
        await flat.create("secret")
        results = []
        for key in ("../flat/secret", "..\\flat\\secret", "x/../../flat/secret"):
            try:
                await files.get(key)
                results.append("reached")
            except KeyPatternError:
                results.append("rejected")
        try:
            await files.list("../")
        except KeyPatternError:
            results.append("rejected")
        # a key that looks like another collection's storage key stays inside this one
        ref = await files.create("flat/secret")
        results.append(ref.key)
        return results, (await flat.get("secret")).version

    results, version = (await run_body(server, body)).output
    assert results == ["rejected"] * 4 + ["files/flat/secret"]
    assert version == 1


async def test_collections_are_per_session(server: FlowServer) -> None:
    async def create(ctx: Any) -> Any:
        await ctx.session.resources.files.create("mine.md")

    async def count(ctx: Any) -> Any:
        return await ctx.session.resources.files.count()

    await run_body(server, create)
    assert (await run_body(server, count)).output == 1
    assert (await run_body(server, count, session_id="s2")).output == 0
    assert (await run_body(server, count, user_id="bob", session_id="s3")).output == 0


async def test_peek_reads_without_counting_as_an_lru_access(server: FlowServer) -> None:
    async def body(ctx: Any) -> Any:
        lru = ctx.session.resources.lru
        for k in ("a", "b", "c"):
            await lru.create(k)
        peeked = await lru.peek("a")  # a client listing: must not keep "a" alive
        await lru.get("b")
        await lru.create("d")
        return peeked.key, await lru.list(), await lru.peek("zzz")

    assert (await run_body(server, body)).output == ("lru/a", ["lru/b", "lru/c", "lru/d"], None)
