"""Windmill-style paths: the script context, the state path rule, path checks and store keys.

Pure logic, no I/O. A Windmill path (``u/alice/etl``, ``f/team/flow``) names a script, a flow,
a schedule or a resource; a *state* is a resource at the path computed by
:meth:`ScriptContext.state_path` (Windmill's rule). Every path and id is checked here
before it becomes a store key, so no value can address records outside its own area.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import quote, unquote

from ..errors import KeyPatternError
from ..layout import MAX_ID_BYTES, check_id, check_text, project_collection_root

__all__ = [
    "FLOW_USER_STATES",
    "JOBS",
    "SCRIPTS",
    "ScriptContext",
    "check_flow_key",
    "check_id",
    "check_path",
    "check_script_path",
    "flow_state_key",
    "item_key",
    "item_path",
    "job_key",
    "step_ids",
]

SCRIPTS = "_scripts"
"""Project collection holding states and resources, one record per Windmill path."""
FLOW_USER_STATES = "_flow_user_states"
"""Project collection holding flow user states, one record per flow run (fields = keys)."""
JOBS = "_jobs"
"""Project collection mapping a running flow step's job id to its flow run (root job) id."""

MAX_PATH = 512


def check_path(value: object, what: str = "path") -> str:
    """A Windmill path such as ``u/alice/etl``: non-empty ``/``-separated segments.

    Rejected: empty paths, leading, trailing or doubled ``/``, ``.`` and ``..`` segments,
    backslashes, control characters and NUL, and paths over 512 bytes (UTF-8).
    """
    value = check_text(value, what, max_bytes=MAX_PATH)
    if "\\" in value:
        raise KeyPatternError(f'{what} {value!r} must use "/" as its separator, not "\\"')
    for segment in value.split("/"):
        if not segment:
            raise KeyPatternError(
                f'{what} {value!r} must not start or end with "/" or contain "//"'
            )
        if segment in (".", ".."):
            raise KeyPatternError(f'{what} {value!r} must not contain "{segment}" segments')
    return value


def check_script_path(value: object, what: str = "script path") -> str:
    """A script path: like :func:`check_path`, but a trailing ``/`` is allowed (a folder)."""
    if isinstance(value, str) and value.endswith("/") and len(value) > 1:
        check_path(value[:-1], what)
        return value
    return check_path(value, what)


def check_flow_key(value: object) -> str:
    """A flow user state key: any non-empty string without control characters."""
    return check_text(value, "flow user state key", max_bytes=MAX_ID_BYTES)


def _encode(path: str) -> str:
    return "/".join(quote(segment, safe="@:+,=") for segment in path.split("/"))


def item_key(project: str, path: str) -> str:
    """Store key of the state or resource at Windmill ``path`` in ``project``."""
    return project_collection_root(project, SCRIPTS) + _encode(check_path(path))


def item_path(project: str, key: str) -> str:
    """The Windmill path of a key built by :func:`item_key` (inverse)."""
    root = project_collection_root(project, SCRIPTS)
    if not key.startswith(root):
        raise ValueError(f"{key!r} is not a script state or resource key of project {project!r}")
    return "/".join(unquote(segment) for segment in key[len(root) :].split("/"))


def flow_state_key(project: str, flow_run_id: str) -> str:
    """Store key of one flow run's user state (each user state key is a field)."""
    return project_collection_root(project, FLOW_USER_STATES) + quote(
        check_id(flow_run_id, "flow run id"), safe=""
    )


def job_key(project: str, job_id: str) -> str:
    """Store key of a running flow step's job record."""
    return project_collection_root(project, JOBS) + quote(check_id(job_id, "job id"), safe="")


def step_ids(count: int) -> list[str]:
    """Windmill's step ids: ``a`` … ``z``, then ``aa``, ``ab`` …"""
    out = []
    for n in range(count):
        letters = ""
        n += 1
        while n:
            n, rem = divmod(n - 1, 26)
            letters = chr(ord("a") + rem) + letters
        out.append(letters)
    return out


@dataclass(frozen=True)
class ScriptContext:
    """Who and what is running: set by the runner, read by :mod:`flowstate.scripts`.

    ``flow_run_id`` is the root job id of the current flow run (for a standalone script run,
    the run's own job id), which keys the flow user state.
    """

    username: str = "user"
    project: str = "default"
    store_url: str | None = None
    script_path: str | None = None
    flow_path: str | None = None
    step_id: str | None = None
    schedule: str | None = None
    job_id: str | None = None
    flow_run_id: str | None = None
    state_path_override: str | None = None

    def __post_init__(self) -> None:
        check_id(self.username, "username", segment=True)
        check_id(self.project, "project id")
        if self.script_path is not None:
            check_script_path(self.script_path)
        if self.flow_path is not None:
            check_path(self.flow_path, "flow path")
        if self.step_id is not None:
            check_id(self.step_id, "step id", segment=True)
        if self.schedule is not None:
            check_path(self.schedule, "schedule")
        if self.job_id is not None:
            check_id(self.job_id, "job id")
        if self.flow_run_id is not None:
            check_id(self.flow_run_id, "flow run id")
        if self.state_path_override is not None:
            check_path(self.state_path_override, "state path")

    @property
    def trigger(self) -> str:
        """The username for a scheduled run, else the literal ``user``."""
        return self.username if self.schedule is not None else "user"

    @property
    def state_path(self) -> str:
        """Windmill's state path rule (``WM_STATE_PATH`` wins when a worker set it)."""
        if self.state_path_override is not None:
            return self.state_path_override
        if self.flow_path is not None:
            return f"{self.flow_path}/{self.step_id or 'nostep'}_{self.trigger}"
        if self.script_path is not None:
            script_path = self.script_path
            if script_path.endswith("/"):
                script_path += "state"
            return f"{script_path}/{self.trigger}"
        return f"u/{self.username}/tmp_state"

    def evolve(self, **changes: object) -> ScriptContext:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]
