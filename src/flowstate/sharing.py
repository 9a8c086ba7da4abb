"""Cross-flow sharing: the startup check that flows sharing user/project records agree.

Pure logic. Flows that do not isolate a scope read and write the same records for it, so a
field two flows both declare must mean the same thing in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import CrossFlowSchemaConflictError
from .flow import Flow
from .resources import ResourceCollectionDefinition
from .schema import Incompatibility, Schema, compare, type_name

__all__ = ["SharingReport", "check_shared_scopes"]

SHARED_SCOPES = ("user", "project")


@dataclass(frozen=True)
class SharingReport:
    """Compatible-but-different pairs, each worth a warning."""

    warnings: tuple[str, ...]


def _signature(schema: Schema) -> dict[str, str] | None:
    if schema.model is None:
        return None
    return {n: type_name(f.annotation) for n, f in schema.model.model_fields.items()}


def _first_conflict(a: Schema, b: Schema, prefix: str = "") -> Incompatibility | None:
    if a.model is None or b.model is None:
        return None
    for name, fa in a.model.model_fields.items():
        fb = b.model.model_fields.get(name)
        if fb is not None:
            problem = compare(fa.annotation, fb.annotation, prefix + name)
            if problem is not None:
                return problem
    return None


def _isolated(flow: Flow, scope: str) -> bool:
    return flow.isolate_user_state if scope == "user" else flow.isolate_project_state


def _raise(scope: str, a: Flow, b: Flow, problem: Incompatibility) -> None:
    flag = "isolate_user_state" if scope == "user" else "isolate_project_state"
    raise CrossFlowSchemaConflictError(
        f'Flows "{a.kind}" and "{b.kind}" declare incompatible {scope} state schemas '
        f"({problem.reason}: {problem.detail}). Set {flag}=True on one of the flows to opt out "
        "of cross-flow sharing, or reconcile the schemas.",
        scope=scope,
        field=problem.path,
        flow_a=a.kind,
        flow_b=b.kind,
        reason=problem.reason,
        detail=problem.detail,
    )


def check_shared_scopes(flows: Sequence[Flow]) -> SharingReport:
    """Compare every pair of flows sharing a scope; raise on the first incompatible field."""
    warnings: list[str] = []
    for scope in SHARED_SCOPES:
        sharing = [f for f in flows if not _isolated(f, scope)]
        for i, a in enumerate(sharing):
            for b in sharing[i + 1 :]:
                sa, sb = a.scopes[scope], b.scopes[scope]
                problem = _first_conflict(sa.schema, sb.schema)
                if problem is not None:
                    _raise(scope, a, b, problem)
                differs = _signature(sa.schema) != _signature(sb.schema)
                for name in sorted(set(sa.resources) & set(sb.resources)):
                    ra, rb = sa.resources[name], sb.resources[name]
                    if ra is rb:
                        continue
                    if isinstance(ra, ResourceCollectionDefinition) != isinstance(
                        rb, ResourceCollectionDefinition
                    ):
                        kinds = [
                            "collection"
                            if isinstance(r, ResourceCollectionDefinition)
                            else "resource"
                            for r in (ra, rb)
                        ]
                        _raise(
                            scope,
                            a,
                            b,
                            Incompatibility(
                                "incompatible-resources", f"resources.{name}", kinds[0], kinds[1]
                            ),
                        )
                    problem = _first_conflict(ra.schema, rb.schema, f"resources.{name}.")
                    if problem is not None:
                        _raise(scope, a, b, problem)
                    differs = differs or _signature(ra.schema) != _signature(rb.schema)
                if differs:
                    warnings.append(
                        f'Flows "{a.kind}" and "{b.kind}" share {scope} state with different '
                        "(compatible) schemas; each sees only the fields it declares."
                    )
    return SharingReport(tuple(warnings))
