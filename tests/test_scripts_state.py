"""flowstate.scripts: synchronous get/set_state, resources and flow user state on every store."""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from flowstate import (
    ConcurrentModificationError,
    KeyPatternError,
    ResourceNotFoundError,
    RetryPolicy,
    StateValidationError,
    scripts,
)
from flowstate.scripts import NoFlowRunError, ScriptContext, engine, use_context
from flowstate.stores import Record, Store


@pytest.fixture
def url(store_url: str) -> Iterator[str]:
    """A fresh store URL; the scripts engine's stores are closed after the test."""
    yield store_url
    scripts.shutdown()


def as_script(url: str, **fields: Any) -> Any:
    fields.setdefault("username", "alice")
    return use_context(ScriptContext(store_url=url, **fields), export_env=False)


def read_record(url: str, key: str) -> Record | None:
    async def read(store: Store) -> Record | None:
        return await store.read(key)

    return engine.call(url, read)


def test_state_is_none_before_the_first_set_then_round_trips_any_json(url: str) -> None:
    values: list[Any] = [
        0,
        -2.5,
        "héllo ✓",
        True,
        [1, [2, {"x": None}]],
        {"nested": {"list": [1, 2], "s": "t"}, "n": 3},
        None,
    ]
    with as_script(url, script_path="u/alice/etl"):
        assert scripts.get_state() is None
        assert scripts.get_state_version() == 0
        for version, value in enumerate(values, start=1):
            assert scripts.set_state(value) == version
            assert scripts.get_state() == value
            assert scripts.get_state_version() == version


def test_setting_the_stored_value_again_changes_nothing(url: str) -> None:
    with as_script(url, script_path="u/alice/etl"):
        assert scripts.set_state({"a": 1}) == 1
        assert scripts.set_state({"a": 1}) == 1
        assert scripts.set_state({"a": 1.0}) == 2  # a change of type is a change


def test_state_is_a_versioned_record_in_the_project_scope(url: str) -> None:
    with as_script(url, script_path="u/alice/etl", project="acme"):
        scripts.set_state({"seen": [1, 2]})
        scripts.set_state({"seen": [1, 2, 3]})
        info = scripts.get_state_info()
    assert (info.path, info.value, info.version) == ("u/alice/etl/user", {"seen": [1, 2, 3]}, 2)
    record = read_record(url, "project/acme/c/_scripts/u/alice/etl/user")
    assert record is not None
    assert record.version == 2
    assert dict(record.fields) == {"value": {"seen": [1, 2, 3]}, "resourceType": "state"}


def test_each_context_has_its_own_state(url: str) -> None:
    contexts = [
        {"script_path": "u/alice/etl"},
        {"script_path": "u/alice/etl", "schedule": "u/alice/hourly"},
        {"script_path": "u/alice/other"},
        {"flow_path": "f/team/etl", "step_id": "a"},
        {"flow_path": "f/team/etl", "step_id": "b"},
        {},
        {"script_path": "u/alice/etl", "project": "other"},
    ]
    for i, fields in enumerate(contexts):
        with as_script(url, **fields):
            assert scripts.get_state() is None, fields
            scripts.set_state(i)
    for i, fields in enumerate(contexts):
        with as_script(url, **fields):
            assert scripts.get_state() == i
    # The same script run by another user (not scheduled) shares the "user" trigger state.
    with as_script(url, username="bob", script_path="u/alice/etl"):
        assert scripts.get_state() == 0
        assert scripts.get_state_path() == "u/alice/etl/user"


def test_if_version_is_a_compare_and_swap(url: str) -> None:
    with as_script(url, script_path="u/alice/etl"):
        assert scripts.set_state("first", if_version=0) == 1
        with pytest.raises(ConcurrentModificationError) as info:
            scripts.set_state("again-first", if_version=0)
        assert '"u/alice/etl/user" is at version 1, not the expected version 0' in str(info.value)
        assert info.value.attempts == 1
        assert scripts.set_state("second", if_version=1) == 2
        with pytest.raises(
            ConcurrentModificationError, match="at version 2, not the expected version 1"
        ):
            scripts.set_state("stale", if_version=1)
        assert (scripts.get_state(), scripts.get_state_version()) == ("second", 2)
        with pytest.raises(ValueError, match="if_version must be a version number >= 0"):
            scripts.set_state("x", if_version=-1)


def test_if_version_on_a_missing_state_conflicts(url: str) -> None:
    with as_script(url, script_path="u/alice/etl"):
        with pytest.raises(
            ConcurrentModificationError, match="at version 0, not the expected version 3"
        ):
            scripts.set_state("x", if_version=3)
        assert scripts.get_state_version() == 0


def test_update_state_reads_modifies_and_writes(url: str) -> None:
    with as_script(url, script_path="u/alice/counter"):
        seen: list[Any] = []

        def bump(current: Any) -> dict[str, int]:
            seen.append(current)
            return {"n": (current or {"n": 0})["n"] + 1}

        assert scripts.update_state(bump) == {"n": 1}
        assert scripts.update_state(bump) == {"n": 2}
        assert seen == [None, {"n": 1}]
        assert scripts.get_state_version() == 2


def test_update_state_reruns_fn_when_another_run_wrote_in_between(url: str) -> None:
    with as_script(url, script_path="u/alice/counter"):
        scripts.set_state([1])
        calls: list[Any] = []

        def append_two(current: list[int]) -> list[int]:
            calls.append(list(current))
            if len(calls) == 1:
                scripts.set_state([1, 99])  # another writer sneaks in
            current.append(2)  # fn gets a copy: mutating it is safe
            return current

        assert scripts.update_state(append_two) == [1, 99, 2]
        assert calls == [[1], [1, 99]]
        assert scripts.get_state() == [1, 99, 2]


def test_update_state_gives_up_after_bounded_retries(url: str) -> None:
    with as_script(url, script_path="u/alice/counter"):
        scripts.set_state(0)

        def always_raced(current: int) -> int:
            scripts.set_state(current + 100)
            return -1

        with pytest.raises(ConcurrentModificationError) as info:
            scripts.update_state(always_raced, retry=RetryPolicy(max_attempts=3, base_delay=0))
        assert info.value.attempts == 3
        assert 'state "u/alice/counter/user": update_state gave up after 3 attempts' in str(
            info.value
        )
        assert scripts.get_state() == 300  # only the interfering writes landed


def test_values_that_are_not_json_are_rejected_and_nothing_is_written(url: str) -> None:
    with as_script(url, script_path="u/alice/etl"):
        scripts.set_state({"ok": True})
        for bad in (object(), {"x": math.nan}, [math.inf]):
            with pytest.raises(StateValidationError, match='"u/alice/etl/user": value is not JSON'):
                scripts.set_state(bad)
        assert (scripts.get_state(), scripts.get_state_version()) == ({"ok": True}, 1)


def test_threads_updating_one_state_lose_no_increment(url: str) -> None:
    ctx = ScriptContext(username="alice", script_path="u/alice/counter", store_url=url)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with use_context(ctx, export_env=False):
                for _ in range(15):
                    scripts.update_state(lambda n: (n or 0) + 1, retry=RetryPolicy(50))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with use_context(ctx, export_env=False):
        assert scripts.get_state() == 60


async def test_sync_functions_work_inside_a_running_event_loop(url: str) -> None:
    with as_script(url, script_path="u/alice/async"):
        scripts.set_state({"from": "async"})
        assert scripts.get_state() == {"from": "async"}


def test_resources_get_set_and_keep_their_type(url: str) -> None:
    with as_script(url):
        with pytest.raises(ResourceNotFoundError) as info:
            scripts.get_resource("u/alice/db")
        assert str(info.value) == 'resource "u/alice/db" does not exist in project "default"'
        assert scripts.get_resource("u/alice/db", none_if_undefined=True) is None
        assert scripts.set_resource({"host": "db1"}, "u/alice/db", "postgresql") == 1
        assert scripts.get_resource("u/alice/db") == {"host": "db1"}
        assert scripts.set_resource({"host": "db2"}, "u/alice/db") == 2
        info2 = scripts.get_resource_info("u/alice/db")
        assert (info2.value, info2.version, info2.resource_type) == (
            {"host": "db2"},
            2,
            "postgresql",
        )
        with pytest.raises(ConcurrentModificationError):
            scripts.set_resource({"host": "db3"}, "u/alice/db", if_version=1)
        assert scripts.get_resource("u/alice/db") == {"host": "db2"}


def test_a_state_is_a_resource_of_type_state(url: str) -> None:
    with as_script(url, script_path="u/alice/etl"):
        scripts.set_state([1, 2])
        assert scripts.get_resource(scripts.get_state_path()) == [1, 2]
        assert scripts.get_resource_info("u/alice/etl/user").resource_type == "state"


def test_bad_resource_paths_and_types_are_rejected(url: str) -> None:
    with as_script(url):
        with pytest.raises(KeyPatternError, match=re.escape("path '../x' must not contain")):
            scripts.set_resource(1, "../x")
        with pytest.raises(KeyPatternError, match="must not start or end"):
            scripts.get_resource("/abs")
        with pytest.raises(ValueError, match="resource_type must be a non-empty string"):
            scripts.set_resource(1, "u/alice/x", "")
        assert scripts.get_resource("u/alice/x", none_if_undefined=True) is None


def test_flow_user_state_is_shared_within_one_flow_run_only(url: str) -> None:
    with as_script(url, flow_path="f/team/etl", step_id="a", flow_run_id="run1"):
        assert scripts.get_flow_user_state("FOO") is None
        scripts.set_flow_user_state("FOO", 42)
        scripts.set_flow_user_state("bar", {"list": [1]})
    with as_script(url, flow_path="f/team/etl", step_id="b", flow_run_id="run1"):
        assert scripts.get_flow_user_state("FOO") == 42
        assert scripts.get_flow_user_state("bar") == {"list": [1]}
        scripts.set_flow_user_state("FOO", None)
        assert scripts.get_flow_user_state("FOO") is None
    with as_script(url, flow_path="f/team/etl", step_id="a", flow_run_id="run2"):
        assert scripts.get_flow_user_state("bar") is None
    record = read_record(url, "project/default/c/_flow_user_states/run1")
    assert record is not None and dict(record.fields) == {"FOO": None, "bar": {"list": [1]}}


def test_flow_user_state_needs_a_run(url: str) -> None:
    with as_script(url, script_path="u/alice/etl"):
        with pytest.raises(NoFlowRunError, match="get_flow_user_state needs a flow run"):
            scripts.get_flow_user_state("k")
        with pytest.raises(NoFlowRunError, match="set_flow_user_state needs a flow run") as info:
            scripts.set_flow_user_state("k", 1)
        assert info.value.code == "no_flow_run"


def test_flow_user_state_keys_and_values_are_checked(url: str) -> None:
    with as_script(url, flow_run_id="r"):
        with pytest.raises(KeyPatternError, match="flow user state key must be a non-empty"):
            scripts.set_flow_user_state("", 1)
        with pytest.raises(StateValidationError, match='flow user state "k": value is not JSON'):
            scripts.set_flow_user_state("k", {1, 2} and object())
        assert scripts.get_flow_user_state("k") is None
