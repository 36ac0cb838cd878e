// ebb's web view: follows the agent's /v1/stream (server-sent events) and
// draws what the API serves, in the API's own types. No library, nothing
// fetched from elsewhere: the page works on a host without internet.
"use strict";

const HOUR_MS = 3600 * 1000;
const KEEP_EVENTS = 500;
const PALETTE = ["#2e90fa", "#f79009", "#12b76a", "#ee46bc", "#7a5af8", "#f04438", "#06aed4", "#a15c07", "#4e5ba6", "#66c61c"];

const state = {
  token: "",
  write: false,
  farm: false,
  snapshot: null,
  samples: [],
  events: [],
  colors: new Map(),
  // Each VM's table row, kept between snapshots so its buttons stay put.
  rows: new Map(),
  source: null,
};

const $ = (id) => document.getElementById(id);

// ---- the token: from ?token= once, then this tab's session storage, so
// it does not stay in the address bar or the history.
function takeToken() {
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    sessionStorage.setItem("ebb-token", params.get("token"));
    history.replaceState(null, "", location.pathname);
  }
  state.token = sessionStorage.getItem("ebb-token") || "";
}

function authHeaders() {
  return state.token ? { Authorization: "Bearer " + state.token } : {};
}

function showLogin(why) {
  $("view").hidden = true;
  $("login").hidden = false;
  $("login-why").textContent = why;
  $("login-why").className = "error";
  $("live").textContent = "refused";
  $("live").className = "live off";
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("ebb-token", $("login-token").value.trim());
  location.reload();
});

// ---- words and numbers, as the CLI writes them
function bytes(n) {
  if (n === null || n === undefined) return "–";
  const mib = n / 1048576;
  if (mib >= 1024) return (mib / 1024).toFixed(1) + " GiB";
  return Math.round(mib) + " MiB";
}
function rate(n) {
  if (n === null || n === undefined) return "–";
  if (n >= 1048576) return (n / 1048576).toFixed(1) + " MiB/s";
  if (n >= 1024) return (n / 1024).toFixed(0) + " KiB/s";
  return n + " B/s";
}
function pct(f) {
  return f === null || f === undefined ? "–" : Math.round(f * 100) + "%";
}
function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
function svg(tag, attrs, ...children) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
// The palette's colours first, then hues spread by the golden angle, so
// no two VMs share a colour however many there are.
function colorOf(name) {
  if (!state.colors.has(name)) {
    const i = state.colors.size;
    state.colors.set(name, i < PALETTE.length ? PALETTE[i] : "hsl(" + Math.round((i * 137.508) % 360) + " 65% 50%)");
  }
  return state.colors.get(name);
}

// ---- the stream
async function start() {
  takeToken();
  // A wrong token is said here, with the agent's reason: an EventSource
  // only sees that it failed.
  let answer;
  try {
    answer = await fetch("v1/status", { headers: authHeaders() });
  } catch (e) {
    return showLogin("the agent cannot be reached: " + e);
  }
  if (answer.status === 401 || answer.status === 403) {
    const body = await answer.json().catch(() => ({}));
    return showLogin(body.error || "this token is not accepted");
  }
  $("view").hidden = false;
  const url = "v1/stream" + (state.token ? "?token=" + encodeURIComponent(state.token) : "");
  if (state.source) state.source.close();
  const source = new EventSource(url);
  state.source = source;
  const on = (name, f) => source.addEventListener(name, (m) => f(JSON.parse(m.data)));
  on("hello", (h) => {
    // A reconnect starts over: the stream sends the history and journal again.
    state.events = [];
    state.samples = [];
    state.rows.clear();
    state.write = h.write;
    state.farm = h.farm;
    $("actions-head").hidden = !h.write;
    $("farm").hidden = !h.farm;
  });
  on("history", (samples) => {
    state.samples = samples;
    drawMemory();
    drawPower();
  });
  on("sample", (s) => {
    state.samples.push(s);
    const from = s.at - HOUR_MS;
    while (state.samples.length && state.samples[0].at < from) state.samples.shift();
    drawMemory();
    drawPower();
  });
  on("snapshot", (s) => {
    state.snapshot = s;
    $("live").textContent = "live · tick " + s.status.ticks;
    $("live").className = "live";
    $("live").dataset.ticks = s.status.ticks;
    renderSummary(s.status);
    renderVms(s.vms);
    renderPower(s.status.power);
    renderHostFarm(s.status);
    drawTimeline();
  });
  on("events", (events) => {
    state.events.push(...events);
    if (state.events.length > KEEP_EVENTS) state.events.splice(0, state.events.length - KEEP_EVENTS);
    renderJournal();
    drawTimeline();
  });
  on("farm", renderFarm);
  source.onerror = () => {
    $("live").textContent = "reconnecting…";
    $("live").className = "live off";
    // Refused (a token rotated across a restart, say): the browser gives
    // up on the stream; start again, which says why.
    if (source.readyState === EventSource.CLOSED) setTimeout(start, 2000);
  };
}

// ---- the host
function card(key, value, id, title) {
  return el("div", { class: "card", id: id, title: title }, el("div", { class: "k" }, key), el("div", { class: "v" }, value));
}

function renderSummary(st) {
  $("host").textContent = st.uri + " · ebb " + st.version;
  const conn = st.connection.state === "connected" ? "connected" : "DISCONNECTED: " + st.connection.error;
  const cards = [
    card("libvirt", conn, "s-connection"),
    card("VMs", st.vms + " (" + st.vms_managed + " managed)", "s-vms"),
    card("pool used", st.pool ? bytes(st.pool_used) + " of " + bytes(st.pool) : bytes(st.pool_used), "s-pool"),
    card("host available", bytes(st.host_available) + " of " + bytes(st.host_total), "s-host"),
    card("sleeps / wakes", st.sleeps_total + " / " + st.wakes_total, "s-sleeps"),
    card("active clients", st.active_clients, "s-clients"),
    card("actions", st.actions_total + (st.action_failures_total ? " (" + st.action_failures_total + " failed)" : ""), "s-actions"),
    card("last tick", st.last_tick_ms.toFixed(1) + " ms", "s-tick"),
  ];
  $("summary").replaceChildren(...cards);
  const notes = [
    !st.memory_enabled && "memory: observed only (memory.enabled = false): ebb moves no balloon",
    st.pool_note,
    st.journal_trouble && "journal: " + st.journal_trouble,
  ].filter(Boolean);
  $("note").hidden = notes.length === 0;
  $("note").textContent = notes.join(" · ");
}

// ---- the VMs
function stateWords(v) {
  if (v.sleeping) return ["asleep (" + v.sleeping.mode + ")", "since " + clock(v.sleeping.since) + ": " + v.sleeping.reason];
  const words = { running: "running", paused: "paused", shut_off: "shut off", other: "other" }[v.state] || v.state;
  const why = v.surrogate && v.surrogate.state !== "awake" ? "surrogate: " + v.surrogate.state : v.memory.skipped ? "memory: " + v.memory.skipped : null;
  return [words, why];
}

function tuneWords(r) {
  const t = r && (r.current || r.wanted);
  if (!t) return ["–", "–", "–"];
  const cap = t.quota_us ? "cap " + Math.round((100 * t.quota_us) / t.period_us) + "% of each vCPU" : "uncapped";
  const cpu = "weight " + t.shares + ", " + cap + (r.critical ? ", critical" : "");
  const disk = t.io_weight ? "weight " + t.io_weight + (t.disk_limit ? ", " + rate(t.disk_limit) : "") : t.disk_limit ? rate(t.disk_limit) : "–";
  // libvirt's 0 is no limit.
  const kib = (b) => (b.average ? b.average + " KiB/s" : "unlimited");
  const net = t.net ? "in " + kib(t.net.inbound) + " / out " + kib(t.net.outbound) : "–";
  return [cpu, disk, net];
}

function activityWords(v) {
  const i = v.idle;
  const r = v.realloc;
  if (!i && r && r.rates) return "CPU " + pct(r.cpu_use) + " of its vCPUs, net " + rate(r.rates.net) + ", disk " + rate(r.rates.disk);
  if (!i) return "–";
  const parts = ["CPU " + pct(i.cpu_rate) + " of a vCPU", "net " + rate(i.net_rate), "disk " + rate(i.disk_rate)];
  if (i.sleeps_at) parts.push("sleeps at " + clock(i.sleeps_at));
  else if (i.idle_since) parts.push("quiet since " + clock(i.idle_since));
  return parts.join(", ");
}

function numCell(field, n, title) {
  return el("td", { class: "num", "data-field": field, "data-value": n === null || n === undefined ? "" : n, title: title }, bytes(n));
}

function renderVms(vms) {
  const body = $("vms").tBodies[0];
  if (!vms.length) {
    state.rows.clear();
    body.replaceChildren(el("tr", {}, el("td", { colspan: 13, class: "note" }, "No domains: ebb sees none on this host (or none matches agent.domains).")));
    return;
  }
  const rows = vms.map((v) => {
    const m = v.memory;
    const [words, why] = stateWords(v);
    const [cpu, disk, net] = tuneWords(v.realloc);
    const reason = m.skipped || (m.last_reason && m.last_reason.text);
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = colorOf(v.name);
    const cells = [
      el("td", { "data-field": "name" }, swatch, v.name),
      el("td", { "data-field": "state", "data-value": v.sleeping ? "asleep" : v.state }, words, why && el("span", { class: "why" }, why)),
      numCell("actual", m.actual),
      numCell("target", m.target, reason),
      numCell("used", m.used),
      numCell("entitlement", m.entitlement),
      el("td", { class: "num", "data-field": "shares", "data-value": v.settings.shares }, v.settings.shares),
      el("td", { "data-field": "class" }, (v.realloc && v.realloc.class) || "–"),
      el("td", { "data-field": "cpu" }, cpu),
      el("td", { "data-field": "disk" }, disk),
      el("td", { "data-field": "net" }, net),
      el("td", { "data-field": "activity" }, activityWords(v)),
    ];
    // The row and its buttons stay from one snapshot to the next, so a
    // click is not lost to a redraw; the buttons change with what they do.
    let held = state.rows.get(v.name);
    if (!held) {
      held = { row: el("tr", { "data-vm": v.name }), actions: el("td", {}), sig: null };
      state.rows.set(v.name, held);
    }
    const sig = JSON.stringify([state.write, !!v.sleeping, v.state, !!(v.realloc && v.realloc.critical)]);
    if (held.sig !== sig) {
      held.actions.replaceChildren(...(state.write ? actions(v) : []));
      held.sig = sig;
    }
    held.row.className = v.sleeping ? "sleeping" : "";
    held.row.replaceChildren(...cells, ...(state.write ? [held.actions] : []));
    return held.row;
  });
  const names = new Set(vms.map((v) => v.name));
  for (const name of [...state.rows.keys()]) if (!names.has(name)) state.rows.delete(name);
  body.replaceChildren(...rows);
}

function actions(v) {
  const critical = v.realloc && v.realloc.critical;
  const name = encodeURIComponent(v.name);
  return [
    v.sleeping ? el("button", { "data-action": "wake", onclick: () => act(v.name, "v1/vms/" + name + "/wake") }, "Wake")
      : el("button", { "data-action": "sleep", disabled: v.state !== "running", onclick: () => act(v.name, "v1/vms/" + name + "/sleep") }, "Sleep"),
    el("button", { "data-action": "critical", onclick: () => act(v.name, "v1/vms/" + name + "/critical/" + (critical ? "off" : "on")) }, critical ? "Not critical" : "Critical"),
    el("button", {
      "data-action": "value",
      onclick: () => {
        const value = prompt("Value of " + v.name + " in a power drop (a whole number, or clear):");
        if (value) act(v.name, "v1/vms/" + name + "/value/" + encodeURIComponent(value.trim()));
      },
    }, "Value…"),
  ];
}

async function act(vm, path) {
  const out = $("action-result");
  out.hidden = false;
  out.className = "note";
  out.textContent = vm + ": asked…";
  try {
    const answer = await fetch(path, { method: "POST", headers: authHeaders() });
    const body = await answer.json().catch(() => ({}));
    out.textContent = vm + ": " + (answer.ok ? body.done : body.error || answer.statusText);
    if (!answer.ok) out.className = "error";
  } catch (e) {
    out.textContent = vm + ": " + e;
    out.className = "error";
  }
}

// ---- charts
// The charts' time span: the samples so far, at least 5 minutes and at
// most the hour the agent keeps.
function span(samples) {
  if (!samples.length) return HOUR_MS;
  const had = samples[samples.length - 1].at - samples[0].at;
  return Math.min(HOUR_MS, Math.max(5 * 60 * 1000, had));
}

function axes(g, w, h, pad, max, label, spanMs) {
  for (let i = 0; i <= 4; i++) {
    const y = h - pad.b - ((h - pad.t - pad.b) * i) / 4;
    g.append(svg("line", { x1: pad.l, x2: w - pad.r, y1: y, y2: y, stroke: "#eaecf0" }));
    g.append(svg("text", { x: pad.l - 4, y: y + 4, "text-anchor": "end" }, label((max * i) / 4)));
  }
  g.append(svg("text", { x: pad.l, y: h - 4 }, "−" + Math.round(spanMs / 60000) + " min"));
  g.append(svg("text", { x: w - pad.r, y: h - 4, "text-anchor": "end" }, "now"));
}

function frame(id) {
  const box = $(id);
  const w = box.clientWidth || 600;
  const h = box.clientHeight || 220;
  box.setAttribute("viewBox", "0 0 " + w + " " + h);
  box.replaceChildren();
  return [box, w, h, { l: 64, r: 10, t: 10, b: 22 }];
}

function drawMemory() {
  const [box, w, h, pad] = frame("memory-chart");
  const samples = state.samples;
  const now = samples.length ? samples[samples.length - 1].at : Date.now();
  const names = [...new Set(samples.flatMap((s) => s.vms.map((v) => v.name)))];
  const total = (s) => s.vms.reduce((a, v) => a + (v.actual || 0), 0);
  const max = Math.max(1, ...samples.map((s) => Math.max(total(s), s.pool || 0))) * 1.05;
  const within = span(samples);
  const x = (at) => pad.l + ((w - pad.l - pad.r) * (at - (now - within))) / within;
  const y = (b) => h - pad.b - ((h - pad.t - pad.b) * b) / max;
  axes(box, w, h, pad, max, bytes, within);
  // Stacked: each VM's band sits on those before it.
  const base = samples.map(() => 0);
  box.dataset.points = samples.length;
  for (const name of names) {
    const top = samples.map((s, i) => base[i] + ((s.vms.find((v) => v.name === name) || {}).actual || 0));
    const upper = samples.map((s, i) => x(s.at) + "," + y(top[i]));
    const lower = samples.map((s, i) => x(s.at) + "," + y(base[i])).reverse();
    box.append(svg("polygon", { points: upper.concat(lower).join(" "), fill: colorOf(name), "fill-opacity": 0.75, "data-vm": name }, svg("title", {}, name)));
    top.forEach((t, i) => (base[i] = t));
  }
  const pool = samples.filter((s) => s.pool);
  if (pool.length) {
    box.append(svg("polyline", { points: pool.map((s) => x(s.at) + "," + y(s.pool)).join(" "), fill: "none", stroke: "#1d2430", "stroke-dasharray": "4 3" }, svg("title", {}, "the pool")));
  }
  const legend = names.map((n) => {
    const sw = el("span", { class: "swatch" });
    sw.style.background = colorOf(n);
    return el("span", {}, sw, n);
  });
  if (pool.length) legend.push(el("span", {}, "- - the pool"));
  $("memory-legend").replaceChildren(...legend);
}

function drawPower() {
  const [box, w, h, pad] = frame("power-chart");
  const samples = state.samples.filter((s) => s.watts !== null && s.watts !== undefined);
  box.dataset.points = samples.length;
  $("power-chart-note").textContent = samples.length ? "" : "No draw to show: configure [power] with a UPS, RAPL or a power model.";
  const now = state.samples.length ? state.samples[state.samples.length - 1].at : Date.now();
  if (!samples.length) return;
  const max = Math.max(10, ...samples.map((s) => s.watts)) * 1.1;
  const within = span(state.samples);
  const x = (at) => pad.l + ((w - pad.l - pad.r) * (at - (now - within))) / within;
  const y = (v) => h - pad.b - ((h - pad.t - pad.b) * v) / max;
  axes(box, w, h, pad, max, (v) => Math.round(v) + " W", within);
  box.append(svg("polyline", { points: samples.map((s) => x(s.at) + "," + y(s.watts)).join(" "), fill: "none", stroke: "#f79009", "stroke-width": 2 }));
}

// Each VM's sleeps over the last hour, from the journal's sleep and wake
// entries and the snapshot's VMs asleep now.
function sleepSpans(now) {
  const spans = new Map();
  const open = new Map();
  const ok = (e) => !e.failed;
  for (const e of state.events) {
    const who = e.kind.startsWith("host_") ? "this host" : e.vm;
    if (!who) continue;
    if ((e.kind === "sleep" || e.kind === "host_sleep") && ok(e)) open.set(who, e.at);
    if ((e.kind === "wake" || e.kind === "host_wake") && ok(e)) {
      const from = open.has(who) ? open.get(who) : now - HOUR_MS;
      open.delete(who);
      spans.set(who, (spans.get(who) || []).concat([[from, e.at]]));
    }
  }
  for (const v of (state.snapshot && state.snapshot.vms) || []) {
    if (v.sleeping) open.set(v.name, open.get(v.name) || v.sleeping.since);
    else if (open.has(v.name)) {
      // Awake with no wake journaled (started behind ebb's back): it slept until about now.
      spans.set(v.name, (spans.get(v.name) || []).concat([[open.get(v.name), now]]));
      open.delete(v.name);
    }
  }
  for (const [who, from] of open) spans.set(who, (spans.get(who) || []).concat([[from, now]]));
  return spans;
}

function drawTimeline() {
  const box = $("timeline");
  // The agent's clock, as the charts use, not the browser's.
  const now = (state.snapshot && state.snapshot.status.last_tick_at) || Date.now();
  const spans = sleepSpans(now);
  const names = [...new Set(((state.snapshot && state.snapshot.vms) || []).map((v) => v.name).concat([...spans.keys()]))];
  const row = 22;
  const w = box.clientWidth || 600;
  const h = Math.max(1, names.length) * row + 24;
  const pad = { l: 140, r: 10 };
  box.setAttribute("viewBox", "0 0 " + w + " " + h);
  box.setAttribute("height", h);
  box.replaceChildren();
  const within = span(state.samples);
  const x = (at) => pad.l + ((w - pad.l - pad.r) * Math.max(0, at - (now - within))) / within;
  names.forEach((name, i) => {
    const top = i * row + 4;
    box.append(svg("text", { x: 4, y: top + 14 }, name));
    box.append(svg("line", { x1: pad.l, x2: w - pad.r, y1: top + row / 2, y2: top + row / 2, stroke: "#eaecf0" }));
    for (const [from, to] of spans.get(name) || []) {
      if (to < now - within) continue;
      box.append(svg("rect", { x: x(from), y: top + 3, width: Math.max(2, x(to) - x(from)), height: row - 8, rx: 3, fill: "#6941c6", "data-vm": name }, svg("title", {}, name + " asleep " + clock(from) + "–" + clock(to))));
    }
  });
  box.append(svg("text", { x: pad.l, y: h - 4 }, "−" + Math.round(within / 60000) + " min"));
  box.append(svg("text", { x: w - pad.r, y: h - 4, "text-anchor": "end" }, "now"));
}

// ---- power
function renderPower(p) {
  const body = $("power-body");
  if (!p) {
    body.replaceChildren(el("p", { class: "note" }, "No power source configured ([power] in the config)."));
    return;
  }
  const r = p.reading;
  const cards = [];
  if (r) {
    cards.push(card("source", r.source + " (" + r.status + ")", "p-source"));
    cards.push(card("on", r.on_battery ? (r.low_battery ? "battery, LOW" : "battery") : "mains", "p-on"));
    if (r.charge !== null) cards.push(card("charge", Math.round(r.charge) + "%", "p-charge"));
    if (r.runtime_s !== null) cards.push(card("runtime left", Math.round(r.runtime_s / 60) + " min", "p-runtime"));
    if (r.draw !== null) cards.push(card("draw (source)", Math.round(r.draw) + " W", "p-draw"));
  }
  if (p.measured) cards.push(card("draw (" + p.measured.source + ")", Math.round(p.measured.watts) + " W", "p-measured"));
  if (p.model_draw !== null && p.model_draw !== undefined) cards.push(card("draw (model)", Math.round(p.model_draw) + " W", "p-model"));
  const parts = [el("div", { class: "cards" }, cards)];
  if (p.state && p.state.state === "low") parts.push(el("p", { class: "error" }, "LOW BATTERY: " + p.state.why + ": every VM is saved and the host powered down"));
  for (const [what, why] of [["reading", p.error], ["measuring", p.measured_error]]) {
    if (why) parts.push(el("p", { class: "error" }, what + ": " + why));
  }
  if (p.plan) {
    const plan = p.plan.plan;
    parts.push(el("p", { id: "p-plan" }, "On a power drop, with " + Math.round(plan.budget) + " W of the budget for the VMs (the host idles at " + Math.round(p.plan.host_idle) + " W): keep " + (plan.keep.join(", ") || "none") + " (" + Math.round(plan.kept_draw) + " W, value " + plan.kept_value + "); save " + (plan.save.join(", ") || "none") + ", in that order."));
  }
  if (p.saved_for_power.length) parts.push(el("p", {}, "Saved for power, restored on mains: " + p.saved_for_power.join(", ")));
  if (p.last_power_off) parts.push(el("p", {}, "Last power-off: " + p.last_power_off));
  const d = p.devices;
  if (d && d.cpu && d.cpu.last_change) parts.push(el("p", {}, "CPU frequency: " + d.cpu.last_change));
  if (d && d.disks && d.disks.last_standby) parts.push(el("p", {}, "Disks: " + d.disks.last_standby));
  body.replaceChildren(...parts);
}

// ---- the farm: this host's link and sleep (the snapshot), and every
// host with its clients (etcd, read by the agent)
function renderHostFarm(st) {
  const own = $("farm-own") || el("div", { id: "farm-own" });
  const lines = [];
  if (st.farm) {
    const l = st.farm.state;
    lines.push(el("p", {}, "This host, " + st.farm.host + ", at " + st.farm.endpoints + ": " + (l.state === "member" ? "member (etcd " + l.etcd_version + ")" : l.state + (l.error ? ": " + l.error : ""))));
  }
  if (st.host_sleep) {
    const s = st.host_sleep;
    lines.push(el("p", { id: "host-sleep" }, "Host sleep: " + s.state + ": " + s.why + " (" + s.sleeps_total + " sleeps, " + s.wakes_total + " wakes)"));
  }
  own.replaceChildren(...lines);
  if (!own.parentNode) $("farm").insertBefore(own, $("farm-body"));
}

function renderFarm(shown) {
  const body = $("farm-body");
  if (shown === "reading") return body.replaceChildren(el("p", { class: "note" }, "reading etcd…"));
  if (shown.error) return body.replaceChildren(el("p", { class: "error" }, "etcd cannot be read: " + shown.error));
  const view = shown.view;
  const head = el("tr", {}, ["Host", "Agent", "State", "VMs", "Clients", "Wake", "Last sleep"].map((t) => el("th", {}, t)));
  const rows = view.hosts.map((hst) => {
    const clients = Object.entries(hst.clients).map(([id, c]) => id + " (" + c.kind + ", " + c.vm + ")");
    const wake = hst.wake ? ["ipmi", "redfish", "wol"].filter((m) => hst.wake[m] || (m === "wol" && hst.wake.mac)) : [];
    return el(
      "tr",
      { "data-host": hst.name },
      el("td", {}, hst.name),
      el("td", {}, hst.member ? "up since " + clock(hst.member.since) : "gone"),
      el("td", { "data-field": "state" }, hst.state || "–", hst.wake_failed && el("span", { class: "why failed" }, "wake failed: " + hst.wake_failed.why)),
      el("td", {}, (hst.vms || []).join(", ") || "–"),
      el("td", { "data-field": "clients", "data-value": clients.length }, clients.length ? clients.join("; ") : "none"),
      el("td", {}, wake.join(", ") || "none (never sleeps)"),
      el("td", {}, hst.slept ? clock(hst.slept.at) + ": " + hst.slept.why : "–"),
    );
  });
  body.replaceChildren(el("p", {}, "Coordinator leader: " + (view.leader || "none")), el("table", { id: "farm-hosts" }, el("thead", {}, head), el("tbody", {}, rows)));
}

// ---- the journal, newest first
function renderJournal() {
  const rows = state.events
    .slice(-200)
    .reverse()
    .map((e) =>
      el(
        "tr",
        { "data-id": e.id, "data-kind": e.kind, class: e.failed ? "failed" : null },
        el("td", { title: new Date(e.at).toISOString() }, clock(e.at)),
        el("td", {}, e.vm || ""),
        el("td", {}, e.kind.replaceAll("_", " ")),
        el("td", {}, e.rule || ""),
        el("td", {}, e.text, e.target ? " → " + bytes(e.target) : ""),
        el("td", {}, e.outcome || ""),
      ),
    );
  $("journal").tBodies[0].replaceChildren(...rows);
}

window.addEventListener("resize", () => {
  drawMemory();
  drawPower();
  drawTimeline();
});
start();
