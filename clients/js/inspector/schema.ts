// JSON Schema helpers for the inspector's action forms: resolve refs, and build an example
// value that the server accepts (defaults, then examples, then values meeting constraints).

export type Schema = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

export interface Resolved {
  schema: Schema;
  nullable: boolean;
}

/** Follow `$ref` (into the root's `$defs`) and unwrap `anyOf [X, null]` (Optional). */
export function resolve(schema: Schema | undefined, root: Schema): Resolved {
  let current: Schema = schema ?? {};
  let nullable = false;
  for (let depth = 0; depth < 32; depth++) {
    if (typeof current.$ref === "string") {
      const name = current.$ref.split("/").pop() as string;
      const target = (root.$defs ?? root.definitions ?? {})[name] ?? {};
      const { $ref: _ref, ...rest } = current;
      current = { ...target, ...rest };
      continue;
    }
    const options: Schema[] | undefined = current.anyOf ?? current.oneOf;
    if (options) {
      const nonNull = options.filter((o) => o.type !== "null");
      if (nonNull.length < options.length) nullable = true;
      if (nonNull.length === 1) {
        const { anyOf: _a, oneOf: _o, ...rest } = current;
        current = { ...rest, ...nonNull[0] };
        continue;
      }
    }
    break;
  }
  return { schema: current, nullable };
}

/** A value for `schema` that its validation accepts, as a person would start from. */
export function example(schema: Schema | undefined, root: Schema, name = "", depth = 0): unknown {
  if (!schema || depth > 12) return null;
  // An author's example says "start from this"; a default is what omitting the field means.
  if (Array.isArray(schema.examples) && schema.examples.length) return clone(schema.examples[0]);
  if ("default" in schema) return clone(schema.default);
  const { schema: s, nullable } = resolve(schema, root);
  if (s !== schema) {
    if (Array.isArray(s.examples) && s.examples.length) return clone(s.examples[0]);
    if ("default" in s) return clone(s.default);
  }
  if ("const" in s) return clone(s.const);
  if (Array.isArray(s.enum) && s.enum.length) return clone(s.enum[0]);
  const options: Schema[] | undefined = s.anyOf ?? s.oneOf;
  if (options?.length) return example(options[0], root, name, depth + 1);
  const type = Array.isArray(s.type) ? s.type.find((t: string) => t !== "null") : s.type;
  switch (type) {
    case "object": {
      const out: Record<string, unknown> = {};
      for (const [key, prop] of Object.entries<Schema>(s.properties ?? {})) {
        out[key] = example(prop, root, key, depth + 1);
      }
      return out;
    }
    case "array": {
      const n = Math.max(0, Math.min(Number(s.minItems ?? 0), 10));
      return Array.from({ length: n }, () => example(s.items, root, name, depth + 1));
    }
    case "string":
      return exampleString(s, name);
    case "integer":
    case "number": {
      let value = 0;
      if (typeof s.minimum === "number") value = s.minimum;
      if (typeof s.exclusiveMinimum === "number") value = s.exclusiveMinimum + (type === "integer" ? 1 : 0.5);
      if (typeof s.maximum === "number" && value > s.maximum) value = s.maximum;
      if (typeof s.exclusiveMaximum === "number" && value >= s.exclusiveMaximum) value = s.exclusiveMaximum - 1;
      return type === "integer" ? Math.ceil(value) : value;
    }
    case "boolean":
      return false;
    case "null":
      return null;
    default:
      return nullable ? null : {};
  }
}

function exampleString(s: Schema, name: string): string {
  switch (s.format) {
    case "date-time":
      return new Date(0).toISOString();
    case "date":
      return "2024-01-01";
    case "email":
      return "user@example.com";
    case "uri":
    case "url":
      return "https://example.com/";
    case "uuid":
      return "00000000-0000-4000-8000-000000000000";
  }
  let text = name ? name.replace(/[^A-Za-z0-9]+/g, "-").toLowerCase() || "example" : "example";
  const min = Number(s.minLength ?? 0);
  while (text.length < min) text += "x";
  if (typeof s.maxLength === "number") text = text.slice(0, Math.max(s.maxLength, min));
  return text;
}

function clone<T>(value: T): T {
  return value === undefined ? value : (JSON.parse(JSON.stringify(value)) as T);
}

/** Is this (resolved) schema edited as a single form control (vs. a JSON box)? */
export function kindOf(s: Schema): "enum" | "string" | "number" | "integer" | "boolean" | "object" | "strings" | "json" {
  if (Array.isArray(s.enum)) return "enum";
  if ("const" in s) return "enum";
  const type = Array.isArray(s.type) ? s.type.find((t: string) => t !== "null") : s.type;
  if (type === "string") return "string";
  if (type === "integer") return "integer";
  if (type === "number") return "number";
  if (type === "boolean") return "boolean";
  if (type === "object" && s.properties && !s.additionalProperties) return "object";
  if (type === "array" && s.items && s.items.type === "string" && !s.items.enum) return "strings";
  return "json";
}
