// The Maestro web app's page: sources, boxes on a frame-sized canvas, settings, run, results.
// Plain JavaScript, no build step, nothing loaded from elsewhere. The server validates every
// request with the generate command's own checks; the checks here only answer faster.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null,
  kind: "stems",
  sources: [],      // {audio: {id, name, seconds}, label, kf: {frame: [l,t,r,b]}} (stems)
  mixture: null,    // {id, name, seconds}
  queries: [],      // {label, kf} (mixture)
  selected: 0,
  frame: 0,
  drag: null,
  job: sessionStorage.getItem("maestro-job") || null,
  client: sessionStorage.getItem("maestro-client") || null,
  checkTimer: null,
};
if (!state.client) {
  const a = new Uint8Array(12);
  crypto.getRandomValues(a);
  state.client = Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
  sessionStorage.setItem("maestro-client", state.client);
}

// ------------------------------------------------------------------ helpers
async function api(path, opts = {}) {
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch (e) {
    throw new Error("the app does not answer (is it still running?)");
  }
  const body = await resp.json().catch(() => ({error: `HTTP ${resp.status}`}));
  if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
  return body;
}
const post = (path, data) => api(path, {
  method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(data)});

function say(id, text, cls = "") {
  const el = $(id);
  el.textContent = text;
  el.className = "msg " + cls;
}
function colour(i, alpha = 1) {
  const c = state.info.colors[i % state.info.colors.length];
  return `rgba(${c[0]},${c[1]},${c[2]},${alpha})`;
}
const items = () => (state.kind === "stems" ? state.sources : state.queries);

// ------------------------------------------------------------------ boxes
function boxAt(item, frame) {
  const keys = Object.keys(item.kf).map(Number).sort((a, b) => a - b);
  if (!keys.length) return null;
  if (frame <= keys[0]) return item.kf[keys[0]];
  if (frame >= keys[keys.length - 1]) return item.kf[keys[keys.length - 1]];
  for (let k = 0; k < keys.length - 1; k++) {
    const a = keys[k], b = keys[k + 1];
    if (frame >= a && frame <= b) {
      const t = (frame - a) / (b - a);
      return item.kf[a].map((v, c) => v + t * (item.kf[b][c] - v));
    }
  }
  return null;
}
function setBox(item, box) {
  const b = box.map((v) => Math.round(Math.min(1, Math.max(0, v)) * 1000) / 1000);
  if ($("moving").checked) item.kf[state.frame] = b;
  else item.kf = {0: b};
}
function boxesPayload() {
  const last = state.info.num_frames - 1;
  return items().map((it) => {
    const keys = Object.keys(it.kf).map(Number).sort((a, b) => a - b);
    if (keys.length <= 1) return keys.length ? it.kf[keys[0]] : null;
    return {keyframes: keys.map((k) => [last ? k / last : 0, it.kf[k]])};
  });
}
function coversCell(lo, hi, n) {
  for (let i = 0; i < n; i++) {
    const c = (i + 0.5) / n;
    if (c >= lo && c < hi) return true;
  }
  return false;
}
function precheck() {
  const errs = [];
  const its = items();
  if (!its.length) errs.push("add at least one source");
  if (its.length > state.info.max_sources)
    errs.push(`${its.length} sources: at most ${state.info.max_sources} fit the context`);
  const coarse = state.info.resolutions.reduce((a, r) => (r[0] * r[1] < a[0] * a[1] ? r : a));
  its.forEach((it, i) => {
    if (!Object.keys(it.kf).length) { errs.push(`source ${i + 1}: draw its box`); return; }
    for (let f = 0; f < state.info.num_frames; f++) {
      const [l, t, r, b] = boxAt(it, f);
      if (r - l < 1e-3 || b - t < 1e-3) { errs.push(`source ${i + 1}: the box is empty`); break; }
      if (state.info.cell_rule === "centre" &&
          (!coversCell(t, b, coarse[0]) || !coversCell(l, r, coarse[1]))) {
        errs.push(`source ${i + 1}: the box (frame ${f}) covers no latent cell at ` +
                  `${coarse[0]}x${coarse[1]}; make it larger`);
        break;
      }
    }
  });
  if (state.kind === "mixture" && !state.mixture) errs.push("upload a mixture");
  if (state.kind === "mixture") state.queries.forEach((q, i) => {
    if (!q.label.trim()) errs.push(`query ${i + 1} is empty`);
  });
  return errs;
}
function request() {
  const settings = {};
  for (const k of ["n_d", "steps", "seed"]) settings[k] = parseInt($(k).value, 10);
  settings.guidance = parseFloat($("guidance").value);
  settings.mode = $("mode").value;
  const req = {boxes: boxesPayload(), settings, labels: items().map((it) => it.label)};
  if (state.kind === "stems") req.sources = state.sources.map((s) => s.audio.id);
  else { req.mixture = state.mixture && state.mixture.id; req.queries = state.queries.map((q) => q.label); }
  return req;
}
// the page's own checks at once, then the server's (the generate command's) after a pause
function validate() {
  const errs = precheck();
  draw();
  clearTimeout(state.checkTimer);
  if (errs.length) { say("box-msg", errs.join("\n"), "error"); return false; }
  say("box-msg", "checking…");
  state.checkTimer = setTimeout(async () => {
    try {
      const r = await post("/api/check", request());
      say("box-msg", r.warnings.length ? r.warnings.join("\n") : "ready", r.warnings.length ? "warn" : "ok");
    } catch (e) { say("box-msg", e.message, "error"); }
  }, 250);
  return true;
}

// ------------------------------------------------------------------ canvas
const canvas = $("frame");
const ctx = canvas.getContext("2d");
function draw() {
  const W = canvas.width, H = canvas.height;
  ctx.fillStyle = "#202230"; ctx.fillRect(0, 0, W, H);
  const coarse = state.info.resolutions.reduce((a, r) => (r[0] * r[1] < a[0] * a[1] ? r : a));
  ctx.strokeStyle = "rgba(255,255,255,0.12)"; ctx.lineWidth = 1;
  for (let i = 1; i < coarse[1]; i++) { const x = (i * W) / coarse[1]; ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, H); ctx.stroke(); }
  for (let i = 1; i < coarse[0]; i++) { const y = (i * H) / coarse[0]; ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(W, y); ctx.stroke(); }
  items().forEach((it, i) => {
    if (Object.keys(it.kf).length > 1) {  // the interpolation: every frame's box, faint
      ctx.setLineDash([3, 3]); ctx.strokeStyle = colour(i, 0.45);
      for (let f = 0; f < state.info.num_frames; f++) {
        const [l, t, r, b] = boxAt(it, f);
        ctx.strokeRect(l * W, t * H, (r - l) * W, (b - t) * H);
      }
      ctx.setLineDash([]);
    }
    const box = boxAt(it, state.frame);
    if (!box) return;
    const [l, t, r, b] = box;
    ctx.fillStyle = colour(i, i === state.selected ? 0.3 : 0.18);
    ctx.fillRect(l * W, t * H, (r - l) * W, (b - t) * H);
    ctx.strokeStyle = colour(i); ctx.lineWidth = i === state.selected ? 3 : 2;
    ctx.strokeRect(l * W, t * H, (r - l) * W, (b - t) * H);
    ctx.fillStyle = colour(i); ctx.font = "bold 13px system-ui";
    ctx.fillText(`${i + 1} ${it.label}`.slice(0, 28), l * W + 4, t * H + 15);
    ctx.lineWidth = 1;
  });
}
function pointer(ev) {
  const r = canvas.getBoundingClientRect();
  return [(ev.clientX - r.left) / r.width, (ev.clientY - r.top) / r.height];
}
function hit(x, y) {
  const tol = 8 / canvas.width;
  const its = items();
  // the selected source first, so a box under another can still be grabbed
  const order = [state.selected, ...its.keys()].filter((i, k, a) => i < its.length && a.indexOf(i) === k);
  for (const i of order) {
    const b = boxAt(its[i], state.frame);
    if (!b) continue;
    const [l, t, r, bo] = b;
    for (const [cx, cy, mode] of [[l, t, "lt"], [r, t, "rt"], [l, bo, "lb"], [r, bo, "rb"]])
      if (Math.abs(x - cx) < tol && Math.abs(y - cy) < tol) return {i, mode};
    if (x > l && x < r && y > t && y < bo) return {i, mode: "move"};
  }
  return null;
}
canvas.addEventListener("mousedown", (ev) => {
  if (!items().length) { say("box-msg", "add a source first", "error"); return; }
  const [x, y] = pointer(ev);
  const h = hit(x, y);
  if (h) {
    state.selected = h.i;
    state.drag = {mode: h.mode, i: h.i, x0: x, y0: y, box: boxAt(items()[h.i], state.frame).slice()};
  } else {
    // drawing: the selected source, or the first one that has no box yet
    const free = items().findIndex((it) => !Object.keys(it.kf).length);
    if (!Object.keys(items()[state.selected].kf).length || free < 0) { /* keep selection */ }
    else state.selected = free;
    state.drag = {mode: "draw", i: state.selected, x0: x, y0: y};
  }
  renderSources();
  ev.preventDefault();
});
window.addEventListener("mousemove", (ev) => {
  const d = state.drag;
  if (!d) return;
  const [x, y] = pointer(ev);
  const cx = Math.min(1, Math.max(0, x)), cy = Math.min(1, Math.max(0, y));
  let box;
  if (d.mode === "draw") box = [Math.min(d.x0, cx), Math.min(d.y0, cy), Math.max(d.x0, cx), Math.max(d.y0, cy)];
  else if (d.mode === "move") {
    const [l, t, r, b] = d.box;
    const dx = Math.min(1 - r, Math.max(-l, x - d.x0)), dy = Math.min(1 - b, Math.max(-t, y - d.y0));
    box = [l + dx, t + dy, r + dx, b + dy];
  } else {
    box = d.box.slice();
    if (d.mode[0] === "l") box[0] = cx; else box[2] = cx;
    if (d.mode[1] === "t") box[1] = cy; else box[3] = cy;
    box = [Math.min(box[0], box[2]), Math.min(box[1], box[3]), Math.max(box[0], box[2]), Math.max(box[1], box[3])];
  }
  setBox(items()[d.i], box);
  draw();
});
window.addEventListener("mouseup", () => {
  if (!state.drag) return;
  state.drag = null;
  validate();
});

function applyPreset(name) {
  const n = items().length;
  if (!n) { say("box-msg", "add sources first", "error"); return; }
  let boxes = state.info.presets[name];
  if (name === "columns") boxes = [...Array(n).keys()].map((i) => [i / n, 0.2, (i + 1) / n, 0.8]);
  if (name === "rows") boxes = [...Array(n).keys()].map((i) => [0.1, i / n, 0.9, (i + 1) / n]);
  if (boxes.length !== n) { say("box-msg", `preset ${name} is for ${boxes.length} sources; there are ${n}`, "error"); return; }
  items().forEach((it, i) => { it.kf = {0: boxes[i].slice()}; });
  $("moving").checked = false;
  validate();
}

// ------------------------------------------------------------------ sources
function renderSources() {
  const ol = $("sources");
  ol.innerHTML = "";
  items().forEach((it, i) => {
    const li = document.createElement("li");
    li.className = i === state.selected ? "selected" : "";
    li.dataset.index = i;
    const sw = document.createElement("span");
    sw.className = "swatch"; sw.style.background = colour(i);
    const label = document.createElement("input");
    label.type = "text"; label.value = it.label; label.className = "label";
    label.placeholder = state.kind === "mixture" ? "text query, e.g. dog barking" : "label";
    label.addEventListener("input", () => { it.label = label.value; validate(); });
    li.append(sw, label);
    if (it.audio) {
      const au = document.createElement("audio");
      au.controls = true; au.preload = "none"; au.src = `/api/audio/${it.audio.id}`;
      li.append(au, document.createTextNode(` ${it.audio.seconds.toFixed(1)} s`));
    }
    const rm = document.createElement("button");
    rm.type = "button"; rm.textContent = "remove";
    rm.addEventListener("click", (ev) => { ev.stopPropagation(); items().splice(i, 1); state.selected = 0; renderSources(); validate(); });
    li.append(rm);
    li.addEventListener("click", () => { state.selected = i; renderSources(); draw(); });
    ol.append(li);
  });
  if (state.kind === "mixture") {
    const row = $("mixture-row");
    row.innerHTML = "";
    if (state.mixture) {
      const au = document.createElement("audio");
      au.controls = true; au.preload = "none"; au.src = `/api/audio/${state.mixture.id}`;
      row.append(document.createTextNode(`mixture ${state.mixture.name} (${state.mixture.seconds.toFixed(1)} s) `), au);
    }
  }
  draw();
}
async function upload(file) {
  return api(`/api/upload?name=${encodeURIComponent(file.name)}`, {method: "POST", body: file});
}
$("stem-files").addEventListener("change", async (ev) => {
  const errs = [];
  for (const f of ev.target.files) {
    say("input-msg", `uploading ${f.name}…`);
    try {
      const a = await upload(f);
      state.sources.push({audio: a, label: f.name.replace(/\.[^.]*$/, ""), kf: {}});
    } catch (e) { errs.push(e.message); }
  }
  ev.target.value = "";
  say("input-msg", errs.join("\n") || `${state.sources.length} source(s)`, errs.length ? "error" : "ok");
  renderSources(); validate();
});
$("mixture-file").addEventListener("change", async (ev) => {
  const f = ev.target.files[0];
  if (!f) return;
  $("separated").innerHTML = "";
  try { state.mixture = await upload(f); say("input-msg", "mixture ready: add one query per source", "ok"); }
  catch (e) { say("input-msg", e.message, "error"); }
  ev.target.value = "";
  renderSources(); validate();
});
$("demo-mixture").addEventListener("click", async () => {
  try {
    const d = await api("/api/example/demo", {method: "POST"});
    $("separated").innerHTML = "";
    state.mixture = d;
    state.queries = d.queries.map((q, i) => ({label: q, kf: {0: d.boxes[i].map((v) => Math.round(v * 1000) / 1000)}}));
    say("input-msg", "the toy world's demo mixture, with its queries and boxes", "ok");
  } catch (e) { say("input-msg", e.message, "error"); }
  renderSources(); validate();
});
$("add-query").addEventListener("click", () => { state.queries.push({label: "", kf: {}}); state.selected = state.queries.length - 1; renderSources(); validate(); });
for (const el of document.querySelectorAll("input[name=kind]")) el.addEventListener("change", () => {
  state.kind = el.value; state.selected = 0;
  $("stems-panel").hidden = state.kind !== "stems";
  $("mixture-panel").hidden = state.kind !== "mixture";
  renderSources(); validate();
});

$("separate").addEventListener("click", async () => {
  const req = {mixture: state.mixture && state.mixture.id, queries: state.queries.map((q) => q.label)};
  try {
    const r = await post("/api/separate", {client: state.client, request: req});
    state.job = r.id; sessionStorage.setItem("maestro-job", r.id);
    say("run-msg", r.position ? `separation queued: ${r.position} job(s) before it` : "separating", "ok");
    poll();
  } catch (e) { say("input-msg", e.message, "error"); }
});
function showSeparated(r) {
  const box = $("separated");
  box.innerHTML = "";
  r.stems.forEach((name, i) => {
    const au = document.createElement("audio");
    au.controls = true; au.preload = "none"; au.src = `/api/files/${r.id}/stem?i=${i}`;
    box.append(document.createTextNode(`${name} `), au, document.createElement("br"));
  });
}

// ------------------------------------------------------------------ run
$("generate").addEventListener("click", async () => {
  const errs = precheck();
  if (errs.length) { say("run-msg", errs.join("\n"), "error"); return; }
  try {
    const r = await post("/api/jobs", {client: state.client, request: request()});
    state.job = r.id; sessionStorage.setItem("maestro-job", r.id);
    say("run-msg", (r.position ? `queued: ${r.position} job(s) before yours` : "started") +
        (r.warnings.length ? "\n" + r.warnings.join("\n") : ""), r.warnings.length ? "warn" : "ok");
    poll();
  } catch (e) { say("run-msg", e.message, "error"); }
});
$("cancel").addEventListener("click", async () => {
  if (!state.job) return;
  try { await post(`/api/jobs/${state.job}/cancel`, {}); say("run-msg", "cancelling…", "warn"); }
  catch (e) { say("run-msg", e.message, "error"); }
});
async function poll() {
  if (!state.job) return;
  let j;
  try { j = await api(`/api/jobs/${state.job}`); }
  catch (e) {
    say("run-msg", `${e.message}`, "error");
    state.job = null; sessionStorage.removeItem("maestro-job"); $("cancel").disabled = true;
    return;
  }
  const active = j.state === "queued" || j.state === "running";
  $("cancel").disabled = !active;
  $("generate").disabled = active;
  const p = $("progress");
  if (j.stage === "sample" && j.steps) { p.max = j.steps; p.value = j.step; }
  else if (j.state === "done") { p.max = 1; p.value = 1; }
  else p.removeAttribute("value");
  let text = j.state === "queued" ? `queued (${j.position} before yours)` : j.stage_text;
  if (j.stage === "sample" && j.steps) text += `: DDIM step ${j.step}/${j.steps} (${j.phase})`;
  if (!active) text = {done: `done in ${j.seconds} s`, failed: "failed", cancelled: "cancelled"}[j.state];
  $("status").textContent = text;
  if (!active) {
    state.job = null; sessionStorage.removeItem("maestro-job");
    if (j.state === "done" && j.result.kind === "separation") {
      say("run-msg", "separated: the stems are under the mixture", "ok"); showSeparated(j.result);
    } else if (j.state === "done") { say("run-msg", "done", "ok"); showResult(j.result); gallery(); }
    else say("run-msg", j.message || j.state, j.state === "failed" ? "error" : "warn");
    return;
  }
  setTimeout(poll, 300);
}
async function queue() {
  try {
    const q = await api("/api/queue");
    const ol = $("queue");
    ol.innerHTML = "";
    for (const j of q) {
      const li = document.createElement("li");
      li.className = j.id === state.job ? "mine" : "";
      li.textContent = `${j.id} ${j.state}${j.state === "running" ? `: ${j.stage_text} ${j.step}/${j.steps}` : ""}` +
        (j.id === state.job ? " (this tab)" : "");
      ol.append(li);
    }
    if (!q.length) ol.innerHTML = "<li>empty</li>";
  } catch (e) { /* the run message says it */ }
  setTimeout(queue, 1500);
}

// ------------------------------------------------------------------ results
function showResult(r) {
  $("result").hidden = false;
  $("result-id").textContent = r.id;
  const v = $("video");
  v.src = `/api/files/${r.id}/mp4`;
  v.load();
  $("sheet").src = `/api/files/${r.id}/png`;
  $("dl-mp4").href = `/api/files/${r.id}/mp4`;
  $("dl-json").href = `/api/files/${r.id}/json`;
  $("jobs-line").textContent = r.jobs_line;
  $("command").textContent = r.command;
  const st = $("result-stems");
  st.innerHTML = "";
  (r.stems || []).forEach((name, i) => {
    const au = document.createElement("audio");
    au.controls = true; au.preload = "none"; au.src = `/api/files/${r.id}/stem?i=${i}`;
    st.append(document.createTextNode(`separated ${name} `), au, document.createElement("br"));
  });
}
async function gallery() {
  try {
    const rows = await api("/api/gallery");
    const g = $("gallery");
    g.innerHTML = rows.length ? "" : "no results yet";
    for (const r of rows) {
      const card = document.createElement("div");
      card.className = "card";
      const img = document.createElement("img");
      img.src = `/api/files/${r.id}/png`; img.alt = r.id;
      const labels = (r.summary.labels || []).join(", ");
      card.append(img, document.createElement("br"),
        document.createTextNode(`${r.finished}: ${labels} (${r.summary.settings.mode}, ${r.summary.settings.steps} steps)`));
      card.addEventListener("click", () => showResult(r));
      g.append(card);
    }
  } catch (e) { $("gallery").textContent = e.message; }
}

// ------------------------------------------------------------------ start
async function start() {
  try { state.info = await api("/api/info"); }
  catch (e) { document.body.prepend(e.message); return; }
  const info = state.info;
  const scale = Math.max(1, Math.floor(Math.min(480 / info.frame.width, 400 / info.frame.height)));
  canvas.width = info.frame.width * scale; canvas.height = info.frame.height * scale;
  $("frame-index").max = info.num_frames - 1;
  $("frame-index").addEventListener("input", (ev) => {
    state.frame = parseInt(ev.target.value, 10); $("frame-label").textContent = state.frame; draw();
  });
  $("clear-keys").addEventListener("click", () => {
    const it = items()[state.selected];
    if (it) { const b = boxAt(it, state.frame); it.kf = b ? {0: b} : {}; }
    $("moving").checked = false; validate();
  });
  for (const k of ["mode", "n_d", "steps", "guidance", "seed"]) $(k).value = info.defaults[k];
  $("weights").textContent = `${info.frame.width}x${info.frame.height}, ${info.num_frames} frames`;
  for (const name of [...Object.keys(info.presets), "columns", "rows"]) {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = name; b.addEventListener("click", () => applyPreset(name));
    $("presets").append(b);
  }
  for (const ex of info.examples.filter((e) => e.kind === "stem")) {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = ex.label; b.dataset.example = ex.name;
    b.addEventListener("click", async () => {
      try {
        const a = await api(`/api/example/${ex.name}`, {method: "POST"});
        state.sources.push({audio: a, label: ex.label, kf: {}});
        say("input-msg", `${state.sources.length} source(s)`, "ok");
      } catch (e) { say("input-msg", e.message, "error"); }
      renderSources(); validate();
    });
    $("stem-examples").append(b);
  }
  renderSources();
  gallery();
  queue();
  if (state.job) poll();  // this tab was reloaded while its job ran
}
start();
