"""TypeScript types of a server's flows (``flowstate codegen ts``): Pydantic → JSON Schema → TS.

For each flow: every action's input and output, and the client data of each scope (exposed
fields typed by the scope's combined schema; ``derived`` values by their function's return
annotation, ``unknown`` without one). The result is one module exporting ``Flows``, the type
parameter of ``createClient<Flows>()`` in ``@flowstate/client``. Pure: no I/O, no network.
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter

from .blocks import Block, Sequencer
from .flow import Flow

__all__ = ["action_input_model", "action_output_model", "json_schema_to_ts", "typescript_types"]

Mode = Literal["validation", "serialization"]
_IDENT = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_CLIENT_SCOPES = ("session", "user", "project")


def action_input_model(block: Block) -> type[BaseModel] | None:
    """The model an action's input is validated against: its own, or for a pipeline without
    one, its first step's (the pipeline hands its input to that step)."""
    if block.input is not None:
        return block.input
    if isinstance(block, Sequencer) and block.steps and block.steps[0].kind != "for_each":
        for child in block.steps[0].blocks:
            model = action_input_model(child)
            if model is not None:
                return model
    return None


def action_output_model(block: Block) -> type[BaseModel] | None:
    """The model of an action's output: its own, or a pipeline's last ``then`` step's."""
    if block.output is not None:
        return block.output
    if isinstance(block, Sequencer) and block.steps and block.steps[-1].kind == "then":
        return action_output_model(block.steps[-1].blocks[0])
    return None


def _prop_name(name: str) -> str:
    return name if _IDENT.match(name) else json.dumps(name, ensure_ascii=False)


def _type_name(text: str) -> str:
    """A TS identifier from a model or flow name: ``my-app.add`` → ``MyAppAdd``."""
    parts = re.split(r"[^A-Za-z0-9]+", text)
    name = "".join(p[:1].upper() + p[1:] for p in parts if p)
    if not name or name[0].isdigit():
        name = "T" + name
    return name


def _comment(schema: Mapping[str, Any], indent: str) -> str:
    text = schema.get("description")
    if not isinstance(text, str) or not text.strip():
        return ""
    body = text.strip().replace("*/", "*\\/")
    lines = body.splitlines()
    if len(lines) == 1:
        return f"{indent}/** {lines[0]} */\n"
    inner = "".join(f"{indent} * {line}".rstrip() + "\n" for line in lines)
    return f"{indent}/**\n{inner}{indent} */\n"


def json_schema_to_ts(
    schema: Any, ref_name: Callable[[str], str] = lambda ref: ref, indent: str = ""
) -> str:
    """The TypeScript type of a JSON Schema (the subset Pydantic produces).

    ``ref_name`` maps a ``$ref`` (``#/$defs/Name``) to the TS name it is emitted under.
    Anything it cannot express becomes ``unknown`` (never ``any``).
    """
    if schema is True or schema == {}:
        return "unknown"
    if schema is False:
        return "never"
    if not isinstance(schema, Mapping):
        return "unknown"
    if "$ref" in schema:
        return ref_name(str(schema["$ref"]))
    if "const" in schema:
        return json.dumps(schema["const"], ensure_ascii=False)
    if "enum" in schema:
        return " | ".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"]) or "never"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [json_schema_to_ts(s, ref_name, indent) for s in schema[key]]
            return _union(options)
    if "allOf" in schema:
        parts = [json_schema_to_ts(s, ref_name, indent) for s in schema["allOf"]]
        return " & ".join(f"({p})" if "|" in p else p for p in parts) or "unknown"
    kind = schema.get("type")
    if isinstance(kind, list):
        return _union([json_schema_to_ts({**schema, "type": k}, ref_name, indent) for k in kind])
    if kind == "string":
        return "string"
    if kind in ("integer", "number"):
        return "number"
    if kind == "boolean":
        return "boolean"
    if kind == "null":
        return "null"
    if kind == "array":
        if "prefixItems" in schema:
            items = [json_schema_to_ts(s, ref_name, indent) for s in schema["prefixItems"]]
            return f"[{', '.join(items)}]"
        item = json_schema_to_ts(schema.get("items", {}), ref_name, indent)
        return f"({item})[]" if ("|" in item or "&" in item) else f"{item}[]"
    if kind == "object" or "properties" in schema:
        return _object(schema, ref_name, indent)
    return "unknown"


def _union(options: list[str]) -> str:
    unique = list(dict.fromkeys(options))
    if "unknown" in unique:
        return "unknown"
    return " | ".join(unique) or "never"


def _object(schema: Mapping[str, Any], ref_name: Callable[[str], str], indent: str) -> str:
    props: Mapping[str, Any] = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    extra = schema.get("additionalProperties")
    inner = indent + "  "
    lines = []
    for name, prop in props.items():
        optional = "" if name in required else "?"
        ts = json_schema_to_ts(prop, ref_name, inner)
        doc = _comment(prop, inner) if isinstance(prop, Mapping) else ""
        lines.append(f"{doc}{inner}{_prop_name(name)}{optional}: {ts};\n")
    if isinstance(extra, Mapping) and extra:
        value = json_schema_to_ts(extra, ref_name, inner)
        if props:
            value = "unknown"  # an index signature must admit every declared property
        lines.append(f"{inner}[key: string]: {value};\n")
    elif not props:
        return "Record<string, never>" if extra is False else "Record<string, unknown>"
    return "{\n" + "".join(lines) + indent + "}"


class _Emitter:
    """Collects named declarations; one TS name per distinct definition."""

    def __init__(self) -> None:
        self.decls: dict[str, str] = {}
        self._by_key: dict[str, str] = {}

    def declare(
        self, wanted: str, schema: Mapping[str, Any], defs: Mapping[str, Any], alt: str = ""
    ) -> str:
        """Emit ``schema`` (with its ``$defs``) under ``wanted`` or a free variant of it."""
        names: dict[str, str] = {}
        # Definitions first, so a recursive model refers to its own name.
        for def_name in defs:
            names[def_name] = self._reserve(def_name, defs[def_name], defs, alt)

        def ref_name(ref: str) -> str:
            return names.get(ref.rsplit("/", 1)[-1], "unknown")

        for def_name, definition in defs.items():
            self._define(names[def_name], definition, ref_name)
        name = self._reserve(wanted, schema, defs, alt)
        self._define(name, schema, ref_name)
        return name

    def _reserve(self, wanted: str, schema: Any, defs: Mapping[str, Any], alt: str = "") -> str:
        # Keyed by the definition alone (not its siblings), so one model is declared once.
        key = json.dumps(schema, sort_keys=True, default=str)
        if key in self._by_key:
            return self._by_key[key]
        base = _type_name(wanted)
        taken = set(self.decls) | set(self._by_key.values())
        name, n = base, 2
        if name in taken and alt:
            name = base + alt  # the serialization form of a model also used as input
        while name in taken:
            name, n = f"{base}{n}", n + 1
        self._by_key[key] = name
        return name

    def _define(self, name: str, schema: Any, ref_name: Callable[[str], str]) -> None:
        if name in self.decls:
            return
        self.decls[name] = ""  # reserve against recursion
        ts = json_schema_to_ts(schema, ref_name)
        doc = _comment(schema, "") if isinstance(schema, Mapping) else ""
        is_object = isinstance(schema, Mapping) and ts.startswith("{\n")
        if is_object:
            self.decls[name] = f"{doc}export interface {name} {ts}\n"
        else:
            self.decls[name] = f"{doc}export type {name} = {ts};\n"

    def model(self, model: type[BaseModel], mode: Mode) -> str:
        schema = _schema(model.model_json_schema(mode=mode, ref_template="#/$defs/{model}"), mode)
        defs = schema.pop("$defs", {})
        return self.declare(model.__name__, schema, defs, "Out" if mode == "serialization" else "")

    def inline(self, annotation: Any, mode: Mode) -> str:
        """An anonymous type (a field or a return annotation), its models declared by name."""
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return self.model(annotation, mode)
        schema = _schema(
            TypeAdapter(annotation).json_schema(mode=mode, ref_template="#/$defs/{model}"), mode
        )
        defs = schema.pop("$defs", {})
        alt = "Out" if mode == "serialization" else ""
        names = {d: self._reserve(d, defs[d], defs, alt) for d in defs}

        def ref_name(ref: str) -> str:
            return names.get(ref.rsplit("/", 1)[-1], "unknown")

        for d, definition in defs.items():
            self._define(names[d], definition, ref_name)
        return json_schema_to_ts(schema, ref_name, "    ")


def _schema(schema: Any, mode: Mode) -> Any:
    """In serialization mode every property is present (a dump includes defaults): required."""
    if mode != "serialization":
        return schema
    if isinstance(schema, dict):
        out = {k: _schema(v, mode) for k, v in schema.items()}
        props = schema.get("properties")
        if isinstance(props, dict) and schema.get("type", "object") == "object":
            out["required"] = list(props)
        return out
    if isinstance(schema, list):
        return [_schema(v, mode) for v in schema]
    return schema


def _return_annotation(fn: Callable[..., Any]) -> Any:
    """A derived function's declared return type, or ``inspect.Signature.empty``."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to unknown
        return inspect.Signature.empty
    return hints.get("return", inspect.Signature.empty)


def _client_data(flow: Flow, emit: _Emitter) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for scope in _CLIENT_SCOPES:
        spec = flow.scopes.get(scope)
        if spec is None:
            continue
        fields: dict[str, str] = {}
        model = spec.schema.model
        for name in spec.client.expose:
            info = model.model_fields.get(name) if model is not None else None
            if info is None:
                fields[name] = "unknown"
                continue
            fields[name] = emit.inline(info.annotation, "serialization")
        for name, fn in spec.client.derived.items():
            annotation = _return_annotation(fn)
            fields[name] = (
                "unknown"
                if annotation is inspect.Signature.empty
                else emit.inline(annotation, "serialization")
            )
        if fields:
            out[scope] = fields
    return out


def typescript_types(flows: Mapping[str, Flow], *, source: str = "") -> str:
    """One TypeScript module: a type per model, and ``Flows`` describing every flow."""
    emit = _Emitter()
    body: list[str] = []
    for kind, flow in flows.items():
        prefix = _type_name(kind)
        body.append(f"  {_prop_name(kind)}: {{\n    actions: {{\n")
        for action, block in flow.actions.items():
            input_model = action_input_model(block)
            output_model = action_output_model(block)
            input_ts = "unknown" if input_model is None else emit.model(input_model, "validation")
            output_ts = (
                "unknown" if output_model is None else emit.model(output_model, "serialization")
            )
            body.append(
                f"      {_prop_name(action)}: {{ input: {input_ts}; output: {output_ts} }};\n"
            )
        body.append("    };\n    clientData: ")
        scopes = _client_data(flow, emit)
        name = f"{prefix}ClientData"
        lines = [f"export interface {name} {{\n"]
        for scope, fields in scopes.items():
            lines.append(f"  {scope}: {{\n")
            for field, ts in fields.items():
                lines.append(f"    {_prop_name(field)}: {ts};\n")
            lines.append("  };\n")
        lines.append("}\n")
        emit.decls[name] = "".join(lines)
        body.append(f"{name};\n  }};\n")
    header = (
        "// Generated by `flowstate codegen ts"
        + (f" {source}" if source else "")
        + "`: types of each flow's actions and client data. Do not edit; regenerate.\n"
        "// Use: createClient<Flows>({ baseUrl, token }) from @flowstate/client.\n\n"
    )
    decls = "\n".join(d for d in emit.decls.values() if d)
    # A type alias (not an interface): only aliases are assignable to Record<string, ...>.
    flows_decl = "export type Flows = {\n" + "".join(body) + "};\n"
    return header + decls + "\n" + flows_decl
