// Client data as a collapsible tree; rows whose value just changed flash.

function isContainer(value: unknown): value is Record<string, unknown> | unknown[] {
  return typeof value === "object" && value !== null;
}

function Leaf({ value }: { value: unknown }) {
  const type = value === null ? "null" : typeof value;
  const text = typeof value === "string" ? JSON.stringify(value) : String(value);
  return <span className={`leaf ${type}`}>{text}</span>;
}

function summary(value: Record<string, unknown> | unknown[]): string {
  return Array.isArray(value) ? `[${value.length}]` : `{${Object.keys(value).length}}`;
}

export function Tree({
  name,
  value,
  path,
  changed,
  revision,
  open = true,
}: {
  name: string;
  value: unknown;
  path: string;
  changed: Set<string>;
  revision: number;
  open?: boolean;
}) {
  const flash = changed.has(path);
  // The key changes with the revision, so the highlight animation restarts on each change.
  const rowKey = flash ? `${path}@${revision}` : path;
  if (!isContainer(value)) {
    return (
      <li key={rowKey} className={flash ? "row changed" : "row"} data-path={path}>
        <span className="key">{name}</span>
        <Leaf value={value} />
      </li>
    );
  }
  const entries = Array.isArray(value) ? value.map((v, i) => [String(i), v] as const) : Object.entries(value);
  return (
    <li key={rowKey} className={flash ? "row branch changed" : "row branch"} data-path={path}>
      <details open={open}>
        <summary>
          <span className="key">{name}</span> <span className="muted">{summary(value)}</span>
        </summary>
        <ul className="tree">
          {entries.length === 0 ? <li className="row muted">empty</li> : null}
          {entries.map(([k, v]) => (
            <Tree key={k} name={k} value={v} path={`${path}.${k}`} changed={changed} revision={revision} open={entries.length <= 20} />
          ))}
        </ul>
      </details>
    </li>
  );
}
