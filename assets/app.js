// The registrar's own page (GET /app): a student view (log in, browse
// sections with their seat counts, register, drop, see results and waitlist
// positions move live) and an operator view for admins. Plain JavaScript,
// no build step: the binary serves this file as it is in the repository.
//
// Live updates come from GET /api/v1/students/me/events (Server-Sent
// Events), read with fetch() rather than EventSource because the stream
// needs the Authorization header. The seat counts are reread every 2 s with
// If-None-Match (a 304 costs the server almost nothing).
"use strict";

const $ = (id) => document.getElementById(id);
const session = {
  token: sessionStorage.getItem("registrar.token"),
  role: sessionStorage.getItem("registrar.role"),
  number: sessionStorage.getItem("registrar.number"),
};
const sections = new Map(); // section id -> the catalogue row
const standings = new Map(); // section id -> {status, position, reason}
let stream = null; // AbortController of the live stream
let timers = [];

function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (session.token) headers.authorization = "Bearer " + session.token;
  if (options.body) headers["content-type"] = "application/json";
  return fetch(path, Object.assign({}, options, { headers }));
}

async function problem(response) {
  try {
    const body = await response.json();
    return body.detail || body.title || response.statusText;
  } catch (_) {
    return response.status + " " + response.statusText;
  }
}

function say(text, kind) {
  const box = $("message");
  box.textContent = text;
  box.className = kind || "";
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function button(td, label, onClick) {
  const b = document.createElement("button");
  b.textContent = label;
  b.addEventListener("click", onClick);
  td.appendChild(b);
  return b;
}

// ---- session ----------------------------------------------------------

async function login(event) {
  event.preventDefault();
  const number = $("student-number").value.trim();
  const response = await api("/api/v1/auth/login", {
    method: "POST",
    body: JSON.stringify({ student_number: number, password: $("password").value }),
  });
  if (!response.ok) {
    $("login-view").querySelector(".hint").textContent = "Login failed: " + (await problem(response));
    return;
  }
  const body = await response.json();
  session.token = body.access_token;
  session.role = body.role;
  session.number = number;
  sessionStorage.setItem("registrar.token", session.token);
  sessionStorage.setItem("registrar.role", session.role);
  sessionStorage.setItem("registrar.number", number);
  show();
}

function logout() {
  sessionStorage.clear();
  session.token = session.role = session.number = null;
  if (stream) stream.abort();
  timers.forEach(clearInterval);
  timers = [];
  show();
}

function show() {
  const signedIn = Boolean(session.token);
  $("login-view").hidden = signedIn;
  $("logout").hidden = !signedIn;
  $("who").textContent = signedIn ? session.number + (session.role === "admin" ? " (admin)" : "") : "";
  $("student-view").hidden = !signedIn || session.role === "admin";
  $("operator-view").hidden = !signedIn || session.role !== "admin";
  if (!signedIn) return;
  if (session.role === "admin") {
    operator();
  } else {
    student();
  }
}

// ---- student view -----------------------------------------------------

async function student() {
  const response = await api("/api/v1/semesters");
  if (response.status === 401) return logout();
  const semesters = (await response.json()).items;
  const select = $("semester");
  select.replaceChildren();
  for (const s of semesters) {
    const option = document.createElement("option");
    option.value = s.id;
    option.textContent = s.name + (s.registration_open ? "" : " (closed)");
    select.appendChild(option);
  }
  const open = semesters.find((s) => s.registration_open) || semesters[0];
  if (open) select.value = open.id;
  select.onchange = () => refreshSections(true);
  await refreshSections(true);
  timers.push(setInterval(() => refreshSections(false), 2000));
  follow();
}

let sectionsTag = null;
async function refreshSections(fresh) {
  const semester = $("semester").value;
  if (!semester) return;
  const headers = {};
  if (!fresh && sectionsTag) headers["if-none-match"] = sectionsTag;
  const response = await api("/api/v1/semesters/" + semester + "/sections?limit=100", { headers });
  if (response.status === 304) return;
  if (!response.ok) return;
  sectionsTag = response.headers.get("etag");
  const page = await response.json();
  for (const s of page.items) sections.set(s.id, s);
  const body = $("sections").tBodies[0];
  body.replaceChildren();
  for (const s of page.items) {
    const row = body.insertRow();
    row.dataset.section = s.id;
    cell(row, s.course_code);
    cell(row, s.course_name);
    cell(row, s.section_number);
    cell(row, s.seats_available + " / " + s.total_seats, "seats");
    cell(row, s.waitlist_length + " / " + s.waitlist_limit, "waitlist");
    button(row.insertCell(), "Register", () => register(s.id)).className = "register";
  }
  renderMine();
}

async function register(section) {
  say("Registering…");
  const response = await api("/api/v1/register", {
    method: "POST",
    body: JSON.stringify({ section_ids: [section] }),
    headers: { "idempotency-key": crypto.randomUUID() },
  });
  if (!response.ok) return say("Not registered: " + (await problem(response)), "bad");
  const result = (await response.json()).results[0];
  const label = labelOf(section);
  if (result.status === "enrolled") say("Enrolled in " + label + ".", "good");
  else if (result.status === "waitlisted") say("Waitlisted for " + label + " at position " + result.waitlist_position + ".", "good");
  else say(label + ": " + result.status + (result.reason ? " (" + result.reason.replaceAll("_", " ") + ")" : ""), "bad");
  refreshSections(false);
}

async function drop(section) {
  const response = await api("/api/v1/register/drop", {
    method: "POST",
    body: JSON.stringify({ section_id: section }),
    headers: { "idempotency-key": crypto.randomUUID() },
  });
  if (!response.ok) return say("Not dropped: " + (await problem(response)), "bad");
  const result = await response.json();
  say((result.status === "dropped" ? "Dropped " : "Left the waitlist of ") + labelOf(section) + ".", "good");
  refreshSections(false);
}

function labelOf(section) {
  const s = sections.get(section);
  return s ? s.course_code + "-" + s.section_number : section;
}

function describe(standing) {
  switch (standing.status) {
    case "enrolled":
      return "enrolled";
    case "waitlisted":
      return "waitlisted, position " + standing.position;
    case "reverted":
      return "undone: " + (standing.reason || "see your registrations");
    default:
      return "not registered";
  }
}

function renderMine() {
  const body = $("mine").tBodies[0];
  body.replaceChildren();
  let shown = 0;
  for (const [id, standing] of standings) {
    if (standing.status === "none") continue;
    shown++;
    const s = sections.get(id);
    const row = body.insertRow();
    row.dataset.section = id;
    row.dataset.status = standing.status;
    cell(row, s ? s.course_code + " " + s.course_name : id);
    cell(row, s ? s.section_number : "");
    cell(row, describe(standing), "status");
    const actions = row.insertCell();
    if (standing.status === "enrolled" || standing.status === "waitlisted") {
      button(actions, standing.status === "enrolled" ? "Drop" : "Leave waitlist", () => drop(id)).className = "drop";
    }
  }
  $("mine-empty").hidden = shown > 0;
}

// Reads the student's stream; reconnects with Last-Event-ID after 2 s.
async function follow() {
  let lastId = null;
  while (session.token && session.role !== "admin") {
    stream = new AbortController();
    const headers = { authorization: "Bearer " + session.token };
    if (lastId) headers["last-event-id"] = lastId;
    try {
      const response = await fetch("/api/v1/students/me/events", { headers, signal: stream.signal });
      if (response.status === 401) return logout();
      if (!response.ok) throw new Error(await problem(response));
      $("live-state").textContent = "live";
      $("live-state").className = "pill live";
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = { event: "message", id: null, data: null };
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) event.event = line.slice(7);
            else if (line.startsWith("id: ")) event.id = line.slice(4);
            else if (line.startsWith("data: ")) event.data = JSON.parse(line.slice(6));
          }
          if (event.data === null) continue;
          lastId = event.id;
          if (event.event === "snapshot") {
            standings.clear();
            for (const item of event.data.items) standings.set(item.section_id, item);
          } else if (event.event === "standing") {
            standings.set(event.data.section_id, event.data);
          }
          renderMine();
        }
      }
    } catch (e) {
      if (e.name === "AbortError") return;
    }
    $("live-state").textContent = "reconnecting…";
    $("live-state").className = "pill";
    await new Promise((r) => setTimeout(r, 2000));
  }
}

// ---- operator view ----------------------------------------------------

function metricSum(text, name, label) {
  // Sums a metric's samples, or groups them by one label's value.
  const sums = label ? {} : { all: 0 };
  let found = false;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== " " && rest[0] !== "{") continue;
    found = true;
    const value = parseFloat(rest.slice(rest.lastIndexOf(" ") + 1));
    if (label) {
      const m = rest.match(new RegExp(label + '="([^"]*)"'));
      const key = m ? m[1] : "";
      sums[key] = (sums[key] || 0) + value;
    } else {
      sums.all += value;
    }
  }
  return found ? sums : null;
}

let previous = null;
async function operator() {
  await tick();
  timers.push(setInterval(tick, 2000));
}

async function tick() {
  const [metrics, persistence] = await Promise.all([
    api("/metrics").then((r) => (r.ok ? r.text() : null)).catch(() => null),
    api("/api/v1/admin/persistence").then((r) => (r.ok ? r.json() : null)).catch(() => null),
  ]);
  $("ops-state").textContent = metrics ? "live" : "no /metrics here";
  $("ops-state").className = metrics ? "pill live" : "pill";
  if (metrics) {
    const now = Date.now();
    const outcomes = metricSum(metrics, "registrar_registrations_total", "outcome") || {};
    const total = Object.values(outcomes).reduce((a, b) => a + b, 0);
    const body = $("ops-outcomes").tBodies[0];
    body.replaceChildren();
    if (previous) {
      const seconds = (now - previous.at) / 1000;
      $("ops-rate").textContent = ((total - previous.total) / seconds).toFixed(1);
      for (const [outcome, count] of Object.entries(outcomes).sort()) {
        const row = body.insertRow();
        cell(row, outcome);
        cell(row, ((count - (previous.outcomes[outcome] || 0)) / seconds).toFixed(1) + "/s");
      }
    }
    previous = { at: now, total, outcomes };
    const value = (name) => {
      const s = metricSum(metrics, name);
      return s ? s.all : null;
    };
    const show = (id, v, digits) => ($(id).textContent = v === null ? "–" : v.toFixed(digits || 0));
    show("ops-queue", value("registrar_persistence_queue_depth"));
    show("ops-backlog", value("registrar_outbox_backlog"));
    show("ops-age", value("registrar_outbox_oldest_age_seconds"), 1);
    show("ops-drift", value("registrar_reconcile_drift_sections"));
    show("ops-streams", value("registrar_live_streams"));
  }
  if (persistence) {
    $("ops-dead").textContent = persistence.dead_letters;
    const body = $("ops-writers").tBodies[0];
    body.replaceChildren();
    for (const w of persistence.writers) {
      const row = body.insertRow();
      cell(row, w.instance);
      cell(row, w.seen_at);
      cell(row, w.partitions.join(", "));
    }
  }
}

// ---- start ------------------------------------------------------------

$("login-form").addEventListener("submit", login);
$("logout").addEventListener("click", logout);
show();
