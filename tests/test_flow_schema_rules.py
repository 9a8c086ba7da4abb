"""SPEC §1 compatibility rules, checked directly on the pure schema module."""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal, Optional

import pytest
from pydantic import BaseModel, Field

from flowstate import SchemaConflictError, StateValidationError
from flowstate.schema import Declaration, compare, merge_declarations, type_name


class Inner(BaseModel):
    theme: str = "dark"
    size: int = 1


class InnerOther(BaseModel):
    theme: str = "light"
    extra: bool = False


class InnerBad(BaseModel):
    size: str = ""


COMPATIBLE = [
    (int, int),
    (Optional[int], int),  # noqa: UP045 - the typing spelling is what is being tested
    (int | None, int),
    (Annotated[int, Field(ge=0)], int),
    (Annotated[Optional[str], "meta"], str),  # noqa: UP045
    (list[int], typing.List[int]),  # noqa: UP006
    (list, list[int]),
    (dict[str, list[int]], dict[str, list[int]]),
    (Literal["a", "b"], str),
    (str, Literal["x"]),
    (Literal["a", "b"], Literal["b", "c"]),  # overlapping: the merge keeps "b"
    (Literal[1, 2], int),
    (Inner, InnerOther),  # shared field theme: str on both
    (list[Inner], list[InnerOther]),
    (Any, int),
    (dict[str, Any], dict[str, int]),
    (int | str, str | int),
]

INCOMPATIBLE = [
    (int, str, "int", "str"),
    (Optional[int], str, "int", "str"),  # noqa: UP045
    (list[int], list[str], "list[int]", "list[str]"),
    (dict[str, int], dict[str, str], "dict[str, int]", "dict[str, str]"),
    (list[int], dict[str, int], "list[int]", "dict[str, int]"),
    (Literal["a"], int, "Literal['a']", "int"),
    (Literal[1], Literal["a"], "Literal[1]", "Literal['a']"),
    (int, float, "int", "float"),
    (bool, int, "bool", "int"),
    (Inner, str, "Inner", "str"),
    (int | str, int, "int | str", "int"),
]


@pytest.mark.parametrize(("left", "right"), COMPATIBLE)
def test_compatible_annotations(left: Any, right: Any) -> None:
    assert compare(left, right, "f") is None
    assert compare(right, left, "f") is None


@pytest.mark.parametrize(("left", "right", "ln", "rn"), INCOMPATIBLE)
def test_incompatible_annotations_report_both_types(
    left: Any, right: Any, ln: str, rn: str
) -> None:
    problem = compare(left, right, "f")
    assert problem is not None
    assert problem.reason == "incompatible-types"
    assert problem.path == "f"
    assert problem.detail == f'field "f": {ln} vs {rn}'


def test_nested_models_compare_field_by_field_and_name_the_nested_path() -> None:
    problem = compare(Inner, InnerBad, "prefs")
    assert problem is not None
    assert problem.path == "prefs.size"
    assert problem.detail == 'field "prefs.size": int vs str'


def test_nested_models_inside_containers_name_the_element_path() -> None:
    problem = compare(list[Inner], list[InnerBad], "items")
    assert problem is not None
    assert problem.path == "items[].size"


def test_type_names() -> None:
    assert type_name(Optional[int]) == "int"  # noqa: UP045
    assert type_name(list[dict[str, int]]) == "list[dict[str, int]]"
    assert type_name(Literal["a", "b"]) == "Literal['a', 'b']"


def merge(*models: type[BaseModel]) -> Any:
    decls = [Declaration(m, f'block "{m.__name__}"') for m in models]
    return merge_declarations(decls, flow="f", scope="session", model_name="Combined")


def test_merge_literal_wins_over_its_base_type_whichever_comes_first() -> None:
    class A(BaseModel):
        mode: str = "chat"

    class B(BaseModel):
        mode: Literal["chat", "agent"] = "chat"

    for order in ((A, B), (B, A)):
        schema = merge(*order)
        assert schema.model.model_fields["mode"].annotation == Literal["chat", "agent"]


def test_disjoint_literals_are_incompatible() -> None:
    problem = compare(Literal["a"], Literal["b"], "f")
    assert problem is not None and problem.reason == "disjoint-literals"
    assert problem.detail == "field \"f\": Literal['a'] vs Literal['b']"


def test_merge_two_literals_accepts_only_the_values_both_accept() -> None:
    class A(BaseModel):
        mode: Literal["a", "b"] = "b"

    class B(BaseModel):
        mode: Literal["b", "c"] = "b"

    schema = merge(A, B)
    assert schema.model.model_fields["mode"].annotation == Literal["b"]
    assert schema.validate_fields({"mode": "b"}) == {"mode": "b"}
    for value in ("a", "c"):
        with pytest.raises(StateValidationError):
            schema.validate_fields({"mode": value})


def test_merge_nested_models_takes_the_union_of_their_fields_and_defaults() -> None:
    class P1(BaseModel):
        theme: str = "dark"
        size: int = 0

    class P2(BaseModel):
        theme: str = "dark"
        extra: bool = False

    class A(BaseModel):
        prefs: P1 = Field(default_factory=P1)

    class B(BaseModel):
        prefs: P2 = Field(default_factory=P2)

    schema = merge(A, B)
    assert schema.validate_fields({"prefs": {"theme": "x", "size": 2, "extra": True}}) == {
        "prefs": {"theme": "x", "size": 2, "extra": True}
    }
    assert schema.defaults() == {"prefs": {"theme": "dark", "size": 0, "extra": False}}
    # A shared nested field with two defaults is as ambiguous as a top-level one.
    class C(BaseModel):
        prefs: Inner = Field(default_factory=Inner)  # size defaults to 1, P1's to 0

    with pytest.raises(SchemaConflictError, match=r'differing-defaults: field "prefs.size"'):
        merge(A, C)


def test_merge_a_default_beats_required_and_two_valid_defaults_conflict() -> None:
    class Req(BaseModel):
        n: int

    class D1(BaseModel):
        n: int = 1

    class D2(BaseModel):
        n: int = 2

    assert merge(Req, D1).defaults() == {"n": 1}
    assert merge(D1, Req).defaults() == {"n": 1}
    for order in ((D1, D2), (D2, D1)):
        with pytest.raises(SchemaConflictError) as info:
            merge(*order)
        message = str(info.value)
        for fragment in ('"f"', "session", '"n"', 'block "D1"', 'block "D2"', "differing-defaults"):
            assert fragment in message, (fragment, message)


def test_merge_rejects_unknown_fields() -> None:
    schema = merge(Inner)
    assert schema.model.model_config.get("extra") == "forbid"


def test_merge_conflict_message_names_flow_scope_field_declarers_and_types() -> None:
    class A(BaseModel):
        status: str = ""

    class B(BaseModel):
        status: int = 0

    with pytest.raises(SchemaConflictError) as info:
        merge(A, B)
    assert str(info.value) == (
        'Flow "f": session state field "status" is declared as str by block "A" and as int by '
        'block "B" (incompatible-types: field "status": str vs int). Rename one of the fields '
        "or make the types agree."
    )


def test_merge_of_nothing_is_free_form() -> None:
    assert merge().free_form
