"""Merging keeps every declarer's rules: constraints, Literal values, validators, defaults.

Block A declares ``level: int = 0`` and block B ``level: int = Field(0, ge=0)``: B's ``ge=0``
used to be dropped, so ``patch_state(level=-5)`` committed. Now every value is validated against
each declaration of its field, and defaults that would make the merge arbitrary fail at
``define_flow`` naming both declarers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, field_validator

from flowstate import (
    FlowServer,
    SchemaConflictError,
    ScopeConfig,
    StateValidationError,
    define_flow,
    handler,
    sequencer,
)
from flowstate.schema import Declaration, merge_declarations


class Plain(BaseModel):
    level: int = 0


class NonNegative(BaseModel):
    level: int = Field(0, ge=0)


def two_blocks(first: type[BaseModel], second: type[BaseModel], execute: Any) -> Any:
    async def noop(input: Any, ctx: Any) -> Any:
        return None

    pipe = (
        sequencer(name="pipe")
        .then(handler(name="a", session_state=first, execute=noop))
        .then(handler(name="b", session_state=second, execute=execute))
    )
    return define_flow("levels", actions={"go": pipe})


@pytest.mark.parametrize("order", ["plain-first", "constrained-first"])
async def test_the_reported_case_every_declarers_constraint_holds(
    store_url: str, order: str
) -> None:
    first: type[BaseModel]
    second: type[BaseModel]
    first, second = (Plain, NonNegative) if order == "plain-first" else (NonNegative, Plain)
    attempts: dict[str, Any] = {}

    async def body(input: Any, ctx: Any) -> Any:
        s = ctx.session
        for name, write in (
            ("patch", lambda: s.patch_state(level=-5)),
            ("set", lambda: s.set_state({"level": -5})),
            ("inc", lambda: s.inc_state(level=-5)),
            ("update", lambda: s.update_state(lambda cur: {"level": cur.level - 5})),
        ):
            try:
                await write()
                attempts[name] = "committed"
            except StateValidationError as exc:
                attempts[name] = (exc.scope, exc.errors[0]["loc"], exc.errors[0]["type"])
        await s.patch_state(level=3)  # valid for both: fine
        return s.version

    flow = two_blocks(first, second, body)
    async with FlowServer([flow], store=store_url) as server:
        result = await server.run("levels", "go", None, user_id="u")
        assert result.output == 1  # only the valid write committed
        snap_record = await server.store.read(f"session/{result.session_id}/state")
    expected = ("session", ["level"], "greater_than_equal")
    assert attempts == {k: expected for k in ("patch", "set", "inc", "update")}
    assert snap_record is not None and dict(snap_record.fields) == {"level": 3}


def merge(*models: type[BaseModel], flow_model: type[BaseModel] | None = None) -> Any:
    decls = [Declaration(m, f'block "{m.__name__}"') for m in models]
    if flow_model is not None:
        decls.insert(0, Declaration(flow_model, 'flow "f"'))
    return merge_declarations(decls, flow="f", scope="session", model_name="Combined")


def rejects(schema: Any, **fields: Any) -> str:
    with pytest.raises(StateValidationError) as info:
        schema.validate_fields(fields)
    return str(info.value.errors[0]["type"])


def test_constraints_of_each_declarer_combine() -> None:
    class Low(BaseModel):
        n: int = Field(5, ge=0)

    class High(BaseModel):
        n: Annotated[int, Field(le=10)] = 5

    schema = merge(Low, High)
    assert schema.validate_fields({"n": 7}) == {"n": 7}
    assert rejects(schema, n=-1) == "greater_than_equal"
    assert rejects(schema, n=11) == "less_than_equal"


def test_constraints_on_containers_items_and_nested_models_hold() -> None:
    class Item(BaseModel):
        qty: int = 0

    class PositiveItem(BaseModel):
        qty: int = Field(0, ge=0)

    class A(BaseModel):
        tags: list[str] = Field(default_factory=list)
        scores: dict[str, int] = Field(default_factory=dict)
        items: list[Item] = Field(default_factory=list)

    class B(BaseModel):
        tags: list[Annotated[str, Field(max_length=3)]] = Field(default_factory=list, max_length=2)
        scores: dict[str, Annotated[int, Field(lt=100)]] = Field(default_factory=dict)
        items: list[PositiveItem] = Field(default_factory=list)

    for schema in (merge(A, B), merge(B, A)):
        assert schema.validate_fields({"tags": ["ab"], "scores": {"x": 1}}) == {
            "tags": ["ab"],
            "scores": {"x": 1},
        }
        assert rejects(schema, tags=["abcd"]) == "string_too_long"
        assert rejects(schema, tags=["a", "b", "c"]) == "too_long"
        assert rejects(schema, scores={"x": 100}) == "less_than"
        assert rejects(schema, items=[{"qty": -1}]) == "greater_than_equal"
        # A push validates the whole list against each declaration, not just the new item.
        assert not schema.appendable("tags")


async def test_push_and_record_ops_respect_the_other_declarers_limits() -> None:
    class A(BaseModel):
        tags: list[str] = Field(default_factory=list)
        scores: dict[str, int] = Field(default_factory=dict)

    class B(BaseModel):
        tags: list[str] = Field(default_factory=list, max_length=2)
        scores: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)

    async def body(input: Any, ctx: Any) -> Any:
        s = ctx.session
        await s.push_state("tags", "a")
        await s.push_state("tags", "b")
        errors = []
        for write in (
            lambda: s.push_state("tags", "c"),
            lambda: s.set_state_record("scores", "x", -1),
        ):
            with pytest.raises(StateValidationError) as info:
                await write()
            errors.append(info.value.errors[0]["type"])
        return errors, list(s.state.tags), s.version

    async with FlowServer([two_blocks(A, B, body)], store="memory://") as server:
        result = await server.run("levels", "go", None, user_id="u")
    assert result.output == (["too_long", "greater_than_equal"], ["a", "b"], 2)


def test_field_validators_of_every_declarer_run() -> None:
    class Lower(BaseModel):
        name: str = ""

        @field_validator("name")
        @classmethod
        def lowercase_only(cls, value: str) -> str:
            if value != value.lower():
                raise ValueError("name must be lower case")
            return value

    class NoSpaces(BaseModel):
        name: str = ""

        @field_validator("name")
        @classmethod
        def no_spaces(cls, value: str) -> str:
            if " " in value:
                raise ValueError("name must not contain spaces")
            return value

    class PlainName(BaseModel):
        name: str = ""

    for order in ((PlainName, Lower, NoSpaces), (NoSpaces, PlainName, Lower)):
        schema = merge(*order)
        assert schema.validate_state({"name": "ok"}) == {"name": "ok"}
        for bad, message in (("Bad", "lower case"), ("a b", "spaces")):
            with pytest.raises(StateValidationError, match=message):
                schema.validate_state({"name": bad})


def test_validators_of_nested_models_run_when_declarations_differ() -> None:
    class Address(BaseModel):
        zip: str = "00000"

        @field_validator("zip")
        @classmethod
        def digits(cls, value: str) -> str:
            if not value.isdigit():
                raise ValueError("zip must be digits")
            return value

    class Loose(BaseModel):
        zip: str = "00000"
        city: str = ""

    class A(BaseModel):
        home: Address = Field(default_factory=Address)

    class B(BaseModel):
        home: Loose = Field(default_factory=Loose)

    schema = merge(B, A)
    assert schema.validate_fields({"home": {"zip": "123", "city": "x"}}) == {
        "home": {"zip": "123", "city": "x"}
    }
    with pytest.raises(StateValidationError, match="zip must be digits"):
        schema.validate_fields({"home": {"zip": "abc"}})


def test_literals_keep_only_the_values_every_declarer_accepts() -> None:
    class AB(BaseModel):
        mode: Literal["a", "b"] = "a"

    class Str(BaseModel):
        mode: str = "a"

    class ABC(BaseModel):
        mode: Literal["a", "b", "c"] = "a"

    schema = merge(Str, ABC, AB)
    assert schema.validate_fields({"mode": "b"}) == {"mode": "b"}
    assert rejects(schema, mode="c") == "literal_error"
    assert rejects(schema, mode="z") == "literal_error"

    class Other(BaseModel):
        mode: Literal["x"] = "x"

    with pytest.raises(SchemaConflictError) as info:
        merge(AB, Other)
    message = str(info.value)
    for fragment in ('block "AB"', 'block "Other"', "disjoint-literals", '"mode"'):
        assert fragment in message, (fragment, message)


def test_differing_defaults_fail_naming_both_declarers() -> None:
    class Zero(BaseModel):
        level: int = 0

    class Five(BaseModel):
        level: int = Field(5, ge=0)

    with pytest.raises(SchemaConflictError) as info:
        define_flow(
            "game",
            actions={
                "a": handler(name="alpha", session_state=Zero, execute=noop),
                "b": handler(name="beta", session_state=Five, execute=noop),
            },
        )
    assert str(info.value) == (
        'Flow "game": session state field "level" is declared as int by block "alpha" and as '
        'int by block "beta" (differing-defaults: field "level": 0 vs 5, both valid). Give the '
        "field one default in every declaration, or declare it in the flow-level schema (whose "
        "default then wins)."
    )
    assert info.value.code == "schema_conflict"


async def noop(input: Any, ctx: Any) -> Any:
    return None


def test_the_flow_level_default_wins_if_every_declarer_accepts_it() -> None:
    class Zero(BaseModel):
        level: int = 0

    class Five(BaseModel):
        level: int = Field(5, ge=0)

    class FlowLevel(BaseModel):
        level: int = 7

    flow = define_flow(
        "game",
        actions={
            "a": handler(name="alpha", session_state=Zero, execute=noop),
            "b": handler(name="beta", session_state=Five, execute=noop),
        },
        session=ScopeConfig(state=FlowLevel),
    )
    schema = flow.scope("session").schema
    assert schema.defaults() == {"level": 7}
    assert rejects(schema, level=-1) == "greater_than_equal"  # beta's rule still holds

    class Negative(BaseModel):
        level: int = -1

    with pytest.raises(SchemaConflictError, match=r"invalid-default.*-1.*block \"beta\""):
        define_flow(
            "game",
            actions={"b": handler(name="beta", session_state=Five, execute=noop)},
            session=ScopeConfig(state=Negative),
        )


def test_a_default_only_one_declarer_accepts_loses_to_the_one_all_accept() -> None:
    class Opt(BaseModel):
        n: Optional[int] = None  # noqa: UP045

    class Int(BaseModel):
        n: int = 0

    class Low(BaseModel):
        level: Literal["low", "high"] = "low"

    class Free(BaseModel):
        level: str = ""

    for order in ((Opt, Int, Low, Free), (Free, Low, Int, Opt)):
        schema = merge(*order)
        assert schema.defaults() == {"n": 0, "level": "low"}
        assert rejects(schema, n=None) == "int_type"  # Int's rule: never None
        assert rejects(schema, level="") == "literal_error"

    class Neg(BaseModel):
        n: int = Field(-1, le=-1)

    class Pos(BaseModel):
        n: int = Field(1, ge=1)

    with pytest.raises(SchemaConflictError, match="no default is valid for every declaration"):
        merge(Neg, Pos)


# -------------------------------------------------------------- property: pairs of constraints

BOUNDS = st.one_of(st.none(), st.integers(-20, 20))


@settings(max_examples=120, deadline=None)
@given(
    a=st.fixed_dictionaries(
        {"ge": BOUNDS, "le": BOUNDS, "multiple_of": st.sampled_from([None, 2, 3])}
    ),
    b=st.fixed_dictionaries(
        {"gt": BOUNDS, "lt": BOUNDS, "multiple_of": st.sampled_from([None, 2, 5])}
    ),
    values=st.lists(st.integers(-30, 30), min_size=1, max_size=10),
)
def test_a_value_is_accepted_iff_every_declaration_accepts_it(
    a: dict[str, Any], b: dict[str, Any], values: list[int]
) -> None:
    """Hypothesis over pairs of numeric constraints: the merged schema is exactly the
    intersection of the declarers' rules, whichever declares first."""

    def model(name: str, constraints: dict[str, Any]) -> type[BaseModel]:
        kept = {k: v for k, v in constraints.items() if v is not None}
        return type(name, (BaseModel,), {"__annotations__": {"n": int}, "n": Field(**kept)})

    ma, mb = model("A", a), model("B", b)

    def accepts(m: type[BaseModel], value: int) -> bool:
        try:
            m.model_validate({"n": value})
        except Exception:
            return False
        return True

    for schema in (merge(ma, mb), merge(mb, ma)):
        for value in values:
            expected = accepts(ma, value) and accepts(mb, value)
            try:
                schema.validate_fields({"n": value})
                got = True
            except StateValidationError:
                got = False
            assert got == expected, (a, b, value)
