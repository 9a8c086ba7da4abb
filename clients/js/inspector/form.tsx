// An action's input form, generated from its JSON Schema, with a raw-JSON mode.
import { useEffect, useId, useState } from "react";

import { example, kindOf, resolve, type Schema } from "./schema.js";

interface FieldProps {
  schema: Schema;
  root: Schema;
  name: string;
  label: string;
  value: unknown;
  required: boolean;
  onChange: (value: unknown) => void;
}

function withoutDefault(schema: Schema): Schema {
  const { default: _default, ...rest } = schema;
  return rest;
}

const LONG_TEXT = /^(content|text|body|note|description|prompt|message)$/i;

function Field({ schema, root, name, label, value, required, onChange }: FieldProps) {
  const id = useId();
  const { schema: s, nullable } = resolve(schema, root);
  const kind = kindOf(s);
  const help = s.description ?? schema.description;
  const title = (
    <span className="field-name">
      {label}
      {required ? <abbr title="required">*</abbr> : null}
      {nullable ? <small> (optional)</small> : null}
    </span>
  );
  if (kind === "object") {
    const present = value !== null && value !== undefined && typeof value === "object";
    const obj = (present ? value : {}) as Record<string, unknown>;
    const req = new Set<string>(s.required ?? []);
    return (
      <fieldset className="nested">
        <legend>{title}</legend>
        {nullable ? (
          <label className="toggle">
            <input
              type="checkbox"
              name={`${name}-present`}
              checked={present}
              // An optional object starts from a valid example when switched on.
              // (without the field's own default: an optional model's default is null).
              onChange={(e) => onChange(e.target.checked ? example(withoutDefault(s), root, name) : null)}
            />{" "}
            give {label}
          </label>
        ) : null}
        {nullable && !present ? null : Object.entries<Schema>(s.properties ?? {}).map(([key, prop]) => (
          <Field
            key={key}
            schema={prop}
            root={root}
            name={key}
            label={key}
            value={obj[key]}
            required={req.has(key)}
            onChange={(v) => onChange({ ...obj, [key]: v })}
          />
        ))}
      </fieldset>
    );
  }
  let control;
  if (kind === "enum") {
    const options: unknown[] = Array.isArray(s.enum) ? s.enum : [s.const];
    const index = options.findIndex((o) => JSON.stringify(o) === JSON.stringify(value));
    control = (
      <select id={id} name={name} value={index < 0 ? "" : String(index)} onChange={(e) => onChange(e.target.value === "" ? null : options[Number(e.target.value)])}>
        {nullable || index < 0 ? <option value="">—</option> : null}
        {options.map((o, i) => (
          <option key={i} value={String(i)}>
            {typeof o === "string" ? o : JSON.stringify(o)}
          </option>
        ))}
      </select>
    );
  } else if (kind === "boolean") {
    control = <input id={id} name={name} type="checkbox" checked={value === true} onChange={(e) => onChange(e.target.checked)} />;
  } else if (kind === "integer" || kind === "number") {
    control = (
      <input
        id={id}
        name={name}
        type="number"
        inputMode={kind === "integer" ? "numeric" : "decimal"}
        step={kind === "integer" ? 1 : "any"}
        min={s.minimum}
        max={s.maximum}
        value={typeof value === "number" ? value : ""}
        onChange={(e) => onChange(e.target.value === "" ? (nullable ? null : 0) : Number(e.target.value))}
      />
    );
  } else if (kind === "string") {
    const text = typeof value === "string" ? value : "";
    const change = (v: string) => onChange(v === "" && nullable ? null : v);
    control =
      LONG_TEXT.test(name) || text.includes("\n") ? (
        <textarea id={id} name={name} rows={3} value={text} onChange={(e) => change(e.target.value)} />
      ) : (
        <input id={id} name={name} type="text" value={text} minLength={s.minLength} maxLength={s.maxLength} onChange={(e) => change(e.target.value)} />
      );
  } else if (kind === "strings") {
    const list = Array.isArray(value) ? (value as string[]) : [];
    control = (
      <input
        id={id}
        name={name}
        type="text"
        placeholder="comma-separated"
        value={list.join(", ")}
        onChange={(e) => onChange(e.target.value.split(",").map((t) => t.trim()).filter(Boolean))}
      />
    );
  } else {
    control = <JsonBox id={id} value={value} onChange={onChange} rows={3} />;
  }
  return (
    <div className="field">
      <label htmlFor={id}>{title}</label>
      {control}
      {help ? <small className="help">{help}</small> : null}
    </div>
  );
}

function JsonBox({ id, value, onChange, rows }: { id?: string; value: unknown; onChange: (v: unknown) => void; rows: number }) {
  const [text, setText] = useState(() => JSON.stringify(value, null, 2) ?? "null");
  const [error, setError] = useState("");
  useEffect(() => {
    // Follow outside changes unless the box holds an edit in progress that parses to the same.
    setText((current) => {
      try {
        if (JSON.stringify(JSON.parse(current)) === JSON.stringify(value)) return current;
      } catch {
        // fall through
      }
      return JSON.stringify(value, null, 2) ?? "null";
    });
  }, [value]);
  return (
    <>
      <textarea
        id={id}
        className="json"
        spellCheck={false}
        rows={rows}
        value={text}
        aria-invalid={error ? true : undefined}
        onChange={(e) => {
          setText(e.target.value);
          try {
            onChange(JSON.parse(e.target.value || "null"));
            setError("");
          } catch (err) {
            setError((err as Error).message);
          }
        }}
      />
      {error ? <small className="error">not valid JSON: {error}</small> : null}
    </>
  );
}

/** The input editor of one action: fields from the schema, or JSON. */
export function InputForm({ schema, value, onChange }: { schema: Schema | null; value: unknown; onChange: (v: unknown) => void }) {
  const [raw, setRaw] = useState(false);
  const root = schema ?? {};
  const { schema: s } = resolve(root, root);
  const formable = schema !== null && kindOf(s) === "object";
  return (
    <div className="input-form">
      {formable ? (
        <div className="mode-switch" role="group" aria-label="input editor">
          <button type="button" className={raw ? "" : "active"} aria-pressed={!raw} onClick={() => setRaw(false)}>
            Form
          </button>
          <button type="button" className={raw ? "active" : ""} aria-pressed={raw} onClick={() => setRaw(true)}>
            JSON
          </button>
        </div>
      ) : (
        <p className="muted">{schema === null ? "This action declares no input model: any JSON." : null}</p>
      )}
      {formable && !raw ? (
        <div className="fields">
          {Object.entries<Schema>(s.properties ?? {}).map(([key, prop]) => (
            <Field
              key={key}
              schema={prop}
              root={root}
              name={key}
              label={key}
              value={(value as Record<string, unknown> | null)?.[key]}
              required={(s.required ?? []).includes(key)}
              onChange={(v) => onChange({ ...((value as Record<string, unknown>) ?? {}), [key]: v })}
            />
          ))}
        </div>
      ) : (
        <JsonBox id="input-json" value={value} onChange={onChange} rows={8} />
      )}
    </div>
  );
}

export function exampleInput(schema: Schema | null): unknown {
  return schema === null ? null : example(schema, schema);
}
