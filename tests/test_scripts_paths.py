"""Windmill's state path rule, path and id checks, step ids, store keys and intervals (pure)."""

from __future__ import annotations

import re

import pytest

from flowstate import KeyPatternError
from flowstate.scripts import ScriptContext, context_from_env
from flowstate.scripts.paths import (
    check_path,
    check_script_path,
    flow_state_key,
    item_key,
    item_path,
    job_key,
    step_ids,
)
from flowstate.scripts.scheduler import parse_interval


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # A script: {script_path}/{trigger}; trigger is "user" unless scheduled.
        ({"script_path": "u/alice/etl"}, "u/alice/etl/user"),
        ({"script_path": "u/alice/etl", "schedule": "u/alice/hourly"}, "u/alice/etl/alice"),
        # A script path ending in "/" gets "state" appended first.
        ({"script_path": "f/team/"}, "f/team/state/user"),
        ({"script_path": "f/team/", "schedule": "f/team/daily"}, "f/team/state/alice"),
        # A flow step: {flow_path}/{step_id or "nostep"}_{trigger}; the flow wins over the script.
        ({"flow_path": "f/team/etl", "step_id": "b", "script_path": "u/x/y"}, "f/team/etl/b_user"),
        ({"flow_path": "f/team/etl"}, "f/team/etl/nostep_user"),
        ({"flow_path": "f/team/etl", "step_id": "a", "schedule": "s/x"}, "f/team/etl/a_alice"),
        # Neither: the user's temporary state.
        ({}, "u/alice/tmp_state"),
        ({"schedule": "u/alice/s"}, "u/alice/tmp_state"),
    ],
)
def test_state_path_follows_windmills_rule(fields: dict[str, str], expected: str) -> None:
    assert ScriptContext(username="alice", **fields).state_path == expected


def test_trigger_is_the_username_only_for_scheduled_runs() -> None:
    assert ScriptContext(username="bob").trigger == "user"
    assert ScriptContext(username="bob", schedule="u/bob/every_5m").trigger == "bob"


def test_an_explicit_state_path_wins() -> None:
    ctx = ScriptContext(username="a", script_path="u/a/s", state_path_override="u/a/custom")
    assert ctx.state_path == "u/a/custom"


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("", "non-empty"),
        ("/u/alice/x", 'must not start or end with "/"'),
        ("u/alice/x/", 'must not start or end with "/"'),
        ("u//x", 'contain "//"'),
        ("u/../x", 'must not contain ".." segments'),
        ("u/./x", 'must not contain "." segments'),
        ("u/a\x00b", "control characters"),
        ("u\\alice\\x", 'not "\\"'),
        ("u/" + "x" * 600, "longer than 512"),
    ],
)
def test_bad_paths_are_rejected_with_the_rule_broken(bad: str, fragment: str) -> None:
    with pytest.raises(KeyPatternError, match="path") as info:
        check_path(bad)
    assert fragment in str(info.value)


def test_a_non_string_path_is_rejected() -> None:
    with pytest.raises(KeyPatternError, match="path must be a non-empty string, got 3"):
        check_path(3)


def test_script_paths_may_end_with_a_slash_but_are_otherwise_checked() -> None:
    assert check_script_path("f/team/") == "f/team/"
    with pytest.raises(KeyPatternError, match=re.escape('".." segments')):
        check_script_path("f/../")


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"username": "a/b"}, "username 'a/b' must be a single segment (no \"/\")"),
        ({"username": ""}, "username must be a non-empty string"),
        ({"project": "p\n"}, "project id 'p\\n' must not contain control characters"),
        ({"step_id": "a/b"}, "step id 'a/b' must be a single segment"),
        ({"flow_path": "f/../x"}, "flow path 'f/../x' must not contain \"..\" segments"),
        ({"schedule": "s//x"}, "schedule 's//x' must not"),
    ],
)
def test_context_fields_are_validated(fields: dict[str, str], fragment: str) -> None:
    with pytest.raises(KeyPatternError) as info:
        ScriptContext(**fields)
    assert fragment in str(info.value)


def test_keys_live_in_the_project_scope_and_cannot_escape_it() -> None:
    assert item_key("default", "u/alice/etl/user") == "project/default/c/_scripts/u/alice/etl/user"
    # Project ids are percent-encoded like the server's scope roots; so are odd path characters.
    key = item_key("acme prod%", "u/alice/a b%c")
    assert key == "project/acme%20prod%25/c/_scripts/u/alice/a%20b%25c"
    assert item_path("acme prod%", key) == "u/alice/a b%c"
    assert flow_state_key("p", "run:1") == "project/p/c/_flow_user_states/run%3A1"
    # An id names one thing: "/" in a project or run id is refused, never encoded into a level.
    with pytest.raises(KeyPatternError, match=re.escape('must be a single segment (no "/")')):
        item_key("acme/prod", "u/alice/etl")
    with pytest.raises(KeyPatternError, match=re.escape('must be a single segment (no "/")')):
        flow_state_key("p", "run/1")
    assert job_key("p", "j1") == "project/p/c/_jobs/j1"
    with pytest.raises(KeyPatternError, match=re.escape('".." segments')):
        item_key("default", "../../session/x/state")


def test_step_ids_count_like_windmill() -> None:
    assert step_ids(3) == ["a", "b", "c"]
    ids = step_ids(28)
    assert ids[25:] == ["z", "aa", "ab"]
    assert len(set(ids)) == 28


def test_context_from_the_environment() -> None:
    env = {
        "USER": "carol",
        "FLOWSTATE_PROJECT": "proj",
        "WM_JOB_PATH": "u/carol/etl",
        "WM_SCHEDULE_PATH": "u/carol/hourly",
        "WM_JOB_ID": "j1",
    }
    ctx = context_from_env(env)
    assert (ctx.username, ctx.project, ctx.state_path) == ("carol", "proj", "u/carol/etl/carol")
    assert ctx.flow_run_id == "j1"  # a standalone job is its own flow run
    # What the runner (or a Windmill worker) exports takes precedence.
    env |= {"WM_USERNAME": "dave", "WM_WORKSPACE": "ws", "WM_STATE_PATH": "u/dave/x/user"}
    ctx = context_from_env(env)
    assert (ctx.username, ctx.project, ctx.state_path) == ("dave", "ws", "u/dave/x/user")
    assert context_from_env({}).state_path == "u/user/tmp_state"
    assert context_from_env({}).project == "default"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300.0),
        ("30s", 30.0),
        ("30", 30.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("250ms", 0.25),
        ("0.5s", 0.5),
        (" 2 m ", 120.0),
    ],
)
def test_parse_interval(text: str, seconds: float) -> None:
    assert parse_interval(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "is not a number"),
        ("5 minutes", "is not a number"),
        ("-1s", "is not a number"),
        ("0s", "must be greater than zero"),
    ],
)
def test_bad_intervals_are_rejected(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_interval(text)
