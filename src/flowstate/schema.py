"""Schemas: Pydantic models as state schemas, their compatibility check and their merging.

Pure logic, no I/O. A block declares a *partial* model with only the fields it uses; at
``define_flow`` all partial models of a scope merge into one combined :class:`Schema`
("bubbling"). Two declarations of one field must be compatible (see :func:`compare`).
"""

from __future__ import annotations

import copy
import functools
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal, Union, cast, get_args, get_origin

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from .errors import (
    DefinitionError,
    SchemaConflictError,
    StateValidationError,
    describe_errors,
)
from .limits import json_problem
from .snapshot import freeze

__all__ = [
    "Declaration",
    "Incompatibility",
    "Schema",
    "compare",
    "copy_json",
    "merge_declarations",
    "type_name",
]

JSON = Any


@dataclass(frozen=True)
class Incompatibility:
    """Why two annotations cannot share one field: ``reason`` code plus a readable detail."""

    reason: str
    path: str
    left: str
    right: str

    @property
    def detail(self) -> str:
        return f'field "{self.path}": {self.left} vs {self.right}'


@dataclass(frozen=True)
class Declaration:
    """One partial schema for one scope, and who declared it (a block or the flow)."""

    model: type[BaseModel]
    declared_by: str


# ---------------------------------------------------------------------------- type helpers


def _unwrap(ann: Any) -> Any:
    """Strip ``Annotated`` and ``Optional`` so that only the value type is compared."""
    while True:
        origin = get_origin(ann)
        if origin is Annotated:
            ann = get_args(ann)[0]
            continue
        if origin in (Union, types.UnionType):
            args = [a for a in get_args(ann) if a is not type(None)]
            if len(args) == 1:
                ann = args[0]
                continue
        return ann


def type_name(ann: Any) -> str:
    """A short readable name for an annotation: ``str``, ``list[int]``, ``Literal['a', 'b']``."""
    ann = _unwrap(ann)
    if ann is Any:
        return "Any"
    origin = get_origin(ann)
    if origin is Literal:
        return "Literal[" + ", ".join(repr(v) for v in get_args(ann)) + "]"
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(ann))
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in get_args(ann))}]"
    if isinstance(ann, type):
        return ann.__name__
    return str(ann).replace("typing.", "")


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _literal_base(values: tuple[Any, ...]) -> type | None:
    kinds = {type(v) for v in values}
    return kinds.pop() if len(kinds) == 1 else None


_CONTAINER_ALIASES: dict[Any, Any] = {
    typing.List: list,  # noqa: UP006
    typing.Dict: dict,  # noqa: UP006
    typing.Set: set,  # noqa: UP006
    typing.Tuple: tuple,  # noqa: UP006
}


def _origin(ann: Any) -> Any:
    origin = get_origin(ann)
    return _CONTAINER_ALIASES.get(origin, origin)


def compare(left: Any, right: Any, path: str) -> Incompatibility | None:
    """Return why ``left`` and ``right`` cannot describe the same field, or None if they can.

    Optional, Annotated and defaults are ignored; nested models compare on shared fields;
    containers compare element types; a Literal is compatible with its values' base type.
    """
    a, b = _unwrap(left), _unwrap(right)
    if a is Any or b is Any or a == b:
        return None

    def bad() -> Incompatibility:
        return Incompatibility("incompatible-types", path, type_name(a), type_name(b))

    if _is_model(a) and _is_model(b):
        for name, fa in a.model_fields.items():
            fb = b.model_fields.get(name)
            if fb is not None:
                problem = compare(fa.annotation, fb.annotation, f"{path}.{name}")
                if problem is not None:
                    return problem
        return None
    oa, ob = get_origin(a), get_origin(b)
    if oa is Literal or ob is Literal:
        base_a = _literal_base(get_args(a)) if oa is Literal else a
        base_b = _literal_base(get_args(b)) if ob is Literal else b
        if base_a is None or base_a != base_b:
            return bad()
        if oa is Literal and ob is Literal and not set(get_args(a)) & set(get_args(b)):
            # Each side rejects every value of the other: no value can satisfy both.
            return Incompatibility("disjoint-literals", path, type_name(a), type_name(b))
        return None
    ca, cb = _origin(a), _origin(b)
    if ca is not None and ca == cb and ca not in (Union, types.UnionType):
        args_a, args_b = get_args(a), get_args(b)
        if len(args_a) != len(args_b):
            return None if not args_a or not args_b else bad()
        for x, y in zip(args_a, args_b, strict=True):
            problem = compare(x, y, f"{path}[]")
            if problem is not None:
                return bad() if problem.path == f"{path}[]" else problem
        return None
    if ca is None and cb is not None and a in (list, dict, set, tuple) and a is cb:
        return None  # bare ``list`` vs ``list[int]``
    if cb is None and ca is not None and b in (list, dict, set, tuple) and b is ca:
        return None
    return bad()


def _narrower(a: Any, b: Any) -> Any:
    """Of two compatible annotations, the one to store under (Literal beats its base type)."""
    ua, ub = _unwrap(a), _unwrap(b)
    if ua is Any:
        return b
    if get_origin(ua) is Literal and get_origin(ub) is Literal:
        # Both declarers' rules hold, so only the values both accept remain.
        values = [v for v in get_args(ua) if v in set(get_args(ub))]
        return Literal[tuple(values)]
    if get_origin(ub) is Literal:
        return b
    if _is_model(ua) and _is_model(ub) and ua is not ub:
        return _merge_models(ua, ub)
    return a


def _merge_models(a: type[BaseModel], b: type[BaseModel]) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, fa in a.model_fields.items():
        fb = b.model_fields.get(name)
        fields[name] = _merged_field(fa, fb) if fb is not None else (fa.annotation, fa)
    for name, fb in b.model_fields.items():
        if name not in fields:
            fields[name] = (fb.annotation, fb)
    return create_model(a.__name__, __base__=None, **fields)


def _merged_field(fa: FieldInfo, fb: FieldInfo) -> tuple[Any, FieldInfo]:
    ann = _narrower(fa.annotation, fb.annotation)
    info = fa if not fa.is_required() or fb.is_required() else fb
    return ann, info


@dataclass(frozen=True)
class _FieldDecl:
    """One declaration of one field: who declared it, and how."""

    owner: str
    annotation: Any
    info: FieldInfo

    @cached_property
    def adapter(self) -> TypeAdapter[Any]:
        return _field_adapter(self.annotation, self.info)

    def accepts(self, value: JSON) -> bool:
        try:
            self.adapter.validate_python(value)
        except ValidationError:
            return False
        return True


def _field_adapter(annotation: Any, info: FieldInfo) -> TypeAdapter[Any]:
    return TypeAdapter(cast(Any, Annotated[annotation, info]))


_OPAQUE = object()  # a default that cannot be compared (a factory that needs other fields)


def _default_json(info: FieldInfo) -> tuple[bool, JSON]:
    """(has_default, the default in JSON form) of one declaration."""
    if info.default is not PydanticUndefined:
        value = info.default
    elif info.default_factory is not None:
        if info.default_factory_takes_validated_data:
            return True, _OPAQUE
        value = info.default_factory()  # type: ignore[call-arg]
    else:
        return False, None
    try:
        return True, to_jsonable_python(value)
    except Exception:  # an exotic default: never equal to another one
        return True, _OPAQUE


def _json_key(value: JSON) -> str:
    if value is _OPAQUE:
        return f"<opaque {id(value)}>"
    return json.dumps(value, sort_keys=True, default=repr)


def _conflict(
    flow: str, scope: str, name: str, a: _FieldDecl, b: _FieldDecl, why: str, *, fix: str = ""
) -> SchemaConflictError:
    return SchemaConflictError(
        f'Flow "{flow}": {scope} state field "{name}" is declared as '
        f"{type_name(a.annotation)} by {a.owner} and as {type_name(b.annotation)} by "
        f"{b.owner} ({why}). {fix or 'Rename one of the fields or make the types agree.'}"
    )


_DEFAULT_FIX = (
    "Give the field one default in every declaration, or declare it in the flow-level schema "
    "(whose default then wins)."
)


def _merge_field(
    name: str, decls: list[_FieldDecl], *, flow: str, scope: str
) -> tuple[Any, FieldInfo, list[TypeAdapter[Any]]]:
    """The merged (annotation, FieldInfo) of one field, plus the checks every value must also
    pass so that each declarer's own rules hold (constraints, Literal values, nested models'
    validators). Raises SchemaConflictError when the defaults are ambiguous."""
    annotation = decls[0].annotation
    for d in decls[1:]:
        annotation = _narrower(annotation, d.annotation)
    chosen = decls[0]
    override: list[Any] = []
    with_default = [(d, v) for d in decls for has, v in [_default_json(d.info)] if has]
    distinct = {_json_key(v): (d, v) for d, v in with_default}
    flow_level = [(d, v) for d, v in with_default if d.owner.startswith("flow ")]
    if flow_level and len(distinct) > 1:
        # The flow author reconciles the blocks: the flow-level default wins, if every
        # declaration accepts it.
        chosen, value = flow_level[0]
        for other in decls:
            if value is not _OPAQUE and not other.accepts(value):
                raise _conflict(
                    flow,
                    scope,
                    name,
                    chosen,
                    other,
                    f"invalid-default: the flow-level default {value!r} is not valid for "
                    f"{other.owner}",
                    fix=_DEFAULT_FIX,
                )
    elif len(distinct) == 1:
        chosen = with_default[0][0]
    elif len(distinct) > 1:
        nested = _is_model(_unwrap(annotation)) and all(
            isinstance(v, dict) for _, v in with_default
        )
        if nested:
            # Nested models: like their types, their defaults compare on shared fields only.
            merged: dict[str, Any] = {}
            first: dict[str, _FieldDecl] = {}
            for d, v in with_default:
                for key, item in v.items():
                    if key in merged and _json_key(merged[key]) != _json_key(item):
                        raise _conflict(
                            flow,
                            scope,
                            name,
                            first[key],
                            d,
                            f'differing-defaults: field "{name}.{key}": {merged[key]!r} vs '
                            f"{item!r}",
                            fix=_DEFAULT_FIX,
                        )
                    merged.setdefault(key, item)
                    first.setdefault(key, d)
            chosen = with_default[0][0]
            override.append(_unwrap(annotation).model_validate(merged))
        else:
            # A default that some declarer rejects cannot be the state's default; of the
            # others there must be exactly one, or the choice would be arbitrary.
            valid = {
                _json_key(v): (d, v) for d, v in with_default if all(o.accepts(v) for o in decls)
            }
            shown = list(valid.values()) if len(valid) > 1 else list(distinct.values())
            (a, va), (b, vb) = shown[:2]
            if len(valid) != 1:
                why = "and no default is valid for every declaration" if not valid else "both valid"
                raise _conflict(
                    flow,
                    scope,
                    name,
                    a,
                    b,
                    f'differing-defaults: field "{name}": {va!r} vs {vb!r}, {why}',
                    fix=_DEFAULT_FIX,
                )
            chosen = next(iter(valid.values()))[0]
    info = chosen.info
    if override:
        info = copy.copy(info)
        info.default = override[0]
        info.default_factory = None
    checks: list[TypeAdapter[Any]] = []
    if len(decls) > 1:
        for d in decls:
            if d.annotation is not annotation or list(d.info.metadata) != list(info.metadata):
                checks.append(d.adapter)
    return annotation, info, checks


def merge_declarations(
    decls: Iterable[Declaration], *, flow: str, scope: str, model_name: str
) -> Schema:
    """Merge partial models into one combined :class:`Schema`, or raise SchemaConflictError.

    Every declarer's rules hold on the result: a value is validated against the merged field
    and then against each declaration that differs from it (constraints such as ``ge=0``,
    Literal values, nested models' validators); see :func:`_merge_field` for defaults.
    """
    decls = list(decls)
    per_field: dict[str, list[_FieldDecl]] = {}
    validators = False
    seen = False
    for decl in decls:
        seen = True
        model = decl.model
        if not _is_model(model):
            raise DefinitionError(
                f'{scope} state of "{decl.declared_by}" must be a pydantic BaseModel subclass, '
                f"got {model!r}"
            )
        validators = validators or bool(model.__pydantic_decorators__.model_validators)
        for name, info in model.model_fields.items():
            mine = _FieldDecl(decl.declared_by, info.annotation, info)
            earlier = per_field.setdefault(name, [])
            # Compare with every earlier declaration: two may conflict on a nested field that
            # a third, compatible with both, does not declare.
            for prev in earlier:
                problem = compare(prev.annotation, info.annotation, name)
                if problem is not None:
                    raise _conflict(
                        flow, scope, name, prev, mine, f"{problem.reason}: {problem.detail}"
                    )
            earlier.append(mine)
    if not seen:
        return Schema(None)
    fields: dict[str, tuple[Any, FieldInfo]] = {}
    checks: dict[str, list[TypeAdapter[Any]]] = {}
    for name, field_decls in per_field.items():
        annotation, info, extra = _merge_field(name, field_decls, flow=flow, scope=scope)
        fields[name] = (annotation, info)
        if extra:
            checks[name] = extra
    partials = [d.model for d in decls]
    combined = create_model(
        model_name,
        __config__=ConfigDict(extra="forbid"),
        **{k: (ann, info) for k, (ann, info) in fields.items()},  # type: ignore[call-overload]
    )
    return Schema(combined, full_validation=validators, partials=partials, checks=checks)


# ----------------------------------------------------------------------------------- Schema


def _has_validators(model: type[BaseModel]) -> bool:
    d = model.__pydantic_decorators__
    return bool(d.model_validators or d.field_validators or d.validators or d.root_validators)


def _errors_of(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    return [{"loc": [*prefix, *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]


class Schema:
    """A scope's combined state schema, or free-form JSON when ``model`` is None.

    Values are stored in JSON form, field by field; this class validates single fields (so a
    write need not read unrelated fields) or, when the model has model validators, whole states.
    """

    def __init__(
        self,
        model: type[BaseModel] | None,
        *,
        full_validation: bool | None = None,
        partials: Iterable[type[BaseModel]] = (),
        checks: Mapping[str, list[TypeAdapter[Any]]] | None = None,
    ) -> None:
        self.model = model
        self.partials = list(partials)
        # Per field, the declarations a value must also pass (see merge_declarations).
        self.checks: dict[str, list[TypeAdapter[Any]]] = dict(checks or {})
        # Validators live on the declaring classes, not on the merged field set: a write must
        # pass through every partial model that has any, so it needs the whole state.
        self.checked_partials = [p for p in self.partials if _has_validators(p)]
        if full_validation is None:
            full_validation = bool(model and _has_validators(model))
        self.full_validation = full_validation or bool(self.checked_partials)

    @classmethod
    def of(cls, model: type[BaseModel] | None) -> Schema:
        return cls(model)

    @property
    def free_form(self) -> bool:
        return self.model is None

    @cached_property
    def _adapters(self) -> dict[str, TypeAdapter[Any]]:
        assert self.model is not None
        return {
            name: _field_adapter(info.annotation, info)
            for name, info in self.model.model_fields.items()
        }

    @cached_property
    def _item_adapters(self) -> dict[str, TypeAdapter[Any]]:
        """Element adapters of plain ``list[X]`` fields without list-level constraints."""
        out: dict[str, TypeAdapter[Any]] = {}
        if self.model is None or self.full_validation:
            return out
        for name, info in self.model.model_fields.items():
            ann = info.annotation
            if name in self.checks:
                continue  # several declarations: validate the whole list against each
            if _origin(ann) is list and len(get_args(ann)) == 1 and not info.metadata:
                out[name] = TypeAdapter(get_args(ann)[0])
        return out

    def appendable(self, name: str) -> bool:
        """Whether items can be appended to ``name`` without loading the list."""
        return self.model is None or name in self._item_adapters

    def validate_item(self, name: str, value: Any) -> JSON:
        """Validate one item appended to list field ``name``; return it in JSON form."""
        check_finite(value, (name, -1))
        if self.model is None:
            return _jsonable(name, value)
        adapter = self._item_adapters[name]
        try:
            return adapter.dump_python(adapter.validate_python(value), mode="json")
        except ValidationError as exc:
            errors = _errors_of(exc, (name, -1))
            raise StateValidationError(describe_errors(errors), errors=errors) from None

    @cached_property
    def field_names(self) -> frozenset[str]:
        return frozenset(self.model.model_fields) if self.model else frozenset()

    @cached_property
    def _defaults(self) -> tuple[dict[str, JSON], frozenset[str]]:
        """Fields' defaults in JSON form, computed once, and the fields whose default comes
        from a factory function (called on every use: it may return a new value each time).
        A plain default or a class as factory (``list``, ``dict``, a model) is fixed."""
        fixed: dict[str, JSON] = {}
        dynamic: set[str] = set()
        if self.model is None:
            return fixed, frozenset()
        for name, info in self.model.model_fields.items():
            if info.default is not PydanticUndefined:
                value = info.default
            elif isinstance(info.default_factory, type):
                value = info.default_factory()
            elif info.default_factory is not None:
                dynamic.add(name)
                continue
            else:
                continue
            fixed[name] = self._adapters[name].dump_python(value, mode="json")
        return fixed, frozenset(dynamic)

    def default(self, name: str) -> tuple[bool, JSON]:
        """(has_default, default in JSON form) for one field."""
        fixed, dynamic = self._defaults
        if name in fixed:
            return True, copy_json(fixed[name])
        if name in dynamic:
            assert self.model is not None
            factory = self.model.model_fields[name].default_factory
            value = factory()  # type: ignore[call-arg,misc]
            return True, self._adapters[name].dump_python(value, mode="json")
        return False, None

    @cached_property
    def _scalar_defaults(self) -> bool:
        """No fixed default is a list or an object: a shallow copy of them is a deep one."""
        return not any(isinstance(v, dict | list) for v in self._defaults[0].values())

    def defaults(self) -> dict[str, JSON]:
        fixed, dynamic = self._defaults
        out: dict[str, JSON] = dict(fixed) if self._scalar_defaults else copy_json(fixed)
        for name in dynamic:
            out[name] = self.default(name)[1]
        return out

    def with_defaults(self, stored: Mapping[str, JSON]) -> dict[str, JSON]:
        """The full visible state: stored fields over schema defaults."""
        out = self.defaults()
        out.update(stored)
        return out

    def check_known(self, names: Iterable[str]) -> None:
        """Reject field names the schema does not declare (typo protection)."""
        if self.model is None:
            return
        unknown = [n for n in names if n not in self.field_names]
        if unknown:
            known = ", ".join(sorted(self.field_names)) or "(none)"
            errors = [
                {"loc": [n], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}
                for n in unknown
            ]
            raise StateValidationError(
                f'unknown field "{unknown[0]}": the schema declares only {known}', errors=errors
            )

    def validate_fields(self, values: Mapping[str, Any]) -> dict[str, JSON]:
        """Validate some fields on their own; return them in JSON form."""
        for k, v in values.items():
            check_finite(v, (k,))
        if self.model is None:
            return {k: _jsonable(k, v) for k, v in values.items()}
        self.check_known(values)
        out: dict[str, JSON] = {}
        errors: list[dict[str, Any]] = []
        for name, value in values.items():
            adapter = self._adapters[name]
            try:
                out[name] = adapter.dump_python(adapter.validate_python(value), mode="json")
                self._check(name, out[name])
            except ValidationError as exc:
                errors.extend(_errors_of(exc, (name,)))
        if errors:
            raise StateValidationError(describe_errors(errors), errors=errors)
        return out

    def validate_state(self, values: Mapping[str, Any]) -> dict[str, JSON]:
        """Validate a whole state (missing fields take defaults); return it in JSON form."""
        for k, v in values.items():
            check_finite(v, (k,))
        if self.model is None:
            return {k: _jsonable(k, v) for k, v in values.items()}
        self.check_known(values)
        try:
            out = self.model.model_validate(dict(values)).model_dump(mode="json")
            for partial in self.checked_partials:
                mine = {k: out[k] for k in partial.model_fields if k in out}
                out.update(partial.model_validate(mine).model_dump(mode="json"))
        except ValidationError as exc:
            errors = _errors_of(exc)
            raise StateValidationError(describe_errors(errors), errors=errors) from None
        for name in self.checks:
            if name in out:
                try:
                    self._check(name, out[name])
                except ValidationError as exc:
                    errors = _errors_of(exc, (name,))
                    raise StateValidationError(describe_errors(errors), errors=errors) from None
        return out

    def _check(self, name: str, value: JSON) -> None:
        """Validate a field's JSON value against every other declaration of the field."""
        for adapter in self.checks.get(name, ()):
            adapter.validate_python(value)

    def view(
        self, model: type[BaseModel] | None, values: Mapping[str, JSON], *, frozen: bool = True
    ) -> Any:
        """Build what a block sees: an instance of its partial model (or a dict).

        ``frozen`` (handles' ``.state``): a deeply read-only snapshot, see
        :mod:`flowstate.snapshot`. Otherwise (the argument of a hook, ``derived`` or client-data
        function) a plain, detached copy. Neither shares anything with ``values``.
        """
        target = model or self.model
        if target is None:
            return freeze(dict(values)) if frozen else copy_json(dict(values))
        names = _field_names(target)
        wanted = {k: v for k, v in values.items() if k in names}
        if not frozen:
            wanted = copy_json(wanted)
        try:
            instance = target.model_validate(wanted)
        except ValidationError:
            # A required field that was never written: show what exists without inventing it.
            instance = target.model_construct(**wanted)
        return freeze(instance) if frozen else instance


@functools.lru_cache(maxsize=1024)
def _field_names(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(model.model_fields)


def copy_json(value: JSON) -> JSON:
    """A deep copy of a JSON value (dicts and lists copied, scalars shared)."""
    if isinstance(value, dict):
        return {k: copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_json(v) for v in value]
    return value


_ANY_ADAPTER: TypeAdapter[Any] = TypeAdapter(Any)


def check_finite(value: Any, loc: tuple[str | int, ...]) -> None:
    """Reject a value that breaks the input limits (:mod:`flowstate.limits`): NaN and
    infinities (JSON has no such numbers; storing them would silently turn them into ``null``),
    integers beyond ±(2**63 - 1), nesting deeper than 64 levels, NUL and lone surrogates."""
    problem = json_problem(value, loc)
    if problem is not None:
        where, message, type_ = problem
        path = ".".join(str(p) for p in where)
        raise StateValidationError(
            f'field "{path}": {message} ({type_})',
            errors=[{"loc": list(where), "msg": message, "type": type_}],
        )


def _jsonable(name: str, value: Any) -> JSON:
    try:
        return _ANY_ADAPTER.dump_python(value, mode="json")
    except Exception as exc:  # pydantic raises several kinds for unserialisable values
        raise StateValidationError(
            f'field "{name}": value is not JSON-serialisable ({exc})',
            errors=[{"loc": [name], "msg": "value is not JSON-serialisable", "type": "json_type"}],
        ) from None
