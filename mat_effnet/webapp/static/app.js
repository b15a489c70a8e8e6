// The page of mat-effnet-serve: upload, follow the job, draw the answer.
// Plain JavaScript; bars and the timeline are SVG drawn here. Text from the
// server (class and file names) is only ever set as textContent.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const STAGES = ["upload", "queued", "decoding", "flow", "streams", "attention", "timeline", "done"];
const COLOURS = ["#2f6fd6", "#e0782b", "#3a9a5b", "#c2417f", "#7b5cc4", "#8a6d3b", "#1b9aaa", "#6b7280"];
const POLL_MS = 250;

const $ = (id) => document.getElementById(id);
let busy = false;

function el(tag, attrs, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4))
                                      : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function pct(p) { return (100 * p).toFixed(p >= 0.1 ? 1 : 2) + " %"; }

// -- what the model is --------------------------------------------------------
async function describeModel() {
  try {
    const r = await fetch("/v1/model");
    const m = await r.json();
    const prep = Object.entries(m.preparation).map(([s, p]) =>
      `${s}: ${p.flow === "none" || s === "spatial" ? "RGB" : p.flow + " flow"}, short side ${p.short_side}`);
    $("model").textContent = `${m.class_names.length} classes · ${m.streams.join(" + ")} stream` +
      `${m.streams.length > 1 ? "s" : ""} · ${prep.join(" · ")} · uploads up to ${m.limits.max_upload_mb} MiB`;
    if (m.limits.window_s !== undefined) $("window").value = m.limits.window_s;
  } catch (e) {
    $("model").textContent = "the model's description did not load: " + e;
  }
}

// -- progress -----------------------------------------------------------------
function showStages(current, seen) {
  const list = $("stages");
  list.replaceChildren();
  const at = STAGES.indexOf(current);
  for (const [i, name] of STAGES.entries()) {
    if (!seen.has(name) && i > at && name !== "done") continue;
    const cls = name === current ? "now" : (seen.has(name) || i < at ? "done" : "");
    list.append(el("li", cls ? {class: cls} : {}, name));
  }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function reset() {
  $("error").hidden = true;
  $("result").hidden = true;
  $("progress").hidden = false;
  $("status").textContent = "";
}

// -- sending ------------------------------------------------------------------
function upload(file) {
  if (busy) return;
  busy = true;
  reset();
  const seen = new Set(["upload"]);
  showStages("upload", seen);
  $("progress-title").textContent = file.name;
  const form = new FormData();
  form.append("video", file, file.name);
  form.append("window_s", $("window").value || "0");
  form.append("attention", "1");
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/jobs");
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) $("status").textContent = `uploading: ${Math.round(100 * e.loaded / e.total)} %`;
  };
  xhr.onerror = () => { busy = false; showError("the server could not be reached"); };
  xhr.onload = () => {
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (e) { /* shown below */ }
    if (xhr.status !== 202) {
      busy = false;
      $("progress").hidden = true;
      let msg = body.error || `the server answered ${xhr.status}`;
      const retry = xhr.getResponseHeader("Retry-After");
      if (xhr.status === 503 && retry) msg += ` (retry after ${retry} s)`;
      showError(msg);
      return;
    }
    follow(body.job, seen, performance.now());
  };
  xhr.send(form);
}

async function follow(job, seen, t0) {
  let state;
  try {
    const r = await fetch(`/v1/jobs/${job}`);
    state = await r.json();
    if (!r.ok) throw new Error(state.error || r.status);
  } catch (e) {
    busy = false;
    showError("lost the job: " + e.message);
    return;
  }
  const stage = state.state === "queued" ? "queued" : state.stage;
  if (STAGES.includes(stage)) seen.add(stage);
  showStages(state.state === "done" ? "done" : stage, seen);
  const secs = ((performance.now() - t0) / 1000).toFixed(1);
  $("status").textContent = state.state === "queued"
    ? `waiting: ${state.ahead ?? 0} ahead · ${secs} s` : `${stage} · ${secs} s`;
  if (state.state === "done") {
    busy = false;
    $("progress").hidden = true;
    draw(state.result);
  } else if (state.state === "failed") {
    busy = false;
    $("progress").hidden = true;
    showError(state.error);
  } else {
    setTimeout(() => follow(job, seen, t0), POLL_MS);
  }
}

// -- drawing ------------------------------------------------------------------
function bars(rows, width, colour) {
  // Wide: the label left of its bar. Narrow (a stream's column): the label above it.
  const narrow = width < 320;
  const h = narrow ? 38 : 24, labelW = narrow ? 0 : Math.min(170, width * 0.42);
  const barW = width - labelW - 70, barY = narrow ? 20 : 5;
  const svg = el("svg:svg", {width, height: rows.length * h, role: "img"});
  rows.forEach((t, i) => {
    const y = i * h;
    const g = el("svg:g", {class: "bar", "data-class": t.class, "data-probability": t.probability});
    g.append(el("svg:text", {x: 0, y: y + 16, "font-size": 13}, t.class));
    g.append(el("svg:rect", {x: labelW, y: y + barY, width: barW, height: 14, rx: 3, fill: "#e9ecf2"}));
    g.append(el("svg:rect", {x: labelW, y: y + barY, width: Math.max(1, barW * t.probability),
                             height: 14, rx: 3, fill: colour}));
    g.append(el("svg:text", {x: labelW + barW + 6, y: y + barY + 11, "font-size": 12, fill: "#5b6475"},
                pct(t.probability)));
    svg.append(g);
  });
  return svg;
}

function timeline(result, classNames) {
  const windows = result.windows;
  const W = 900, H = 240, left = 44, right = 150, top = 10, bottom = 30;
  const cw = W - left - right, ch = H - top - bottom;
  const t0 = windows[0].start_s, t1 = windows[windows.length - 1].end_s;
  const fused = windows.map((w) => {
    const s = w.spatial, t = w.temporal;
    const ws = result.fusion_weights || {spatial: 0.5, temporal: 0.5};
    return classNames.map((_, k) => (s ? ws.spatial * s[k] : 0) + (t ? ws.temporal * t[k] : 0));
  });
  // The classes shown: every window's top-1, then the video's top classes, at most 8.
  const shown = [];
  for (const w of windows) if (!shown.includes(w.top[0].index)) shown.push(w.top[0].index);
  for (const t of result.top) if (shown.length < 5 && !shown.includes(t.index)) shown.push(t.index);
  shown.splice(8);
  const x = (t) => left + cw * (t - t0) / Math.max(t1 - t0, 1e-6);
  const y = (p) => top + ch * (1 - p);
  const svg = el("svg:svg", {viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img", id: "timeline-svg"});
  for (const p of [0, 0.25, 0.5, 0.75, 1]) {
    svg.append(el("svg:line", {x1: left, x2: left + cw, y1: y(p), y2: y(p), stroke: "#e3e7ee"}));
    svg.append(el("svg:text", {x: left - 6, y: y(p) + 4, "font-size": 11, "text-anchor": "end",
                               fill: "#5b6475"}, `${Math.round(p * 100)}%`));
  }
  const ticks = 6;
  for (let i = 0; i <= ticks; i++) {
    const t = t0 + (t1 - t0) * i / ticks;
    svg.append(el("svg:text", {x: x(t), y: H - 10, "font-size": 11, "text-anchor": "middle",
                               fill: "#5b6475"}, `${t.toFixed(1)} s`));
  }
  shown.forEach((k, j) => {
    const colour = COLOURS[j % COLOURS.length];
    const pts = windows.map((w, i) => `${x((w.start_s + w.end_s) / 2).toFixed(1)},${y(fused[i][k]).toFixed(1)}`);
    svg.append(el("svg:polyline", {points: pts.join(" "), fill: "none", stroke: colour,
                                   "stroke-width": 2, "data-class": classNames[k]}));
    windows.forEach((w, i) => svg.append(el("svg:circle", {
      cx: x((w.start_s + w.end_s) / 2), cy: y(fused[i][k]), r: 2.5, fill: colour})));
    svg.append(el("svg:rect", {x: left + cw + 14, y: top + 4 + j * 18, width: 10, height: 10, fill: colour}));
    svg.append(el("svg:text", {x: left + cw + 30, y: top + 13 + j * 18, "font-size": 12}, classNames[k]));
  });
  // The top-1 of each window, as a strip under the chart.
  windows.forEach((w) => {
    const j = shown.indexOf(w.top[0].index);
    svg.append(el("svg:rect", {x: x(w.start_s), y: top + ch + 2, width: Math.max(1, x(w.end_s) - x(w.start_s)),
                               height: 5, fill: COLOURS[j % COLOURS.length], opacity: 0.8}));
  });
  return svg;
}

const TIME_ROWS = [
  ["upload_s", "upload"], ["check_s", "checking the file"], ["queue_s", "waiting in the queue"],
  ["prepare_s", "decoding and flow (preparation)"],
  ["decoding_s", "decoding (≈, sampled share of preparation)"],
  ["flow_s", "optical flow (≈, sampled share of preparation)"],
  ["spatial_model_s", "spatial stream"], ["temporal_model_s", "temporal stream"],
  ["decode_s", "decoding"], ["model_s", "model"],
  ["attention_s", "attention picture"], ["timeline_s", "timeline"],
];

function times(result) {
  const all = {...(result.seconds || {}), ...(result.server ? result.server.seconds : {})};
  const table = $("times");
  table.replaceChildren();
  for (const [key, label] of TIME_ROWS) {
    if (all[key] === undefined || (key === "prepare_s" && all.decoding_s !== undefined)) continue;
    const tr = el("tr", {"data-stage": key});
    tr.append(el("td", {}, label), el("td", {class: "s"}, `${Number(all[key]).toFixed(3)} s`));
    table.append(tr);
  }
  if (all.total_s !== undefined) {
    const tr = el("tr", {class: "total", "data-stage": "total_s"});
    tr.append(el("td", {}, "total"), el("td", {class: "s"}, `${Number(all.total_s).toFixed(3)} s`));
    table.append(tr);
  }
}

async function draw(result) {
  $("result").hidden = false;
  $("video-name").textContent = result.video;
  const windows = result.windows ? `, ${result.windows.length} windows of ${result.window_s} s` : "";
  $("summary").textContent = `${result.frames} frames${windows} · top-1: ${result.top[0].class}`;
  $("summary").dataset.top1 = result.top[0].class;
  const width = Math.min(440, $("top5").clientWidth || 440);
  $("top5").replaceChildren(bars(result.top, width, "#2f6fd6"));
  const streams = $("streams");
  streams.replaceChildren();
  for (const [name, rows] of Object.entries(result.streams || {})) {
    const box = el("div", {class: "stream", "data-stream": name});
    box.append(el("h4", {}, name), bars(rows, Math.max(180, width / 2 - 8), name === "spatial" ? "#3a9a5b" : "#e0782b"));
    streams.append(box);
  }
  if (result.windows && result.windows.length > 1) {
    const names = await classNames();
    $("timeline").replaceChildren(timeline(result, names));
    $("timeline-card").hidden = false;
  } else {
    $("timeline-card").hidden = true;
  }
  if (result.attention_png) {
    $("attention").src = result.attention_png;
    $("attention-card").hidden = false;
  } else {
    $("attention-card").hidden = true;
  }
  times(result);
}

let names = null;
async function classNames() {
  if (!names) names = (await (await fetch("/v1/model")).json()).class_names;
  return names;
}

// -- choosing and dropping ----------------------------------------------------
function init() {
  describeModel();
  $("file").addEventListener("change", (e) => {
    if (e.target.files.length) upload(e.target.files[0]);
    e.target.value = "";
  });
  const drop = $("drop");
  for (const kind of ["dragenter", "dragover"]) {
    drop.addEventListener(kind, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const kind of ["dragleave", "drop"]) {
    drop.addEventListener(kind, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => {
    if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  });
}

init();
