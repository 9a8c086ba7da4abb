"""Cross-flow sharing: the startup check that flows sharing user/project records agree.

Pure logic. Flows that do not isolate a scope read and write the same records for it, so a
field two flows both declare must mean the same thing in both. Identical declarations pass
silently; compatible but different ones (extra fields, narrower types, other defaults) are
reported as warnings; incompatible ones raise :class:`CrossFlowSchemaConflictError`:
incompatible types, Literal sets with no value in common, a field one flow requires and the
other does not declare, and one collection with different caps or eviction policies.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .errors import CrossFlowSchemaConflictError
from .flow import Flow, ScopeSpec
from .resources import AnyResourceDefinition, ResourceCollectionDefinition
from .schema import Incompatibility, Schema, _unwrap, compare, type_name

__all__ = ["SHARED_SCOPES", "SharingReport", "check_shared_scopes"]

SHARED_SCOPES = ("user", "project")


@dataclass(frozen=True)
class SharingReport:
    """Compatible-but-different pairs of flows, each worth a warning."""

    warnings: tuple[str, ...]


def _shape(ann: Any, depth: int = 0) -> Any:
    """A structural description of an annotation: nested models expand to their fields."""
    ann = _unwrap(ann)
    if isinstance(ann, type) and issubclass(ann, BaseModel) and depth < 8:
        return {name: _field_shape(f, depth + 1) for name, f in sorted(ann.model_fields.items())}
    args = get_args(ann)
    if get_origin(ann) is not None and args and depth < 8:
        return [type_name(get_origin(ann)), [_shape(a, depth + 1) for a in args]]
    return type_name(ann)


def _field_shape(info: Any, depth: int = 0) -> Any:
    if info.default is not PydanticUndefined:
        default: Any = info.default
    elif info.default_factory is not None:
        default = "<factory>"
    else:
        default = "<required>"
    try:
        default = json.dumps(default, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        default = repr(default)
    return [_shape(info.annotation, depth), default]


def _differences(a: Schema, b: Schema, kind_a: str, kind_b: str, prefix: str) -> list[str]:
    """Human-readable differences between two compatible schemas (empty when identical)."""
    if a.model is None or b.model is None:
        if (a.model is None) != (b.model is None):
            free, typed = (kind_a, kind_b) if a.model is None else (kind_b, kind_a)
            return [f'{prefix}free-form in "{free}" but typed in "{typed}"']
        return []
    fa, fb = a.model.model_fields, b.model.model_fields
    out: list[str] = []
    for name in sorted(set(fa) | set(fb)):
        if name not in fb:
            out.append(f'field "{prefix}{name}" only in "{kind_a}"')
        elif name not in fa:
            out.append(f'field "{prefix}{name}" only in "{kind_b}"')
        elif _field_shape(fa[name]) != _field_shape(fb[name]):
            out.append(
                f'field "{prefix}{name}" differs ({type_name(fa[name].annotation)} in '
                f'"{kind_a}", {type_name(fb[name].annotation)} in "{kind_b}", or its default)'
            )
    return out


def _first_conflict(a: Schema, b: Schema, prefix: str = "") -> Incompatibility | None:
    """The first field two flows cannot share: incompatible types (including Literal sets
    with no value in common), or a field one flow requires and the other does not declare
    (that flow would create the record without it, and the first flow could not read it)."""
    if a.model is None or b.model is None:
        return None
    fields_a, fields_b = a.model.model_fields, b.model.model_fields
    for name, fa in fields_a.items():
        fb = fields_b.get(name)
        if fb is not None:
            problem = compare(fa.annotation, fb.annotation, prefix + name)
            if problem is not None:
                return problem
        elif fa.is_required():
            return Incompatibility(
                "missing-required-field",
                prefix + name,
                f"required {type_name(fa.annotation)}",
                "absent",
            )
    for name, fb in fields_b.items():
        if name not in fields_a and fb.is_required():
            return Incompatibility(
                "missing-required-field",
                prefix + name,
                "absent",
                f"required {type_name(fb.annotation)}",
            )
    return None


def _describe_cap(definition: ResourceCollectionDefinition) -> str:
    return f"max_instances={definition.max_instances}, eviction={definition.eviction!r}"


def _isolated(flow: Flow, scope: str) -> bool:
    return flow.isolate_user_state if scope == "user" else flow.isolate_project_state


def _participates(spec: ScopeSpec) -> bool:
    """A flow that declares no state and no resources for a scope takes no part in sharing."""
    return spec.schema.model is not None or bool(spec.resources)


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


def _check_versions(scope: str, a: Flow, b: Flow, what: str, va: int, vb: int) -> None:
    """Flows sharing a record must agree on the schema version it is written at."""
    if va != vb:
        _raise(
            scope,
            a,
            b,
            Incompatibility("schema-version", what, f"schema_version={va}", f"schema_version={vb}"),
        )


def _kind_name(definition: AnyResourceDefinition) -> str:
    if isinstance(definition, ResourceCollectionDefinition):
        return f'collection "{definition.pattern.pattern}"'
    return "resource"


def _compare_resource(
    scope: str, a: Flow, b: Flow, name: str, ra: AnyResourceDefinition, rb: AnyResourceDefinition
) -> list[str]:
    """Raise on an incompatible shared resource; return its compatible differences."""
    path = f"resources.{name}"
    if isinstance(ra, ResourceCollectionDefinition) != isinstance(rb, ResourceCollectionDefinition):
        _raise(
            scope,
            a,
            b,
            Incompatibility("incompatible-resources", path, _kind_name(ra), _kind_name(rb)),
        )
    problem = _first_conflict(ra.schema, rb.schema, f"{path}.")
    if problem is not None:
        _raise(scope, a, b, problem)
    _check_versions(scope, a, b, path, ra.lineage.version, rb.lineage.version)
    out = _differences(ra.schema, rb.schema, a.kind, b.kind, f"{path}.")
    if isinstance(ra, ResourceCollectionDefinition) and isinstance(
        rb, ResourceCollectionDefinition
    ):
        if (ra.max_instances, ra.eviction) != (rb.max_instances, rb.eviction):
            # One collection, two caps: each flow's creates would evict by its own rule
            # the other flow's instances (a cap-3 flow emptying a cap-100 flow's collection).
            _raise(
                scope,
                a,
                b,
                Incompatibility(
                    "incompatible-collections", path, _describe_cap(ra), _describe_cap(rb)
                ),
            )
        for attr in ("pattern",):
            va, vb = getattr(ra, attr), getattr(rb, attr)
            if attr == "pattern":
                va, vb = va.pattern, vb.pattern
            if va != vb:
                out.append(f'{path}: {attr} {va!r} in "{a.kind}" vs {vb!r} in "{b.kind}"')
    return out


def check_shared_scopes(flows: Sequence[Flow]) -> SharingReport:
    """Compare every pair of flows sharing a scope; raise on the first incompatible field.

    Only user and project scopes are shared (sessions and requests belong to one flow), and
    only between flows that do not isolate that scope and declare something for it.
    """
    warnings: list[str] = []
    for scope in SHARED_SCOPES:
        sharing = [f for f in flows if not _isolated(f, scope) and _participates(f.scopes[scope])]
        for i, a in enumerate(sharing):
            for b in sharing[i + 1 :]:
                sa, sb = a.scopes[scope], b.scopes[scope]
                problem = _first_conflict(sa.schema, sb.schema)
                if problem is not None:
                    _raise(scope, a, b, problem)
                if sa.schema.model is not None and sb.schema.model is not None:
                    _check_versions(scope, a, b, "state", sa.lineage.version, sb.lineage.version)
                differences = _differences(sa.schema, sb.schema, a.kind, b.kind, "")
                for name in sorted(set(sa.resources) | set(sb.resources)):
                    ra, rb = sa.resources.get(name), sb.resources.get(name)
                    if ra is None or rb is None:
                        owner = a.kind if rb is None else b.kind
                        differences.append(f'resource "{name}" only in "{owner}"')
                    elif ra is not rb:
                        differences.extend(_compare_resource(scope, a, b, name, ra, rb))
                if differences:
                    flag = "isolate_user_state" if scope == "user" else "isolate_project_state"
                    shown = "; ".join(differences[:5])
                    more = f" (and {len(differences) - 5} more)" if len(differences) > 5 else ""
                    warnings.append(
                        f'Flows "{a.kind}" and "{b.kind}" share {scope} state with different '
                        f"but compatible schemas: {shown}{more}. Both read and write the same "
                        f"{scope} records; each validates only the fields it knows. Reconcile "
                        f"the schemas, or set {flag}=True on one flow to keep them apart."
                    )
    return SharingReport(tuple(warnings))
