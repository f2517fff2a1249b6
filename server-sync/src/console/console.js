// The Fieldsync admin console: one page per part of the admin API (`/v1/admin/...`), chosen by
// the URL's fragment (`#/users`, `#/audit?user=ada`). Everything shown is built from DOM nodes
// and text, never parsed as HTML, so that a user's name or a record id cannot become markup.
// The bearer token lives in this tab's sessionStorage only, and the API decides what it may
// see: a token that is not an administrator's sees nothing.

const TOKEN_KEY = "fieldsync-admin-token";

const PAGES = {
  users: usersPage,
  grants: grantsPage,
  audit: auditPage,
  health: healthPage,
  schema: schemaPage,
};

/** Most audit lines the API returns to one query. */
const MAX_AUDIT_LINES = 10000;

// ---------------------------------------------------------------------------------------------
// Calling the API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Calls the admin API with the stored token; the JSON answer, or `null` for none. */
async function api(path, method = "GET") {
  const response = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}` },
    cache: "no-store",
    credentials: "omit",
  });
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, body?.code, body?.message ?? response.statusText);
  }
  return body;
}

// ---------------------------------------------------------------------------------------------
// Building the page

/** An element with `attributes` (a function is an event handler: `onclick`...) and children
 * (nodes, or strings and numbers as text; `null`, `undefined` and `false` are left out). */
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  const kept = children.flat().filter((c) => c !== null && c !== undefined && c !== false);
  node.append(...kept.map((c) => (c instanceof Node ? c : String(c))));
  return node;
}

/** A table with a header row of `columns` (a column starting with `#` is numeric) and `rows`
 * of `<tr>` elements, or `empty` as a line of text when there are none. */
function table(columns, rows, empty) {
  if (rows.length === 0) return el("p", { class: "empty" }, empty);
  const head = columns.map((column) =>
    column.startsWith("#") ? el("th", { class: "num" }, column.slice(1)) : el("th", {}, column),
  );
  return el("table", {}, el("thead", {}, el("tr", {}, head)), el("tbody", {}, rows));
}

const cell = (text, className) => el("td", { class: className }, text ?? "—");
const number = (value) => cell(value === null || value === undefined ? "—" : value, "num");

/** Milliseconds since the epoch as local `YYYY-MM-DD HH:MM:SS`. */
function time(ms) {
  if (ms === null || ms === undefined) return "never";
  const d = new Date(ms);
  const two = (n) => String(n).padStart(2, "0");
  return (
    `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ` +
    `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`
  );
}

/** Shows a line above the page: what an action did, or why it failed. */
function notice(text, problem = false) {
  const line = document.getElementById("notice");
  line.textContent = text;
  line.className = problem ? "problem" : "";
  line.hidden = !text;
}

/** Asks to confirm `question` in the page's dialog; resolves to whether it was confirmed. */
function confirmAction(question, action) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-message").textContent = question;
  document.getElementById("confirm-ok").textContent = action;
  return new Promise((resolve) => {
    const ok = document.getElementById("confirm-ok");
    const cancel = document.getElementById("confirm-cancel");
    const done = (answer) => {
      ok.removeEventListener("click", yes);
      cancel.removeEventListener("click", no);
      dialog.removeEventListener("cancel", no);
      dialog.close();
      resolve(answer);
    };
    const yes = () => done(true);
    const no = () => done(false);
    ok.addEventListener("click", yes);
    cancel.addEventListener("click", no);
    dialog.addEventListener("cancel", no);
    dialog.showModal();
  });
}

/** Runs a confirmed change, then shows what it did and draws the page again. */
async function change(question, action, call, done) {
  if (!(await confirmAction(question, action))) return;
  try {
    await call();
    notice(done);
  } catch (error) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
      return refused(error);
    }
    notice(error.message, true);
  }
  render();
}

// ---------------------------------------------------------------------------------------------
// Signing in, and the route

/** The page named by the fragment, and its parameters. */
function shown() {
  const [path, query] = window.location.hash.replace(/^#\/?/, "").split("?");
  const name = Object.hasOwn(PAGES, path) ? path : "users";
  return { name, params: new URLSearchParams(query ?? "") };
}

/** Goes to `hash`, drawing the page again if it is the one shown. */
function go(hash) {
  if (window.location.hash === hash) render();
  else window.location.hash = hash;
}

function signedIn(yes) {
  document.getElementById("nav").hidden = !yes;
  document.getElementById("sign-out").hidden = !yes;
}

function signInForm(problem) {
  drawing += 1; // A page still loading is not drawn over the form.
  signedIn(false);
  const input = el("input", {
    type: "password",
    id: "token",
    name: "token",
    required: true,
    autocomplete: "off",
    spellcheck: "false",
  });
  const form = el(
    "form",
    {
      id: "sign-in",
      class: "card",
      onsubmit: (event) => {
        event.preventDefault();
        sessionStorage.setItem(TOKEN_KEY, input.value.trim());
        notice("");
        render();
      },
    },
    el("h2", {}, "Sign in"),
    problem && el("p", { class: "refused" }, problem),
    el(
      "label",
      {},
      "An administrator's device token (fs_…) or identity provider access token",
      input,
    ),
    el("p", { class: "muted" }, "It is kept in this tab only, and forgotten when the tab closes."),
    el("button", { type: "submit", class: "primary" }, "Sign in"),
  );
  document.getElementById("main").replaceChildren(form);
  input.focus();
}

/** A refused token: sign in again (401), or say it is not an administrator's and show
 * nothing else (403). */
function refused(error) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (error.status === 401) return signInForm("The server did not accept this token.");
  drawing += 1;
  signedIn(false);
  document.getElementById("main").replaceChildren(
    el("p", { id: "not-admin", class: "refused" }, "This token is not an administrator's."),
    el("button", { type: "button", onclick: () => signInForm() }, "Use another token"),
  );
}

/** How many times the page was drawn, or its drawing begun: a page whose data arrives after
 * another was asked for is not shown. */
let drawing = 0;

/** Draws the page the fragment names. */
async function render() {
  const main = document.getElementById("main");
  if (!sessionStorage.getItem(TOKEN_KEY)) return signInForm();
  signedIn(true);
  const { name, params } = shown();
  for (const link of document.querySelectorAll("nav a")) {
    if (link.getAttribute("href") === `#/${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const ticket = ++drawing;
  const page = el("section", { id: `page-${name}` });
  main.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  try {
    await PAGES[name](page, params);
  } catch (error) {
    if (ticket !== drawing) return;
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
      return refused(error);
    }
    const why = error instanceof ApiError && error.status === 429
      ? "Too many requests for this token: try again in a moment."
      : `The server answered: ${error.message}`;
    main.replaceChildren(el("p", { class: "refused" }, why));
    return;
  }
  // A page asked for later may have been drawn meanwhile.
  if (ticket === drawing) main.replaceChildren(page);
}

// ---------------------------------------------------------------------------------------------
// Users and devices

async function usersPage(page) {
  const [{ users }, { devices }] = await Promise.all([
    api("/v1/admin/users"),
    api("/v1/admin/devices"),
  ]);
  const byUser = new Map(users.map((user) => [user.name, []]));
  for (const device of devices) byUser.get(device.user)?.push(device);
  page.append(el("h2", {}, `Users (${users.length}) and their devices`));
  for (const user of users) {
    const about = [user.display_name, user.email].filter(Boolean).join(", ");
    page.append(
      el(
        "section",
        { class: "card user", "data-user": user.name },
        el(
          "h3",
          {},
          user.name,
          " ",
          el("span", { class: `badge ${user.role}` }, user.role),
          user.signs_in_through_provider && " ",
          user.signs_in_through_provider && el("span", { class: "badge" }, "identity provider"),
        ),
        about && el("p", { class: "muted" }, about),
        table(
          ["Device", "#Id", "Last sync", "#Schema", "#Pending changes", "State", ""],
          byUser.get(user.name).map(deviceRow),
          "No devices.",
        ),
      ),
    );
  }
  page.append(revokeTokenForm());
}

function deviceRow(device) {
  // Devices report their outbox's length when they sync, on servers that keep it.
  const pending = number(device.pending_changes);
  if (device.pending_reported_at) pending.title = `reported ${time(device.pending_reported_at)}`;
  const revoke = el(
    "button",
    {
      type: "button",
      class: "danger revoke-device",
      onclick: () =>
        change(
          `Revoke the device “${device.name}” of ${device.user}? Every token of it stops ` +
            "working at once, and it can no longer sync.",
          "Revoke device",
          () => api(`/v1/admin/devices/${device.id}`, "DELETE"),
          `Device “${device.name}” (${device.id}) revoked.`,
        ),
    },
    "Revoke device",
  );
  return el(
    "tr",
    { "data-device-id": device.id, class: device.revoked ? "revoked" : null },
    cell(device.name),
    number(device.id),
    cell(time(device.last_sync_at)),
    number(device.schema_version),
    pending,
    cell(device.revoked ? "revoked" : "active"),
    el("td", {}, device.revoked ? null : revoke),
  );
}

function revokeTokenForm() {
  const input = el("input", {
    name: "token-id",
    id: "token-id",
    required: true,
    autocomplete: "off",
    size: 20,
  });
  return el(
    "form",
    {
      class: "card",
      id: "revoke-token",
      onsubmit: (event) => {
        event.preventDefault();
        // A whole token names its id after `fs_`; its secret is not sent anywhere.
        const text = input.value.trim();
        const id = text.startsWith("fs_") ? text.split("_")[1] : text;
        change(
          `Revoke the token ${id}? Its device keeps its other tokens.`,
          "Revoke token",
          () => api(`/v1/admin/tokens/${encodeURIComponent(id)}`, "DELETE"),
          `Token ${id} revoked.`,
        );
      },
    },
    el("h3", {}, "Revoke a token"),
    el(
      "label",
      {},
      "Token id (the 16 hex digits after fs_; the audit log's issue-token lines name them)",
      input,
    ),
    el("button", { type: "submit", class: "danger" }, "Revoke token"),
  );
}

// ---------------------------------------------------------------------------------------------
// Grants and group mappings

async function grantsPage(page) {
  const [{ grants }, groups] = await Promise.all([
    api("/v1/admin/grants"),
    api("/v1/admin/group-grants"),
  ]);
  page.append(
    el("h2", {}, "Grants"),
    el(
      "section",
      { class: "card" },
      table(
        ["User", "Scope", "Access"],
        grants.map((grant) =>
          el("tr", {}, cell(grant.user), cell(grant.scope, "id"), cell(grant.access)),
        ),
        "No user holds a grant.",
      ),
    ),
    el("h2", {}, "Group mappings"),
    el(
      "p",
      { class: "muted" },
      "What the identity provider's groups give their members (a scope ending in * names " +
        "every scope with that prefix).",
    ),
    el(
      "section",
      { class: "card" },
      table(
        ["Group", "Access", "Scopes"],
        groups.grants.map((grant) =>
          el("tr", {}, cell(grant.group), cell(grant.access), cell(grant.scopes, "id")),
        ),
        "No group mappings.",
      ),
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// The audit log

/** A `datetime-local` value as ms since the epoch, or `null`. */
function fromLocal(value) {
  const ms = value ? new Date(value).getTime() : NaN;
  return Number.isNaN(ms) ? null : ms;
}

async function auditPage(page, params) {
  const limit = Math.min(Number(params.get("limit")) || 100, MAX_AUDIT_LINES);
  const query = new URLSearchParams({ limit });
  for (const key of ["user", "record"]) {
    if (params.get(key)) query.set(key, params.get(key));
  }
  for (const key of ["since", "until"]) {
    const ms = fromLocal(params.get(key));
    if (ms !== null) query.set(key, ms);
  }
  const { entries } = await api(`/v1/admin/audit?${query}`);

  const field = (name, label, type = "text") =>
    el("label", {}, label, el("input", { name, type, value: params.get(name) ?? "" }));
  const form = el(
    "form",
    {
      class: "card",
      id: "audit-search",
      onsubmit: (event) => {
        event.preventDefault();
        const search = new URLSearchParams();
        for (const [key, value] of new FormData(event.target)) {
          if (value) search.set(key, value);
        }
        go(`#/audit?${search}`);
      },
    },
    field("user", "User"),
    field("record", "Record id (or a user, device or token an administrator acted on)"),
    field("since", "From", "datetime-local"),
    field("until", "Before", "datetime-local"),
    el("button", { type: "submit", class: "primary" }, "Search"),
    el("button", { type: "button", onclick: () => go("#/audit") }, "Clear"),
  );
  const rows = entries.map((entry) =>
    el(
      "tr",
      { class: `action-${entry.action.split(" ")[0]}` },
      cell(time(entry.at)),
      cell(entry.user),
      number(entry.device_id || null),
      cell(entry.code ? `${entry.action} (${entry.code})` : entry.action),
      cell(entry.collection),
      cell(entry.record_id, "id"),
      cell(entry.scope, "id"),
    ),
  );
  const more = entries.length === limit && limit < MAX_AUDIT_LINES;
  const next = new URLSearchParams(params);
  next.set("limit", Math.min(limit * 2, MAX_AUDIT_LINES));
  page.append(
    el("h2", {}, "Audit log"),
    form,
    el("p", { class: "muted", id: "audit-count" }, `${entries.length} lines, newest first.`),
    el(
      "section",
      { class: "card" },
      table(
        ["Time", "User", "#Device", "Action", "Collection", "Record", "Scope"],
        rows,
        "No lines match.",
      ),
    ),
    more && el("button", { type: "button", onclick: () => go(`#/audit?${next}`) }, "Show more"),
  );
}

// ---------------------------------------------------------------------------------------------
// Sync health

const CHARTS = [
  ["Pushes and pulls", [["pushes", "Pushes"], ["pulls", "Pulls"]]],
  ["Records", [["records_accepted", "Pushed and accepted"], ["records_pulled", "Pulled"]]],
  [
    "Refusals and errors",
    [["records_rejected", "Records refused"], ["unauthorized", "Tokens refused"],
      ["rate_limited", "Rate limited"]],
  ],
  ["Mean latency (ms)", [["push_latency_ms", "Push"], ["pull_latency_ms", "Pull"]]],
  ["Attachment chunks received", [["attachment_chunks_received", "Chunks"]]],
  ["Attachment bytes sent", [["attachment_bytes_sent", "Bytes"]]],
];

const TOTALS = [
  ["requests", "Requests"],
  ["pushes", "Pushes"],
  ["pulls", "Pulls"],
  ["records_accepted", "Records accepted"],
  ["records_rejected", "Records refused"],
  ["records_pulled", "Records pulled"],
  ["unauthorized", "Tokens refused"],
  ["rate_limited", "Rate limited"],
];

async function healthPage(page) {
  const health = await api("/v1/admin/health");
  const minutes = health.interval_secs >= 60;
  const every = minutes ? `${health.interval_secs / 60} min` : `${health.interval_secs} s`;
  page.append(
    el("h2", {}, "Sync health"),
    el(
      "p",
      { class: "muted" },
      `This server instance, sampled every ${every} over the last 24 hours. Totals since it ` +
        "started:",
    ),
    el(
      "dl",
      { class: "totals" },
      TOTALS.map(([key, label]) =>
        el("div", {}, el("dt", {}, label), el("dd", { "data-total": key }, health.totals[key])),
      ),
    ),
    el("button", { type: "button", onclick: () => render() }, "Refresh"),
  );
  if (health.at.length === 0) {
    page.append(
      el("p", { class: "empty" }, `No samples yet: the first is taken ${every} after the start.`),
    );
    return;
  }
  page.append(
    el(
      "div",
      { class: "charts" },
      CHARTS.map(([title, lines]) => {
        const series = lines.map(([key, label]) => ({ key, label, values: health.series[key] }));
        return chart(title, health.at, series);
      }),
    ),
  );
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attributes = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A round number at or above `n`: 1, 2 or 5 times a power of ten. */
function roundUp(n) {
  if (n <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(n));
  return [1, 2, 5, 10].map((m) => m * power).find((step) => step >= n);
}

const compact = (n) => (Number.isInteger(n) ? String(n) : n.toFixed(1));

/** A line chart of `lines` ({key, label, values}) over the times `at`; a missing value
 * (`null`) breaks its line. */
function chart(title, at, lines) {
  const [width, height, left, right, top, bottom] = [560, 170, 44, 10, 8, 22];
  const values = lines.flatMap((line) => line.values.filter((v) => v !== null));
  const max = roundUp(Math.max(0, ...values));
  const [first, last] = [at[0], at[at.length - 1]];
  const x = (t) =>
    left + (last === first ? 0.5 : (t - first) / (last - first)) * (width - left - right);
  const y = (v) => top + (1 - v / max) * (height - top - bottom);
  const drawing = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart",
    role: "img",
    "aria-label": title,
  });
  for (const v of [0, max / 2, max]) {
    drawing.append(
      svg("line", { class: "grid", x1: left, x2: width - right, y1: y(v), y2: y(v) }),
      svg("text", { class: "end", x: left - 6, y: y(v) + 4 }, compact(v)),
    );
  }
  // Hours and minutes, and seconds too over a span of minutes.
  const clock = (ms) => time(ms).slice(11, last - first < 600000 ? 19 : 16);
  drawing.append(
    svg("text", { x: left, y: height - 6 }, clock(first)),
    svg("text", { class: "end", x: width - right, y: height - 6 }, clock(last)),
  );
  lines.forEach((line, i) => {
    let points = [];
    const flush = () => {
      if (points.length === 1) {
        const [px, py] = points[0].split(",");
        drawing.append(svg("circle", { class: `series-${i}`, cx: px, cy: py, r: 2.5 }));
      } else if (points.length > 1) {
        drawing.append(svg("polyline", { class: `series-${i}`, points: points.join(" ") }));
      }
      points = [];
    };
    line.values.forEach((v, j) => {
      if (v === null) flush();
      else points.push(`${x(at[j]).toFixed(1)},${y(v).toFixed(1)}`);
    });
    flush();
  });
  const legend = el(
    "ul",
    { class: "legend" },
    lines.map((line, i) => {
      const seen = line.values.filter((v) => v !== null);
      const summary = line.key.endsWith("_ms")
        ? seen.length ? `mean ${compact(seen.reduce((a, b) => a + b, 0) / seen.length)}` : "none"
        : `${seen.reduce((a, b) => a + b, 0)} in all`;
      const item = { class: `series-${i}`, "data-series": line.key };
      return el("li", item, `${line.label}: ${summary}`);
    }),
  );
  return el("figure", { "data-chart": lines[0].key }, el("figcaption", {}, title), drawing, legend);
}

// ---------------------------------------------------------------------------------------------
// The schema

/** What `after` added to `before`, or made optional, in words. */
function changes(before, after) {
  const said = [];
  for (const [name, collection] of Object.entries(after.collections)) {
    const old = before.collections[name];
    if (!old) {
      said.push(`collection ${name}`);
      continue;
    }
    for (const [field, declared] of Object.entries(collection.fields)) {
      const was = old.fields[field];
      if (!was) said.push(`${name}.${field}`);
      else if (was.required && !declared.required) said.push(`${name}.${field} optional`);
    }
    const indexes = new Set((old.indexes ?? []).map((index) => index.name));
    for (const index of collection.indexes ?? []) {
      if (!indexes.has(index.name)) said.push(`index ${name}.${index.name}`);
    }
  }
  return said.length ? `added ${said.join(", ")}` : "no declared change";
}

async function schemaPage(page) {
  const { current, versions } = await api("/v1/admin/schema");
  if (versions.length === 0) {
    page.append(
      el("h2", {}, "Schema"),
      el("p", { class: "empty" }, "No schema is set: pushes are refused until one is."),
    );
    return;
  }
  const rows = versions
    .map((version, i) =>
      el(
        "tr",
        { "data-version": version.version },
        number(version.version),
        cell(time(version.set_at)),
        number(Object.keys(version.schema.collections).length),
        cell(i === 0 ? "first version" : changes(versions[i - 1].schema, version.schema)),
        cell(version.version === current ? "in force" : ""),
      ),
    )
    .reverse();
  const schema = versions[versions.length - 1].schema;
  page.append(
    el("h2", {}, `Schema version ${current} is in force`),
    el(
      "section",
      { class: "card" },
      table(["#Version", "Set", "#Collections", "Changes", ""], rows, ""),
    ),
  );
  for (const [name, collection] of Object.entries(schema.collections)) {
    const scope = collection.scope_field;
    const fields = Object.entries(collection.fields).map(([field, declared]) => {
      const more = [
        declared.target && `→ ${declared.target}`,
        declared.on_delete && `on delete: ${declared.on_delete}`,
        declared.download && `download: ${declared.download}`,
        field === collection.scope_field && "scope",
      ].filter(Boolean);
      return el(
        "tr",
        {},
        cell(field, "id"),
        cell(declared.type),
        cell(declared.required ? "yes" : ""),
        cell(more.join("; ")),
      );
    });
    const indexes = (collection.indexes ?? []).map(
      (index) => `${index.name} (${index.fields.join(", ")})`,
    );
    page.append(
      el(
        "section",
        { class: "card collection", "data-collection": name },
        el("h3", {}, name, " ", el("span", { class: "muted" }, `scoped by ${scope}`)),
        table(["Field", "Type", "Required", "Details"], fields, "No fields."),
        indexes.length > 0 && el("p", { class: "muted" }, `Indexes: ${indexes.join("; ")}`),
      ),
    );
  }
}

// ---------------------------------------------------------------------------------------------

document.getElementById("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  notice("");
  signInForm();
});
window.addEventListener("hashchange", () => {
  notice("");
  render();
});
render();
