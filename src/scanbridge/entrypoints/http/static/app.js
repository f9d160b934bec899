// scanbridge dashboard: plain JS, no build step. Polls the public REST routes once a second.
"use strict";

const TERMINAL = new Set(["COMPLETED", "FAILED", "DELIVERY_FAILED", "CANCELLED"]);
const POLL_MS = 1000;
const KEY_STORE = "scanbridge.apiKey";
const state = {
  selected: null,          // task_id shown in the detail panel
  pinned: false,           // true once a person clicked a row (else the newest task is followed)
  overlays: new Map(),     // `${task}/${scan}` -> object URL of the overlay PNG
  results: new Map(),      // task_id -> {scanId: ScanResult} once posted
  artifacts: new Map(),    // task_id -> [artifact]
  lastHealth: 0,
};

function authHeaders() {
  const key = localStorage.getItem(KEY_STORE);
  return key ? { Authorization: "Bearer " + key } : {};
}

async function api(path) {
  const resp = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  if (!resp.ok) {
    let code = "HTTP_" + resp.status;
    try { code = (await resp.json()).error.code; } catch (_) { /* not JSON */ }
    const err = new Error(code);
    err.status = resp.status;
    throw err;
  }
  return resp;
}

async function apiJson(path) { return (await api(path)).json(); }

// Build DOM without innerHTML: every value from the API is text, never markup.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function badge(status) { return el("span", { class: "badge " + status }, status); }

function bar(percent, status) {
  const pct = Math.max(0, Math.min(100, Number(percent) || 0));
  const cls = status === "FAILED" || status === "DELIVERY_FAILED" ? "failed" : (pct >= 100 ? "done" : "");
  const inner = el("span");
  inner.style.width = pct.toFixed(0) + "%";
  return el("span", {}, el("span", { class: "bar " + cls, role: "progressbar", "aria-valuenow": pct.toFixed(0) }, inner),
    el("span", { class: "pct" }, pct.toFixed(0) + " %"));
}

function taskPercent(task) {
  const scans = Object.values(task.scans || {});
  if (TERMINAL.has(task.status)) return 100;
  if (!scans.length) return 0;
  return scans.reduce((sum, s) => sum + (s.progress ? s.progress.percent : 0), 0) / scans.length;
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleTimeString();
}

async function download(url, filename) {
  const blob = await (await api(url)).blob();
  const href = URL.createObjectURL(blob);
  const a = el("a", { href, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10000);
}

function downloadLink(label, url, filename) {
  return el("a", { href: url, onclick: (ev) => { ev.preventDefault(); download(url, filename).catch(showError); } }, label);
}

function showError(err) {
  const conn = document.getElementById("conn");
  conn.textContent = err.status === 401 || err.status === 403 ? "API key needed" : "error: " + err.message;
  conn.className = "badge bad";
}

async function refreshHealth() {
  const health = await apiJson("/health");
  document.getElementById("version").textContent = "v" + health.version + " · launcher " + health.launcher;
  const list = document.getElementById("models");
  list.replaceChildren(...(health.models || []).map((m) => el("li", { class: "model" }, m)));
  state.lastHealth = Date.now();
}

function renderTasks(tasks) {
  const body = document.querySelector("#tasks tbody");
  body.replaceChildren(...tasks.map((t) => {
    const scans = Object.values(t.scans || {});
    const done = scans.filter((s) => s.status === "SUCCEEDED" || s.status === "FAILED").length;
    return el("tr", {
      class: "task-row" + (t.task_id === state.selected ? " selected" : ""),
      dataset: { taskId: t.task_id, status: t.status },
      onclick: () => { state.selected = t.task_id; state.pinned = true; tick(); },
    },
    el("td", {}, el("code", {}, t.task_id)), el("td", {}, t.company_id || "—"), el("td", {}, t.model || "default"),
    el("td", { class: "status" }, badge(t.status)), el("td", {}, bar(taskPercent(t), t.status)),
    el("td", {}, `${done}/${scans.length}`), el("td", {}, when(t.updated_at)));
  }));
  document.getElementById("no-tasks").hidden = tasks.length > 0;
  document.getElementById("task-count").textContent = tasks.length ? `(${tasks.length})` : "";
}

async function loadOverlay(taskId, scanId, img) {
  const key = taskId + "/" + scanId;
  if (!state.overlays.has(key)) {
    const path = `/tasks/${encodeURIComponent(taskId)}/artifacts/${encodeURIComponent(scanId)}/overlay.png`;
    const blob = await (await api(path)).blob();
    state.overlays.set(key, URL.createObjectURL(blob));
  }
  if (img.getAttribute("src") !== state.overlays.get(key)) img.src = state.overlays.get(key);
}

function scanCard(task, scan) {
  const id = "scan-" + CSS.escape(scan.scan_id);
  let card = document.getElementById(id);
  if (!card) {
    card = el("div", { class: "scan", id, dataset: { scanId: scan.scan_id } },
      el("div", { class: "picture" }, el("div", { class: "placeholder" }, "overlay appears when the scan is analysed")),
      el("div", { class: "info" }));
    document.getElementById("scans").append(card);
  }
  const p = scan.progress || {};
  const tiles = p.tiles_total ? ` · ${p.tiles_done}/${p.tiles_total} tiles` : "";
  const eta = p.eta_s ? ` · ETA ${Math.round(p.eta_s)} s` : "";
  const info = [el("h3", {}, "Scan ", el("code", {}, scan.scan_id), " ", badge(scan.status)),
    el("div", {}, bar(p.percent, scan.status), el("span", { class: "muted" }, ` ${p.step || ""}${tiles}${eta}`))];
  if (scan.error_code) info.push(el("p", { class: "error" }, `${scan.error_code}: ${scan.error_message || ""}`));
  const posted = (state.results.get(task.task_id) || {})[scan.scan_id];
  const summary = posted && posted.results && posted.results.report ? posted.results.report.summary : null;
  if (summary) {
    info.push(el("dl", { class: "summary" }, Object.entries(summary).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));
  }
  if (scan.status === "SUCCEEDED") {
    const base = `/tasks/${encodeURIComponent(task.task_id)}/scans/${encodeURIComponent(scan.scan_id)}/export?format=`;
    const stem = `${task.task_id}_${scan.scan_id}`.replace(/[^A-Za-z0-9_-]/g, "_");
    info.push(el("p", { class: "links" }, "Export: ",
      downloadLink("GeoJSON", base + "geojson", stem + ".geojson"), downloadLink("CSV", base + "csv", stem + ".csv"),
      downloadLink("DICOM ANN", base + "dicom-ann", stem + ".ann.dcm"),
      downloadLink("DICOM SEG", base + "dicom-seg", stem + ".seg.dcm")));
    const files = (state.artifacts.get(task.task_id) || []).filter((a) => a.scan_id === scan.scan_id);
    if (files.length) {
      info.push(el("p", { class: "links" }, "Artifacts: ", files.map((a) => downloadLink(a.file, a.url, a.file))));
    }
    const picture = card.querySelector(".picture");
    let img = picture.querySelector("img.overlay");
    if (!img) {
      img = el("img", { class: "overlay", alt: `overlay of scan ${scan.scan_id}`, title: "open the full-size overlay",
                        onclick: () => window.open(img.src, "_blank") });
      picture.replaceChildren(img);
    }
    loadOverlay(task.task_id, scan.scan_id, img).catch(() => { /* not written yet: next tick */ });
  }
  card.querySelector(".info").replaceChildren(...info);
}

async function renderDetail(task) {
  const section = document.getElementById("detail");
  if (section.dataset.taskId !== task.task_id) {
    document.getElementById("scans").replaceChildren();
    section.dataset.taskId = task.task_id;
  }
  section.hidden = false;
  document.getElementById("detail-id").textContent = task.task_id;
  const status = document.getElementById("detail-status");
  status.textContent = task.status;
  status.className = "badge " + task.status;
  const error = document.getElementById("detail-error");
  error.hidden = !task.error_code;
  error.textContent = task.error_code ? `${task.error_code}: ${task.error_message || ""}` : "";
  const d = task.delivery || {};
  document.getElementById("detail-delivery").textContent = d.delivered_at
    ? `Results delivered ${when(d.delivered_at)} (HTTP ${d.status_code}, ${d.attempts} attempt(s))`
    : d.skipped ? `Results kept here, not posted: ${d.skipped}`
    : d.last_error ? `Delivery: ${d.last_error}` : `Created ${when(task.created_at)}`;
  if (TERMINAL.has(task.status) && !state.results.has(task.task_id)) {
    try {
      const body = await apiJson(`/tasks/${encodeURIComponent(task.task_id)}/results`);
      state.results.set(task.task_id, Object.fromEntries((body.scanResults || []).map((s) => [s.scanId, s])));
    } catch (err) { if (err.status !== 404) throw err; }
  }
  if (TERMINAL.has(task.status) && !state.artifacts.has(task.task_id)) {
    const listing = await apiJson(`/tasks/${encodeURIComponent(task.task_id)}/artifacts`);
    state.artifacts.set(task.task_id, listing.artifacts || []);
  }
  for (const scan of Object.values(task.scans || {})) scanCard(task, scan);
}

let running = false;
async function tick() {
  if (running) return;
  running = true;
  const conn = document.getElementById("conn");
  try {
    if (Date.now() - state.lastHealth > 30000) await refreshHealth();
    const page = await apiJson("/tasks?limit=50");
    const tasks = page.tasks || [];
    if (!state.pinned || !tasks.some((t) => t.task_id === state.selected)) {
      state.selected = tasks.length ? tasks[0].task_id : null;
    }
    renderTasks(tasks);
    if (state.selected) {
      await renderDetail(await apiJson(`/tasks/${encodeURIComponent(state.selected)}`));
    }
    conn.textContent = "live";
    conn.className = "badge ok";
  } catch (err) {
    showError(err);
  } finally {
    running = false;
  }
}

function start() {
  const input = document.getElementById("api-key");
  input.value = localStorage.getItem(KEY_STORE) || "";
  input.addEventListener("change", () => {
    if (input.value) localStorage.setItem(KEY_STORE, input.value); else localStorage.removeItem(KEY_STORE);
    state.lastHealth = 0;
    state.results.clear();
    state.artifacts.clear();
    tick();
  });
  tick();
  setInterval(tick, POLL_MS);
}

document.addEventListener("DOMContentLoaded", start);
