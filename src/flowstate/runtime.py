"""Running an action: the per-run context blocks see, block frames, targets and events."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from pydantic import BaseModel
from typing_extensions import TypeVar as TypeVarDefault

from .blocks import Block, Sequencer
from .schema import Schema
from .scopes import ScopeBinding, ScopeHandle
from .state import StateCell, StateHandle
from .stores.memory import MemoryStore
from .values import Event

__all__ = ["Context", "Event", "Frame", "Run", "Targets"]

log = logging.getLogger("flowstate.runtime")

SessionS = TypeVarDefault("SessionS", default=Any)
UserS = TypeVarDefault("UserS", default=Any)
ProjectS = TypeVarDefault("ProjectS", default=Any)
RequestS = TypeVarDefault("RequestS", default=Any)
SelfS = TypeVarDefault("SelfS", default=Any)
M = TypeVar("M", bound=BaseModel)

if TYPE_CHECKING:
    from .flow import Flow


Sink = Callable[[Event], Awaitable[None]]


class Run:
    """One execution of one action: ids, scope bindings, block-own state, event sequence."""

    def __init__(
        self,
        *,
        flow_kind: str,
        action: str,
        request_id: str,
        session_id: str,
        user_id: str,
        project_id: str | None,
        sink: Sink | None = None,
        flow: Flow | None = None,
    ) -> None:
        self.flow = flow
        self.flow_kind = flow_kind
        self.action = action
        self.request_id = request_id
        self.session_id = session_id
        self.user_id = user_id
        self.project_id = project_id
        self.bindings: dict[str, ScopeBinding] = {}
        self.events: list[Event] = []
        self.local_store = MemoryStore()
        self._seq = itertools.count(1)
        self._frame_ids = itertools.count(1)
        self._sink = sink

    async def emit(
        self, type_: str, data: dict[str, Any], client_data: dict[str, Any] | None = None
    ) -> Event:
        event = Event(type_, next(self._seq), self.request_id, data, client_data)
        self.events.append(event)
        if self._sink is not None:
            await self._sink(event)
        return event

    def next_frame_id(self) -> int:
        return next(self._frame_ids)

    def own_state_schema(self, block: Block) -> Schema:
        """The schema of a block's own state: as merged by the flow, else its ``state``."""
        if self.flow is not None:
            return self.flow.own_state_schema(block)
        return Schema.of(block.state)


class Frame:
    """One running block: its place in the tree and its own state container."""

    def __init__(self, run: Run, block: Block, parent: Frame | None) -> None:
        self.run = run
        self.block = block
        self.parent = parent
        self.id = run.next_frame_id()
        self._cell: StateCell | None = None
        self._context: Context[Any, Any, Any, Any, Any] | None = None

    def own_cell(self) -> StateCell:
        """The block-own state container, created on first use; it lives for the run."""
        if self._cell is None:
            self._cell = StateCell(
                self.run.local_store,
                f"blocks/{self.id}",
                self.run.own_state_schema(self.block),
                label=f'state of block "{self.block.name}"',
                scope="block",
            )
            self._cell.loaded = True
        return self._cell

    def ancestors(self) -> list[Frame]:
        """The enclosing frames, nearest first."""
        out = []
        frame = self.parent
        while frame is not None:
            out.append(frame)
            frame = frame.parent
        return out

    def context(self) -> Context[Any, Any, Any, Any, Any]:
        if self._context is None:
            self._context = Context(self)
        return self._context

    async def run_child(self, block: Block, input: Any) -> Any:
        return await execute_block(self.run, block, input, self)


async def execute_block(run: Run, block: Block, input: Any, parent: Frame | None) -> Any:
    """Validate input, run the block in a new frame, validate output."""
    value = block.validate_input(input)
    frame = Frame(run, block, parent)
    result = await block.execute_in(frame, value)
    return block.validate_output(result)


class Targets:
    """``ctx.targets.<name>``: the named ancestor block's own state, or None.

    The handle is typed (and its ``state`` built) by the block's ``target_state[name]`` model
    when it declares one, else by the ancestor's own ``state`` model.
    """

    def __init__(self, frame: Frame) -> None:
        self._frame = frame

    def __getattr__(self, name: str) -> StateHandle[Any] | None:
        if name.startswith("__"):
            raise AttributeError(name)
        return self.get(name)

    def __getitem__(self, name: str) -> StateHandle[Any] | None:
        return self.get(name)

    def get(self, name: str, model: type[BaseModel] | None = None) -> StateHandle[Any] | None:
        """The nearest ancestor named ``name`` (its own state), or None if none is running."""
        for ancestor in self._frame.ancestors():
            if ancestor.block.name == name:
                view = model or self._frame.block.target_state.get(name) or ancestor.block.state
                return StateHandle(ancestor.own_cell(), view)
        return None

    def __repr__(self) -> str:
        names = [a.block.name for a in self._frame.ancestors()]
        return f"<Targets of {self._frame.block.name!r}: ancestors {names}>"


class Context(Generic[SessionS, UserS, ProjectS, RequestS, SelfS]):
    """What a block's ``execute(input, ctx)`` receives.

    Type parameters, in order: session, user, project, request and block-own state models
    (each defaults to ``Any``), so ``Context[Counter]`` types ``ctx.session.state`` as
    ``Counter`` and ``Context[Any, Prefs]`` types ``ctx.user.state`` as ``Prefs``.
    """

    def __init__(self, frame: Frame) -> None:
        self._frame = frame
        run = frame.run
        decl = frame.block.declarations
        b = run.bindings
        self.request: ScopeHandle[RequestS] = b["request"].handle(decl["request"].state)
        self.session: ScopeHandle[SessionS] = b["session"].handle(decl["session"].state)
        self.user: ScopeHandle[UserS] = b["user"].handle(decl["user"].state)
        project = b.get("project")
        self.project: ScopeHandle[ProjectS] | None = (
            project.handle(decl["project"].state) if project is not None else None
        )
        self.targets = Targets(frame)
        self._self: StateHandle[SelfS] | None = None

    @property
    def org(self) -> ScopeHandle[ProjectS] | None:
        """Alias of :attr:`project` (flow-state.dev's name)."""
        return self.project

    @property
    def self(self) -> StateHandle[SelfS] | None:
        """This block's own state for this execution (None when it declares no ``state``)."""
        if self._frame.block.state is None:
            return None
        if self._self is None:
            self._self = StateHandle(self._frame.own_cell(), self._frame.block.state)
        return self._self

    @property
    def sequencer(self) -> StateHandle[Any] | None:
        """The nearest enclosing sequencer's own state, or None outside a sequencer."""
        for ancestor in self._frame.ancestors():
            if isinstance(ancestor.block, Sequencer):
                return StateHandle(ancestor.own_cell(), ancestor.block.state)
        return None

    @overload
    def get_target(self, name: str) -> StateHandle[Any] | None: ...

    @overload
    def get_target(self, name: str, model: type[M]) -> StateHandle[M] | None: ...

    def get_target(
        self, name: str, model: type[BaseModel] | None = None
    ) -> StateHandle[Any] | None:
        """Dynamic access to a named ancestor's own state (None if none is running).

        ``model`` (optional) types the handle and its ``state``, like ``target_state``.
        """
        if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(
                f"get_target model must be a pydantic BaseModel subclass, got {model!r}"
            )
        return self.targets.get(name, model)

    @property
    def block_name(self) -> str:
        return self._frame.block.name

    @property
    def request_id(self) -> str:
        return self._frame.run.request_id

    @property
    def session_id(self) -> str:
        return self._frame.run.session_id

    @property
    def user_id(self) -> str:
        return self._frame.run.user_id

    @property
    def project_id(self) -> str | None:
        return self._frame.run.project_id

    @property
    def flow_kind(self) -> str:
        return self._frame.run.flow_kind

    @property
    def action(self) -> str:
        return self._frame.run.action

    def log(self, message: str) -> None:
        log.info("[%s %s] %s", self._frame.run.flow_kind, self._frame.block.name, message)
