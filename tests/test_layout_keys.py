"""The store-key table: every builder round-trips through parse_key, and no id can nest."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowstate import KeyPatternError
from flowstate.layout import (
    ParsedKey,
    check_id,
    collection_root,
    parse_key,
    resource_key,
    scope_root,
    session_key,
    state_key,
    user_session_key,
)

ids = st.text(min_size=1, max_size=30)


@given(scope=st.sampled_from(["request", "session", "user", "project"]), sid=ids, name=ids)
def test_builders_round_trip(scope: str, sid: str, name: str) -> None:
    root = scope_root(scope, sid)
    assert parse_key(state_key(root)) == ParsedKey("state", scope=scope, scope_id=sid)
    assert parse_key(resource_key(root, name)) == ParsedKey(
        "resource", scope=scope, scope_id=sid, name=name
    )
    item = parse_key(collection_root(root, name) + "a/b.md")
    assert (item.kind, item.name, item.item, item.scope_id) == ("collection", name, "a/b.md", sid)


@given(sid=ids, uid=ids, kind=ids)
def test_session_and_isolated_keys_round_trip(sid: str, uid: str, kind: str) -> None:
    assert parse_key(session_key(sid)) == ParsedKey("session", scope="session", scope_id=sid)
    assert parse_key(user_session_key(uid, sid)).item == sid
    root = scope_root("user", uid, isolated_kind=kind)
    assert parse_key(state_key(root)).isolated_kind == kind


@given(a=ids, b=ids)
def test_distinct_ids_never_share_a_root(a: str, b: str) -> None:
    if a != b:
        ra, rb = scope_root("session", a), scope_root("session", b)
        assert not ra.startswith(rb) and not rb.startswith(ra)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "session id must be a non-empty string"),
        (3, "session id must be a non-empty string, got 3"),
        ("a/b", 'must be a single segment (no "/")'),
        ("a\x00b", "must not contain control characters or NUL"),
        ("a\nb", "must not contain control characters or NUL"),
        ("\ud800", "must be valid Unicode"),
        ("é" * 257, "is longer than 512 bytes (UTF-8)"),
    ],
)
def test_check_id_rejects_with_the_rule(value: object, message: str) -> None:
    with pytest.raises(KeyPatternError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_id(value, "session id")


def test_check_id_accepts_the_limit_exactly() -> None:
    assert check_id("é" * 256, "id") == "é" * 256
    assert check_id("\U0010ffff", "id") == "\U0010ffff"


def test_foreign_keys_do_not_parse() -> None:
    for key in ["", "nope/x/state", "session/x", "session/x/q/y", "_sessions/a/b"]:
        with pytest.raises(ValueError, match="is not a flowstate store key"):
            parse_key(key)
