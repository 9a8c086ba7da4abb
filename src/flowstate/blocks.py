"""Blocks: handlers, sequencers and routers, each declaring only the state it uses.

A block is a definition; it runs inside a :class:`~flowstate.runtime.Context` built per
execution. Declarations (partial state models, resources, own state, targets) are collected by
``define_flow`` through :meth:`Block.children`.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypedDict, Unpack, overload

from pydantic import BaseModel, ValidationError
from typing_extensions import TypeVar

from .errors import DefinitionError, StateValidationError, describe_errors
from .resources import AnyResourceDefinition, ResourceCollectionDefinition, ResourceDefinition

if TYPE_CHECKING:
    from .runtime import Context, Frame

__all__ = [
    "Block",
    "Handler",
    "HandlerOptions",
    "Router",
    "Sequencer",
    "handler",
    "router",
    "sequencer",
]

InT = TypeVar("InT", default=Any)
OutT = TypeVar("OutT", default=Any)
# Per-call type variables of ``handler``: the state models it declares type its ``ctx``.
SS = TypeVar("SS", default=Any)
US = TypeVar("US", default=Any)
PS = TypeVar("PS", default=Any)
RS = TypeVar("RS", default=Any)
OS = TypeVar("OS", default=Any)

STATE_SCOPES = ("request", "session", "user", "project")


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
        raise DefinitionError(
            f'{kind}() needs name="..." (a non-empty string; targets, events and error '
            f"messages refer to the block by it), got {name!r}"
        )
    return name


BLOCK_OPTIONS = (
    "input",
    "output",
    "request_state",
    "session_state",
    "user_state",
    "project_state",
    "org_state",
    "request_resources",
    "session_resources",
    "user_resources",
    "project_resources",
    "org_resources",
    "state",
    "target_state",
)

# flow-state.dev's (TypeScript) spellings, so a ported definition gets a precise hint.
_SEED_SPELLINGS = {
    "inputSchema": "input",
    "outputSchema": "output",
    "stateSchema": "state",
    "targetStateSchemas": "target_state",
    "requestStateSchema": "request_state",
    "sessionStateSchema": "session_state",
    "userStateSchema": "user_state",
    "projectStateSchema": "project_state",
    "orgStateSchema": "project_state",
    "sessionResources": "session_resources",
    "userResources": "user_resources",
    "projectResources": "project_resources",
}


def _reject_unknown(options: Iterable[str], allowed: Iterable[str], where: str) -> None:
    """Raise a DefinitionError naming the first unknown option and what to write instead."""
    allowed = list(allowed)
    for option in options:
        if option in allowed:
            continue
        hint = _SEED_SPELLINGS.get(option)
        if hint is None:
            snake = re.sub(r"(?<!^)(?=[A-Z])", "_", option).lower()
            close = difflib.get_close_matches(snake, allowed, n=1)
            hint = close[0] if close else None
        suggestion = f"; did you mean {hint}=?" if hint else ""
        raise DefinitionError(
            f"{where}: unknown option {option}={suggestion} (options: {', '.join(allowed)})"
        )


def _alias(kwargs: dict[str, Any], alias: str, name: str, where: str) -> None:
    """Fold flow-state.dev's ``org_*`` spelling into ``project_*`` (giving both is an error)."""
    if alias not in kwargs:
        return
    value = kwargs.pop(alias)
    if kwargs.get(name) is not None and value is not None:
        raise DefinitionError(f"{where}: give {name}= or its alias {alias}=, not both")
    if value is not None:
        kwargs[name] = value


@dataclass(frozen=True)
class Declarations:
    """What one block declares for one scope."""

    state: type[BaseModel] | None
    resources: Mapping[str, AnyResourceDefinition]


class Block:
    """Common base of handlers, sequencers and routers."""

    kind: str = "block"

    def __init__(self, name: str | None, **options: Any) -> None:
        self.name = _check_name(name, self.kind)
        where = f'{self.kind} "{self.name}"'
        _reject_unknown(options, BLOCK_OPTIONS, where)
        _alias(options, "org_state", "project_state", where)
        _alias(options, "org_resources", "project_resources", where)
        self.input = _check_model(options.get("input"), "input", self.name)
        self.output = _check_model(options.get("output"), "output", self.name)
        self.declarations = {
            scope: Declarations(
                _check_model(options.get(f"{scope}_state"), f"{scope}_state", self.name),
                _check_resources(
                    options.get(f"{scope}_resources"), f"{scope}_resources", self.name
                ),
            )
            for scope in STATE_SCOPES
        }
        self.state = _check_model(options.get("state"), "state", self.name)
        target_state = options.get("target_state")
        if target_state is not None and not isinstance(target_state, Mapping):
            raise DefinitionError(
                f"{where}: target_state must be a dict of ancestor block name → model, "
                f"got {target_state!r}"
            )
        targets = dict(target_state or {})
        for target, model in targets.items():
            if not isinstance(target, str) or not target:
                raise DefinitionError(
                    f"{where}: target_state keys are ancestor block names, got {target!r}"
                )
            if model is None:
                raise DefinitionError(
                    f'{where}: target_state["{target}"] must be a pydantic BaseModel subclass'
                )
            _check_model(model, f'target_state["{target}"]', self.name)
        self.target_state: dict[str, type[BaseModel]] = targets

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def children(self) -> Sequence[Block]:
        return ()

    def walk(self, _path: tuple[Block, ...] = ()) -> list[Block]:
        """This block and every block below it, depth first (a block inside itself is an error)."""
        if any(b is self for b in _path):
            names = " → ".join(f'"{b.name}"' for b in (*_path, self))
            raise DefinitionError(
                f'{self.kind} "{self.name}" contains itself ({names}); a flow is a tree of '
                "blocks, so repeat work with for_each instead"
            )
        out: list[Block] = [self]
        for child in self.children():
            out.extend(child.walk((*_path, self)))
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
    if value is None:
        value = {}  # no input: a model whose fields all have defaults still validates
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
# ``execute`` as the type checker sees it: its ``ctx`` is typed by the declared state models.
TypedExecute = Callable[[Any, "Context[SS, US, PS, RS, OS]"], Awaitable[Any]]


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with ``async def __call__``
    )


class Handler(Block, Generic[InT, OutT]):
    """A block that runs one async function ``execute(input, ctx)``."""

    kind = "handler"

    def __init__(self, name: str | None, execute: Execute | None, **options: Any) -> None:
        super().__init__(name, **options)
        if execute is None or not _is_async(execute):
            got = "nothing" if execute is None else repr(getattr(execute, "__name__", execute))
            raise DefinitionError(
                f'handler "{self.name}": execute must be an async function '
                f"(async def fn(input, ctx)), got {got}"
            )
        self.execute = execute

    async def execute_in(self, frame: Frame, input: Any) -> Any:
        return await self.execute(input, frame.context())


class HandlerOptions(TypedDict, Generic[SS, US, PS, RS, OS], total=False):
    """What ``handler(...)`` takes besides ``name`` and ``execute`` (the state models type
    ``ctx``)."""

    input: type[BaseModel] | None
    output: type[BaseModel] | None
    request_state: type[RS] | None
    session_state: type[SS] | None
    user_state: type[US] | None
    project_state: type[PS] | None
    org_state: type[PS] | None
    request_resources: Mapping[str, AnyResourceDefinition] | None
    session_resources: Mapping[str, AnyResourceDefinition] | None
    user_resources: Mapping[str, AnyResourceDefinition] | None
    project_resources: Mapping[str, AnyResourceDefinition] | None
    org_resources: Mapping[str, AnyResourceDefinition] | None
    state: type[OS] | None
    target_state: Mapping[str, type[BaseModel]] | None


@overload
def handler(
    name: str,
    *,
    execute: TypedExecute[SS, US, PS, RS, OS],
    **options: Unpack[HandlerOptions[SS, US, PS, RS, OS]],
) -> Handler[Any, Any]: ...


@overload
def handler(
    name: str,
    *,
    execute: None = None,
    **options: Unpack[HandlerOptions[SS, US, PS, RS, OS]],
) -> Callable[[TypedExecute[SS, US, PS, RS, OS]], Handler[Any, Any]]: ...


def handler(
    name: str | None = None, *, execute: Execute | None = None, **options: Any
) -> Handler[Any, Any] | Callable[[Execute], Handler[Any, Any]]:
    """Define a handler block: ``handler(name=..., execute=fn, ...)`` or ``@handler(name=...)``.

    The state models it declares type ``ctx``: with ``session_state=Counter`` an
    ``execute(input, ctx: Context[Counter])`` sees ``ctx.session.state`` as a ``Counter``.
    """
    if execute is not None:
        return Handler(name, execute, **options)
    checked = Block(name, **options)  # a bad definition fails at the decorator line

    def decorate(fn: Execute) -> Handler[Any, Any]:
        return Handler(checked.name, fn, **options)

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
    """Run concurrently (at most ``limit`` at once); results in order.

    The first failure cancels the others before it propagates, so nothing keeps writing
    state after the run has failed.
    """
    semaphore = asyncio.Semaphore(limit) if limit is not None else None

    async def run(f: Callable[[], Awaitable[Any]]) -> Any:
        if semaphore is None:
            return await f()
        async with semaphore:
            return await f()

    tasks = [asyncio.ensure_future(run(f)) for f in factories]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class Sequencer(Block):
    """A pipeline: each step's output is the next step's input."""

    kind = "sequencer"

    def __init__(self, name: str | None, **options: Any) -> None:
        super().__init__(name, **options)
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
        if isinstance(blocks, Block) or not isinstance(blocks, Sequence):
            raise DefinitionError(f"{where} takes a list of blocks, got {blocks!r}")
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
        """Run ``block`` once per item of ``items(input, ctx)``; output: the outputs, in order."""
        where = f'sequencer "{self.name}".for_each()'
        if not callable(items) or isinstance(items, Block):
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

    async def _items(self, step: _Step, value: Any, frame: Frame) -> list[Any]:
        assert step.items is not None
        items = step.items(value, frame.context())
        if inspect.isawaitable(items):
            items = await items
        if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
            raise DefinitionError(
                f'sequencer "{self.name}".for_each(): the items function must return a list '
                f"(or another iterable of items), got {type(items).__name__}"
            )
        return list(items)

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
                block = step.blocks[0]
                value = await _gather_limited(
                    [
                        functools.partial(frame.run_child, block, item)
                        for item in await self._items(step, value, frame)
                    ],
                    step.max_concurrency,
                )
        return value


def sequencer(name: str | None = None, **options: Any) -> Sequencer:
    """Define a sequencer block; add steps with ``.then``, ``.parallel`` and ``.for_each``.

    ``state=Model`` gives it own state, which its descendants reach as ``ctx.sequencer``
    (nearest enclosing sequencer) or ``ctx.targets.<name>``.
    """
    return Sequencer(name, **options)


class Router(Block):
    """Runs one of its ``routes``, chosen per input by ``select(input, ctx)``."""

    kind = "router"

    def __init__(
        self,
        name: str | None,
        routes: Mapping[str, Block] | None,
        select: Callable[[Any, Any], Any] | None,
        **options: Any,
    ) -> None:
        super().__init__(name, **options)
        where = f'router "{self.name}"'
        if not isinstance(routes, Mapping) or not routes:
            raise DefinitionError(f"{where}: routes must be a non-empty dict of name → block")
        self.routes = {k: _check_block(b, f'{where} route "{k}"') for k, b in routes.items()}
        if not callable(select) or isinstance(select, Block):
            raise DefinitionError(f"{where}: select must be a function (input, ctx) -> route name")
        self.select = select

    def children(self) -> Sequence[Block]:
        return list(self.routes.values())

    async def execute_in(self, frame: Frame, input: Any) -> Any:
        choice = self.select(input, frame.context())
        if inspect.isawaitable(choice):
            choice = await choice
        block = self.routes.get(choice) if isinstance(choice, str) else None
        if block is None:
            raise DefinitionError(
                f'router "{self.name}": select returned {choice!r}, which is not a route; '
                f"routes: {', '.join(map(repr, self.routes))}"
            )
        return await frame.run_child(block, input)


def router(
    name: str | None = None,
    *,
    routes: Mapping[str, Block] | None = None,
    select: Callable[[Any, Any], Any] | None = None,
    **options: Any,
) -> Router:
    """Define a router: ``select(input, ctx)`` (sync or async) returns the route to run."""
    return Router(name, routes, select, **options)
