// The flowstate web page: pick or create a session, run an action, watch its events, and see
// the session's client data refetched on request.completed (flow-state.dev's client pattern).
// Plain browser JavaScript, no build step. SSE is read through fetch streaming, so the token
// travels in the Authorization header, never in a URL the server sees.
"use strict";

const API = "/api/flows";
const $ = (id) => document.getElementById(id);
const page = { token: "", flows: [], running: null, userStream: null, refreshTimer: null };

function setStatus(text) {
  $("status").textContent = text;
}

function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${page.token}`, ...extra };
}

async function api(method, path, body) {
  const init = { method, headers: authHeaders() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(API + path, init);
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    throw httpError(response.status, data);
  }
  return data;
}

function httpError(status, data) {
  const err = data && data.error;
  const error = new Error(err ? `${err.code}: ${err.message}` : `HTTP ${status}`);
  error.status = status;
  return error;
}

// Server-sent events from a fetch Response: yields {event, data, id} per frame.
async function* sseFrames(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let frame = { event: "message", data: [], id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    for (;;) {
      const match = /\r\n|\n|\r/.exec(buffer);
      // A lone "\r" at the end may be the first half of "\r\n": wait for more.
      if (!match || (match[0] === "\r" && match.index === buffer.length - 1)) break;
      const line = buffer.slice(0, match.index);
      buffer = buffer.slice(match.index + match[0].length);
      if (line === "") {
        if (frame.data.length) yield { event: frame.event, data: frame.data.join("\n"), id: frame.id };
        frame = { event: "message", data: [], id: frame.id };
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "data") frame.data.push(text);
        else if (field === "event") frame.event = text;
        else if (field === "id") frame.id = text;
      }
    }
  }
}

// An example value for a JSON schema: defaults first, then a placeholder per type.
function example(schema, defs) {
  if (!schema) return {};
  if (schema.$ref) return example(defs[schema.$ref.split("/").pop()], defs);
  if ("default" in schema) return schema.default;
  if (schema.enum) return schema.enum[0];
  if (schema.const !== undefined) return schema.const;
  if (schema.anyOf) return example(schema.anyOf[0], defs);
  switch (schema.type) {
    case "object": {
      const out = {};
      for (const [name, prop] of Object.entries(schema.properties || {})) out[name] = example(prop, defs);
      return out;
    }
    case "array": return [];
    case "string": return "";
    case "integer": case "number": return 0;
    case "boolean": return false;
    default: return null;
  }
}

function currentFlow() {
  return page.flows.find((f) => f.kind === $("kind").value);
}

function fillSelect(select, items, selected) {
  select.replaceChildren();
  for (const { value, label } of items) {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = label;
    select.append(option);
  }
  if (selected !== undefined && items.some((i) => i.value === selected)) select.value = selected;
}

function showActions() {
  const flow = currentFlow();
  fillSelect($("action"), (flow ? flow.actions : []).map((a) => ({ value: a.name, label: a.name })));
  prefillInput();
}

function prefillInput() {
  const flow = currentFlow();
  const action = flow && flow.actions.find((a) => a.name === $("action").value);
  const schema = action && action.input;
  $("input").value = JSON.stringify(schema ? example(schema, schema.$defs || {}) : {}, null, 2);
}

async function loadSessions(select) {
  const kind = $("kind").value;
  const { sessions } = await api("GET", `/sessions?kind=${encodeURIComponent(kind)}`);
  const items = [{ value: "", label: "(new session on first run)" }];
  for (const s of sessions.slice().reverse()) {
    const when = new Date(s.createdAt * 1000).toLocaleString();
    items.push({ value: s.sessionId, label: `${s.sessionId.slice(0, 12)}… ${when}` });
  }
  fillSelect($("session"), items, select !== undefined ? select : (items[1] || items[0]).value);
  await refreshSnapshot();
}

async function refreshSnapshot() {
  const sessionId = $("session").value;
  const view = $("client-data");
  if (!sessionId) {
    view.textContent = "(no session yet: run an action)";
    return;
  }
  const snapshot = await api("GET", `/sessions/${encodeURIComponent(sessionId)}/state`);
  const shown = { clientData: snapshot.clientData };
  if (snapshot.resources) shown.resources = snapshot.resources;
  view.textContent = JSON.stringify(shown, null, 2);
  view.dataset.refreshes = String(Number(view.dataset.refreshes || 0) + 1);
  const user = snapshot.clientData.user || {};
  document.body.classList.toggle("dark", user.theme === "dark");
  $("snapshot-meta").textContent = `refetched ${new Date().toLocaleTimeString()}`;
}

function scheduleRefresh() {
  clearTimeout(page.refreshTimer);
  page.refreshTimer = setTimeout(() => refreshSnapshot().catch(() => {}), 150);
}

function logEvent(event, origin) {
  const item = document.createElement("li");
  item.dataset.type = event.type;
  if (origin === "user") item.classList.add("user");
  if (event.type === "request.failed") item.classList.add("failed");
  const type = document.createElement("span");
  type.className = "type";
  type.textContent = `${origin === "user" ? "[live] " : ""}${event.type}`;
  const { type: _t, seq: _s, requestId: _r, ...rest } = event;
  item.append(type, ` #${event.seq} `, JSON.stringify(rest));
  const list = $("events");
  list.append(item);
  list.scrollTop = list.scrollHeight;
}

async function runAction(e) {
  e.preventDefault();
  $("run-error").textContent = "";
  let input;
  try {
    input = JSON.parse($("input").value || "null");
  } catch (err) {
    $("run-error").textContent = `input is not valid JSON: ${err.message}`;
    return;
  }
  const kind = $("kind").value;
  const action = $("action").value;
  const sessionId = $("session").value;
  const body = { input };
  if (sessionId) body.sessionId = sessionId;
  $("events").replaceChildren();
  $("run").disabled = true;
  try {
    const response = await fetch(`${API}/${encodeURIComponent(kind)}/actions/${encodeURIComponent(action)}`, {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(body),
    });
    if (!response.ok) throw httpError(response.status, await response.json().catch(() => null));
    let newSession = null;
    for await (const frame of sseFrames(response)) {
      const event = JSON.parse(frame.data);
      logEvent(event, "run");
      if (event.type === "request.created") {
        page.running = event.requestId;
        if (!sessionId) newSession = event.sessionId;
      } else if (event.type === "request.completed" || event.type === "request.failed") {
        if (event.type === "request.failed") {
          $("run-error").textContent = `${event.error.code}: ${event.error.message}`;
        }
        // Change events only mark client data stale: refetch the snapshot now.
        if (newSession) await loadSessions(newSession);
        else await refreshSnapshot();
        document.body.dataset.lastRequest = event.requestId;
      }
    }
  } catch (err) {
    $("run-error").textContent = err.message;
  } finally {
    page.running = null;
    $("run").disabled = false;
  }
}

// Live changes of the user scope (from any session or tab): log them and refetch.
async function followUser() {
  if (page.userStream) page.userStream.abort();
  const controller = new AbortController();
  page.userStream = controller;
  while (!controller.signal.aborted) {
    try {
      const response = await fetch(`${API}/users/me/stream`, {
        headers: authHeaders({ Accept: "text/event-stream" }),
        signal: controller.signal,
      });
      if (!response.ok) throw httpError(response.status, null);
      for await (const frame of sseFrames(response)) {
        const event = JSON.parse(frame.data);
        if (event.requestId === page.running) continue; // already shown by the run itself
        logEvent(event, "user");
        scheduleRefresh();
      }
    } catch (err) {
      if (controller.signal.aborted) return;
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

async function connect(e) {
  if (e) e.preventDefault();
  page.token = $("token").value.trim();
  sessionStorage.setItem("flowstate-token", page.token);
  try {
    const { flows } = await api("GET", "");
    page.flows = flows;
    fillSelect($("kind"), flows.map((f) => ({ value: f.kind, label: f.kind })));
    showActions();
    await loadSessions();
    setStatus("connected");
    followUser();
  } catch (err) {
    setStatus(err.status === 401 ? "invalid token" : err.message);
  }
}

async function newSession() {
  const info = await api("POST", `/${encodeURIComponent($("kind").value)}/sessions`, {});
  await loadSessions(info.sessionId);
}

async function deleteSession() {
  const sessionId = $("session").value;
  if (!sessionId) return;
  await api("DELETE", `/sessions/${encodeURIComponent(sessionId)}`);
  await loadSessions();
}

function guarded(fn) {
  return (...args) => fn(...args).catch((err) => { $("run-error").textContent = err.message; });
}

function start() {
  $("auth-form").addEventListener("submit", connect);
  $("run-form").addEventListener("submit", runAction);
  $("kind").addEventListener("change", guarded(async () => { showActions(); await loadSessions(); }));
  $("action").addEventListener("change", prefillInput);
  $("session").addEventListener("change", guarded(refreshSnapshot));
  $("new-session").addEventListener("click", guarded(newSession));
  $("delete-session").addEventListener("click", guarded(deleteSession));
  // ?token=… fills the field once, then leaves the address bar (and history) without it.
  const params = new URLSearchParams(location.search);
  const token = params.get("token") || sessionStorage.getItem("flowstate-token") || "";
  if (params.has("token")) {
    params.delete("token");
    const query = params.toString();
    history.replaceState(null, "", location.pathname + (query ? `?${query}` : ""));
  }
  $("token").value = token;
  if (token) connect();
}

start();
