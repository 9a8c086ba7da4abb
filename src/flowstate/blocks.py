"""Blocks: handlers, sequencers and routers, each declaring only the state it uses.

A block is a definition; it runs inside a :class:`~flowstate.runtime.Context` built per
execution. Declarations (partial state models, resources, own state, targets) are collected by
``define_flow`` through :meth:`Block.children`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from pydantic import BaseModel, ValidationError

from .errors import DefinitionError, StateValidationError
from .resources import AnyResourceDefinition, ResourceCollectionDefinition, ResourceDefinition
from .schema import describe_errors

if TYPE_CHECKING:
    from .runtime import Context, Frame

__all__ = ["Block", "Handler", "Router", "Sequencer", "handler", "router", "sequencer"]

InT = TypeVar("InT")
OutT = TypeVar("OutT")

STATE_SCOPES = ("request", "session", "user", "project")
RESOURCE_SCOPES = ("request", "session", "user", "project")


def _check_model(value: Any, what: str, block: str) -> type[BaseModel] | None:
    if value is None or (isinstance(value, type) and issubclass(value, BaseModel)):
        return value
    raise DefinitionError(
        f'block "{block}": {what} must be a pydantic BaseModel subclass, got {value!r}'
    )


def _check_resources(
    value: Mapping[str, AnyResourceDefinition] | None, what: str, block: str
) -> dict[str, AnyResourceDefinition]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DefinitionError(f'block "{block}": {what} must be a dict of name → definition')
    for name, definition in value.items():
        if not isinstance(definition, ResourceDefinition | ResourceCollectionDefinition):
            raise DefinitionError(
                f'block "{block}": {what}["{name}"] must come from define_resource() or '
                f"define_resource_collection(), got {definition!r}"
            )
    return dict(value)


def _check_name(name: Any, kind: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise DefinitionError(f"a {kind} needs a non-empty name=, got {name!r}")
    return name


@dataclass(frozen=True)
class Declarations:
    """What one block declares for one scope."""

    state: type[BaseModel] | None
    resources: Mapping[str, AnyResourceDefinition]


class Block:
    """Common base of handlers, sequencers and routers."""

    kind: str = "block"

    def __init__(
        self,
        name: str,
        *,
        input: type[BaseModel] | None = None,
        output: type[BaseModel] | None = None,
        request_state: type[BaseModel] | None = None,
        session_state: type[BaseModel] | None = None,
        user_state: type[BaseModel] | None = None,
        project_state: type[BaseModel] | None = None,
        request_resources: Mapping[str, AnyResourceDefinition] | None = None,
        session_resources: Mapping[str, AnyResourceDefinition] | None = None,
        user_resources: Mapping[str, AnyResourceDefinition] | None = None,
        project_resources: Mapping[str, AnyResourceDefinition] | None = None,
        state: type[BaseModel] | None = None,
        target_state: Mapping[str, type[BaseModel]] | None = None,
    ) -> None:
        self.name = _check_name(name, self.kind)
        self.input = _check_model(input, "input", name)
        self.output = _check_model(output, "output", name)
        states = {
            "request": request_state,
            "session": session_state,
            "user": user_state,
            "project": project_state,
        }
        resources = {
            "request": request_resources,
            "session": session_resources,
            "user": user_resources,
            "project": project_resources,
        }
        self.declarations = {
            scope: Declarations(
                _check_model(states[scope], f"{scope}_state", name),
                _check_resources(resources[scope], f"{scope}_resources", name),
            )
            for scope in STATE_SCOPES
        }
        self.state = _check_model(state, "state", name)
        targets = dict(target_state or {})
        for target, model in targets.items():
            _check_model(model, f'target_state["{target}"]', name)
        self.target_state: dict[str, type[BaseModel]] = targets

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def children(self) -> Sequence[Block]:
        return ()

    def walk(self) -> list[Block]:
        """This block and every block below it, depth first."""
        out: list[Block] = [self]
        for child in self.children():
            out.extend(child.walk())
        return out

    def validate_input(self, value: Any) -> Any:
        return _validate(self.input, value, "input", self.name)

    def validate_output(self, value: Any) -> Any:
        return _validate(self.output, value, "output", self.name)

    async def execute_in(self, frame: Frame, input: Any) -> Any:
        """Run this block inside ``frame`` (the runtime calls this)."""
        raise NotImplementedError


def _validate(model: type[BaseModel] | None, value: Any, what: str, block: str) -> Any:
    if model is None or isinstance(value, model):
        return value
    try:
        if isinstance(value, BaseModel):
            value = value.model_dump()
        return model.model_validate(value)
    except ValidationError as exc:
        errors = [
            {"loc": [what, *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()
        ]
        raise StateValidationError(
            f'block "{block}" {what}: {describe_errors(errors)}', scope=what, errors=errors
        ) from None


Execute = Callable[[Any, "Context[Any, Any, Any, Any, Any]"], Awaitable[Any]]


class Handler(Block, Generic[InT, OutT]):
    """A block that runs one async function ``execute(input, ctx)``."""

    kind = "handler"

    def __init__(self, name: str, execute: Execute, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        if not callable(execute):
            raise DefinitionError(f'handler "{name}": execute must be an async function')
        if not (
            inspect.iscoroutinefunction(execute)
            or inspect.iscoroutinefunction(getattr(execute, "__call__", None))  # noqa: B004
        ):
            raise DefinitionError(
                f'handler "{name}": execute must be an async function (async def), got '
                f"{getattr(execute, '__name__', execute)!r}"
            )
        self.execute = execute

    async def execute_in(self, frame: Frame, input: Any) -> Any:
        return await self.execute(input, frame.context())


@overload
def handler(
    *,
    name: str,
    execute: Execute,
    input: type[BaseModel] | None = ...,
    output: type[BaseModel] | None = ...,
    request_state: type[BaseModel] | None = ...,
    session_state: type[BaseModel] | None = ...,
    user_state: type[BaseModel] | None = ...,
    project_state: type[BaseModel] | None = ...,
    request_resources: Mapping[str, AnyResourceDefinition] | None = ...,
    session_resources: Mapping[str, AnyResourceDefinition] | None = ...,
    user_resources: Mapping[str, AnyResourceDefinition] | None = ...,
    project_resources: Mapping[str, AnyResourceDefinition] | None = ...,
    state: type[BaseModel] | None = ...,
    target_state: Mapping[str, type[BaseModel]] | None = ...,
) -> Handler[Any, Any]: ...


@overload
def handler(
    *,
    name: str,
    execute: None = None,
    input: type[BaseModel] | None = ...,
    output: type[BaseModel] | None = ...,
    request_state: type[BaseModel] | None = ...,
    session_state: type[BaseModel] | None = ...,
    user_state: type[BaseModel] | None = ...,
    project_state: type[BaseModel] | None = ...,
    request_resources: Mapping[str, AnyResourceDefinition] | None = ...,
    session_resources: Mapping[str, AnyResourceDefinition] | None = ...,
    user_resources: Mapping[str, AnyResourceDefinition] | None = ...,
    project_resources: Mapping[str, AnyResourceDefinition] | None = ...,
    state: type[BaseModel] | None = ...,
    target_state: Mapping[str, type[BaseModel]] | None = ...,
) -> Callable[[Execute], Handler[Any, Any]]: ...


def handler(
    *, name: str, execute: Execute | None = None, **kwargs: Any
) -> Handler[Any, Any] | Callable[[Execute], Handler[Any, Any]]:
    """Define a handler block: ``handler(name=..., execute=fn, ...)`` or ``@handler(name=...)``."""
    if execute is not None:
        return Handler(name, execute, **kwargs)

    def decorate(fn: Execute) -> Handler[Any, Any]:
        return Handler(name, fn, **kwargs)

    return decorate


@dataclass(frozen=True)
class _Step:
    kind: Literal["then", "parallel", "for_each"]
    blocks: tuple[Block, ...]
    max_concurrency: int | None = None
    items: Callable[[Any, Any], Any] | None = None


def _check_block(block: Any, where: str) -> Block:
    if not isinstance(block, Block):
        raise DefinitionError(
            f"{where} takes a block (handler, sequencer or router), got {block!r}"
        )
    return block


def _check_concurrency(value: int | None, where: str) -> int | None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise DefinitionError(f"{where}: max_concurrency must be an integer >= 1, got {value!r}")
    return value


async def _gather_limited(
    factories: Sequence[Callable[[], Awaitable[Any]]], limit: int | None
) -> list[Any]:
    if limit is None:
        return list(await asyncio.gather(*(f() for f in factories)))
    semaphore = asyncio.Semaphore(limit)

    async def run(f: Callable[[], Awaitable[Any]]) -> Any:
        async with semaphore:
            return await f()

    return list(await asyncio.gather(*(run(f) for f in factories)))


class Sequencer(Block):
    """A pipeline: each step's output is the next step's input."""

    kind = "sequencer"

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.steps: list[_Step] = []

    def children(self) -> Sequence[Block]:
        return [b for step in self.steps for b in step.blocks]

    def then(self, block: Block) -> Sequencer:
        """Run ``block`` on the previous output."""
        self.steps.append(_Step("then", (_check_block(block, f'sequencer "{self.name}".then()'),)))
        return self

    def parallel(self, blocks: Sequence[Block], *, max_concurrency: int | None = None) -> Sequencer:
        """Run ``blocks`` concurrently on the same input; the output is their outputs, in order."""
        where = f'sequencer "{self.name}".parallel()'
        checked = tuple(_check_block(b, where) for b in blocks)
        if not checked:
            raise DefinitionError(f"{where} needs at least one block")
        self.steps.append(_Step("parallel", checked, _check_concurrency(max_concurrency, where)))
        return self

    def for_each(
        self,
        items: Callable[[Any, Any], Any],
        block: Block,
        *,
        max_concurrency: int | None = None,
    ) -> Sequencer:
        """Run ``block`` once per item of ``items(input, ctx)``; the output is the list of outputs."""
        where = f'sequencer "{self.name}".for_each()'
        if not callable(items):
            raise DefinitionError(f"{where}: items must be a function (input, ctx) -> items")
        self.steps.append(
            _Step(
                "for_each",
                (_check_block(block, where),),
                _check_concurrency(max_concurrency, where),
                items,
            )
        )
        return self

    async def execute_in(self, frame: Frame, input: Any) -> Any:
        value = input
        for step in self.steps:
            if step.kind == "then":
                value = await frame.run_child(step.blocks[0], value)
            elif step.kind == "parallel":
                value = await _gather_limited(
                    [functools.partial(frame.run_child, b, value) for b in step.blocks],
                    step.max_concurrency,
                )
            else:
                assert step.items is not None
                items = step.items(value, frame.context())
                if inspect.isawaitable(items):
                    items = await items
                block = step.blocks[0]
                value = await _gather_limited(
                    [functools.partial(frame.run_child, block, item) for item in list(items)],
                    step.max_concurrency,
                )
        return value


def sequencer(name: str, **kwargs: Any) -> Sequencer:
    """Define a sequencer block; add steps with ``.then``, ``.parallel`` and ``.for_each``."""
    return Sequencer(name, **kwargs)


class Router(Block):
    """Runs one of its ``routes``, chosen per input by ``select(input, ctx)``."""

    kind = "router"

    def __init__(
        self,
        name: str,
        routes: Mapping[str, Block],
        select: Callable[[Any, Any], Any],
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        if not isinstance(routes, Mapping) or not routes:
            raise DefinitionError(f'router "{name}": routes must be a non-empty dict name → block')
        self.routes = {
            k: _check_block(b, f'router "{name}" route "{k}"') for k, b in routes.items()
        }
        if not callable(select):
            raise DefinitionError(
                f'router "{name}": select must be a function (input, ctx) -> name'
            )
        self.select = select

    def children(self) -> Sequence[Block]:
        return list(self.routes.values())

    async def execute_in(self, frame: Frame, input: Any) -> Any:
        choice = self.select(input, frame.context())
        if inspect.isawaitable(choice):
            choice = await choice
        block = self.routes.get(choice)
        if block is None:
            raise DefinitionError(
                f'router "{self.name}": select returned {choice!r}, not one of '
                f"{', '.join(map(repr, self.routes))}"
            )
        return await frame.run_child(block, input)


def router(
    name: str, *, routes: Mapping[str, Block], select: Callable[[Any, Any], Any], **kwargs: Any
) -> Router:
    """Define a router block."""
    return Router(name, routes, select, **kwargs)
