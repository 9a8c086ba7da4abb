"""Who may reach what over HTTP: identities, project membership and Windmill path ownership.

Pure rules, no I/O, written once and used by every router:

- an :class:`Identity` is a user id plus the projects the user is a member of;
- a project (a flow's ``projectId``, a Windmill workspace) is reachable only by its members;
- a session is reachable only by its owner, and — when it is bound to a project — only while
  the owner is a member of that project;
- a Windmill path ``u/<name>/…`` belongs to user ``<name>`` alone; every other path belongs to
  the members of the workspace.

Whatever the caller may not reach answers exactly like something that does not exist (404 with
the same code and message), so a refusal never confirms that an id is in use. In-process calls
(``FlowServer.run``, scripts run by ``flowstate run``) are trusted code and are not checked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from .errors import ProjectNotFoundError, ResourceNotFoundError, SessionNotFoundError

__all__ = [
    "Identity",
    "as_identity",
    "can_reach_path",
    "can_reach_project",
    "can_reach_session",
    "path_owner",
    "require_path",
    "require_project",
    "require_session",
]


@dataclass(frozen=True)
class Identity:
    """An authenticated caller: a user id and the ids of the projects the user belongs to.

    ``Identity("alice")`` is a member of no project; ``Identity("alice", frozenset({"p"}))``
    may name project ``p`` (a flow's ``projectId``, a Windmill workspace).
    """

    user_id: str
    projects: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not isinstance(self.user_id, str) or not self.user_id:
            raise TypeError(f"Identity.user_id must be a non-empty string, got {self.user_id!r}")
        projects: object = self.projects
        if isinstance(projects, str | bytes) or not isinstance(projects, Iterable):
            # A bare string would silently become a set of its characters.
            raise TypeError(
                "Identity.projects must be a set of project id strings, got "
                f"{type(projects).__name__}"
            )
        members = frozenset(projects)
        for project in members:
            if not isinstance(project, str) or not project:
                raise TypeError(
                    f"Identity.projects must hold non-empty project id strings, got {project!r}"
                )
        object.__setattr__(self, "projects", members)

    def is_member(self, project_id: str) -> bool:
        """Whether this caller belongs to ``project_id``."""
        return project_id in self.projects


def as_identity(value: str | Identity) -> Identity:
    """A bare user id is an identity with no project."""
    return value if isinstance(value, Identity) else Identity(value)


class _Bound(Protocol):
    """What the session rule needs of a session: its owner and its project."""

    @property
    def user_id(self) -> str: ...

    @property
    def project_id(self) -> str | None: ...


# ----------------------------------------------------------------------------------- rules


def can_reach_project(identity: Identity, project_id: str | None) -> bool:
    """No project is always fine; a named one needs membership."""
    return project_id is None or identity.is_member(project_id)


def can_reach_session(identity: Identity, session: _Bound) -> bool:
    """The owner, and — for a session bound to a project — only while a member of it."""
    return session.user_id == identity.user_id and can_reach_project(identity, session.project_id)


def path_owner(path: str) -> str | None:
    """The user a Windmill path belongs to (``u/alice/etl`` → ``alice``), or None."""
    parts = path.split("/")
    if len(parts) >= 2 and parts[0] == "u" and parts[1]:
        return parts[1]
    return None


def can_reach_path(identity: Identity, workspace: str, path: str) -> bool:
    """Members of the workspace reach its paths; ``u/<name>/…`` only user ``<name>`` does."""
    if not identity.is_member(workspace):
        return False
    owner = path_owner(path)
    return owner is None or owner == identity.user_id


# ----------------------------------------------------------------------------------- checks


def require_project(identity: Identity, project_id: str | None) -> None:
    """Raise the same :class:`ProjectNotFoundError` for a foreign and a missing project."""
    if not can_reach_project(identity, project_id):
        raise ProjectNotFoundError(f'project "{project_id}" not found')


def require_session(identity: Identity, session: _Bound | None, session_id: str) -> None:
    """Raise :class:`SessionNotFoundError` unless ``session`` exists and is reachable."""
    if session is None or not can_reach_session(identity, session):
        raise SessionNotFoundError(f'session "{session_id}" not found')


def require_path(identity: Identity, workspace: str, path: str) -> str:
    """``path`` when the caller may read and write it, else the not-found of a missing path."""
    require_project(identity, workspace)
    if not can_reach_path(identity, workspace, path):
        raise ResourceNotFoundError(f'resource "{path}" does not exist in workspace "{workspace}"')
    return path
