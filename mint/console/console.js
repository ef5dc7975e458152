// The MinT admin console: reads the JSON API under /admin/api (projections only) with the token the
// user signs in with, re-renders the current view whenever the catalog folds new facts (the SSE
// stream at /admin/api/stream), and appends Promote / Rollback commands from the admin buttons.
"use strict";

const view = document.getElementById("view");
let me = null;

function token() { return sessionStorage.getItem("mint-token") || ""; }

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// --- numbers for people: the JSON API is exact (ISO times, float milliseconds, bytes), the page shows
// "6.4 ms", "1.9 MB", "12,345", "3 min ago", with the exact value on hover (a `title`) ---
const COUNT = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const TWO_DIGITS = new Intl.NumberFormat(undefined, { maximumSignificantDigits: 2 });
const FOUR_DIGITS = new Intl.NumberFormat(undefined, { maximumSignificantDigits: 4 });
const SCORE = new Intl.NumberFormat(undefined, { minimumFractionDigits: 3, maximumFractionDigits: 3 });
const SIZE_UNITS = ["B", "kB", "MB", "GB", "TB"];

function missing(value) { return value === null || value === undefined; }
// Two significant digits below 100 ("6.4", "12"), whole numbers above ("643").
function short(x) { return x < 100 ? TWO_DIGITS.format(x) : COUNT.format(x); }
function count(n) { return missing(n) ? "-" : COUNT.format(n); }
function number(x) { return missing(x) ? "-" : FOUR_DIGITS.format(x); }
function score(x) { return missing(x) ? "-" : SCORE.format(x); }
function percent(share) { return missing(share) ? "-" : `${short(share * 100)}%`; }

function hover(text, exact) { return `<span title="${esc(exact)}">${esc(text)}</span>`; }

function durationText(ms) {
  const steps = [[1000, "ms"], [60, "s"], [60, "min"], [24, "h"]];
  let value = ms;
  for (const [next, unit] of steps) {
    if (Math.abs(value) < next) return `${short(value)} ${unit}`;
    value /= next;
  }
  return `${short(value)} d`;
}

function duration(ms) { return missing(ms) ? "-" : hover(durationText(ms), `${ms} ms`); }

function size(bytes) {
  if (missing(bytes)) return "-";
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1000 && unit < SIZE_UNITS.length - 1) { value /= 1000; unit++; }
  return hover(`${unit ? short(value) : COUNT.format(value)} ${SIZE_UNITS[unit]}`, `${COUNT.format(bytes)} bytes`);
}

// "just now", "42 s ago", "3 min ago", "5 h ago", "2 d ago" (or "in …" for a clock ahead of ours);
// past a month, the date.
function agoText(iso) {
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  const span = Math.abs(seconds);
  if (Number.isNaN(span)) return iso;
  if (span < 10) return "just now";
  const steps = [[60, 1, "s"], [3600, 60, "min"], [86400, 3600, "h"], [30 * 86400, 86400, "d"]];
  for (const [below, per, unit] of steps) {
    if (span < below) {
      const text = `${Math.floor(span / per)} ${unit}`;
      return seconds >= 0 ? `${text} ago` : `in ${text}`;
    }
  }
  return iso.slice(0, 10);
}

function when(iso) {
  if (!iso) return "-";
  return `<time datetime="${esc(iso)}" title="${esc(iso)}">${esc(agoText(iso))}</time>`;
}

// Relative times age while a page stays open: each is redone from its exact value.
function refreshTimes() {
  for (const t of document.querySelectorAll("time[datetime]")) t.textContent = agoText(t.dateTime);
}

async function api(path, options = {}) {
  const response = await fetch(`/admin/api${path}`, {
    ...options,
    headers: { Authorization: `Bearer ${token()}`, "Content-Type": "application/json" },
  });
  const body = await response.json();
  if (response.status === 401) { signOut(body.error.message); throw new Error(body.error.message); }
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  return body;
}

function signOut(message) {
  sessionStorage.removeItem("mint-token");
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
}

function table(headers, rows) {
  const head = headers.map((h) => `<th>${esc(h)}</th>`).join("");
  const body = rows.map((r) => `<tr>${r.map((c) => `<td>${c}</td>`).join("")}</tr>`).join("");
  return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

function policyLink(policy) { return `<a href="#/policy/${esc(policy)}">${esc(policy)}</a>`; }

// --- policies: paged search by tenant/name prefix, status and base ---
let searchState = { prefix: "", status: "", base: "", pages: [""] };

async function renderPolicies() {
  const s = searchState;
  const after = s.pages[s.pages.length - 1];
  const q = new URLSearchParams({ prefix: s.prefix, status: s.status, base: s.base, after, limit: "50" });
  const page = await api(`/policies?${q}`);
  const rows = page.policies.map((p) => [
    policyLink(p.policy), esc(p.status), esc(p.base_id), `<span class="pointer">${esc(p.pointer || "-")}</span>`,
    when(p.updated_at),
  ]);
  view.innerHTML = `
    <form id="search">
      <input id="search-prefix" placeholder="tenant/name prefix" value="${esc(s.prefix)}" size="30">
      <select id="search-status">
        ${["", "active", "retired"].map((v) => `<option value="${v}" ${v === s.status ? "selected" : ""}>${v || "any status"}</option>`).join("")}
      </select>
      <input id="search-base" placeholder="base" value="${esc(s.base)}" size="12">
      <button type="submit">Search</button>
    </form>
    ${table(["policy", "status", "base", "serving", "updated"], rows)}
    <button id="prev" ${s.pages.length > 1 ? "" : "disabled"}>Previous</button>
    <button id="next" ${page.next ? "" : "disabled"}>Next</button>`;
  document.getElementById("search").onsubmit = (e) => {
    e.preventDefault();
    searchState = {
      prefix: document.getElementById("search-prefix").value.trim(),
      status: document.getElementById("search-status").value,
      base: document.getElementById("search-base").value.trim(),
      pages: [""],
    };
    render();
  };
  document.getElementById("next").onclick = () => { s.pages.push(page.next); render(); };
  document.getElementById("prev").onclick = () => { s.pages.pop(); render(); };
}

// --- one policy: pointer, buttons, revisions, lineage, evaluations, serving history, audit ---
let lastCommand = null;

function lineageSvg(lineage) {
  const depth = {};
  const parents = Object.fromEntries(lineage.edges.map((e) => [e.to, e.from]));
  const depthOf = (id, seen = 0) => (parents[id] && seen < 100 ? 1 + depthOf(parents[id], seen + 1) : 0);
  const perLevel = {};
  const pos = {};
  for (const n of lineage.nodes) {
    const d = depthOf(n.id);
    depth[n.id] = d;
    perLevel[d] = (perLevel[d] || 0) + 1;
    pos[n.id] = { x: 40 + d * 110, y: 25 + (perLevel[d] - 1) * 36 };
  }
  const height = 30 + 36 * Math.max(1, ...Object.values(perLevel));
  const width = 80 + 110 * (1 + Math.max(0, ...Object.values(depth)));
  const edges = lineage.edges.filter((e) => pos[e.from]).map((e) =>
    `<line x1="${pos[e.from].x}" y1="${pos[e.from].y}" x2="${pos[e.to].x}" y2="${pos[e.to].y}" stroke="#8895a7"/>`);
  const nodes = lineage.nodes.map((n) => {
    const fill = n.pointer ? "#0a6b2d" : n.served ? "#7fb38f" : "#c9d2dc";
    return `<g><circle cx="${pos[n.id].x}" cy="${pos[n.id].y}" r="9" fill="${fill}"/>` +
      `<text x="${pos[n.id].x + 12}" y="${pos[n.id].y + 4}">${esc(n.id)}</text></g>`;
  });
  return `<svg id="lineage" width="${width}" height="${height}">${edges.join("")}${nodes.join("")}</svg>`;
}

// The gate a revision must pass and the watch that rolls it back, in words.
function rules(p) {
  const gate = p.gate
    ? `gate ${esc(p.gate.suite)}, tolerance ${number(p.gate.tolerance)}` +
      (p.gate.min_score !== null ? `, at least ${number(p.gate.min_score)}` : "")
    : "no gate";
  const watch = p.watch
    ? `watch: roll back above ${number(p.watch.max_error_rate)} errors over ${count(p.watch.min_requests)} requests` +
      (p.watch.max_score_drop !== null ? ` or a live score ${number(p.watch.max_score_drop)} below the evaluation` : "")
    : "no watch";
  return `${gate} · ${watch}`;
}

// The policy page's tables, one per kind of row.
function revisionsTable(d, admin) {
  const pointer = d.policy.pointer;
  return table(["revision", "parent", "run", "size", "eval score", "verdict", "exported", ""], d.revisions.map((r) => [
    esc(r.revision) + (r.revision === pointer ? ' <span class="pointer">(serving)</span>' : ""),
    esc(r.parent || "-"), esc(r.run || "-"), size(r.bytes), score(r.eval_score), esc(r.eval_verdict || "-"),
    when(r.exported_at),
    admin ? `<button class="promote" data-revision="${esc(r.revision)}">Promote</button>` : "",
  ]));
}

function evaluationsTable(evaluations) {
  return table(["at", "revision", "suite", "score", "baseline", "delta", "verdict", "why"], evaluations.map((e) => [
    when(e.at), esc(e.revision), esc(`${e.suite} v${e.suite_version}`), score(e.score),
    `${score(e.baseline_score)} (${esc(e.baseline_revision || "base model")})`,
    score(e.delta), esc(e.verdict), esc(e.detail || "")]));
}

function trafficTable(traffic) {
  return table(["revision", "requests", "failed", "live score", "updated"], traffic.map((t) => [
    esc(t.revision), count(t.requests), count(t.errors),
    t.scored ? `${score(t.score_sum / t.scored)} on ${count(t.scored)}` : "-", when(t.updated_at)]));
}

// A shadow candidate's runs scored beside the stable answer to the same prompt: the mean difference
// (± its standard error) on how many prompts, and the wins, losses and ties.
function pairedText(n) {
  if (!n.pairs) return "-";
  const sign = n.paired_mean_diff >= 0 ? "+" : "";
  const spread = n.paired_stderr === null ? "" : ` ± ${score(n.paired_stderr)}`;
  return `${sign}${score(n.paired_mean_diff)}${spread} on ${count(n.pairs)} prompts
    (${count(n.paired_wins)} won, ${count(n.paired_losses)} lost, ${count(n.paired_ties)} tied)`;
}

// The running canary: its rules, both revisions' live numbers over its window, and its buttons.
function canaryPanel(panel, admin) {
  if (!panel) return `<p class="muted">no canary running</p>`;
  const c = panel.canary, r = c.rules;
  const row = (side, n) => [esc(side), esc(n.revision), count(n.requests), count(n.errors),
    percent(n.error_rate), n.scored ? `${score(n.score)} on ${count(n.scored)}` : "-", pairedText(n)];
  const buttons = admin ? `<p><button id="canary-promote" data-canary="${esc(c.canary)}">Promote</button>
    <button id="canary-abort" data-canary="${esc(c.canary)}">Abort</button></p>` : "";
  return `<div id="canary"><p><b>${esc(r.mode)}</b> of <b>${esc(c.revision)}</b> against ${esc(c.stable)} ·
    ${percent(r.fraction)} of requests · decided after ${count(r.min_requests)} requests (error rate ≤
    ${percent(r.max_error_rate)}, score drop ≤ ${score(r.max_score_drop)}) or aborted after
    ${durationText(r.max_duration_s * 1000)} · started ${when(c.started_at)}</p>
    ${table(["", "revision", "requests", "failed", "error rate", "live score", "paired difference"],
      [row("candidate", panel.candidate), row("stable", panel.stable)])}${buttons}</div>`;
}

function canariesTable(canaries) {
  return table(["started", "revision", "against", "mode", "status", "reason"], canaries.map((c) => [
    when(c.started_at), esc(c.revision), esc(c.stable), esc(c.rules.mode), esc(c.status), esc(c.reason)]));
}

function servingTable(serving) {
  return table(["at", "move", "revision", "from", "reason", "evidence"], serving.map((m) => [
    when(m.at), esc(m.kind), esc(m.revision), esc(m.previous || "-"), esc(m.reason),
    Object.entries(m.evidence || {}).map(([k, v]) => `${esc(k)}=${hover(number(v), v)}`).join(", ")]));
}

function auditTable(audit) {
  return table(["at", "what", "revision", "detail", "record", "caused by"], audit.map((a) => [
    when(a.at), esc(a.what), esc(a.revision || ""), esc(a.detail), `<code>${esc(a.id || "")}</code>`,
    `<code>${esc(a.causation || "")}</code>`]));
}

function adminControls(revisions) {
  const options = revisions.map((r) => `<option>${esc(r.revision)}</option>`).join("");
  return `<p><button id="rollback">Roll back</button>
    <select id="rollback-to"><option value="">to the previous revision</option>${options}</select>
    <input id="reason" placeholder="reason" size="30"></p>`;
}

function bindAdminControls(policy, typed, chosen) {
  document.getElementById("reason").value = typed;
  document.getElementById("rollback-to").value = chosen;
  const reason = () => document.getElementById("reason").value || "from the console";
  document.getElementById("rollback").onclick = () => {
    const to = document.getElementById("rollback-to").value || null;
    command(policy, "rollback", { to_revision: to, reason: reason() });
  };
  for (const button of view.querySelectorAll(".promote")) {
    button.onclick = () => command(policy, "promote", { revision: button.dataset.revision, reason: reason() });
  }
  for (const action of ["promote", "abort"]) {
    const button = document.getElementById(`canary-${action}`);
    if (button) button.onclick = () => command(policy, `canary/${action}`, { canary: button.dataset.canary, reason: reason() });
  }
}

async function renderPolicy(policy) {
  const d = await api(`/policies/${policy}`);
  const p = d.policy;
  const admin = me && me.roles.includes("admin");
  // A live re-render must not eat what the admin is typing or has chosen.
  const same = view.dataset.policy === policy;
  const typed = (same && document.getElementById("reason")?.value) || "";
  const chosen = (same && document.getElementById("rollback-to")?.value) || "";
  view.dataset.policy = policy;
  view.innerHTML = `
    <h2>${esc(p.policy)}</h2>
    <p>status <b>${esc(p.status)}</b> · base ${esc(p.base_id)} · promotion ${esc(p.promotion)} ·
       serving <span id="pointer" class="pointer">${esc(p.pointer || "-")}</span> · registered ${when(p.registered_at)}</p>
    ${admin ? adminControls(d.revisions) : ""}
    <p id="rules">${rules(p)}</p>
    <p id="outcome" class="muted">${lastCommand && lastCommand.policy === policy ? esc(lastCommand.text) : ""}</p>
    <h3>Revisions</h3>${revisionsTable(d, admin)}
    <h3>Lineage</h3>${lineageSvg(d.lineage)}
    <h3>Evaluations</h3>${evaluationsTable(d.evaluations)}
    <h3>Canary</h3>${canaryPanel(d.canary, admin)}
    <h3>Live traffic</h3>${trafficTable(d.traffic)}
    <h3>Serving history</h3>${servingTable(d.serving)}
    <h3>Canaries</h3>${canariesTable(d.canaries)}
    <h3>Audit trail</h3>${auditTable(d.audit)}`;
  if (admin) bindAdminControls(policy, typed, chosen);
}

async function command(policy, action, body) {
  const outcome = document.getElementById("outcome");
  try {
    const sent = await api(`/policies/${policy}/${action}`, { method: "POST", body: JSON.stringify(body) });
    lastCommand = { policy, id: sent.command, text: `${sent.type} ${sent.command}: pending…` };
    outcome.textContent = lastCommand.text;
    await followOutcome(policy, sent);
  } catch (error) {
    outcome.textContent = `refused: ${error.message}`;
    outcome.className = "error";
  }
}

async function followOutcome(policy, sent) {
  // The command's fate arrives as a fact (a pointer move) or a CommandRejected; poll until either.
  for (let i = 0; i < 200; i++) {
    const o = await api(`/policies/${policy}/outcomes/${sent.command}`);
    if (o.status !== "pending") {
      const applied = o.move
        ? `${o.move.kind} to ${o.move.revision} (fact ${o.move.id})`
        : o.canary && `canary of ${o.canary.revision} ${o.canary.status}`;
      lastCommand.text = o.status === "applied"
        ? `${sent.type} applied: ${applied}`
        : `${sent.type} rejected: ${o.rejection.reason}`;
      render();
      return;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

// --- engines, runs, dead letters ---
// Adapters per tier ("gpu: 2, cpu: 1"), or "none".
function perTier(counts) {
  return Object.entries(counts).map(([tier, n]) => `${esc(tier)}: ${count(n)}`).join(", ") || "none";
}

// Liveness as it is, from heartbeats: "up", "stale" (silent past T1: no requests routed to it) or
// "lost" (declared lost, or silent past T2), with why.
function liveness(e) {
  const why = e.liveness === "lost" && e.lost_reason ? `: ${esc(e.lost_reason)}`
    : e.liveness !== "up" && e.heard_s !== null ? `: silent for ${duration(e.heard_s * 1000)}` : "";
  return `<b class="liveness ${esc(e.liveness)}">${esc(e.liveness)}</b>${why}`;
}

function engineCard(e) {
  // The operator's view carries the engine-wide counts (wave, loads, in flight); a tenant's does not.
  return `
    <div class="card engine ${esc(e.liveness)}"><h3>${esc(e.engine)} <span class="muted">${esc(e.kind)} · base ${esc(e.base_id)} · ${liveness(e)} · registered ${when(e.registered_at)}${e.url ? ` · ${esc(e.url)}` : ""}</span></h3>
    <p>${count(e.gpu_slots)} GPU slots · ${count(e.cpu_slots)} host slots ·
      ${"wave" in e ? `wave ${count(e.wave)} · in flight ${count(e.in_flight)} ·` : ""}
      resident ${perTier(e.tiers)}
      ${"loads" in e ? `· loaded so far ${perTier(e.loads)}` : ""}</p>
    ${table(["tier", "adapter", "load time", "loaded"], e.resident.map((r) => [esc(r.tier), esc(`${r.policy}@${r.revision}`), duration(r.load_ms), when(r.loaded_at)]))}
    ${table(["wave", "load", "evict", "at"], e.waves.map((w) => [count(w.wave), esc(w.load.join(", ")), esc(w.evict.join(", ")), when(w.at)]))}
    ${e.failures.length ? table(["failed load", "reason", "at"], e.failures.map((f) => [esc(`${f.policy}@${f.revision}`), esc(f.reason), when(f.at)])) : ""}
    </div>`;
}

async function renderEngines() {
  const { engines } = await api("/engines");
  view.innerHTML = engines.length ? engines.map(engineCard).join("") : "<p class='muted'>No engine has registered.</p>";
}

async function renderRuns() {
  const { runs } = await api("/runs");
  view.innerHTML = table(["run", "algo", "task", "policies", "steps", "status", "started"], runs.map((r) => [
    `<a href="#/run/${esc(r.run)}">${esc(r.run)}</a>`, esc(r.algo), esc(r.task), esc(r.policies.join(", ")),
    count(r.steps), esc(r.status), when(r.started_at)]));
}

function chart(title, series) {
  // One SVG line chart: x is the step, one line per policy.
  const points = Object.values(series).flat();
  if (!points.length) return `<p class="muted">${esc(title)}: no steps yet</p>`;
  const [w, h, pad] = [520, 200, 36];
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (w - 2 * pad);
  const sy = (y) => h - pad - ((y - y0) / (y1 - y0 || 1)) * (h - 2 * pad);
  const colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
  const lines = Object.entries(series).map(([name, pts], i) =>
    `<polyline fill="none" stroke="${colors[i % colors.length]}" stroke-width="2" points="${pts.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" ")}"/>` +
    `<text x="${w - pad - 150}" y="${14 + 14 * i}" fill="${colors[i % colors.length]}">${esc(name)}</text>`);
  return `<h3>${esc(title)}</h3><svg class="chart" width="${w}" height="${h}">
    <line x1="${pad}" y1="${h - pad}" x2="${w - pad}" y2="${h - pad}" stroke="#999"/>
    <line x1="${pad}" y1="${pad}" x2="${pad}" y2="${h - pad}" stroke="#999"/>
    <text x="2" y="${pad}">${esc(y1.toPrecision(3))}</text><text x="2" y="${h - pad}">${esc(y0.toPrecision(3))}</text>
    <text x="${pad}" y="${h - 8}">step ${esc(x0)}</text><text x="${w - pad - 40}" y="${h - 8}">step ${esc(x1)}</text>
    ${lines.join("")}</svg>`;
}

async function renderRun(run) {
  const { run: r, steps } = await api(`/runs/${run}`);
  const series = (field) => {
    const out = {};
    for (const s of steps) if (s[field] !== null) (out[s.policy] = out[s.policy] || []).push([s.step, s[field]]);
    return out;
  };
  view.innerHTML = `<h2>${esc(r.run)}</h2><p>${esc(r.algo)} on ${esc(r.base_id)} · task ${esc(r.task)} · ${esc(r.status)}
    · step ${count(Math.max(0, ...steps.map((s) => s.step)))} of ${count(r.steps)} · started ${when(r.started_at)}
    ${r.finished_at ? `· finished ${when(r.finished_at)}` : ""} ${r.reason ? `· ${esc(r.reason)}` : ""}</p>${chart("reward (mean)", series("reward_mean"))}${chart("loss", series("loss"))}`;
}

async function renderDeadLetters() {
  const { dead_letters: rows } = await api("/dead-letters");
  view.innerHTML = table(["partition:offset", "id", "type", "reason", "record"], rows.map((d) => [
    esc(`${d.partition}:${d.offset}`), `<code>${esc(d.id)}</code>`, esc(d.type), esc(d.reason), `<code>${esc(d.raw.slice(0, 200))}</code>`]));
}

// --- routing, live updates, sign-in ---
async function render() {
  if (!token()) { signOut(); return; }
  const [, kind, ...rest] = (location.hash || "#/policies").split("/");
  const arg = rest.join("/");
  try {
    if (!me) {
      me = await api("/me");
      document.getElementById("whoami").textContent = `${me.tenant} (${me.roles.join(", ")})`;
      follow();
    }
    if (kind !== "policy") delete view.dataset.policy;
    if (kind === "policy") await renderPolicy(arg);
    else if (kind === "engines") await renderEngines();
    else if (kind === "runs") await renderRuns();
    else if (kind === "run") await renderRun(arg);
    else if (kind === "dead-letters") await renderDeadLetters();
    else await renderPolicies();
  } catch (error) {
    view.innerHTML = `<p class="error">${esc(error.message)}</p>`;
  }
}

async function follow() {
  // SSE over fetch (EventSource cannot send the Authorization header). Each event (`position` for
  // the operator, with the fact count; `changed` for a tenant) means new facts were folded into the
  // catalog: re-render what is on screen.
  const live = document.getElementById("live");
  for (;;) {
    try {
      const response = await fetch("/admin/api/stream", { headers: { Authorization: `Bearer ${token()}` } });
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let first = true;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const data = buffer.slice(0, cut).split("\n").find((l) => l.startsWith("data: "));
          buffer = buffer.slice(cut + 2);
          if (!data) continue;
          const { facts } = JSON.parse(data.slice(6));
          live.textContent = facts === undefined ? `live · updated ${new Date().toLocaleTimeString()}` : `live · ${count(facts)} facts`;
          if (!first && !document.querySelector("form#search :focus")) render();
          first = false;
        }
      }
    } catch (error) {
      live.textContent = "reconnecting…";
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

document.getElementById("login").onsubmit = (e) => {
  e.preventDefault();
  sessionStorage.setItem("mint-token", document.getElementById("token").value.trim());
  document.getElementById("login").hidden = true;
  me = null;
  render();
};
window.addEventListener("hashchange", render);
setInterval(refreshTimes, 15_000);
render();
